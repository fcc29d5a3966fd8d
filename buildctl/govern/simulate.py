"""Will it fit? A pure, event-driven simulation of a governed build on another host shape.

Input: one record per job (measured peak RSS, wall time, CPU time, kind, target), a host shape
(CPU slots, memory budget, optionally RAM and swap). Output: the predicted schedule, makespan,
peak total RSS, the jobs that must run alone, and the swap they need. The admission policy is
the governor's own `scheduler.decide`, against the governor's admission budget (budget x
`policy.FREEZE_AT`), called at every event (a job becomes visible or ends) and, while jobs wait
and running jobs have RSS curves, on a time grid: a running job's envelope
(`policy.running_envelope`) shrinks as it moves past its peak, so an overlap may become possible
mid-run. The governor re-decides on every sample (`decide_step_s`, 0.25 s); the simulation
every `decide_step_s` or every `policy.CURVE_BLUR` of the check's horizon, whichever is longer
(each decision costs one grid per job in ninja's window; the check blurs curves by as much, so
an admission that becomes possible mid-run is found at most that late), and only when a waiting
job's CPU share fits (otherwise `decide` certainly admits nothing).
Waiting jobs are offered with the curve they are predicted with (`scheduler.Waiting.curve`), so
jobs whose peaks do not coincide overlap as in the governor.

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
- Memory: a job with an RSS curve (`SimJob.curve`, seconds since its start -> bytes, held
  between points; 0 before its first sample, as the governor's live RSS is) uses exactly that
  curve in every run; the governor's running envelope gets the job's RSS at its elapsed time
  from it. The peak total is the largest sum of the running jobs' curve values over the final
  schedule (exact for such step curves). A job without a curve holds its peak for its whole run
  (its share of the peak total is an upper bound, as before). Predictions are the profile's
  (peak and curve) unless a replay passes what the governor predicted at the time, curve
  included (`predicted_curve`: a sibling's, or none for a prior).
- The memory guard (pause, freeze, kill on live totals) is not modelled; a replay repeats the
  freezes of its report (`SimJob.pauses`, from the freeze/thaw events): a frozen job keeps its
  slot and its RSS, and its curve resumes where it stopped. A plan assumes no freezes.
- Device links: with `HostShape.max_device_links` K > 0, at most K jobs marked `device_link`
  run at once, earliest-visible first (`govern.links.offerable`, as the governor's admission
  filters its waiting jobs); others are offered as usual. Reports and profiles (schema 3) mark
  the links the governor saw as device links; a report from before that field marks a link
  predicted from its command line (source "device-link"); profiles from before schema 3 mark
  none, so a plan from them applies no cap until the links have run again.
- Learning: a replayed job the governor had never measured (`learns`: predicted on a prior
  or from siblings) is predicted as the governor does, from the jobs this simulated build has
  finished (`policy.sibling_prediction`; reports name no compiler and no source size, so all
  jobs count as one compiler and sizes do not scale), again whenever a job ends; before any
  sibling has finished, at its kind's recorded prior with its family's slow start
  (`policy.unknown_family_limit` for jobs with an `unknown_group`; the key leaves out the
  compiler), ramped as the governor ramps it: a running job of the family vouches on its
  recorded curve up to where it is (`policy.vouches`), and while a family ramps decisions are
  retaken every `decide_step_s`.
- Not modelled either: admission pauses, a job running slower or longer than its record (its
  curve is never stretched), and ticks falling at other phases of the governor's sample clock.
  Where a learned prediction is below a job's real peak, the simulation overcommits as
  admission alone would; the real guard pauses admission and freezes jobs instead.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from buildctl.govern import links, policy, scheduler
from buildctl.govern.profiles import ProfileEntry, family_of, target_of
from buildctl.host import default_budget
from buildctl.report import BuildReport, JobRecord

DEFAULT_MAX_BYPASS_S = 60.0  # the governor's default (GovernorOptions.max_bypass_s)
# A report's wall_s runs from admission to the governor having processed `done`, so the next
# admission follows at once (measured: 0-4 ms): nothing to add by default.
DEFAULT_SETTLE_S = 0.0
# ninja starting a link's launcher (a Python process) until it registers: 80-110 ms measured on
# the 2-core test machine (up to 2 s under heavy load).
DEFAULT_DISPATCH_S = 0.1
# Report curves' times are rounded to this (jobs.policy_curve), event times to 1 ms.
CURVE_ROUNDING_S = 0.01
# Predictions of a never-measured job, made in the build itself (Governor._predict).
LEARNING_SOURCES = ("prior", "sibling", "sibling-dir")
# The governor re-decides on every sample tick (GovernorOptions.sample_interval_s).
DEFAULT_DECIDE_STEP_S = 0.25


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
    # Its RSS over its run ((seconds since start, bytes), thinned); () = holds its peak throughout.
    curve: policy.Curve = ()
    # The curve the governor predicts it with (replays: a sibling's, or () for a prior); None =
    # its own curve (a warm profile).
    predicted_curve: policy.Curve | None = None
    # Family key while it is predicted on a prior (replays): the governor's slow start for a
    # never-measured family (scheduler.Waiting.unknown_group).
    unknown_group: str = ""
    # Replays: when the memory guard froze it, as (seconds of its run before the freeze, seconds
    # frozen). A frozen job keeps its slot and its RSS; its curve and wall_s leave that time out.
    pauses: tuple[tuple[float, float], ...] = ()
    # Replays of a job the governor had never measured: predicted from the siblings this build
    # has measured so far (policy.sibling_prediction), as the governor re-predicts a waiting
    # job whenever one ends; before any has, `prior_bytes` with the slow start of its family.
    learns: bool = False
    prior_bytes: int | None = None
    # A SYCL device link (as the governor marked it in the report or the profile DB):
    # `HostShape.max_device_links` of them run at once, as in the governor.
    device_link: bool = False
    # `prediction_curve` is this job's own record (a warm profile; a replayed exact or output
    # prediction), not a sibling's: policy.running_envelope scales the two differently.
    own_curve: bool = True

    @property
    def occupancy_s(self) -> float:
        """From admission to its end: its run plus the time it was frozen."""
        return self.wall_s + sum(length for _, length in self.pauses)

    def running_s(self, since_start_s: float) -> float:
        """How far into its run (its curve's clock) it is `since_start_s` after admission."""
        shift = 0.0
        for offset, length in self.pauses:
            begin = offset + shift  # the freeze, on the clock since admission
            if since_start_s <= begin:
                break
            shift += min(length, since_start_s - begin)
            if since_start_s < begin + length:
                break
        return since_start_s - shift

    def frozen_at(self, since_start_s: float) -> bool:
        """Whether the guard held it frozen `since_start_s` after admission (replays)."""
        shift = 0.0
        for offset, length in self.pauses:
            begin = offset + shift
            if begin <= since_start_s < begin + length:
                return True
            shift += length
        return False

    @property
    def predicted(self) -> int:
        return self.peak_bytes if self.predicted_bytes is None else self.predicted_bytes

    @property
    def prediction_curve(self) -> policy.Curve:
        return self.curve if self.predicted_curve is None else self.predicted_curve

    def rss_at(self, elapsed_s: float) -> int:
        """Its RSS `elapsed_s` into its run: the last curve point at or before it (0 before the
        first one); without a curve, its peak."""
        if not self.curve:
            return self.peak_bytes
        rss = 0
        for t, value in self.curve:
            if t > elapsed_s:
                break
            rss = value
        return rss

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
    # At most this many device links at once (GovernorOptions.max_device_links; 0 = no cap).
    max_device_links: int = 0

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
    device_link: bool = False  # held by HostShape.max_device_links


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
    admission_fraction: float = policy.FREEZE_AT,
    decide_step_s: float = DEFAULT_DECIDE_STEP_S,
) -> SimResult:
    """List-schedule `jobs` with `scheduler.decide` and report what the governor would do.
    `admission_fraction`: of the budget, what admission packs to (the governor's FREEZE_AT);
    `decide_step_s`: how often decisions are retaken between events while running jobs have
    curves (the governor's sample interval)."""
    budget = host.budget_bytes
    admission_budget = int(budget * admission_fraction)
    slots = host.effective_slots
    width = host.effective_width
    unknown_limit = policy.unknown_family_limit(slots)
    shares = [1.0 if host.whole_slots else job.cpu_share for job in jobs]
    deps, notes = infer_dependencies(jobs)
    priority = _path_lengths(jobs, deps)
    missing = {i: set(d) for i, d in deps.items()}
    dependants: dict[int, list[int]] = {}
    for link, needs in deps.items():
        for index in needs:
            dependants.setdefault(index, []).append(link)
    # Each job as the governor predicts it now: learning jobs (replays of never-measured ones)
    # are predicted again when they register and whenever a job ends, as the governor does.
    predicted = list(jobs)
    done: list[policy.Sibling] = []

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
    busy_peak = 0
    finished = 0
    last_reason = ""
    placed: list[tuple[SimJob, float]] = []  # (job, start) for the peak total

    while finished < len(jobs):
        while arriving and arriving[0][0] <= t:
            index = heapq.heappop(arriving)[1]
            heapq.heappush(pending, (-priority[index], index))
        while pending and len(visible) + len(running) < width:
            index = heapq.heappop(pending)[1]
            visible[index] = t
            if jobs[index].learns:
                predicted[index] = _learned(jobs[index], done, _running_siblings(
                    jobs, running, starts, t))
        offered = _offered(jobs, visible, running, host.max_device_links)
        if _may_admit(offered, running, shares, slots):
            decision = scheduler.decide(
                [_waiting(predicted[i], i, at, shares[i]) for i, at in offered.items()],
                [_running(predicted[i], i, t - starts[i], excl, shares[i])
                 for i, excl in running.items()],
                admission_budget,
                slots,
                now=t,
                max_bypass_s=max_bypass_s,
                unknown_limit=unknown_limit,
                unknown_limits=_unknown_limits(predicted, running, starts, t, slots),
            )
            last_reason = decision.reason
            for index in decision.admit:
                del visible[index]
                running[index] = index in decision.exclusive
                starts[index] = t
                heapq.heappush(ends, (t + jobs[index].occupancy_s + settle_s, index))
        busy_peak = max(busy_peak, len(running))
        next_end = ends[0][0] if ends else math.inf
        next_arrival = arriving[0][0] if arriving else math.inf
        next_tick = math.inf
        if visible and _ramping(predicted, visible, running):
            # An unmeasured family's slow start ramps as its running jobs vouch for it.
            next_tick = (math.floor(t / decide_step_s + 1e-9) + 1) * decide_step_s
        elif visible and any(_moves(predicted[i]) for i in running):
            # The governor re-decides every sample; here at most every CURVE_BLUR of the
            # check's horizon (the blur it allows every curve anyway): each decision costs a
            # grid per waiting job, and plans of hundreds of jobs must stay quick.
            horizon = policy.horizon_of(
                [_running(predicted[i], i, t - starts[i], False, 1.0).future() for i in running]
                + [policy.waiting_envelope(predicted[i].prediction_curve, predicted[i].predicted)
                   for i in visible]
            )
            step = max(decide_step_s, horizon * policy.CURVE_BLUR)
            next_tick = (math.floor(t / step + 1e-9) + 1) * step
        if next_end == math.inf and next_arrival == math.inf:
            # decide() always admits something on an idle machine; fail loudly should a policy
            # change ever break that, instead of looping forever.
            raise RuntimeError(f"simulation stalled at t={t:.1f}s: {last_reason}")
        if min(next_arrival, next_tick) < next_end:
            t = min(next_arrival, next_tick)
            continue
        t = next_end
        while ends and ends[0][0] <= t:
            index = heapq.heappop(ends)[1]
            exclusive = running.pop(index)
            job = jobs[index]
            start = starts[index]
            schedule.append(
                Scheduled(
                    job.output, job.kind, start, start + job.occupancy_s, job.peak_bytes,
                    exclusive, job.device_link,
                )
            )
            placed.append((job, start))
            finished += 1
            done.append(_sibling(job, job.peak_bytes, finished=True))
            if any(jobs[i].learns for i in visible):  # Governor._refresh_guesses
                siblings = _running_siblings(jobs, running, starts, t)
                for i in visible:
                    if jobs[i].learns:
                        predicted[i] = _learned(jobs[i], done, siblings)
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
        peak_total_bytes=peak_total(placed),
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


