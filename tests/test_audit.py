"""`buildctl audit`: which runtimes and torch releases a wheel's sonames and undefined symbols
fit (pure over ELF indexes), and on real published wheels when they are in the cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from buildctl.wheel.audit import Candidate, fit, wheel_needs
from buildctl.wheel.elfsyms import ElfIndex, UndefinedSymbol

ROOT = Path(__file__).resolve().parent.parent


def _elf(soname: str | None, needed: list[str], undefined: list[str], defined=()) -> ElfIndex:
    return ElfIndex(
        soname=soname,
        needed=needed,
        runpath=[],
        machine="EM_X86_64",
        elfclass=64,
        defined=frozenset(defined),
        undefined=[UndefinedSymbol(n) for n in undefined],
    )


EXT = _elf(
    "_C.abi3.so",
    [
        "libsycl.so.9",
        "libtorch.so",
        "libc10.so",
        "libc10_xpu.so",
        "libkern.so",
        "libze_loader.so.1",
    ],
    [
        "_ZN4sycl3_V15queue6submitEv",
        "_ZN3c106detail14torchCheckFailEv",
        "_ZN3c103xpu6deviceEv",
        "inside_symbol",
    ],
)
INSIDE = _elf("libkern.so", [], [], defined={"inside_symbol"})

SYCL8 = Candidate(
    "runtime",
    "intel-sycl-rt 2025.3.2",
    frozenset({"libsycl.so.8"}),
    frozenset({"_ZN4sycl3_V15queue6submitEv"}),
)
SYCL9 = Candidate(
    "runtime",
    "intel-sycl-rt 2026.0.0",
    frozenset({"libsycl.so.9"}),
    frozenset({"_ZN4sycl3_V15queue6submitEv"}),
)
TORCH_CPU = Candidate(
    "torch",
    "torch 2.13.0+cpu",
    frozenset({"libtorch.so", "libc10.so"}),
    frozenset({"_ZN3c106detail14torchCheckFailEv"}),
)
TORCH_OLD = Candidate(
    "torch", "torch 2.12.0+cu130", frozenset({"libtorch.so", "libc10.so"}), frozenset()
)
TORCH_XPU = Candidate(
    "torch",
    "torch 2.13.0+xpu",
    frozenset({"libtorch.so", "libc10.so", "libc10_xpu.so"}),
    frozenset({"_ZN3c106detail14torchCheckFailEv", "_ZN3c103xpu6deviceEv"}),
)
ALL = [SYCL8, SYCL9, TORCH_CPU, TORCH_OLD, TORCH_XPU]


def test_needs_leave_out_what_the_wheel_ships() -> None:
    needs = wheel_needs([EXT, INSIDE])
    assert "libkern.so" not in needs.needed and "inside_symbol" not in needs.undefined
    assert "libsycl.so.9" in needs.needed


@pytest.mark.parametrize(
    "candidate, status, words",
    [
        (SYCL8, "no", "needs libsycl.so.9; it ships libsycl.so.8"),
        (SYCL9, "fits", ""),
        (TORCH_XPU, "fits", ""),
        (TORCH_OLD, "no", "undefined symbols it does not define"),  # torchCheckFail is gone
        (TORCH_CPU, "unknown", "no libc10_xpu.so"),  # core fits, XPU libs absent: not "fits"
    ],
)
def test_fit(candidate: Candidate, status: str, words: str) -> None:
    result = fit(wheel_needs([EXT, INSIDE]), candidate, ALL)
    assert result.status == status, result
    assert words in result.note


def test_driver_libraries_are_not_asked_of_runtime_wheels() -> None:
    result = fit(wheel_needs([EXT, INSIDE]), SYCL9, ALL)
    assert "libze_loader.so.1" not in result.missing_sonames


def test_axis_the_wheel_does_not_use_is_unknown() -> None:
    plain = _elf("_C.so", ["libc.so.6"], ["printf"])
    assert fit(wheel_needs([plain]), SYCL9, ALL).status == "unknown"


# ----------------------------------------------------------------------------- real wheels

CACHE = ROOT / ".buildctl-cache"
PUBLISHED = CACHE / "published" / "vllm_xpu_kernels-0.1.16.2-cp38-abi3-manylinux_2_28_x86_64.whl"
RUNTIMES = {
    v: sorted((CACHE / "audit-wheels").glob(f"intel_*-{v}-*.whl")) for v in ("2025.3.2", "2026.0.0")
}
TORCH_212 = sorted((CACHE / "audit-wheels").glob("torch-2.12.0-*.whl"))


@pytest.mark.slow
@pytest.mark.skipif(
    not (PUBLISHED.is_file() and all(len(w) == 3 for w in RUNTIMES.values()) and TORCH_212),
    reason="needs the published vllm-xpu-kernels 0.1.16.2 wheel, intel runtime 2025.3.2/2026.0.0 "
    "and torch 2.12.0 wheels in .buildctl-cache (buildctl audit downloads them with pip once)",
)
def test_published_0_1_16_2_through_the_cli() -> None:
    args = [
        sys.executable,
        "-m",
        "buildctl.cli",
        "audit",
        str(PUBLISHED),
        "--json",
        "--cache-dir",
        str(CACHE),
    ]
    for wheels in RUNTIMES.values():
        args += ["--runtime", str(next(w for w in wheels if "sycl_rt" in w.name))]
    args += ["--torch", str(TORCH_212[0])]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    status = {f["label"].split(",")[0]: f["status"] for f in report["fits"]}
    assert "libsycl.so.9" in report["needed"]
    assert status["intel_sycl_rt 2025.3.2"] == "no"  # libsycl.so.8
    assert status["torch 2.12.0+cu130"] == "no"  # a libc10 symbol 2.12 does not define


def test_system_symbols_re_exported_by_one_torch_do_not_count() -> None:
    """torch 2.11's CUDA wheel re-exports some libstdc++ string members; a wheel using them
    gets them from the system's libstdc++, whichever torch is installed."""
    std = "_ZNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEE7reserveEm"
    ext = _elf("_C.so", ["libtorch.so", "libc10.so"], [std, "_ZN3c106detail14torchCheckFailEv"])
    reexporting = Candidate(
        "torch",
        "torch 2.11.0+cu130",
        frozenset({"libtorch.so", "libc10.so"}),
        frozenset({std, "_ZN3c106detail14torchCheckFailEv"}),
    )
    plain = Candidate(
        "torch",
        "torch 2.13.0+cpu",
        frozenset({"libtorch.so", "libc10.so"}),
        frozenset({"_ZN3c106detail14torchCheckFailEv"}),
    )
    assert fit(wheel_needs([ext]), plain, [reexporting, plain]).status == "fits"


