"""Peak-RSS profiles: every finished job's measured peak, keyed by output + compiler identity.

SQLite in WAL mode so that concurrent builds (CI building several torch versions at once) and
crashes mid-write never corrupt it; each finished job is one short transaction.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from buildctl.errors import BadInput
from buildctl.govern.scheduler import cpu_share

PROFILES_SCHEMA = "buildctl.profiles/1"
MiB = 1024**2

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


@dataclass(frozen=True)
class Prediction:
    bytes: int
    source: str  # exact | output | target | family | prior
    wall_s: float | None = None
    cpu_share: float = 1.0  # of a CPU slot (scheduler.cpu_share); 1.0 unless measured waiting


class ProfileEntry(BaseModel):
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


class ProfileExport(BaseModel):
    schema_: str = Field(PROFILES_SCHEMA, alias="schema")
    entries: list[ProfileEntry]
    model_config = {"populate_by_name": True}


def _from_rows(rows: Sequence[tuple[int, float, float, float]], source: str) -> Prediction:
    """A prediction from recent runs (peak, wall, cpu, run-queue wait) of one job: the largest
    of each, so a job is never predicted lighter than any of them (its CPU share included)."""
    return Prediction(
        bytes=max(r[0] for r in rows),
        source=source,
        wall_s=max(r[1] for r in rows),
        cpu_share=max(cpu_share(r[2], r[1], r[3]) for r in rows),
    )


_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS runs (
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
    runq_s REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_output ON runs(output, compiler);
CREATE INDEX IF NOT EXISTS runs_target ON runs(target, compiler);
"""


class ProfileDB:
    """History of measured jobs; predictions come from the most recent runs."""

    def __init__(self, path: Path | None = None, priors: dict[str, int] | None = None) -> None:
        self.path = path or default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.priors = {**DEFAULT_PRIORS, **(priors or {})}
        self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA_SQL)
        self._upgrade()

    def _upgrade(self) -> None:
        """Add the run-queue column to a DB from before it existed. Under the write lock, so two
        builds opening the same old DB at once do not both try to add it."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(runs)")}
            if "runq_s" not in columns:
                self._conn.execute("ALTER TABLE runs ADD COLUMN runq_s REAL NOT NULL DEFAULT 0")
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._conn:
            yield self._conn

    def record(self, entry: ProfileEntry) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO runs (output, kind, compiler, target, family, peak_rss, wait4_rss,"
                " wall_s, cpu_s, recorded_at, runq_s) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    entry.output,
                    entry.kind,
                    entry.compiler,
                    entry.target or target_of(entry.output),
                    family_of(entry.output),
                    entry.peak_rss_bytes,
                    entry.wait4_maxrss_bytes,
                    entry.wall_s,
                    entry.cpu_s,
                    entry.recorded_at or time.time(),
                    entry.runq_wait_s,
                ),
            )

    def predict(self, output: str, kind: str, compiler: str) -> Prediction:
        """Exact match first, then the same output with another compiler, the same target,
        the same source family, and finally a conservative prior."""
        rows = self._conn.execute(
            "SELECT peak_rss, wall_s, cpu_s, runq_s FROM runs WHERE output=? AND compiler=?"
            " ORDER BY recorded_at DESC, id DESC LIMIT 3",
            (output, compiler),
        ).fetchall()
        if rows:
            # The max of the last three absorbs run-to-run noise without remembering forever.
            return _from_rows(rows, "exact")
        rows = self._conn.execute(
            "SELECT peak_rss, wall_s, cpu_s, runq_s FROM runs WHERE output=?"
            " ORDER BY recorded_at DESC LIMIT 3",
            (output,),
        ).fetchall()
        if rows:
            return _from_rows(rows, "output")
        target = target_of(output)
        if target:
            peaks = self._latest_peaks(
                "target=? AND compiler=? AND kind=?", (target, compiler, kind)
            )
            if peaks:
                return Prediction(max(peaks), "target")
        peaks = self._latest_peaks(
            "family=? AND compiler=? AND kind=?", (family_of(output), compiler, kind)
        )
        if len(peaks) >= 3:
            # Unknown file of a known family: assume it is as heavy as the heavier quarter.
            return Prediction(int(statistics.quantiles(peaks, n=4)[-1]), "family")
        return Prediction(self.priors.get(kind, self.priors["other"]), "prior")

    def _latest_peaks(self, where: str, params: tuple[str, ...]) -> list[int]:
        rows = self._conn.execute(
            f"SELECT output, peak_rss FROM runs WHERE {where} ORDER BY recorded_at ASC, id ASC",
            params,
        ).fetchall()
        latest: dict[str, int] = {}
        for output, peak in rows:
            latest[output] = peak
        return list(latest.values())

    def latest(self) -> list[ProfileEntry]:
        """The most recent run of every output (whatever compiler or flags it ran with): one
        entry per job of the build, as a plan needs."""
        rows = self._conn.execute(
            "SELECT output, kind, compiler, target, peak_rss, wait4_rss, wall_s, cpu_s,"
            " recorded_at, runq_s FROM runs r WHERE id = (SELECT MAX(id) FROM runs WHERE"
            " output=r.output) ORDER BY target, output"
        ).fetchall()
        return [
            ProfileEntry(
                output=o,
                kind=k,
                compiler=c,
                target=t,
                peak_rss_bytes=p,
                wait4_maxrss_bytes=w,
                wall_s=ws,
                cpu_s=cs,
                recorded_at=ra,
                runq_wait_s=rq,
            )
            for o, k, c, t, p, w, ws, cs, ra, rq in rows
        ]

    def export_json(self) -> str:
        return ProfileExport(entries=self.latest()).model_dump_json(by_alias=True, indent=1)

    def import_json(self, text: str, source: str = "<json>") -> int:
        try:
            data = ProfileExport.model_validate(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise BadInput(
                f"{source} is not a buildctl profile export: {str(exc).splitlines()[0]}",
                "pass a file written by `buildctl profile export`",
            ) from exc
        if data.schema_ != PROFILES_SCHEMA:
            raise BadInput(
                f"{source} has schema {data.schema_!r}, expected {PROFILES_SCHEMA!r}",
                "re-export it with this buildctl version",
            )
        for entry in data.entries:
            self.record(entry)
        return len(data.entries)


@dataclass(frozen=True)
class TargetSummary:
    target: str
    jobs: int
    max_peak_bytes: int
    heaviest_output: str
    total_cpu_s: float
    link_peak_bytes: int


def summarize_by_target(entries: Iterable[ProfileEntry]) -> list[TargetSummary]:
    """The table users ask for: expected peak memory per target (pure)."""
    groups: dict[str, list[ProfileEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.target or "(other)", []).append(entry)
    summaries = []
    for target, items in groups.items():
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
            )
        )
    return sorted(summaries, key=lambda s: s.max_peak_bytes, reverse=True)