def _offered(jobs: Sequence[SimJob], visible: dict[int, float], running: dict[int, bool],
             max_links: int) -> dict[int, float]:
    """The visible jobs admission may consider now: all of them but the device links beyond the
    cap, as the governor's `_link_allowed` filters its waiting jobs (govern.links.offerable)."""
    if max_links <= 0:
        return visible
    running_links = sum(1 for i in running if jobs[i].device_link)
    allowed = links.offerable(
        [links.LinkCandidate(i, jobs[i].device_link, at) for i, at in visible.items()],
        running_links,
        max_links,
    )
    return {i: visible[i] for i in allowed}


def _may_admit(
    visible: dict[int, float], running: dict[int, bool], shares: Sequence[float], slots: int
) -> bool:
    """False when `scheduler.decide` certainly admits nothing (nothing waits, a job runs alone,
    or no waiting job's CPU share fits in the free slots): skipping those calls is what keeps
    deciding on every tick cheap."""
    if not visible or any(running.values()):
        return False
    free = slots - sum(shares[i] for i in running)
    return any(shares[i] <= free + 1e-9 for i in visible)


def _moves(job: SimJob) -> bool:
    """Whether its reservation changes while it runs: with a predicted curve (its position
    moves) or a live RSS above its prediction (its own curve); otherwise deciding again
    between events changes nothing."""
    return bool(job.prediction_curve) or policy.curve_peak(job.curve) > job.predicted


