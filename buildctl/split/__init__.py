"""Splitting heavy generated sources into shards sized for the memory budget.

- `plan`: pure policy (recognise preamble + list + epilogue, plan N, slice, render shards)
- `gcc_gc`: GCC's garbage collector sized for the managed sources (pure)
- `probe`: configure-time probe compiles measured with `os.wait4`
- `writer`: shards + `split-plan.json`, rewriting only what changed
- `__main__`: the CLI the CMake hook runs; `hook.cmake`: the hook itself

The hook is injected without touching the project's sources:

    cmake -DCMAKE_PROJECT_INCLUDE=<hook_path()> -DBUILDCTL_SPLIT_SOURCES=<regex or file name;...>
          -DBUILDCTL_SPLIT_BUDGET=16G -DBUILDCTL_SPLIT_SLOTS=2 -DBUILDCTL_PYTHON=<python> ...
          [-DBUILDCTL_SPLIT_GCC_GC=OFF]

`cmake_defines()` builds exactly those definitions.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def hook_path() -> Path:
    """The CMake hook shipped as package data (pass as CMAKE_PROJECT_INCLUDE)."""
    return Path(__file__).resolve().parent / "hook.cmake"


def cmake_defines(
    sources: Sequence[str],
    *,
    budget_bytes: int | None = None,
    slots: int | None = None,
    shards: int | None = None,
    hints_file: Path | None = None,
    python: str | None = None,
    gcc_gc: bool = True,
) -> dict[str, str]:
    """`-D` definitions that inject the split hook for `sources` (regexes or file names).

    `gcc_gc=False` turns off the GC sizing of managed sources (`BUILDCTL_SPLIT_GCC_GC=OFF`).
    """
    defines = {
        "CMAKE_PROJECT_INCLUDE": str(hook_path()),
        "BUILDCTL_SPLIT_SOURCES": ";".join(sources),
        "BUILDCTL_PYTHON": python or sys.executable,
    }
    if budget_bytes is not None:
        defines["BUILDCTL_SPLIT_BUDGET"] = str(budget_bytes)
    if slots is not None:
        defines["BUILDCTL_SPLIT_SLOTS"] = str(slots)
    if shards is not None:
        defines["BUILDCTL_SPLIT_SHARDS"] = str(shards)
    if hints_file is not None:
        defines["BUILDCTL_SPLIT_HINTS"] = str(hints_file)
    if not gcc_gc:
        defines["BUILDCTL_SPLIT_GCC_GC"] = "OFF"
    return defines
