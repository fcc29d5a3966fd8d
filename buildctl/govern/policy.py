"""Memory policy (pure): what the governor does about memory, over plain data.

The governor's loop feeds these functions snapshots of its jobs and carries out what they
return; nothing here reads /proc, sends signals or touches the clock. Four decisions live here:

- **Reservations over time** (`Envelope`, `future_total`). A job's memory is a curve, not a
  constant: real compilers peak in a short phase (nvcc's cicc, icpx's device code generation,
  g++'s GC) and spend most of their run well below it. A running job whose profile has a curve
  reserves what it will still reach from where it is now, blurred in time because a loaded
  machine shifts every curve; a waiting job is admitted when the jobs' future total stays under
  the budget, so jobs whose peaks do not coincide may overlap.
- **The safety net, in order of cost** (`pressure_actions`). Act on the live total with a
  short-horizon growth estimate (a job's own curve where it has one, else a sustained rate;
  steps count only near the budget), never on a sum of worst cases: (1) pause admission when the
  projected total nears the budget or the host runs low; (2) freeze (SIGSTOP) the growing job
  that costs least to hold, keeping the oldest job running so the build always progresses, and
  thaw when memory returns; (3) only when the live total is over the budget, or about to pass
  it with nothing left to freeze (or the host is at its critical mark), kill the job whose
  death loses the least work per byte freed.
- **Retry and censoring** (`after_memory_kill`, `censored_record`). A job is killed for memory at
  most once per build; its re-run is protected (never frozen or killed again) and reserved at
  least at what the killed run reached. A run cut short gives a lower bound, never a peak.
- **Learning inside one build** (`sibling_prediction`, `unknown_family_limit`). A never-measured
  job is predicted from measured siblings in this build (same compiler and kind; the same
  target directory and source family first; scaled by source size), and while a family has no
  finished job only a few of its jobs start at once, more as running ones stop climbing well
  under their reservation (`vouches`): a first build converges after a few jobs instead of
  running everything on a guess, and a family of light jobs ramps up within seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Curve = tuple[tuple[float, int], ...]  # (seconds since the job started, tree RSS in bytes)

# --- curves and envelopes ----------------------------------------------------------------------

CURVE_BLUR = 0.05  # of a job's duration: how far a loaded machine shifts its curve in time
PROGRESS_MARGIN = 0.05  # progress is estimated low by this much (earlier = larger future peak)
GRID_POINTS = 48  # resolution of the future-total check


def curve_duration(curve: Curve) -> float:
    return curve[-1][0] if curve else 0.0


def curve_peak(curve: Curve) -> int:
    return max((rss for _, rss in curve), default=0)


def _max_over(curve: Curve, start: float, end: float) -> int:
    """Largest RSS of the curve over [start, end] (curve time); the sample at or before
    `start` counts, since RSS holds between samples."""
    current = 0  # the value at `start`: the last sample at or before it
    best = 0
    for t, rss in curve:
        if t <= start:
            current = rss
            continue
        if t > end:
            break
        best = max(best, rss)
    return max(best, current)


@dataclass(frozen=True)
class Envelope:
    """A job's memory from now on, as the admission check sees it.

    `curve` is the recorded curve (empty: unknown shape, so the job holds `floor` until it
    ends, which we do not know either); `position` is where on the curve the job is now (curve
    seconds); `scale` stretches the curve's RSS (a run heavier than its record); `floor` is a
    lower bound the job holds until it ends (its live RSS, or its prediction when no curve)."""

    curve: Curve
    position: float
    floor: int
    scale: float = 1.0

    @property
    def remaining_s(self) -> float:
        if not self.curve:
            return math.inf
        return max(0.0, curve_duration(self.curve) - self.position)

    def at(self, dt: float, reach: float = 0.0) -> int:
        """RSS `dt` seconds from now, blurred over ± CURVE_BLUR of the duration (or ± `reach`,
        if wider: a grid point stands for the time up to its neighbours, so a peak shorter than
        the grid's step is not missed). Past the end of the curve (plus the blur) the job is
        done and holds nothing."""
        if not self.curve:
            return self.floor
        duration = curve_duration(self.curve)
        blur = max(CURVE_BLUR * duration, reach)
        t = self.position + dt
        if t - blur > duration:
            return 0
        value = int(_max_over(self.curve, max(0.0, t - blur), t + blur) * self.scale)
        # The live RSS holds at least until the curve says the job falls below it; once the
        # blurred curve has moved past now, trust the curve.
        return max(value, self.floor) if dt <= blur else value

    def peak_ahead(self) -> int:
        """The most it will still reach (the remaining peak)."""
        if not self.curve:
            return self.floor
        start = max(0.0, self.position - CURVE_BLUR * curve_duration(self.curve))
        return max(self.floor, int(_max_over(self.curve, start, math.inf) * self.scale))


def expected_soon(curve: Curve, elapsed_s: float, horizon_s: float) -> int:
    """What a job's own recorded curve reaches over the next `horizon_s`, from where the wall
    clock puts it (no margin, no blur: the freeze check wants what comes next, and admission
    already allowed for a shifted curve)."""
    if not curve:
        return 0
    return _max_over(curve, elapsed_s, elapsed_s + horizon_s)


SOON_STEPS = 8  # the horizon's pieces when a curve's path is summed across jobs


def expected_path(curve: Curve, elapsed_s: float, horizon_s: float,
                  steps: int = SOON_STEPS) -> tuple[int, ...]:
    """The most a job's own recorded curve holds in each of `steps` equal pieces of the next
    `horizon_s`. Summed piece by piece across jobs (`projected_total`), peaks that follow one
    another within the horizon are not counted as if they met."""
    if not curve:
        return ()
    step = horizon_s / steps
    return tuple(
        _max_over(curve, elapsed_s + i * step, elapsed_s + (i + 1) * step) for i in range(steps)
    )


def running_envelope(
    curve: Curve,
    predicted: int,
    rss: int,
    elapsed_s: float,
    cpu_s: float = 0.0,
    predicted_cpu_s: float = 0.0,
    *,
    own: bool = False,
) -> Envelope:
    """The envelope of a running job. With a curve, the job's position on it is the lower of
    its wall- and CPU-based progress, less a margin: an early estimate can only overstate what
    is still to come (the remaining peak never grows as the position moves on). A job already
    above its record scales the rest of the curve up: above where the clock puts it on a
    sibling's curve (another job, maybe a heavier one), above all that is still ahead on its
    `own` curve (the same compile: a fast start is ahead in time, not heavier). Without a
    curve it reserves max(predicted, live) to the end, as a sum of peaks would."""
    if not curve:
        return Envelope((), 0.0, max(predicted, rss))
    duration = curve_duration(curve)
    progress = elapsed_s / duration if duration else 1.0
    if predicted_cpu_s > 0:
        progress = min(progress, cpu_s / predicted_cpu_s)
    progress = max(0.0, min(1.0, progress) - PROGRESS_MARGIN)
    position = progress * duration
    # On its own curve, a run ahead in time was scaled by how far ahead it was (up to 4x) and,
    # frozen so, held 4x its peak out of admission for 40 s on a real 16-core build. On a
    # sibling's curve the early scale is what keeps a heavier job from passing the budget.
    start = max(0.0, position - CURVE_BLUR * duration)
    recorded = _max_over(curve, start, math.inf if own else position)
    scale = max(1.0, rss / recorded) if recorded else 1.0
    return Envelope(curve, position, rss, min(scale, 4.0))


def held_envelope(envelope: Envelope) -> Envelope:
    """A frozen job does not move along its curve: until it is thawed, whenever that is, it
    holds the most it will still reach."""
    return Envelope((), 0.0, envelope.peak_ahead())


def waiting_envelope(curve: Curve, predicted: int) -> Envelope:
    """A job about to start: its whole curve (scaled to its predicted peak), or its predicted
    peak to the end when it has no curve."""
    if not curve:
        return Envelope((), 0.0, predicted)
    peak = curve_peak(curve)
    scale = max(1.0, predicted / peak) if peak else 1.0
    return Envelope(curve, 0.0, 0, scale)


def horizon_of(envelopes: Sequence[Envelope]) -> float:
    """How far ahead the future-total check looks: until the last job with a curve is done."""
    return max(
        (e.remaining_s + CURVE_BLUR * curve_duration(e.curve) for e in envelopes if e.curve),
        default=0.0,
    )


def grid(envelope: Envelope, horizon: float, points: int = GRID_POINTS) -> list[int]:
    """The envelope sampled at `points + 1` evenly spaced times from now to `horizon`."""
    if not envelope.curve or horizon <= 0:
        return [envelope.at(0.0)] * (points + 1)
    step = horizon / points
    return [envelope.at(i * step, reach=step / 2) for i in range(points + 1)]


def future_total(envelopes: Sequence[Envelope]) -> int:
    """The largest total the jobs will reach together from now on (grid over the longest
    finite remaining time; jobs with no curve count at their floor throughout)."""
    if not envelopes:
        return 0
    horizon = horizon_of(envelopes)
    columns = [grid(e, horizon) for e in envelopes]
    return max(sum(values) for values in zip(*columns, strict=True))


def fits_beside(running: Sequence[Envelope], candidate: Envelope, budget: int) -> bool:
    return future_total([*running, candidate]) <= budget


# --- pressure: pause, freeze, thaw, kill -------------------------------------------------------

GROWTH_HORIZON_S = 2.0  # how far ahead the growth estimate looks
PAUSE_AT = 0.90  # projected total / budget that pauses admission
FREEZE_AT = 0.97  # projected total / budget that freezes a growing job
FREEZE_LIVE_AT = 0.85  # live total / budget from which a step in RSS counts as growth
THAW_BELOW = 0.85  # a frozen job resumes when the total plus what it may still grow fits this
PREDICTION_SLACK = 1.05  # a job this far above its predicted peak has outgrown its profile
KILL_SAMPLES = 2  # a kill ahead of the budget looks this many sampling periods ahead...
KILL_HORIZON_S = 0.5  # ...but never further: the default period's two. A current climb is no
# forecast for longer: at 1 s (0.5 s samples) the nvcc trace's replay killed a job at 16 GiB
# that the budget never needed.
THAW_HORIZON_S = 10.0  # an unprofiled frozen job may grow this long at its rate before the freeze


def kill_horizon(sample_interval_s: float) -> float:
    """How far the kill ahead of the budget looks: two sampling periods, at most 0.5 s."""
    return min(KILL_HORIZON_S, KILL_SAMPLES * sample_interval_s)


@dataclass(frozen=True)
class LiveJob:
    """A running job as the memory guard sees it."""

    job_id: int
    rss: int
    growth_bps: float  # sustained RSS slope (bytes/s); frozen: the slope before the freeze
    started_at: float
    cpu_s: float  # work done so far: what a kill throws away
    frozen: bool = False
    protected: bool = False  # a re-run after a memory kill: never frozen or killed again
    peak_ahead: int = 0  # what its profile says it will still reach (0: unknown)
    soon: int = 0  # what its profile's curve says it reaches within the horizon (0: unknown)
    recent_bps: float | None = None  # the last window's slope, steps included (None: growth_bps)
    own_curve: bool = False  # `soon` comes from this job's own recorded curve
    soon_path: tuple[int, ...] = ()  # its own curve over the horizon, piece by piece
    predicted: int = 0  # its predicted peak (0: a prior, no real prediction)


@dataclass(frozen=True)
class PressureActions:
    pause: str = ""  # why admission is paused ("" = not paused)
    freeze: tuple[int, ...] = ()
    thaw: tuple[int, ...] = ()
    kill: int | None = None
    why: str = ""  # the evidence for a freeze or kill, for the event log


def _within(job: LiveJob) -> bool:
    """Not above its predicted peak (with slack): above it the profile was wrong."""
    return not job.predicted or job.rss <= job.predicted * PREDICTION_SLACK


def _ceiling(job: LiveJob) -> int | None:
    """The most a running job is expected to reach, or None when nothing says (no prediction,
    or it outgrew the one it had). Within its prediction: its own curve's remaining peak (a
    plateau included), else the predicted peak; a sibling's curve is another job's shape and
    timing, and scaled to this job's live RSS it overstates what is left."""
    if job.predicted:
        if not _within(job):
            return None
        return job.peak_ahead if job.own_curve and job.peak_ahead else job.predicted
    if job.peak_ahead and job.rss <= job.peak_ahead:
        return job.peak_ahead
    return None


