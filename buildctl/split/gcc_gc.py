"""GCC's garbage collector sized for the sources the splitter manages (its shards, or a source
kept whole): the compile options that lower those compiles' peak memory without changing the
objects. Pure: the compiler's identity and flags in, the decision out."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# GCC sizes its garbage collector from the host's RAM: on a host with a few GiB or more,
# `ggc-min-heapsize` defaults to 128 MiB and `ggc-min-expand` to 100 %, so every compile's heap
# grows to 128 MiB before the first collection and then up to twice its live data. For the
# generated TUs we split, live data is small, so that slack *is* most of the peak (g++ 12,
# pagedattn `default`: 317 MiB whole, 136 MiB with the values below, same CPU). Both params
# only tune when the collector runs; the GCC manual states they do not change generated code
# (tests/test_split_gcc_gc.py checks the objects are byte-identical).
GCC_GC_EXPAND_PERCENT = 10
GCC_GC_HEAPSIZE_MIN_KIB = 4 * 1024
GCC_GC_HEAPSIZE_MAX_KIB = 16 * 1024
_GCC_GC_PARAM_RE = re.compile(r"ggc-min-(expand|heapsize)")


@dataclass(frozen=True)
class GccGcSizing:
    """Whether the GC params are added to a managed source's compile, and which."""

    applied: bool
    reason: str
    expand_percent: int | None = None
    min_heapsize_kib: int | None = None

    @property
    def options(self) -> tuple[str, ...]:
        """Compile options, joined `--param=name=value` form: one token each, so CMake's
        de-duplication of COMPILE_OPTIONS cannot separate a `--param` from its value."""
        if not self.applied:
            return ()
        return (
            f"--param=ggc-min-expand={self.expand_percent}",
            f"--param=ggc-min-heapsize={self.min_heapsize_kib}",
        )


def gcc_gc_heapsize_kib(shard_target_bytes: int) -> int:
    """`ggc-min-heapsize` for a per-shard target: an eighth of it, rounded down to 4, 8 or
    16 MiB.

    16 MiB (any target of 128 MiB or more) is far below what a shard may use, so collections
    stay rare; 4 MiB is GCC's own floor on small hosts. Powers of two, so that a small change
    of the budget does not change the flags (and re-run the probe, whose cache key they are).
    """
    eighth_kib = max(0, shard_target_bytes) // 8 // 1024
    size = GCC_GC_HEAPSIZE_MAX_KIB
    while size > GCC_GC_HEAPSIZE_MIN_KIB and size > eighth_kib:
        size //= 2
    return size


def is_gnu_compiler(compiler_id: str | None = None, version_text: str | None = None) -> bool:
    """GNU g++/gcc: CMake's compiler id `GNU`, or else `--version` text naming the FSF.

    Clang, icpx and nvcc do not take GCC's `--param ggc-*`, so anything else is not GNU.
    (Clang's `--version` never mentions the Free Software Foundation; g++'s always does.)
    """
    if compiler_id:
        return compiler_id == "GNU"
    if version_text:
        return "Free Software Foundation" in version_text and "clang" not in version_text.lower()
    return False


def gcc_gc_sizing(
    *, enabled: bool, gnu: bool, flags: Sequence[str], shard_target_bytes: int
) -> GccGcSizing:
    """The GC sizing decision for a source the splitter manages (shards or kept whole)."""
    if not enabled:
        return GccGcSizing(False, "turned off (BUILDCTL_SPLIT_GCC_GC=OFF / --no-gcc-gc)")
    if not gnu:
        return GccGcSizing(False, "not a GNU compiler")
    if any(_GCC_GC_PARAM_RE.search(flag) for flag in flags):
        return GccGcSizing(False, "the project sets ggc-min-* itself")
    return GccGcSizing(
        True,
        "GNU compiler",
        expand_percent=GCC_GC_EXPAND_PERCENT,
        min_heapsize_kib=gcc_gc_heapsize_kib(shard_target_bytes),
    )
