"""What the profile DB's readers outside the governor get from schema-2 entries: the simulator's
jobs (one per project and output, no cache hits), the split hook's measured peaks, and the
warnings of `plan` and `doctor` when the DB had to be moved aside."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from buildctl.build import split_hints, write_split_hints
from buildctl.cli import main
from buildctl.govern.profiles import ProfileDB, ProfileEntry
from buildctl.govern.simulate import jobs_from_profiles

M = 1024**2
OUT = "CMakeFiles/core.dir/src/main.cc.o"


def _entry(project: str, mb: int, at: float, **extra: object) -> ProfileEntry:
    return ProfileEntry(output=OUT, kind="compile", compiler="g++ 12", project=project,
                        peak_rss_bytes=mb * M, wall_s=2.0, recorded_at=at, **extra)


def test_simulator_jobs_keep_each_projects_job_and_skip_cache_hits() -> None:
    entries = [_entry("fmt", 300, 1.0), _entry("spdlog", 700, 2.0),
               _entry("fmt", 9, 3.0, cache_hit=True)]
    jobs = sorted(jobs_from_profiles(entries), key=lambda j: j.peak_bytes)
    assert [(j.output, j.peak_bytes) for j in jobs] == [(OUT, 300 * M), (OUT, 700 * M)]


def test_simulator_jobs_from_the_db_see_a_cut_short_run_as_a_lower_bound(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    db.record(_entry("fmt", 300, 1.0))
    db.record(_entry("fmt", 450, 2.0, censored=True))
    db.record(_entry("fmt", 5, 3.0, cache_hit=True))
    (job,) = jobs_from_profiles(db.latest("fmt"))
    assert job.peak_bytes == 450 * M


def test_split_hints_ignore_cache_hits_in_the_db(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    heavy = "CMakeFiles/ops.dir/gen/attn.cpp.o"
    db.record(ProfileEntry(output=heavy, kind="compile", compiler="g++ 12", peak_rss_bytes=900 * M,
                           recorded_at=1.0))
    db.record(ProfileEntry(output=heavy, kind="compile", compiler="g++ 12", peak_rss_bytes=8 * M,
                           recorded_at=2.0, cache_hit=True))
    assert split_hints(db.latest(), ["attn.cpp"]) == {"attn.cpp": 900 * M}


def test_split_hints_come_from_the_project_being_built(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    for project, mb in (("pagedattn", 900), ("other", 3000)):
        db.record(ProfileEntry(output="CMakeFiles/ops.dir/gen/attn.cpp.o", kind="compile",
                               compiler="g++ 12", project=project, peak_rss_bytes=mb * M))
    session = SimpleNamespace(profiles=db, opts=SimpleNamespace(project="pagedattn"))
    path = write_split_hints(session, tmp_path / "b", "attn.cpp")  # type: ignore[arg-type]
    assert path.read_text().split() == ["{", '"attn.cpp":', f"{900 * M}", "}"]


def test_plan_and_doctor_say_when_they_moved_a_corrupt_db_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["plan", "--cores", "2", "--mem", "4G"], ["doctor"]):
        db_path = tmp_path / command[0] / "profiles.sqlite"
        db_path.parent.mkdir()
        db_path.write_bytes(os.urandom(4096))
        code = main([*command, "--profiles", str(db_path)])
        _, err = capsys.readouterr()
        warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
        assert code in (0, 1, 2) and "Traceback" not in err
        assert len(warnings) == 1 and "moved it aside" in warnings[0], err
        assert len(list(db_path.parent.glob("profiles.sqlite.corrupt-*"))) == 1