def _unknown_limits(predicted: Sequence[SimJob], running: dict[int, bool],
                    starts: dict[int, float], t: float, slots: int) -> dict[str, int]:
    """Each unmeasured family's slow-start limit, ramped by its running jobs that vouch for it
    on their curves so far (Admission._unknown_limits)."""
    votes = []
    for i in running:
        job = predicted[i]
        if not job.unknown_group or job.frozen_at(t - starts[i]):
            continue
        elapsed = job.running_s(t - starts[i])
        so_far = tuple(point for point in job.curve if point[0] <= elapsed)
        votes.append((job.unknown_group, policy.vouches(so_far, job.predicted, elapsed)))
    return policy.ramped_limits(slots, votes)


def _ramping(predicted: Sequence[SimJob], visible: dict[int, float],
             running: dict[int, bool]) -> bool:
    """Whether a waiting job's family is on its slow start with jobs running (which may vouch
    for it as time passes, without any event)."""
    groups = {predicted[i].unknown_group for i in running} - {""}
    return any(predicted[i].unknown_group in groups for i in visible)


def _waiting(job: SimJob, index: int, enqueued_at: float, share: float) -> scheduler.Waiting:
    return scheduler.Waiting(index, job.predicted, enqueued_at, share,
                             curve=job.prediction_curve, unknown_group=job.unknown_group)


