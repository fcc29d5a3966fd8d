"""`buildctl profile show/export/import` through the CLI: the table users ask for, and moving
profiles as JSON (e.g. shipping them in profiles/ for CI)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_buildctl

from buildctl.govern.profiles import ProfileDB, ProfileEntry

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
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if ".o " in line}
    assert "0.25" in rows["sleepy.o"]
    assert " 1 " in rows["starved.o"] and "0.25" not in rows["starved.o"]
