"""Admission policy (pure): which waiting jobs may start now.

A job is admitted when `sum(reserved of running) + predicted(job) <= budget` and its CPU share fits
in the free slots, with `reserved = max(predicted, current tree RSS)`. A job's CPU share is 1 slot
unless its profile shows it mostly waiting (`cpu_share`: on a CPU less than half the time it did
not spend queueing for one), so jobs that hold memory while they wait do not keep a core idle.
Among waiting jobs the longest goes first where profiles say how long (its recorded curve's
duration: the longest job bounds the build, as ninja's own critical-path order knows), then the
largest predicted job that fits (big jobs are the hard ones to place; small ones backfill). A
job predicted above the whole budget runs alone: nothing new starts until it can start, and
nothing starts beside it.

Two smaller policies live here too, so that they can be tested without processes:
`gather_hold_s` (at start-up, wait a moment for the first launchers to register before the
first admission, so this order applies from the first decision) and `capped_prior` (a guess
for a never-measured job is at most one slot's share of the budget). What happens when running
jobs outgrow their admission (pause, freeze, kill) is policy.pressure_actions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from buildctl.govern.policy import (
    GRID_POINTS,
    Curve,
    Envelope,
    curve_duration,
    grid,
    horizon_of,
    waiting_envelope,
)

# --- CPU shares --------------------------------------------------------------------------------

WAITING_JOB_RATIO = 0.5  # below this CPU/wall a job counts as mostly waiting
MIN_CPU_SHARE = 0.25  # ...and takes at least this much of a slot: at most 4 x slots jobs at once
MIN_SHARE_WALL_S = 1.0  # shorter runs say too little about a job's CPU use


def cpu_share(cpu_s: float | None, wall_s: float | None, runq_wait_s: float = 0.0) -> float:
    """The fraction of a CPU slot a job takes, from one measured run: the share of its time on
    a CPU had it not waited for one, `cpu / (wall - run-queue wait)`.

    Taking the run-queue wait out of the wall keeps a compile measured on an overloaded machine
    (little CPU per wall second, the rest waiting for a CPU) a whole-slot job, and keeps a job
    that sleeps from looking busier after a run beside too many others; either mistake would
    feed itself from build to build. 1.0 for anything on a CPU at least half its own time;
    below that the ratio, at least MIN_CPU_SHARE. Unknown, very short or parallel (CPU above
    wall) runs: 1.0."""
    if not cpu_s or not wall_s or wall_s < MIN_SHARE_WALL_S:
        return 1.0
    ratio = cpu_s / max(wall_s - max(0.0, runq_wait_s), cpu_s)
    if ratio >= WAITING_JOB_RATIO:
        return 1.0
    return max(MIN_CPU_SHARE, round(ratio, 2))


@dataclass(frozen=True)
class Waiting:
    job_id: int
    predicted: int
    enqueued_at: float
    cpu: float = 1.0  # its CPU share (`cpu_share`)
    curve: Curve = ()  # its recorded RSS curve, when its profile has one (policy.Envelope)
    # Key of its family while nothing of that family is measured ("" once something is): a
    # slow start admits at most `unknown_limit` such jobs of one family at once.
    unknown_group: str = ""


@dataclass(frozen=True)
class Running:
    job_id: int
    predicted: int
    current_rss: int
    exclusive: bool = False
    cpu: float = 1.0
    envelope: Envelope | None = None  # its memory from now on; None: max(predicted, live)
    unknown_group: str = ""

    @property
    def reserved(self) -> int:
        return max(self.predicted, self.current_rss)

    def future(self) -> Envelope:
        return self.envelope or Envelope((), 0.0, self.reserved)


@dataclass(frozen=True)
class Decision:
    admit: tuple[int, ...]
    exclusive: tuple[int, ...]  # subset of admit that runs alone (predicted above the budget)
    reason: str  # why the first waiting job did not start, for the live view


_EPS = 1e-9


def _priority(job: Waiting) -> tuple[float, int, float, int]:
    """Longest first, then largest first. With memory to spare, 16-core second builds whose
    jobs all tied on memory took 0.96x and 1.19x plain -j16 largest first (the 40 s jobs
    started first by chance in the first), 0.86x and 0.97x longest first."""
    duration = curve_duration(job.curve) if job.curve else 0.0
    return (-round(duration, 1), -job.predicted, job.enqueued_at, job.job_id)


def reserved_total(running: Sequence[Running]) -> int:
    return sum(job.reserved for job in running)


def decide(
    waiting: Sequence[Waiting],
    running: Sequence[Running],
    budget: int,
    slots: int,
    *,
    paused: bool = False,
    now: float = 0.0,
    max_bypass_s: float = 60.0,
    unknown_limit: int | None = None,
    unknown_limits: Mapping[str, int] | None = None,
) -> Decision:
    """Pick the jobs to admit now.

    A job fits when the future total of the running jobs, the ones admitted in this decision
    and it stays under the budget (policy.Envelope: jobs with recorded curves count at what
    they will still reach, when they will reach it; others at max(predicted, live RSS)).
    `paused` (host memory under the low-water mark, or the projected total near the budget)
    admits nothing. `max_bypass_s`: once the largest waiting job has waited this long, smaller
    jobs stop overtaking it, so it cannot starve behind a stream of small ones.
    `unknown_limit`: at most this many jobs of one unmeasured family (`unknown_group`) run at
    once; `unknown_limits` overrides it per family (the ramp, policy.unknown_family_limit).
    """
    if not waiting:
        return Decision((), (), "")
    if paused:
        return Decision((), (), "paused: memory")
    if any(job.exclusive for job in running):
        return Decision((), (), "a job predicted above the budget is running alone")

    free_slots = slots - sum(job.cpu for job in running)
    envelopes = {w.job_id: waiting_envelope(w.curve, w.predicted) for w in waiting}
    running_envelopes = [job.future() for job in running]
    horizon = horizon_of([*running_envelopes, *envelopes.values()])
    total = [0] * (GRID_POINTS + 1)
    for envelope in running_envelopes:
        total = [a + b for a, b in zip(total, grid(envelope, horizon), strict=True)]
    unknown_running: dict[str, int] = {}
    for job in running:
        if job.unknown_group:
            unknown_running[job.unknown_group] = unknown_running.get(job.unknown_group, 0) + 1
    order = sorted(waiting, key=_priority)
    admitted: list[int] = []
    reason = ""
    blocked_since: float | None = None  # enqueue time of the largest job that did not fit

    for job in order:
        if free_slots < MIN_CPU_SHARE - _EPS:
            reason = reason or "all CPU slots busy"
            break
        if job.predicted > budget:
            if not running and not admitted:
                return Decision((job.job_id,), (job.job_id,), "")
            # Drain: the oversized job needs the machine to itself.
            return Decision(tuple(admitted), (), reason or "draining for a job above the budget")
        limit = (unknown_limits or {}).get(job.unknown_group, unknown_limit)
        if (
            limit is not None
            and job.unknown_group
            and unknown_running.get(job.unknown_group, 0) >= limit
        ):
            reason = reason or "learning: a few jobs of an unmeasured family at a time"
            continue
        column = grid(envelopes[job.job_id], horizon)
        if job.cpu > free_slots + _EPS:
            # A job that mostly waits may still fit in what is left of the slots.
            reason = reason or "all CPU slots busy"
        elif max(a + b for a, b in zip(total, column, strict=True)) <= budget:
            if blocked_since is not None and now - blocked_since >= max_bypass_s:
                reason = "holding memory for a long-waiting large job"
                break
            admitted.append(job.job_id)
            total = [a + b for a, b in zip(total, column, strict=True)]
            free_slots -= job.cpu
            if job.unknown_group:
                unknown_running[job.unknown_group] = unknown_running.get(job.unknown_group, 0) + 1
            continue
        else:
            reason = reason or "waiting for memory"
        if blocked_since is None:
            blocked_since = job.enqueued_at
    return Decision(tuple(admitted), (), reason)


# --- start-up gathering ------------------------------------------------------------------------

GATHER_QUIET_S = 0.1  # no new launcher for this long: ninja has started its first batch
GATHER_MAX_S = 0.5  # ...but never hold the first admission longer than this after the first one


def gather_hold_s(
    now: float,
    first_arrival: float | None,
    last_arrival: float | None,
    *,
    quiet_s: float = GATHER_QUIET_S,
    max_s: float = GATHER_MAX_S,
) -> float:
    """Seconds to hold the build's first admission still (0: decide now).

    Ninja starts its whole window of launchers at once, but they register one by one (each is
    a Python process; 16 of them take ~0.4 s on 2 cores). Admitting the first arrivals at once
    would give the slots to whoever registered first, not to the largest job. So before the
    first admission wait until no launcher has registered for `quiet_s`, at most `max_s` after
    the first one registered. Only the first admission of a build waits: later ones fill a slot
    that just freed up, from a queue that is already there.
    """
    if first_arrival is None:
        return 0.0
    last = first_arrival if last_arrival is None else last_arrival
    remaining = min(last + quiet_s, first_arrival + max_s) - now
    return remaining if remaining > 1e-6 else 0.0


# --- priors under a small budget ---------------------------------------------------------------


def capped_prior(prior: int, budget: int, slots: int) -> int:
    """The prediction for a job never measured before: the prior, at most budget / slots.

    With the conservative default priors (1 GiB compile, 1.5 GiB link) above budget / slots a
    first build under a small budget runs one job at a time. Capped, unknown jobs fit beside
    each other; a job that turns out larger is caught by its live RSS (its reservation is
    max(predicted, live RSS), so nothing new starts beside it) and, if the total still grows
    toward the budget, frozen by the memory guard (policy.pressure_actions).
    """
    return max(1, min(prior, budget // max(1, slots)))
