"""The profile DB file: schema 3 and its migrations from schemas 1 and 2, and a connection that
never stops a command.

SQLite in WAL mode so that concurrent builds (CI building several torch versions at once) and
crashes mid-write never corrupt it; every write is one short transaction. The file is checked when
opened (`PRAGMA quick_check` and the table's columns). A corrupt file is moved aside as
`<name>.corrupt-<YYYYmmdd-HHMMSS>` and replaced; a file that cannot be written (read-only, disk
full) is read into memory, where this build's records still help it, and nothing reaches the disk.
Each problem becomes one line in `ProfileStore.warnings`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from buildctl.errors import BadInput

# PRAGMA user_version of the layout below. 2: the compile fingerprint in its own column (schema 1
# glued it onto the compiler), projects, censored runs, curves. 3: `device_link`, a link run that
# was a SYCL device link (govern.links), so a plan from profiles alone can cap them.
SCHEMA_VERSION = 3

# Before schema 2 a compile's fingerprint was glued onto its compiler identity: "g++ 12 #1a2b3c4d".
_GLUED_FINGERPRINT = re.compile(r"^(.*) #([0-9a-f]{1,64})$", re.DOTALL)


def split_compiler(compiler: str) -> tuple[str, str]:
    """("g++: g++ 12", "1a2b3c4d") from a schema-1 compiler string "g++: g++ 12 #1a2b3c4d";
    (compiler, "") when nothing is glued on (pure)."""
    match = _GLUED_FINGERPRINT.match(compiler)
    return (match.group(1), match.group(2)) if match else (compiler, "")


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
# Runs of schema 2 and before cannot tell: they stay 0 (not known to be a device link) until the
# job runs again. The runs table keeps no command line to derive it from.
_COLUMNS_V3_ADDED = {
    "device_link": "INTEGER NOT NULL DEFAULT 0",
}
_CREATE_RUNS = """
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
    cache_hit INTEGER NOT NULL DEFAULT 0,
    device_link INTEGER NOT NULL DEFAULT 0
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
)

# sqlite primary result codes (the low byte of an extended code).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SQLITE_IOERR = 10
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


def _is_disk_full(exc: BaseException, directory: Path | None = None) -> bool:
    """ENOSPC, or sqlite's SQLITE_FULL; or an sqlite I/O error while `directory`'s disk has no
    space left: opening a DB on a full disk fails setting up its WAL index, which sqlite reports
    as "disk I/O error" (SQLITE_IOERR_SHMSIZE), not as a full disk."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return False
    if code & 0xFF == _SQLITE_FULL:
        return True
    return code & 0xFF == _SQLITE_IOERR and directory is not None and _no_space(directory)


def _no_space(directory: Path) -> bool:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return stats.f_bavail == 0


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def migrate(conn: sqlite3.Connection, allow_newer: bool = False) -> None:
    """Bring a DB to schema 3, under the write lock so two builds opening an old DB at once
    do not both upgrade it. Schema 1 glued a compile's fingerprint onto its compiler identity;
    it moves to its own column, so the target and family fallbacks match compile jobs. Schema 3
    adds the `device_link` flag (0 on older runs: unknown, the job's next run sets it)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION and not allow_newer:
            raise _Newer(f"it has schema {version}, this buildctl knows {SCHEMA_VERSION}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "runs" not in tables:
            conn.execute(_CREATE_RUNS)
        else:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
            missing = [c for c in _COLUMNS_V1 if c not in columns]
            if missing:
                raise _NotOurs(f"its runs table has no {', '.join(missing)} column")
            for name, decl in {**_COLUMNS_V2_ADDED, **_COLUMNS_V3_ADDED}.items():
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
            # The fallbacks read the jobs table; these indexes on every run are not needed.
            conn.execute("DROP INDEX IF EXISTS runs_by_target")
            conn.execute("DROP INDEX IF EXISTS runs_by_family")
        if "jobs" not in tables:
            conn.execute(_CREATE_JOBS)
            groups = conn.execute(
                "SELECT DISTINCT project, output, compiler, kind FROM runs WHERE cache_hit=0"
            ).fetchall()
            for group in groups:
                update_job(conn, *group)
        for statement in _INDEXES_V2:
            conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def update_job(conn: sqlite3.Connection, project: str, output: str, compiler: str,
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


class ProfileStore:
    """One profile DB file, or what could be read of it. Never raises for the state of the file:
    `warnings` collects one line per problem for the command to print; `write` says whether the
    file took the change."""

    def __init__(self, path: Path) -> None:
        self.path = path
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
        self.warnings: list[str] = []
        self.writable = False
        self.write_problem = ("", "")  # (why, fix) of the last failed write
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
        self.write_problem = (why, fix)
        self._warn(f"not recording profiles: {why}; fix: {fix}")

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._not_recording(f"cannot create {self.path.parent}: {_why(exc)}",
                                full=_is_disk_full(exc))
            return self._in_memory(None)
        try:
            return self._open_writable()
        except (sqlite3.Error, _Unusable, OSError) as exc:
            if not _is_corrupt(exc):
                if isinstance(exc, _Newer):
                    self._not_recording(f"{self.path} was written by a newer buildctl ({exc})")
                else:
                    full = _is_disk_full(exc, self.path.parent)
                    why = _why(exc)
                    if full and "I/O error" in why:
                        why += ": its disk is full"  # what sqlite's "disk I/O error" meant
                    self._not_recording(f"cannot write {self.path} ({why})", full=full)
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
            self._not_recording(f"cannot start a fresh {self.path} ({_why(exc)})",
                                full=_is_disk_full(exc, self.path.parent))
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

    def read(self, query: Callable[[sqlite3.Connection], T], default: T) -> T:
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
                               "using what is known without it")
                    return default
            return default

    def write(self, apply: Callable[[sqlite3.Connection], None]) -> bool:
        """Run `apply` in one write transaction. True when it reached the file; False when the
        file cannot take it (then it went to the in-memory copy, and a warning says why)."""
        with self._lock:
            if self.writable and self._file_identity() != self._inode:
                # The file was replaced or deleted under us: write to what is there now.
                self._reopen()
            for attempt in range(2):
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        apply(self._conn)
                        self._conn.execute("COMMIT")
                    except BaseException:
                        with contextlib.suppress(sqlite3.Error):
                            self._conn.execute("ROLLBACK")
                        raise
                    return self.writable
                except (sqlite3.Error, OverflowError) as exc:
                    if attempt == 0 and _is_corrupt(exc):
                        self._reopen()  # overwritten under us: moved aside, fresh DB
                        continue
                    self._not_recording(f"writing {self.path} failed ({_why(exc)})",
                                        full=_is_disk_full(exc, self.path.parent))
                    if self._conn_is_file():
                        with contextlib.suppress(sqlite3.Error):
                            self._conn.close()
                        self._conn = self._in_memory(self.path)
                    return False
            return False

    def _conn_is_file(self) -> bool:
        with contextlib.suppress(sqlite3.Error):
            return any(row[2] for row in self._conn.execute("PRAGMA database_list"))
        return False
