"""vllm-xpu-kernels: read the checkout's tag, check it against `--torch`, pin the oneAPI compiler,
stage the build-owned copy of the sources (patches, dependencies), and pass what upstream's own
setup.py passes to CMake, plus the low-RAM knobs derived from the budget.

The tag decides: patches, sycl-tla/oneDNN revisions and the torch a checkout builds with come
from its matrix row, never from a guess based on `--torch`. The user's checkout is only read;
everything we change lives in a copy under the cache (`buildctl.toolchain.source_copy`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from buildctl.errors import BadInput, BuildFailed
from buildctl.kernels import BUILD_PYTHON, ProjectBuild
from buildctl.toolchain import compat, oneapi, upstream, xpu_adapter
from buildctl.toolchain.source_copy import copy_dir_for, stage_source

XPU_SMOKE = """
import torch, vllm_xpu_kernels  # noqa: F401  (loads the extensions against this torch)
print("vllm_xpu_kernels imported against torch", torch.__version__)
"""

# Upstream ships `_C` etc. as cp38-abi3 extensions (py_limited_api=True in its setup.py);
# scikit-build-core gives the same tag.
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


def torch_for_checkout(source: Path) -> str:
    """The torch a checkout builds with (for `buildctl build` without --torch)."""
    matrix = compat.load_matrix()
    row = upstream.ref_for_identity(upstream.identify_checkout(source, matrix), matrix)
    return f"{row.builds_with_torch}+xpu"


def _resolve_for_checkout(
    checkout: upstream.UpstreamCheckout, torch: str | None, matrix: compat.CompatMatrix
) -> compat.Resolution:
    row = upstream.ref_for_identity(checkout.identity, matrix)
    if torch is None:
        torch = f"{row.builds_with_torch}+xpu"
    release = compat.parse_torch_version(torch).base_version
    upstream.check_torch_fits(row, release, matrix)
    return compat.resolve(torch, matrix, kernel_ref=row.ref)


def _link_profile(ref: str, manifest: xpu_adapter.XpuManifest) -> tuple[int | None, int | None]:
    """(bytes per inner device-link job, how many heavy device links the build has) from the
    shipped profile of the ref (estimated at upstream's 16 inner jobs); (None, None) without
    one: then the manifest's per-job estimate sizes the inner jobs for one link at a time, and
    the governor runs one at a time."""
    from buildctl.data import PROFILES_DIR
    from buildctl.toolchain.doctor import load_shipped_entries, shipped_profile_path

    entries = load_shipped_entries(shipped_profile_path("vllm-xpu-kernels", ref, PROFILES_DIR))
    peaks = [e.peak_rss_bytes for e in entries if e.kind == "link"]
    if not peaks:
        return None, None
    inner = int(manifest.data["link"]["upstream_parallel_link_jobs"])
    heavy = [p for p in peaks if 2 * p >= max(peaks)]
    return xpu_adapter.per_inner_job_bytes(peaks, inner), len(heavy)


def check_aot_supported(aot: str | None, checkout: upstream.UpstreamCheckout) -> None:
    """Tags whose CMakeLists.txt hard-codes AOT_DEVICES ignore VLLM_XPU_AOT_DEVICES: --aot would
    silently do nothing there."""
    if aot is None or checkout.cmake.aot_from_env:
        return
    tag = checkout.identity.tag or "this checkout"
    raise BadInput(
        f"vllm-xpu-kernels {tag} hard-codes AOT_DEVICES ({checkout.cmake.aot_devices}) and "
        "ignores VLLM_XPU_AOT_DEVICES, so --aot cannot narrow the devices",
        "drop --aot (the build compiles for the devices above), or build v0.1.4 or later",
    )


def xpu_project(
    *,
    torch: str | None,
    source: Path | None,
    preset: str | None,
    low_ram: bool,
    budget_bytes: int,
    cache_dir: Path,
    oneapi_roots: list[str],
    compiler: str | None,
    aot: str | None,
    dep_overrides: dict[str, tuple[str, str]] | None = None,
    environ: Mapping[str, str] | None = None,
    link_peak_bytes: int | None = None,
) -> ProjectBuild:
    env_in = dict(os.environ if environ is None else environ)
    matrix = compat.load_matrix()
    manifest = xpu_adapter.load_manifest()
    if source is None:
        if torch is None:
            raise BadInput("no --source and no --torch", "pass --torch 2.12.0+xpu or --source DIR")
        wanted = compat.resolve(torch, matrix)
        src = fetch_source(str(manifest.data["repo"]), wanted.kernel_ref, cache_dir)
    else:
        src = source.resolve()
        if not (src / "CMakeLists.txt").is_file():
            raise BadInput(
                f"--source {source} has no CMakeLists.txt",
                "pass the top directory of a vllm-xpu-kernels checkout",
            )
    checkout = upstream.read_checkout(src, matrix)
    resolution = _resolve_for_checkout(checkout, torch, matrix)
    check_aot_supported(aot, checkout)
    aot_devices = xpu_adapter.aot_devices_for(aot, manifest) if aot else None

    found = oneapi.discover(oneapi_roots)
    install = oneapi.pin(found.installs, compiler or resolution.oneapi)
    captured = oneapi.capture_env(install)
    build_env = oneapi.pinned_environ(captured, os.environ, [str(r) for r in found.roots])
    if install.icpx is None:
        raise BadInput(f"{install.describe()} has no icpx", "reinstall the oneAPI DPC++ compiler")
    # scikit-build-core would otherwise take CC/CXX from Python's sysconfig (gcc).
    build_env["CXX"] = str(install.icpx)
    build_env["CC"] = str(install.icpx.with_name("icx"))
    # upstream's cmake/toolchain.cmake picks the compiler from $CMPLR_ROOT
    build_env.setdefault("CMPLR_ROOT", str(install.icpx.parent.parent))

    patches = xpu_adapter.patches_for(resolution)
    staged = xpu_adapter.prestage_deps(
        manifest, resolution.kernel_ref, cache_dir / "deps", overrides=dep_overrides
    )
    copy = stage_source(
        src,
        copy_dir_for(src, cache_dir / "sources", "vllm-xpu-kernels"),
        patches=patches,
        links=staged.submodules,
    )
    per_inner, device_links = _link_profile(resolution.kernel_ref, manifest)
    per_job = link_peak_bytes or per_inner or manifest.per_link_job_bytes
    cores = os.cpu_count() or 1
    defines = xpu_adapter.cmake_defines_for(
        resolution,
        budget_bytes,
        aot_devices,
        preset,
        low_ram,
        staged,
        per_link_job_bytes=per_job,
        device_links=device_links,
        cores=cores,
    )
    # The governor enforces the plan the inner-job count was sized for: each device link
    # predicted from its own -fsycl-max-parallel-link-jobs, and at most that many at once
    # (the same plan cmake_defines_for made from the same figures).
    concurrent = 1
    if device_links is not None:
        plan = xpu_adapter.plan_device_links(budget_bytes, per_job, device_links, cores=cores)
        per_job, concurrent = plan.per_inner_job_bytes, plan.concurrent_links
    defines.update(
        xpu_adapter.upstream_defines(
            checkout.setup,
            checkout.cmake,
            copy.path,
            python=BUILD_PYTHON,
            fetchcontent_dir=cache_dir / "deps" / "fetchcontent",
            environ=env_in,
        )
    )
    defines["CMAKE_PROJECT_INCLUDE"] = str(xpu_adapter.HOOK_PATH)
    defines["CMAKE_CXX_COMPILER"] = str(install.icpx)
    pyproject = copy.path / "pyproject.toml"
    has_skbuild = pyproject.is_file() and "scikit_build_core" in pyproject.read_text()
    identity = checkout.identity
    scikit_build = dict(UPSTREAM_SCIKIT_BUILD)
    if checkout.cmake.cmake_min:
        scikit_build["cmake"] = {
            **scikit_build["cmake"],
            "version": f">={checkout.cmake.cmake_min}",
        }
    return ProjectBuild(
        name=checkout.name,
        source_dir=copy.path,
        cmake_defines=defines,
        build_env=build_env,
        smoke_snippet="" if has_skbuild else XPU_SMOKE,
        source_ref=identity.tag if identity.exact and identity.tag else identity.describe(),
        source_commit=identity.commit or resolution.kernel_commit,
        source_dirty=identity.dirty,
        patches=patches,
        dist_name=None if has_skbuild else checkout.name,
        base_version=None
        if has_skbuild
        else upstream.scm_version(identity.tag or resolution.kernel_ref, identity.distance),
        scikit_build=None if has_skbuild else scikit_build,
        source_torch=resolution.torch,
        device_link_job_bytes=per_job,
        max_device_links=concurrent,
    )


def xpu_build_settings(
    *,
    torch: str | None,
    source: Path | None,
    preset: str | None,
    low_ram: bool,
    budget_bytes: int,
    cache_dir: Path,
    oneapi_roots: list[str],
    compiler: str | None,
    aot: str | None,
    python: str,
    dep_overrides: dict[str, tuple[str, str]] | None = None,
) -> tuple[ProjectBuild, dict[str, str], Path]:
    """`buildctl build --project vllm-xpu-kernels`: (project, CMake defines with the build
    Python filled in, default build dir). The caller runs cmake/ninja with project.build_env."""
    from buildctl.kernels import fill_build_python

    project = xpu_project(
        torch=torch,
        source=source,
        preset=preset,
        low_ram=low_ram,
        budget_bytes=budget_bytes,
        cache_dir=cache_dir,
        oneapi_roots=oneapi_roots,
        compiler=compiler,
        aot=aot,
        dep_overrides=dep_overrides,
    )
    return (
        project,
        fill_build_python(project.cmake_defines, python),
        default_build_dir(cache_dir, source or project.source_dir),
    )


def default_build_dir(cache_dir: Path, source: Path) -> Path:
    """`buildctl build`'s dir for a checkout: in the cache, never inside the user's tree."""
    return copy_dir_for(source.resolve(), cache_dir.resolve() / "build", "vllm-xpu-kernels")
