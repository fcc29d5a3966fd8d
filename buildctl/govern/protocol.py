"""The governor socket's safety at the edges: who may own the directory the socket lives in, and
what a launcher's message must look like before the governor acts on it.

Anything may connect to a Unix socket it can reach, and anyone who can write the socket's
directory can put their own socket there first. So the directory must be ours and closed to
others, and every line read from a client is validated here: a garbled or hostile line is a
`ProtocolError` with a one-line reason, never an exception deep in the governor.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Literal

import psutil
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from buildctl.errors import BadInput

MiB = 1024**2
# A line carries a job's environment and output tail; far below this in practice.
MAX_LINE_BYTES = 16 * MiB
MAX_ARGS = 256 * 1024  # Linux caps a command line at ARG_MAX (2 MiB by default) anyway
MAX_ENV = 64 * 1024
MAX_PATH_CHARS = 64 * 1024
MAX_TAIL_CHARS = 1 * MiB  # launchers send 16 KiB; decoding with "replace" may grow it
MAX_PID = 2**22  # pid_max's ceiling on Linux
OPS = ("admit", "started", "output", "done")


class ProtocolError(ValueError):
    """A client sent something that is not a launcher message; `str()` is one line."""


# --- the socket's directory ---------------------------------------------------------------------


# Directories buildctl makes for the socket (the build's state dir, the short per-user fallback):
# buildctl may close them to others. Any other directory (XDG_RUNTIME_DIR) is only checked.
_OWN_DIR_NAME = re.compile(r"^(\.buildctl|buildctl-\d+)$")
_FIX = "set XDG_RUNTIME_DIR to a private directory of yours, or pass a shorter --build-dir"


def prepare_socket_dir(path: Path) -> None:
    """Create the directory the governor socket goes in (0700), or check the one that is there.

    Refuses (BadInput) a directory another user owns, a symlink, something that is not a
    directory, or one that others may write to: whoever can write there can put their own socket
    in our socket's place and answer our launchers. buildctl's own directories that others may
    read or write (an old build dir made under a loose umask) are closed to them (0700).
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        pass  # a non-directory in the way: the check below names it
    except OSError as exc:
        raise BadInput(f"cannot create the governor's socket directory {path}: {exc.strerror}",
                       _FIX) from None
    info = _lstat(path)
    problem = socket_dir_problem(info.st_mode, info.st_uid, os.getuid())
    if problem in ("open", "loose") and _OWN_DIR_NAME.match(path.name):
        try:
            os.chmod(path, 0o700, follow_symlinks=False)
        except OSError as exc:
            raise BadInput(f"cannot make the governor's socket directory {path} private: "
                           f"{exc.strerror}", f"run `chmod 700 {path}` and retry") from None
        info = _lstat(path)
        problem = socket_dir_problem(info.st_mode, info.st_uid, os.getuid())
    if problem == "loose":
        return  # others may look but not write: the socket itself is 0600
    if problem == "open":
        raise BadInput(
            f"the governor's socket directory {path} is writable by other users",
            f"run `chmod 700 {path}` (or set XDG_RUNTIME_DIR to a private directory) and retry",
        )
    if problem:
        raise BadInput(
            f"the governor's socket directory {path} {problem}: another user could answer "
            "for the governor",
            f"remove {path} (or set XDG_RUNTIME_DIR to a private directory of yours) and retry",
        )


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise BadInput(f"cannot check the governor's socket directory {path}: {exc.strerror}",
                       _FIX) from None


def socket_dir_problem(mode: int, owner: int, me: int) -> str:
    """What is wrong with a socket directory of this lstat mode and owner: '' when nothing,
    'open' when it is ours but others may write to it, 'loose' when others may only look in;
    otherwise why it must not be used."""
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(mode):
        return "is not a directory"
    if owner != me:
        return f"is owned by uid {owner}, not by you (uid {me})"
    if mode & 0o077:
        return "open" if mode & 0o022 else "loose"
    return ""


# --- launcher messages --------------------------------------------------------------------------