def _growth(job: LiveJob, horizon_s: float, *, steps: bool = False) -> int:
    """What a running job adds over the horizon: what its own curve says comes next, when it has
    one and runs within it; else its sustained rate (with `steps`: the faster of that and its
    last window's, a step included), never past its ceiling (`_ceiling`)."""
    if job.frozen:
        return 0
    if job.own_curve and not steps and _within(job):
        # Its own record says what comes next; a compiler's phase steps are in it already,
        # and a rate would count each of them again as a trend.
        return max(0, job.soon - job.rss)
    # A recorded curve may know a rise is coming before the rate shows it.
    return max(_rate_growth(job, horizon_s, steps=steps), job.soon - job.rss)


def _rate_growth(job: LiveJob, horizon_s: float, *, steps: bool) -> int:
    """A running job's sustained rate (with `steps`: the faster of that and its last window's)
    over the horizon, never past its ceiling (`_ceiling`)."""
    rate = job.growth_bps
    if steps and job.recent_bps is not None:
        rate = max(rate, job.recent_bps)
    grow = max(0.0, rate) * horizon_s
    ceiling = _ceiling(job)
    if ceiling is not None:
        grow = min(grow, max(0, ceiling - job.rss))
    return int(grow)


def _imminent_growth(job: LiveJob, horizon_s: float = KILL_HORIZON_S) -> int:
    """What a running job adds within the kill horizon at the rate it climbs now (steps
    included), never past its ceiling: what a kill ahead of the budget goes by. Not its curve's
    next 2 s: on the nvcc trace that projection passed a 16 GiB budget the build never did."""
    return 0 if job.frozen else _rate_growth(job, horizon_s, steps=True)


