"""Garbage on the governor socket: every launcher line is validated (`parse_message`), and a
client that sends anything else is hung up on with one logged line, while the governor keeps
admitting real jobs. A real governor in this process, raw clients, and a real launcher."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from buildctl.govern.governor import Governor, GovernorOptions
from buildctl.govern.profiles import ProfileDB
from buildctl.govern.protocol import (
    MAX_LINE_BYTES,
    ProtocolError,
    bad_client_line,
    check_child_pid,
    parse_message,
)
from buildctl.govern.session import LAUNCHER

MiB = 1024**2
ADMIT = {"op": "admit", "output": "a.o", "kind": "compile", "argv": ["cc", "-c", "a.c"],
         "cwd": "/src", "pid": 4242, "env": {"PATH": "/usr/bin"}}
DONE = {"op": "done", "rc": 0, "signal": 0, "maxrss": 10 * MiB, "cpu_s": 0.5, "wall_s": 0.7,
        "stderr_tail": "", "interrupted": False}


def _line(msg: object) -> bytes:
    return json.dumps(msg).encode()


GOOD = [
    ADMIT,
    {"op": "admit", "argv": ["cc"]},  # everything but the command has a default
    {"op": "started", "pid": 77, "pgid": 77},
    {"op": "started", "pid": 0, "pgid": 0},  # the command could not be started
    {"op": "output", "tail": "warning: x\n"},
    DONE,
    {**DONE, "cpu_s": 1, "node": "10.0.0.2", "cache_log": "hit"},  # ints are numbers; extras ok
]


@pytest.mark.parametrize("msg", GOOD)
def test_launcher_messages_parse(msg: dict) -> None:
    assert parse_message(_line(msg)) == msg


BAD: list[tuple[bytes, str]] = [
    (b"", "empty line"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"op": "admit", "argv": ["cc"', "not JSON"),
    (b"[1, 2]", "a JSON list, not an object"),
    (b"null", "a JSON NoneType, not an object"),
    (b'"admit"', "a JSON str, not an object"),
    (b"{}", "unknown op None"),
    (b'{"op": 5}', "unknown op 5"),
    (b'{"op": "launch"}', "unknown op 'launch'"),
    (_line({"op": "admit"}), "admit: argv: Field required"),
    (_line({**ADMIT, "argv": "cc -c a.c"}), "admit: argv: Input should be a valid list"),
    (_line({**ADMIT, "argv": []}), "admit: argv: List should have at least 1 item"),
    (_line({**ADMIT, "argv": ["cc", 1]}), "admit: argv.1: Input should be a valid string"),
    (_line({**ADMIT, "pid": "4242"}), "admit: pid: Input should be a valid integer"),
    (_line({**ADMIT, "pid": True}), "admit: pid: Input should be a valid integer"),
    (_line({**ADMIT, "pid": -1}), "admit: pid: Input should be greater than or equal to 0"),
    (_line({**ADMIT, "kind": "bogus"}), "admit: kind: Input should be 'compile', 'link' or"),
    (_line({**ADMIT, "env": ["PATH=/bin"]}), "admit: env: Input should be a valid dictionary"),
    (_line({**ADMIT, "env": {"PATH": 1}}), "admit: env.PATH: Input should be a valid string"),
    (_line({**ADMIT, "output": 5}), "admit: output: Input should be a valid string"),
    (_line({**ADMIT, "argv": ["x"] * 300_000}), "admit: argv: List should have at most"),
    (_line({"op": "started", "pid": "x"}), "started: pid: Input should be a valid integer"),
    (_line({"op": "output"}), "output: tail: Field required"),
    (_line({**DONE, "rc": "0"}), "done: rc: Input should be a valid integer"),
    (_line({**DONE, "maxrss": -5}), "done: maxrss: Input should be greater than or equal to 0"),
    (b'{"op": "done", "rc": 0, "cpu_s": NaN}', "NaN is not a number a launcher sends"),
    (b'{"op": "done", "rc": 0, "wall_s": 1e400}', "done: wall_s: Input should be less than"),
    (b'{"op": "started", "pid": ' + b"9" * 5000 + b"}", "not JSON (Exceeds the limit"),
    (b"[" * 100_000, "JSON nested too deeply"),
    (b" " * (MAX_LINE_BYTES + 1), "line of 16777217 bytes (at most 16777216)"),
]


@pytest.mark.parametrize(("line", "reason"), BAD, ids=[r for _, r in BAD])
def test_anything_else_is_a_one_line_protocol_error(line: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_message(line)
    assert str(caught.value).startswith(reason)
    assert "\n" not in str(caught.value) and len(str(caught.value)) <= 240


def test_an_op_out_of_turn_is_an_error() -> None:
    with pytest.raises(ProtocolError, match=r"op 'done' out of turn \(expected admit\)"):
        parse_message(_line(DONE), expect=("admit",))
    assert parse_message(_line(ADMIT), expect=("admit",)) == ADMIT


# --- a real governor -----------------------------------------------------------------------------

BAD_CLIENT = bad_client_line("", None).split("(")[0].strip()  # the line's fixed start


@pytest.fixture
def governor(tmp_path: Path) -> Iterator[Governor]:
    db = ProfileDB(tmp_path / "profiles.sqlite")
    gov = Governor(
        GovernorOptions(socket_path=tmp_path / "gov.sock", build_dir=tmp_path,
                        budget_bytes=4096 * MiB, slots=4, sample_interval_s=0.1,
                        gather_quiet_s=0.05, gather_max_s=0.2),
        db,
    )
    gov.start()
    try:
        yield gov
    finally:
        gov.stop()
        db.close()


def _connect(gov: Governor) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(gov.opts.socket_path))
    sock.settimeout(30)
    return sock


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)  # may be hung up on already: what the test wants


def _read_line(sock: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, "the governor hung up on a valid client"
        data += chunk
    return json.loads(data)


def _hung_up(sock: socket.socket) -> bool:
    """Read until the governor closes the connection (a timeout fails the test)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(65536):
            pass
    sock.close()
    return True


