"""Peak-RSS profiles: every finished job's measured peak and thinned RSS curve, keyed by project,
output, compiler identity and compile fingerprint.

What a profile means lives here: job keys and compile fingerprints, the checked export format,
and the prediction rules (pure functions over runs); the file itself, its schema, migration and
recovery, is profile_store's. The DB is a help, never a reason to stop a command.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from buildctl.errors import BadInput, BuildctlError
from buildctl.govern.profile_store import SCHEMA_VERSION as SCHEMA_VERSION
from buildctl.govern.profile_store import ProfileStore, split_compiler, update_job
from buildctl.govern.profile_store import current_value as current_value
from buildctl.govern.scheduler import cpu_share

PROFILES_SCHEMA = "buildctl.profiles/2"
ACCEPTED_SCHEMAS = ("buildctl.profiles/1", PROFILES_SCHEMA)
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
    # CPU seconds of that run (0: unknown): on a loaded machine a job's CPU progress along its
    # curve lags its wall clock, and admission places it by the lower of the two.
    cpu_s: float = 0.0

    @property
    def own_curve(self) -> bool:
        """The curve is this very job's own record (not a sibling's shape and timing)."""
        return bool(self.curve) and self.source in ("exact", "output")


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
    # A SYCL device link (govern.links.is_device_link: `-fsycl-max-parallel-link-jobs` on its
    # command line), so `buildctl plan --device-links K` caps it from profiles alone. False for
    # runs recorded before schema 3 and in exports that do not say.
    device_link: bool = False


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
        cpu_s=heaviest.cpu_s or 0.0,
    )


_RUN_COLUMNS = "output, compiler, fingerprint, peak_rss, wall_s, cpu_s, runq_s, censored, curve"

class ProfileDB:
    """History of measured jobs; predictions come from the most recent runs.

    Never raises for the state of the file (see profile_store): `warnings` collects one line per
    problem for the command to print, `record()` returns False when nothing reached the file."""

    def __init__(self, path: Path | None = None, priors: dict[str, int] | None = None) -> None:
        self._store = ProfileStore(Path(path) if path is not None else default_db_path())
        self.priors = {**DEFAULT_PRIORS, **(priors or {})}

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def warnings(self) -> list[str]:
        return self._store.warnings

    @property
    def writable(self) -> bool:
        return self._store.writable

    def close(self) -> None:
        self._store.close()

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

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO runs (output, kind, compiler, fingerprint, project, target, family,"
                " peak_rss, wait4_rss, wall_s, cpu_s, recorded_at, runq_s, censored, curve,"
                " source_bytes, cache_hit, device_link)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            # (project, output, compiler, kind) of each row, once
            for group in dict.fromkeys((r[4], r[0], r[2], r[1]) for r in rows):
                update_job(conn, *group)

        return len(rows) if self._store.write(insert) else 0

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
            int(entry.device_link and entry.kind == "link"),
        )

    # -- predicting -----------------------------------------------------------------------------

    def predict(self, key: JobKey) -> Prediction:
        """Same project + output + compiler + fingerprint first ("exact"), then the same output
        with other flags or another compiler ("output"), the same target, the same source family,
        and finally a conservative prior. Cache hits are never measurements; a run cut short
        only ever raises a prediction."""
        return self._store.read(lambda conn: self._predict(conn, key), self._prior(key, 0, False))

    def _prior(self, key: JobKey, bound: int, censored: bool) -> Prediction:
        prior = self.priors.get(key.kind, self.priors["other"])
        return Prediction(max(prior, bound), "prior", censored=censored, bound=bound)

    def _predict(self, conn: sqlite3.Connection, key: JobKey) -> Prediction:
        def runs(project: str, where: str, params: tuple[str, ...]) -> Iterator[_Run]:
            cursor = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE project=? AND cache_hit=0 AND {where}"
                " ORDER BY recorded_at DESC, id DESC",
                (project, *params),
            )
            return (_Run(*row) for row in cursor)

        bound = 0
        exact = ("output=? AND compiler=? AND fingerprint=?",
                 (key.output, key.compiler, key.fingerprint))
        levels = [("exact", key.project, *exact)]
        if key.project and key.fingerprint:
            # Runs recorded before jobs had a project (schema 1) name none. The same output
            # compiled with the same flags from the same source content (the fingerprint) is
            # the same compile, whatever project it was part of.
            levels.append(("exact", "", *exact))
        levels.append(("output", key.project, "output=?", (key.output,)))
        for source, project, where, params in levels:
            estimate = estimate_runs(runs(project, where, params))
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
        return self._store.read(lambda conn: self._latest(conn, project), [])

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
                 cpu, at, runq, curve, source_bytes, device_link) in conn.execute(
                "SELECT id, output, kind, compiler, fingerprint, project, target, peak_rss,"
                " wait4_rss, wall_s, cpu_s, recorded_at, runq_s, curve, source_bytes,"
                " device_link FROM runs"
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
                    device_link=bool(device_link),
                ))
        return sorted(entries, key=lambda e: (e.project, e.target, e.output))

    def projects(self) -> list[str]:
        return self._store.read(
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
            why, fix = self._store.write_problem
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
