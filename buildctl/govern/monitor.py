"""Process-tree sampling and progress verdicts.

`sample_tree` is the only I/O here (psutil + /proc); `verdict` is pure so it can be tested on
recorded samples. Progress is any change of tree CPU time (including reaped children), bytes
read/written, or process count — tree CPU alone drops when a child exits, so it is not enough.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

MiB = 1024**2


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    name: str
    rss: int
    state: str
    ppid: int = 0
    cpu_s: float = 0.0  # this process's own user+system time
    major_faults: int = 0
    # Time it was runnable but waited for a CPU (/proc/<pid>/schedstat): with cpu_s, what the
    # process asked of the CPUs, however busy the machine was (scheduler.cpu_share).
    runq_s: float = 0.0


@dataclass(frozen=True)
class TreeSample:
    t: float
    rss: int  # sum over the tree
    cpu_s: float  # user+system of live processes + their reaped children
    io_bytes: int  # read + written chars of the tree
    major_faults: int
    procs: tuple[ProcInfo, ...] = field(default_factory=tuple)
    # User time alone (live + reaped): page faults and reclaim burn *system* time, so a paging
    # tree can show 30% CPU while doing almost no useful work.
    user_s: float | None = None

    @property
    def heaviest(self) -> ProcInfo | None:
        return max(self.procs, key=lambda p: p.rss, default=None)


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# /proc/<pid>/stat state letters, named as psutil names them (evidence text and tests use them).
_STATES = {
    "R": "running", "S": "sleeping", "D": "disk-sleep", "T": "stopped", "t": "tracing-stop",
    "Z": "zombie", "X": "dead", "x": "dead", "K": "wake-kill", "W": "waking", "P": "parked",
    "I": "idle",
}  # fmt: skip


def read_wchan(pid: int) -> str:
    """The kernel function a sleeping process waits in (e.g. `pipe_read`); '' if unknown."""
    try:
        with open(f"/proc/{pid}/wchan") as handle:
            text = handle.read().strip()
    except OSError:
        return ""
    return "" if text == "0" else text


@dataclass(frozen=True)
class _Stat:
    info: ProcInfo
    cpu_s: float  # own + reaped children, user + system
    user_s: float  # own + reaped children, user only


def _read_stat(pid: int) -> _Stat | None:
    """One process from /proc/<pid>/stat and statm (+ cmdline when the name is truncated);
    None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    close = data.rfind(b")")
    name = data[data.find(b"(") + 1 : close].decode(errors="replace")
    fields = data[close + 2 :].split()
    try:
        # Field n of proc(5) is fields[n - 3]: state 3, ppid 4, majflt 12, cmajflt 13,
        # utime 14, stime 15, cutime 16, cstime 17.
        state = fields[0].decode()
        ppid = int(fields[1])
        faults = int(fields[9]) + int(fields[10])
        utime, stime, cutime, cstime = (int(x) / _CLK_TCK for x in fields[11:15])
    except (IndexError, ValueError):
        return None
    # RSS from statm, as psutil and /proc/<pid>/status give it: stat's rss field is the
    # kernel's approximate per-CPU counter read and runs a few hundred KiB low.
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            rss = int(handle.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None
    if len(name) >= 15:  # the kernel truncates comm to 15 characters: take argv[0] instead
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv0 = handle.read().split(b"\0", 1)[0].decode(errors="replace")
            base = os.path.basename(argv0)
            if base.startswith(name):
                name = base
        except OSError:
            pass
    info = ProcInfo(
        pid, name, rss, _STATES.get(state, state), ppid, utime + stime, faults, _runq_s(pid)
    )
    return _Stat(info, utime + stime + cutime + cstime, utime + cutime)


def _runq_s(pid: int) -> float:
    """Seconds the process spent runnable but waiting for a CPU (0.0 where the kernel does not
    keep schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _io_chars(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io", "rb") as handle:
            data = handle.read()
    except OSError:
        return 0
    total = 0
    for line in data.splitlines():
        if line.startswith((b"rchar:", b"wchar:")):
            total += int(line.split()[1])
    return total


_HAS_CHILDREN_FILES: bool | None = None


def _children_files() -> bool:
    """Whether the kernel has /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN)."""
    global _HAS_CHILDREN_FILES
    if _HAS_CHILDREN_FILES is None:
        pid = os.getpid()
        _HAS_CHILDREN_FILES = os.path.exists(f"/proc/{pid}/task/{pid}/children")
    return _HAS_CHILDREN_FILES


def tree_pids(root_pid: int) -> list[int]:
    """The root and its descendants, parents first; [] if the root is gone.

    Walks /proc/<pid>/task/<tid>/children from the root (a few reads per job) instead of
    scanning every process on the host for its parent, as psutil's children() does.
    """
    if not _children_files():
        try:
            root = psutil.Process(root_pid)
            return [root_pid, *(p.pid for p in root.children(recursive=True))]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return []
    if not os.path.exists(f"/proc/{root_pid}"):
        return []
    pids = [root_pid]
    seen = {root_pid}
    index = 0
    while index < len(pids):
        pid = pids[index]
        index += 1
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                    children = handle.read().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in seen:
                    seen.add(child)
                    pids.append(child)
    return pids


def sample_tree(root_pid: int, t: float) -> TreeSample | None:
    """Sum RSS/CPU/IO over the process tree rooted at `root_pid`; None if it is gone.

    Reads /proc directly (stat, io, and the children lists): this runs for every running job
    several times a second, and psutil's per-process objects cost several times more.
    """
    rss = 0
    cpu = 0.0
    user = 0.0
    io_bytes = 0
    faults = 0
    infos: list[ProcInfo] = []
    for pid in tree_pids(root_pid):
        stat = _read_stat(pid)
        if stat is None:
            continue
        rss += stat.info.rss
        cpu += stat.cpu_s
        user += stat.user_s
        faults += stat.info.major_faults
        io_bytes += _io_chars(pid)
        infos.append(stat.info)
    if not infos:
        return None
    return TreeSample(t, rss, cpu, io_bytes, faults, tuple(infos), user)


# --- verdicts (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class VerdictPolicy:
    hang_after_s: float = 600.0  # no progress at all for this long -> stalled
    thrash_faults_per_s: float = 200.0  # major faults/s that mean the tree is paging
    thrash_max_cpu: float = 0.3  # ...while doing less than this share of a core of user work
    spin_ceiling_s: float | None = None  # from the job's own history (several x longest run)
    rate_window_s: float = 10.0  # CPU share, fault rate and RSS trend are measured over this


@dataclass(frozen=True)
class Verdict:
    state: str  # healthy | stalled | thrashing | spinning | starting
    evidence: str
    cpu_share: float = 0.0
    faults_per_s: float = 0.0
    since_progress_s: float = 0.0
    user_share: float = 0.0
    rss: int = 0
    rss_trend_bps: float = 0.0  # bytes/s over the rate window (negative: shrinking)
    culprit: ProcInfo | None = None  # the process of the tree the verdict is about
    tree: tuple[ProcInfo, ...] = ()

    def data(self) -> dict[str, object]:
        """Structured evidence for report events (JSON-able)."""
        out: dict[str, object] = {
            "state": self.state,
            "cpu_share": round(self.cpu_share, 3),
            "user_share": round(self.user_share, 3),
            "faults_per_s": round(self.faults_per_s, 1),
            "since_progress_s": round(self.since_progress_s, 2),
            "rss": self.rss,
            "rss_trend_bps": round(self.rss_trend_bps),
            "processes": [f"{p.name}[{p.pid}] {p.state}" for p in self.tree],
        }
        if self.culprit is not None:
            out["culprit"] = {
                "pid": self.culprit.pid,
                "name": self.culprit.name,
                "state": self.culprit.state,
            }
        return out


def progressed(a: TreeSample, b: TreeSample) -> bool:
    return (
        abs(b.cpu_s - a.cpu_s) > 0.005
        or b.io_bytes != a.io_bytes
        or len(b.procs) != len(a.procs)
    )


@dataclass
class ProgressClock:
    """Remembers when a tree last made progress, however long ago (the sample window does not
    need to span the hang window, which may be an hour)."""

    last: TreeSample | None = None
    last_progress_t: float | None = None

    def update(self, sample: TreeSample) -> None:
        if self.last is None or progressed(self.last, sample):
            self.last_progress_t = sample.t
        self.last = sample

    def since(self) -> float | None:
        if self.last is None or self.last_progress_t is None:
            return None
        return self.last.t - self.last_progress_t


def _fmt_mib(n: float) -> str:
    return f"{n / MiB:.0f} MiB" if abs(n) >= MiB else f"{n / 1024:.0f} KiB"


def _trend(bps: float) -> str:
    if abs(bps) < 256 * 1024:
        return "flat"
    return f"{'rising' if bps > 0 else 'falling'} {_fmt_mib(abs(bps))}/s"


def _leaves(procs: Sequence[ProcInfo]) -> list[ProcInfo]:
    parents = {p.ppid for p in procs}
    return [p for p in procs if p.pid not in parents] or list(procs)


def _delta_by_pid(
    first: TreeSample, last: TreeSample, attr: str
) -> tuple[ProcInfo | None, float]:
    before = {p.pid: getattr(p, attr) for p in first.procs}
    best: ProcInfo | None = None
    best_delta = -1.0
    for proc in last.procs:
        delta = getattr(proc, attr) - before.get(proc.pid, 0)
        if delta > best_delta:
            best, best_delta = proc, delta
    return best, best_delta


def _who(proc: ProcInfo | None) -> str:
    return f"{proc.name}[{proc.pid}] {proc.state}" if proc else "no process"


def verdict(
    samples: Sequence[TreeSample],
    policy: VerdictPolicy,
    elapsed_s: float,
    since_progress_s: float | None = None,
) -> Verdict:
    """Classify a running job from its recent samples (oldest first).

    `since_progress_s` (from a ProgressClock) overrides the time without progress computed from
    `samples`, so the samples need only cover the rate window.
    """
    if len(samples) < 2:
        return Verdict("starting", "not enough samples yet")
    last = samples[-1]
    if since_progress_s is None:
        last_progress_t = samples[0].t
        for prev, cur in itertools.pairwise(samples):
            if progressed(prev, cur):
                last_progress_t = cur.t
        since = last.t - last_progress_t
    else:
        since = since_progress_s
    # Rates over (up to) the last rate window.
    start = next((s for s in samples if last.t - s.t <= policy.rate_window_s), samples[0])
    if start is last:
        start = samples[-2]
    span = max(last.t - start.t, 1e-6)
    cpu_share = max(last.cpu_s - start.cpu_s, 0.0) / span
    if last.user_s is not None and start.user_s is not None:
        user_share = max(last.user_s - start.user_s, 0.0) / span
    else:
        user_share = cpu_share
    faults_rate = max(last.major_faults - start.major_faults, 0) / span
    trend = (last.rss - start.rss) / span
    cpu_text = f"CPU {cpu_share:.0%}"
    if user_share < cpu_share - 0.05:
        cpu_text += f" (user {user_share:.0%})"
    facts = (
        f"{cpu_text}, RSS {_fmt_mib(last.rss)} {_trend(trend)}, "
        f"{faults_rate:.0f} major faults/s"
    )

    def make(state: str, headline: str, culprit: ProcInfo | None, role: str) -> Verdict:
        evidence = f"{headline}; {facts}; {role} {_who(culprit)}" if headline else (
            f"{facts}; {role} {_who(culprit)}"
        )
        return Verdict(state, evidence, cpu_share, faults_rate, since, user_share, last.rss,
                       trend, culprit, last.procs)

    if faults_rate >= policy.thrash_faults_per_s and user_share < policy.thrash_max_cpu:
        faulter, _ = _delta_by_pid(start, last, "major_faults")
        return make("thrashing", "paging: many major faults, little user CPU", faulter,
                    "faulting")
    if since >= policy.hang_after_s:
        # Every process idles; the leaf is the one the others wait for (drivers wait on it).
        leaf = max(_leaves(last.procs), key=lambda p: p.rss, default=None)
        return make(
            "stalled", f"no CPU, I/O or process change for {since:.1f}s", leaf, "blocked"
        )
    busiest, _ = _delta_by_pid(start, last, "cpu_s")
    if policy.spin_ceiling_s is not None and elapsed_s > policy.spin_ceiling_s:
        return make(
            "spinning",
            f"running {elapsed_s:.0f}s, over its ceiling of {policy.spin_ceiling_s:.0f}s "
            "from history, while still busy",
            busiest,
            "busy",
        )
    return make("healthy", "", busiest, "busy" if cpu_share > 0.05 else "idle")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
