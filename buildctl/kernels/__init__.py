"""Kernel projects buildctl knows (manifests under the repo's kernels/ folder)."""

from __future__ import annotations

import sys
from pathlib import Path

from buildctl.errors import BadInput

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
KERNELS_DIR = REPO_ROOT / "kernels"
PRESETS = ("tiny", "default", "full")


def bundled_build_settings(preset: str, low_ram: bool) -> tuple[Path, dict[str, str], Path]:
    """(source dir, CMake defines, default build dir) for the bundled pagedattn project."""
    source = KERNELS_DIR / "pagedattn"
    if not (source / "CMakeLists.txt").is_file():
        raise BadInput(
            f"the bundled kernel project is missing at {source}",
            "run buildctl from a full clone of the buildctl repository, or pass --source DIR",
        )
    if preset not in PRESETS and not Path(preset).is_file():
        raise BadInput(
            f"unknown kernel config preset {preset!r}",
            f"use one of {', '.join(PRESETS)} or a path to a .conf file",
        )
    import torch  # the bundled project is a torch extension

    defines = {
        "PAGEDATTN_CONFIG": str(Path(preset).resolve()) if Path(preset).is_file() else preset,
        "CMAKE_PREFIX_PATH": torch.utils.cmake_prefix_path,
        "Python_EXECUTABLE": sys.executable,
        "CMAKE_BUILD_TYPE": "Release",
    }
    return source, defines, REPO_ROOT / "_build" / f"pagedattn-{Path(preset).stem}"
