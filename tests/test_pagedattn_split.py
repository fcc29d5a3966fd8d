"""The bundled project built by `buildctl build` with its heavy generated TU split into shards:
the library exports exactly what the unsplit build exports, and every op still matches the
reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from helpers import isolated_env, read_report, run_buildctl

pytestmark = pytest.mark.slow


def exported(library: Path) -> set[str]:
    with library.open("rb") as handle:
        dynsym = ELFFile(handle).get_section_by_name(".dynsym")
        return {
            s.name
            for s in dynsym.iter_symbols()
            if s.name and s["st_shndx"] != "SHN_UNDEF" and s["st_info"]["bind"] != "STB_LOCAL"
        }


KERNEL_PREFIXES = ("_ZN9pagedattn12paged_decode", "_ZN9pagedattn15chunked_prefill")


def kernel_definitions(library: Path) -> set[str]:
    """Every kernel instantiation defined in the library (hidden ones too, from .symtab)."""
    with library.open("rb") as handle:
        symtab = ELFFile(handle).get_section_by_name(".symtab")
        return {
            s.name
            for s in symtab.iter_symbols()
            if s.name.startswith(KERNEL_PREFIXES)
            and s["st_shndx"] != "SHN_UNDEF"
            and s["st_info"]["type"] == "STT_FUNC"
        }


def test_split_build_exports_the_same_symbols_and_passes_the_reference(
    pagedattn_tiny_build, tmp_path: Path
) -> None:
    build = tmp_path / "split"
    result = run_buildctl(
        "build",
        "--preset",
        "tiny",
        "--build-dir",
        str(build),
        "--plain",
        "--report",
        str(tmp_path / "r.json"),
        "--",
        "-DBUILDCTL_SPLIT_SHARDS=3",
        env=isolated_env(tmp_path),
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    shards = sorted((build / "buildctl-split").rglob("*.shard-*.cpp"))
    assert len(shards) == 3
    report = read_report(tmp_path / "r.json")
    outputs = [j["output"] for j in report["jobs"]]
    assert sum(".shard-" in o for o in outputs) == 3
    assert not any(o.endswith("pagedattn_instances.cpp.o") for o in outputs)
    split_events = [e for e in report["events"] if e["kind"] == "split"]
    assert split_events and split_events[0]["data"]["n"] == 3

    split_lib = build / "_pagedattn_ops.so"
    assert exported(split_lib) == exported(pagedattn_tiny_build.library)
    # ...and every kernel instantiation is defined in both (the tiny preset has 12).
    kernels = kernel_definitions(pagedattn_tiny_build.library)
    assert len(kernels) == 12
    assert kernel_definitions(split_lib) == kernels

    site = tmp_path / "site"
    subprocess.run(
        ["cmake", "--install", str(build), "--prefix", str(site)], check=True, capture_output=True
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    check = subprocess.run(
        [sys.executable, "-c", "import pagedattn.reference as r; print(r.self_check(seed=1))"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.startswith("ok: 12 kernels match the reference"), check.stdout
