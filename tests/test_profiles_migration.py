"""Schema 1 → 2: a DB written by the schema-1 code (its SQL verbatim, the compile fingerprint glued
onto the compiler identity) is upgraded once, under the write lock, and its compile jobs then
match the target and family fallbacks, which they never did before. Schema 2 → 3: the
`device_link` flag is added; a schema-2 run keeps its predictions and counts as not known to be a
device link until the job runs again."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from buildctl.govern.profiles import (
    SCHEMA_VERSION,
    JobKey,
    ProfileDB,
    ProfileEntry,
    split_compiler,
)

M = 1024**2
GXX = "g++: g++ (Debian 12.2.0-14) 12.2.0"
NVCC = "nvcc: nvcc: NVIDIA (R) Cuda compiler driver"

# The schema-1 code's DDL, as it shipped (runs_output/runs_target indexes, runq_s added later).
V1_SQL = """
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
V1_SQL_BEFORE_RUNQ = V1_SQL.replace(",\n    runq_s REAL NOT NULL DEFAULT 0", "")

# Rows as the schema-1 governor wrote them: (output, kind, compiler, target, family, MiB).
# Compile jobs carry "identity #fingerprint"; links and custom commands do not.
V1_ROWS = [
    ("CMakeFiles/ops.dir/gen/a.cpp.o", "compile", f"{GXX} #1a2b3c4d", "ops", ".cpp", 300),
    ("CMakeFiles/ops.dir/gen/b.cpp.o", "compile", f"{GXX} #5e6f7a8b", "ops", ".cpp", 500),
    ("CMakeFiles/ops.dir/gen/c.cpp.o", "compile", f"{GXX} #0c0c0c0c", "ops", ".cpp", 200),
    ("CMakeFiles/k.dir/k1.cu.o", "compile", f"{NVCC} #deadbeef", "k", ".cu", 2000),
    ("CMakeFiles/misc.dir/m.cpp.o", "compile", f"{GXX} #99999999", "misc", ".cpp", 100),
    ("libops.so", "link", GXX, "libops.so", ".so", 150),
    ("gen/a.cpp", "other", "python3: Python 3.11.2", "a.cpp", ".cpp", 40),
]


def write_v1_db(path: Path, sql: str = V1_SQL) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(sql)
    columns = "output, kind, compiler, target, family, peak_rss, wait4_rss, wall_s, cpu_s," \
        " recorded_at"
    for at, (output, kind, compiler, target, family, mb) in enumerate(V1_ROWS, start=1):
        conn.execute(
            f"INSERT INTO runs ({columns}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (output, kind, compiler, target, family, mb * M, mb * M // 2, 10.0, 9.0, float(at)),
        )
    conn.commit()
    conn.close()


