"""The top-level CMakeLists.txt: plain CMake configures the bundled project with buildctl's split
hook (sources from the project's manifest), and the shards it writes compile."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("cmake", "ninja", "g++")),
        reason="needs cmake, ninja and g++",
    ),
]


def configure(build: Path, *defines: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["cmake", "-G", "Ninja", "-S", str(ROOT), "-B", str(build), "-DPAGEDATTN_CONFIG=tiny",
         f"-DPython_EXECUTABLE={sys.executable}", *defines],
        capture_output=True, text=True, timeout=300, check=False,
    )


def object_targets(build: Path) -> list[str]:
    out = subprocess.run(["ninja", "-C", str(build), "-t", "targets", "all"], capture_output=True,
                         text=True, check=True).stdout
    return [line.split(":")[0] for line in out.splitlines() if line.split(":")[0].endswith(".o")]


def test_configure_splits_the_heavy_source_and_the_shards_compile(tmp_path: Path) -> None:
    build = tmp_path / "b"
    result = configure(build, "-DBUILDCTL_SPLIT_SHARDS=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "split pagedattn_instances.cpp into 2 shards" in result.stdout
    cache = (build / "CMakeCache.txt").read_text()
    assert "BUILDCTL_SPLIT_SOURCES:STRING=pagedattn_instances\\.cpp$" in cache
    objects = object_targets(build)
    shards = [o for o in objects if ".shard-" in o]
    assert len(shards) == 2, objects
    assert not [o for o in objects if o.endswith("generated/pagedattn_instances.cpp.o")]
    built = subprocess.run(["ninja", "-C", str(build), *shards], capture_output=True, text=True,
                           timeout=300, check=False)
    assert built.returncode == 0, built.stdout[-3000:]
    assert all((build / s).stat().st_size > 0 for s in shards)


def test_split_off_compiles_the_source_whole(tmp_path: Path) -> None:
    build = tmp_path / "b"
    result = configure(build, "-DBUILDCTL_SPLIT=OFF")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "buildctl:" not in result.stdout
    objects = object_targets(build)
    assert [o for o in objects if o.endswith("generated/pagedattn_instances.cpp.o")]
    assert not [o for o in objects if ".shard-" in o]
