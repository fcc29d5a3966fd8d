"""The governor: admission server for launchers, sampler of every running job's process tree,
and the OOM guard. It runs an asyncio loop in a background thread of the buildctl process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from buildctl import host
from buildctl.govern import policy, profiles, scheduler
from buildctl.govern.cache import compiler_argv, evidence_from_done, is_cache_hit
from buildctl.govern.diagnostics import (
    Cancelled,
    collect_tree,
    describe_exit,
    note_attempt,
    save_crash_repro,
    save_stall_bundle,
)
from buildctl.govern.monitor import (
    ProgressClock,
    TreeSample,
    Verdict,
    VerdictPolicy,
    read_wchan,
    verdict,
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
from buildctl.govern.profiles import JobKey, Prediction, ProfileDB, ProfileEntry, target_of
from buildctl.govern.protocol import (
    ProtocolError,
    bad_client_line,
    check_child_pid,
    parse_message,
    prepare_socket_dir,
)
from buildctl.govern.runner import JobRunner, LocalRunner
from buildctl.govern.snapshot import RunningView, Snapshot
from buildctl.report import BuildReport, Event, JobRecord

__all__ = [
    "CRASH_SIGNALS", "ICE_TEXT", "KILLED_TEXT", "STOP_REASONS", "Governor", "GovernorOptions",
    "Job", "Outcome", "RemoteExecutor", "RunningView", "Snapshot", "classify_exit", "exit_of",
    "oom_kills",
]  # fmt: skip

MiB = 1024**2
LINE_LIMIT = 16 * MiB
CURVE_POINTS = 64  # an RSS curve is thinned to this many points in the profile DB


def policy_curve(samples: list[tuple[float, int]]) -> policy.Curve:
    """A job's sampled (running seconds, RSS) as the thinned curve profiles keep."""
    return tuple((round(t, 2), rss) for t, rss in profiles.thin_curve(samples, CURVE_POINTS))


def _compile_fingerprint(argv: list[str], cwd: str) -> tuple[str, int]:
    """profiles.compile_fingerprint with the source's content digest read here (the edge), and
    the source's size (sibling predictions scale by it)."""
    source = profiles.compile_source(argv)
    digest = ""
    size = 0
    if source:
        path = Path(cwd, source) if cwd else Path(source)
        try:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            size = len(data)
        except OSError:
            digest = "unreadable"
    return profiles.compile_fingerprint(argv, digest), size


@dataclass
class GovernorOptions:
    socket_path: Path
    budget_bytes: int
    slots: int
    build_dir: Path
    sample_interval_s: float = 0.25
    low_water_bytes: int | None = None  # pause admission below this host available memory
    critical_bytes: int | None = None  # kill the youngest job below this
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

    @property
    def frozen(self) -> bool:
        return self.frozen_since is not None

    def running_s(self, now: float) -> float:
        """Time this attempt has run, frozen time left out."""
        frozen = self.frozen_s + (now - self.frozen_since if self.frozen_since is not None else 0)
        return max(0.0, now - self.started_at - frozen)


