"""Another local user cannot stand in for the governor, nor talk to it.

A child process that drops to uid/gid 65534 plays the other user: (a) it makes the per-user
socket directory first and listens there, answering every job "done, rc 0" (buildctl must
refuse, and a launcher that reaches such a socket must not believe it); (b) it connects to a
real governor (which must hang up on it while a real job runs normally). Needs root to switch
users; waits are reads and polls, never sleeps.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.faults.kit import env_for, make_project

from buildctl.errors import BadInput
from buildctl.govern.governor import Governor, GovernorOptions
from buildctl.govern.profiles import ProfileDB
from buildctl.govern.protocol import prepare_socket_dir
from buildctl.govern.session import LAUNCHER, socket_path_for

OTHER = 65534  # nobody
MiB = 1024**2

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")

# The other user's fake governor: make the directory (if asked), listen, tell the test it is
# ready, then answer every admission as if the job had run and succeeded.
FAKE_GOVERNOR = r"""
import json, os, socket, sys
path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
os.chmod(os.path.dirname(path), 0o777)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
os.chmod(path, 0o777)
server.listen(16)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    print("connected", flush=True)
    conn.recv(1 << 20)
    reply = {"op": "remote-done", "rc": 0, "stdout": "", "stderr": ""}
    conn.sendall(json.dumps(reply).encode() + b"\n")
    conn.close()
"""

# The other user as a client: connect, ask for admission, report what came back.
INTRUDER = r"""
import json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
msg = {"op": "admit", "output": "intruder.o", "kind": "compile", "argv": ["true"],
       "cwd": "/", "pid": 1, "env": {}}
sock.settimeout(30)
try:
    sock.sendall(json.dumps(msg).encode() + b"\n")
    data = sock.recv(4096)
except (BrokenPipeError, ConnectionResetError):  # hung up before reading what we sent
    data = b""
print("reply:" + repr(data), flush=True)
"""


def _other_users_python() -> str:
    """A Python the other user may run (this venv's may sit under root's home)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        info = os.stat(candidate) if os.path.exists(candidate) else None
        if info is not None and info.st_mode & stat.S_IXOTH:
            return candidate
    pytest.skip("no Python that another user can run")


def _as_other_user(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [_other_users_python(), "-I", "-c", script, *args],
        user=OTHER, group=OTHER, extra_groups=[], cwd="/",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the child listens (or dies)
    assert line == "ready\n", proc.stderr.read() if proc.stderr else line


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.kill()
    out, _ = proc.communicate(timeout=30)
    return out


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory like /tmp (world-writable, sticky) that only this test uses."""
    path = Path(tempfile.mkdtemp(prefix="buildctl-hijack-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_socket_dir_is_created_private_whatever_the_umask(shared_tmp: Path) -> None:
    target = shared_tmp / "buildctl-0"
    old = os.umask(0)
    try:
        prepare_socket_dir(target)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    prepare_socket_dir(target)  # and accepted the next time


def test_socket_dir_of_another_user_a_symlink_or_a_file_is_refused(shared_tmp: Path) -> None:
    theirs = shared_tmp / "buildctl-0"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, OTHER, OTHER)
    link = shared_tmp / "link"
    private = shared_tmp / "private"
    private.mkdir(mode=0o700)
    link.symlink_to(private)
    file = shared_tmp / "file"
    file.write_text("")
    for path, why in ((theirs, f"is owned by uid {OTHER}"), (link, "is a symbolic link"),
                      (file, "is not a directory")):
        with pytest.raises(BadInput) as caught:
            prepare_socket_dir(path)
        assert why in caught.value.what and caught.value.fix
        assert caught.value.render().count("\n") == 1


def test_open_socket_dirs_are_closed_when_buildctls_and_refused_otherwise(shared_tmp: Path) -> None:
    state = shared_tmp / "build" / ".buildctl"  # an old build dir made under umask 002
    state.mkdir(parents=True)
    state.chmod(0o775)
    prepare_socket_dir(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    runtime = shared_tmp / "runtime"  # XDG_RUNTIME_DIR: the user's; never changed, only checked
    runtime.mkdir()
    runtime.chmod(0o777)
    with pytest.raises(BadInput, match="writable by other users"):
        prepare_socket_dir(runtime)
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o777
    runtime.chmod(0o755)  # others may look in: the socket itself is 0600
    prepare_socket_dir(runtime)


def test_build_refuses_a_socket_dir_another_user_made_and_listens_in(
    tmp_path: Path, shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_project(tmp_path / "src", {"a.cpp": "int a() { return 1; }\n"})
    build = tmp_path / ("long-" * 16) / "b"  # too long for a socket beside the build
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    sock_path = socket_path_for(build)
    assert sock_path.parent == shared_tmp / f"buildctl-{os.getuid()}"

    fake = _as_other_user(FAKE_GOVERNOR, str(sock_path))
    _ready(fake)
    env = {k: v for k, v in env_for(tmp_path).items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(shared_tmp)
    result = subprocess.run(
        [sys.executable, "-m", "buildctl.cli", "build", "--source", str(src), "--build-dir",
         str(build), "--plain"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    seen = _stop(fake)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"is owned by uid {OTHER}" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 6
    assert "connected" not in seen  # no launcher ever asked it anything
    assert not list(build.glob("**/*.o"))


def test_launcher_refuses_a_governor_of_another_user(tmp_path: Path, shared_tmp: Path) -> None:
    sock_path = shared_tmp / "theirs" / "gov.sock"
    fake = _as_other_user(FAKE_GOVERNOR, str(sock_path))
    _ready(fake)
    marker = tmp_path / "compiled"
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(LAUNCHER), "--socket", str(sock_path), "--",
         "sh", "-c", f"touch {marker}"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    seen = _stop(fake)
    # Believing the answer would make the build pass with nothing compiled.
    assert result.returncode == 1, result.stderr
    assert f"served by uid {OTHER}, not by you" in result.stderr
    assert "fix:" in result.stderr
    assert not marker.exists()
    assert "connected" in seen  # it did reach the impostor, and did not believe it


def _wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_governor_hangs_up_on_another_user_and_a_real_job_runs(
    tmp_path: Path, shared_tmp: Path
) -> None:
    db = ProfileDB(tmp_path / "profiles.sqlite")
    sock_path = shared_tmp / "gov" / "gov.sock"
    gov = Governor(
        GovernorOptions(socket_path=sock_path, build_dir=tmp_path, budget_bytes=1024 * MiB,
                        slots=2, sample_interval_s=0.1),
        db,
    )
    gov.start()
    try:
        # As if the filesystem let everyone in: the peer check is what is left.
        sock_path.parent.chmod(0o755)
        sock_path.chmod(0o666)
        intruder = _as_other_user(INTRUDER, str(sock_path))
        marker = tmp_path / "compiled"
        job = subprocess.run(
            [sys.executable, "-I", "-S", str(LAUNCHER), "--socket", str(sock_path), "--",
             "sh", "-c", f"touch {marker}"],
            capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        )
        out, err = intruder.communicate(timeout=60)
        assert intruder.returncode == 0, err
        assert out.strip() == "reply:b''"  # closed without a word
        assert job.returncode == 0, job.stderr
        assert marker.exists()
        assert _wait_for(lambda: len(gov.finished) == 1)
        # `sh -c "touch X"` names no -o: the launcher takes the last argument as the output.
        assert [j.output for j in gov.finished] == [f"touch {marker}"]
        assert all(j.output != "intruder.o" for j in gov.jobs.values())
    finally:
        gov.stop()
        db.close()

