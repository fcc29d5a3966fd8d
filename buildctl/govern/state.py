"""`GovernorState`: what every part of the governor shares (the jobs, the clock, the event log,
the lock the UI thread reads under), and the calls one part makes on another.

`Governor` (governor.py) is this state with its parts mixed in: the socket side (server.py),
admission (admission.py), what happens when an attempt ends (finish.py) and the memory guard
and verdicts (guard.py). Each part subclasses this one, so that it reads as its own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from buildctl import host
from buildctl.govern.jobs import GovernorOptions, Job, default_watermarks
from buildctl.govern.outcome import Outcome
from buildctl.govern.profiles import ProfileDB
from buildctl.govern.runner import JobRunner, LocalRunner
from buildctl.report import Event, JobRecord


class GovernorState:
    """The state of one build's governor; see `Governor` for how it is driven."""

    def __init__(
        self,
        options: GovernorOptions,
        profiles: ProfileDB,
        *,
        runner: JobRunner | None = None,
        clock: Callable[[], float] = time.monotonic,
        available: Callable[[], int] = host.available_bytes,
    ) -> None:
        self.opts = options
        self.profiles = profiles
        self.runner: JobRunner = runner or LocalRunner()
        self._clock = clock
        self._available = available
        total = psutil.virtual_memory().total
        low, critical = default_watermarks(total)
        self.low_water = options.low_water_bytes if options.low_water_bytes is not None else low
        self.critical = options.critical_bytes if options.critical_bytes is not None else critical
        self.t0 = clock()
        self.jobs: dict[int, Job] = {}
        self._next_id = 1
        self.finished: list[JobRecord] = []
        self.events: list[Event] = []
        self.event_listeners: list[Callable[[Event], None]] = []
        self.peak_total_rss = 0
        self.host_min_available = available()
        self.samples: list[tuple[float, int, int]] = []
        self.paused = ""
        self.wait_reason = ""
        # Start-up gathering: when the first and the latest launcher registered before the
        # first admission (None once something was admitted).
        self._first_arrival: float | None = None
        self._last_arrival: float | None = None
        self._admitted_any = False
        self._gather_timer: asyncio.TimerHandle | None = None
        self._last_report_sample = -1e9
        self._compiler_ids: dict[tuple[str, float], asyncio.Future[str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._stopping = False
        self._interrupting = False  # Ctrl-C/SIGTERM: every failure from now on is an interrupt
        self._cancel = threading.Event()  # stops repro capture that is under way
        self._ready = threading.Event()
        self._stop_event: asyncio.Event | None = None
        self._lock = threading.Lock()  # guards what the UI thread reads

    # --- events ------------------------------------------------------------------------------

    def now(self) -> float:
        return self._clock() - self.t0

    def event(self, kind: str, output: str | None = None, detail: str = "", **data: object) -> None:
        ev = Event(kind=kind, t_s=round(self.now(), 3), output=output, detail=detail, data=data)
        self.events.append(ev)
        for listener in self.event_listeners:
            with contextlib.suppress(Exception):
                listener(ev)

    def _repro_root(self) -> Path:
        return self.opts.repro_dir or (self.opts.build_dir / ".buildctl" / "repro")

    def _kill_tree(self, job: Job, reason: str) -> None:
        self.runner.kill(job)

    # --- what one part calls on another (each is defined in the module named) ----------------

    def enqueue(self, output: str, kind: str, compiler: str, **details: Any) -> Job:
        raise NotImplementedError  # admission.py

    def _admit(self) -> None:
        raise NotImplementedError  # admission.py

    def _refresh_guesses(self) -> None:
        raise NotImplementedError  # admission.py

    async def _complete(self, job: Job, done: dict) -> dict:
        raise NotImplementedError  # finish.py

    def _finish(
        self, job: Job, done: dict, outcome: Outcome | None = None, repro: str | None = None
    ) -> dict:
        raise NotImplementedError  # finish.py

    def _abandon(self, job: Job) -> None:
        raise NotImplementedError  # finish.py
