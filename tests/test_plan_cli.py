"""`buildctl plan` on the command line: exit codes and output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import isolated_env, run_buildctl

from buildctl.data import PROFILES_DIR
from buildctl.report import BuildReport, JobRecord

XPU = PROFILES_DIR / "vllm-xpu-kernels"


def test_unpatched_xpu_build_does_not_fit_32g(tmp_path: Path) -> None:
    result = run_buildctl("plan", "--profiles-json", str(XPU / "v0.1.9-unpatched.json"),
                          "--cores", "16", "--mem", "32G", env=isolated_env(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "does not fit" in result.stdout and "paged_decode_xe2.cpp.o" in result.stdout


def test_json_output_and_fit(tmp_path: Path) -> None:
    result = run_buildctl("plan", "--profiles-json", str(XPU / "v0.1.9.json"), "--cores", "24",
                          "--mem", "96G", "--json", env=isolated_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "fits" and data["host"]["cores"] == 24


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mem", "banana"], "cannot read size"),
        (["--report", "/nonexistent/r.json"], "cannot read report"),
        (["--cores", "0"], "not a number of cores"),
        (["--cores", "99999999999999999999"], "--cores 99999999999999999999 is more than"),
        (["--device-links", "-1"], "not a number of device links"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_buildctl("plan", *args, env=isolated_env(tmp_path))
    assert result.returncode == 2
    assert needle in result.stdout + result.stderr


@pytest.mark.parametrize(("cap", "makespan"), [("2", 4.0), ("0", 2.0)])
def test_device_links_cap_a_plan_from_a_report(tmp_path: Path, cap: str, makespan: float) -> None:
    # Three 2 s device links from a report: with --device-links 2 the third waits for a slot.
    report = BuildReport(budget_bytes=2 * 1024**3, slots=4, jobs=[
        JobRecord(output=f"lib{n}.so", kind="link", target=f"lib{n}.so",
                  predicted_rss_bytes=100 * 1024**2, peak_rss_bytes=100 * 1024**2, wall_s=2.0,
                  cpu_s=2.0, status="ok", prediction_source="device-link")
        for n in ("a", "b", "c")
    ])
    path = tmp_path / "report.json"
    path.write_text(report.model_dump_json())
    result = run_buildctl("plan", "--device-links", cap, "--report", str(path), "--cores", "4",
                          "--mem", "8G", "--json", env=isolated_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["makespan_s"] == makespan and data["host"]["max_device_links"] == int(cap)
    text = run_buildctl("plan", "--device-links", cap, "--report", str(path), "--cores", "4",
                        "--mem", "8G", env=isolated_env(tmp_path))
    assert text.returncode == 0, text.stdout + text.stderr
    assert ("at most 2 device link(s) at once" in text.stdout) == (cap == "2")
