"""What the live view and the summary read of a governor: plain frozen data, so that ui/
depends on these types and not on the governor itself."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunningView:
    output: str
    rss: int
    predicted: int
    elapsed_s: float
    verdict: str  # starting | healthy | thrashing | ... | frozen
    evidence: str
    exclusive: bool
    attempts: int
    frozen: bool = False


@dataclass(frozen=True)
class Snapshot:
    t: float
    budget: int
    slots: int
    running: tuple[RunningView, ...]
    waiting: int
    finished: int
    failed: int
    reserved: int
    live_rss: int
    peak_total_rss: int
    host_available: int
    paused: str
    wait_reason: str
    frozen: int = 0
