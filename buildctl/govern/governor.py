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
import re
import shutil
import signal
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
from buildctl.govern import profiles, scheduler
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
    sample_tree,
    verdict,
)
from buildctl.govern.profiles import Prediction, ProfileDB, ProfileEntry, target_of
from buildctl.report import BuildReport, Event, JobRecord

MiB = 1024**2
LINE_LIMIT = 16 * MiB
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGFPE, signal.SIGILL, signal.SIGABRT, signal.SIGBUS}
# What compilers print when they (or a process they drive) crash: gcc, clang/icpx, nvcc.
ICE_TEXT = re.compile(
    r"internal compiler error|Internal Compiler Error|Please submit a full bug report|"
    r"PLEASE submit a bug report|failed due to signal|died due to signal"
)
# A driver reporting that its child was killed from outside (OOM killer, a user): not a bug.
KILLED_TEXT = re.compile(
    r"\b(Killed|Terminated|Interrupt|Hangup) signal terminated program|"
    r"unable to execute command: (Killed|Terminated)|died due to signal (9|15|2|1)\b"
)
STOP_REASONS = ("interrupt", "launcher-gone")


def _compile_fingerprint(argv: list[str], cwd: str) -> str:
    """profiles.compile_fingerprint with the source's content digest read here (the edge)."""
    source = profiles.compile_source(argv)
    digest = ""
    if source:
        path = Path(cwd, source) if cwd else Path(source)
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            digest = "unreadable"
    return profiles.compile_fingerprint(argv, digest)


@dataclass(frozen=True)
class Outcome:
    """How one attempt of a job ended, as far as retry policy and the report care."""

    kind: str  # ok | failed | crash | killed | hang | spin | guard | interrupted
    reason: str = ""


def classify_exit(
    rc: int,
    sig: int,
    stderr_tail: str,
    kill_reason: str | None,
    interrupting: bool = False,
    oom_killed: bool = False,
) -> Outcome:
    """Pure: a kill by buildctl (guard, hang, Ctrl-C) is never a crash; a crash is a crash
    signal, an ICE message, or a SIGKILL from the kernel OOM killer."""
    if rc == 0:
        return Outcome("ok")
    if kill_reason == "oom-guard":
        return Outcome("guard", "killed by the OOM guard")
    if kill_reason == "budget":
        return Outcome(
            "guard", "killed: it outgrew its prediction and the reservations passed the budget"
        )
    if kill_reason in ("hang", "spin"):
        what = "stalled" if kill_reason == "hang" else "spinning"
        return Outcome(kill_reason, f"killed as {what}")
    if interrupting or kill_reason in STOP_REASONS:
        return Outcome("interrupted", "stopped by an interrupt")
    name = describe_exit(rc, sig)
    if sig in CRASH_SIGNALS:
        return Outcome("crash", f"the compiler died of {signal.Signals(sig).name}")
    if sig == signal.SIGKILL or (KILLED_TEXT.search(stderr_tail) and sig == 0):
        if oom_killed:
            return Outcome("crash", "killed by the kernel OOM killer (raise --mem-budget "
                                    "headroom or lower -j; buildctl's guard acted too late)")
        return Outcome("killed", f"killed from outside buildctl ({name})")
    if sig:
        return Outcome("killed", f"killed from outside buildctl ({name})")
    if ICE_TEXT.search(stderr_tail):
        return Outcome("crash", f"internal compiler error (exit code {rc})")
    return Outcome("failed", name)


def exit_of(done: dict) -> tuple[int, int]:
    """(exit status as a shell reports it, signal) from a launcher's or executor's `done`."""
    rc = int(done.get("rc", 1))
    sig = int(done.get("signal") or 0)
    if rc < 0:  # older launchers / executors send Popen's negative returncode
        sig = sig or -rc
        rc = 128 + sig
    return rc, sig


