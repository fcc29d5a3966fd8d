"""What `buildctl build` leaves and prints: configure and build logs, CMake warnings, the last
report beside the build, a final JSON line; `repro list --json`. A real tiny CMake build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import FIXTURES, isolated_env, run_buildctl

pytestmark = pytest.mark.slow


def test_build_keeps_logs_shows_warnings_and_ends_with_json(tmp_path: Path) -> None:
    build = tmp_path / "b"
    env = isolated_env(tmp_path)
    proc = run_buildctl(
        "build", "--source", str(FIXTURES / "tinycc"), "--build-dir", str(build), "--plain",
        "-j", "2", "--json", "--", "-DTINYCC_WARN=ON", env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tinycc: a configure warning people must see" in proc.stdout
    state = build / ".buildctl"
    assert "tinycc: a configure warning" in (state / "logs" / "configure.log").read_text()
    build_log = (state / "logs" / "build.log").read_text()
    assert "one.cc.o" in build_log and "libtiny.so" in build_log
    report = json.loads((state / "report.json").read_text())  # written without --report
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "ok" and summary["jobs"] == len(report["jobs"]) == 4
    assert summary["report"] == str(state / "report.json")
    assert 0 < summary["peak_total_rss_bytes"] == report["peak_total_rss_bytes"]
    assert len(summary["heaviest"]) == 3
    assert "heaviest:" in proc.stdout and "waited for memory" in proc.stdout


def test_repro_list_json_on_a_build_without_repros(tmp_path: Path) -> None:
    proc = run_buildctl("repro", "list", "--build-dir", str(tmp_path), "--json",
                        env=isolated_env(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_a_failed_configure_shows_its_output_in_order_and_keeps_log_and_report(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    # STATUS goes to stdout, SEND_ERROR to stderr: shown and logged in the order CMake wrote them.
    (source / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(bad NONE)\n"
        'message(STATUS "step one")\nmessage(SEND_ERROR "the error")\n'
        'message(STATUS "step two")\n'
    )
    build = tmp_path / "b"
    proc = run_buildctl("build", "--source", str(source), "--build-dir", str(build), "--plain",
                        env=isolated_env(tmp_path), timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    log = build / ".buildctl" / "logs" / "configure.log"
    for text in (proc.stdout, log.read_text()):
        assert text.index("step one") < text.index("the error") < text.index("step two"), text
    what, fix = proc.stderr.strip().splitlines()
    assert what.startswith("error: CMake configure failed") and str(log) in fix
    report = json.loads((build / ".buildctl" / "report.json").read_text())  # always written
    assert report["status"] == "failed"
