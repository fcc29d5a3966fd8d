"""Peak-RSS profiles: every finished job's measured peak and thinned RSS curve, keyed by project,
output, compiler identity and compile fingerprint.

SQLite in WAL mode so that concurrent builds (CI building several torch versions at once) and
crashes mid-write never corrupt it; each finished job is one short transaction. The DB is a help,
never a reason to stop a command: a corrupt file is moved aside and replaced, and a DB that cannot
be written (read-only, disk full) is read as far as it can be while nothing is recorded; both are
told once through `ProfileDB.warnings`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator

from buildctl.errors import BadInput, BuildctlError
from buildctl.govern.scheduler import cpu_share

PROFILES_SCHEMA = "buildctl.profiles/2"
ACCEPTED_SCHEMAS = ("buildctl.profiles/1", PROFILES_SCHEMA)
SCHEMA_VERSION = 2  # PRAGMA user_version of the DB layout below
MiB = 1024**2
PiB = 1024**5
# No build job runs for months; a larger time in an import is a broken file.
MAX_SECONDS = 1e7
CURVE_POINTS = 64
RECENT_RUNS = 3  # the max of the last three absorbs run-to-run noise without remembering forever

# Used only when nothing is known about a job or its neighbours. Conservative for g++ TUs
# (100-300 MB measured here) and honest for GPU-kernel TUs, which reach gigabytes.
DEFAULT_PRIORS = {"compile": 1024 * MiB, "link": 1536 * MiB, "other": 512 * MiB}


def default_db_path() -> Path:
    env = os.environ.get("BUILDCTL_PROFILE_DB")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "buildctl" / "profiles.sqlite"


# Compile flags that name files or dependency outputs: not what a compile's memory depends on,
# and they differ between build dirs.
_PATH_FLAGS_WITH_ARG = {"-o", "-MF", "-MT", "-MQ", "-isystem", "-iquote", "-idirafter", "-I"}
_IGNORED_FLAGS = {"-c", "-MD", "-MMD", "-M", "-MM", "-MP"}
SOURCE_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".c++", ".cu", ".sycl", ".S", ".s")


def _arguments(argv: Sequence[str]) -> Iterator[str]:
    """argv after the program, without the path-valued flags and their values."""
    tokens = iter(argv[1:])
    for token in tokens:
        if token in _PATH_FLAGS_WITH_ARG:
            next(tokens, None)
        else:
            yield token


def compile_fingerprint(argv: Sequence[str], source_digest: str) -> str:
    """What a compile's peak depends on besides the compiler: its flags (minus paths and
    dependency-file options) and the content of its source. Pure; 8 hex digits.

    Part of the exact profile key, so a profile recorded with other flags (say GCC GC sizing on,
    or -O0) or for another version of a generated source (another kernel preset at the same
    path) is not taken as exact; predict() falls back to the same output's other runs."""
    kept = [
        token
        for token in _arguments(argv)
        if token.startswith("-")
        and token not in _IGNORED_FLAGS
        and not token.startswith(("-I", "-MF", "-MT", "-MQ", "-o"))
    ]
    blob = "\0".join([*kept, source_digest])
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def compile_source(argv: Sequence[str]) -> str | None:
    """The source file a compile command reads (its first argument with a source suffix)."""
    for token in _arguments(argv):
        if not token.startswith("-") and token.endswith(SOURCE_SUFFIXES):
            return token
    return None


def target_of(output: str) -> str:
    """CMake object paths look like `CMakeFiles/<target>.dir/...`; that names the target."""
    parts = Path(output).parts
    for index, part in enumerate(parts):
        if part.endswith(".dir") and index > 0 and parts[index - 1] == "CMakeFiles":
            return part[: -len(".dir")]
    return Path(output).name if not output.endswith(".o") else ""


def family_of(output: str) -> str:
    """The source family: `foo.cpp.o` -> `.cpp`, `lib.so` -> `.so`."""
    name = Path(output).name
    stem = name[: -len(".o")] if name.endswith(".o") else name
    suffix = Path(stem).suffix
    return suffix or name


# Before schema 2 a compile's fingerprint was glued onto its compiler identity: "g++ 12 #1a2b3c4d".
_GLUED_FINGERPRINT = re.compile(r"^(.*) #([0-9a-f]{1,64})$", re.DOTALL)


def split_compiler(compiler: str) -> tuple[str, str]:
    """("g++: g++ 12", "1a2b3c4d") from a schema-1 compiler string "g++: g++ 12 #1a2b3c4d";
    (compiler, "") when nothing is glued on (pure)."""
    match = _GLUED_FINGERPRINT.match(compiler)
    return (match.group(1), match.group(2)) if match else (compiler, "")


