"""Compiler caches (ccache, sccache): chaining a user's launcher after buildctl's, and telling a
cache hit from a compile.

buildctl's launcher always comes first, so every job asks for admission; the user's cache runs
as the launcher's command: buildctl → ccache → compiler. A cache hit takes a few milliseconds
and megabytes, so it must never be recorded as the job's peak: the next cache miss would be
admitted on a prediction a hundred times too small.

Everything here is pure; the launcher (stdlib only) collects ccache's per-job stats log.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Launchers that cache compiles; their argv is `<cache> [KEY=VALUE…] <compiler> <args…>`.
CACHE_WRAPPERS = ("ccache", "sccache", "buildcache")
LANGS = ("C", "CXX", "CUDA", "HIP", "OBJC", "OBJCXX")
LAUNCHER_VAR = re.compile(r"^CMAKE_([A-Z]+)_(COMPILER|LINKER)_LAUNCHER$")
# `-DCMAKE_CXX_COMPILER_LAUNCHER=ccache`, `-DCMAKE_CXX_COMPILER_LAUNCHER:STRING=ccache`
_DEFINE = re.compile(r"^-D\s*(CMAKE_[A-Z]+_(?:COMPILER|LINKER)_LAUNCHER)(?::[A-Za-z]+)?=(.*)$")
# ccache stats log counters that mean "the result came from the cache".
_HIT_COUNTERS = {"direct_cache_hit", "preprocessed_cache_hit", "remote_cache_hit", "cache_hit"}
# A compile measured below these fractions of its history (CPU time and peak RSS together) is a
# cache hit when the cache itself cannot say (sccache, ccache before 4.4).
HIT_CPU_FRACTION = 0.1
HIT_RSS_FRACTION = 0.25
# Below this much history a compile is too short to tell a hit from a fast compile.
MIN_HISTORY_WALL_S = 0.5


def wrapper_name(program: str) -> str | None:
    """The cache a program is (`ccache`, `/usr/bin/sccache`), else None."""
    name = os.path.basename(program)
    return name if name in CACHE_WRAPPERS else None


def masquerading_cache(program: str) -> str | None:
    """The cache a compiler path really runs: `/usr/lib/ccache/g++` is a link to ccache (Debian's
    way to put ccache before every compiler), so its runs can be cache hits too; else None."""
    if "/" not in program or wrapper_name(program):
        return None
    return wrapper_name(os.path.realpath(program))


def split_cache_wrapper(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """(`ccache`, compiler argv) for a cached command, (None, argv) otherwise.

    ccache accepts `KEY=VALUE` settings before the compiler; they are skipped."""
    if not argv:
        return None, []
    cache = wrapper_name(argv[0])
    if cache is None:
        return None, list(argv)
    rest = list(argv[1:])
    while rest and "=" in rest[0] and not rest[0].startswith("-") and "/" not in rest[0]:
        rest.pop(0)
    return cache, rest


def compiler_argv(argv: Sequence[str]) -> list[str]:
    """The real compiler command under any cache wrapper: what compiler identity and compile
    fingerprints must be computed from (so `ccache g++` and `g++` share profiles)."""
    return split_cache_wrapper(argv)[1]


@dataclass(frozen=True)
class CacheEvidence:
    """What is known about one finished job for deciding whether its cache served it."""

    argv: Sequence[str]
    kind: str  # compile | link | other
    cpu_s: float
    peak_rss_bytes: int
    # ccache's per-job stats log (`CCACHE_STATSLOG`, ccache >= 4.4), as the launcher read it.
    stats_log: str | None = None
    # The same output's measured history (a prediction from real compiles), if any.
    history_peak_bytes: int | None = None
    history_wall_s: float | None = None


def stats_log_says_hit(stats_log: str) -> bool | None:
    """True/False when the ccache stats log names a hit or a miss, None when it says neither."""
    counters = {
        line.strip()
        for line in stats_log.splitlines()
        if line.strip() and not line.startswith("#")
    }
    if counters & _HIT_COUNTERS:
        return True
    if counters:
        return False
    return None


def is_cache_hit(evidence: CacheEvidence) -> bool:
    """Whether a finished job was served from a compiler cache (pure, but for resolving a
    compiler path that may link to a cache).

    The cache's own log decides when there is one. Without it (sccache, old ccache) a cached
    compile counts as a hit when both its CPU time and its peak RSS are far below the same
    output's history. A command without a cache (a wrapper, or a compiler path that links to
    one) is never a hit."""
    if evidence.kind != "compile":
        return False
    cache, _ = split_cache_wrapper(evidence.argv)
    if cache is None and not (evidence.argv and masquerading_cache(evidence.argv[0])):
        return False
    if evidence.stats_log:
        verdict = stats_log_says_hit(evidence.stats_log)
        if verdict is not None:
            return verdict
    if not evidence.history_peak_bytes or not evidence.history_wall_s:
        return False
    if evidence.history_wall_s < MIN_HISTORY_WALL_S:
        return False
    return (
        evidence.cpu_s <= HIT_CPU_FRACTION * evidence.history_wall_s
        and evidence.peak_rss_bytes <= HIT_RSS_FRACTION * evidence.history_peak_bytes
    )


MEASURED_SOURCES = ("exact", "output")  # predictions from this very job's own earlier runs


def evidence_from_done(
    argv: Sequence[str],
    kind: str,
    done: Mapping[str, object],
    peak_rss_bytes: int,
    prediction_bytes: int,
    prediction_wall_s: float | None,
    prediction_source: str,
) -> CacheEvidence:
    """The evidence for `is_cache_hit` from what the governor holds when a job finishes: its
    argv and kind, the launcher's `done` message (`cpu_s`, and `cache_log` when ccache ran),
    the job's peak RSS, and its prediction (history only when measured from this job's own
    runs, never a prior or a neighbour's)."""
    measured = prediction_source in MEASURED_SOURCES
    log = done.get("cache_log")
    return CacheEvidence(
        argv=list(argv),
        kind=kind,
        cpu_s=float(done.get("cpu_s", 0.0) or 0.0),  # type: ignore[arg-type]
        peak_rss_bytes=peak_rss_bytes,
        stats_log=str(log) if log else None,
        history_peak_bytes=prediction_bytes if measured else None,
        history_wall_s=prediction_wall_s if measured else None,
    )


