"""The vllm-xpu-kernels adapter: turn a resolution + memory budget into CMake defines.

Pure: `load_manifest` (reads one TOML file), `aot_devices_for`, `link_jobs_for_budget`,
`preset_defines`, `cmake_defines_for`. I/O: `prestage_deps` (git clones into a cache),
`populate_submodules`, `apply_patches` (re-exported from `patches`).

Low-RAM levers, cheapest first: narrow the AOT devices to the installed GPU; cap the inner
device-link jobs (`-fsycl-max-parallel-link-jobs`, rewritten by `xpu_hook.cmake`) from the budget;
the `default` kernel-config preset (v0.1.10+); `-fno-sycl-rdc` (opt-in).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildctl.data import KERNELS_DIR, PATCHES_DIR
from buildctl.errors import BadInput, BuildFailed
from buildctl.host import parse_size
from buildctl.toolchain.compat import DepRev, KernelRef, Resolution, load_matrix
from buildctl.toolchain.patches import PatchResult, apply_patches, patches_for_ref
from buildctl.toolchain.upstream import CMakeFacts, SetupFacts

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - scikit-build-core pulls in tomli on 3.10
    import tomli as tomllib

__all__ = [
    "HOOK_PATH",
    "LinkPlan",
    "PatchResult",
    "StagedDeps",
    "XpuManifest",
    "aot_devices_for",
    "apply_patches",
    "cmake_defines_for",
    "default_manifest_path",
    "device_link_prediction",
    "link_jobs_for_budget",
    "load_manifest",
    "patches_for",
    "per_inner_job_bytes",
    "plan_device_links",
    "populate_submodules",
    "prestage_deps",
    "upstream_defines",
]

HOOK_PATH = Path(__file__).with_name("xpu_hook.cmake")
MAX_LINK_JOBS = 16  # upstream's hard-coded value; more never helps


def default_manifest_path() -> Path:
    return KERNELS_DIR / "vllm-xpu-kernels" / "manifest.toml"


def default_patch_root() -> Path:
    return PATCHES_DIR / "vllm-xpu-kernels"


@dataclass(frozen=True)
class XpuManifest:
    path: Path
    data: dict[str, Any]

    @property
    def gpus(self) -> dict[str, str]:
        return dict(self.data["aot"]["gpus"])

    @property
    def default_aot_devices(self) -> str:
        return str(self.data["aot"]["default_devices"])

    @property
    def presets(self) -> dict[str, dict[str, str]]:
        return dict(self.data["kernel_configs"]["presets"])

    @property
    def per_link_job_bytes(self) -> int:
        return parse_size(str(self.data["link"]["per_link_job_bytes"]))

    @property
    def low_ram_preset(self) -> str:
        return str(self.data["low_ram"]["default_preset"])

    def dep(self, key: str) -> dict[str, Any]:
        return dict(self.data["deps"][key])


def load_manifest(path: str | os.PathLike[str] | None = None) -> XpuManifest:
    target = Path(path) if path is not None else default_manifest_path()
    try:
        data = tomllib.loads(target.read_text())
    except OSError as exc:
        raise BadInput(f"cannot read kernel manifest {target}: {exc}", "check the path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"kernel manifest {target} is not valid TOML: {exc}", "fix it") from exc
    for key in ("aot", "kernel_configs", "link", "deps", "low_ram"):
        if key not in data:
            raise BadInput(
                f"kernel manifest {target} has no [{key}] table",
                "compare it with kernels/vllm-xpu-kernels/manifest.toml",
            )
    return XpuManifest(target, data)


# ----------------------------------------------------------------------------- AOT devices

_NOISE = re.compile(r"\(r\)|\(tm\)|intel|graphics|data center gpu|arc|pro|series|gpu")


def _gpu_key(name: str) -> str:
    text = _NOISE.sub(" ", name.lower())
    return re.sub(r"[^a-z0-9]", "", text)


def aot_devices_for(gpu_name: str | Sequence[str], manifest: XpuManifest | None = None) -> str:
    """GPU names ("B70", "Intel(R) Arc(TM) Pro B60 Graphics", "pvc", "bmg-g21-a0") -> the
    comma-separated ocloc device list for VLLM_XPU_AOT_DEVICES. Unknown names are BadInput."""
    manifest = manifest or load_manifest()
    names = [gpu_name] if isinstance(gpu_name, str) else list(gpu_name)
    gpus = manifest.gpus
    device_names = set(gpus.values()) | set(manifest.default_aot_devices.split(","))
    out: list[str] = []
    for raw in names:
        for part in [p.strip() for p in raw.split(",") if p.strip()]:
            # an ocloc device name passes through; anything else is looked up as a GPU name
            device = part if part in device_names else gpus.get(_gpu_key(part), "")
            if not device:
                known = ", ".join(sorted(gpus))
                raise BadInput(
                    f"unknown Intel GPU {part!r} for AOT compilation",
                    f"use a GPU ({known}) or an ocloc device name "
                    f"({', '.join(sorted(device_names))})",
                )
            if device not in out:
                out.append(device)
    if not out:
        raise BadInput("no GPU given for AOT devices", "name the GPU, e.g. --gpu b70")
    return ",".join(out)


# ----------------------------------------------------------------------------- link jobs


def link_jobs_for_budget(
    budget_bytes: int,
    per_link_job_bytes: int,
    *,
    concurrent_links: int = 1,
    reserved_bytes: int = 0,
    max_jobs: int = MAX_LINK_JOBS,
) -> int:
    """Inner device-link jobs (1..16) so that `concurrent_links` links fit in the budget.

    Every inner job holds the whole fat-module bitcode plus an LLVM context and the AOT backend,
    so a link's peak is roughly jobs x per-job; the governor runs at most `concurrent_links`
    links at once.
    """
    if per_link_job_bytes <= 0:
        raise BadInput("per-link-job memory must be positive", "pass a size such as 6G")
    usable = max(0, budget_bytes - reserved_bytes)
    jobs = usable // (per_link_job_bytes * max(1, concurrent_links))
    return int(max(1, min(max_jobs, MAX_LINK_JOBS, jobs)))


@dataclass(frozen=True)
class LinkPlan:
    """How the device links of one build share the budget: `concurrent_links` links at once,
    each with `inner_jobs` inner link jobs (-fsycl-max-parallel-link-jobs)."""

    inner_jobs: int
    concurrent_links: int
    per_inner_job_bytes: int
    link_peak_bytes: int  # one device link's predicted peak at `inner_jobs`
    fits: bool  # False: even one link with one inner job is above the budget (it runs alone)


def per_inner_job_bytes(link_peaks: Sequence[int], measured_inner_jobs: int) -> int:
    """A device link's peak grows with its inner jobs (each holds the whole fat-module bitcode,
    an LLVM context and the AOT backend): the largest link peak divided by the inner jobs it
    was measured (or estimated) with."""
    if not link_peaks or measured_inner_jobs < 1:
        raise BadInput("no device-link profile to size link jobs from", "pass a link profile")
    return -(-max(link_peaks) // measured_inner_jobs)


def plan_device_links(
    budget_bytes: int,
    per_inner_job: int,
    device_links: int,
    *,
    cores: int,
    reserved_bytes: int = 0,
    max_jobs: int = MAX_LINK_JOBS,
) -> LinkPlan:
    """Pick (concurrent links L, inner jobs K) with L x K x per-job inside the budget.

    Most inner parallelism the cores can use first (L x K up to `cores`); among equals, more
    links at once: a device link's bitcode linking and post-link steps are serial, only the
    device-code backend runs in the inner jobs, so overlapping links shortens the tail. This
    replaces "one device link at a time" (the PR #347 builders: four libraries x 4 inner jobs
    in 96 GB).
    """
    if per_inner_job <= 0:
        raise BadInput("per-link-job memory must be positive", "pass a size such as 6G")
    usable = max(0, budget_bytes - reserved_bytes)
    best: tuple[int, int] | None = None
    for links in range(1, max(1, device_links) + 1):
        # no more inner jobs than the cores can run beside the other links: memory saved
        inner = min(
            max_jobs, MAX_LINK_JOBS, usable // (links * per_inner_job), -(-max(1, cores) // links)
        )
        if inner < 1:
            break
        key = (min(links * inner, max(1, cores)), links)
        if best is None or key > (min(best[0] * best[1], max(1, cores)), best[0]):
            best = (links, inner)
    if best is None:
        return LinkPlan(1, 1, per_inner_job, per_inner_job, fits=False)
    links, inner = best
    return LinkPlan(inner, links, per_inner_job, inner * per_inner_job, fits=True)


_LINK_JOBS_RE = re.compile(r"-fsycl-max-parallel-link-jobs=(\d+)")


def device_link_prediction(argv: Sequence[str], per_inner_job: int) -> int | None:
    """A device link's predicted peak from its own command line: inner jobs x per-job bytes.
    None for commands that are not SYCL device links. For the governor: a link measured with
    16 inner jobs is predicted at its new K, not at its old peak or a 1.5 GiB prior."""
    jobs = None
    for arg in argv:
        match = _LINK_JOBS_RE.search(arg)
        if match:
            jobs = int(match.group(1))
    if jobs is None:
        return None
    return max(1, jobs) * per_inner_job


# ----------------------------------------------------------------------------- defines


@dataclass
class StagedDeps:
    """Pre-staged configure-time dependencies for an offline configure."""

    defines: dict[str, str] = field(default_factory=dict)  # FETCHCONTENT_SOURCE_DIR_* etc.
    submodules: dict[str, Path] = field(default_factory=dict)  # path in source tree -> checkout
    checkouts: dict[str, Path] = field(default_factory=dict)  # dep key -> checkout


def preset_defines(
    resolution: Resolution, preset: str | None, manifest: XpuManifest
) -> dict[str, str]:
    if preset is None:
        return {}
    presets = manifest.presets
    if preset not in presets:
        raise BadInput(
            f"unknown kernel config preset {preset!r}", f"use one of: {', '.join(sorted(presets))}"
        )
    if not resolution.kernel_config_presets:
        raise BadInput(
            f"vllm-xpu-kernels {resolution.kernel_ref} has no kernel config presets (they "
            f"exist from {manifest.data['kernel_configs']['since']}); it builds every variant",
            "drop --preset, or build a ref that has presets",
        )
    chosen = presets[preset]
    return {
        "VLLM_PAGED_DECODE_CONFIG": chosen["paged_decode"],
        "VLLM_CHUNK_PREFILL_CONFIG": chosen["chunk_prefill"],
    }


def cmake_defines_for(
    resolution: Resolution,
    budget: int,
    aot_devices: str | None,
    preset: str | None,
    low_ram: bool,
    staged_deps: StagedDeps | Mapping[str, str] | None,
    *,
    per_link_job_bytes: int | None = None,
    concurrent_links: int = 1,
    no_rdc: bool = False,
    manifest: XpuManifest | None = None,
    device_links: int | None = None,
    cores: int = 1,
) -> dict[str, str]:
    """CMake cache variables for one vllm-xpu-kernels configure (inject the hook separately:
    `-DCMAKE_PROJECT_INCLUDE=HOOK_PATH`, or beside other hooks through `kernels.merge_hooks`).

    `aot_devices` None keeps upstream's four-device default; "" disables AOT (JIT at run time).
    With `low_ram` and no explicit preset, the `default` preset is used where the ref has presets.
    """
    manifest = manifest or load_manifest()
    per_job = per_link_job_bytes or manifest.per_link_job_bytes
    if device_links is None:
        jobs = link_jobs_for_budget(budget, per_job, concurrent_links=concurrent_links)
        defines: dict[str, str] = {"BUILDCTL_SYCL_LINK_JOBS": str(jobs)}
    else:
        plan = plan_device_links(budget, per_job, device_links, cores=cores)
        defines = {
            "BUILDCTL_SYCL_LINK_JOBS": str(plan.inner_jobs),
            "BUILDCTL_SYCL_CONCURRENT_LINKS": str(plan.concurrent_links),
        }
    if aot_devices is not None:
        defines["BUILDCTL_XPU_AOT_DEVICES"] = aot_devices
        defines["BUILDCTL_XPU_XE2_AOT_DEVICES"] = aot_devices
    if preset is None and low_ram and resolution.kernel_config_presets:
        preset = manifest.low_ram_preset
    defines.update(preset_defines(resolution, preset, manifest))
    if no_rdc:
        defines["BUILDCTL_SYCL_NO_RDC"] = "ON"
    if staged_deps is not None:
        staged = staged_deps.defines if isinstance(staged_deps, StagedDeps) else staged_deps
        defines.update({k: str(v) for k, v in staged.items()})
    return defines


def upstream_defines(
    setup: SetupFacts,
    cmake: CMakeFacts,
    source_dir: Path,
    *,
    python: str,
    fetchcontent_dir: Path,
    environ: Mapping[str, str],
) -> dict[str, str]:
    """What the tag's own setup.py passes to CMake, read from that setup.py.

    Left out on purpose: `VLLM_PYTHON_PATH` (upstream only assigns it to an unused variable),
    `CMAKE_JOB_POOLS` (the governor admits every job), the ccache/sccache launchers (the
    governor's launcher takes that slot), and `FETCHCONTENT_BASE_DIR=<source>/.deps` (it points
    at the build-owned cache instead, so nothing is written into the sources).
    """
    defines: dict[str, str] = {
        "CMAKE_BUILD_TYPE": environ.get("CMAKE_BUILD_TYPE") or "Release",
    }
    if setup.toolchain_file:
        path = Path(setup.toolchain_file)
        defines["CMAKE_TOOLCHAIN_FILE"] = str(path if path.is_absolute() else source_dir / path)
    if setup.target_device:
        defines["VLLM_TARGET_DEVICE"] = environ.get("VLLM_TARGET_DEVICE", setup.default_device)
    if setup.python_executable or cmake.needs_python_executable:
        defines["VLLM_PYTHON_EXECUTABLE"] = python
    if setup.fetchcontent_base_dir:
        defines["FETCHCONTENT_BASE_DIR"] = str(fetchcontent_dir)
    for option in setup.kernel_options:
        value = environ.get(option, "ON").strip().upper()
        defines[option] = "OFF" if value in ("0", "OFF", "FALSE", "NO") else "ON"
    for name in setup.forwarded_env:
        if environ.get(name):
            defines[name] = environ[name]
    return defines


def aot_env(aot_devices: str | None) -> dict[str, str]:
    """The same AOT choice as environment variables (for drivers that run upstream's setup.py)."""
    if aot_devices is None:
        return {}
    return {"VLLM_XPU_AOT_DEVICES": aot_devices, "VLLM_XPU_XE2_AOT_DEVICES": aot_devices}


# ----------------------------------------------------------------------------- deps


def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )


def _has_commit(repo: Path, rev: str) -> bool:
    return _git("cat-file", "-e", f"{rev}^{{commit}}", cwd=repo).returncode == 0


def _stage_one(key: str, url: str, rev: str, cache_dir: Path) -> Path:
    """Clone `url` once into a bare mirror, then check `rev` out into its own directory."""
    mirror = cache_dir / "git" / f"{key}.git"
    checkout = cache_dir / "src" / f"{key}-{rev[:12]}"
    stamp = checkout.with_name(checkout.name + ".stamp")
    if checkout.is_dir() and stamp.is_file() and stamp.read_text().strip() == rev:
        return checkout  # staged before: no network, no git
    mirror.parent.mkdir(parents=True, exist_ok=True)
    if not mirror.is_dir():
        done = _git("clone", "--quiet", "--mirror", url, str(mirror))
        if done.returncode != 0:
            shutil.rmtree(mirror, ignore_errors=True)
            raise BuildFailed(
                f"cannot clone {key} from {url}: {done.stderr.strip()}",
                f"pre-stage it by hand: git clone --mirror {url} {mirror}",
            )
    if not _has_commit(mirror, rev):
        fetched = _git("fetch", "--quiet", "origin", "+refs/*:refs/*", cwd=mirror)
        if fetched.returncode != 0 or not _has_commit(mirror, rev):
            raise BuildFailed(
                f"{key} revision {rev} is not in {url}",
                f"check the revision in the compatibility matrix or update {mirror}",
            )
    checkout.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{checkout.name}.", dir=checkout.parent))
    try:
        for args in (
            ("clone", "--quiet", "--shared", "--no-checkout", str(mirror), str(tmp)),
            ("-C", str(tmp), "checkout", "--quiet", "--detach", rev),
        ):
            done = _git(*args)
            if done.returncode != 0:
                raise BuildFailed(
                    f"cannot check out {key} {rev}: {done.stderr.strip()}",
                    f"remove {mirror} and retry",
                )
        shutil.rmtree(checkout, ignore_errors=True)
        tmp.rename(checkout)  # atomic: a crash never leaves a half checkout under the final name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stamp.write_text(rev + "\n")
    return checkout