def thin_curve(
    samples: Sequence[tuple[float, int]], max_points: int = CURVE_POINTS
) -> list[tuple[float, int]]:
    """At most `max_points` samples of an RSS curve (time since job start, tree RSS), pure.

    Keeps the first and last sample and, from each of `max_points - 2` equal slices of time in
    between, its highest sample: an upper envelope, so the peak is always kept and a thinned
    curve never shows a job lighter than it was at any time."""
    if max_points < 3:
        raise ValueError("a thinned curve keeps at least its first, peak and last samples")
    points = sorted((float(t), int(rss)) for t, rss in samples)
    if len(points) <= max_points:
        return points
    first, last, inner = points[0], points[-1], points[1:-1]
    slices = max_points - 2
    span = last[0] - first[0]
    best: dict[int, tuple[float, int]] = {}
    for position, point in enumerate(inner):
        if span > 0:
            index = min(slices - 1, int((point[0] - first[0]) / span * slices))
        else:  # every sample at one instant: slice by position instead
            index = position * slices // len(inner)
        if index not in best or point[1] > best[index][1]:
            best[index] = point
    return [first, *(best[i] for i in sorted(best)), last]


@dataclass(frozen=True)
class JobKey:
    """What a prediction is asked for."""

    output: str  # build-dir-relative output path
    kind: str  # compile | link | other
    compiler: str  # compiler identity ("g++: g++ (Debian 12.2.0-14) 12.2.0"), no fingerprint
    fingerprint: str = ""  # compile_fingerprint(argv, source digest); "" for link/other
    project: str = ""  # two projects never share an exact/output/target/family prediction


@dataclass(frozen=True)
class Prediction:
    bytes: int
    source: str  # exact | output | target | family | prior
    wall_s: float | None = None
    cpu_share: float = 1.0  # of a CPU slot (scheduler.cpu_share); 1.0 unless measured waiting
    # A run of this job was cut short (killed, frozen, interrupted) after its last complete
    # measurement and its bound raised `bytes`, or the job has only such runs (then `bytes` is
    # at least that bound and `source` tells where the rest of the estimate came from).
    censored: bool = False
    # The largest lower bound of this job's runs cut short since its last complete one (0: none):
    # what a prediction from elsewhere (in-build siblings) must not go below.
    bound: int = 0
    # The thinned RSS curve (t_s since job start, tree RSS) of the run `bytes` came from;
    # exact and output predictions only.
    curve: tuple[tuple[float, int], ...] = ()


class ProfileEntry(BaseModel):
    """One run of one job, as the governor records it. Lenient: whatever production measured is
    kept (an output outside the build dir stays absolute); imports go through CheckedEntry."""

    output: str
    kind: str
    compiler: str
    peak_rss_bytes: int
    wait4_maxrss_bytes: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    runq_wait_s: float = 0.0  # runnable but waiting for a CPU
    target: str = ""
    recorded_at: float = 0.0
    fingerprint: str = ""
    project: str = ""
    censored: bool = False  # peak_rss_bytes is only a lower bound (killed/frozen/interrupted run)
    curve: list[tuple[float, int]] = []  # thinned RSS curve (t_s since start, tree RSS)
    source_bytes: int = 0  # size of the compiled source (for scaling sibling predictions)
    cache_hit: bool = False  # a ccache/sccache hit: never used as a measurement of the compile


_Bytes = Annotated[int, Field(ge=0, le=PiB)]
_Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]


class CheckedEntry(ProfileEntry):
    """A profile entry from a file: impossible values are refused, not recorded."""

    output: str = Field(min_length=1, max_length=4096)
    kind: Literal["compile", "link", "other"]
    compiler: str = Field(max_length=4096)
    peak_rss_bytes: int = Field(gt=0, le=PiB)
    wait4_maxrss_bytes: _Bytes = 0
    wall_s: _Seconds = 0.0
    cpu_s: _Seconds = 0.0
    runq_wait_s: _Seconds = 0.0
    recorded_at: float = Field(0.0, ge=0, le=1e11, allow_inf_nan=False)
    fingerprint: str = Field("", pattern=r"^[0-9a-f]{0,64}$")
    project: str = Field("", max_length=200)
    curve: list[tuple[_Seconds, _Bytes]] = Field([], max_length=10_000)
    source_bytes: _Bytes = 0

    @field_validator("output")
    @classmethod
    def _relative_inside_build_dir(cls, output: str) -> str:
        if "\0" in output or output.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", output):
            raise ValueError("must be a path relative to the build directory")
        if ".." in re.split(r"[/\\]", output):
            raise ValueError("must not contain '..'")
        return output


