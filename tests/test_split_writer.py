"""Shard writing (idempotent, stale cleanup, plan record) and the CLI without a compiler."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from buildctl.build import split_hints
from buildctl.govern.profiles import ProfileEntry
from buildctl.split import cmake_defines, hook_path
from buildctl.split.__main__ import main
from buildctl.split.plan import parse_generated_source
from buildctl.split.writer import (
    PLAN_FILE,
    load_plans,
    write_if_changed,
    write_plan_record,
    write_shards,
)

MiB = 1024**2


def _source(n: int, tweak: int | None = None) -> str:
    lines = ['#include "local.hpp"\n', "namespace ns {\n"]
    for i in range(n):
        arg = 1000 + i if i == tweak else i
        lines.append(f"template void f<{arg}>(int);\n")
    lines.append("}  // namespace ns\n")
    return "".join(lines)


def _age(paths: list[Path]) -> None:
    for path in paths:
        os.utime(path, (1_000_000_000, 1_000_000_000))


def _mtimes(paths: list[Path]) -> list[int]:
    return [p.stat().st_mtime_ns for p in paths]


def test_write_if_changed(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    assert write_if_changed(path, "x")
    _age([path])
    assert not write_if_changed(path, "x")
    assert path.stat().st_mtime == 1_000_000_000
    assert write_if_changed(path, "y")
    assert path.read_text() == "y"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temp files left


def test_write_shards_idempotent_and_minimal(tmp_path: Path) -> None:
    origin = tmp_path / "gen" / "inst.cpp"
    origin.parent.mkdir()
    (origin.parent / "local.hpp").write_text("template <int N> void f(int) {}\n")
    origin.write_text(_source(12))
    out = tmp_path / "out"
    src = parse_generated_source(origin.read_text(), str(origin))

    first = write_shards(src, 4, out, origin)
    assert [p.name for p in first.paths] == [f"inst.shard-00{i}-of-004.cpp" for i in range(4)]
    assert first.written == first.paths
    shard0 = first.paths[0].read_text()
    # The quoted include resolves next to the original, so it is made absolute.
    assert f'#include "{origin.parent}/local.hpp"' in shard0
    assert f'#line 1 "{origin}"' in shard0

    _age(list(first.paths))
    again = write_shards(src, 4, out, origin)
    assert again.written == ()
    assert again.removed == ()
    assert set(_mtimes(list(again.paths))) == {1_000_000_000 * 10**9}

    # One entry changes: only its shard is rewritten.
    origin.write_text(_source(12, tweak=7))
    changed = write_shards(parse_generated_source(origin.read_text(), str(origin)), 4, out, origin)
    assert [p.name for p in changed.written] == ["inst.shard-002-of-004.cpp"]


def test_write_shards_removes_stale_and_keeps_others(tmp_path: Path) -> None:
    origin = tmp_path / "inst.cpp"
    origin.write_text(_source(10))
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.shard-000-of-002.cpp").write_text("unrelated\n")
    (out / "notes.txt").write_text("keep\n")
    src = parse_generated_source(origin.read_text(), str(origin))
    write_shards(src, 5, out, origin)
    res = write_shards(src, 3, out, origin)
    assert len(res.removed) == 5
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "inst.shard-000-of-003.cpp",
            "inst.shard-001-of-003.cpp",
            "inst.shard-002-of-003.cpp",
            "other.shard-000-of-002.cpp",
            "notes.txt",
        ]
    )
    whole = write_shards(src, 1, out, origin)
    assert whole.paths == (origin,)
    assert len(whole.removed) == 3
    assert not any(p.name.startswith("inst.shard") for p in out.iterdir())


def test_plan_record_round_trip(tmp_path: Path) -> None:
    build = tmp_path / "build"
    out = build / "buildctl-split" / "inst.cpp-12345678"
    out.mkdir(parents=True)
    write_plan_record(out, {"source": "/x/inst.cpp", "n": 4})
    (build / "buildctl-split" / "junk").mkdir()
    (build / "buildctl-split" / "junk" / PLAN_FILE).write_text("not json")
    plans = load_plans(build)
    assert plans == [{"schema": "buildctl.split-plan/1", "source": "/x/inst.cpp", "n": 4}]
    assert load_plans(tmp_path / "nowhere") == []


def test_cmake_defines_point_at_the_shipped_hook() -> None:
    assert hook_path().is_file()
    defines = cmake_defines(["a\\.cpp$", "b.cpp"], budget_bytes=123, slots=2, shards=4)
    assert defines["CMAKE_PROJECT_INCLUDE"] == str(hook_path())
    assert defines["BUILDCTL_SPLIT_SOURCES"] == "a\\.cpp$;b.cpp"
    assert defines["BUILDCTL_SPLIT_BUDGET"] == "123"
    assert defines["BUILDCTL_SPLIT_SLOTS"] == "2"
    assert defines["BUILDCTL_SPLIT_SHARDS"] == "4"
    assert "BUILDCTL_SPLIT_HINTS" not in defines
    assert "BUILDCTL_SPLIT_GCC_GC" not in defines  # on by default
    off = cmake_defines(["a.cpp"], gcc_gc=False, hints_file=Path("/h.json"))
    assert off["BUILDCTL_SPLIT_GCC_GC"] == "OFF"
    assert off["BUILDCTL_SPLIT_HINTS"] == "/h.json"


def _profile(output: str, peak_mib: int, at: float, kind: str = "compile") -> ProfileEntry:
    return ProfileEntry(
        output=output,
        kind=kind,
        compiler="g++: g++ 12",
        peak_rss_bytes=peak_mib * MiB,
        recorded_at=at,
    )


def test_split_hints_from_the_profile_db() -> None:
    """`buildctl build` writes BUILDCTL_SPLIT_HINTS from these (buildctl/build.py)."""
    obj = "CMakeFiles/_pagedattn_ops.dir/generated/"
    shard = "CMakeFiles/_pagedattn_ops.dir/buildctl-split/pagedattn_instances.cpp-1a2b3c4d/"
    entries = [
        _profile(obj + "pagedattn_instances.cpp.o", 317, at=10.0),
        _profile(obj + "pagedattn_instances.cpp.o", 136, at=20.0),  # the newest wins
        _profile(shard + "pagedattn_instances.shard-000-of-012.cpp.o", 63, at=30.0),
        _profile(obj + "pagedattn_dispatch.cpp.o", 150, at=30.0),
        _profile("_pagedattn_ops.so", 400, at=30.0, kind="link"),
    ]
    patterns = ["pagedattn_instances\\.cpp$"]
    assert split_hints(entries, patterns) == {"pagedattn_instances.cpp": 136 * MiB}
    # A file name matches too; a pattern Python's re cannot compile only matches by name.
    assert split_hints(entries, ["pagedattn_dispatch.cpp"]) == {"pagedattn_dispatch.cpp": 150 * MiB}
    assert split_hints(entries, ["(unbalanced"]) == {}
    assert split_hints(entries, [""]) == {}
    assert split_hints([], patterns) == {}


# ------------------------------------------------------------------------------------ CLI


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_plans_from_a_known_whole_peak(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin = tmp_path / "inst.cpp"
    origin.write_text(_source(16))
    out = tmp_path / "out"
    rc, stdout, err = _run(
        capsys,
        "--source",
        str(origin),
        "--out-dir",
        str(out),
        "--budget",
        "1G",
        "--slots",
        "2",
        "--whole-peak",
        "1600M",
    )
    assert rc == 0, err
    paths = stdout.split()
    # 100 MiB per entry (no probe: no preamble cost), 409.6 MiB per shard -> 4 per shard.
    assert len(paths) == 4
    assert all(Path(p).is_file() for p in paths)
    assert "split inst.cpp into 4 shards" in err
    assert "without the preamble's cost" in err
    record = json.loads((out / PLAN_FILE).read_text())
    assert record["n"] == 4
    assert record["per_shard_entries"] == [4, 4, 4, 4]
    assert record["model"]["source"] == "profile"
    assert record["shards"] == paths


def test_cli_hints_file_and_cmake_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin = tmp_path / "inst.cpp"
    origin.write_text(_source(6))
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps({"inst.cpp": 60 * MiB}))
    rc, stdout, err = _run(
        capsys,
        "--source",
        str(origin),
        "--out-dir",
        str(tmp_path / "o"),
        "--budget",
        "1G",
        "--slots",
        "1",
        "--hints",
        str(hints),
        "--format",
        "cmake",
    )
    assert rc == 0, err
    assert stdout.strip() == str(origin)  # fits: stays whole
    assert "kept inst.cpp whole" in err


def test_cli_forced_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    origin = tmp_path / "inst.cpp"
    origin.write_text(_source(5))
    rc, stdout, err = _run(
        capsys,
        "--source",
        str(origin),
        "--out-dir",
        str(tmp_path / "o"),
        "--budget",
        "1G",
        "--slots",
        "1",
        "--shards",
        "8",
        "--format",
        "cmake",
    )
    assert rc == 0, err
    assert len(stdout.strip().split(";")) == 5  # capped at the entries
    assert "capped" in err


@pytest.mark.parametrize(
    ("text", "extra", "expect"),
    [
        ("#include <a>\nint x;\n", [], ":1: no list"),
        ("#include <a>\ntemplate void f<1>();\n#if X\ntemplate void f<2>();\n#endif\n", [], ":4:"),
        (_source(3), [], "nothing to plan from"),
        (_source(3), ["--shards", "0"], "--shards must be at least 1"),
        (_source(3), ["--whole-peak", "lots"], "cannot read size"),
        (_source(3), ["--budget", "0", "--shards", "2"], "budget must be positive"),
    ],
)
def test_cli_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, extra: list[str], expect: str
) -> None:
    origin = tmp_path / "gen.cpp"
    origin.write_text(text)
    argv = ["--source", str(origin), "--out-dir", str(tmp_path / "o"), "--slots", "1"]
    if "--budget" not in extra:
        argv += ["--budget", "1G"]
    rc, stdout, err = _run(capsys, *argv, *extra)
    assert rc == 2
    assert stdout == ""
    assert expect in err
    if expect.startswith(":"):
        assert f"{origin}{expect}" in err  # names file:line


def test_cli_missing_source_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(
        capsys,
        "--source",
        str(tmp_path / "nope.cpp"),
        "--out-dir",
        str(tmp_path),
        "--shards",
        "2",
        "--budget",
        "1G",
        "--slots",
        "1",
    )
    assert rc == 2
    assert "no such file" in err


def test_cli_argument_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--out-dir", "x"])
    assert info.value.code == 2


def test_write_split_hints_file(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from buildctl.build import write_split_hints
    from buildctl.govern.profiles import ProfileDB

    db = ProfileDB(tmp_path / "p.sqlite")
    try:
        session = SimpleNamespace(profiles=db, opts=SimpleNamespace(project=""))
        path = write_split_hints(session, tmp_path / "b", "x\\.cpp$")  # type: ignore[arg-type]
        assert path == tmp_path / "b" / ".buildctl" / "split-hints.json"
        assert json.loads(path.read_text()) == {}  # nothing measured yet
        db.record(_profile("CMakeFiles/t.dir/gen/x.cpp.o", 200, at=1.0))
        write_split_hints(session, tmp_path / "b", "x\\.cpp$")  # type: ignore[arg-type]
        assert json.loads(path.read_text()) == {"x.cpp": 200 * MiB}
    finally:
        db.close()
