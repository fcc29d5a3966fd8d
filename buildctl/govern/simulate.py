"""Will it fit? A pure, event-driven simulation of a governed build on another host shape.

Input: one record per job (measured peak RSS, wall time, CPU time, kind, target), a host shape
(CPU slots, memory budget, optionally RAM and swap). Output: the predicted schedule, makespan,
peak total RSS, the jobs that must run alone, and the swap they need. The admission policy is
the governor's own `scheduler.decide`, called at every event (a job becomes visible or ends),
which is exactly when the governor re-decides too (it also re-decides on every sample tick, but
between events nothing it looks at changes in the simulation).

Approximations (each one is a knob or a documented limit, not a hidden guess):

- Dependencies: compile (and `other`) jobs are ready at time 0. A link job is ready when every
  compile of its CMake target has ended; the target of a compile is read from its object path
  (`CMakeFiles/<target>.dir/...`), the target of a link from its output name (`lib<t>.so`,
  `<t>.abi3.so`, `<t>.cpython-*.so`, `lib<t>.a`, `<t>`). A link whose target matches no
  compile waits for all compiles. Links never wait for other links (profiles do not record
  which libraries a link consumes).
- Ninja's window: ninja starts at most `ninja_width` commands (launchers) at once; the governor
  only chooses among those. Ready jobs enter the window longest-path first, as ninja >= 1.12
  does (critical path weighted by `.ninja_log` times); older ninja goes by manifest order,
  which profiles do not record.
- Durations: each job takes its measured wall time (same per-core speed on the other host).
  `settle_s` can be added to every job (time the slot stays taken after the job's recorded end;
  0 for buildctl's reports, whose wall time already ends when the governor has processed
  `done`) and `dispatch_s` is added to every job that becomes ready mid-build (ninja starts a
  launcher, a Python process, which registers). The defaults were measured on the 2-core test
  machine.
- CPU: a job takes one slot, or the fraction of one the governor gives a job measured mostly
  waiting (`scheduler.cpu_share`; `HostShape.whole_slots` turns that off); jobs with inner
  parallelism (CPU time above wall time: parallel
  device links, ThinLTO) are not slowed down when they share too few cores.
- Memory: a running job holds its peak for its whole run, so the predicted peak total is an upper
  bound of a sampled one; the governor reserves `max(predicted, current RSS)`, and predicted is
  the profile's peak unless a replay passes what the governor predicted at the time.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from buildctl.govern import scheduler
from buildctl.govern.profiles import ProfileEntry, target_of
from buildctl.host import default_budget
from buildctl.report import BuildReport

DEFAULT_MAX_BYPASS_S = 60.0  # the governor's default (GovernorOptions.max_bypass_s)
# A report's wall_s runs from admission to the governor having processed `done`, so the next
# admission follows at once (measured: 0-4 ms): nothing to add by default.
DEFAULT_SETTLE_S = 0.0
# ninja starting a link's launcher (a Python process) until it registers: 80-110 ms measured on
# the 2-core test machine (up to 2 s under heavy load).
DEFAULT_DISPATCH_S = 0.1


@dataclass(frozen=True)
class SimJob:
    output: str
    kind: str  # compile | link | other
    peak_bytes: int
    wall_s: float
    cpu_s: float = 0.0
    target: str = ""
    runq_wait_s: float = 0.0  # runnable but waiting for a CPU (taken out of wall_s by cpu_share)
    # The CPU share the governor admitted it with (replays); None = from this job's own times.
    admitted_share: float | None = None
    # What the governor predicts when it admits the job; None = the measured peak (a warm profile).
    predicted_bytes: int | None = None
    # When ninja's launcher registers it at the earliest (replays: the order launchers really
    # arrived in, since after its start-up gathering the governor admits whatever fits as soon
    # as it arrives). Jobs with dependencies arrive when those end, whatever this says.
    arrival_s: float = 0.0

    @property
    def predicted(self) -> int:
        return self.peak_bytes if self.predicted_bytes is None else self.predicted_bytes

    @property
    def cpu_share(self) -> float:
        if self.admitted_share is not None:
            return self.admitted_share
        return scheduler.cpu_share(self.cpu_s, self.wall_s, self.runq_wait_s)


@dataclass(frozen=True)
class HostShape:
    cores: int
    budget_bytes: int
    mem_bytes: int | None = None
    swap_bytes: int = 0
    slots: int | None = None  # CPU slots of the governor; default = cores
    ninja_width: int | None = None  # default: buildctl's max(4 x slots, 16)
    whole_slots: bool = False  # every job takes a whole slot (buildctl --whole-slots)

    @property
    def effective_slots(self) -> int:
        return max(1, self.slots if self.slots is not None else self.cores)

    @property
    def usable_bytes(self) -> int:
        """What one job running alone may use without swapping: RAM minus buildctl's reserve
        (never less than the budget)."""
        if self.mem_bytes is None:
            return self.budget_bytes
        return max(self.budget_bytes, default_budget(self.mem_bytes, None))

    @property
    def effective_width(self) -> int:
        if self.ninja_width is not None:
            return max(1, self.ninja_width)
        return max(4 * self.effective_slots, 16)


@dataclass(frozen=True)
class Scheduled:
    output: str
    kind: str
    start_s: float
    end_s: float
    peak_bytes: int
    exclusive: bool


@dataclass(frozen=True)
class Alone:
    """A job predicted above the budget: it runs with nothing beside it."""

    output: str
    peak_bytes: int
    over_budget_bytes: int


@dataclass(frozen=True)
class SimResult:
    makespan_s: float
    peak_total_bytes: int
    schedule: tuple[Scheduled, ...]
    alone: tuple[Alone, ...]
    swap_needed_bytes: int  # the largest job running alone minus the host's usable RAM
    fits: bool  # nothing above the budget
    fits_in_ram: bool  # what is above the budget still fits in RAM when it runs alone
    fits_with_swap: bool  # ...or at least in RAM plus swap
    lower_bound_s: float
    total_cpu_s: float
    busy_peak_slots: int
    link_deps: dict[str, str] = field(default_factory=dict)  # link output -> what it waited for

    @property
    def ratio_to_lower_bound(self) -> float:
        return self.makespan_s / self.lower_bound_s if self.lower_bound_s > 0 else 1.0


# --- dependencies -----------------------------------------------------------------------------

_LINK_SUFFIXES = (
    re.compile(r"\.cpython-[^.]+\.so$"),
    re.compile(r"\.abi3\.so$"),
    re.compile(r"\.so(\.\d+)*$"),
    re.compile(r"\.(a|dll|dylib|pyd|exe)$"),
)


def link_target_candidates(output: str) -> list[str]:
    """Names a link output may carry as its CMake target: `lib/libfoo.so.1` -> foo, libfoo."""
    name = PurePosixPath(output).name
    for pattern in _LINK_SUFFIXES:
        stripped = pattern.sub("", name)
        if stripped != name:
            name = stripped
            break
    names = [name]
    if name.startswith("lib") and len(name) > 3:
        names.insert(0, name[3:])
    return names


def compile_target(job: SimJob) -> str:
    return job.target if job.output.endswith(".o") and job.target else target_of(job.output)


def infer_dependencies(jobs: Sequence[SimJob]) -> tuple[dict[int, frozenset[int]], dict[str, str]]:
    """For every link job the compile jobs it waits for, plus a readable note per link."""
    by_target: dict[str, set[int]] = {}
    compiles: set[int] = set()
    for index, job in enumerate(jobs):
        if job.kind == "link":
            continue
        compiles.add(index)
        target = compile_target(job)
        if target:
            by_target.setdefault(target, set()).add(index)
    deps: dict[int, frozenset[int]] = {}
    notes: dict[str, str] = {}
    for index, job in enumerate(jobs):
        if job.kind != "link":
            continue
        for name in link_target_candidates(job.output):
            if name in by_target:
                deps[index] = frozenset(by_target[name])
                notes[job.output] = f"compiles of target {name}"
                break
        else:
            deps[index] = frozenset(compiles)
            notes[job.output] = "all compiles (target not recognised)"
    return deps, notes


def _path_lengths(jobs: Sequence[SimJob], deps: dict[int, frozenset[int]]) -> list[float]:
    """Longest remaining path through each job (its wall plus the longest link after it)."""
    after = [0.0] * len(jobs)
    for link, needs in deps.items():
        for index in needs:
            after[index] = max(after[index], jobs[link].wall_s)
    return [job.wall_s + after[i] for i, job in enumerate(jobs)]


# --- bounds -----------------------------------------------------------------------------------


def lower_bound(
    jobs: Iterable[SimJob],
    cores: int,
    budget: int,
    slots: int | None = None,
    *,
    whole_slots: bool = False,
) -> float:
    """No schedule of these jobs on `cores` within `budget` can be shorter than this:
    max(total CPU / cores, sum(peak x wall) / budget, longest job), and with `slots`,
    sum(share x wall) / slots (a scheduler running jobs of these CPU shares on that many slots;
    it binds for jobs that wait more than they compute). A job above the budget occupies the
    whole budget."""
    jobs = list(jobs)
    if not jobs:
        return 0.0
    cpu = sum(j.cpu_s for j in jobs) / max(1, cores)
    mem = sum(min(j.peak_bytes, budget) * j.wall_s for j in jobs) / max(1, budget)
    longest = max(j.wall_s for j in jobs)
    slot = (
        sum((1.0 if whole_slots else j.cpu_share) * j.wall_s for j in jobs) / slots
        if slots
        else 0.0
    )
    return max(cpu, mem, longest, slot)


# --- the simulation ---------------------------------------------------------------------------


def simulate(
    jobs: Sequence[SimJob],
    host: HostShape,
    *,
    dispatch_s: float = DEFAULT_DISPATCH_S,
    settle_s: float = DEFAULT_SETTLE_S,
    max_bypass_s: float = DEFAULT_MAX_BYPASS_S,
) -> SimResult:
    """List-schedule `jobs` with `scheduler.decide` and report what the governor would do."""
    budget = host.budget_bytes
    slots = host.effective_slots
    width = host.effective_width
    shares = [1.0 if host.whole_slots else job.cpu_share for job in jobs]
    deps, notes = infer_dependencies(jobs)
    priority = _path_lengths(jobs, deps)
    missing = {i: set(d) for i, d in deps.items()}
    dependants: dict[int, list[int]] = {}
    for link, needs in deps.items():
        for index in needs:
            dependants.setdefault(index, []).append(link)

    # Ready, waiting for a place in ninja's window: a heap on (-path length, input order).
    pending: list[tuple[float, int]] = []
    arriving: list[tuple[float, int]] = []  # (ready at, index): launchers still starting up
    for index, job in enumerate(jobs):
        if deps.get(index):
            continue
        if job.arrival_s > 0:
            heapq.heappush(arriving, (job.arrival_s, index))
        else:
            heapq.heappush(pending, (-priority[index], index))
    visible: dict[int, float] = {}  # job index -> enqueued_at (ninja started its launcher)
    running: dict[int, bool] = {}  # index -> exclusive
    starts: dict[int, float] = {}
    ends: list[tuple[float, int]] = []  # (end time, index)
    schedule: list[Scheduled] = []
    t = 0.0
    peak_total = 0
    busy_peak = 0
    finished = 0

    while finished < len(jobs):
        while arriving and arriving[0][0] <= t:
            index = heapq.heappop(arriving)[1]
            heapq.heappush(pending, (-priority[index], index))
        while pending and len(visible) + len(running) < width:
            visible[heapq.heappop(pending)[1]] = t
        decision = scheduler.decide(
            [
                scheduler.Waiting(i, jobs[i].predicted, at, shares[i])
                for i, at in visible.items()
            ],
            [
                scheduler.Running(i, jobs[i].predicted, jobs[i].peak_bytes, excl, shares[i])
                for i, excl in running.items()
            ],
            budget,
            slots,
            now=t,
            max_bypass_s=max_bypass_s,
        )
        for index in decision.admit:
            del visible[index]
            running[index] = index in decision.exclusive
            starts[index] = t
            heapq.heappush(ends, (t + jobs[index].wall_s + settle_s, index))
        if running:
            peak_total = max(peak_total, sum(jobs[i].peak_bytes for i in running))
            busy_peak = max(busy_peak, len(running))
        next_end = ends[0][0] if ends else None
        next_arrival = arriving[0][0] if arriving else None
        if next_end is None and next_arrival is None:
            # decide() always admits something on an idle machine; fail loudly should a policy
            # change ever break that, instead of looping forever.
            raise RuntimeError(f"simulation stalled at t={t:.1f}s: {decision.reason}")
        if next_end is None or (next_arrival is not None and next_arrival < next_end):
            t = next_arrival  # type: ignore[assignment]
            continue
        t = next_end
        while ends and ends[0][0] <= t:
            index = heapq.heappop(ends)[1]
            exclusive = running.pop(index)
            job = jobs[index]
            start = starts[index]
            schedule.append(
                Scheduled(
                    job.output, job.kind, start, start + job.wall_s, job.peak_bytes, exclusive
                )
            )
            finished += 1
            for link in dependants.get(index, ()):
                missing[link].discard(index)
                if not missing[link]:
                    heapq.heappush(arriving, (t + dispatch_s, link))

    alone = tuple(
        Alone(j.output, j.peak_bytes, j.peak_bytes - budget)
        for j in sorted(jobs, key=lambda j: -j.peak_bytes)
        if j.predicted > budget
    )
    swap_needed = max((a.peak_bytes - host.usable_bytes for a in alone), default=0)
    swap_needed = max(0, swap_needed)
    schedule.sort(key=lambda s: (s.start_s, s.output))
    return SimResult(
        makespan_s=max((s.end_s for s in schedule), default=0.0),
        peak_total_bytes=peak_total,
        schedule=tuple(schedule),
        alone=alone,
        swap_needed_bytes=swap_needed,
        fits=not alone,
        fits_in_ram=swap_needed == 0,
        fits_with_swap=swap_needed <= host.swap_bytes,
        lower_bound_s=lower_bound(jobs, host.cores, budget, slots, whole_slots=host.whole_slots),
        total_cpu_s=sum(j.cpu_s for j in jobs),
        busy_peak_slots=busy_peak,
        link_deps=notes,
    )


# --- inputs -----------------------------------------------------------------------------------


def jobs_from_report(report: BuildReport, *, replay: bool = False) -> list[SimJob]:
    """The jobs of a build report. `replay=True` keeps what the governor predicted at the time
    (peak and CPU share) and the order the first launchers arrived in (to check the simulator
    against that very run); otherwise predictions are the measured peaks, as in a rebuild with
    a warm profile DB, and every job is there from the start. Jobs that did not finish cleanly
    are left out: their times say nothing about a normal run."""
    records = [r for r in report.jobs if r.status in ("ok", "killed-retried")]
    if not records:
        return []
    first_start = min(r.started_at_s for r in records)
    first_end = min(r.started_at_s + r.wall_s for r in records)
    jobs = []
    for record in records:
        arrival = 0.0
        registered = record.started_at_s - record.queued_s
        if replay and record.kind != "link" and registered < first_end:
            # Launchers that registered before anything finished: their real arrival order
            # decided who got the first slots. Later ones were held back by ninja's window.
            arrival = max(0.0, registered - first_start)
        jobs.append(
            SimJob(
                output=record.output,
                kind=record.kind,
                peak_bytes=record.peak_rss_bytes,
                wall_s=record.wall_s,
                cpu_s=record.cpu_s,
                runq_wait_s=record.runq_wait_s,
                target=record.target,
                predicted_bytes=record.predicted_rss_bytes if replay else None,
                admitted_share=record.cpu_share if replay else None,
                arrival_s=arrival,
            )
        )
    return jobs


def jobs_from_profiles(entries: Iterable[ProfileEntry]) -> list[SimJob]:
    """One job per project and output: the most recent entry wins when several compilers built
    it. Cache hits are no measurement of a job."""
    latest: dict[tuple[str, str], ProfileEntry] = {}
    for entry in entries:
        if entry.cache_hit:
            continue
        seen = latest.get((entry.project, entry.output))
        if seen is None or entry.recorded_at >= seen.recorded_at:
            latest[entry.project, entry.output] = entry
    return [
        SimJob(
            output=e.output,
            kind=e.kind if e.kind in ("compile", "link") else "other",
            peak_bytes=e.peak_rss_bytes,
            wall_s=e.wall_s,
            cpu_s=e.cpu_s,
            runq_wait_s=e.runq_wait_s,
            target=e.target,
        )
        for e in latest.values()
    ]
