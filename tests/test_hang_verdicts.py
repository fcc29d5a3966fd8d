"""Pure pieces of the fault handling, on recorded samples and exit facts: long hang windows,
evidence (which process, CPU, RSS trend, faults/s), thrashing, and what counts as a crash."""

from __future__ import annotations

import signal

from buildctl.govern.governor import classify_exit, exit_of
from buildctl.govern.monitor import (
    ProcInfo,
    ProgressClock,
    TreeSample,
    VerdictPolicy,
    verdict,
)

MiB = 1024**2


def _tree(t: float, cpu: float, faults: int = 0, rss: int = 100 * MiB,
          driver_state: str = "sleeping", leaf_state: str = "running",
          user_part: float = 0.95) -> TreeSample:
    # g++ driver (pid 10) waiting on cc1plus (pid 11), which does the work.
    procs = (
        ProcInfo(10, "g++", 4 * MiB, driver_state, ppid=1, cpu_s=0.01),
        ProcInfo(11, "cc1plus", rss, leaf_state, ppid=10, cpu_s=cpu, major_faults=faults),
    )
    return TreeSample(t, rss + 4 * MiB, cpu + 0.01, 0, faults, procs, cpu * user_part)


def test_an_hour_long_window_is_tracked_beyond_the_sample_buffer() -> None:
    policy = VerdictPolicy(hang_after_s=3600.0)
    clock = ProgressClock()
    recent: list[TreeSample] = []
    for i in range(5000):  # ~83 min of 1 s samples; the job stopped at minute 20
        cpu = min(i, 1200) * 0.9
        sample = _tree(float(i), cpu, leaf_state="running" if i < 1200 else "sleeping")
        clock.update(sample)
        recent = [*recent[-39:], sample]  # only the last 40 samples are kept, like the governor
        v = verdict(recent, policy, float(i), clock.since())
        if 0 < i < 1200 + 3600:
            assert v.state == "healthy", (i, v)
    assert v.state == "stalled"
    assert v.since_progress_s >= 3600
    assert v.culprit is not None and v.culprit.name == "cc1plus"  # the leaf, not the driver
    assert "no CPU, I/O or process change" in v.evidence and "cc1plus[11] sleeping" in v.evidence


def test_healthy_evidence_names_the_busy_process_cpu_and_rss_trend() -> None:
    samples = [_tree(float(i), i * 0.95, rss=(100 + 10 * i) * MiB) for i in range(20)]
    v = verdict(samples, VerdictPolicy(hang_after_s=30), 20.0)
    assert v.state == "healthy"
    assert v.culprit is not None and v.culprit.pid == 11
    assert 0.9 < v.cpu_share < 1.0
    assert abs(v.rss_trend_bps - 10 * MiB) < MiB
    assert "CPU 95%" in v.evidence and "rising 10 MiB/s" in v.evidence
    assert "busy cc1plus[11] running" in v.evidence
    data = v.data()
    assert data["culprit"] == {"pid": 11, "name": "cc1plus", "state": "running"}
    assert data["processes"] == ["g++[10] sleeping", "cc1plus[11] running"]


def test_thrashing_names_the_faulting_process_and_is_not_stalled() -> None:
    # Recorded shape of a paging compile: CPU ~8%, 1500 major faults/s, RSS flat at the limit,
    # process in D state. No CPU *progress* test would call it stalled (CPU still moves).
    samples = [_tree(i * 0.5, i * 0.04, faults=i * 750, rss=2048 * MiB, leaf_state="disk-sleep")
               for i in range(30)]
    v = verdict(samples, VerdictPolicy(hang_after_s=5), 15.0)
    assert v.state == "thrashing"
    assert v.faults_per_s >= 1000 and v.cpu_share < 0.3
    assert v.culprit is not None and v.culprit.name == "cc1plus"
    assert "major faults/s" in v.evidence and "faulting cc1plus[11] disk-sleep" in v.evidence


def test_thrashing_is_judged_on_user_cpu_because_faults_burn_system_time() -> None:
    # Shape measured in a 64 MiB memory cgroup paging a 256 MiB working set (see
    # test_faults_cgroup.py): ~24000 major faults/s, 48% CPU of which 1% user.
    samples = [_tree(i * 0.25, i * 0.12, faults=i * 6000, rss=64 * MiB, user_part=0.02)
               for i in range(20)]
    v = verdict(samples, VerdictPolicy(hang_after_s=2), 5.0)
    assert v.state == "thrashing" and v.cpu_share > 0.4 and v.user_share < 0.05
    assert "CPU 48% (user 1%)" in v.evidence


def test_high_faults_with_high_cpu_is_not_thrashing() -> None:
    samples = [_tree(float(i), i * 0.9, faults=i * 500) for i in range(20)]
    assert verdict(samples, VerdictPolicy(hang_after_s=30), 20.0).state == "healthy"


def test_what_counts_as_a_crash() -> None:
    ice = "x.cpp:3:1: internal compiler error: Segmentation fault\nPlease submit a full bug report"
    assert classify_exit(139, signal.SIGSEGV, "", None).kind == "crash"
    assert classify_exit(136, signal.SIGFPE, "", None).kind == "crash"
    assert classify_exit(132, signal.SIGILL, "", None).kind == "crash"
    assert classify_exit(134, signal.SIGABRT, "", None).kind == "crash"
    assert classify_exit(1, 0, ice, None).kind == "crash"
    clang = "clang++: error: clang frontend command failed due to signal (use -v to see invocation)"
    assert classify_exit(1, 0, clang, None).kind == "crash"
    # The kernel OOM killer's SIGKILL is a crash; anyone else's SIGKILL is not.
    oom = classify_exit(137, signal.SIGKILL, "", None, oom_killed=True)
    assert oom.kind == "crash" and "OOM killer" in oom.reason
    assert classify_exit(137, signal.SIGKILL, "", None).kind == "killed"
    killed_child = "g++: fatal error: Killed signal terminated program cc1plus"
    assert classify_exit(1, 0, killed_child, None).kind == "killed"
    assert classify_exit(1, 0, killed_child, None, oom_killed=True).kind == "crash"
    # buildctl's own kills are never crashes, whatever the compiler said while dying.
    for reason in ("memory", "hang", "spin", "interrupt", "launcher-gone"):
        assert classify_exit(139, signal.SIGSEGV, ice, reason, oom_killed=True).kind != "crash"
    assert classify_exit(139, signal.SIGSEGV, ice, None, interrupting=True).kind == "interrupted"
    assert classify_exit(1, 0, "error: expected ';'", None).kind == "failed"
    assert classify_exit(0, 0, ice, None).kind == "ok"


def test_exit_facts_from_old_launchers_and_executors() -> None:
    assert exit_of({"rc": -11}) == (139, 11)
    assert exit_of({"rc": 139, "signal": 11}) == (139, 11)
    assert exit_of({"rc": 2}) == (2, 0)
