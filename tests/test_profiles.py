"""The peak-RSS database: predictions, concurrency and crash safety, export/import."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from buildctl.errors import BadInput
from buildctl.govern.profiles import (
    DEFAULT_PRIORS,
    JobKey,
    ProfileDB,
    ProfileEntry,
    summarize_by_target,
    target_of,
)

M = 1024**2
GXX = "g++: g++ (Debian 12.2.0) 12.2.0"


def entry(output: str, mb: int, kind: str = "compile", compiler: str = GXX) -> ProfileEntry:
    return ProfileEntry(
        output=output, kind=kind, compiler=compiler, peak_rss_bytes=mb * M, wall_s=2.0, cpu_s=1.9
    )


def key(output: str, kind: str = "compile", compiler: str = GXX) -> JobKey:
    return JobKey(output, kind, compiler)


def test_target_of_cmake_object_paths() -> None:
    assert target_of("CMakeFiles/ops.dir/gen/a.cpp.o") == "ops"
    assert target_of("sub/CMakeFiles/x.dir/b.cc.o") == "x"
    assert target_of("libops.so") == "libops.so"


def test_prediction_falls_back_in_order(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    out = "CMakeFiles/ops.dir/a.cpp.o"
    assert db.predict(key(out)).source == "prior"
    assert db.predict(key(out)).bytes == DEFAULT_PRIORS["compile"]
    db.record(entry("CMakeFiles/ops.dir/b.cpp.o", 300))
    p = db.predict(key(out))
    assert (p.source, p.bytes) == ("target", 300 * M)
    db.record(entry(out, 120, compiler="clang++"))
    assert db.predict(key(out)).source == "output"
    db.record(entry(out, 100))
    p = db.predict(key(out))
    assert (p.source, p.bytes) == ("exact", 100 * M)


def test_exact_prediction_is_max_of_recent_three(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    for mb in (500, 100, 110, 105):
        db.record(entry("x.o", mb))
    assert db.predict(key("x.o")).bytes == 110 * M


def test_family_needs_several_samples(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    for i, mb in enumerate((100, 200, 300, 400)):
        db.record(entry(f"other{i}/f{i}.cpp.o", mb))
    p = db.predict(key("new/thing.cpp.o"))
    assert p.source == "family" and 300 * M <= p.bytes <= 400 * M


def _writer(path: str, worker: int) -> None:
    db = ProfileDB(Path(path))
    for i in range(50):
        db.record(entry(f"w{worker}/f{i}.o", 10 + i))
    db.close()


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    ProfileDB(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), n)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    count = sqlite3.connect(path).execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    assert count == 200


def test_writer_killed_mid_build_leaves_db_usable(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_writer, args=(str(path), 1))
    proc.start()
    proc.join(0.8)
    proc.kill()
    proc.join()
    db = ProfileDB(path)
    db.record(entry("after.o", 5))
    assert db.predict(key("after.o")).bytes == 5 * M


def test_export_import_roundtrip(tmp_path: Path) -> None:
    a = ProfileDB(tmp_path / "a.sqlite")
    a.record(entry("CMakeFiles/t.dir/x.cpp.o", 150))
    a.record(entry("libt.so", 40, kind="link"))
    text = a.export_json()
    assert '"schema": "buildctl.profiles/2"' in text
    b = ProfileDB(tmp_path / "b.sqlite")
    assert b.import_json(text) == 2
    assert b.predict(key("CMakeFiles/t.dir/x.cpp.o")).bytes == 150 * M
    summary = summarize_by_target(b.latest())
    assert summary[0].target == "t" and summary[0].max_peak_bytes == 150 * M


@pytest.mark.parametrize(
    "text", ["not json", '{"entries": 3}', '{"schema": "other/9", "entries": []}']
)
def test_import_rejects_bad_files(tmp_path: Path, text: str) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    with pytest.raises(BadInput):
        db.import_json(text, "bad.json")


def test_compile_fingerprint_sees_flags_and_source_not_paths() -> None:
    from buildctl.govern.profiles import compile_fingerprint, compile_source

    base = ["g++", "-O2", "-DNDEBUG", "-I/b1/gen", "-MD", "-MT", "x.o", "-MF", "x.o.d",
            "-o", "x.o", "-c", "/b1/gen/k.cpp"]
    other_dir = [t.replace("/b1/", "/b2/") for t in base]
    assert compile_source(base) == "/b1/gen/k.cpp"
    assert compile_source(["g++", "-o", "a.cpp", "-c", "b.cc"]) == "b.cc"  # -o's file skipped
    same = compile_fingerprint(base, "d1")
    assert compile_fingerprint(other_dir, "d1") == same  # paths do not count
    assert compile_fingerprint(base, "d2") != same  # another version of the source does
    gc = [*base[:2], "--param=ggc-min-expand=10", *base[2:]]
    assert compile_fingerprint(gc, "d1") != same  # memory-relevant flags do
    assert compile_fingerprint(["g++", "-O0", *base[2:]], "d1") != same