class Governor:
    """Admission server and memory guard of one build.

    Decisions are policy's and scheduler's (pure); this class keeps the jobs' state, feeds
    them snapshots and carries out what they return through a `JobRunner`. `clock` and
    `available` exist so tests can drive it without processes or sleeps (`enqueue`, `tick`,
    `finish_attempt` are the synchronous core the socket protocol calls)."""

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

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="governor", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("governor did not start")

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
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

    async def _serve(self) -> None:
        path = self.opts.socket_path
        prepare_socket_dir(path.parent)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old_umask = os.umask(0o177)  # the socket is born 0600
        try:
            # Lines carry a job's environment and output tail: far above asyncio's 64 KiB default.
            self._server = await asyncio.start_unix_server(
                self._handle, path=str(path), limit=LINE_LIMIT
            )
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
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

    # --- events ------------------------------------------------------------------------------

    def now(self) -> float:
        return self._clock() - self.t0

    def event(self, kind: str, output: str | None = None, detail: str = "", **data: object) -> None:
        ev = Event(kind=kind, t_s=round(self.now(), 3), output=output, detail=detail, data=data)
        self.events.append(ev)
        for listener in self.event_listeners:
            with contextlib.suppress(Exception):
                listener(ev)

    # --- protocol ----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        peer_pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            writer.close()  # only our own user's launchers may ask for memory
            return
        job: Job | None = None
        try:
            msg = await self._read(reader, ("admit",))
            if msg is None:
                return
            job = await self._register(msg)
            while True:
                await job.go.wait()
                job.go.clear()
                if self.opts.executor is not None:
                    facts = await self.opts.executor.run(job)
                    reply = self._finish(job, facts)
                    if reply["op"] == "retry":
                        continue
                    await self._send(
                        writer,
                        op="remote-done",
                        rc=int(facts.get("rc", 1)),
                        stdout=facts.get("stdout", ""),
                        stderr=facts.get("stderr", "") + (
                            f"buildctl: {reply['detail']}\n" if reply.get("detail") else ""
                        ),
                    )
                    return
                job.oom_at_start = oom_kills()
                await self._send(writer, op="go", attempt=job.attempts)
                started = await self._read(reader, ("started",))
                if started is None:
                    return
                check_child_pid(started["pid"], peer_pid)
                with self._lock:
                    job.child_pid = int(started["pid"])
                done = await self._read_until_done(job, reader)
                if done is None:
                    return
                with self._lock:
                    job.child_pid = None  # reaped by the launcher: never signal that pid again
                reply = await self._complete(job, done)
                await self._send(writer, **reply)
                if reply["op"] != "retry":
                    return
        except ProtocolError as exc:  # one line per bad client; the launcher sees EOF
            self.event("info", job.output if job else None, bad_client_line(str(exc), peer_pid))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            # At stop, running trees are already killed and the report takes jobs as they are.
            if job is not None and job.state != "done" and not self._stopping:
                self._abandon(job)
            writer.close()

    async def _read_until_done(self, job: Job, reader: asyncio.StreamReader) -> dict | None:
        """Messages while the job runs: output tails (kept for a stall bundle), then `done`."""
        while True:
            msg = await self._read(reader, ("output", "done"))
            if msg is None or msg.get("op") == "done":
                return msg
            if msg.get("op") == "output":
                job.output_tail = str(msg.get("tail", ""))

    async def _read(self, reader: asyncio.StreamReader, expect: tuple[str, ...]) -> dict | None:
        """The next launcher message (None at EOF); ProtocolError for anything else."""
        try:
            line = await reader.readline()
        except ValueError:  # asyncio's limit: the rest of the line is not read
            raise ProtocolError(f"a line longer than {LINE_LIMIT} bytes") from None
        if not line:
            return None
        if not line.endswith(b"\n"):
            raise ProtocolError("connection closed in the middle of a line")
        return parse_message(line, expect)

    async def _send(self, writer: asyncio.StreamWriter, **msg: object) -> None:
        writer.write(json.dumps(msg).encode() + b"\n")
        await writer.drain()

    async def _compiler_id(self, exe: str) -> str:
        path = shutil.which(exe) or exe
        real = os.path.realpath(path)
        try:
            mtime = os.stat(real).st_mtime
        except OSError:
            return os.path.basename(exe)
        key = (real, mtime)
        if key not in self._compiler_ids:
            # One `--version` per compiler binary, even when the first launchers all register
            # at once: later ones wait for the first one's answer.
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._compiler_ids[key] = future
            ident = os.path.basename(exe)
            try:
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    proc = await asyncio.create_subprocess_exec(
                        real,
                        "--version",
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                    out, _ = await asyncio.wait_for(proc.communicate(), 10)
                    first = out.decode(errors="replace").strip().splitlines()[:1]
                    if first:
                        ident = f"{os.path.basename(exe)}: {first[0]}"
            finally:
                future.set_result(ident)  # never leave the waiting registrations hanging
        return await asyncio.shield(self._compiler_ids[key])

    async def _register(self, msg: dict) -> Job:
        argv = list(msg["argv"])
        cwd = msg.get("cwd", "")
        output = str(msg.get("output", ""))
        if os.path.isabs(output) and cwd and output.startswith(cwd.rstrip("/") + "/"):
            output = os.path.relpath(output, cwd)
        real = compiler_argv(argv) or argv  # the compiler under a ccache/sccache wrapper
        compiler = await self._compiler_id(real[0])
        kind = msg.get("kind", "other")
        fingerprint, source_bytes = (
            _compile_fingerprint(real, cwd) if kind == "compile" else ("", 0)
        )
        return self.enqueue(
            output,
            kind,
            compiler,
            argv=argv,
            cwd=cwd,
            fingerprint=fingerprint,
            source_bytes=source_bytes,
            launcher_pid=int(msg.get("pid", 0)),
            env=msg.get("env"),
        )

    def enqueue(
        self,
        output: str,
        kind: str,
        compiler: str,
        *,
        argv: list[str] | None = None,
        cwd: str = "",
        fingerprint: str = "",
        source_bytes: int = 0,
        launcher_pid: int = 0,
        env: dict[str, str] | None = None,
    ) -> Job:
        """A job asks for admission: predict it, queue it, and decide."""
        now = self.now()
        if not self._admitted_any:
            if self._first_arrival is None:
                self._first_arrival = now
            self._last_arrival = now
        with self._lock:
            job = Job(
                id=self._next_id,
                output=output,
                kind=kind,
                argv=argv or [compiler],
                cwd=cwd,
                launcher_pid=launcher_pid,
                compiler=compiler,
                prediction=Prediction(0, "prior"),
                enqueued_at=now,
                queued_at_first=now,
                fingerprint=fingerprint,
                source_bytes=source_bytes,
                env=env,
            )
            self._next_id += 1
            self._predict(job)
            self.jobs[job.id] = job
        prediction = job.prediction
        if prediction.bytes > self.opts.budget_bytes:
            over = prediction.bytes - self.opts.budget_bytes
            self.event(
                "exclusive",
                output,
                f"predicted {host.format_size(prediction.bytes)} > budget "
                f"{host.format_size(self.opts.budget_bytes)}: it will run alone and needs about "
                f"{host.format_size(over)} of swap (or raise --mem-budget)",
                predicted=prediction.bytes,
                swap_needed=over,
            )
        self._admit()
        return job

    def _key(self, job: Job) -> JobKey:
        return JobKey(job.output, job.kind, job.compiler, job.fingerprint, self.opts.project)

    def _sibling(self, job: Job) -> policy.Sibling:
        done = job.state == "done"
        return policy.Sibling(
            compiler=job.compiler,
            kind=job.kind,
            directory=os.path.dirname(job.output),
            family=profiles.family_of(job.output),
            source_bytes=job.source_bytes,
            peak=job.peak_rss,
            finished=done,
            curve=tuple(policy_curve(job.curve)) if done else (),
        )

    def _predict(self, job: Job) -> None:
        """The profile DB first; for a job it has never seen, measured siblings of this build;
        then a prior, capped to a slot's share of the budget, with a slow start for its family
        (the caller holds the lock)."""
        prediction = self.profiles.predict(self._key(job))
        job.capped_from = 0
        job.unknown_group = ""
        if prediction.source in ("exact", "output"):
            job.prediction = prediction
            return
        # Not this job's own history: siblings measured in this build know more than a
        # neighbour's peak from the DB (they ran with these flags, and carry a curve).
        siblings = [
            self._sibling(other)
            for other in self.jobs.values()
            if other.id != job.id and other.attempts == 1 and (
                (other.state == "done" and other.record is not None
                 and other.record.status == "ok")
                or other.state == "running"
            )
        ]
        guess = policy.sibling_prediction(self._sibling(job), siblings)
        if guess is not None:
            estimate, source, curve = guess
            floor = prediction.bound  # a cut-short run of this job: its lower bound
            prediction = dataclasses.replace(
                prediction, bytes=max(estimate, floor), source=source, curve=curve
            )
        elif prediction.source == "prior":
            job.unknown_group = f"{job.compiler}|{job.kind}|{profiles.family_of(job.output)}"
            if self.opts.cap_priors:
                capped = scheduler.capped_prior(
                    prediction.bytes, self._admission_budget(), self.opts.slots
                )
                if capped < prediction.bytes:
                    job.capped_from = prediction.bytes
                    prediction = dataclasses.replace(prediction, bytes=capped)
        job.prediction = prediction

    def _refresh_guesses(self) -> None:
        """A job finished: waiting jobs that were guessed (sibling or prior) are predicted
        again from what this build has measured since."""
        with self._lock:
            for job in self.jobs.values():
                if job.state == "waiting" and not job.protected and job.prediction.source in (
                    "prior", "sibling", "sibling-dir", "target", "family"
                ):
                    self._predict(job)

    # --- admission ---------------------------------------------------------------------------

    def _admit(self) -> None:
        if not self._admitted_any and self._gathering():
            return
        now = self.now()
        with self._lock:
            waiting = [
                scheduler.Waiting(
                    j.id,
                    j.prediction.bytes,
                    j.enqueued_at,
                    self._share(j),
                    curve=j.prediction.curve,
                    unknown_group=j.unknown_group,
                )
                for j in self.jobs.values()
                if j.state == "waiting"
            ]
            running = [
                scheduler.Running(
                    j.id,
                    j.prediction.bytes,
                    j.current_rss,
                    j.exclusive,
                    j.cpu_share,
                    envelope=policy.running_envelope(
                        j.prediction.curve, j.prediction.bytes, j.current_rss, j.running_s(now)
                    ),
                    unknown_group=j.unknown_group,
                )
                for j in self.jobs.values()
                if j.state == "running"
            ]
            # A pause can only be lifted by running jobs giving memory back: with none running
            # (the host is short of memory for reasons of its own) waiting would never end, so
            # the build goes on one job at a time.
            paused = bool(self.paused) and bool(running)
            decision = scheduler.decide(
                waiting,
                running,
                self._admission_budget(),
                self.opts.slots,
                paused=paused,
                now=now,
                max_bypass_s=self.opts.max_bypass_s,
                unknown_limit=policy.unknown_family_limit(self.opts.slots),
            )
            admit = decision.admit[:1] if self.paused and not running else decision.admit
            self.wait_reason = decision.reason or (f"paused: {self.paused}" if paused else "")
            for job_id in admit:
                job = self.jobs[job_id]
                job.state = "running"
                job.exclusive = job_id in decision.exclusive
                job.cpu_share = self._share(job)
                job.started_at = now
                job.current_rss = 0
                job.samples.clear()
                job.curve = []
                job.runq_by_pid.clear()
                job.clock = ProgressClock()
                job.verdict = None
                job.output_tail = ""
                job.kill_reason = None
                job.child_pid = None
                job.frozen_since = None
                job.frozen_s = 0.0
                job.go.set()
                self._admitted_any = True

    def _admission_budget(self) -> int:
        """Admission packs below the freeze mark, so that it never causes a freeze itself."""
        return int(self.opts.budget_bytes * policy.FREEZE_AT)

    def _share(self, job: Job) -> float:
        return job.prediction.cpu_share if self.opts.cpu_shares else 1.0

    def _gathering(self) -> bool:
        """Start-up: hold the first admission while launchers are still registering; a timer
        re-decides when the hold ends (registrations re-decide too)."""
        hold = scheduler.gather_hold_s(
            self.now(),
            self._first_arrival,
            self._last_arrival,
            quiet_s=self.opts.gather_quiet_s,
            max_s=self.opts.gather_max_s,
        )
        if hold <= 0:
            return False
        with self._lock:
            self.wait_reason = "gathering the first jobs (largest first)"
        if self._gather_timer is None and self._loop is not None:
            self._gather_timer = self._loop.call_later(hold, self._gather_done)
        return True

    def _gather_done(self) -> None:
        self._gather_timer = None
        self._admit()

    async def _complete(self, job: Job, done: dict) -> dict:
        """Classify the attempt; a crash gets its repro captured off the loop (it runs the
        compiler again for --version and -E), then the retry policy decides."""
        rc, sig = exit_of(done)
        outcome = classify_exit(
            rc,
            sig,
            str(done.get("stderr_tail", "")),
            job.kill_reason,
            self._interrupting,
            oom_killed=oom_kills() > job.oom_at_start,
        )
        repro = None
        if outcome.kind == "crash":
            repro = await asyncio.to_thread(self._crash_evidence, job, done, outcome)
        return self._finish(job, done, outcome, repro)

    def _crash_evidence(self, job: Job, done: dict, outcome: Outcome) -> str | None:
        """A repro dir for the first crash of a job; later crashes are noted in it."""
        rc, sig = exit_of(done)
        tail = str(done.get("stderr_tail", ""))
        if job.repro_dir and job.crashes:
            note_attempt(Path(job.repro_dir), job.attempts,
                         f"{describe_exit(rc, sig)}: {outcome.reason}", tail)
            return job.repro_dir
        try:
            path = save_crash_repro(
                self._repro_root(),
                output=job.output,
                argv=job.argv,
                cwd=job.cwd,
                env=job.env,
                rc=rc,
                sig=sig,
                reason=outcome.reason,
                stderr_tail=tail,
                compiler=job.compiler,
                attempt=job.attempts,
                cancel=self._cancel,
            )
        except Cancelled:
            return None
        except OSError as exc:
            self.event("info", job.output, f"could not save a crash repro: {exc}")
            return None
        return str(path)

    def _requeue(self, job: Job) -> None:
        with self._lock:
            job.attempts += 1
            job.state = "waiting"
            job.enqueued_at = self.now()
            job.peak_rss = 0
            job.frozen_total_s += job.frozen_s
        self._admit()

    def _record_profile(self, entry: ProfileEntry) -> None:
        """Profile writes never stop a build: the DB says when it cannot record, once."""
        seen = len(self.profiles.warnings)
        self.profiles.record(entry)
        for warning in self.profiles.warnings[seen:]:
            self.event("info", entry.output, warning)

    def _profile_entry(self, job: Job, peak: int, maxrss: int, wall_s: float, cpu_s: float,
                       censored: bool) -> ProfileEntry:
        return ProfileEntry(
            output=job.output,
            kind=job.kind,
            compiler=job.compiler,
            fingerprint=job.fingerprint,
            project=self.opts.project,
            peak_rss_bytes=peak,
            wait4_maxrss_bytes=maxrss,
            wall_s=wall_s,
            cpu_s=cpu_s,
            runq_wait_s=round(sum(job.runq_by_pid.values()), 3),
            target=target_of(job.output),
            censored=censored,
            curve=[] if censored else list(policy_curve(job.curve)),
            source_bytes=job.source_bytes,
        )

    def _finish(
        self, job: Job, done: dict, outcome: Outcome | None = None, repro: str | None = None
    ) -> dict:
        rc, sig = exit_of(done)
        tail = str(done.get("stderr_tail", ""))
        if outcome is None:  # remote executors: classify (and capture) in line
            outcome = classify_exit(rc, sig, tail, job.kill_reason, self._interrupting)
            if outcome.kind == "crash":
                repro = self._crash_evidence(job, done, outcome)
        if self._interrupting and outcome.kind not in ("ok", "interrupted"):
            outcome = Outcome("interrupted", "stopped by an interrupt")
        elapsed = job.running_s(self.now())
        if job.frozen_since is not None:  # it ended while frozen (a kill continues the tree)
            job.frozen_s += self.now() - job.frozen_since
            job.frozen_since = None
            # Every freeze has its thaw in the log, so readers can pair them.
            self.event("thaw", job.output, "it ended while frozen")
        maxrss = int(done.get("maxrss", 0))
        peak = max(job.peak_rss, maxrss)
        with self._lock:
            job.state = "done"
            job.child_pid = None
        kind = outcome.kind
        if repro:
            job.repro_dir = repro
        if kind in ("guard", "hang", "spin", "interrupted") and peak > 0:
            # Cut short: what it reached is a lower bound, never its peak.
            self._record_profile(self._profile_entry(
                job, peak, maxrss, elapsed, float(done.get("cpu_s", 0.0)), censored=True
            ))
        rerun = policy.after_memory_kill(job.prediction.bytes, peak, job.memory_kills)
        if kind == "guard" and rerun is not None:
            job.prediction = dataclasses.replace(
                job.prediction, bytes=rerun.reserve, censored=True
            )
            job.protected = rerun.protected
            job.capped_from = 0
            job.unknown_group = ""
            self.event(
                "retry",
                job.output,
                "re-running after a memory kill, protected from further kills, reserved "
                f"{host.format_size(rerun.reserve)}",
                attempt=job.attempts,
                reason="memory",
                predicted=rerun.reserve,
            )
            self._requeue(job)
            return {"op": "retry"}
        if kind in ("hang", "spin") and job.hang_kills <= self.opts.retries:
            detail = (f"killed as {'stalled' if kind == 'hang' else 'spinning'} "
                      f"(diagnostics: {job.repro_dir}); retrying, attempt {job.attempts + 1}")
            self.event("retry", job.output, detail, attempt=job.attempts, reason=kind,
                       bundle=job.repro_dir)
            self._requeue(job)
            return {"op": "retry", "detail": detail}
        if kind == "crash":
            job.crashes += 1
            if job.crashes <= self.opts.crash_retries:
                detail = f"{outcome.reason}; repro: {repro}; retrying once"
                self.event("crash", job.output, detail, repro=repro, signal=sig, rc=rc,
                           attempt=job.attempts, compiler=job.compiler)
                self.event("retry", job.output, f"re-running after a crash (attempt "
                           f"{job.attempts + 1})", attempt=job.attempts, reason="crash")
                self._requeue(job)
                return {"op": "retry", "detail": detail}
            self.event("crash", job.output,
                       f"{outcome.reason} again (attempt {job.attempts}); repro: {repro}",
                       repro=repro, signal=sig, rc=rc, attempt=job.attempts,
                       compiler=job.compiler)
        elif kind == "ok" and job.crashes and job.repro_dir:
            # Crashed before, passed now: a flaky compiler is worth knowing about.
            note_attempt(Path(job.repro_dir), job.attempts, "succeeded (the crash is flaky)")
        status = {
            "ok": "ok",
            "hang": "hung",
            "spin": "hung",
            "guard": "killed-retried",
            "crash": "crashed",
            "interrupted": "interrupted",
        }.get(kind, "failed")
        last = job.verdict
        record = JobRecord(
            output=job.output,
            kind=job.kind,  # type: ignore[arg-type]
            target=target_of(job.output),
            predicted_rss_bytes=job.prediction.bytes,
            prediction_source=job.prediction.source,
            peak_rss_bytes=peak,
            wait4_maxrss_bytes=maxrss,
            wall_s=round(elapsed, 3),
            cpu_s=round(float(done.get("cpu_s", 0.0)), 3),
            runq_wait_s=round(sum(job.runq_by_pid.values()), 3),  # 0 for remote jobs: unseen
            cpu_share=job.cpu_share,
            queued_s=round(job.started_at - job.queued_at_first, 3),
            started_at_s=round(job.started_at, 3),
            attempts=job.attempts,
            status=status,  # type: ignore[arg-type]
            exit_code=rc,
            exclusive=job.exclusive,
            frozen_s=round(job.frozen_total_s + job.frozen_s, 3),
            memory_kills=job.memory_kills,
            verdict=last.state if last and last.state != "starting" else "healthy",
            verdict_evidence=last.evidence if last else "",
            repro_dir=job.repro_dir,
            signal=sig or None,
            node=done.get("node"),
        )
        with self._lock:
            job.record = record
            self.finished.append(record)
            job.env = None  # a finished job's environment is not needed any more
            job.output_tail = ""
        if rc == 0:
            self._refresh_guesses()  # this build now knows more about the job's siblings
        self._admit()  # the slot is free: admit before the profile write, not after it
        if rc == 0:
            entry = self._profile_entry(job, peak, maxrss, elapsed, record.cpu_s, censored=False)
            # A compiler-cache hit measured the cache, not the compile: kept, never a peak.
            entry.cache_hit = is_cache_hit(evidence_from_done(
                job.argv, job.kind, done, peak, job.prediction.bytes, job.prediction.wall_s,
                job.prediction.source,
            ))
            self._record_profile(entry)
        if kind in ("hang", "spin"):
            what = "stalled" if kind == "hang" else "kept spinning"
            return {"op": "fail", "detail": (
                f"{what} on all {job.attempts} attempts and was killed each time; "
                f"diagnostics: {job.repro_dir}"
                + (f" ({last.evidence})" if last else "")
            )}
        if kind == "crash":
            return {"op": "fail", "detail": (
                f"{outcome.reason} on all {job.attempts} attempts; "
                f"repro: {repro} (./rerun.sh reproduces it); compiler: {job.compiler}"
            )}
        if kind == "guard":
            return {"op": "fail", "detail": (
                f"killed by the memory guard after its one protected re-run ({job.attempts} "
                "attempts): the host ran out of memory beside it; raise --mem-budget or free "
                "memory on the host"
            )}
        if kind == "killed":
            return {"op": "fail", "detail": f"{job.output}: {outcome.reason}"}
        return {"op": "ok"}

    def _repro_root(self) -> Path:
        return self.opts.repro_dir or (self.opts.build_dir / ".buildctl" / "repro")

    def _abandon(self, job: Job) -> None:
        """The launcher went away (ninja killed, Ctrl-C): kill what it started, keep no slot."""
        if job.state == "running":
            self._kill_tree(job, "launcher-gone")
        with self._lock:
            job.state = "done"
            if job.record is None:
                record = JobRecord(
                    output=job.output,
                    kind=job.kind,  # type: ignore[arg-type]
                    target=target_of(job.output),
                    predicted_rss_bytes=job.prediction.bytes,
                    prediction_source=job.prediction.source,
                    peak_rss_bytes=job.peak_rss,
                    attempts=job.attempts,
                    status="interrupted",
                )
                job.record = record
                self.finished.append(record)
        self._admit()

    def _kill_tree(self, job: Job, reason: str) -> None:
        self.runner.kill(job)

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

    def _live(self, job: Job, now: float) -> policy.LiveJob:
        points = [(s.t, s.rss) for s in job.samples]
        growth = job.growth_at_freeze if job.frozen else policy.growth_rate(points)
        recent = None if job.frozen else policy.recent_rate(points)
        ahead = soon = 0
        own_curve = False
        if job.prediction.curve:
            envelope = policy.running_envelope(
                job.prediction.curve, job.prediction.bytes, job.current_rss, job.running_s(now)
            )
            ahead = envelope.peak_ahead()
            if job.prediction.source in ("exact", "output"):  # its own curve, not a sibling's
                own_curve = True
                soon = policy.expected_soon(
                    job.prediction.curve, job.running_s(now), policy.GROWTH_HORIZON_S
                )
        elif job.prediction.source not in ("prior",) and not job.capped_from:
            ahead = max(job.prediction.bytes, job.current_rss)
        return policy.LiveJob(
            job_id=job.id,
            rss=job.current_rss,
            growth_bps=growth,
            started_at=job.started_at,
            cpu_s=job.cpu_s,
            frozen=job.frozen,
            protected=job.protected,
            peak_ahead=ahead,
            soon=soon,
            recent_bps=recent,
            own_curve=own_curve,
        )

    def _memory_guard(self, avail: int, running: list[Job]) -> None:
        """Pause, freeze, thaw or (last) kill, as policy.pressure_actions says; PSI pressure and
        a thrashing job pause admission too."""
        now = self.now()
        live_jobs = [j for j in running if not j.kill_reason]  # a tree being killed frees
        actions = policy.pressure_actions(
            [self._live(j, now) for j in live_jobs],
            self.opts.budget_bytes,
            host_available=avail,
            low_water=self.low_water,
            critical=self.critical,
            can_freeze=self.opts.freeze and self.opts.executor is None,
        )
        reason = actions.pause
        if not reason:
            # A thrashing job needs memory, not company: shed load instead of killing it. It is
            # named before host-wide PSI, which its own faults raise.
            for job in running:
                if job.verdict and job.verdict.state == "thrashing":
                    reason = (f"{job.output} is thrashing "
                              f"({job.verdict.faults_per_s:.0f} major faults/s)")
                    break
        if not reason:
            pressure = host.memory_pressure()
            if pressure and pressure[1] >= self.opts.psi_full_pause:
                reason = f"memory pressure: PSI full avg10 {pressure[1]:.1f}%"
        if reason and not self.paused:
            self.event("throttle", None, f"admission paused: {reason}", available=avail)
        elif not reason and self.paused:
            self.event("throttle", None, "admission resumed", available=avail)
        self.paused = reason
        live_total = sum(j.current_rss for j in live_jobs)
        for job_id in actions.freeze:
            job = self.jobs[job_id]
            if self.runner.freeze(job):
                with self._lock:
                    job.frozen_since = now
                    points = [(s.t, s.rss) for s in job.samples]
                    job.growth_at_freeze = max(policy.growth_rate(points),
                                               policy.recent_rate(points))
                self.event("freeze", job.output,
                           f"froze it at {host.format_size(job.current_rss)}: {actions.why} "
                           f"(live {host.format_size(live_total)})", job_rss=job.current_rss,
                           total_rss=live_total)
        for job_id in actions.thaw:
            job = self.jobs[job_id]
            self.runner.thaw(job)
            with self._lock:
                if job.frozen_since is not None:
                    job.frozen_s += now - job.frozen_since
                job.frozen_since = None
                job.clock = ProgressClock()  # frozen time is not a stall
                job.samples.clear()
            self.event("thaw", job.output, f"resumed it (live {host.format_size(live_total)})",
                       total_rss=live_total)
        if actions.kill is not None:
            victim = self.jobs[actions.kill]
            victim.kill_reason = "memory"
            victim.memory_kills += 1
            self._kill_tree(victim, "memory")
            self.event(
                "oom-guard-kill",
                victim.output,
                f"{actions.why} (live {host.format_size(live_total)} of "
                f"{host.format_size(self.opts.budget_bytes)}, host available "
                f"{host.format_size(avail)}): killed the job that loses least work per byte "
                f"({host.format_size(victim.current_rss)}, {victim.cpu_s:.1f} s CPU); it re-runs "
                "once, protected",
                reason="memory",
                total_rss=live_total,
                job_rss=victim.current_rss,
                cpu_lost_s=round(victim.cpu_s, 3),
                available=avail,
            )

    def _spin_ceiling(self, job: Job) -> float | None:
        """Only a job's own history says how long is too long: the same output, with the same
        compile fingerprint or (after an edit of its source or flags, when a runaway compile is
        most likely) with another one."""
        longest = job.prediction.wall_s
        if job.prediction.source not in ("exact", "output") or not longest:
            return None
        return max(longest * self.opts.spin_factor, self.opts.hang_after_s, self.opts.spin_floor_s)

    def _verdicts(self, running: list[Job]) -> None:
        for job in running:
            if job.kill_reason or not job.samples:
                continue
            rules = VerdictPolicy(
                hang_after_s=self.opts.hang_after_s, spin_ceiling_s=self._spin_ceiling(job)
            )
            result = verdict(
                list(job.samples), rules, job.running_s(self.now()), job.clock.since()
            )
            previous = job.verdict.state if job.verdict else "starting"
            with self._lock:
                job.verdict = result
            if result.state == previous:
                continue
            if result.state == "thrashing":
                self.event("thrash", job.output, result.evidence, **result.data())
            elif previous == "thrashing" and result.state == "healthy":
                self.event("info", job.output, f"no longer thrashing: {result.evidence}")
            elif result.state in ("stalled", "spinning"):
                self._kill_hung(job, result)

    def _kill_hung(self, job: Job, result: Verdict) -> None:
        """Evidence first (the tree as it hangs), then the kill, then the bundle on disk."""
        evidence = result.evidence
        if result.culprit is not None:
            wchan = read_wchan(result.culprit.pid)
            if wchan:
                evidence += f" in {wchan}"
        processes = collect_tree(job.child_pid)
        job.kill_reason = "hang" if result.state == "stalled" else "spin"
        job.hang_kills += 1
        self._kill_tree(job, job.kill_reason)
        with self._lock:
            job.verdict = dataclasses.replace(result, evidence=evidence)
        bundle: str | None = None
        try:
            bundle = str(
                save_stall_bundle(
                    self._repro_root(),
                    output=job.output,
                    argv=job.argv,
                    cwd=job.cwd,
                    env=job.env,
                    evidence=evidence,
                    verdict_data=result.data(),
                    processes=processes,
                    output_tail=job.output_tail,
                    compiler=job.compiler,
                    attempt=job.attempts,
                )
            )
            job.repro_dir = bundle
        except OSError as exc:
            self.event("info", job.output, f"could not save the stall bundle: {exc}")
        kind = "stall" if result.state == "stalled" else "spin"
        self.event(kind, job.output, f"{evidence}; diagnostics: {bundle}", bundle=bundle,
                   attempt=job.attempts, **result.data())
        self.event("hang", job.output, f"killed the tree ({result.state}, attempt "
                   f"{job.attempts})", bundle=bundle, attempt=job.attempts)

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