def oom_kills() -> int:
    """Kernel OOM kills so far (all cgroups); a rise during a job's run that coincides with its
    SIGKILL means the kernel, not a user, killed it."""
    try:
        with open("/proc/vmstat") as handle:
            for line in handle:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


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
    guard_retries: int = 20  # re-runs after OOM-guard kills (ninja should never see those)
    spin_factor: float = 5.0  # a job running longer than this x its longest record is spinning
    spin_floor_s: float = 300.0  # ...but never before this: history from a quiet machine lies
    max_bypass_s: float = 60.0
    # Start-up: hold the first admission until launchers stop registering (scheduler.gather_hold_s)
    gather_quiet_s: float = scheduler.GATHER_QUIET_S
    gather_max_s: float = scheduler.GATHER_MAX_S
    # Predict never-measured jobs at most budget / slots (scheduler.capped_prior): --share-priors.
    cap_priors: bool = False
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
    clock: ProgressClock = field(default_factory=ProgressClock)
    kill_reason: str | None = None
    verdict: Verdict | None = None
    go: asyncio.Event = field(default_factory=asyncio.Event)
    record: JobRecord | None = None
    env: dict[str, str] | None = None  # the launcher's (= the compiler's) environment
    output_tail: str = ""  # last stderr lines, pushed by the launcher while the job runs
    oom_at_start: int = 0
    hang_kills: int = 0
    guard_kills: int = 0
    crashes: int = 0
    repro_dir: str | None = None  # crash repro or stall bundle of this job
    capped_from: int = 0  # the uncapped prior when the prediction is a capped prior, else 0
    cpu_share: float = 1.0  # of a CPU slot, as admitted (scheduler.cpu_share)


@dataclass(frozen=True)
class RunningView:
    output: str
    rss: int
    predicted: int
    elapsed_s: float
    verdict: str
    evidence: str
    exclusive: bool
    attempts: int


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


