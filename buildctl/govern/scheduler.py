"""Admission policy (pure): which waiting jobs may start now.

A job is admitted when `sum(reserved of running) + predicted(job) <= budget` and a CPU slot is
free, with `reserved = max(predicted, current tree RSS)`. Among waiting jobs the largest predicted
job that fits goes first (big jobs are the hard ones to place; small ones backfill). A job
predicted above the whole budget runs alone: nothing new starts until it can start, and nothing
starts beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Waiting:
    job_id: int
    predicted: int
    enqueued_at: float


@dataclass(frozen=True)
class Running:
    job_id: int
    predicted: int
    current_rss: int
    exclusive: bool = False

    @property
    def reserved(self) -> int:
        return max(self.predicted, self.current_rss)


@dataclass(frozen=True)
class Decision:
    admit: tuple[int, ...]
    exclusive: tuple[int, ...]  # subset of admit that runs alone (predicted above the budget)
    reason: str  # why the first waiting job did not start, for the live view


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
) -> Decision:
    """Pick the jobs to admit now.

    `paused` (host memory under the low-water mark, or memory pressure) admits nothing.
    `max_bypass_s`: once the largest waiting job has waited this long, smaller jobs stop
    overtaking it, so it cannot starve behind a stream of small ones.
    """
    if not waiting:
        return Decision((), (), "")
    if paused:
        return Decision((), (), "paused: host memory low")
    if any(job.exclusive for job in running):
        return Decision((), (), "a job predicted above the budget is running alone")

    free_slots = slots - len(running)
    used = reserved_total(running)
    order = sorted(waiting, key=lambda w: (-w.predicted, w.enqueued_at, w.job_id))
    admitted: list[int] = []
    reason = ""
    blocked_since: float | None = None  # enqueue time of the largest job that did not fit

    for job in order:
        if free_slots <= 0:
            reason = reason or "all CPU slots busy"
            break
        if job.predicted > budget:
            if not running and not admitted:
                return Decision((job.job_id,), (job.job_id,), "")
            # Drain: the oversized job needs the machine to itself.
            return Decision(tuple(admitted), (), reason or "draining for a job above the budget")
        if used + job.predicted <= budget:
            if blocked_since is not None and now - blocked_since >= max_bypass_s:
                reason = "holding memory for a long-waiting large job"
                break
            admitted.append(job.job_id)
            used += job.predicted
            free_slots -= 1
        elif blocked_since is None:
            blocked_since = job.enqueued_at
            reason = "waiting for memory"
    return Decision(tuple(admitted), (), reason)