def _follows_path(job: LiveJob, steps: bool) -> bool:
    return bool(job.soon_path) and job.own_curve and not steps and not job.frozen and _within(job)


def projected_total(jobs: Sequence[LiveJob], horizon_s: float = GROWTH_HORIZON_S, *,
                    steps: bool = False) -> int:
    """Live total plus each running (not frozen) job's growth over the horizon. Jobs that
    follow their own curve are summed piece by piece over the horizon (never below their live
    RSS), the others at their growth's end."""
    on_path = [job for job in jobs if _follows_path(job, steps)]
    rest = sum(job.rss + _growth(job, horizon_s, steps=steps)
               for job in jobs if not _follows_path(job, steps))
    if not on_path:
        return rest
    pieces = max(len(job.soon_path) for job in on_path)
    return rest + max(
        sum(max(job.rss, job.soon_path[min(i, len(job.soon_path) - 1)]) for job in on_path)
        for i in range(pieces)
    )


def kill_victim(jobs: Sequence[LiveJob]) -> int | None:
    """The job whose death loses the least work per byte freed (CPU seconds / RSS), never a
    protected re-run; ties go to the youngest. None when fewer than two jobs run (a lone job
    would run alone on a retry too) or every candidate is protected."""
    if len(jobs) < 2:
        return None
    candidates = [job for job in jobs if not job.protected and job.rss > 0]
    if not candidates:
        return None
    return min(
        candidates, key=lambda j: (j.cpu_s / j.rss, -j.started_at, -j.job_id)
    ).job_id


