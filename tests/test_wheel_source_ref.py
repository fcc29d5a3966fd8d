"""Provenance of a wheel's sources reads the user's git checkout without writing to it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from buildctl.wheel.pipeline import source_ref


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


def test_source_ref_leaves_the_index_alone(tmp_path: Path) -> None:
    repo = tmp_path / "src"
    repo.mkdir()
    (repo / "a.cpp").write_text("int a() { return 1; }\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "a.cpp")
    _git(repo, "commit", "-qm", "one")
    index = (repo / ".git" / "index").read_bytes()
    later = time.time() + 5  # a stat change a plain `git status` would write into the index
    os.utime(repo / "a.cpp", (later, later))
    ref = source_ref("p", repo, "local")
    assert ref.commit and not ref.dirty
    assert (repo / ".git" / "index").read_bytes() == index