def _sibling(job: SimJob, peak: int, *, finished: bool) -> policy.Sibling:
    """A job as policy.sibling_prediction sees it (reports do not name the compiler: one)."""
    return policy.Sibling(
        compiler="", kind=job.kind, directory=str(PurePosixPath(job.output).parent),
        family=family_of(job.output), source_bytes=0, peak=peak, finished=finished,
        curve=job.curve if finished else (),
    )


def _running_siblings(jobs: Sequence[SimJob], running: dict[int, bool],
                      starts: dict[int, float], t: float) -> list[policy.Sibling]:
    """Running jobs as siblings: lower bounds, the most each reached so far."""
    siblings = []
    for i in running:
        job = jobs[i]
        elapsed = job.running_s(t - starts[i])
        reached = max((rss for at, rss in job.curve if at <= elapsed), default=0) \
            if job.curve else job.peak_bytes
        siblings.append(_sibling(job, reached, finished=False))
    return siblings


def _learned(job: SimJob, done: Sequence[policy.Sibling],
             running: Sequence[policy.Sibling]) -> SimJob:
    """A never-measured job's prediction from this build's siblings (Governor._predict): their
    estimate and curve once one has finished, else its prior, a few of its family at a time."""
    guess = policy.sibling_prediction(_sibling(job, 0, finished=False), [*done, *running])
    if guess is None:
        return dataclasses.replace(
            job, predicted_bytes=job.prior_bytes, predicted_curve=(),
            unknown_group=f"{job.kind}|{family_of(job.output)}",
        )
    estimate, _, curve = guess
    return dataclasses.replace(job, predicted_bytes=estimate, predicted_curve=curve,
                               unknown_group="", own_curve=False)


def _running(job: SimJob, index: int, since_start_s: float, exclusive: bool,
             share: float) -> scheduler.Running:
    """A running job as the governor's admission sees it `since_start_s` after admission (its
    position on its curves: frozen time left out, as Job.running_s does)."""
    elapsed = job.running_s(since_start_s)
    rss = job.rss_at(elapsed)
    # The governor places a job on its own record by the lower of its wall and CPU progress (a
    # sibling's prediction carries no CPU time: wall only). With no CPU curve, the simulator
    # takes such a job's waiting to come first (memcc holds its memory asleep, then compiles),
    # so it admits a partner no earlier than the governor did (a warm replay paired two 450 MB
    # jobs 0.4 s early and predicted 844-906 MiB for a 753 MiB build). A CPU-bound job
    # (CPU = wall) is placed by the wall clock either way.
    by_cpu = job.own_curve and job.cpu_s > 0
    cpu_so_far = max(0.0, elapsed - max(0.0, job.wall_s - job.cpu_s)) if by_cpu else 0.0
    envelope = policy.running_envelope(job.prediction_curve, job.predicted, rss, elapsed,
                                       cpu_s=cpu_so_far,
                                       predicted_cpu_s=job.cpu_s if by_cpu else 0.0,
                                       own=job.own_curve)
    if job.frozen_at(since_start_s):
        envelope = policy.held_envelope(envelope)  # as the governor's admission sees it
    return scheduler.Running(index, job.predicted, rss, exclusive, share, envelope=envelope,
                             unknown_group=job.unknown_group)


