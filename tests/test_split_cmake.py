"""The CMake hook on a real project: splitting must not change what the library exports.

tests/fixtures/split_project generates (at configure time) one TU of 24 explicit
instantiations and builds it into a SHARED library. It is built unsplit, then through the hook
injected with CMAKE_PROJECT_INCLUDE (forced N, planned N, X-macro form); the defined dynamic
symbols and a checksum computed by calling every instantiation must be identical.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from buildctl.split import cmake_defines

FIXTURE = Path(__file__).parent / "fixtures" / "split_project"
TOOLS = [shutil.which(t) for t in ("cmake", "ninja", "g++")]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all(TOOLS), reason="needs cmake, ninja and g++"),
]
N_ENTRIES = 24


def _configure(build: Path, *unset: str, **defines: str) -> str:
    argv = [
        "cmake",
        "-S",
        str(FIXTURE),
        "-B",
        str(build),
        "-G",
        "Ninja",
        "-DCMAKE_BUILD_TYPE=Release",
        "-DCMAKE_CXX_COMPILER=g++",
    ]
    argv += [f"-U{name}" for name in unset]
    argv += [f"-D{k}={v}" for k, v in defines.items()]
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout + res.stderr


def _build(build: Path) -> Path:
    res = subprocess.run(
        ["ninja", "-C", str(build), "-j", "2"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return build / "libfixture.so"


def _exports(lib: Path) -> set[tuple[str, str, str]]:
    """Defined symbols of .dynsym: (name, type, binding)."""
    out: set[tuple[str, str, str]] = set()
    with open(lib, "rb") as fh:
        dynsym = ELFFile(fh).get_section_by_name(".dynsym")
        assert isinstance(dynsym, SymbolTableSection)
        for sym in dynsym.iter_symbols():
            if sym.name and sym["st_shndx"] != "SHN_UNDEF":
                out.add((sym.name, sym["st_info"]["type"], sym["st_info"]["bind"]))
    return out


def _checksum(lib: Path) -> str:
    # A fresh process per library: every build's libfixture.so has the same soname.
    code = (
        f"import ctypes; f = ctypes.CDLL({str(lib)!r}).fixture_checksum; "
        "f.restype = ctypes.c_double; print(repr(f()))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return res.stdout.strip()


def _compiled_sources(build: Path) -> list[str]:
    text = (build / "build.ninja").read_text()
    return sorted(
        line.split(".cpp.o:", 1)[0].rsplit("/", 1)[-1] + ".cpp"
        for line in text.splitlines()
        if line.startswith("build CMakeFiles/fixture.dir/") and ".cpp.o:" in line
    )


def _plan(build: Path) -> dict[str, Any]:
    (path,) = build.glob("buildctl-split/fixture_instances.cpp-*/split-plan.json")
    return json.loads(path.read_text())


def _hook(**extra: Any) -> dict[str, str]:
    defines = cmake_defines(["fixture_instances\\.cpp$"], python=sys.executable, **extra)
    return defines


@pytest.fixture(scope="module")
def unsplit(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[Any], str]:
    build = tmp_path_factory.mktemp("unsplit")
    _configure(build)
    assert _compiled_sources(build) == ["api.cpp", "fixture_instances.cpp"]
    lib = _build(build)
    symbols = _exports(lib)
    # All 24 entries are exported (reduce/smooth/Accum::run for float and double).
    assert sum("fixture" in name for name, _, _ in symbols) >= N_ENTRIES
    return symbols, _checksum(lib)


def test_forced_then_planned_split_exports_the_same_symbols(
    tmp_path: Path, unsplit: tuple[set[Any], str]
) -> None:
    symbols, checksum = unsplit
    build = tmp_path / "b"

    # Forced N = 4: no probe, 4 shards of 6 entries replace the generated TU in the target.
    log = _configure(build, **_hook(shards=4, budget_bytes=2**30, slots=2))
    assert "buildctl: split fixture_instances.cpp into 4 shards" in log
    sources = _compiled_sources(build)
    assert "fixture_instances.cpp" not in sources
    assert sum(".shard-" in s for s in sources) == 4
    assert _plan(build)["per_shard_entries"] == [6, 6, 6, 6]
    lib = _build(build)
    assert _exports(lib) == symbols
    assert _checksum(lib) == checksum

    # Huge budget: the probe runs and the file stays whole. The probe only compiles if the
    # hook collected the flags: FIXTURE_SCALE from a $<COMPILE_LANGUAGE:CXX> definition,
    # FIXTURE_CFG_OK and a $<BUILD_INTERFACE:...> include dir from an aliased interface target.
    # GCC GC sizing off from here on (it stays in the cache): below 128 MiB per shard its heap
    # size follows the budget, and the budgets below would re-probe (tested on its own in
    # test_gcc_gc_options_reach_the_managed_sources_only).
    log = _configure(
        build,
        "BUILDCTL_SPLIT_SHARDS",
        BUILDCTL_SPLIT_BUDGET=str(2**40),
        BUILDCTL_SPLIT_GCC_GC="OFF",
    )
    assert "buildctl: kept fixture_instances.cpp whole" in log
    # The one unresolvable generator expression ($<CXX_COMPILER_ID:GNU>) is named, not hidden.
    assert "1 compile setting(s) of fixture use generator expressions" in log
    assert _compiled_sources(build) == ["api.cpp", "fixture_instances.cpp"]
    plan = _plan(build)
    assert plan["n"] == 1
    assert plan["probe"] is not None and not plan["probe"]["cached"]
    model = plan["model"]
    assert model["per_entry_peak"] > 0, model
    assert not list(build.glob("buildctl-split/*/*.shard-*"))  # stale shards removed

    # A budget whose per-shard target holds 8.5 entries: ceil(24 / 8) = 3 shards planned.
    target = model["base_peak"] + 8.5 * model["per_entry_peak"]
    budget = math.ceil(target * 2 / 0.8) + 2
    log = _configure(build, BUILDCTL_SPLIT_BUDGET=str(budget), BUILDCTL_SPLIT_SLOTS="2")
    assert "buildctl: split fixture_instances.cpp into 3 shards" in log, log
    plan = _plan(build)
    assert plan["probe"]["cached"]  # a re-configure does not re-probe
    assert plan["n"] == 3 and plan["per_shard_entries"] == [8] * 3
    assert plan["fits"]
    lib = _build(build)
    assert _exports(lib) == symbols
    assert _checksum(lib) == checksum

    # Re-configure with the same inputs: nothing to rebuild.
    _configure(build)
    dry = subprocess.run(
        ["ninja", "-C", str(build), "-n"], capture_output=True, text=True, check=True
    )
    assert "no work to do" in dry.stdout

    # Budget response: a tiny budget gives more shards (one entry each), never more than entries.
    log = _configure(build, BUILDCTL_SPLIT_BUDGET=str(16 * 2**20))
    assert f"split fixture_instances.cpp into {N_ENTRIES} shards" in log
    assert "CMake Warning" in log  # one entry per shard still exceeds the target


def test_xmacro_form_split_exports_the_same_symbols(
    tmp_path: Path, unsplit: tuple[set[Any], str]
) -> None:
    # The fixture's two forms generate the same instantiations, so the unsplit
    # instantiation-form library is the reference here too.
    symbols, checksum = unsplit
    build = tmp_path / "x"
    log = _configure(build, FIXTURE_FORM="xmacro", **_hook(shards=3, budget_bytes=2**30, slots=2))
    assert "split fixture_instances.cpp into 3 shards" in log
    plan = _plan(build)
    assert plan["form"] == "xmacro" and plan["macro"] == "FIXTURE_INST"
    lib = _build(build)
    assert _exports(lib) == symbols
    assert _checksum(lib) == checksum


def test_bad_generated_source_fails_configure_with_file_and_line(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.19)\nproject(bad CXX)\n"
        'file(WRITE "${CMAKE_BINARY_DIR}/gen/bad.cpp" "int a;\\nint b;\\n")\n'
        # `later` first: FATAL_ERROR on bad.cpp stops the walk over targets.
        'add_library(later STATIC "${CMAKE_BINARY_DIR}/gen/later.cpp")\n'
        'add_library(bad STATIC "${CMAKE_BINARY_DIR}/gen/bad.cpp")\n'
    )
    build = tmp_path / "b"
    defines = cmake_defines(["bad.cpp", "later.cpp"], python=sys.executable, shards=2)
    argv = ["cmake", "-S", str(project), "-B", str(build), "-G", "Ninja"]
    argv += [f"-D{k}={v}" for k, v in defines.items()]
    res = subprocess.run(
        argv, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": ""}
    )
    assert res.returncode != 0
    out = " ".join((res.stdout + res.stderr).split())  # CMake wraps long messages
    assert f"{build}/gen/bad.cpp:1: no list of explicit instantiations" in out
    assert "later.cpp does not exist at the end of configure" in out


def _object_flags(build: Path) -> dict[str, str]:
    """Per compiled source of the fixture target: the FLAGS line ninja compiles it with."""
    flags: dict[str, str] = {}
    current = None
    for line in (build / "build.ninja").read_text().splitlines():
        if line.startswith("build CMakeFiles/fixture.dir/") and ".cpp.o:" in line:
            current = line.split(".cpp.o:", 1)[0].rsplit("/", 1)[-1] + ".cpp"
        elif current and line.startswith("  FLAGS = "):
            flags[current] = line[len("  FLAGS = ") :]
        elif not line.startswith("  "):
            current = None
    return flags


def test_gcc_gc_options_reach_the_managed_sources_only(tmp_path: Path) -> None:
    """Configure only: the hook adds the GC params to the shards, or to the original when it
    stays whole, never to the target's other sources; BUILDCTL_SPLIT_GCC_GC=OFF adds none."""
    build = tmp_path / "g"
    gc = "--param=ggc-min-expand=10 --param=ggc-min-heapsize=16384"
    _configure(build, **_hook(shards=2, budget_bytes=2**30, slots=2))
    flags = _object_flags(build)
    shards = [name for name in flags if ".shard-" in name]
    assert len(shards) == 2
    assert all(gc in flags[name] for name in shards), flags
    assert gc not in flags["api.cpp"]
    assert _plan(build)["gcc_gc"]["applied"]

    _configure(build, BUILDCTL_SPLIT_SHARDS="1")  # kept whole, still managed
    flags = _object_flags(build)
    assert sorted(flags) == ["api.cpp", "fixture_instances.cpp"]
    assert gc in flags["fixture_instances.cpp"] and gc not in flags["api.cpp"]

    _configure(build, BUILDCTL_SPLIT_SHARDS="2", BUILDCTL_SPLIT_GCC_GC="OFF")
    flags = _object_flags(build)
    assert not any("ggc-min" in value for value in flags.values()), flags
    assert not _plan(build)["gcc_gc"]["applied"]