class ProfileExport(BaseModel):
    """What `profile export` writes."""

    schema_: str = Field(PROFILES_SCHEMA, alias="schema")
    entries: list[ProfileEntry]
    model_config = {"populate_by_name": True}


class _CheckedExport(BaseModel):
    schema_: str = Field(alias="schema")
    entries: list[CheckedEntry]


_IMPORT_FIX = "pass a file written by `buildctl profile export`"


def read_export_text(path: Path) -> str:
    """The text of a profile export file; unreadable or non-UTF-8 files are bad input."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}", _IMPORT_FIX) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}), so not a profile export",
            _IMPORT_FIX,
        ) from None


def parse_export(text: str, source: str = "<json>") -> list[ProfileEntry]:
    """The entries of a profile export (schema 1 or 2), checked; BadInput otherwise (pure)."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep to read
        raise BadInput(f"{source} is not a buildctl profile export: {exc}", _IMPORT_FIX) from None
    schema = raw.get("schema") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or "entries" not in raw:
        raise BadInput(f"{source} is not a buildctl profile export (no entries)", _IMPORT_FIX)
    if schema not in ACCEPTED_SCHEMAS:
        raise BadInput(
            f"{source} has schema {schema!r}, expected one of {', '.join(ACCEPTED_SCHEMAS)}",
            "re-export it with this buildctl version",
        )
    try:
        checked = _CheckedExport.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BadInput(
            f"{source} is not a valid profile export: {where}: {first['msg']}"
            + (f" ({exc.error_count()} problems)" if exc.error_count() > 1 else ""),
            _IMPORT_FIX,
        ) from None
    return [ProfileEntry.model_validate(e.model_dump()) for e in checked.entries]


@dataclass(frozen=True)
class _Run:
    """One row of the runs table, as the prediction rules read it."""

    output: str
    compiler: str
    fingerprint: str
    peak: int
    wall_s: float
    cpu_s: float
    runq_s: float
    censored: bool
    curve: str


@dataclass(frozen=True)
class _Estimate:
    """A job's estimate from its own runs, newest first: the recent complete ones, and the
    lower bounds of the runs cut short since the newest complete one."""

    recent: tuple[_Run, ...]
    bound: int

    @property
    def measured(self) -> bool:
        return bool(self.recent)


def estimate_runs(runs_newest_first: Iterable[_Run], recent: int = RECENT_RUNS) -> _Estimate:
    """Pure: the last `recent` complete runs, and the largest censored bound newer than the
    newest complete run (older cut-short runs were superseded by a complete measurement)."""
    complete: list[_Run] = []
    bound = 0
    for run in runs_newest_first:
        if run.censored:
            if not complete:
                bound = max(bound, run.peak)
            continue
        complete.append(run)
        if len(complete) >= recent:
            break
    return _Estimate(tuple(complete), bound)


def current_value(runs_newest_first: Iterable[tuple[int, int]]) -> int | None:
    """Pure: one output's current value from its (peak, censored) runs, newest first: its newest
    complete peak, raised by the bounds of runs cut short after it (an output with only
    cut-short runs counts at its bound); None without runs."""
    bound: int | None = None
    for peak, censored in runs_newest_first:
        if not censored:
            return max(peak, bound or 0)
        bound = max(bound or 0, peak)
    return bound


def _parse_curve(text: str) -> tuple[tuple[float, int], ...]:
    try:
        return tuple((float(t), int(rss)) for t, rss in json.loads(text or "[]"))
    except (ValueError, TypeError):
        return ()


def _measured(estimate: _Estimate, source: str, bound: int, cut_short: bool) -> Prediction:
    """A prediction from a job's complete runs: the largest of each, so a job is never predicted
    lighter than any of them (its CPU share included), nor below a later cut-short run.
    `cut_short`: the exact key has only runs cut short (this estimate is another flags' one)."""
    heaviest = max(estimate.recent, key=lambda r: r.peak)
    bound = max(bound, estimate.bound)
    return Prediction(
        bytes=max(heaviest.peak, bound),
        source=source,
        wall_s=max(r.wall_s for r in estimate.recent),
        cpu_share=max(cpu_share(r.cpu_s, r.wall_s, r.runq_s) for r in estimate.recent),
        censored=cut_short or bound > heaviest.peak,
        bound=bound,
        curve=_parse_curve(heaviest.curve),
    )