def _columns(path: Path) -> dict[str, tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        rows = conn.execute("SELECT output, compiler, fingerprint FROM runs").fetchall()
    finally:
        conn.close()
    assert version == SCHEMA_VERSION
    return {output: (compiler, fingerprint) for output, compiler, fingerprint in rows}


@pytest.mark.parametrize("sql", [V1_SQL, V1_SQL_BEFORE_RUNQ], ids=["v1", "v1-before-runq"])
def test_v1_rows_get_their_fingerprint_column(tmp_path: Path, sql: str) -> None:
    path = tmp_path / "profiles.sqlite"
    write_v1_db(path, sql)
    ProfileDB(path).close()
    migrated = _columns(path)
    for output, kind, compiler, *_ in V1_ROWS:
        expected = split_compiler(compiler) if kind == "compile" else (compiler, "")
        assert migrated[output] == expected
    assert migrated["CMakeFiles/ops.dir/gen/a.cpp.o"] == (GXX, "1a2b3c4d")


# (key asked after the migration, source, MiB): the fallbacks that never matched a compile job
# under schema 1, whose compiler strings all differed by their glued fingerprint. The family
# value is the upper quartile of 100, 200, 300, 500 (statistics.quantiles: 300 + 0.75 x 200).
FALLBACKS = {
    "exact, its fingerprint now a column": (
        JobKey("CMakeFiles/ops.dir/gen/a.cpp.o", "compile", GXX, "1a2b3c4d"), "exact", 300),
    "output, other flags": (
        JobKey("CMakeFiles/ops.dir/gen/a.cpp.o", "compile", GXX, "ffffffff"), "output", 300),
    "a new file of a known target": (
        JobKey("CMakeFiles/ops.dir/gen/new.cpp.o", "compile", GXX, "12345678"), "target", 500),
    "a new file of a new target: its family": (
        JobKey("CMakeFiles/fresh.dir/x.cpp.o", "compile", GXX, "12345678"), "family", 450),
    "another compiler's target is not used": (
        JobKey("CMakeFiles/k.dir/k2.cu.o", "compile", GXX, "12345678"), "prior", 1024),
    "a new .cu file of the nvcc target": (
        JobKey("CMakeFiles/k.dir/k2.cu.o", "compile", NVCC, "12345678"), "target", 2000),
    "a link": (JobKey("libops.so", "link", GXX), "exact", 150),
}


@pytest.mark.parametrize("key,source,mb", FALLBACKS.values(), ids=FALLBACKS.keys())
def test_fallbacks_match_compile_jobs_after_the_migration(
    tmp_path: Path, key: JobKey, source: str, mb: int
) -> None:
    path = tmp_path / "profiles.sqlite"
    write_v1_db(path)
    db = ProfileDB(path)
    prediction = db.predict(key)
    assert (prediction.source, prediction.bytes) == (source, mb * M)
    assert not db.warnings


def test_schema_1_compiler_strings_never_matched_a_fallback(tmp_path: Path) -> None:
    """Why the migration matters: before it, no compile row has the plain identity that the
    target and family queries compare with; after it, every one does."""
    path = tmp_path / "profiles.sqlite"
    write_v1_db(path)
    count = "SELECT COUNT(*) FROM runs WHERE kind='compile' AND compiler=?"
    conn = sqlite3.connect(path)
    assert conn.execute(count, (GXX,)).fetchone()[0] == 0
    conn.close()
    ProfileDB(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute(count, (GXX,)).fetchone()[0] == 4
    conn.close()


def test_builds_opening_an_old_db_at_once_upgrade_it_once(tmp_path: Path) -> None:
    path = tmp_path / "profiles.sqlite"
    write_v1_db(path)
    with ThreadPoolExecutor(6) as pool:
        dbs = list(pool.map(lambda _: ProfileDB(path), range(6)))
    for db in dbs:
        assert not db.warnings and db.writable
        assert db.predict(JobKey("CMakeFiles/ops.dir/gen/n.cpp.o", "compile", GXX)).source \
            == "target"
        db.close()
    assert _columns(path)["CMakeFiles/k.dir/k1.cu.o"] == (NVCC, "deadbeef")
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == len(V1_ROWS)
    conn.close()


def test_an_upgraded_db_keeps_recording_and_reopens_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "profiles.sqlite"
    write_v1_db(path)
    db = ProfileDB(path)
    assert db.record(ProfileEntry(output="CMakeFiles/ops.dir/gen/a.cpp.o", kind="compile",
                                  compiler=GXX, fingerprint="1a2b3c4d", project="",
                                  peak_rss_bytes=350 * M, censored=True))
    db.close()
    again = ProfileDB(path)
    p = again.predict(JobKey("CMakeFiles/ops.dir/gen/a.cpp.o", "compile", GXX, "1a2b3c4d"))
    assert (p.source, p.bytes, p.censored) == ("exact", 350 * M, True)
    assert not again.warnings


def test_a_db_from_a_newer_buildctl_is_read_not_written(tmp_path: Path) -> None:
    path = tmp_path / "profiles.sqlite"
    db = ProfileDB(path)
    db.record(ProfileEntry(output="x.o", kind="compile", compiler="cc", peak_rss_bytes=5 * M))
    db.close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    newer = ProfileDB(path)
    assert newer.predict(JobKey("x.o", "compile", "cc")).bytes == 5 * M
    assert not newer.record(ProfileEntry(output="y.o", kind="compile", compiler="cc",
                                         peak_rss_bytes=M))
    assert len(newer.warnings) == 1 and "newer buildctl" in newer.warnings[0]
    newer.close()
    assert path.read_bytes() == before


def test_a_db_without_the_jobs_summary_gets_it_filled(tmp_path: Path) -> None:
    """The target/family fallbacks read one summary row per job; a DB whose summary is missing
    (dropped, or from before it existed) has it rebuilt from its runs when opened."""
    path = tmp_path / "profiles.sqlite"
    write_v1_db(path)
    ProfileDB(path).close()
    conn = sqlite3.connect(path)
    summary = sorted(conn.execute("SELECT output, value FROM jobs").fetchall())
    conn.execute("DROP TABLE jobs")
    conn.commit()
    conn.close()
    db = ProfileDB(path)
    key = JobKey("CMakeFiles/ops.dir/gen/new.cpp.o", "compile", GXX, "12345678")
    assert (db.predict(key).source, db.predict(key).bytes) == ("target", 500 * M)
    db.close()
    conn = sqlite3.connect(path)
    assert sorted(conn.execute("SELECT output, value FROM jobs").fetchall()) == summary
    assert len(summary) == len(V1_ROWS)
    conn.close()


# (key with a project, source, MiB): runs recorded before projects existed are used only where the
# fingerprint (flags and source content) says it is the same compile.
UNATTRIBUTED = {
    "the same compile, now in a project": (
        JobKey("CMakeFiles/ops.dir/gen/a.cpp.o", "compile", GXX, "1a2b3c4d", "ops"), "exact", 300),
    "other flags: not shared": (
        JobKey("CMakeFiles/ops.dir/gen/a.cpp.o", "compile", GXX, "ffffffff", "ops"), "prior",
        1024),
    "a new file of their target: not shared": (
        JobKey("CMakeFiles/ops.dir/gen/new.cpp.o", "compile", GXX, "12345678", "ops"), "prior",
        1024),
    "a link has no fingerprint: not shared": (JobKey("libops.so", "link", GXX, "", "ops"),
                                              "prior", 1536),
}


@pytest.mark.parametrize("key,source,mb", UNATTRIBUTED.values(), ids=UNATTRIBUTED.keys())
def test_runs_from_before_projects_serve_only_the_same_compile(
    tmp_path: Path, key: JobKey, source: str, mb: int
) -> None:
    path = tmp_path / "profiles.sqlite"
    write_v1_db(path)
    prediction = ProfileDB(path).predict(key)
    assert (prediction.source, prediction.bytes) == (source, mb * M)


def test_a_projects_own_runs_come_before_unattributed_ones(tmp_path: Path) -> None:
    path = tmp_path / "profiles.sqlite"
    write_v1_db(path)
    db = ProfileDB(path)
    key = JobKey("CMakeFiles/ops.dir/gen/a.cpp.o", "compile", GXX, "1a2b3c4d", "ops")
    db.record(ProfileEntry(output=key.output, kind="compile", compiler=GXX,
                           fingerprint=key.fingerprint, project="ops", peak_rss_bytes=280 * M))
    assert db.predict(key).bytes == 280 * M


# --- schema 2 -> 3 ------------------------------------------------------------------------------

# The schema-2 code's DDL, as it shipped (profile_store.py before `device_link`).
V2_SQL = """
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
);
CREATE TABLE IF NOT EXISTS jobs (
    project TEXT NOT NULL,
    output TEXT NOT NULL,
    compiler TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    family TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (project, output, compiler, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_by_target ON jobs(project, target, compiler, kind);
CREATE INDEX IF NOT EXISTS jobs_by_family ON jobs(project, family, compiler, kind);
CREATE INDEX IF NOT EXISTS runs_by_job ON runs(project, output, compiler, fingerprint);
PRAGMA user_version = 2;
"""
ICPX = "icpx: Intel(R) oneAPI DPC++/C++ Compiler 2025.3.0"
# (output, kind, fingerprint, MiB) as the schema-2 governor wrote them for one XPU build.
V2_ROWS = [
    ("CMakeFiles/attn.dir/a.cpp.o", "compile", "1a2b3c4d", 3000),
    ("libattn_kernels_xe_2.so", "link", "", 12000),
    ("_C.abi3.so", "link", "", 900),
]


def write_v2_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(V2_SQL)
    for at, (output, kind, fingerprint, mb) in enumerate(V2_ROWS, start=1):
        conn.execute(
            "INSERT INTO runs (output, kind, compiler, target, family, peak_rss, wait4_rss,"
            " wall_s, cpu_s, recorded_at, fingerprint, project, curve)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (output, kind, ICPX, "attn", ".so" if kind == "link" else ".cpp", mb * M, 0, 60.0,
             60.0, float(at), fingerprint, "vllm-xpu-kernels", f"[[0.0, 1], [59.0, {mb * M}]]"),
        )
        conn.execute(
            "INSERT INTO jobs VALUES (?,?,?,?,?,?,?)",
            ("vllm-xpu-kernels", output, ICPX, kind, "attn", ".so", mb * M),
        )
    conn.commit()
    conn.close()


def test_v2_db_gets_the_device_link_column_once(tmp_path: Path) -> None:
    path = tmp_path / "profiles.sqlite"
    write_v2_db(path)
    before = sqlite3.connect(path)
    assert "device_link" not in {r[1] for r in before.execute("PRAGMA table_info(runs)")}
    before.close()
    with ThreadPoolExecutor(4) as pool:  # builds opening the old DB at once upgrade it once
        dbs = list(pool.map(lambda _: ProfileDB(path), range(4)))
    for db in dbs:
        assert db.writable and not db.warnings
    for db in dbs[1:]:
        db.close()
    db = dbs[0]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    rows = conn.execute("SELECT output, device_link FROM runs ORDER BY id").fetchall()
    conn.close()
    # Schema-2 runs cannot tell: not known to be device links. Nothing else changed.
    assert rows == [(output, 0) for output, *_ in V2_ROWS]
    latest = {e.output: e for e in db.latest("vllm-xpu-kernels")}
    assert {o: (e.device_link, e.peak_rss_bytes // M) for o, e in latest.items()} == {
        output: (False, mb) for output, _, _, mb in V2_ROWS}
    link = JobKey("libattn_kernels_xe_2.so", "link", ICPX, "", "vllm-xpu-kernels")
    assert (db.predict(link).source, db.predict(link).bytes) == ("exact", 12000 * M)
    # The next run of the link records what it is; the plan's source (latest) says so.
    assert db.record(ProfileEntry(output=link.output, kind="link", compiler=ICPX,
                                  project=link.project, peak_rss_bytes=11000 * M, wall_s=50.0,
                                  device_link=True))
    latest = {e.output: e for e in db.latest("vllm-xpu-kernels")}
    assert latest[link.output].device_link and not latest["_C.abi3.so"].device_link
    db.close()


def test_only_links_are_recorded_as_device_links(tmp_path: Path) -> None:
    """A compile entry claiming to be a device link (an import, say) is stored as not one."""
    db = ProfileDB(tmp_path / "profiles.sqlite")
    db.record(ProfileEntry(output="CMakeFiles/t.dir/a.cpp.o", kind="compile", compiler=ICPX,
                           peak_rss_bytes=M, device_link=True))
    assert [e.device_link for e in db.latest()] == [False]
    db.close()