def pressure_actions(
    jobs: Sequence[LiveJob],
    budget: int,
    *,
    host_available: int | None = None,
    low_water: int = 0,
    critical: int = 0,
    horizon_s: float = GROWTH_HORIZON_S,
    kill_horizon_s: float = KILL_HORIZON_S,
    can_freeze: bool = True,
) -> PressureActions:
    """What to do about memory now.

    Pause admission when the projected total nears the budget. Freeze growing jobs (cheapest
    to hold first: least RSS pinned) until the projected total fits, always keeping the oldest
    job running; kill only when the live total is over the budget, or past the freeze mark
    with nothing left to freeze and about to pass the budget (`kill_horizon_s`, see
    `kill_horizon`, at the current climb), or the host is at its critical mark; thaw frozen jobs,
    earliest started first, when the total plus what each may still grow (its profile's
    remaining peak, else its growth rate before the freeze over THAW_HORIZON_S) fits under
    THAW_BELOW of the budget."""
    live = sum(job.rss for job in jobs)
    # What the jobs add next: a job with its own curve grows as the curve says, others at their
    # sustained rate; a step (a new compiler phase, one late sample) is no trend and counts only
    # once the live total is near the budget, where missing it costs a kill. On a real 16-core
    # nvcc build, projecting every step forward froze jobs at half the budget for tens of
    # seconds: a frozen job holds its memory and its slot and does no work.
    near = live >= FREEZE_LIVE_AT * budget
    projected = projected_total(jobs, horizon_s, steps=near)
    host_low = host_available is not None and host_available < low_water
    host_critical = host_available is not None and host_available < critical

    pause = ""
    if host_low:
        pause = "host memory under the low-water mark"
    elif projected >= PAUSE_AT * budget:
        pause = "the jobs' projected total is near the budget"

    frozen_ids = {job.job_id for job in jobs if job.frozen}
    running = [job for job in jobs if not job.frozen]
    freeze: list[int] = []
    after_freeze = projected
    must_make_room = projected > FREEZE_AT * budget or host_critical
    if can_freeze and must_make_room:
        oldest = min(running, key=lambda j: (j.started_at, j.job_id), default=None)
        growing = sorted(
            (
                job
                for job in running
                if _growth(job, horizon_s, steps=near) > 0
                and not job.protected
                and job is not oldest
            ),
            key=lambda j: (j.rss, -j.started_at),
        )
        # When every growing job follows its own recorded curve and only the projection is at
        # the mark, one freeze per guard tick: the next tick re-projects with fresh samples.
        # Nine such jobs' last steps summed once froze seven at a time on a real 16-core build,
        # six of them thawed 2.8 s later. Jobs without their own curve climb at rates a tick
        # can miss (a time-compressed replay passed the budget more often with one per tick),
        # and live memory at the mark or a critical host freezes as many as it takes.
        one_per_tick = (live <= FREEZE_AT * budget and not host_critical
                        and all(job.own_curve for job in growing))
        at_most = 1 if one_per_tick else len(growing)
        for job in growing[:at_most]:
            if after_freeze <= FREEZE_AT * budget:
                break
            freeze.append(job.job_id)
            after_freeze -= _growth(job, horizon_s, steps=near)

    # The last step, on what is, never on a 2 s projection: the live total is over the
    # budget, or the host is at its critical mark. A growth estimate is only good enough to
    # freeze on. One exception: freezing is exhausted. Live memory is past the freeze mark,
    # every job that may be frozen is frozen (a freeze this tick goes first), and the jobs
    # still running pass the budget within KILL_HORIZON_S at the rate they climb now: the
    # kill comes now, not a sample after the budget is passed. On a real 16-core build eight
    # jobs were frozen at 1.76 GiB of 1.81 while the oldest grew on, and the kill came when
    # the budget had been passed by 1 MiB.
    exhausted = (live > FREEZE_AT * budget and after_freeze > budget and not freeze
                 and live + sum(_imminent_growth(job, kill_horizon_s) for job in jobs) > budget)
    # A kill that cannot help is not made: when even the whole build's memory would not lift
    # the host above its critical mark, the pressure is not the build's (or the mark is above
    # what the host can give), and killing each job once (`--critical 100G --force`) only
    # throws work away.
    hopeless = (host_critical and live <= budget and host_available is not None
                and host_available + live < critical)
    if hopeless:
        pause = (pause or "host available memory is under the critical mark") + (
            ", and freeing all the build holds would not lift it: no job is killed for it "
            "(lower --critical, or free memory outside the build)")
    elif live > budget or host_critical or exhausted:
        victim = kill_victim(jobs)
        where = " and ".join(cause for cause, now in (
            ("live total over budget", live > budget),
            ("nothing left to freeze and the live total about to pass the budget",
             exhausted and live <= budget),
            ("host available memory is critical", host_critical),
        ) if now)
        if victim is not None:
            return PressureActions(pause or where, kill=victim, why=where)
    if freeze:
        return PressureActions(pause or "freezing growing jobs", freeze=tuple(freeze),
                               why=f"projected total {projected} > {FREEZE_AT:.0%} of budget")

    thaw: list[int] = []
    if frozen_ids and projected <= FREEZE_AT * budget and not host_low:
        room = int(THAW_BELOW * budget) - projected
        nothing_runs = not running
        for job in sorted((j for j in jobs if j.frozen), key=lambda j: (j.started_at, j.job_id)):
            ceiling = _ceiling(job)
            may_grow = max(0, ceiling - job.rss) if ceiling is not None else int(
                max(0.0, job.growth_bps) * THAW_HORIZON_S
            )
            if may_grow <= room or (nothing_runs and not thaw):
                thaw.append(job.job_id)
                room -= may_grow
    return PressureActions(pause, thaw=tuple(thaw))