def _ref_row(ref: str | KernelRef) -> KernelRef:
    return ref if isinstance(ref, KernelRef) else load_matrix().ref(ref)


def prestage_deps(
    manifest: XpuManifest,
    ref: str | KernelRef,
    cache_dir: str | os.PathLike[str],
    *,
    overrides: Mapping[str, tuple[str, str]] | None = None,
) -> StagedDeps:
    """Clone sycl-tla and oneDNN at the ref's revisions into `cache_dir` (once) and return the
    CMake defines that make configure use them offline.

    `overrides` maps a dep key ("sycl-tla", "oneDNN") to (url, revision), e.g. a local mirror.
    Refs before v0.1.11 take oneDNN as the git submodule `third_party/oneDNN`: it is returned in
    `submodules` for `populate_submodules`.
    """
    row = _ref_row(ref)
    cache = Path(cache_dir)
    staged = StagedDeps()
    deps: list[tuple[str, DepRev]] = [("sycl-tla", row.sycl_tla), ("oneDNN", row.onednn)]
    for key, dep in deps:
        info = manifest.dep(key)
        url, rev = (overrides or {}).get(key, (dep.url, dep.revision))
        checkout = _stage_one(key, url, rev, cache)
        staged.checkouts[key] = checkout
        if dep.mode == "submodule":
            staged.submodules[dep.path or str(info.get("submodule_path"))] = checkout
            continue
        name = dep.name or str(info["fetchcontent_name"])
        staged.defines[f"FETCHCONTENT_SOURCE_DIR_{name.upper()}"] = str(checkout)
        if key == "sycl-tla":
            staged.defines["VLLM_CUTLASS_SRC_DIR"] = str(checkout)
    # Every dep is staged (or we raised above): FetchContent must not reach for the network.
    staged.defines["FETCHCONTENT_FULLY_DISCONNECTED"] = "ON"
    return staged


def populate_submodules(src_dir: str | os.PathLike[str], staged: StagedDeps) -> list[Path]:
    """Point empty submodule folders (e.g. third_party/oneDNN) at the staged checkouts."""
    src = Path(src_dir)
    linked: list[Path] = []
    for rel, checkout in staged.submodules.items():
        target = src / rel
        if target.is_symlink():
            if Path(os.path.realpath(target)) == checkout.resolve():
                continue
            target.unlink()
        elif target.is_dir():
            if any(target.iterdir()):
                continue  # already populated (e.g. cloned with --recursive): leave it
            target.rmdir()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(checkout.resolve(), target_is_directory=True)
        linked.append(target)
    return linked


def patches_for(resolution: Resolution, patch_root: Path | None = None) -> list[Path]:
    """The patch files the matrix lists for the resolved ref."""
    return patches_for_ref(patch_root or default_patch_root(), resolution.patches)
