"""The compiler launcher: ninja runs `python -I -S .../buildctl/govern/launcher.py --socket S --
cc ...` (`python -m buildctl.govern.launcher` works the same).

It asks the governor for admission, runs the real command as its child (argv, never a shell) in
a process group of its own, and reports wait4's rusage. With no governor listening it execs the
command directly, so a plain `ninja` in a governed build dir still works.

Imports are kept to the standard library's cheapest modules: this runs once per compile.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

TAIL_BYTES = 16 * 1024
TAIL_PUSH_S = 1.0
PR_SET_PDEATHSIG = 1
JOB_MARKER = "BUILDCTL_IN_JOB"  # set in every job's environment
SETPRIV_ENV = "BUILDCTL_SETPRIV"  # buildctl.process.SETPRIV_ENV


def job_output(argv: list[str]) -> str:
    """The file the command writes (`-o X` / `-oX`), else the last argument."""
    for index, arg in enumerate(argv):
        if arg == "-o" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("-o") and len(arg) > 2 and not arg.startswith("-op"):
            return arg[2:]
    return argv[-1] if argv else ""


def job_kind(argv: list[str]) -> str:
    if any(a in ("-c", "-S", "-E") for a in argv[1:]):
        return "compile"
    if "-o" in argv or any(a.startswith("-o") for a in argv[1:]):
        return "link"
    return "other"


def _prctl() -> Callable[..., int]:
    """libc's prctl, resolved in the parent: the forked compiler child must not dlopen."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to signal us when ninja dies, so a killed build leaves no launcher behind."""
    parent = os.getppid()
    try:
        _prctl()(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect: no signal will come
        os.kill(os.getpid(), sig)


def _with_lifeline(argv: list[str]) -> list[str]:
    """The compiler behind a single-threaded shim that makes it die with the launcher (SIGKILL
    of the launcher must not leave a compiler running with nobody to report to). Never Python in
    the forked child: this process has a socket-reader thread. The same shims as
    `buildctl.process.lifeline`, which this cannot import (it runs without the package on its
    path): the session names the setpriv that has --pdeathsig."""
    setpriv = os.environ.get(SETPRIV_ENV)
    if setpriv:
        return [setpriv, "--pdeathsig", "KILL", "--", *argv]
    shim = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "pdeathsig_exec.py")
    return [sys.executable, "-I", "-S", shim, str(os.getpid()), str(int(signal.SIGKILL)), "--",
            *argv]


def _check_runnable(program: str) -> None:
    """Raise what exec would for a missing command: behind the shim it would only be exit 127."""
    if "/" in program:
        found = os.access(program, os.X_OK)
    else:
        dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
        found = any(os.access(os.path.join(d or ".", program), os.X_OK) for d in dirs)
    if not found:
        raise FileNotFoundError(2, "No such file or directory", program)


class _Channel:
    """JSON-lines over the governor socket; a reader thread queues messages and notices EOF."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox: queue.Queue[dict | None] = queue.Queue()
        self.on_eof: list = []
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self.inbox.put(json.loads(line))
        except (OSError, ValueError):
            pass
        self.closed = True
        for callback in self.on_eof:
            callback()
        self.inbox.put(None)

    def send(self, **msg: object) -> bool:
        """False when the governor is gone (the caller decides what that means)."""
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError:
            return False
        return True

    def receive(self) -> dict | None:
        return self.inbox.get()


def _exec_direct(argv: list[str]) -> None:
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"buildctl launcher: cannot run {argv[0]!r}: {exc}\n")
        sys.exit(127)


def _connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def _untrusted_governor(sock: socket.socket, path: str) -> str:
    """Why the process listening on `path` must not be trusted ('' when it runs as us): another
    user who got their socket there first could answer every job "done" without running it."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)  # struct ucred
        uid: int | None = int.from_bytes(creds[4:8], sys.byteorder)
    except OSError:
        uid = None
    if uid == os.getuid():
        return ""
    who = f"uid {uid}" if uid is not None else "a process whose user cannot be checked"
    return (
        f"buildctl launcher: the governor socket {path} is served by {who}, not by you "
        f"(uid {os.getuid()}); refusing to run the job\n"
        f"  fix: remove {os.path.dirname(path)} unless you made it, then run the build again\n"
    )


def _is_ccache(program: str) -> bool:
    """`ccache` itself, or a masquerading link such as /usr/lib/ccache/g++."""
    if os.path.basename(program) == "ccache":
        return True
    return "/" in program and os.path.basename(os.path.realpath(program)) == "ccache"


def _job_env(argv: list[str]) -> tuple[dict[str, str], str]:
    """The job's environment and, for ccache, the per-job stats log it will write (ccache >= 4.4
    names hit or miss there, so a cache hit is never taken for the compile's peak)."""
    env = dict(os.environ)
    # A compiler wrapper that goes through the launcher again (CXX set by `buildctl run`) runs
    # its command directly inside a job: admitting it twice could wait for its own slot.
    env[JOB_MARKER] = "1"
    stats_log = ""
    if argv and _is_ccache(argv[0]):
        runtime = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
        stats_log = os.path.join(runtime, f"buildctl-ccache-{os.getpid()}-{time.time_ns()}.log")
        env["CCACHE_STATSLOG"] = stats_log
    return env, stats_log


