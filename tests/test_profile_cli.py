"""`buildctl profile show/export/import` through the CLI: the table users ask for (per project),
moving profiles as JSON (e.g. shipping them in profiles/ for CI), and bad input of every kind
answered with a two-line error and exit 2, never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import run_buildctl

from buildctl.cli import main
from buildctl.govern.profiles import JobKey, ProfileDB, ProfileEntry

M = 1024**2


def test_export_import_show_roundtrip(tmp_path: Path) -> None:
    source = tmp_path / "a.sqlite"
    db = ProfileDB(source)
    db.record(ProfileEntry(output="CMakeFiles/ops.dir/gen/heavy.cpp.o", kind="compile",
                           compiler="g++: g++ 12", peak_rss_bytes=900 * M, wall_s=40, cpu_s=39))
    db.record(ProfileEntry(output="libops.so", kind="link", compiler="g++: g++ 12",
                           peak_rss_bytes=300 * M, wall_s=2, cpu_s=2))
    db.close()
    exported = tmp_path / "ops.json"
    result = run_buildctl("profile", "--profiles", str(source), "export", str(exported))
    assert result.returncode == 0, result.stderr
    assert json.loads(exported.read_text())["schema"] == "buildctl.profiles/2"
    target = tmp_path / "b.sqlite"
    result = run_buildctl("profile", "--profiles", str(target), "import", str(exported))
    assert result.returncode == 0 and "imported 2" in result.stdout
    result = run_buildctl("profile", "--profiles", str(target), "show")
    assert result.returncode == 0
    assert "ops" in result.stdout and "900.0 MiB" in result.stdout


def test_import_of_a_bad_file_is_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = run_buildctl("profile", "--profiles", str(tmp_path / "p.sqlite"), "import", str(bad))
    assert result.returncode == 2 and "fix:" in result.stderr
    result = run_buildctl("profile", "--profiles", str(tmp_path / "p.sqlite"), "import",
                          str(tmp_path / "missing.json"))
    assert result.returncode == 2


def test_show_jobs_lists_each_jobs_cpu_slot_share(tmp_path: Path) -> None:
    """A job measured mostly waiting shows the fraction of a slot it will be given; the
    run-queue wait survives export and import (a CPU-starved compile stays at 1)."""
    source = tmp_path / "a.sqlite"
    db = ProfileDB(source)
    db.record(ProfileEntry(output="sleepy.o", kind="compile", compiler="cc",
                           peak_rss_bytes=500 * M, wall_s=8, cpu_s=1))
    db.record(ProfileEntry(output="starved.o", kind="compile", compiler="cc",
                           peak_rss_bytes=500 * M, wall_s=8, cpu_s=2, runq_wait_s=6))
    db.close()
    exported = tmp_path / "p.json"
    target = tmp_path / "b.sqlite"
    for db_path, verb in ((source, "export"), (target, "import")):
        result = run_buildctl("profile", "--profiles", str(db_path), verb, str(exported))
        assert result.returncode == 0, result.stderr
    result = run_buildctl("profile", "--profiles", str(target), "show", "--jobs")
    assert result.returncode == 0, result.stderr
    rows = {name: line for line in result.stdout.splitlines()
            for name in ("sleepy.o", "starved.o") if f" {name} " in line}
    assert "0.25" in rows["sleepy.o"]
    assert " 1 " in rows["starved.o"] and "0.25" not in rows["starved.o"]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _export(entries: list[dict], schema: str = "buildctl.profiles/2") -> str:
    return json.dumps({"schema": schema, "entries": entries})


GOOD = {"output": "CMakeFiles/t.dir/a.cpp.o", "kind": "compile", "compiler": "g++ 12",
        "peak_rss_bytes": 100 * M, "wall_s": 3.0, "cpu_s": 2.5}


def _with(**changes: object) -> str:
    return _export([{**GOOD, **changes}])


# (what the import file holds, words the error must contain)
BAD_IMPORTS = {
    "not UTF-8": (b"\xff\xfe{\"schema\"", "not UTF-8"),
    "not JSON": (b"{not json", "not a buildctl profile export"),
    "JSON nested too deep to read": (b"[" * 100_000, "not a buildctl profile export"),
    "no entries": (b'{"schema": "buildctl.profiles/2"}', "no entries"),
    "unknown schema": (_export([GOOD], "other/9").encode(), "schema"),
    "a peak of 1e35": (_with(peak_rss_bytes=1e35).encode(), "peak_rss_bytes"),
    "a negative peak": (_with(peak_rss_bytes=-5).encode(), "peak_rss_bytes"),
    "a zero peak": (_with(peak_rss_bytes=0).encode(), "peak_rss_bytes"),
    "a peak above 1 PiB": (_with(peak_rss_bytes=2 * 1024**5).encode(), "peak_rss_bytes"),
    "a negative wall time": (_with(wall_s=-1).encode(), "wall_s"),
    "a negative CPU time": (_with(cpu_s=-0.5).encode(), "cpu_s"),
    "an infinite time": (_with(wall_s="inf").encode(), "wall_s"),
    "an output escaping the build dir": (_with(output="../../etc/passwd").encode(), "'..'"),
    "an absolute output": (_with(output="/etc/passwd").encode(), "relative"),
    "an unknown kind": (_with(kind="weird").encode(), "kind"),
    "a curve going back in time": (_with(curve=[[-1, 5]]).encode(), "curve"),
}


@pytest.mark.parametrize("data,words", BAD_IMPORTS.values(), ids=BAD_IMPORTS.keys())
def test_import_refuses_impossible_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, words: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(data)
    db_path = tmp_path / "p.sqlite"
    code, _, err = _cli(capsys, "profile", "--profiles", str(db_path), "import", str(bad))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err
    assert lines[0].startswith("error: ") and words in lines[0]
    assert lines[1].lstrip().startswith("fix: ")
    assert ProfileDB(db_path).latest() == []  # nothing of the file was taken in


BAD_ARGS = {
    "--profiles naming a directory": (("profile", "--profiles", "{tmp}", "show"), "directory"),
    "the same after the action word": (("profile", "show", "--profiles", "{tmp}"), "directory"),
    "an import file that is missing": (
        ("profile", "--profiles", "{tmp}/p.sqlite", "import", "{tmp}/missing.json"),
        "cannot read"),
    "an import file that is a directory": (
        ("profile", "--profiles", "{tmp}/p.sqlite", "import", "{tmp}"), "cannot read"),
    "an export to a directory": (
        ("profile", "--profiles", "{tmp}/p.sqlite", "export", "{tmp}"), "directory"),
}


@pytest.mark.parametrize("argv,words", BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_bad_arguments_are_a_two_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], words: str
) -> None:
    code, _, err = _cli(capsys, *(a.format(tmp=tmp_path) for a in argv))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and words in lines[0], err
    assert "fix:" in lines[1]


def test_bad_input_through_the_real_command_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(os.urandom(300) + b"\xff")
    for argv in (("profile", "--profiles", str(tmp_path), "show"),
                 ("profile", "--profiles", str(tmp_path / "p.sqlite"), "import", str(bad))):
        result = run_buildctl(*argv)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 2


def test_show_on_a_corrupt_db_warns_and_goes_on(tmp_path: Path) -> None:
    db_path = tmp_path / "profiles.sqlite"
    db_path.write_bytes(os.urandom(8192))
    result = run_buildctl("profile", "--profiles", str(db_path), "show")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "moved it aside" in warning[0]
    assert "no profiles" in result.stdout
    assert len(list(tmp_path.glob("profiles.sqlite.corrupt-*"))) == 1


def _two_projects(path: Path) -> None:
    db = ProfileDB(path)
    for project, mb in (("fmt", 300), ("spdlog", 700)):
        db.record(ProfileEntry(output="CMakeFiles/core.dir/src/main.cc.o", kind="compile",
                               compiler="g++ 12", project=project, peak_rss_bytes=mb * M,
                               wall_s=5, cpu_s=5))
    db.close()


def test_show_has_a_project_column_and_filters_by_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_path = tmp_path / "p.sqlite"
    _two_projects(db_path)
    code, out, _ = _cli(capsys, "profile", "--profiles", str(db_path), "show")
    assert code == 0
    rows = [line for line in out.splitlines() if " core " in line]
    assert len(rows) == 2
    assert any("fmt" in r and "300.0 MiB" in r for r in rows)
    assert any("spdlog" in r and "700.0 MiB" in r for r in rows)
    code, out, _ = _cli(capsys, "profile", "show", "--profiles", str(db_path), "--project", "fmt")
    assert code == 0 and "300.0 MiB" in out and "700.0 MiB" not in out and "spdlog" not in out
    code, out, _ = _cli(capsys, "profile", "show", "--profiles", str(db_path), "--project", "x")
    assert code == 0 and "no profiles for project 'x'" in out and "fmt, spdlog" in out


def test_show_json_is_a_list_per_target_or_per_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_path = tmp_path / "p.sqlite"
    _two_projects(db_path)
    code, out, _ = _cli(capsys, "profile", "--profiles", str(db_path), "show", "--json")
    targets = json.loads(out)
    assert code == 0 and isinstance(targets, list)
    assert {(t["project"], t["target"], t["max_peak_bytes"]) for t in targets} == {
        ("fmt", "core", 300 * M), ("spdlog", "core", 700 * M)}
    code, out, _ = _cli(capsys, "profile", "--profiles", str(db_path), "show", "--json",
                        "--jobs", "--project", "spdlog")
    jobs = json.loads(out)
    assert code == 0 and [(j["project"], j["peak_rss_bytes"]) for j in jobs] == [
        ("spdlog", 700 * M)]
    assert jobs[0]["cpu_slot_share"] == 1.0 and "curve" not in jobs[0]
    code, out, _ = _cli(capsys, "profile", "--profiles", str(tmp_path / "empty.sqlite"), "show",
                        "--json")
    assert code == 0 and json.loads(out) == []


def test_a_schema_1_export_imports_with_a_project_and_feeds_the_fallbacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Shipped exports are schema 1: the compile fingerprint glued onto the compiler, no
    project. Imported with --project, a new file of the same target is predicted from them."""
    v1 = tmp_path / "v1.json"
    v1.write_text(_export([
        {**GOOD, "compiler": "g++ 12 #1a2b3c4d", "peak_rss_bytes": 900 * M},
        {**GOOD, "output": "libt.so", "kind": "link", "peak_rss_bytes": 200 * M},
    ], "buildctl.profiles/1"))
    db_path = tmp_path / "p.sqlite"
    code, out, err = _cli(capsys, "profile", "--profiles", str(db_path), "import",
                          "--project", "ops", str(v1))
    assert code == 0 and "imported 2" in out, err
    db = ProfileDB(db_path)
    p = db.predict(JobKey("CMakeFiles/t.dir/b.cpp.o", "compile", "g++ 12", "ffffffff", "ops"))
    assert (p.source, p.bytes) == ("target", 900 * M)
    assert db.predict(JobKey("CMakeFiles/t.dir/b.cpp.o", "compile", "g++ 12")).source == "prior"
    exported = json.loads(db.export_json("ops"))
    assert exported["schema"] == "buildctl.profiles/2"
    assert {(e["compiler"], e["fingerprint"], e["project"]) for e in exported["entries"]} == {
        ("g++ 12", "1a2b3c4d", "ops"), ("g++ 12", "", "ops")}