class Governor:
    def __init__(self, options: GovernorOptions, profiles: ProfileDB) -> None:
        self.opts = options
        self.profiles = profiles
        total = psutil.virtual_memory().total
        low, critical = default_watermarks(total)
        self.low_water = options.low_water_bytes if options.low_water_bytes is not None else low
        self.critical = options.critical_bytes if options.critical_bytes is not None else critical
        self.t0 = time.monotonic()
        self.jobs: dict[int, Job] = {}
        self._next_id = 1
        self.finished: list[JobRecord] = []
        self.events: list[Event] = []
        self.event_listeners: list[Callable[[Event], None]] = []
        self.peak_total_rss = 0
        self.host_min_available = psutil.virtual_memory().available
        self.samples: list[tuple[float, int, int]] = []
        self.paused = ""
        self.wait_reason = ""
        self._last_guard_kill = -1e9
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
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
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
        return time.monotonic() - self.t0

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
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            writer.close()  # only our own user's launchers may ask for memory
            return
        job: Job | None = None
        try:
            msg = await self._read(reader)
            if msg is None or msg.get("op") != "admit":
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
                started = await self._read(reader)
                if started is None:
                    return
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
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # ValueError: an over-long or garbled line; the launcher sees EOF and says so
        finally:
            # At stop, running trees are already killed and the report takes jobs as they are.
            if job is not None and job.state != "done" and not self._stopping:
                self._abandon(job)
            writer.close()

    async def _read_until_done(self, job: Job, reader: asyncio.StreamReader) -> dict | None:
        """Messages while the job runs: output tails (kept for a stall bundle), then `done`."""
        while True:
            msg = await self._read(reader)
            if msg is None or msg.get("op") == "done":
                return msg
            if msg.get("op") == "output":
                job.output_tail = str(msg.get("tail", ""))

    async def _read(self, reader: asyncio.StreamReader) -> dict | None:
        line = await reader.readline()
        if not line:
            return None
        return json.loads(line)

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
        compiler = await self._compiler_id(argv[0])
        kind = msg.get("kind", "other")
        if kind == "compile":
            compiler = f"{compiler} #{_compile_fingerprint(argv, cwd)}"
        prediction = self.profiles.predict(output, kind, compiler)
        capped_from = 0
        if self.opts.cap_priors and prediction.source == "prior":
            capped = scheduler.capped_prior(
                prediction.bytes, self.opts.budget_bytes, self.opts.slots
            )
            if capped < prediction.bytes:
                capped_from = prediction.bytes
                prediction = dataclasses.replace(prediction, bytes=capped)
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
                argv=argv,
                cwd=cwd,
                launcher_pid=int(msg.get("pid", 0)),
                compiler=compiler,
                prediction=prediction,
                enqueued_at=now,
                queued_at_first=now,
                env=msg.get("env"),
                capped_from=capped_from,
            )
            self._next_id += 1
            self.jobs[job.id] = job
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

    # --- admission ---------------------------------------------------------------------------

    def _admit(self) -> None:
        if not self._admitted_any and self._gathering():
            return
        with self._lock:
            waiting = [
                scheduler.Waiting(j.id, j.prediction.bytes, j.enqueued_at, self._share(j))
                for j in self.jobs.values()
                if j.state == "waiting"
            ]
            running = [
                scheduler.Running(j.id, j.prediction.bytes, j.current_rss, j.exclusive, j.cpu_share)
                for j in self.jobs.values()
                if j.state == "running"
            ]
            decision = scheduler.decide(
                waiting,
                running,
                self.opts.budget_bytes,
                self.opts.slots,
                paused=bool(self.paused),
                now=self.now(),
                max_bypass_s=self.opts.max_bypass_s,
            )
            self.wait_reason = decision.reason
            for job_id in decision.admit:
                job = self.jobs[job_id]
                job.state = "running"
                job.exclusive = job_id in decision.exclusive
                job.cpu_share = self._share(job)
                job.started_at = self.now()
                job.current_rss = 0
                job.samples.clear()
                job.runq_by_pid.clear()
                job.clock = ProgressClock()
                job.verdict = None
                job.output_tail = ""
                job.kill_reason = None
                job.child_pid = None
                job.go.set()
                self._admitted_any = True

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
        self._admit()

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
        elapsed = self.now() - job.started_at
        maxrss = int(done.get("maxrss", 0))
        peak = max(job.peak_rss, maxrss)
        with self._lock:
            job.state = "done"
            job.child_pid = None
        kind = outcome.kind
        if repro:
            job.repro_dir = repro
        if kind == "guard" and job.guard_kills <= self.opts.guard_retries:
            if job.kill_reason == "budget":
                # Its prediction was too low: from now on it is predicted at what it reached
                # (at least the full prior if it ran on a capped one).
                raised = max(job.capped_from, peak, job.prediction.bytes)
                job.prediction = dataclasses.replace(job.prediction, bytes=raised)
                job.capped_from = 0
                self.event(
                    "retry",
                    job.output,
                    "re-running after a budget overrun kill, "
                    f"predicted {host.format_size(raised)} now",
                    attempt=job.attempts,
                    reason="budget",
                    predicted=raised,
                )
            else:
                self.event("retry", job.output, "re-running after an OOM-guard kill",
                           attempt=job.attempts, reason="oom-guard")
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
        self._admit()  # the slot is free: admit before the profile write, not after it
        if rc == 0:
            self.profiles.record(
                ProfileEntry(
                    output=job.output,
                    kind=job.kind,
                    compiler=job.compiler,
                    peak_rss_bytes=peak,
                    wait4_maxrss_bytes=maxrss,
                    wall_s=elapsed,
                    cpu_s=record.cpu_s,
                    runq_wait_s=record.runq_wait_s,
                    target=record.target,
                )
            )
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
                f"killed {job.guard_kills} times by the OOM guard; "
                "lower -j or raise --mem-budget"
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
        pid = job.child_pid
        if not pid:
            return
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # the launcher made the child a group leader
        for proc in procs:  # anything that left the group (setsid) still dies
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()

    # --- sampling, guard, verdicts -----------------------------------------------------------

    async def _sampler(self) -> None:
        while True:
            try:
                self._tick()
            except Exception as exc:  # never let a sampling glitch stop the build
                self.event("info", None, f"sampler error: {exc!r}")
            await asyncio.sleep(self.opts.sample_interval_s)

    def _tick(self) -> None:
        t = self.now()
        avail = host.available_bytes()
        self.host_min_available = min(self.host_min_available, avail)
        total = 0
        running = [j for j in self.jobs.values() if j.state == "running" and j.child_pid]
        for job in running:
            sample = sample_tree(job.child_pid, t)  # type: ignore[arg-type]
            if sample is None:
                continue
            with self._lock:
                job.samples.append(sample)
                job.clock.update(sample)
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
        guard_killed = self._guard(avail, running)
        if not guard_killed:
            self._budget_guard(running)
        self._verdicts(running)
        self._admit()

    def _guard(self, avail: int, running: list[Job]) -> bool:
        """Host memory: pause admission when low, kill the youngest job when critical (True
        when it killed one)."""
        pressure = host.memory_pressure()
        reason = ""
        if avail < self.low_water:
            reason = (
                f"host available {host.format_size(avail)} < low-water "
                f"{host.format_size(self.low_water)}"
            )
        elif pressure and pressure[1] >= self.opts.psi_full_pause:
            reason = f"memory pressure: PSI full avg10 {pressure[1]:.1f}%"
        else:
            # A thrashing job needs memory, not company: shed load instead of killing it.
            for job in running:
                if job.verdict and job.verdict.state == "thrashing":
                    reason = (f"{job.output} is thrashing "
                              f"({job.verdict.faults_per_s:.0f} major faults/s)")
                    break
        if reason and not self.paused:
            self.event("throttle", None, f"admission paused: {reason}", available=avail)
        elif not reason and self.paused:
            self.event("throttle", None, "admission resumed", available=avail)
        self.paused = reason
        if avail < self.critical and len(running) > 1 and self.now() - self._last_guard_kill > 1.0:
            # Kill the youngest: the oldest has made the most progress (and progress is kept).
            victim = max(running, key=lambda j: j.started_at)
            victim.kill_reason = "oom-guard"
            victim.guard_kills += 1
            self._kill_tree(victim, "oom-guard")
            self._last_guard_kill = self.now()
            self.event(
                "oom-guard-kill",
                victim.output,
                f"host available {host.format_size(avail)} < critical "
                f"{host.format_size(self.critical)}: killed the youngest job and re-queued it",
                available=avail,
                job_rss=victim.current_rss,
            )
            return True
        return False

    def _budget_guard(self, running: list[Job]) -> None:
        """The jobs' reservations above the budget while a job runs above its prediction (or on
        a capped prior): kill the youngest such job and re-queue it at what it reached (see
        scheduler.overrun_victim)."""
        live = [
            scheduler.Live(
                j.id, j.current_rss, j.started_at, j.capped_from > 0, j.prediction.bytes
            )
            for j in running
            if not j.kill_reason  # a tree being killed is about to free its memory
        ]
        victim_id = scheduler.overrun_victim(live, self.opts.budget_bytes)
        if victim_id is None:
            return
        total = sum(j.rss for j in live)
        reserved = sum(scheduler.guard_reserved(j) for j in live)
        victim = self.jobs[victim_id]
        victim.kill_reason = "budget"
        victim.guard_kills += 1
        self._kill_tree(victim, "budget")
        self.event(
            "oom-guard-kill",
            victim.output,
            f"jobs' reservations {host.format_size(reserved)} (live "
            f"{host.format_size(total)}) > budget {host.format_size(self.opts.budget_bytes)}: "
            f"killed the youngest job above its prediction "
            f"({host.format_size(victim.current_rss)} of "
            f"{host.format_size(victim.prediction.bytes)} predicted) and re-queued it",
            reason="budget",
            total_rss=total,
            reserved=reserved,
            job_rss=victim.current_rss,
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
            policy = VerdictPolicy(
                hang_after_s=self.opts.hang_after_s, spin_ceiling_s=self._spin_ceiling(job)
            )
            result = verdict(
                list(job.samples), policy, self.now() - job.started_at, job.clock.since()
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
                    elapsed_s=now - j.started_at,
                    verdict=j.verdict.state if j.verdict else "starting",
                    evidence=j.verdict.evidence if j.verdict else "",
                    exclusive=j.exclusive,
                    attempts=j.attempts,
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
            )

    def fill_report(self, report: BuildReport) -> None:
        with self._lock:
            report.jobs = list(self.finished)
            report.events = list(self.events)
            report.peak_total_rss_bytes = self.peak_total_rss
            report.host_min_available_bytes = self.host_min_available
            report.samples = list(self.samples)
            report.cpu_s = round(sum(r.cpu_s for r in self.finished), 3)