def test_matrix_records_what_published_wheels_prove() -> None:
    from buildctl.toolchain.compat import load_matrix

    matrix = load_matrix()
    rows = {r.version: r for r in matrix.published_wheels}
    assert {"0.1.12.1", "0.1.16.2"} <= set(rows)
    for row in rows.values():
        assert row.requires_torch is None  # none of them pins torch
        assert row.libsycl_soname == "libsycl.so.9"
        assert row.runtime_fit("2025.3.2") == "no" and row.runtime_fit("2026.0.0") == "fits"
        assert row.torch_fit("2.14.0") == "unknown"  # never audited: unknown, not a guess
    # the user: torch 2.12 XPU learns before installing that 0.1.16.2 cannot load
    assert rows["0.1.16.2"].torch_fit("2.12.0") == "no"
    assert "NotImplementedError" in rows["0.1.16.2"].evidence["2.12.0"]


@pytest.mark.slow
@pytest.mark.skipif(
    not (PUBLISHED.is_file() and all(len(w) == 3 for w in RUNTIMES.values()) and TORCH_212),
    reason="needs the published wheel and the runtime/torch wheels in .buildctl-cache",
)
def test_audit_reproduces_the_matrix_row() -> None:
    from buildctl.toolchain.compat import load_matrix
    from buildctl.wheel.audit import audit, runtime_candidate, torch_candidate

    row = next(r for r in load_matrix().published_wheels if r.version == "0.1.16.2")
    cache = CACHE / "audit-wheels"
    runtimes = [runtime_candidate(v, cache) for v in ("2025.3.2", "2026.0.0")]
    report = audit(PUBLISHED, runtimes, [torch_candidate(str(TORCH_212[0]), cache)])
    got = {f.label.split()[-1].split("+")[0]: f.status for f in report.fits}
    assert got == {
        "2025.3.2": row.runtime["2025.3.2"],
        "2026.0.0": row.runtime["2026.0.0"],
        "2.12.0": row.torch["2.12.0"],
    }
