"""buildctl.process on real processes: children die with a SIGKILLed parent (setpriv and the
Python shim, spawned from a multi-threaded parent), kill_tree reaches a grandchild that left
the group with setsid, a timeout in run() kills the whole tree, and sample_tree sums a tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from buildctl import process
from buildctl.process import kill_tree, sample_tree, spawn, tree_pids

MiB = 1024**2


def gone(pid: int) -> bool:
    """Dead or a zombie nobody reaped yet (a container's init may never reap)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(check, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def read_pids(proc: subprocess.Popen[str], count: int) -> list[int]:
    assert proc.stdout is not None
    pids = []
    for _ in range(count):
        line = proc.stdout.readline()
        assert line, "the helper died before printing its pids"
        pids.append(int(line))
    return pids


PARENT = """
import sys, threading
from buildctl import process
if sys.argv[1] == "shim":
    process.setpriv = lambda: None  # force the Python shim
stop = threading.Event()
def churn():  # other threads allocating while we fork: the child must still reach exec
    while not stop.is_set():
        [bytearray(4096) for _ in range(100)]
threads = [threading.Thread(target=churn, daemon=True) for _ in range(4)]
for t in threads:
    t.start()
children = [process.spawn(["sleep", "600"]) for _ in range(5)]
for child in children:
    print(child.pid, flush=True)
stop.set()
threading.Event().wait()
"""


@pytest.mark.parametrize("shim", ["setpriv", "shim"])
def test_children_die_with_a_killed_parent(shim: str) -> None:
    if shim == "setpriv" and process.setpriv() is None:
        pytest.skip("no setpriv with --pdeathsig on this host")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, shim], stdout=subprocess.PIPE,
                              text=True)
    try:
        children = read_pids(parent, 5)
        # the shim execs in place: the pid we hold becomes the command's
        assert wait_until(lambda: all(psutil.Process(p).name() == "sleep" for p in children))
        parent.kill()
        parent.wait()
        assert wait_until(lambda: all(gone(pid) for pid in children)), children
    finally:
        parent.kill()
        parent.wait()


SETSID_TREE = """
import subprocess, sys, time
grandchild = subprocess.Popen(["sleep", "600"], start_new_session=True)
print(grandchild.pid, flush=True)
time.sleep(600)
"""


def test_kill_tree_reaches_a_grandchild_that_called_setsid() -> None:
    child = spawn([sys.executable, "-c", SETSID_TREE], stdout=subprocess.PIPE, text=True)
    try:
        (grandchild,) = read_pids(child, 1)
        assert os.getpgid(grandchild) != os.getpgid(child.pid)  # it left the group
        assert grandchild in tree_pids(child.pid)
        kill_tree(child.pid)
        child.wait(10)
        assert wait_until(lambda: gone(grandchild))
    finally:
        kill_tree(child.pid)
        child.wait()


def test_run_timeout_kills_the_whole_tree(tmp_path) -> None:
    pid_file = tmp_path / "grandchild"
    script = f"""
import subprocess, time
g = subprocess.Popen(["sleep", "600"], start_new_session=True)
open({str(pid_file)!r}, "w").write(str(g.pid))
time.sleep(600)
"""
    with pytest.raises(subprocess.TimeoutExpired):
        process.run([sys.executable, "-c", script], timeout=3)
    grandchild = int(pid_file.read_text())
    assert wait_until(lambda: gone(grandchild))


def test_spawn_of_a_missing_program_raises_like_exec(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        spawn(["buildctl-no-such-program"])
    with pytest.raises(FileNotFoundError):
        spawn([str(tmp_path / "nothing")])
    result = process.run(["sh", "-c", "exit 3"], capture_output=True)
    assert result.returncode == 3


ALLOCATING_TREE = """
import subprocess, sys, time
MiB = 1024 * 1024
if len(sys.argv) > 1:
    block = bytearray(int(sys.argv[1]) * MiB)
    for i in range(0, len(block), 4096):
        block[i] = 1
    print("ready", flush=True)
    time.sleep(600)
children = [subprocess.Popen([sys.executable, "-c", CODE, str(mb)],
            stdout=subprocess.PIPE, text=True) for mb in (60, 90)]
for child in children:
    child.stdout.readline()
print("ready", flush=True)
time.sleep(600)
"""


def test_sample_tree_sums_rss_over_the_tree() -> None:
    code = textwrap.dedent(ALLOCATING_TREE)
    program = f"CODE = {code!r}\n" + code
    root = spawn([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        assert root.stdout is not None and root.stdout.readline().strip() == "ready"
        sample = sample_tree(root.pid, 1.0)
        assert sample is not None and len(sample.procs) == 3
        assert sample.rss == sum(p.rss for p in sample.procs)
        assert sample.rss >= 150 * MiB  # 60 + 90 MiB touched in the children, plus 3 Pythons
        own = {p.pid: p.rss for p in sample.procs}
        for pid, rss in own.items():  # each as psutil sees it, within a few pages
            assert abs(psutil.Process(pid).memory_info().rss - rss) < 4 * MiB
        assert sample.heaviest is not None and sample.heaviest.rss >= 90 * MiB
    finally:
        kill_tree(root.pid)
        root.wait()
    assert sample_tree(root.pid, 2.0) is None


def test_terminate_gives_a_grace_period_then_kills() -> None:
    stubborn = spawn([sys.executable, "-c",
                      "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "print('ready', flush=True); time.sleep(600)"], stdout=subprocess.PIPE,
                     text=True)
    assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == "ready"
    started = time.monotonic()
    assert process.terminate(stubborn, grace_s=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("setpriv", ["setpriv", "shim"])
def test_the_launchers_compiler_dies_with_the_launcher(tmp_path, setpriv: str) -> None:
    """A governor stand-in admits one job; SIGKILL of its launcher takes the compiler along,
    through setpriv or (without it) the Python shim."""
    import json
    import socket

    if setpriv == "setpriv" and process.setpriv() is None:
        pytest.skip("no setpriv with --pdeathsig on this host")
    path = tmp_path / "gov.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    env = {k: v for k, v in os.environ.items() if k != process.SETPRIV_ENV}
    if setpriv == "setpriv":
        env[process.SETPRIV_ENV] = str(process.setpriv())
    launcher = subprocess.Popen(
        [sys.executable, "-I", "-S", str(process.SHIM.parent / "govern" / "launcher.py"),
         "--socket", str(path), "--", "sleep", "600"], env=env)
    try:
        conn, _ = server.accept()
        reader = conn.makefile("rb")
        assert json.loads(reader.readline())["op"] == "admit"
        conn.sendall(json.dumps({"op": "go"}).encode() + b"\n")
        started = json.loads(reader.readline())
        assert started["op"] == "started" and started["pid"] == started["pgid"] > 0
        compiler = started["pid"]
        assert wait_until(lambda: psutil.Process(compiler).name() == "sleep")
        launcher.kill()
        launcher.wait()
        assert wait_until(lambda: gone(compiler))
    finally:
        launcher.kill()
        launcher.wait()
        server.close()
