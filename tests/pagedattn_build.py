"""Build the bundled pagedattn kernel project with plain CMake + Ninja for tests.

Used by the session fixture `pagedattn_tiny_build` (tests/conftest.py); importable by other tests
that need a built pagedattn (e.g. with another preset or under buildctl's governor).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGEDATTN_SRC = ROOT / "kernels" / "pagedattn"
PAGEDATTN_TOOLS = PAGEDATTN_SRC / "tools"


@dataclass(frozen=True)
class PagedattnBuild:
    """A configured, built and installed pagedattn."""

    preset: str
    build_dir: Path  # the CMake/Ninja build tree (generated/ holds the generated sources)
    site_dir: Path  # put this on sys.path to `import pagedattn`
    package_dir: Path  # site_dir / "pagedattn"
    library: Path  # the installed _pagedattn_ops.so

    @property
    def instances_source(self) -> Path:
        return self.build_dir / "generated" / "pagedattn_instances.cpp"


def build_pagedattn(preset: str, build_dir: Path, jobs: int = 2) -> PagedattnBuild:
    """Configure (Ninja), build and `cmake --install` into build_dir/install. Incremental: a
    second call on the same build_dir only rebuilds what changed."""
    import torch  # the project needs torch's CMake config; the test env has torch

    site = build_dir / "install"
    configure = [
        "cmake", "-G", "Ninja", "-S", str(PAGEDATTN_SRC), "-B", str(build_dir),
        f"-DPAGEDATTN_CONFIG={preset}",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-DPython_EXECUTABLE={sys.executable}",
        "-DCMAKE_BUILD_TYPE=Release",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDCTL_")}
    for cmd in (
        configure,
        ["cmake", "--build", str(build_dir), "--", f"-j{jobs}"],
        ["cmake", "--install", str(build_dir), "--prefix", str(site)],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(
                f"pagedattn build step failed ({proc.returncode}): {' '.join(cmd)}\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
    package = site / "pagedattn"
    return PagedattnBuild(preset, build_dir, site, package, package / "_pagedattn_ops.so")
