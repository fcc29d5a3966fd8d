"""How a job's attempt ended (pure, apart from reading the kernel's OOM-kill counter): the
retry policy and the report classify every exit through here."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from buildctl.govern.diagnostics import describe_exit

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
    if kill_reason == "memory":
        return Outcome("guard", "killed by the memory guard to keep the build under its budget")
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