def _rss_at(samples: Sequence[tuple[float, int]], t: float) -> float:
    """The RSS at time `t`, interpolated between the samples around it."""
    before = samples[0]
    for when, rss in samples:
        if when >= t:
            if when == before[0]:
                return float(rss)
            return before[1] + (rss - before[1]) * (t - before[0]) / (when - before[0])
        before = (when, rss)
    return float(before[1])


def growth_rate(samples: Sequence[tuple[float, int]], window_s: float = 0.75) -> float:
    """Sustained RSS slope (bytes/s): the lower of the slopes over the last `window_s` of
    (t, rss) samples and over the window before it (`recent_rate`: the last one alone). A step
    (a compiler phase mapping its binary, one late sample) shows in one window only and is no
    trend to project; a real climb shows in both. A job younger than two windows is split in
    two halves of what it has; 0 with fewer than three samples."""
    if len(samples) < 3:
        return 0.0
    t_end, rss_end = samples[-1]
    window_s = min(window_s, (t_end - samples[0][0]) / 2)  # a young job: halves of its history
    if window_s <= 0:
        return 0.0
    middle = _rss_at(samples, t_end - window_s)
    start = _rss_at(samples, t_end - 2 * window_s)
    return min(rss_end - middle, middle - start) / window_s


def recent_rate(samples: Sequence[tuple[float, int]], window_s: float = 0.75) -> float:
    """RSS slope (bytes/s) over the last `window_s` (or what the samples cover), steps and
    all; 0 with fewer than two samples."""
    if len(samples) < 2:
        return 0.0
    t_end, rss_end = samples[-1]
    start = max(samples[0][0], t_end - window_s)
    dt = t_end - start
    return (rss_end - _rss_at(samples, start)) / dt if dt > 0 else 0.0


