"""The Intel runtime wheels torch pulls in (intel-sycl-rt, intel-cmplr-lib-*, ...) checked
against the oneAPI compiler a build uses: a runtime of another toolkit is another libsycl soname.
Pure: installed versions in, mismatches out (`buildctl doctor` reports them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from buildctl.toolchain.oneapi import version_key

# Wheels that carry pieces of the DPC++ runtime; their version follows the compiler's.
COMPILER_RUNTIME_DISTS = (
    "intel-sycl-rt",
    "intel-cmplr-lib-rt",
    "intel-cmplr-lib-ur",
    "intel-cmplr-lic-rt",
    "dpcpp-cpp-rt",
    "intel-opencl-rt",
    "intel-openmp",
)


@dataclass(frozen=True)
class RuntimeMismatch:
    dist: str
    installed: str
    expected: str
    severity: Literal["fail", "warn"]
    message: str
    fix: str


def compare_runtime_wheels(
    installed: Mapping[str, str], compiler_version: str, expected: Mapping[str, str] | None = None
) -> list[RuntimeMismatch]:
    """Intel runtime wheels (pulled in by torch) whose toolkit version differs from the compiler.

    `expected` holds exact pins where known (torch 2.11 pins intel-sycl-rt 2025.3.2); the
    toolkit (year.minor) must match in any case: a 2026 runtime is libsycl.so.9, 2025 is .so.8.
    """
    want = version_key(compiler_version)
    out: list[RuntimeMismatch] = []
    for dist in COMPILER_RUNTIME_DISTS:
        have = installed.get(dist)
        if not have:
            continue
        exact = (expected or {}).get(dist)
        if version_key(have) != want:
            out.append(
                RuntimeMismatch(
                    dist,
                    have,
                    exact or want,
                    "fail",
                    f"{dist} {have} belongs to oneAPI {version_key(have)}, the compiler is {want}",
                    f"build with oneAPI {version_key(have)} (the torch runtime) or install "
                    f"the torch build that pins {dist} {want}.x",
                )
            )
        elif exact and have != exact:
            out.append(
                RuntimeMismatch(
                    dist,
                    have,
                    exact,
                    "warn",
                    f"{dist} {have} differs from the {exact} torch pins (same toolkit {want})",
                    f"pip install {dist}=={exact} (or reinstall torch) to match what torch was "
                    "tested with",
                )
            )
    return out
