"""Spinning, with real processes: a governor in this process, real launchers and faultcc. A job
busy far beyond its own recorded duration is "spinning" (never "stalled": its CPU advances),
gets a bundle, is killed, retried, then fails naming the bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.faults.kit import ROOT, build_faultcc

from buildctl.govern.governor import Governor, GovernorOptions
from buildctl.govern.profiles import ProfileDB
from buildctl.report import BuildReport

pytestmark = pytest.mark.slow


def _launch(sock: Path, faultcc: Path, src: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "buildctl.govern.launcher", "--socket", str(sock), "--",
         str(faultcc), "-c", str(src), "-o", "spin.o"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_a_job_far_over_its_own_history_is_spinning_killed_retried_then_failed(
    tmp_path: Path,
) -> None:
    faultcc = build_faultcc(tmp_path)
    src = tmp_path / "spin.cpp"
    db = ProfileDB(tmp_path / "profiles.sqlite")
    gov = Governor(
        GovernorOptions(
            socket_path=tmp_path / "gov.sock", budget_bytes=1 << 30, slots=2,
            build_dir=tmp_path, hang_after_s=1.0, retries=1, sample_interval_s=0.1,
            spin_factor=5.0, spin_floor_s=1.5,
        ),
        db,
    )
    gov.start()
    try:
        # History: the job normally takes a fraction of a second.
        src.write_text("// faultcc: spin=200\nint f() { return 1; }\n")
        first = _launch(gov.opts.socket_path, faultcc, src, tmp_path)
        assert first.returncode == 0, first.stderr
        # Now it computes for a minute: never stalled (its CPU moves), but far over history.
        src.write_text("// faultcc: spin=60000\nint f() { return 1; }\n")
        second = _launch(gov.opts.socket_path, faultcc, src, tmp_path)
    finally:
        gov.stop()
        db.close()
    assert second.returncode == 137, second.stderr
    report = BuildReport(budget_bytes=1, slots=1)
    gov.fill_report(report)
    job = report.jobs[-1]
    assert job.status == "hung" and job.verdict == "spinning" and job.attempts == 2
    assert "over its ceiling" in job.verdict_evidence and "busy faultcc" in job.verdict_evidence
    spins = [e for e in report.events if e.kind == "spin"]
    assert len(spins) == 2 and not [e for e in report.events if e.kind in ("stall", "crash")]
    # Busy, not stuck: it kept making progress (CPU share itself depends on machine load).
    assert all(e.data["since_progress_s"] < 1.0 for e in spins)
    bundle = Path(job.repro_dir or "")
    assert json.loads((bundle / "stall.json").read_text())["verdict"]["state"] == "spinning"
    assert f"kept spinning on all 2 attempts and was killed each time; diagnostics: {bundle}" in (
        second.stderr
    )
