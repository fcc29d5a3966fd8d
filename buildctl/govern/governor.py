"""The governor: admission server for launchers, sampler of every running job's process tree,
and the OOM guard. It runs an asyncio loop in a background thread of the buildctl process.

This module is the loop and the coordinator; the parts live beside it:
jobs.py (Job, GovernorOptions, RemoteExecutor), state.py (the shared state and event log),
server.py (the socket side), admission.py (predict, queue, admit), finish.py (an attempt's
end: outcome, retry, censoring, profile write, report record), guard.py (memory guard and
verdicts). Pure decisions are policy.py's and scheduler.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from buildctl.govern.admission import Admission
from buildctl.govern.finish import JobEnd
from buildctl.govern.guard import Guard
from buildctl.govern.jobs import (  # re-exported: the governor's public names
    GovernorOptions,
    Job,
    RemoteExecutor,
    default_watermarks,
)
from buildctl.govern.outcome import (  # re-exported: tests and executors classify through here
    CRASH_SIGNALS,
    ICE_TEXT,
    KILLED_TEXT,
    STOP_REASONS,
    Outcome,
    classify_exit,
    exit_of,
    oom_kills,
)
from buildctl.govern.server import SocketServer
from buildctl.govern.snapshot import RunningView, Snapshot
from buildctl.report import BuildReport

__all__ = [
    "CRASH_SIGNALS", "ICE_TEXT", "KILLED_TEXT", "STOP_REASONS", "Governor", "GovernorOptions",
    "Job", "Outcome", "RemoteExecutor", "RunningView", "Snapshot", "classify_exit",
    "default_watermarks", "exit_of", "oom_kills",
]  # fmt: skip


class Governor(SocketServer, Admission, JobEnd, Guard):
    """Admission server and memory guard of one build.

    Decisions are policy's and scheduler's (pure); the parts mixed in here keep the jobs' state,
    feed them snapshots and carry out what they return through a `JobRunner`. This class runs
    the loop: the socket server and the sampler's tick. `clock` and `available` exist so tests
    can drive it without processes or sleeps (`enqueue`, `tick` and `_finish` are the
    synchronous core the socket protocol calls)."""

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="governor", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("governor did not start")

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._loop_error)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            # Launchers still connected when the governor stops (Ctrl-C; a job still waiting):
            # close their connections here rather than leave the tasks to the garbage collector.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """What asyncio cannot hand to a caller becomes one line in the report and on the
        console, never a traceback in the middle of the build's output."""
        exc = context.get("exception")
        detail = str(context.get("message") or "error in the governor's event loop")
        if exc is not None:
            detail += f" ({type(exc).__name__}: {exc})"
        self.event("info", None, "governor: " + " ".join(detail.split()))

    async def _serve(self) -> None:
        path = self.opts.socket_path
        await self._listen()
        sampler = asyncio.create_task(self._sampler())
        self._stop_event = asyncio.Event()
        self._ready.set()
        try:
            if not self._stopping:
                await self._stop_event.wait()
        finally:
            sampler.cancel()
            self._server.close()
            for job in list(self.jobs.values()):
                if job.state == "running":
                    self._kill_tree(job, "interrupt")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def stop(self) -> None:
        self._stopping = True
        self._cancel.set()
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(stop_event.set)
        if self._thread:
            self._thread.join(15)

    def kill_all(self) -> None:
        """Ctrl-C / SIGTERM: kill every running job tree now (called from the main thread)."""
        self._interrupting = True
        self._cancel.set()
        with self._lock:
            for job in list(self.jobs.values()):
                if job.state == "running":
                    job.kill_reason = "interrupt"
                    self._kill_tree(job, "interrupt")

    # --- sampling, memory guard, verdicts ----------------------------------------------------

    async def _sampler(self) -> None:
        while True:
            try:
                self.tick()
            except Exception as exc:  # never let a sampling glitch stop the build
                self.event("info", None, f"sampler error: {exc!r}")
            await asyncio.sleep(self.opts.sample_interval_s)

    def tick(self) -> None:
        """One sampling round: every running tree, the memory guard, the verdicts, admission."""
        t = self.now()
        avail = self._available()
        self.host_min_available = min(self.host_min_available, avail)
        total = 0
        running = [j for j in self.jobs.values() if j.state == "running"]
        for job in running:
            sample = self.runner.sample(job, t)
            if sample is None:
                continue
            with self._lock:
                job.samples.append(sample)
                if not job.frozen:
                    job.clock.update(sample)
                    job.curve.append((round(job.running_s(t), 3), sample.rss))
                job.current_rss = sample.rss
                job.peak_rss = max(job.peak_rss, sample.rss)
                job.cpu_s = sample.cpu_s
                for proc in sample.procs:
                    job.runq_by_pid[proc.pid] = proc.runq_s
            total += sample.rss
        self.peak_total_rss = max(self.peak_total_rss, total)
        if t - self._last_report_sample >= 0.5:
            self.samples.append((round(t, 2), total, avail))
            self._last_report_sample = t
        self._memory_guard(avail, running)
        self._verdicts([j for j in running if not j.frozen])
        self._admit()

    # --- views -------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = self.now()
            running = [j for j in self.jobs.values() if j.state == "running"]
            views = tuple(
                RunningView(
                    output=j.output,
                    rss=j.current_rss,
                    predicted=j.prediction.bytes,
                    elapsed_s=j.running_s(now),
                    verdict="frozen" if j.frozen
                    else (j.verdict.state if j.verdict else "starting"),
                    evidence=j.verdict.evidence if j.verdict else "",
                    exclusive=j.exclusive,
                    attempts=j.attempts,
                    frozen=j.frozen,
                )
                for j in sorted(running, key=lambda j: j.started_at)
            )
            return Snapshot(
                t=now,
                budget=self.opts.budget_bytes,
                slots=self.opts.slots,
                running=views,
                waiting=sum(1 for j in self.jobs.values() if j.state == "waiting"),
                finished=sum(1 for r in self.finished if r.status != "interrupted"),
                failed=sum(1 for r in self.finished if r.status in ("failed", "hung", "crashed")),
                reserved=sum(max(j.prediction.bytes, j.current_rss) for j in running),
                live_rss=sum(j.current_rss for j in running),
                peak_total_rss=self.peak_total_rss,
                host_available=self.samples[-1][2] if self.samples else 0,
                paused=self.paused,
                wait_reason=self.wait_reason,
                frozen=sum(1 for j in running if j.frozen),
            )

    def fill_report(self, report: BuildReport) -> None:
        with self._lock:
            report.jobs = list(self.finished)
            report.events = list(self.events)
            report.peak_total_rss_bytes = self.peak_total_rss
            report.host_min_available_bytes = self.host_min_available
            report.samples = list(self.samples)
            report.cpu_s = round(sum(r.cpu_s for r in self.finished), 3)
