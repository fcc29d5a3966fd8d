"""Library families by soname: torch's own, external GPU/oneAPI runtimes, and system libraries.

Shared by `verify` (what to check, what to leave to the runtime) and `repair` (what auditwheel must
never graft). Globs match sonames (`libsycl.so.8`), so versioned names need a trailing `*`.
"""

from __future__ import annotations

import fnmatch

# torch/lib: found through `import torch`, never bundled (a second libtorch in a wheel is a crash).
TORCH_GLOBS: tuple[str, ...] = (
    "libtorch*.so*",
    "libc10*.so*",
    "libshm*.so*",
    "libcaffe2*.so*",
    "libaoti_custom_ops.so*",
    # torch wheels ship their own libgomp; a second OpenMP runtime in the process misbehaves.
    "libgomp*.so*",
)

# Runtimes that come from the user's driver/toolkit or from pip packages torch declares
# (nvidia-*, intel-sycl-rt, ...). They are not inside the torch wheel, so a wheel-based verify can
# not see them: symbols that may come from them are reported "external, not checked".
EXTERNAL_FAMILIES: dict[str, tuple[str, ...]] = {
    "cuda": (
        "libcuda.so*",
        "libcudart.so*",
        "libcublas.so*",
        "libcublasLt.so*",
        "libcudnn*.so*",
        "libcufft*.so*",
        "libcufile*.so*",
        "libcurand.so*",
        "libcusolver*.so*",
        "libcusparse*.so*",
        "libcupti.so*",
        "libnccl.so*",
        "libnvrtc*.so*",
        "libnvJitLink.so*",
        "libnvToolsExt.so*",
        "libnvshmem*.so*",
        "libnvidia-*.so*",
    ),
    "sycl/oneapi": (
        "libsycl.so*",
        "libsycl-*.so*",
        "libze_loader.so*",
        "libur_loader.so*",
        "libur_adapter*.so*",
        "libOpenCL.so*",
        "libintlc.so*",
        "libimf.so*",
        "libsvml.so*",
        "libirng.so*",
        "libiomp5.so*",
        "libmkl*.so*",
        "libtbb*.so*",
        "libccl.so*",
        "libpti*.so*",
        "libumf.so*",
    ),
    "rocm": (
        "libamdhip64.so*",
        "libhsa-runtime64.so*",
        "librocblas.so*",
        "libhipblas*.so*",
        "libMIOpen.so*",
        "librccl.so*",
        "libroctracer64.so*",
        "libroctx64.so*",
    ),
}

EXTERNAL_GLOBS: tuple[str, ...] = tuple(g for globs in EXTERNAL_FAMILIES.values() for g in globs)

# What `auditwheel repair` must leave outside the wheel: torch plus every external runtime.
NEVER_GRAFT_GLOBS: tuple[str, ...] = TORCH_GLOBS + EXTERNAL_GLOBS


def matches(soname: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(soname, g) for g in globs)


def external_family(soname: str) -> str | None:
    """`libsycl.so.8` -> "sycl/oneapi"; None when the soname is no external runtime's."""
    for family, globs in EXTERNAL_FAMILIES.items():
        if matches(soname, globs):
            return family
    return None


def is_torch_lib(soname: str) -> bool:
    return matches(soname, TORCH_GLOBS)
