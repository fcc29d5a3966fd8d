"""The planner against reality: a small memcc build (real processes: CMake, ninja, the governor,
launchers, memcc holding known memory, then g++) through `buildctl build --report`, then the
report through the simulator with the same cores and budget. Replayed (the run's own
predictions, RSS curves, launcher arrival order and the memory guard's freezes): makespan within
20-25 %, peak within 10-15 %."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import ROOT, TreeSampler, build_memcc, buildctl_cmd, isolated_env

from buildctl.govern.simulate import HostShape, jobs_from_report, simulate
from buildctl.report import BuildReport

M = 1024**2
pytestmark = pytest.mark.slow
FIXTURE = ROOT / "bench" / "fixtures" / "memjobs_mixed"
# Two sizes in two libraries: under 800 MiB two 450 MB jobs never run together, so the packer
# must pair each with a 300 MB one. Every pair that can form peaks near the same total, and equal
# holds keep partners' peaks overlapping, so the measured peak does not hang on which launcher
# arrived first. The simulator sums the jobs' recorded RSS curves over time, as they ran.
SPEC = "a:450:1500;a:450:1500;b:450:1500;a:300:1500;b:300:1500;b:300:1500"
BUDGET = 800 * M
SLOTS = 2


def job_span(report: BuildReport) -> float:
    """First admission to last end; a record's wall_s leaves out the time it was frozen."""
    start = min(j.started_at_s for j in report.jobs)
    return max(j.started_at_s + j.wall_s + j.frozen_s for j in report.jobs) - start


def build(tmp: Path, memcc: Path, name: str, env: dict[str, str]) -> tuple[BuildReport, int]:
    """One governed build; returns its report and the peak job RSS we sampled ourselves every
    50 ms. memcc climbs at up to 600 MB/s here: at buildctl's default 0.25 s period a climb
    passed the budget between two samples (813 MiB of 800 in one CI run), so the build samples
    every 0.1 s, as the README advises for compilers that climb this fast."""
    report = tmp / f"{name}.json"
    proc = subprocess.Popen(
        buildctl_cmd(
            "build", "--source", str(FIXTURE), "--build-dir", str(tmp / "b"), "--plain",
            "--mem-budget", f"{BUDGET // M}M", "-j", str(SLOTS), "--prior-rss", "500M",
            "--sample-interval", "0.1s",
            "--report", str(report), "--", f"-DCMAKE_CXX_COMPILER={memcc}",
            f"-DMEMJOBS_SPEC={SPEC}",
        ),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, _ = proc.communicate(timeout=120)
    sampler.stop()
    assert proc.returncode == 0, out
    return BuildReport.read(report), sampler.max_total


def check(run: tuple[BuildReport, int], replay: bool, span_tol: float, peak_tol: float,
          span_under: float | None = None, peak_bound: bool = False) -> None:
    """Predicted vs measured: makespan within span_tol (below: span_under if given), peak
    within peak_tol. A replay repeats the memory guard's freezes; a plan assumes none (it
    cannot foresee them: 0 to 4.3 s of freezes measured in 8-12 s warm builds, exact curves or
    not), so below the measured span it is held to the span less the jobs' frozen time (what
    freezes add when they delay the build one after another; this is not noise but the guard,
    which the simulator does not model)."""
    report, sampled_peak = run
    shape = HostShape(cores=SLOTS, budget_bytes=BUDGET)
    predicted = simulate(jobs_from_report(report, replay=replay), shape)
    measured_span = job_span(report)
    frozen = 0.0 if replay else sum(j.frozen_s for j in report.jobs)
    measured_peak = max(report.peak_total_rss_bytes, sampled_peak)
    what = (f"replay={replay}: predicted {predicted.makespan_s:.2f}s / "
            f"{predicted.peak_total_bytes / M:.0f} MiB, measured {measured_span:.2f}s / "
            f"{measured_peak / M:.0f} MiB, {frozen:.2f}s frozen")
    print(what)
    under = predicted.makespan_s / max(measured_span - frozen, 1e-9) - 1
    over = predicted.makespan_s / measured_span - 1
    assert -(span_under if span_under is not None else span_tol) <= under, what
    assert over <= span_tol, what
    assert measured_peak <= BUDGET, what  # the run kept to its budget
    if peak_bound:
        # Admission alone, on predictions learned in the build: an upper bound of the peak.
        assert predicted.peak_total_bytes >= measured_peak * (1 - peak_tol), what
        return
    assert abs(predicted.peak_total_bytes / measured_peak - 1) <= peak_tol, what
    # The plan never promises more than the budget.
    assert predicted.peak_total_bytes <= BUDGET, what


def test_simulator_predicts_a_real_governed_build(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    memcc = build_memcc(tmp_path)
    # First build: nothing measured yet, every job predicted at the 500M prior, then from the
    # siblings measured so far (the replay predicts them again as the governor does). Where
    # such a prediction is below a job's real peak, what keeps the real total down is the
    # memory guard (admission paused while the projected total nears the budget, freezes),
    # which the simulator does not model: its peak is admission's alone, an upper bound
    # (over 14 cold builds: 1.00-1.47 x the report's peak, equal in 8; 902 MiB where the run
    # peaked at 692 MiB).
    cold = build(tmp_path, memcc, "cold", env)
    assert len([j for j in cold[0].jobs if j.kind == "compile"]) == 6
    check(cold, replay=True, span_tol=0.25, peak_tol=0.15, peak_bound=True)
    subprocess.run(["ninja", "-C", str(tmp_path / "b"), "-t", "clean"], check=True,
                   capture_output=True)
    # Second build from clean: predictions are the measured peaks.
    warm = build(tmp_path, memcc, "warm", env)
    assert all(j.prediction_source == "exact" for j in warm[0].jobs)
    check(warm, replay=True, span_tol=0.20, peak_tol=0.10)
    # What `buildctl plan --report` computes: every job known at the start. The governor gathers
    # the first launchers before its first admission (scheduler.gather_hold_s), so it runs the
    # plan's three rounds (measured: within 1 % in 3 of 3 runs). Before gathering it admitted
    # the first arrivals, and when two 300 MB jobs registered first it ran four rounds (7.7 s
    # instead of 5.9 s, in 2 of 5 runs).
    check(warm, replay=False, span_tol=0.25, peak_tol=0.15)
