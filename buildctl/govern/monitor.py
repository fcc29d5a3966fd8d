"""Process-tree sampling and progress verdicts.

`sample_tree` is the only I/O here (psutil + /proc); `verdict` is pure so it can be tested on
recorded samples. Progress is any change of tree CPU time (including reaped children), bytes
read/written, or process count — tree CPU alone drops when a child exits, so it is not enough.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    name: str
    rss: int
    state: str


@dataclass(frozen=True)
class TreeSample:
    t: float
    rss: int  # sum over the tree
    cpu_s: float  # user+system of live processes + their reaped children
    io_bytes: int  # read + written chars of the tree
    major_faults: int
    procs: tuple[ProcInfo, ...] = field(default_factory=tuple)

    @property
    def heaviest(self) -> ProcInfo | None:
        return max(self.procs, key=lambda p: p.rss, default=None)


def _major_faults(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return 0
    # Fields after the parenthesised command name: state is field 3, majflt 12, cmajflt 13.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[9]) + int(fields[10])
    except (IndexError, ValueError):
        return 0


def sample_tree(root_pid: int, t: float) -> TreeSample | None:
    """Sum RSS/CPU/IO over the process tree rooted at `root_pid`; None if it is gone."""
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    rss = 0
    cpu = 0.0
    io_bytes = 0
    faults = 0
    infos: list[ProcInfo] = []
    for proc in procs:
        try:
            with proc.oneshot():
                mem = proc.memory_info().rss
                times = proc.cpu_times()
                name = proc.name()
                state = proc.status()
                try:
                    io = proc.io_counters()
                    io_bytes += io.read_chars + io.write_chars
                except (psutil.AccessDenied, AttributeError):
                    pass
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        rss += mem
        cpu += times.user + times.system + times.children_user + times.children_system
        faults += _major_faults(proc.pid)
        infos.append(ProcInfo(proc.pid, name, mem, state))
    if not infos:
        return None
    return TreeSample(t, rss, cpu, io_bytes, faults, tuple(infos))


# --- verdicts (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class VerdictPolicy:
    hang_after_s: float = 600.0  # no progress at all for this long -> stalled
    thrash_faults_per_s: float = 200.0  # major faults/s that mean the tree is paging
    thrash_max_cpu: float = 0.3  # ...while using less than this share of a core
    spin_ceiling_s: float | None = None  # from the job's own history (several x longest run)


@dataclass(frozen=True)
class Verdict:
    state: str  # healthy | stalled | thrashing | spinning | starting
    evidence: str
    cpu_share: float = 0.0
    faults_per_s: float = 0.0
    since_progress_s: float = 0.0


def _progressed(a: TreeSample, b: TreeSample) -> bool:
    return (
        abs(b.cpu_s - a.cpu_s) > 0.005
        or b.io_bytes != a.io_bytes
        or len(b.procs) != len(a.procs)
    )


def verdict(samples: Sequence[TreeSample], policy: VerdictPolicy, elapsed_s: float) -> Verdict:
    """Classify a running job from its recent samples (oldest first)."""
    if len(samples) < 2:
        return Verdict("starting", "not enough samples yet")
    last = samples[-1]
    # Time since the last sample pair that showed any progress.
    last_progress_t = samples[0].t
    for prev, cur in zip(samples, samples[1:], strict=False):
        if _progressed(prev, cur):
            last_progress_t = cur.t
    since = last.t - last_progress_t
    # Rates over (up to) the last ~10 seconds.
    window_start = next((s for s in samples if last.t - s.t <= 10.0), samples[0])
    span = max(last.t - window_start.t, 1e-6)
    cpu_share = max(last.cpu_s - window_start.cpu_s, 0.0) / span
    faults_rate = max(last.major_faults - window_start.major_faults, 0) / span
    heavy = last.heaviest
    who = f"{heavy.name}[{heavy.pid}] state {heavy.state}" if heavy else "no process"
    if faults_rate >= policy.thrash_faults_per_s and cpu_share < policy.thrash_max_cpu:
        return Verdict(
            "thrashing",
            f"{faults_rate:.0f} major faults/s at {cpu_share:.0%} CPU; {who}",
            cpu_share,
            faults_rate,
            since,
        )
    if since >= policy.hang_after_s:
        return Verdict(
            "stalled",
            f"no CPU, I/O or process change for {since:.0f}s; {who}",
            cpu_share,
            faults_rate,
            since,
        )
    if policy.spin_ceiling_s is not None and elapsed_s > policy.spin_ceiling_s:
        return Verdict(
            "spinning",
            f"running {elapsed_s:.0f}s, over its ceiling of {policy.spin_ceiling_s:.0f}s "
            f"from history, while still busy ({cpu_share:.0%} CPU)",
            cpu_share,
            faults_rate,
            since,
        )
    return Verdict("healthy", f"{cpu_share:.0%} CPU; {who}", cpu_share, faults_rate, since)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