def test_export_import_keeps_censoring_curves_and_projects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = ProfileDB(tmp_path / "a.sqlite")
    curve = [(t / 10, (t + 1) * M) for t in range(200)]
    a.record(ProfileEntry(output="k.cu.o", kind="compile", compiler="nvcc 13", fingerprint="ab",
                          project="cutlass", peak_rss_bytes=4000 * M, curve=curve,
                          source_bytes=123_456, recorded_at=1.0))
    a.record(ProfileEntry(output="k.cu.o", kind="compile", compiler="nvcc 13", fingerprint="ab",
                          project="cutlass", peak_rss_bytes=5000 * M, censored=True,
                          recorded_at=2.0))
    a.close()
    exported = tmp_path / "x.json"
    for db_path, verb in ((tmp_path / "a.sqlite", "export"), (tmp_path / "b.sqlite", "import")):
        code, _, err = _cli(capsys, "profile", "--profiles", str(db_path), verb, str(exported))
        assert code == 0, err
    b = ProfileDB(tmp_path / "b.sqlite")
    (entry,) = b.latest()
    assert (entry.project, entry.censored, entry.peak_rss_bytes) == ("cutlass", True, 5000 * M)
    assert entry.source_bytes == 123_456 and 3 <= len(entry.curve) <= 64
    p = b.predict(JobKey("k.cu.o", "compile", "nvcc 13", "ab", "cutlass"))
    assert p.bytes == 5000 * M and p.censored
    b.close()
    code, out, _ = _cli(capsys, "profile", "--profiles", str(tmp_path / "b.sqlite"), "show",
                        "--jobs")
    (row,) = [line for line in out.splitlines() if " k.cu.o " in line and "compile" in line]
    assert code == 0 and ">=4.9 GiB" in row  # only a lower bound is known