# --- retry and censoring ----------------------------------------------------------------------

RERUN_HEADROOM = 1.1  # a re-run after a memory kill reserves this much above what it reached


@dataclass(frozen=True)
class Rerun:
    reserve: int  # what the re-run is admitted on
    protected: bool  # never frozen or killed again


def after_memory_kill(predicted: int, reached: int, memory_kills: int) -> Rerun | None:
    """A job killed for memory is re-run once, protected, and reserved at least at what the
    killed run reached (plus headroom); a second memory kill cannot happen (protected), so a
    job that already had its one kill gets no further memory retry (None)."""
    if memory_kills > 1:
        return None
    return Rerun(reserve=max(predicted, int(reached * RERUN_HEADROOM)), protected=True)


def censored_record(status: str, peak: int) -> tuple[int, bool]:
    """(peak to store, censored?) for a finished attempt: a run that completed measured its
    peak (a freeze pauses a job, it does not cut it short); a run that was killed, interrupted
    or hung only shows a lower bound."""
    return peak, status != "ok"


# --- learning inside one build ----------------------------------------------------------------


@dataclass(frozen=True)
class Sibling:
    """A job of this build as sibling prediction sees it (finished, or still running)."""

    compiler: str
    kind: str
    directory: str  # the output's directory (CMake: the target's object dir)
    family: str  # source suffix: .cu, .cpp, ...
    source_bytes: int
    peak: int  # finished: its peak; running: the most it reached so far (a lower bound)
    finished: bool = True
    curve: Curve = ()


SIBLING_MARGIN = 0.5  # over one finished sibling's peak; over n of them, margin / n
SIZE_SCALE_LIMITS = (0.5, 2.0)  # a source's size moves its sibling-based prediction at most this
# Below this a source is a shell around its includes (ggml's template instances: 0.3-2 KiB, each
# compile 320-380 MiB): its size says nothing about its compile, and scaling doubled predictions.
SIZE_SCALE_MIN_BYTES = 16 * 1024


def _scaled(peak: int, size: int, sibling_size: int) -> int:
    if min(size, sibling_size) < SIZE_SCALE_MIN_BYTES:
        return peak
    low, high = SIZE_SCALE_LIMITS
    return int(peak * min(high, max(low, size / sibling_size)))


