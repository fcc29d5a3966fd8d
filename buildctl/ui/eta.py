"""The ETA both views show: the previous run's jobs in this build dir, or else the project's
jobs in the profile DB (a fresh build dir: a CI machine that restored the DB, the next torch
version of a matrix), replayed through the governor's own admission policy (the simulator);
without either, from ninja's progress, smoothed.

A rate from finished jobs alone climbs all build long: the first jobs to end are the small
ones and the heavy ones end last. The simulated schedule knows how long the heavy ones take
and when memory lets them start, so it only moves when the build runs slower than planned.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from buildctl.govern.profiles import ProfileEntry
    from buildctl.govern.simulate import SimJob

# The plan is used when the build has about as many jobs as the run it came from (an
# incremental rebuild of a few files is another build).
PLAN_MATCH = (0.8, 1.3)
# How far the build's pace may scale the plan's remaining time either way.
PACE_LIMITS = (0.5, 3.0)
# Below this much planned time the pace is not measured (start-up noise).
MIN_PACE_BASE_S = 2.0
# Smoothing of the rate-based estimate of the finish time (per refresh).
SMOOTHING = 0.2


@dataclass(frozen=True)
class EtaPlan:
    """A simulated governed build: when each job ends, in order."""

    makespan_s: float
    end_times: tuple[float, ...]  # sorted

    @property
    def jobs(self) -> int:
        return len(self.end_times)

    def time_when_done(self, done: int) -> float:
        """When the plan has `done` jobs finished."""
        if done <= 0:
            return 0.0
        return self.end_times[min(done, self.jobs) - 1]

    def done_by(self, t: float) -> int:
        return bisect.bisect_right(self.end_times, t)


def plan_eta_s(plan: EtaPlan, elapsed_s: float, done: int) -> float:
    """Remaining time by the plan, scaled by how the build keeps pace with it (pure).

    With `done` jobs finished the plan stands between the end of its `done`-th job and the end
    of the next: elapsed time inside that window is on pace (a long job running is no sign of
    slowness); past it the build runs slow, before it fast, by the ratio to the window's edge.
    """
    earliest = plan.time_when_done(done)
    latest = plan.time_when_done(done + 1) if done < plan.jobs else plan.makespan_s
    position = min(max(elapsed_s, earliest), latest)
    pace = 1.0
    if position >= MIN_PACE_BASE_S:
        pace = min(max(elapsed_s / position, PACE_LIMITS[0]), PACE_LIMITS[1])
    return max(0.0, plan.makespan_s - position) * pace


def rate_eta_s(elapsed_s: float, done: int, total: int) -> float | None:
    if done < 2 or total <= done:
        return None
    return elapsed_s / done * (total - done)


class Eta:
    """Stateful only for smoothing; the estimates themselves are the pure functions above."""

    def __init__(self, plan: EtaPlan | None = None) -> None:
        self.plan = plan
        self._finish: float | None = None  # smoothed finish time, seconds since start

    def plan_applies(self, total: int) -> bool:
        if self.plan is None or self.plan.jobs == 0:
            return False
        if total <= 0:
            return True  # no ninja progress to compare with (`buildctl run`): same command
        low, high = PLAN_MATCH
        return low * self.plan.jobs <= total <= high * self.plan.jobs

    def estimate(self, elapsed_s: float, done: int, total: int, jobs_done: int) -> float | None:
        """`done`/`total` from ninja's status, `jobs_done` governed jobs finished."""
        if self.plan is not None and self.plan_applies(total):
            return plan_eta_s(self.plan, elapsed_s, jobs_done)
        rate = rate_eta_s(elapsed_s, done, total)
        if rate is None:
            return None
        finish = elapsed_s + rate
        if self._finish is None:
            self._finish = finish
        else:
            self._finish += SMOOTHING * (finish - self._finish)
        return max(0.0, self._finish - elapsed_s)


def _replay(jobs: list[SimJob], slots: int, budget_bytes: int) -> EtaPlan | None:
    from buildctl.govern.simulate import HostShape, simulate

    if not jobs:
        return None
    try:
        result = simulate(jobs, HostShape(cores=slots, budget_bytes=budget_bytes, slots=slots))
    except Exception:  # an ETA is never worth failing a build for
        return None
    ends = tuple(sorted(item.end_s for item in result.schedule))
    return EtaPlan(makespan_s=result.makespan_s, end_times=ends)


def plan_from_report(report_path: Path, slots: int, budget_bytes: int) -> EtaPlan | None:
    """The previous run's jobs replayed on this run's slots and budget; None without one."""
    from buildctl.govern.simulate import jobs_from_report
    from buildctl.report import BuildReport

    try:
        jobs = jobs_from_report(BuildReport.read(report_path))
    except Exception:  # unreadable, or not a report: no plan
        return None
    return _replay(jobs, slots, budget_bytes)


def plan_from_profiles(
    entries: Iterable[ProfileEntry], slots: int, budget_bytes: int
) -> EtaPlan | None:
    """The project's measured jobs (the latest run of each output in the profile DB) replayed
    on this run's slots and budget; None when it has none. A plan of another job count than the
    build's is not used (`Eta.plan_applies`)."""
    from buildctl.govern.simulate import jobs_from_profiles

    return _replay(jobs_from_profiles(entries), slots, budget_bytes)


def build_plan(report_path: Path, entries: Callable[[], Iterable[ProfileEntry]], slots: int,
               budget_bytes: int) -> EtaPlan | None:
    """The previous run in this build dir first; else the project's profiles."""
    return (plan_from_report(report_path, slots, budget_bytes)
            or plan_from_profiles(entries(), slots, budget_bytes))
