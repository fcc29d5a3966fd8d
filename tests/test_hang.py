"""Slow versus stuck, with real processes: the faultcc test compiler computes silently, blocks on
a pipe, or is SIGSTOPped by the test, under a governed `buildctl build` with `--hang-after 2s`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from fixtures.faults.kit import (
    build_args,
    build_faultcc,
    env_for,
    find_child,
    make_project,
    wait_gone,
)

from buildctl.govern.repro import failure_lines, list_repros
from buildctl.report import BuildReport

pytestmark = pytest.mark.slow
WINDOW = 2.0


@pytest.fixture(scope="module")
def faultcc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_faultcc(tmp_path_factory.mktemp("faultcc"))


def _is_compiling(name: str):
    def pred(proc: psutil.Process) -> bool:
        return proc.name() == "faultcc" and any(a.endswith(name) for a in proc.cmdline())
    return pred


def _events(report: dict, kind: str, output: str | None = None) -> list[dict]:
    return [e for e in report["events"]
            if e["kind"] == kind and (output is None or e["output"] == output)]


def test_busy_silent_job_is_healthy_and_a_blocked_one_is_stalled_retried_then_fails(
    tmp_path: Path, faultcc: Path
) -> None:
    src = make_project(tmp_path / "src", {
        # 7 s of pure computation, no output: 3.5 hang windows.
        "busy.cpp": "// faultcc: spin=7000\nint busy() { return 1; }\n",
        # Prints a line, then blocks forever reading a pipe: it never makes progress.
        "stuck.cpp": "// faultcc: say=waiting-on-a-pipe block=1\nint stuck() { return 2; }\n",
    })
    build = tmp_path / "b"
    report_path = tmp_path / "r.json"
    proc = subprocess.Popen(
        build_args(src, build, "-j", "2", "--hang-after", f"{WINDOW:.0f}s", "--retries", "1",
                   "--report", str(report_path), compiler=faultcc),
        env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    # Time the first blocked attempt ourselves: from its appearance to its kill.
    stuck = find_child(proc.pid, _is_compiling("stuck.cpp"))
    seen_at = time.monotonic()
    try:
        stuck.wait(timeout=30)
    except psutil.TimeoutExpired:
        pytest.fail("the blocked job was never killed")
    blocked_for = time.monotonic() - seen_at
    out, _ = proc.communicate(timeout=120)

    assert proc.returncode == 1, out
    assert blocked_for <= 2 * WINDOW + 1.0, blocked_for  # tick jitter on a loaded 2-core VM
    report = json.loads(report_path.read_text())
    jobs = {Path(j["output"]).name: j for j in report["jobs"]}

    busy = jobs["busy.cpp.o"]
    assert busy["status"] == "ok" and busy["attempts"] == 1
    assert busy["wall_s"] >= 3 * WINDOW  # silent for several windows...
    assert busy["verdict"] == "healthy"  # ...and never called stalled
    # The evidence names the process that used the CPU in the last window: faultcc while it
    # spins, or the g++ it runs afterwards when the last sample falls in the compile (seen on
    # a loaded CI run: "busy g++[4802] sleeping").
    assert "CPU" in busy["verdict_evidence"]
    assert re.search(r"busy (faultcc|g\+\+|cc1plus)\[\d+\]", busy["verdict_evidence"]), busy
    assert not [e for e in report["events"] if e["output"] == busy["output"]]

    hung = jobs["stuck.cpp.o"]
    assert hung["status"] == "hung" and hung["attempts"] == 2 and hung["verdict"] == "stalled"
    assert hung["signal"] == signal.SIGKILL and hung["exit_code"] == 128 + signal.SIGKILL
    assert "no CPU" in hung["verdict_evidence"] and "pipe" in hung["verdict_evidence"]
    stalls = _events(report, "stall", hung["output"])
    assert [e["data"]["attempt"] for e in stalls] == [1, 2]
    retries = _events(report, "retry", hung["output"])
    assert len(retries) == 1  # --retries 1: one re-run, then give up
    # Attempt 2 was called stalled within two windows of its start.
    assert stalls[1]["t_s"] - retries[0]["t_s"] <= 2 * WINDOW + 1.0
    for event in stalls:
        data = event["data"]
        assert data["cpu_share"] < 0.05 and data["since_progress_s"] >= WINDOW
        assert data["culprit"]["name"] == "faultcc" and data["culprit"]["state"] == "sleeping"
        assert "rss" in data and "faults_per_s" in data

    # Each attempt left a bundle with /proc facts of the tree and the last output lines.
    bundles = [Path(e["data"]["bundle"]) for e in stalls]
    assert hung["repro_dir"] == str(bundles[-1])
    for bundle in bundles:
        manifest = json.loads((bundle / "stall.json").read_text())
        assert manifest["argv"][0] == str(faultcc) and manifest["cwd"] == str(build)
        assert manifest["env"]["PATH"] and manifest["versions"]["compiler"].startswith("faultcc")
        (facts,) = manifest["processes"]
        assert "State:\tS (sleeping)" in facts["status"]
        assert "pipe_read" in facts["wchan"]
        assert facts["stack"] and facts["syscall"]
        assert "waiting-on-a-pipe" in (bundle / "output-tail.txt").read_text()
        assert (bundle / "rerun.sh").stat().st_mode & 0o111
    assert [r.kind for r in list_repros(build / ".buildctl" / "repro")] == ["stall", "stall"]

    # A stall kill is not a crash.
    assert not _events(report, "crash")
    # ninja's output carries the launcher's verdict with the bundle path; so does the summary.
    assert f"diagnostics: {bundles[-1]}" in out
    assert "FAILED: CMakeFiles/faults.dir/stuck.cpp.o" in out
    assert any(str(bundles[-1]) in line for line in failure_lines(BuildReport.read(report_path)))
    assert not wait_gone(str(tmp_path))


def test_sigstopped_job_is_stalled_and_its_retry_succeeds(tmp_path: Path, faultcc: Path) -> None:
    src = make_project(tmp_path / "src", {
        "slow.cpp": "// faultcc: spin=2500\nint slow() { return 3; }\n",
        "plain.cpp": "int plain() { return 4; }\n",
    })
    report_path = tmp_path / "r.json"
    proc = subprocess.Popen(
        build_args(src, tmp_path / "b", "--hang-after", f"{WINDOW:.0f}s", "--report",
                   str(report_path), compiler=faultcc),
        env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    first = find_child(proc.pid, _is_compiling("slow.cpp"))
    time.sleep(0.5)
    first.send_signal(signal.SIGSTOP)  # the job makes no progress from here on
    stopped_at = time.monotonic()
    try:
        first.wait(timeout=30)
    except psutil.TimeoutExpired:
        pytest.fail("the stopped job was never killed")
    assert time.monotonic() - stopped_at <= 2 * WINDOW + 0.5
    out, _ = proc.communicate(timeout=120)

    assert proc.returncode == 0, out  # the retry was left alone and finished
    report = json.loads(report_path.read_text())
    job = next(j for j in report["jobs"] if j["output"].endswith("slow.cpp.o"))
    assert job["status"] == "ok" and job["attempts"] == 2
    (stall,) = _events(report, "stall", job["output"])
    assert stall["data"]["culprit"]["state"] == "stopped"
    assert "stopped" in stall["detail"]
    manifest = json.loads((Path(stall["data"]["bundle"]) / "stall.json").read_text())
    assert "State:\tT (stopped)" in manifest["processes"][0]["status"]
    assert job["repro_dir"] == stall["data"]["bundle"]  # kept although the retry passed
    assert "buildctl stall CMakeFiles/faults.dir/slow.cpp.o: no CPU" in out  # the live log
    assert not _events(report, "crash")
    assert (tmp_path / "b" / "libfaults.so").exists()
