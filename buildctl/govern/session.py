"""A governed session: lock the build dir, start the governor, run the build command (ninja or
a wheel build that runs ninja) with launchers pointed at it, keep the view fresh, and write the
report. This is the API that `build`, `wheel` and `matrix` use.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TextIO

import psutil
from rich.console import Console

from buildctl import __version__, host, process
from buildctl.errors import BadInput
from buildctl.govern.governor import Governor, GovernorOptions, RemoteExecutor
from buildctl.govern.profiles import ProfileDB, ProfileEntry
from buildctl.govern.protocol import prepare_socket_dir
from buildctl.report import BuildReport, Event, check_output_path, write_error
from buildctl.ui.eta import build_plan
from buildctl.ui.live import View, make_view
from buildctl.ui.summary import effective_peak_total

_SOCKET_MAX = 100  # AF_UNIX paths are limited to 108 bytes


def socket_path_for(build_dir: Path) -> Path:
    """`<build>/.buildctl/governor.sock`, or a short per-user path if that is too long."""
    candidate = build_dir.resolve() / ".buildctl" / "governor.sock"
    if len(str(candidate)) <= _SOCKET_MAX:
        return candidate
    digest = hashlib.sha256(str(build_dir.resolve()).encode()).hexdigest()[:16]
    runtime = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(
        tempfile.gettempdir(), f"buildctl-{os.getuid()}"
    )
    return Path(runtime) / f"gov-{digest}.sock"


LAUNCHER = Path(__file__).resolve().with_name("launcher.py")


def launcher_command(socket_path: Path) -> list[str]:
    """What CMake puts before every compile and link. The launcher is stdlib-only, so it runs as
    a script in isolated mode without `site` (-I -S): no site-packages scan, no editable-install
    finders, no PYTHON* variables; ~15 ms less per job than `-m buildctl.govern.launcher`."""
    return [sys.executable, "-I", "-S", str(LAUNCHER), "--socket", str(socket_path), "--"]


NINJA_INTERRUPTED = "ninja: build stopped: interrupted by user"


@dataclass
class SessionOptions:
    build_dir: Path
    budget_bytes: int
    slots: int
    report_path: Path | None = None
    profile_db: Path | None = None
    prior_bytes: int | None = None
    # Predict never-measured jobs at budget/slots (faster first builds; the budget can be passed
    # for a moment, the job is then killed and re-run). Off: the contract's conservative prior.
    share_priors: bool = False
    cpu_shares: bool = True  # jobs measured mostly waiting take a fraction of a slot
    plain: bool | None = None
    title: str = "buildctl"
    low_water_bytes: int | None = None
    critical_bytes: int | None = None
    hang_after_s: float = 600.0
    retries: int = 1
    sample_interval_s: float = 0.25
    command: list[str] = field(default_factory=list)
    source_dir: str = ""
    console: Console | None = None
    executor: RemoteExecutor | None = None  # e.g. a RayExecutor; None runs jobs locally
    project: str = ""  # what is built: profiles of two projects never predict each other
    # SYCL device links (GovernorOptions): bytes per inner link job and links at once, from the
    # build's link plan; 0: off.
    device_link_job_bytes: int = 0
    max_device_links: int = 0


def governor_options(opts: SessionOptions, socket_path: Path, build_dir: Path) -> GovernorOptions:
    """The governor's options: the session's values of the same name (so a field both have
    never needs copying by hand), the socket and build dir, and the derived prior cap."""
    wanted = {f.name for f in dataclasses.fields(GovernorOptions)}
    shared = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)
              if f.name in wanted}
    return GovernorOptions(
        **{**shared, "socket_path": socket_path, "build_dir": build_dir},
        # A prior the user chose is taken as it is; otherwise a never-measured job's guess is
        # capped to a slot's share (the memory guard freezes a job that outgrows it).
        cap_priors=not opts.prior_bytes,
    )


class GovernedSession:
    def __init__(self, opts: SessionOptions) -> None:
        self.opts = opts
        self.console = opts.console or Console(stderr=False)
        self.build_dir = opts.build_dir.resolve()
        self.socket_path = socket_path_for(self.build_dir)
        self.report = BuildReport(
            budget_bytes=opts.budget_bytes,
            slots=opts.slots,
            buildctl_version=__version__,
            command=opts.command,
            source_dir=opts.source_dir,
            build_dir=str(self.build_dir),
            host_total_bytes=psutil.virtual_memory().total,
        )
        self.interrupted = False
        # ninja said it was interrupted (SIGINT/SIGTERM/SIGHUP sent to it, not to buildctl).
        self.stopped_from_outside = False
        self._lock_fd: int | None = None
        self._build_log: TextIO | None = None
        self._t0 = 0.0
        priors = None
        if opts.prior_bytes:
            priors = {
                "compile": opts.prior_bytes,
                "link": opts.prior_bytes,
                "other": opts.prior_bytes,
            }
        self.profiles = ProfileDB(opts.profile_db, priors)
        self.governor = Governor(
            governor_options(opts, self.socket_path, self.build_dir), self.profiles
        )
        if opts.executor is not None and hasattr(opts.executor, "attach"):
            opts.executor.attach(self.governor)
        self.view: View = make_view(self.console, opts.title, opts.plain)

    # --- context ----------------------------------------------------------------------------

    def __enter__(self) -> GovernedSession:
        if self.opts.report_path:
            check_output_path(self.opts.report_path)  # before the build, not after it
        state = self.build_dir / ".buildctl"
        try:
            self.build_dir.mkdir(parents=True, exist_ok=True)
            state.mkdir(exist_ok=True)
        except OSError as exc:
            what = "is not a directory" if self.build_dir.exists() else exc.strerror
            raise BadInput(f"cannot build in {self.build_dir}: {what}",
                           "pass a --build-dir that is a directory you can write to") from None
        # Whoever owns the socket's directory could answer our launchers: it must be ours.
        prepare_socket_dir(self.socket_path.parent)
        try:
            fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise write_error(state / "lock", exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BadInput(
                f"another buildctl is building in {self.build_dir}",
                "wait for it to finish, or pass a different --build-dir",
            ) from None
        # flock dies with its holder, so a crashed run never leaves a lock that blocks us.
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as exc:  # a full disk
            os.close(fd)
            raise write_error(state / "lock", exc) from None
        self._lock_fd = fd
        self._t0 = time.monotonic()
        # The previous run's jobs (read before this run's report replaces it), else the
        # project's profiles, replayed on this budget, give the ETA.
        self.view.set_plan(build_plan(self.report_file, self._project_profiles, self.opts.slots,
                                      self.opts.budget_bytes))
        logs = state / "logs"
        logs.mkdir(exist_ok=True)
        self._build_log = (logs / "build.log").open("w", encoding="utf-8", errors="replace")
        self.governor.event_listeners.append(self.view.event)
        self.governor.start()
        self.view.start()
        for warning in self.profiles.warnings:  # moved aside when corrupt, or not writable
            self.governor.event("info", None, warning)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.view.stop()
        self.governor.stop()
        self.report.wall_s = round(time.monotonic() - self._t0, 3)
        self.governor.fill_report(self.report)
        self.report.peak_total_rss_bytes = effective_peak_total(self.report)
        if self._build_log is not None:
            self._build_log.close()
        self.report.events.extend(split_events(self.build_dir))
        if self.interrupted or isinstance(exc, KeyboardInterrupt):
            self.report.status = "interrupted"
        elif exc is not None and self.report.status == "running":
            self.report.status = "failed"  # before or between commands (a failed configure)
        # Bad input found with the session open (a build dir of another generator): nothing ran,
        # so the last real report (the next run's ETA) is kept.
        nothing_ran = isinstance(exc, BadInput) and not self.report.jobs
        try:
            # The last report is always kept beside the build; --report asks for a copy elsewhere.
            if not nothing_ran:
                self.report.write(self.report_file)
            if self.opts.report_path and not nothing_ran:
                self.report.write(self.opts.report_path)
        finally:  # a report that cannot be written (full disk) still releases the DB and lock
            self.profiles.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)

    def _project_profiles(self) -> list[ProfileEntry]:
        """This project's latest measured jobs (none for a session that names no project)."""
        return self.profiles.latest(self.opts.project) if self.opts.project else []

    @property
    def report_file(self) -> Path:
        return self.build_dir / ".buildctl" / "report.json"

    # --- what the build needs ---------------------------------------------------------------

    def launcher(self) -> list[str]:
        return launcher_command(self.socket_path)

    def cmake_defines(self) -> dict[str, str]:
        launcher = ";".join(self.launcher())
        return {
            "CMAKE_C_COMPILER_LAUNCHER": launcher,
            "CMAKE_CXX_COMPILER_LAUNCHER": launcher,
            "CMAKE_CUDA_COMPILER_LAUNCHER": launcher,
            "CMAKE_C_LINKER_LAUNCHER": launcher,
            "CMAKE_CXX_LINKER_LAUNCHER": launcher,
        }

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["BUILDCTL_SOCKET"] = str(self.socket_path)
        if process.setpriv():  # the launcher's shim for its compilers, found once here
            env[process.SETPRIV_ENV] = str(process.setpriv())
        env.setdefault("NINJA_STATUS", "[%f/%t] ")
        return env

    # --- running ----------------------------------------------------------------------------

    def run(
        self, argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> int:
        """Run the build command under the governor; Ctrl-C/SIGTERM kill every job tree."""
        env = self.child_env(env)
        proc = process.spawn(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        reader = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        reader.start()
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        self._proc = proc
        try:
            while True:
                self.view.refresh(self.governor.snapshot())
                try:
                    proc.wait(0.2)  # returns as soon as the build command exits
                    exited = True
                except subprocess.TimeoutExpired:
                    exited = False
                if self.interrupted:
                    self._terminate(proc)
                    break
                if exited:
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        reader.join(5)
        rc = proc.wait()
        self.view.refresh(self.governor.snapshot())
        self.report.exit_code = rc
        self.report.status = "interrupted" if self.interrupted else ("ok" if rc == 0 else "failed")
        return rc

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith(NINJA_INTERRUPTED):
                self.stopped_from_outside = True
            if self._build_log is not None:
                self._build_log.write(line + "\n")
            self.view.output_line(line)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.interrupted = True
        self.governor.event("interrupt", None, f"received {signal.Signals(signum).name}")

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop ninja (it forwards to launchers), kill every job tree, then anything left."""
        process.signal_group(proc.pid, signal.SIGTERM)
        self.governor.kill_all()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            process.kill_tree(proc.pid)
            proc.wait()
        # Launchers and compilers run in process groups of their own: sweep the descendants we
        # can still see (ninja's children were reparented when it exited).
        self.governor.kill_all()
        if self.opts.executor is not None and hasattr(self.opts.executor, "cancel_all"):
            self.opts.executor.cancel_all()  # remote jobs are out of kill_all's reach


def split_events(build_dir: Path) -> list[Event]:
    """The split hook's plans (written at configure time) as `split` report events."""
    from buildctl.split.writer import load_plans

    events = []
    for plan in load_plans(build_dir):
        events.append(
            Event(
                kind="split",
                t_s=0.0,
                output=plan.get("source"),
                detail=f"{plan.get('entries')} entries -> {plan.get('n')} shard(s): "
                f"{plan.get('reason', '')}",
                data={
                    k: plan.get(k)
                    for k in (
                        "n",
                        "entries",
                        "per_shard_entries",
                        "predicted_whole_peak_bytes",
                        "predicted_shard_peak_bytes",
                        "shard_target_bytes",
                        "forced",
                        "model",
                    )
                },
            )
        )
    return events


def default_slots() -> int:
    return host.probe().cores