def sibling_prediction(job: Sibling, siblings: Sequence[Sibling]) -> tuple[int, str, Curve] | None:
    """Predict a never-measured job from its siblings in this build: same compiler and kind,
    the same directory and family first, then the same family anywhere in the build. Finished
    siblings give size-scaled peaks (the upper quartile, so a job is placed as one of the
    heavier ones); running siblings give lower bounds (what they reached so far). None when no
    sibling finished yet. Returns (bytes, source, curve of the closest-sized finished one)."""
    same = [s for s in siblings if s.compiler == job.compiler and s.kind == job.kind]
    for scope, group in (
        ("sibling-dir", [s for s in same if s.directory == job.directory
                         and s.family == job.family]),
        ("sibling", [s for s in same if s.family == job.family]),
    ):
        finished = [s for s in group if s.finished]
        if not finished:
            continue
        scaled = sorted(_scaled(s.peak, job.source_bytes, s.source_bytes) for s in finished)
        estimate = scaled[min(len(scaled) - 1, (3 * len(scaled)) // 4)]
        # Few finished siblings say little about the spread: one measured ggml instance at
        # 137 MiB, its siblings reached 147-224 MiB. The margin shrinks as more finish.
        estimate = int(estimate * (1 + SIBLING_MARGIN / len(finished)))
        floor = max((s.peak for s in group if not s.finished), default=0)
        closest = min(finished, key=lambda s: abs(s.source_bytes - job.source_bytes))
        return max(estimate, floor), scope, closest.curve
    return None


UNKNOWN_START_FRACTION = 0.125  # of the slots: jobs of an unmeasured family that may start at once
# The ramp: a running job of an unmeasured family that has set no new high for a while, well
# under its reservation, lets more of its family start. ggml's CUDA instances (0.30-0.36 GiB)
# peak within 2-5 s and stay below that for the 10-35 s they run; the slow start alone ran 2 of
# them for 18 s on a 16-core host with 16 GiB (1.41x plain -j16). A heavy nvcc job climbs for
# 20-45 s (0.5 GiB at 5 s, 1.5 at 10 s, 4-6 at its peak); between its early phases its RSS
# drops and sets a new high within 2.8 s at most (bench/traces/nvcc-template-20.json).
RAMP_QUIET_S = 4.0  # no new high for at least this long...
RAMP_QUIET_SHARE = 0.3  # ...and for at least this share of its run so far
RAMP_NEW_HIGH = 0.05  # a new high: above the highest so far by more than this
RAMP_HEADROOM = 2.0  # and its highest RSS at most its reservation / this
# More jobs of its family that may start, per job that vouches: when the first wave of a
# 16-slot build (2 jobs) vouches, all slots fill in one round. A round takes RAMP_QUIET_S and
# more (6.5 s for ggml on the 16-core host), so each round costs a first build time.
RAMP_PER_VOUCH = 7


def unknown_family_limit(slots: int, vouching: int = 0) -> int:
    """How many jobs of a family with nothing measured (no finished job in this build, no
    profile) may run at once: a slow start, so a first build learns from a few jobs before it
    bets the whole budget on a guess. Each running job of the family that `vouches` (has set
    no new high for a while, well under its reservation) lets RAMP_PER_VOUCH more start: a
    family of light jobs ramps up within seconds instead of waiting for its first job to
    finish."""
    base = max(2, math.ceil(slots * UNKNOWN_START_FRACTION))
    return base + RAMP_PER_VOUCH * max(0, vouching)


def ramped_limits(slots: int, votes: Iterable[tuple[str, bool]]) -> dict[str, int]:
    """Each unmeasured family's limit from its running jobs' votes ((family, vouches) each)."""
    vouching: dict[str, int] = {}
    for family, vouched in votes:
        vouching[family] = vouching.get(family, 0) + int(vouched)
    return {family: unknown_family_limit(slots, count) for family, count in vouching.items()}


def vouches(curve: Curve, reservation: int, age_s: float | None = None) -> bool:
    """Whether a running job of an unmeasured family is evidence that its family is light: its
    highest RSS is at most its reservation / RAMP_HEADROOM and it has set no new high (by more
    than RAMP_NEW_HIGH) for RAMP_QUIET_S and RAMP_QUIET_SHARE of its run. A job still climbing,
    or already near what admission reserved for it, does not vouch. `curve`: the job's
    (running seconds, tree RSS) samples so far, oldest first; `age_s`: how long it has run
    (None: until its last sample)."""
    if not curve or reservation <= 0:
        return False
    age = curve[-1][0] if age_s is None else max(age_s, curve[-1][0])
    highest = max(rss for _, rss in curve)
    if highest <= 0 or highest * RAMP_HEADROOM > reservation:
        return False
    reached = next(t for t, rss in curve if rss * (1 + RAMP_NEW_HIGH) >= highest)
    return age - reached >= max(RAMP_QUIET_S, RAMP_QUIET_SHARE * age)