# --- chaining user launchers after buildctl's --------------------------------------------------


def _launcher_defines_in(args: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """(launcher defines found, the other args) in CMake arguments; `-D NAME=V` is two args."""
    found: dict[str, str] = {}
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        joined = arg
        step = 1
        if arg == "-D" and index + 1 < len(args):
            joined = "-D" + args[index + 1]
            step = 2
        match = _DEFINE.match(joined)
        if match:
            found[match.group(1)] = match.group(2)
        else:
            rest.extend(args[index : index + step])
        index += step
    return found, rest


ARGS_VARS = ("SKBUILD_CMAKE_ARGS", "CMAKE_ARGS")


def user_launchers(
    cmake_args: Sequence[str], env: Mapping[str, str], args_vars: Sequence[str] = ()
) -> dict[str, str]:
    """The compiler/linker launchers the user asked for, by CMake variable.

    Precedence is CMake's: a `-D` on the command line beats one in the environment variables
    named by `args_vars` (`CMAKE_ARGS`, which scikit-build-core and setuptools CMake extensions
    pass on to CMake; `ARGS_VARS` for `buildctl run`), which beats the
    `CMAKE_<LANG>_COMPILER_LAUNCHER` environment variables (CMake >= 3.17)."""
    found = {name: value for name, value in env.items() if LAUNCHER_VAR.match(name) and value}
    for source in (env.get(var, "") for var in args_vars):
        try:
            tokens = shlex.split(source)
        except ValueError:
            tokens = source.split()
        # scikit-build-core separates SKBUILD_CMAKE_ARGS items with `;`
        tokens = [piece for token in tokens for piece in _split_skbuild(token)]
        found.update(_launcher_defines_in(tokens)[0])
    found.update(_launcher_defines_in(list(cmake_args))[0])
    return {name: value for name, value in found.items() if not _is_buildctl(value)}


def _split_skbuild(token: str) -> list[str]:
    """`-DA=1;-DB=2` (SKBUILD_CMAKE_ARGS) into its items; a single define is left whole."""
    if token.startswith("-D") and ";-D" in token:
        return token.split(";")
    return [token]


def _is_buildctl(value: str) -> bool:
    return "buildctl" in value and "launcher.py" in value


def chain_launchers(ours: Mapping[str, str], theirs: Mapping[str, str]) -> dict[str, str]:
    """buildctl's launcher first, then the user's: `<launcher>;--;ccache` style CMake lists.

    `ours` are buildctl's launcher defines (each a `;` list ending in `--`); a user launcher for
    a variable buildctl does not set is kept as the user gave it."""
    chained = dict(ours)
    for name, value in theirs.items():
        user = value.strip()
        if not user:
            continue
        chained[name] = f"{ours[name]};{user}" if name in ours else user
    return chained


def strip_launcher_defines(cmake_args: Sequence[str]) -> list[str]:
    """The CMake arguments without launcher defines (they are merged into buildctl's)."""
    return _launcher_defines_in(list(cmake_args))[1]
