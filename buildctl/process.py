"""Starting, stopping and sampling process trees: the one place buildctl does it.

Starting (`spawn`, `run`). Every child starts in a process group of its own (`process_group=0`,
as ninja's subprocess-posix does), so its whole tree can be signalled at once and a Ctrl-C in
the terminal reaches buildctl alone, which then stops its children in order.

Dying with buildctl. A child should get a signal when buildctl dies, even by SIGKILL: the
kernel's PR_SET_PDEATHSIG does that, but it must be set in the child between fork and exec.
Doing it in `preexec_fn` runs Python (ctypes) in the forked child of a multi-threaded parent
(the governor's loop and samplers, the launcher's socket reader), where a lock another thread
held at fork time (malloc's, the import lock) can deadlock the child before exec. So the child
execs a tiny single-threaded shim instead, which sets the signal and execs the command in place
(same pid, same group): util-linux's `setpriv --pdeathsig SIG --` (about 1 ms) where it has that
option, else `python -I -S buildctl/pdeathsig_exec.py` (about 20 ms), which also checks that its
parent did not die before the request took effect. A pidfd or pipe watcher was the other
choice; it is one more long-lived process per child, and it must itself survive a SIGKILL of
buildctl, which the kernel's signal needs no help for. The signal follows the *thread* that
forked: spawn from a thread that lives as long as the child (the main thread, or one that waits
for it).

Stopping (`signal_tree`, `kill_tree`, `terminate`). The group first, then every descendant found
under the root one by one: a process that called setsid has left the group, not the tree.

Sampling (`tree_pids`, `sample_tree`). /proc read directly: it runs for every running job
several times a second, and psutil's per-process objects cost several times more.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

SHIM = Path(__file__).resolve().with_name("pdeathsig_exec.py")
# The setpriv that knows --pdeathsig, for the launcher (which must not spend a process finding
# out per compile): set in every governed build's environment.
SETPRIV_ENV = "BUILDCTL_SETPRIV"


# --- starting -----------------------------------------------------------------------------


@functools.cache
def setpriv() -> str | None:
    """util-linux's setpriv when it has --pdeathsig (2.33 and later), else None."""
    found = shutil.which("setpriv")
    if not found:
        return None
    try:
        out = subprocess.run([found, "--help"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return found if "--pdeathsig" in out else None


def lifeline(argv: Sequence[str], sig: int = signal.SIGTERM) -> list[str]:
    """`argv` behind the shim that makes it die with this process (this thread, precisely)."""
    tool = setpriv()
    if tool:
        return [tool, "--pdeathsig", signal.Signals(sig).name.removeprefix("SIG"), "--", *argv]
    return [sys.executable, "-I", "-S", str(SHIM), str(os.getpid()), str(int(sig)), "--", *argv]


def _check_runnable(argv: Sequence[str], env: Mapping[str, str] | None,
                    cwd: str | os.PathLike[str] | None) -> None:
    """Raise what exec would (FileNotFoundError, PermissionError) before the shim runs: behind
    it, a missing compiler would only show as exit 127."""
    if not argv:
        raise ValueError("empty command")
    program = str(argv[0])
    if "/" in program:
        path = os.path.join(cwd or ".", program)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
        return
    search = (env if env is not None else os.environ).get("PATH", os.defpath)
    if shutil.which(program, path=search) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def spawn(argv: Sequence[str], *, die_with_parent: bool = True, sig: int = signal.SIGTERM,
          env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
          **popen: Any) -> subprocess.Popen[Any]:
    """Start `argv` (never through a shell) as the leader of a new process group; with
    `die_with_parent`, it gets `sig` when this process dies. `popen` is passed to Popen
    (stdout, stderr, stdin, text, pass_fds, ...)."""
    _check_runnable(argv, env, cwd)
    command = lifeline(argv, sig) if die_with_parent else list(argv)
    return subprocess.Popen(command, env=env, cwd=cwd, process_group=0, **popen)


def run(argv: Sequence[str], *, timeout: float | None = None, input: Any = None,
        capture_output: bool = False, check: bool = False, die_with_parent: bool = True,
        sig: int = signal.SIGTERM, **popen: Any) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run` on `spawn`: a timeout or an exception (Ctrl-C) kills the whole tree,
    not just its leader."""
    if capture_output:
        popen["stdout"] = popen["stderr"] = subprocess.PIPE
    if input is not None:
        popen["stdin"] = subprocess.PIPE
    with spawn(argv, die_with_parent=die_with_parent, sig=sig, **popen) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:
            kill_tree(proc.pid)
            proc.communicate()
            raise
    result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result


# --- stopping -----------------------------------------------------------------------------


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads (gone or not ours: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def signal_tree(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads, then every process of its tree one by one (a
    descendant that called setsid has left the group)."""
    pids = tree_pids(pid)  # before the signal: a killed parent's children are reparented
    signal_group(pid, sig)
    for each in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(each, sig)


def kill_tree(pid: int) -> None:
    """SIGKILL the tree; continue it too, so a stopped (frozen) member is not left stopped."""
    signal_tree(pid, signal.SIGKILL)
    signal_tree(pid, signal.SIGCONT)


def terminate(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> int:
    """SIGTERM the tree, give it `grace_s` to exit, then SIGKILL what is left; the exit code."""
    signal_tree(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        return proc.wait()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- sampling ---------------------------------------------------------------------------------

MiB = 1024**2


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    name: str
    rss: int
    state: str
    ppid: int = 0
    cpu_s: float = 0.0  # this process's own user+system time
    major_faults: int = 0
    # Time it was runnable but waited for a CPU (/proc/<pid>/schedstat): with cpu_s, what the
    # process asked of the CPUs, however busy the machine was (scheduler.cpu_share).
    runq_s: float = 0.0


@dataclass(frozen=True)
class TreeSample:
    t: float
    rss: int  # sum over the tree
    cpu_s: float  # user+system of live processes + their reaped children
    io_bytes: int  # read + written chars of the tree
    major_faults: int
    procs: tuple[ProcInfo, ...] = field(default_factory=tuple)
    # User time alone (live + reaped): page faults and reclaim burn *system* time, so a paging
    # tree can show 30% CPU while doing almost no useful work.
    user_s: float | None = None

    @property
    def heaviest(self) -> ProcInfo | None:
        return max(self.procs, key=lambda p: p.rss, default=None)


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# /proc/<pid>/stat state letters, named as psutil names them (evidence text and tests use them).
_STATES = {
    "R": "running", "S": "sleeping", "D": "disk-sleep", "T": "stopped", "t": "tracing-stop",
    "Z": "zombie", "X": "dead", "x": "dead", "K": "wake-kill", "W": "waking", "P": "parked",
    "I": "idle",
}  # fmt: skip


def read_wchan(pid: int) -> str:
    """The kernel function a sleeping process waits in (e.g. `pipe_read`); '' if unknown."""
    try:
        with open(f"/proc/{pid}/wchan") as handle:
            text = handle.read().strip()
    except OSError:
        return ""
    return "" if text == "0" else text


@dataclass(frozen=True)
class _Stat:
    info: ProcInfo
    cpu_s: float  # own + reaped children, user + system
    user_s: float  # own + reaped children, user only


def _read_stat(pid: int) -> _Stat | None:
    """One process from /proc/<pid>/stat and statm (+ cmdline when the name is truncated);
    None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    close = data.rfind(b")")
    name = data[data.find(b"(") + 1 : close].decode(errors="replace")
    fields = data[close + 2 :].split()
    try:
        # Field n of proc(5) is fields[n - 3]: state 3, ppid 4, majflt 12, cmajflt 13,
        # utime 14, stime 15, cutime 16, cstime 17.
        state = fields[0].decode()
        ppid = int(fields[1])
        faults = int(fields[9]) + int(fields[10])
        utime, stime, cutime, cstime = (int(x) / _CLK_TCK for x in fields[11:15])
    except (IndexError, ValueError):
        return None
    # RSS from statm, as psutil and /proc/<pid>/status give it: stat's rss field is the
    # kernel's approximate per-CPU counter read and runs a few hundred KiB low.
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            rss = int(handle.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None
    if len(name) >= 15:  # the kernel truncates comm to 15 characters: take argv[0] instead
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv0 = handle.read().split(b"\0", 1)[0].decode(errors="replace")
            base = os.path.basename(argv0)
            if base.startswith(name):
                name = base
        except OSError:
            pass
    info = ProcInfo(
        pid, name, rss, _STATES.get(state, state), ppid, utime + stime, faults, _runq_s(pid)
    )
    return _Stat(info, utime + stime + cutime + cstime, utime + cutime)


def _runq_s(pid: int) -> float:
    """Seconds the process spent runnable but waiting for a CPU (0.0 where the kernel does not
    keep schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _io_chars(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io", "rb") as handle:
            data = handle.read()
    except OSError:
        return 0
    total = 0
    for line in data.splitlines():
        if line.startswith((b"rchar:", b"wchar:")):
            total += int(line.split()[1])
    return total


_HAS_CHILDREN_FILES: bool | None = None


def _children_files() -> bool:
    """Whether the kernel has /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN)."""
    global _HAS_CHILDREN_FILES
    if _HAS_CHILDREN_FILES is None:
        pid = os.getpid()
        _HAS_CHILDREN_FILES = os.path.exists(f"/proc/{pid}/task/{pid}/children")
    return _HAS_CHILDREN_FILES


def tree_pids(root_pid: int) -> list[int]:
    """The root and its descendants, parents first; [] if the root is gone.

    Walks /proc/<pid>/task/<tid>/children from the root (a few reads per job) instead of
    scanning every process on the host for its parent, as psutil's children() does.
    """
    if not _children_files():
        try:
            root = psutil.Process(root_pid)
            return [root_pid, *(p.pid for p in root.children(recursive=True))]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return []
    if not os.path.exists(f"/proc/{root_pid}"):
        return []
    pids = [root_pid]
    seen = {root_pid}
    index = 0
    while index < len(pids):
        pid = pids[index]
        index += 1
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                    children = handle.read().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in seen:
                    seen.add(child)
                    pids.append(child)
    return pids


def sample_tree(root_pid: int, t: float) -> TreeSample | None:
    """Sum RSS/CPU/IO over the process tree rooted at `root_pid`; None if it is gone.

    Reads /proc directly (stat, io, and the children lists): this runs for every running job
    several times a second, and psutil's per-process objects cost several times more.
    """
    rss = 0
    cpu = 0.0
    user = 0.0
    io_bytes = 0
    faults = 0
    infos: list[ProcInfo] = []
    for pid in tree_pids(root_pid):
        stat = _read_stat(pid)
        if stat is None:
            continue
        rss += stat.info.rss
        cpu += stat.cpu_s
        user += stat.user_s
        faults += stat.info.major_faults
        io_bytes += _io_chars(pid)
        infos.append(stat.info)
    if not infos:
        return None
    return TreeSample(t, rss, cpu, io_bytes, faults, tuple(infos), user)