_COLUMNS_V1 = ("output", "kind", "compiler", "target", "family", "peak_rss", "wait4_rss",
               "wall_s", "cpu_s", "recorded_at")
_COLUMNS_V2_ADDED = {
    "runq_s": "REAL NOT NULL DEFAULT 0",
    "fingerprint": "TEXT NOT NULL DEFAULT ''",
    "project": "TEXT NOT NULL DEFAULT ''",
    "censored": "INTEGER NOT NULL DEFAULT 0",
    "curve": "TEXT NOT NULL DEFAULT '[]'",
    "source_bytes": "INTEGER NOT NULL DEFAULT 0",
    "cache_hit": "INTEGER NOT NULL DEFAULT 0",
}
_CREATE_V2 = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    output TEXT NOT NULL,
    kind TEXT NOT NULL,
    compiler TEXT NOT NULL,
    target TEXT NOT NULL,
    family TEXT NOT NULL,
    peak_rss INTEGER NOT NULL,
    wait4_rss INTEGER NOT NULL,
    wall_s REAL NOT NULL,
    cpu_s REAL NOT NULL,
    recorded_at REAL NOT NULL,
    runq_s REAL NOT NULL DEFAULT 0,
    fingerprint TEXT NOT NULL DEFAULT '',
    project TEXT NOT NULL DEFAULT '',
    censored INTEGER NOT NULL DEFAULT 0,
    curve TEXT NOT NULL DEFAULT '[]',
    source_bytes INTEGER NOT NULL DEFAULT 0,
    cache_hit INTEGER NOT NULL DEFAULT 0
)
"""
# One row per project, output, compiler and kind: its current value (current_value), so the
# target and family fallbacks read one row per neighbour instead of every run ever recorded.
_CREATE_JOBS = """
CREATE TABLE IF NOT EXISTS jobs (
    project TEXT NOT NULL,
    output TEXT NOT NULL,
    compiler TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    family TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (project, output, compiler, kind)
) WITHOUT ROWID
"""
_INDEXES_V2 = (
    "CREATE INDEX IF NOT EXISTS jobs_by_target ON jobs(project, target, compiler, kind)",
    "CREATE INDEX IF NOT EXISTS jobs_by_family ON jobs(project, family, compiler, kind)",
    "CREATE INDEX IF NOT EXISTS runs_by_job ON runs(project, output, compiler, fingerprint)",
    "CREATE INDEX IF NOT EXISTS runs_by_target ON runs(project, target, compiler, kind)",
    "CREATE INDEX IF NOT EXISTS runs_by_family ON runs(project, family, compiler, kind)",
)
_RUN_COLUMNS = "output, compiler, fingerprint, peak_rss, wall_s, cpu_s, runq_s, censored, curve"

# sqlite primary result codes (the low byte of an extended code).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SQLITE_FULL = 13
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


class _Unusable(Exception):
    """The file is an sqlite DB but not a profile DB this version can use."""


class _NotOurs(_Unusable):
    """Corrupt as far as we are concerned: no usable runs table."""


class _Newer(_Unusable):
    """Written by a newer buildctl (higher user_version): read it, never write it."""


def _is_corrupt(exc: BaseException) -> bool:
    if isinstance(exc, _NotOurs):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == _SQLITE_FULL


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def migrate(conn: sqlite3.Connection, allow_newer: bool = False) -> None:
    """Bring a DB to schema 2, under the write lock so two builds opening an old DB at once
    do not both upgrade it. Schema 1 glued a compile's fingerprint onto its compiler identity;
    it moves to its own column, so the target and family fallbacks match compile jobs."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION and not allow_newer:
            raise _Newer(f"it has schema {version}, this buildctl knows {SCHEMA_VERSION}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "runs" not in tables:
            conn.execute(_CREATE_V2)
        else:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
            missing = [c for c in _COLUMNS_V1 if c not in columns]
            if missing:
                raise _NotOurs(f"its runs table has no {', '.join(missing)} column")
            for name, decl in _COLUMNS_V2_ADDED.items():
                if name not in columns:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
            if version < 2:
                glued = conn.execute(
                    "SELECT id, compiler FROM runs WHERE kind='compile' AND fingerprint=''"
                    " AND compiler LIKE '% #%'"
                ).fetchall()
                updates = [(*split_compiler(c), i) for i, c in glued if split_compiler(c)[1]]
                conn.executemany("UPDATE runs SET compiler=?, fingerprint=? WHERE id=?", updates)
                conn.execute("DROP INDEX IF EXISTS runs_output")
                conn.execute("DROP INDEX IF EXISTS runs_target")
        if "jobs" not in tables:
            conn.execute(_CREATE_JOBS)
            groups = conn.execute(
                "SELECT DISTINCT project, output, compiler, kind FROM runs WHERE cache_hit=0"
            ).fetchall()
            for group in groups:
                _update_job(conn, *group)
        for statement in _INDEXES_V2:
            conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _update_job(conn: sqlite3.Connection, project: str, output: str, compiler: str,
                kind: str) -> None:
    """Refresh one job's current value from its runs (inside the caller's transaction)."""
    cursor = conn.execute(
        "SELECT peak_rss, censored, target, family FROM runs WHERE project=? AND output=?"
        " AND compiler=? AND kind=? AND cache_hit=0 ORDER BY recorded_at DESC, id DESC",
        (project, output, compiler, kind),
    )
    first = cursor.fetchone()
    if first is None:
        return
    value = current_value(itertools.chain([first[:2]], ((p, c) for p, c, *_ in cursor)))
    conn.execute(
        "INSERT OR REPLACE INTO jobs (project, output, compiler, kind, target, family, value)"
        " VALUES (?,?,?,?,?,?,?)",
        (project, output, compiler, kind, first[2], first[3], value),
    )


def _check(conn: sqlite3.Connection) -> None:
    """Raise when the file is not a healthy sqlite DB (reads every page's structure) or not a
    profile DB this version may write; reads only, so a file found bad is left as it was."""
    result = conn.execute("PRAGMA quick_check").fetchone()
    if not result or result[0] != "ok":
        raise sqlite3.DatabaseError(f"database disk image is malformed ({result and result[0]})")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    missing = [c for c in _COLUMNS_V1 if c not in columns]
    if columns and missing:
        raise _NotOurs(f"its runs table has no {', '.join(missing)} column")


def _connect(target: str, uri: bool = False) -> sqlite3.Connection:
    return sqlite3.connect(
        target, timeout=30, check_same_thread=False, isolation_level=None, uri=uri
    )


T = TypeVar("T")


class ProfileDB:
    """History of measured jobs; predictions come from the most recent runs.

    Never raises for the state of the file: `warnings` collects one line per problem for the
    command to print, `record()` returns False when nothing could be written."""

    def __init__(self, path: Path | None = None, priors: dict[str, int] | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        if os.path.isdir(self.path):
            raise BadInput(
                f"the profile database {self.path} is a directory",
                f"pass a file path, e.g. --profiles {self.path / 'profiles.sqlite'}",
            )
        if os.path.exists(self.path) and not os.path.isfile(self.path):
            # A device or a pipe (/dev/null): never opened as a DB, never moved aside.
            raise BadInput(
                f"the profile database {self.path} is not a regular file",
                "pass a file path, e.g. --profiles ~/.cache/buildctl/profiles.sqlite",
            )
        self.priors = {**DEFAULT_PRIORS, **(priors or {})}
        self.warnings: list[str] = []
        self.writable = False
        self._write_problem = ("", "")  # (why, fix) of the last failed write
        self._inode: tuple[int, int] | None = None
        self._lock = threading.RLock()
        self._conn = self._open()

    # -- opening, with the checks and fallbacks ------------------------------------------------

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def _not_recording(self, why: str, full: bool = False) -> None:
        self.writable = False
        fix = (f"free space on the disk of {self.path}" if full
               else f"make {self.path} and its directory writable")
        fix += ", or pass --profiles FILE elsewhere"
        self._write_problem = (why, fix)
        self._warn(f"not recording profiles: {why}; fix: {fix}")

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._not_recording(f"cannot create {self.path.parent}: {_why(exc)}")
            return self._in_memory(None)
        try:
            return self._open_writable()
        except (sqlite3.Error, _Unusable, OSError) as exc:
            if not _is_corrupt(exc):
                if isinstance(exc, _Newer):
                    self._not_recording(f"{self.path} was written by a newer buildctl ({exc})")
                else:
                    self._not_recording(f"cannot write {self.path} ({_why(exc)})",
                                        full=_is_disk_full(exc))
                return self._in_memory(self.path)
            first = exc
        try:
            moved = self._move_aside_if_corrupt()
        except OSError as exc:
            self._not_recording(f"{self.path} is corrupt ({_why(first)}) and cannot be moved "
                                f"aside ({_why(exc)})")
            return self._in_memory(None)
        if moved:
            self._warn(f"profile DB {self.path} was corrupt ({_why(first)}); moved it aside to "
                       f"{moved.name} and started a fresh one")
        try:
            return self._open_writable()
        except (sqlite3.Error, _Unusable, OSError) as exc:
            self._not_recording(f"cannot start a fresh {self.path} ({_why(exc)})")
            return self._in_memory(None)

    def _open_writable(self) -> sqlite3.Connection:
        """Open, check and upgrade the file. Builds opening a new DB at once can meet a lock
        that sqlite reports at once instead of waiting for it (switching to WAL); try again."""
        for attempt in range(5):
            try:
                return self._open_writable_once()
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", None)
                if code is None or code & 0xFF not in (_SQLITE_BUSY, _SQLITE_LOCKED) \
                        or attempt == 4:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def _open_writable_once(self) -> sqlite3.Connection:
        conn = _connect(str(self.path))
        try:
            _check(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        self.writable = True
        self._inode = self._file_identity()
        return conn

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _in_memory(self, source: Path | None) -> sqlite3.Connection:
        """What can be read of `source`, copied into memory (where predictions and this build's
        own records live without touching the file); an empty DB when nothing can be read."""
        memory = _connect(":memory:")
        if source is not None and os.path.exists(source):
            for query in ("mode=ro", "immutable=1"):
                try:
                    src = _connect(f"{source.resolve().as_uri()}?{query}", uri=True)
                    try:
                        _check(src)
                        src.backup(memory)
                    finally:
                        src.close()
                    break
                except (sqlite3.Error, _Unusable):
                    memory.close()
                    memory = _connect(":memory:")
        try:
            migrate(memory, allow_newer=True)
        except (sqlite3.Error, _Unusable):
            memory.close()
            memory = _connect(":memory:")
            migrate(memory)
        return memory

    def _move_aside_if_corrupt(self) -> Path | None:
        """Rename the corrupt DB (and its WAL files) to `<name>.corrupt-<time>`, unless another
        process already replaced it: checked again under a lock, so two builds opening a corrupt
        DB at once move it aside once and both use the same fresh one."""
        # The directory is the lock (flock on its descriptor): no lock file is left behind.
        lock_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                probe = _connect(str(self.path))
                try:
                    _check(probe)
                    return None  # healthy now (another process repaired it)
                except (sqlite3.Error, _Unusable) as exc:
                    if not _is_corrupt(exc):
                        return None
                finally:
                    probe.close()
                stamp = time.strftime("%Y%m%d-%H%M%S")
                aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
                serial = 1
                while aside.exists():
                    serial += 1
                    aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{serial}")
                os.replace(self.path, aside)
                for suffix in ("-wal", "-shm", "-journal"):
                    side = self.path.with_name(self.path.name + suffix)
                    if side.exists():
                        os.replace(side, aside.with_name(aside.name + suffix))
                return aside
            finally:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(lock_fd)

    def _reopen(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._conn = self._open()

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def _read(self, query: Callable[[sqlite3.Connection], T], default: T) -> T:
        """Run a read; a DB corrupted or replaced under us is reopened (moved aside if need be)
        and the read tried once more; anything else gives `default` and a warning."""
        with self._lock:
            for attempt in range(2):
                try:
                    return query(self._conn)
                except sqlite3.Error as exc:
                    if attempt == 0 and _is_corrupt(exc):
                        self._reopen()
                        continue
                    self._warn(f"profile DB {self.path} could not be read ({_why(exc)}); "
                               "using priors")
                    return default
            return default

    # -- writing --------------------------------------------------------------------------------

    def record(self, entry: ProfileEntry) -> bool:
        """Store one run. False when it was not stored in the file (read-only, disk full, nothing
        measured); the first such problem is added to `warnings`. Never raises."""
        return self.record_many([entry]) == 1

    def record_many(self, entries: Sequence[ProfileEntry]) -> int:
        """Store runs in one transaction; how many reached the file (all or none)."""
        rows = [row for row in (self._row(e) for e in entries) if row is not None]
        if not rows:
            return 0
        with self._lock:
            if self.writable and self._file_identity() != self._inode:
                # The file was replaced or deleted under us: write to what is there now.
                self._reopen()
            for attempt in range(2):
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        self._conn.executemany(
                            "INSERT INTO runs (output, kind, compiler, fingerprint, project,"
                            " target, family, peak_rss, wait4_rss, wall_s, cpu_s, recorded_at,"
                            " runq_s, censored, curve, source_bytes, cache_hit)"
                            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            rows,
                        )
                        # (project, output, compiler, kind) of each row, once
                        for group in dict.fromkeys((r[4], r[0], r[2], r[1]) for r in rows):
                            _update_job(self._conn, *group)
                        self._conn.execute("COMMIT")
                    except BaseException:
                        with contextlib.suppress(sqlite3.Error):
                            self._conn.execute("ROLLBACK")
                        raise
                    return len(rows) if self.writable else 0
                except (sqlite3.Error, OverflowError) as exc:
                    if attempt == 0 and _is_corrupt(exc):
                        self._reopen()  # overwritten under us: moved aside, fresh DB
                        continue
                    self._not_recording(f"writing {self.path} failed ({_why(exc)})",
                                        full=_is_disk_full(exc))
                    if self._conn_is_file():
                        with contextlib.suppress(sqlite3.Error):
                            self._conn.close()
                        self._conn = self._in_memory(self.path)
                    return 0
            return 0

    def _conn_is_file(self) -> bool:
        with contextlib.suppress(sqlite3.Error):
            return any(row[2] for row in self._conn.execute("PRAGMA database_list"))
        return False

    @staticmethod
    def _row(entry: ProfileEntry) -> tuple[Any, ...] | None:
        peak = entry.peak_rss_bytes or entry.wait4_maxrss_bytes  # sampling missed a short job
        if peak <= 0:
            return None  # nothing was measured
        compiler, fingerprint = entry.compiler, entry.fingerprint
        if not fingerprint and entry.kind == "compile":
            compiler, fingerprint = split_compiler(compiler)
        return (
            entry.output,
            entry.kind,
            compiler,
            fingerprint,
            entry.project,
            entry.target or target_of(entry.output),
            family_of(entry.output),
            peak,
            entry.wait4_maxrss_bytes,
            entry.wall_s,
            entry.cpu_s,
            entry.recorded_at or time.time(),
            entry.runq_wait_s,
            int(entry.censored),
            json.dumps([[round(t, 3), rss] for t, rss in thin_curve(entry.curve)]),
            entry.source_bytes,
            int(entry.cache_hit),
        )

    # -- predicting -----------------------------------------------------------------------------

    def predict(self, key: JobKey) -> Prediction:
        """Same project + output + compiler + fingerprint first ("exact"), then the same output
        with other flags or another compiler ("output"), the same target, the same source family,
        and finally a conservative prior. Cache hits are never measurements; a run cut short
        only ever raises a prediction."""
        return self._read(lambda conn: self._predict(conn, key), self._prior(key, 0, False))

    def _prior(self, key: JobKey, bound: int, censored: bool) -> Prediction:
        prior = self.priors.get(key.kind, self.priors["other"])
        return Prediction(max(prior, bound), "prior", censored=censored, bound=bound)

    def _predict(self, conn: sqlite3.Connection, key: JobKey) -> Prediction:
        def runs(where: str, params: tuple[str, ...]) -> Iterator[_Run]:
            cursor = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE project=? AND cache_hit=0 AND {where}"
                " ORDER BY recorded_at DESC, id DESC",
                (key.project, *params),
            )
            return (_Run(*row) for row in cursor)

        bound = 0
        levels = (
            ("exact", "output=? AND compiler=? AND fingerprint=?",
             (key.output, key.compiler, key.fingerprint)),
            ("output", "output=?", (key.output,)),
        )
        for source, where, params in levels:
            estimate = estimate_runs(runs(where, params))
            if estimate.measured:
                return _measured(estimate, source, bound, cut_short=bound > 0)
            bound = max(bound, estimate.bound)
        censored = bound > 0
        target = target_of(key.output)
        if target:
            peaks = self._others(conn, key, "target=?", target)
            if peaks:
                return Prediction(max(max(peaks), bound), "target", censored=censored,
                                  bound=bound)
        peaks = self._others(conn, key, "family=?", family_of(key.output))
        if len(peaks) >= 3:
            # Unknown file of a known family: assume it is as heavy as the heavier quarter.
            family = int(statistics.quantiles(peaks, n=4)[-1])
            return Prediction(max(family, bound), "family", censored=censored, bound=bound)
        return self._prior(key, bound, censored)

    @staticmethod
    def _others(conn: sqlite3.Connection, key: JobKey, where: str, value: str) -> list[int]:
        """The current value of every other output of the project matching `where`."""
        return [row[0] for row in conn.execute(
            f"SELECT value FROM jobs WHERE project=? AND {where} AND compiler=? AND kind=?"
            " AND output<>?",
            (key.project, value, key.compiler, key.kind, key.output),
        )]

    # -- reading whole histories ----------------------------------------------------------------

    def latest(self, project: str | None = None) -> list[ProfileEntry]:
        """The most recent complete run of every output (whatever compiler or flags it ran
        with), one entry per project and output, as a plan needs. Its peak is raised by any run
        cut short since (then `censored` is set); cache hits are left out."""
        return self._read(lambda conn: self._latest(conn, project), [])

    def _latest(self, conn: sqlite3.Connection, project: str | None) -> list[ProfileEntry]:
        where, params = ("AND project=?", (project,)) if project is not None else ("", ())
        # First the few columns that choose each job's run, then only the chosen runs in full.
        newest: dict[tuple[str, str], tuple[int | None, int, int]] = {}  # (complete, last, bound)
        for run_id, proj, output, peak, censored in conn.execute(
            "SELECT id, project, output, peak_rss, censored FROM runs"
            f" WHERE cache_hit=0 {where} ORDER BY recorded_at ASC, id ASC",
            params,
        ):
            complete, _, bound = newest.get((proj, output), (None, run_id, 0))
            newest[proj, output] = (
                (complete, run_id, max(bound, peak)) if censored else (run_id, run_id, 0)
            )
        chosen = {complete or last: bound for complete, last, bound in newest.values()}
        complete_ids = {c for c, _, _ in newest.values() if c is not None}
        entries = []
        ids = list(chosen)
        for offset in range(0, len(ids), 500):
            batch = ids[offset:offset + 500]
            for (run_id, output, kind, compiler, fingerprint, proj, target, peak, wait4, wall,
                 cpu, at, runq, curve, source_bytes) in conn.execute(
                "SELECT id, output, kind, compiler, fingerprint, project, target, peak_rss,"
                " wait4_rss, wall_s, cpu_s, recorded_at, runq_s, curve, source_bytes FROM runs"
                f" WHERE id IN ({','.join('?' * len(batch))})",
                batch,
            ):
                bound = chosen[run_id]
                complete = run_id in complete_ids
                entries.append(ProfileEntry(
                    output=output, kind=kind, compiler=compiler, fingerprint=fingerprint,
                    project=proj, target=target,
                    peak_rss_bytes=max(peak if complete else 0, bound),
                    wait4_maxrss_bytes=wait4, wall_s=wall, cpu_s=cpu, recorded_at=at,
                    runq_wait_s=runq, censored=not complete or bound > peak,
                    curve=list(_parse_curve(curve)), source_bytes=source_bytes,
                ))
        return sorted(entries, key=lambda e: (e.project, e.target, e.output))

    def projects(self) -> list[str]:
        return self._read(
            lambda conn: [r[0] for r in conn.execute(
                "SELECT DISTINCT project FROM runs ORDER BY project")],
            [],
        )

    def export_json(self, project: str | None = None) -> str:
        return ProfileExport(entries=self.latest(project)).model_dump_json(by_alias=True, indent=1)

    def import_json(self, text: str, source: str = "<json>", project: str | None = None) -> int:
        """Merge an export (schema 1 or 2) into the DB; `project` names entries that carry none
        (schema-1 files). BadInput for impossible data; BuildctlError when the DB cannot take it."""
        entries = parse_export(text, source)
        if project is not None:
            entries = [e if e.project else e.model_copy(update={"project": project})
                       for e in entries]
        if not entries:
            return 0
        stored = self.record_many(entries)
        if stored != len(entries):
            why, fix = self._write_problem
            raise BuildctlError(
                f"could not store the profiles of {source} in {self.path}"
                + (f": {why}" if why else ""),
                fix or f"make {self.path} and its directory writable",
            )
        return stored


@dataclass(frozen=True)
class TargetSummary:
    target: str
    jobs: int
    max_peak_bytes: int
    heaviest_output: str
    total_cpu_s: float
    link_peak_bytes: int
    project: str = ""


def summarize_by_target(entries: Iterable[ProfileEntry]) -> list[TargetSummary]:
    """The table users ask for: expected peak memory per project and target (pure)."""
    groups: dict[tuple[str, str], list[ProfileEntry]] = {}
    for entry in entries:
        groups.setdefault((entry.project, entry.target or "(other)"), []).append(entry)
    summaries = []
    for (project, target), items in groups.items():
        heaviest = max(items, key=lambda e: e.peak_rss_bytes)
        links = [e.peak_rss_bytes for e in items if e.kind == "link"]
        summaries.append(
            TargetSummary(
                target=target,
                jobs=len(items),
                max_peak_bytes=heaviest.peak_rss_bytes,
                heaviest_output=heaviest.output,
                total_cpu_s=sum(e.cpu_s for e in items),
                link_peak_bytes=max(links, default=0),
                project=project,
            )
        )
    return sorted(summaries, key=lambda s: s.max_peak_bytes, reverse=True)
