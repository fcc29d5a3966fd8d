"""`buildctl run` takes its settings like `build` does: the working directory is the project, so
its pyproject.toml [tool.buildctl] is a layer, --show-settings prints and exits without running
the command, -v prints the settings too, and the profiles are keyed by the project's name."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from helpers import isolated_env, run_buildctl

PYPROJECT = '[project]\nname = "demo"\nversion = "0.1"\n\n[tool.buildctl]\njobs = 3\n'


def _project(tmp_path: Path, name: str) -> Path:
    project = tmp_path / name
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    return project


def test_show_settings_reads_the_projects_pyproject_and_runs_nothing(tmp_path: Path) -> None:
    project = _project(tmp_path, "proj")
    marker = tmp_path / "ran"
    proc = run_buildctl(
        "run", "--build-dir", str(tmp_path / "s"), "--show-settings", "--", sys.executable,
        "-c", f"open({str(marker)!r}, 'w')", env=isolated_env(tmp_path), cwd=project,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    jobs = next(line for line in proc.stdout.splitlines() if line.startswith("jobs "))
    assert jobs.split()[1] == "3" and "pyproject.toml [tool.buildctl]" in jobs
    assert not marker.exists()  # --show-settings exits before the command


def test_flags_beat_the_projects_pyproject_and_verbose_shows_them(tmp_path: Path) -> None:
    project = _project(tmp_path, "proj")
    proc = run_buildctl(
        "run", "--build-dir", str(tmp_path / "s"), "-j", "1", "-v", "--plain", "--",
        sys.executable, "-c", "pass", env=isolated_env(tmp_path), cwd=project, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    jobs = next(line for line in proc.stdout.splitlines() if line.startswith("jobs "))
    assert jobs.split()[1] == "1" and "--jobs" in jobs


def test_profiles_of_a_run_are_keyed_by_its_project(tmp_path: Path) -> None:
    env = {**isolated_env(tmp_path), "CCACHE_DISABLE": "1"}  # a measured compile, never a hit
    for name in ("alpha", "beta"):
        project = _project(tmp_path, name)
        (project / "main.cc").write_text(f"int main() {{ return {len(name)}; }}\n")
        proc = run_buildctl(
            "run", "--build-dir", str(tmp_path / f"s-{name}"), "--plain", "--", "sh", "-c",
            '"$CXX" -c main.cc -o main.o', env=env, cwd=project, timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = run_buildctl("profile", "show", "--jobs", "--json", env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    # The same output in two projects: two entries, one per project, never one shared.
    assert sorted((row["project"], row["output"]) for row in json.loads(shown.stdout)) == [
        ("alpha", "main.o"), ("beta", "main.o")
    ]