def _raw(payload: bytes) -> Callable[[Governor], None]:
    def client(gov: Governor) -> None:
        sock = _connect(gov)
        _send(sock, payload)
        _hung_up(sock)

    return client


def _bad_after_go(bad: bytes, started: bool) -> Callable[[Governor], None]:
    """A client that is admitted properly, then sends garbage."""
    def client(gov: Governor) -> None:
        sock = _connect(gov)
        _send(sock, _line({**ADMIT, "output": f"bad-{len(bad)}.o", "argv": ["true"]}) + b"\n")
        assert _read_line(sock)["op"] == "go"
        if started:
            _send(sock, _line({"op": "started", "pid": 0, "pgid": 0}) + b"\n")
        _send(sock, bad)
        _hung_up(sock)

    return client


def _bad_clients() -> list[tuple[str, Callable[[Governor], None]]]:
    rng = random.Random(1414)
    clients: list[tuple[str, Callable[[Governor], None]]] = []
    for index in range(12):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2048)))
        clients.append((f"random-{index}", _raw(noise + b"\n")))
    clients += [
        ("random-no-newline", _raw(bytes(rng.randrange(256) for _ in range(300)))),
        ("truncated-json", _raw(b'{"op": "admit", "argv": ["cc", "-c"')),
        ("truncated-json-line", _raw(b'{"op": "admit", "argv": ["cc", "-c"\n')),
        ("list", _raw(b"[]\n")),
        ("string", _raw(b'"admit"\n')),
        ("no-op", _raw(b"{}\n")),
        ("op-number", _raw(b'{"op": 5}\n')),
        ("argv-string", _raw(_line({**ADMIT, "argv": "cc -c a.c"}) + b"\n")),
        ("argv-empty", _raw(_line({**ADMIT, "argv": []}) + b"\n")),
        ("argv-ints", _raw(_line({**ADMIT, "argv": [1, 2]}) + b"\n")),
        ("pid-string", _raw(_line({**ADMIT, "pid": "1"}) + b"\n")),
        ("env-list", _raw(_line({**ADMIT, "env": ["A=b"]}) + b"\n")),
        ("non-utf8-argv", _raw(b'{"op": "admit", "argv": ["\xff\xfe"]}\n')),
        ("deep-nesting", _raw(b"[" * 200_000 + b"\n")),
        ("done-first", _raw(_line(DONE) + b"\n")),
        ("huge-line", _raw(b"x" * (17 * MiB) + b"\n")),
        ("started-garbage", _bad_after_go(_line({"op": "started", "pid": "x"}) + b"\n", False)),
        ("done-garbage", _bad_after_go(_line({**DONE, "rc": "zero"}) + b"\n", True)),
        ("done-nan", _bad_after_go(b'{"op": "done", "rc": 0, "cpu_s": NaN}\n', True)),
    ]
    return clients


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _bad_client_lines(gov: Governor) -> list[str]:
    return [e.detail for e in gov.events if e.detail.startswith(BAD_CLIENT)]


