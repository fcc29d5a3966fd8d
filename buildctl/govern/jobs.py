"""What the governor knows about one job (`Job`), how it is configured (`GovernorOptions`), the
`RemoteExecutor` interface, and the small helpers the other governor modules share.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from buildctl.govern import policy, profiles, scheduler
from buildctl.govern.monitor import ProgressClock, TreeSample, Verdict
from buildctl.govern.profiles import Prediction
from buildctl.report import JobRecord

MiB = 1024**2
CURVE_POINTS = 64  # an RSS curve is thinned to this many points in the profile DB


def policy_curve(samples: list[tuple[float, int]]) -> policy.Curve:
    """A job's sampled (running seconds, RSS) as the thinned curve profiles keep."""
    return tuple((round(t, 2), rss) for t, rss in profiles.thin_curve(samples, CURVE_POINTS))


@dataclass
class GovernorOptions:
    socket_path: Path
    budget_bytes: int
    slots: int
    build_dir: Path
    sample_interval_s: float = 0.25
    low_water_bytes: int | None = None  # pause admission below this host available memory
    critical_bytes: int | None = None  # below this, kill the job that loses least work
    psi_full_pause: float = 10.0  # PSI memory `full` avg10 (%) that pauses admission
    hang_after_s: float = 600.0
    retries: int = 1  # re-runs of a job killed as stalled/spinning
    crash_retries: int = 1  # re-runs of a job whose compiler crashed
    spin_factor: float = 5.0  # a job running longer than this x its longest record is spinning
    spin_floor_s: float = 300.0  # ...but never before this: history from a quiet machine lies
    max_bypass_s: float = 60.0
    # Start-up: hold the first admission until launchers stop registering (scheduler.gather_hold_s)
    gather_quiet_s: float = scheduler.GATHER_QUIET_S
    gather_max_s: float = scheduler.GATHER_MAX_S
    # Predict never-measured jobs at most budget / slots (scheduler.capped_prior). Safe by
    # default: a guess that turns out low is frozen, not killed, and only a few jobs of an
    # unmeasured family start before one of them is measured (policy.unknown_family_limit).
    cap_priors: bool = True
    freeze: bool = True  # freeze growing jobs before killing any (policy.pressure_actions)
    project: str = ""  # profiles are keyed by project: two projects never share a prediction
    # A job whose profile shows it mostly waiting takes a fraction of a slot (scheduler.cpu_share);
    # off: every job takes a whole slot (--whole-slots).
    cpu_shares: bool = True
    # SYCL device links (govern.links): each predicted as its inner link jobs x this many bytes
    # unless the profile DB has this very link (0: off), and at most this many at once (0: no
    # cap). Both come from the build's link plan (xpu_adapter.plan_device_links).
    device_link_job_bytes: int = 0
    max_device_links: int = 0
    repro_dir: Path | None = None
    executor: RemoteExecutor | None = None  # None: jobs run locally under the launcher


class RemoteExecutor(Protocol):
    """Runs an admitted job elsewhere (e.g. a Ray cluster) instead of under its launcher.

    `run` returns the same facts the launcher reports in `done` (rc, maxrss, cpu_s, wall_s,
    stderr_tail) plus `stdout`/`stderr` text for the launcher to print and `node` (where it ran).
    """

    async def run(self, job: Job) -> dict[str, Any]: ...

    def describe(self) -> str: ...


def default_watermarks(total_ram: int) -> tuple[int, int]:
    """Low-water: 5% of RAM, between 256 MiB and 1 GiB; critical: half of that."""
    low = int(min(max(total_ram * 0.05, 256 * MiB), 1024 * MiB))
    return low, low // 2


@dataclass
class Job:
    id: int
    output: str
    kind: str
    argv: list[str]
    cwd: str
    launcher_pid: int
    compiler: str
    prediction: Prediction
    enqueued_at: float
    queued_at_first: float
    fingerprint: str = ""
    source_bytes: int = 0
    attempts: int = 1
    state: str = "waiting"  # waiting | running | done
    exclusive: bool = False
    child_pid: int | None = None
    started_at: float = 0.0
    current_rss: int = 0
    peak_rss: int = 0
    cpu_s: float = 0.0
    # pid -> run-queue wait seen last (ProcInfo.runq_s); summed at the end, a process that
    # exited keeps what the last sample saw.
    runq_by_pid: dict[int, float] = field(default_factory=dict)
    # Recent samples for rates only; the clock keeps time-since-progress over any window.
    samples: deque[TreeSample] = field(default_factory=lambda: deque(maxlen=256))
    # (running seconds, tree RSS) of this attempt, frozen time left out: the job's RSS curve.
    curve: list[tuple[float, int]] = field(default_factory=list)
    clock: ProgressClock = field(default_factory=ProgressClock)
    kill_reason: str | None = None
    verdict: Verdict | None = None
    go: asyncio.Event = field(default_factory=asyncio.Event)
    record: JobRecord | None = None
    env: dict[str, str] | None = None  # the launcher's (= the compiler's) environment
    output_tail: str = ""  # last stderr lines, pushed by the launcher while the job runs
    oom_at_start: int = 0
    hang_kills: int = 0
    memory_kills: int = 0
    crashes: int = 0
    repro_dir: str | None = None  # crash repro or stall bundle of this job
    capped_from: int = 0  # the uncapped prior when the prediction is a capped prior, else 0
    cpu_share: float = 1.0  # of a CPU slot, as admitted (scheduler.cpu_share)
    unknown_group: str = ""  # family key while nothing of it is measured (slow start)
    frozen_since: float | None = None
    frozen_s: float = 0.0  # this attempt's time frozen
    growth_at_freeze: float = 0.0  # its RSS slope when it was frozen (bytes/s)
    frozen_total_s: float = 0.0  # every attempt's
    protected: bool = False  # a re-run after a memory kill: never frozen or killed again
    device_link: bool = False  # a SYCL device link (govern.links.is_device_link), capped or not

    @property
    def frozen(self) -> bool:
        return self.frozen_since is not None

    def running_s(self, now: float) -> float:
        """Time this attempt has run, frozen time left out."""
        frozen = self.frozen_s + (now - self.frozen_since if self.frozen_since is not None else 0)
        return max(0.0, now - self.started_at - frozen)