Pid = Annotated[StrictInt, Field(ge=0, le=MAX_PID)]
Seconds = Annotated[StrictFloat | StrictInt, Field(ge=0, le=1e9)]
Text = Annotated[StrictStr, Field(max_length=MAX_PATH_CHARS)]


class _Message(BaseModel):
    # Strict: a string is not a number and 1 is not True; extra fields are left for newer
    # launchers to add without breaking an older governor.
    model_config = ConfigDict(strict=True, extra="ignore")


class Admit(_Message):
    op: Literal["admit"]
    argv: Annotated[list[Annotated[StrictStr, Field(max_length=MAX_PATH_CHARS)]],
                    Field(min_length=1, max_length=MAX_ARGS)]
    output: Text = ""
    kind: Literal["compile", "link", "other"] = "other"
    cwd: Text = ""
    pid: Pid = 0
    env: Annotated[dict[StrictStr, StrictStr], Field(max_length=MAX_ENV)] | None = None


class Started(_Message):
    op: Literal["started"]
    pid: Pid
    pgid: Pid = 0


class Output(_Message):
    op: Literal["output"]
    tail: Annotated[StrictStr, Field(max_length=MAX_TAIL_CHARS)]


class Done(_Message):
    op: Literal["done"]
    rc: Annotated[StrictInt, Field(ge=-255, le=1024)]
    signal: Annotated[StrictInt, Field(ge=0, le=128)] = 0
    maxrss: Annotated[StrictInt, Field(ge=0, le=2**62)] = 0
    cpu_s: Seconds = 0.0
    wall_s: Seconds = 0.0
    stderr_tail: Annotated[StrictStr, Field(max_length=MAX_TAIL_CHARS)] = ""
    interrupted: StrictBool = False
    node: Text | None = None


_MODELS: dict[str, type[_Message]] = {
    "admit": Admit, "started": Started, "output": Output, "done": Done,
}


def _no_constant(name: str) -> float:
    raise ProtocolError(f"{name} is not a number a launcher sends")


def parse_message(line: bytes, expect: Collection[str] | None = None) -> dict:
    """One launcher line -> its message (the decoded dict, validated).

    Raises ProtocolError with a one-line reason for anything else: not UTF-8, not a JSON
    object, an op outside `expect` (default: any known op), a field of the wrong type, or
    sizes no launcher sends.
    """
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"line of {len(line)} bytes (at most {MAX_LINE_BYTES})")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("not UTF-8") from None
    if not text.strip():
        raise ProtocolError("empty line")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError("JSON nested too deeply") from None
    except ValueError as exc:
        raise ProtocolError(f"not JSON ({_one_line(str(exc))})") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"a JSON {type(data).__name__}, not an object")
    op = data.get("op")
    allowed = tuple(expect) if expect is not None else OPS
    if not isinstance(op, str) or op not in _MODELS:
        raise ProtocolError(f"unknown op {_short(op)}")
    if op not in allowed:
        raise ProtocolError(f"op {op!r} out of turn (expected {' or '.join(allowed)})")
    try:
        _MODELS[op].model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        raise ProtocolError(f"{op}: {where}: {_one_line(first['msg'])}") from None
    for key in ("cpu_s", "wall_s"):
        value = data.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError(f"{op}: {key}: not a finite number")
    return data


def check_child_pid(pid: int, launcher_pid: int) -> None:
    """A `started` pid must be the launcher's own child (0: the command could not start): the
    governor signals that process tree later, so a client must not name someone else's.
    `launcher_pid` is the peer's pid from SO_PEERCRED, not one the client wrote. A pid that is
    gone already (a quick command the launcher has reaped) is accepted: there is nothing to hit."""
    if pid == 0:
        return
    try:
        parent = psutil.Process(pid).ppid()
    except psutil.Error:
        return
    if parent != launcher_pid:
        raise ProtocolError(
            f"started: pid {pid} is not a child of the launcher (pid {launcher_pid})"
        )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def bad_client_line(reason: str, pid: int | None = None) -> str:
    """The one line the governor logs for a client it hung up on."""
    who = f"pid {pid}" if pid else "unknown pid"
    return f"closed a bad governor client ({who}): {_one_line(reason)}"