def test_governor_survives_garbage_logs_one_line_per_bad_client_and_still_admits(
    governor: Governor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    clients = _bad_clients()
    for _name, client in clients:
        client(governor)
    # Clients that connect and leave without a word are not bad, just gone.
    for _ in range(3):
        _hung_up(_connect(governor))

    assert governor._thread is not None and governor._thread.is_alive()
    _wait_for(lambda: len(_bad_client_lines(governor)) >= len(clients), timeout=10)
    lines = _bad_client_lines(governor)
    assert len(lines) == len(clients), "\n".join(lines)
    assert all("\n" not in line for line in lines)
    unhandled = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert unhandled == []  # e.g. "Unhandled exception in client_connected_cb"

    # A real launcher's job is admitted, run and recorded as before.
    marker = tmp_path / "compiled"
    job = subprocess.run(
        [sys.executable, "-I", "-S", str(LAUNCHER), "--socket", str(governor.opts.socket_path),
         "--", "sh", "-c", f"touch {marker}"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert job.returncode == 0, job.stderr
    assert marker.exists()
    assert _wait_for(lambda: any(r.output == f"touch {marker}" and r.status == "ok"
                                 for r in governor.finished))
    # The jobs bad clients registered before misbehaving hold no slot or budget.
    assert all(j.state == "done" for j in governor.jobs.values() if j.output.startswith("bad-"))
    assert os.path.exists(governor.opts.socket_path)


def test_a_started_pid_must_be_the_launchers_child() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        check_child_pid(child.pid, os.getpid())  # ours: fine
        check_child_pid(0, os.getpid())  # the command could not start
        with pytest.raises(ProtocolError, match="not a child of the launcher"):
            check_child_pid(child.pid, os.getppid())
        with pytest.raises(ProtocolError, match="pid 1 is not a child"):
            check_child_pid(1, os.getpid())  # init: never ours to kill
    finally:
        child.kill()
        child.wait()
    check_child_pid(child.pid, 12345)  # gone (reaped): nothing left to signal


def test_stopping_with_launchers_still_connected_logs_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """ninja killed, or Ctrl-C: the governor stops while launchers still wait for `go`, run a
    job, or have not said a word. Their connections close without an asyncio traceback
    (Python 3.11 logs one per connection whose handler task ends cancelled)."""
    caplog.set_level(logging.DEBUG, logger="asyncio")
    db = ProfileDB(tmp_path / "profiles.sqlite")
    gov = Governor(
        GovernorOptions(socket_path=tmp_path / "gov.sock", build_dir=tmp_path,
                        budget_bytes=4096 * MiB, slots=1, sample_interval_s=0.1,
                        gather_quiet_s=0.0, gather_max_s=0.0),
        db,
    )
    gov.start()
    socks: list[socket.socket] = []
    try:
        running = _connect(gov)  # admitted, started, now sending output until done
        socks.append(running)
        running.sendall(_line({**ADMIT, "output": "running.o", "argv": ["true"]}) + b"\n")
        assert _read_line(running)["op"] == "go"
        running.sendall(_line({"op": "started", "pid": 0, "pgid": 0}) + b"\n")
        waiting = _connect(gov)  # the one slot is taken: waits for `go`
        socks.append(waiting)
        waiting.sendall(_line({**ADMIT, "output": "waiting.o", "argv": ["true"]}) + b"\n")
        socks.append(_connect(gov))  # connected, said nothing
        assert _wait_for(lambda: {j.output: j.state for j in gov.jobs.values()}
                         == {"running.o": "running", "waiting.o": "waiting"})
    finally:
        gov.stop()
        for sock in socks:
            sock.close()
        db.close()
    assert gov._thread is not None and not gov._thread.is_alive()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []  # e.g. "Exception in callback StreamReaderProtocol...callback"
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "CancelledError" not in out + err, err
    assert not [e.detail for e in gov.events if "CancelledError" in e.detail]