def _read_and_remove(path: str) -> str:
    """The job's ccache stats log; appended to the user's own CCACHE_STATSLOG if they keep one."""
    try:
        with open(path, errors="replace") as handle:
            text = handle.read(65536)
        os.unlink(path)
    except OSError:
        return ""
    users = os.environ.get("CCACHE_STATSLOG")
    if users and text:
        with contextlib.suppress(OSError), open(users, "a") as handle:
            handle.write(text)
    return text


def _run_once(argv: list[str], chan: _Channel) -> tuple[int, dict]:
    """Run the command once; return (exit status for ninja, rusage facts for the governor)."""
    started = time.monotonic()
    env, stats_log = _job_env(argv)
    try:
        _check_runnable(argv[0])
        proc = subprocess.Popen(
            _with_lifeline(argv), stderr=subprocess.PIPE, process_group=0, env=env
        )
    except OSError as exc:
        # Like a shell: 127, and the governor hears a normal (failed) run rather than silence.
        sys.stderr.write(f"buildctl launcher: cannot run {argv[0]!r}: {exc.strerror}\n")
        chan.send(op="started", pid=0, pgid=0)
        return 127, {"rc": 127, "signal": 0, "maxrss": 0, "cpu_s": 0.0, "wall_s": 0.0,
                     "stderr_tail": f"cannot run {argv[0]}: {exc.strerror}"}

    def kill_group(sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    chan.on_eof[:] = [kill_group]  # governor gone: never leave the compiler running alone
    if not chan.send(op="started", pid=proc.pid, pgid=proc.pid) or chan.closed:
        kill_group()
    got_signal: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        got_signal.append(signum)
        kill_group(signal.SIGTERM)
        timer = threading.Timer(3.0, kill_group)
        timer.daemon = True  # must not keep the launcher alive after the child is gone
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    tail = b""
    dirty = False
    last_push = 0.0
    assert proc.stderr is not None
    err_fd = proc.stderr.fileno()
    while True:
        # Wake at least every second so the governor's copy of the output tail (for a stall
        # bundle) is never more than a second behind, without a message per chunk.
        try:
            ready, _, _ = select.select([err_fd], [], [], TAIL_PUSH_S)
        except InterruptedError:
            continue
        if ready:
            try:
                chunk = os.read(err_fd, 65536)
            except InterruptedError:
                continue
            if not chunk:
                break
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
            tail = (tail + chunk)[-TAIL_BYTES:]
            dirty = True
        now = time.monotonic()
        if dirty and now - last_push >= TAIL_PUSH_S:
            chan.send(op="output", tail=tail.decode(errors="replace"))
            dirty, last_push = False, now
    proc.stderr.close()
    while True:
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            break
        except InterruptedError:
            continue
    proc.returncode = os.waitstatus_to_exitcode(status)  # keeps Popen from waiting again
    code = proc.returncode
    sig = -code if code < 0 else 0
    rc = 128 + sig if sig else code  # what a shell (and ninja) would report
    facts = {
        "rc": rc,
        "signal": sig,
        "maxrss": usage.ru_maxrss * 1024,  # Linux reports KiB
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "wall_s": time.monotonic() - started,
        "stderr_tail": tail.decode(errors="replace"),
        "interrupted": bool(got_signal),
    }
    if stats_log:
        facts["cache_log"] = _read_and_remove(stats_log)
    if got_signal:
        sys.exit(128 + got_signal[0])
    return rc, facts


def main(args: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if args is None else args)
    socket_path = ""
    if args[:1] == ["--socket"] and len(args) >= 2:
        socket_path = args[1]
        args = args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.stderr.write("usage: python -m buildctl.govern.launcher --socket PATH -- CMD...\n")
        return 2
    inside_job = os.environ.get(JOB_MARKER) == "1"
    sock = _connect(socket_path) if socket_path and not inside_job else None
    if sock is None:
        _exec_direct(args)
        return 127  # not reached
    refusal = _untrusted_governor(sock, socket_path)
    if refusal:  # loudly: running the job ungoverned would hide that someone is in the way
        sock.close()
        sys.stderr.write(refusal)
        return 1
    _die_with_parent()
    chan = _Channel(sock)
    output = job_output(args)
    chan.send(
        op="admit",
        output=output,
        kind=job_kind(args),
        argv=args,
        cwd=os.getcwd(),
        pid=os.getpid(),
        env=dict(os.environ),  # the compiler's exact environment, for repros and stall bundles
    )
    rc = 1
    while True:
        msg = chan.receive()
        if msg is None:
            sys.stderr.write(f"buildctl launcher: governor went away before {output} ran\n")
            return 1
        if msg.get("op") == "fail":
            sys.stderr.write(f"buildctl: {msg.get('detail', 'job refused')}\n")
            return 1
        if msg.get("op") == "remote-done":
            # The job ran on another node (remote executor): replay its output here for ninja.
            sys.stdout.write(msg.get("stdout", ""))
            sys.stderr.write(msg.get("stderr", ""))
            return int(msg.get("rc", 1))
        if msg.get("op") != "go":
            continue
        rc, facts = _run_once(args, chan)
        if not chan.send(op="done", **facts):
            sys.stderr.write(f"buildctl launcher: governor went away while {output} ran\n")
            return rc or 1
        reply = chan.receive()
        if reply is not None and reply.get("detail"):
            sys.stderr.write(f"buildctl: {reply['detail']}\n")
        if reply is None or reply.get("op") != "retry":
            if reply is not None and reply.get("op") == "fail":
                return rc or 1
            return rc
        # Retried (the governor killed the tree, or the compiler crashed): wait for `go`.


if __name__ == "__main__":
    sys.exit(main())
