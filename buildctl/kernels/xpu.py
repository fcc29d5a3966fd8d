"""vllm-xpu-kernels: resolve the ref for a torch version, pin the oneAPI compiler, fetch/patch
the source, pre-stage FetchContent dependencies, and derive the low-RAM knobs from the budget.

The build itself goes through the same governed scikit-build-core path as the bundled project:
buildctl's wrapper pyproject points scikit-build-core at upstream's CMakeLists.txt.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from buildctl.errors import BadInput, BuildFailed
from buildctl.kernels import ProjectBuild
from buildctl.toolchain import compat, oneapi, xpu_adapter
from buildctl.toolchain.patches import apply_patches

XPU_SMOKE = """
import torch, vllm_xpu_kernels  # noqa: F401  (loads the extensions against this torch)
print("vllm_xpu_kernels imported against torch", torch.__version__)
"""

# Upstream ships `_C` etc. as cp38-abi3 extensions; scikit-build-core gives the same tag.
UPSTREAM_SCIKIT_BUILD = {
    "wheel": {"py-api": "cp38", "packages": ["vllm_xpu_kernels"]},
    "cmake": {"build-type": "Release"},
}


def fetch_source(repo: str, ref: str, cache_dir: Path) -> Path:
    """A shallow clone of `ref` into the cache (once); offline hosts pass --source instead."""
    dest = cache_dir / "src" / f"vllm-xpu-kernels-{ref}"
    if (dest / "CMakeLists.txt").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["git", "clone", "--quiet", "--depth", "1", "--branch", ref, repo, str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildFailed(
            f"could not clone {repo} at {ref}: {proc.stderr.strip().splitlines()[-1:]}",
            f"clone it yourself (git clone --branch {ref} {repo}) and pass --source DIR",
        )
    return dest


def xpu_project(
    *,
    torch: str,
    source: Path | None,
    preset: str | None,
    low_ram: bool,
    budget_bytes: int,
    cache_dir: Path,
    oneapi_roots: list[str],
    compiler: str | None,
    aot: str | None,
    dep_overrides: dict[str, tuple[str, str]] | None = None,
) -> ProjectBuild:
    resolution = compat.resolve(torch)
    manifest = xpu_adapter.load_manifest()
    found = oneapi.discover(oneapi_roots)
    install = oneapi.pin(found.installs, compiler or resolution.oneapi)
    captured = oneapi.capture_env(install)
    build_env = oneapi.pinned_environ(captured, os.environ, [str(r) for r in found.roots])
    if install.icpx is None:
        raise BadInput(f"{install.describe()} has no icpx", "reinstall the oneAPI DPC++ compiler")
    # scikit-build-core would otherwise take CC/CXX from Python's sysconfig (gcc).
    build_env["CXX"] = str(install.icpx)
    build_env["CC"] = str(install.icpx.with_name("icx"))
    if source is None:
        src = fetch_source(str(manifest.data["repo"]), resolution.kernel_ref, cache_dir)
    else:
        src = source.resolve()
        if not (src / "CMakeLists.txt").is_file():
            raise BadInput(
                f"--source {source} has no CMakeLists.txt",
                "pass the top directory of a vllm-xpu-kernels checkout",
            )
    patches = xpu_adapter.patches_for(resolution)
    if patches:
        apply_patches(src, patches)
    staged = xpu_adapter.prestage_deps(
        manifest, resolution.kernel_ref, cache_dir / "deps", overrides=dep_overrides
    )
    xpu_adapter.populate_submodules(src, staged)
    aot_devices = xpu_adapter.aot_devices_for(aot, manifest) if aot else None
    defines = xpu_adapter.cmake_defines_for(
        resolution, budget_bytes, aot_devices, preset, low_ram, staged
    )
    defines["CMAKE_PROJECT_INCLUDE"] = str(xpu_adapter.HOOK_PATH)
    defines["CMAKE_CXX_COMPILER"] = str(install.icpx)
    has_pyproject = (src / "pyproject.toml").is_file() and "scikit_build_core" in (
        src / "pyproject.toml"
    ).read_text()
    return ProjectBuild(
        name="vllm-xpu-kernels",
        source_dir=src,
        cmake_defines=defines,
        build_env=build_env,
        smoke_snippet="" if has_pyproject else XPU_SMOKE,
        source_ref=resolution.kernel_ref,
        patches=patches,
        dist_name=None if has_pyproject else "vllm-xpu-kernels",
        base_version=None if has_pyproject else resolution.kernel_ref.lstrip("v"),
        scikit_build=None if has_pyproject else UPSTREAM_SCIKIT_BUILD,
    )
