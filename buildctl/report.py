"""The build report (DESIGN.md §4): a pydantic model written by `--report FILE`."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from buildctl.errors import BadInput, BuildctlError, BuildFailed

JobKind = Literal["compile", "link", "other"]
JobStatus = Literal["ok", "failed", "hung", "killed-retried", "crashed", "interrupted", "running"]
EventKind = Literal[
    "hang",
    "stall",
    "thrash",
    "throttle",
    "oom-guard-kill",
    "retry",
    "split",
    "exclusive",
    "crash",
    "spin",
    "interrupt",
    "info",
    "freeze",
    "thaw",
]


class JobRecord(BaseModel):
    output: str
    kind: JobKind
    target: str = ""
    predicted_rss_bytes: int
    prediction_source: str = "prior"
    peak_rss_bytes: int = 0
    wait4_maxrss_bytes: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    # Runnable but waiting for a CPU (sampled): cpu_s + this is what the job asked of the CPUs.
    runq_wait_s: float = 0.0
    # The fraction of a CPU slot it was admitted with (None: a report from before CPU shares).
    cpu_share: float | None = None
    queued_s: float = 0.0
    started_at_s: float = 0.0
    attempts: int = 1
    status: JobStatus = "running"
    exit_code: int | None = None
    exclusive: bool = False
    frozen_s: float = 0.0  # time the memory guard held it stopped (not in wall_s)
    memory_kills: int = 0  # times the memory guard killed it (at most once per build)
    node: str | None = None
    verdict: str = "healthy"
    # What the verdict rests on: CPU share, RSS and its trend, major faults/s, the process.
    verdict_evidence: str = ""
    # Crash repro or stall bundle of this job (kept even when a retry succeeded).
    repro_dir: str | None = None
    signal: int | None = None  # the signal the command died of, if any
    # Its RSS curve, (seconds since start, tree RSS) thinned to <= 64 points, and the curve it
    # was admitted on (a profile's, a sibling's; empty for a prior): the simulator replays
    # admission with them. Empty in reports from before curves.
    curve: list[tuple[float, int]] = Field(default_factory=list)
    predicted_curve: list[tuple[float, int]] = Field(default_factory=list)
    # A SYCL device link (govern.links), whatever it was predicted from: a link measured before
    # is predicted "exact", not "device-link". False in reports from before this field.
    device_link: bool = False


class Event(BaseModel):
    kind: EventKind
    t_s: float
    output: str | None = None
    detail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class BuildReport(BaseModel):
    schema_: Literal["buildctl.report/1"] = Field("buildctl.report/1", alias="schema")
    buildctl_version: str = ""
    command: list[str] = Field(default_factory=list)
    source_dir: str = ""
    build_dir: str = ""
    budget_bytes: int
    slots: int
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_total_rss_bytes: int = 0
    host_total_bytes: int = 0
    host_min_available_bytes: int = 0
    status: Literal["ok", "failed", "interrupted", "running"] = "running"
    exit_code: int | None = None
    jobs: list[JobRecord] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    samples: list[tuple[float, int, int]] = Field(
        default_factory=list, description="(t_s, total job RSS, host available) over time"
    )

    model_config = {"populate_by_name": True}

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write atomically so a crash never leaves half a report."""
        write_text_atomic(Path(path), self.to_json())

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> BuildReport:
        return cls.model_validate(json.loads(Path(path).read_text()))


def current_umask() -> int:
    """The process umask, read without changing it (other threads may be creating files)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: the only other way to read it is to set it
    os.umask(mask)
    return mask


def shared_file_mode(path: Path) -> int:
    """The mode a file the user shares (report, wheel, index page) gets: the mode it has now, or
    what a plain `open(path, "w")` would give a new file (0666 minus the umask). Temporary files
    are born 0600; the file that replaces the old one must not be."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def check_output_path(path: Path) -> None:
    """Refuse, before any work is done, a file argument that can never be written: a directory,
    or a path under something that is not a directory."""
    if path.is_dir():
        raise BadInput(f"{path} is a directory", "name a file, e.g. " + str(path / "report.json"))
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BadInput(f"cannot write {path}: {parent} is not a directory",
                               "name a file in a directory you can write to")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise BadInput(f"cannot write {path}: {parent} is not writable",
                               "name a file in a directory you can write to")
            return


def write_error(path: Path, exc: OSError) -> BuildctlError:
    """A failed write as the two lines a user can act on (never a traceback)."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG):
        return BuildFailed(
            f"cannot write {path}: {reason}", f"free some space on {path.parent} and run again"
        )
    return BadInput(
        f"cannot write {path}: {reason}", "name a file in a directory you can write to"
    )


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a crash or a full disk never leaves half a file (the old
    one stays). The new file gets the mode the old one had, or the umask's (it is shared).
    Failures are BuildctlErrors: a directory named as the file (bad input), a full disk."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    if path.is_dir():
        raise BadInput(f"{path} is a directory", "name a file, e.g. " + str(path / "report.json"))
    if path.exists() and not path.is_file():
        # A device or a pipe (/dev/stdout): write into it; renaming over it would replace it.
        try:
            with open(path, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            raise write_error(path, exc) from None
        return
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = shared_file_mode(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # ENOSPC shows up here, not after the rename
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
