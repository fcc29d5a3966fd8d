"""Progress verdicts on process-tree samples.

The samples come from `buildctl.process` (`sample_tree` and its types are re-exported here for
the governor and the tests); `verdict` is pure so it can be tested on recorded samples.
Progress is any change of tree CPU time (including reaped children), bytes read/written, or
process count — tree CPU alone drops when a child exits, so it is not enough.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from buildctl.process import (  # re-exported: the governor, runner and tests import them here
    MiB,
    ProcInfo,
    TreeSample,
    pid_alive,
    read_wchan,
    sample_tree,
    tree_pids,
)

__all__ = [
    "MiB", "ProcInfo", "ProgressClock", "TreeSample", "Verdict", "VerdictPolicy", "pid_alive",
    "progressed", "read_wchan", "sample_tree", "tree_pids", "verdict",
]


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