def peak_total(placed: Iterable[tuple[SimJob, float]]) -> int:
    """The largest total RSS of the jobs running together: each job's curve placed at its start
    (its peak over its whole run when it has none). RSS holds between curve points, so the total
    changes only at a job's start, curve point or end: sweeping those moments is exact."""
    changes: list[tuple[float, int]] = []  # (time, change of the total)
    for job, start in placed:
        end = start + job.occupancy_s
        if not job.curve:
            changes += [(start, job.peak_bytes), (end, -job.peak_bytes)]
            continue
        before = 0
        for t, rss in job.curve:
            if t >= job.wall_s:
                break  # a curve point at (or, rounded, after) the job's end
            # Frozen before this point: it comes that much later (RSS holds while frozen).
            later = sum(length for offset, length in job.pauses if offset < t)
            changes.append((start + t + later, rss - before))
            before = rss
        changes.append((end, -before))
    changes.sort()
    total = best = 0
    for position, (when, delta) in enumerate(changes):
        total += delta
        # Moments that coincide count once every change at them is in (an end and a start).
        if position + 1 == len(changes) or changes[position + 1][0] > when:
            best = max(best, total)
    return best


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
    frozen = _freezes(report) if replay else {}
    priors: dict[str, int] = {}  # per kind: what a never-measured job was predicted at first
    for record in records:
        if record.prediction_source == "prior":
            priors[record.kind] = max(priors.get(record.kind, 0), record.predicted_rss_bytes)
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
                curve=_curve(record.curve),
                predicted_curve=_curve(record.predicted_curve) if replay else None,
                # Admitted on a prior: the governor's slow start for its family applied.
                unknown_group=(
                    f"{record.kind}|{family_of(record.output)}"
                    if replay and record.prediction_source == "prior"
                    else ""
                ),
                pauses=_pauses(record, frozen.get(record.output, [])),
                learns=replay and record.prediction_source in LEARNING_SOURCES,
                own_curve=not replay or record.prediction_source in ("exact", "output"),
                prior_bytes=priors.get(record.kind, record.predicted_rss_bytes),
                device_link=record.kind == "link" and (
                    record.device_link or record.prediction_source == "device-link"),
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
            curve=_curve(e.curve),
            device_link=e.kind == "link" and e.device_link,
        )
        for e in latest.values()
    ]


def _freezes(report: BuildReport) -> dict[str, list[tuple[float, float]]]:
    """Per output, the (freeze, thaw) times of the report's event log (a freeze without its
    thaw lasts to the end of the build)."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    since: dict[str, float] = {}
    for event in sorted(report.events, key=lambda e: e.t_s):
        if event.output is None:
            continue
        if event.kind == "freeze":
            since.setdefault(event.output, event.t_s)
        elif event.kind == "thaw" and event.output in since:
            pairs.setdefault(event.output, []).append((since.pop(event.output), event.t_s))
    end = max((r.started_at_s + r.wall_s + r.frozen_s for r in report.jobs), default=0.0)
    for output, at in since.items():
        pairs.setdefault(output, []).append((at, max(at, end)))
    return pairs


def _pauses(record: JobRecord, freezes: list[tuple[float, float]]) -> tuple[
    tuple[float, float], ...
]:
    """The freezes of a record's last attempt as (seconds of its run before the freeze, seconds
    frozen). The guard freezes on the sample it just took, so that sample belongs before the
    freeze: a curve point within CURVE_ROUNDING_S after the offset moves it there."""
    pauses: list[tuple[float, float]] = []
    frozen = 0.0
    end = record.started_at_s + record.wall_s + record.frozen_s + 1e-3
    for begin, thaw in freezes:
        if not record.started_at_s <= begin <= end:
            continue  # an earlier attempt's
        offset = max(0.0, begin - record.started_at_s - frozen)
        offset = max([offset] + [t for t, _ in record.curve
                                 if offset < t <= offset + CURVE_ROUNDING_S])
        pauses.append((offset, thaw - begin))
        frozen += thaw - begin
    return tuple(pauses)


def _curve(points: Iterable[Sequence[float]]) -> policy.Curve:
    """A stored curve (JSON lists or tuples) as policy.Curve."""
    return tuple((float(t), int(rss)) for t, rss in points)
