"""Progress verdicts on recorded samples, and tree sampling of real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

from buildctl.govern.monitor import ProcInfo, TreeSample, VerdictPolicy, sample_tree, verdict


def series(
    n: int, dt: float, cpu_step: float, io_step: int = 0, faults_step: int = 0, procs: int = 1
) -> list[TreeSample]:
    return [
        TreeSample(
            i * dt,
            100,
            i * cpu_step,
            i * io_step,
            i * faults_step,
            tuple(ProcInfo(10 + k, "cc1plus", 100, "R") for k in range(procs)),
        )
        for i in range(n)
    ]


POLICY = VerdictPolicy(hang_after_s=30.0)


def test_busy_silent_job_is_healthy_for_many_windows() -> None:
    samples = series(n=400, dt=1.0, cpu_step=0.95)  # 400 s, 13 windows, no output at all
    assert verdict(samples, POLICY, elapsed_s=400).state == "healthy"


def test_no_cpu_no_io_is_stalled_after_the_window() -> None:
    assert verdict(series(20, 1.0, 0.0), POLICY, 20).state == "healthy"
    v = verdict(series(40, 1.0, 0.0), POLICY, 40)
    assert v.state == "stalled" and "no CPU" in v.evidence


def test_io_alone_counts_as_progress() -> None:
    assert verdict(series(60, 1.0, 0.0, io_step=4096), POLICY, 60).state == "healthy"


def test_child_exit_with_cpu_drop_counts_as_progress() -> None:
    samples = series(50, 1.0, 0.0)
    # A child exits: the tree's CPU sum drops and the process count changes -> progress.
    drop = TreeSample(50.0, 50, -5.0, 0, 0, (ProcInfo(10, "g++", 50, "S"),))
    samples.append(drop)
    assert verdict(samples, POLICY, 51).state == "healthy"


def test_thrashing_is_high_faults_with_low_cpu() -> None:
    v = verdict(series(20, 1.0, 0.05, faults_step=2000), POLICY, 20)
    assert v.state == "thrashing" and v.faults_per_s >= 1000


def test_spinning_uses_a_ceiling_from_history() -> None:
    policy = VerdictPolicy(hang_after_s=30.0, spin_ceiling_s=100.0)
    assert verdict(series(20, 1.0, 1.0), policy, elapsed_s=90).state == "healthy"
    assert verdict(series(20, 1.0, 1.0), policy, elapsed_s=150).state == "spinning"


def test_sample_tree_sums_a_real_tree() -> None:
    child = "x = bytearray(b'1') * (60 << 20); import time; time.sleep(30)"
    code = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 20
        sample = None
        while time.time() < deadline:
            sample = sample_tree(proc.pid, 0.0)
            # Wait for the child itself: the tree sum passes 60 MiB before the child does.
            if sample and len(sample.procs) == 2 and sample.heaviest.rss > 60 << 20:
                break
            time.sleep(0.1)
        assert sample is not None and len(sample.procs) == 2
        assert sample.rss > 60 << 20
        assert sample.heaviest is not None and sample.heaviest.rss > 60 << 20
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.send_signal(signal.SIGKILL)
        proc.kill()
        proc.wait()
    assert sample_tree(proc.pid, 1.0) is None
