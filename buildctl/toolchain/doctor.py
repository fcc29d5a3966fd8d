"""`buildctl doctor`: can this machine build the requested target, and if not, what to do.

Every check returns pass / warn / fail with a one-line detail and, unless it passed, the fix.
The check functions are pure over the facts gathered by `run_doctor` (host numbers, tool version
text, probe results, an environment dict), so tests feed them facts instead of machines.

Why one module of about 770 lines: the checks are short, pure and alike (one result type, one
gathering step that decides which apply), and they read best as one list in the order the
report prints them; the command handler is in `toolchain/commands.py`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from buildctl import host as hostmod
from buildctl.errors import BuildctlError
from buildctl.host import HostInfo, format_size
from buildctl.toolchain import oneapi, runtime_wheels
from buildctl.toolchain.compat import Resolution, resolve
from buildctl.toolchain.oneapi import env_command
from buildctl.toolchain.probes import LevelZeroProbe, TorchProbe, probe_level_zero, probe_torch

__all__ = ["Check", "DoctorReport", "env_command", "render", "run_doctor"]

SCHEMA = "buildctl.doctor/1"
# "skip": not checked (nothing to check here), never counted as passed
Status = Literal["pass", "warn", "fail", "skip"]
MIN_CMAKE = "3.21"  # cmake_language(DEFER) for our hooks, CMAKE_PROJECT_INCLUDE
XPU_KERNELS_MIN_CMAKE = "3.26"  # vllm-xpu-kernels: cmake_minimum_required(VERSION 3.26)
DISK_FAIL_BYTES = 5 * 1024**3
DISK_WARN_BYTES = 20 * 1024**3  # a full vllm-xpu-kernels build dir plus staged deps
XPU_INDEX = "https://download.pytorch.org/whl/xpu"


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    status: Status
    detail: str
    fix: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class DoctorReport(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str = Field(default=SCHEMA, alias="schema")
    torch_target: str | None
    python: str
    needed_peak_bytes: int | None
    resolution: Resolution | None
    checks: list[Check]

    @property
    def status(self) -> Status:
        states = {c.status for c in self.checks}
        return "fail" if "fail" in states else "warn" if "warn" in states else "pass"

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (warnings allowed), 1 when a check failed."""
        return 1 if self.status == "fail" else 0

    def to_json(self) -> str:
        data = self.model_dump(mode="json", by_alias=True)
        data["status"] = self.status
        import json

        return json.dumps(data, indent=2)


def _check(name: str, status: Status, detail: str, fix: str = "", **data: Any) -> Check:
    return Check(
        name=name, status=status, detail=detail, fix=fix if status != "pass" else "", data=data
    )


# ----------------------------------------------------------------------------- host


def project_peak(
    project: str, measured: Sequence[Any], shipped: Sequence[Any], shipped_from: str = ""
) -> tuple[int | None, str]:
    """The largest job of the project being built, and where the figure comes from.

    Measured profiles of this project win (by the project recorded with them, or, for records
    without one, by sharing an output path with the shipped profile); then the shipped
    profile. Jobs of other projects in the same database never count.
    """
    mine = [e for e in measured if getattr(e, "project", "") == project]
    if not mine and shipped:
        outputs = {e.output for e in shipped}
        mine = [e for e in measured if not getattr(e, "project", "") and e.output in outputs]
    if mine:
        return max(e.peak_rss_bytes for e in mine), f"measured ({len(mine)} jobs of {project})"
    if shipped:
        where = f" {shipped_from}" if shipped_from else ""
        return max(e.peak_rss_bytes for e in shipped), f"shipped estimate{where}"
    return None, f"no profile of {project} yet"


def shipped_profile_path(project: str, ref: str | None, root: Path) -> Path | None:
    """The shipped profile for `ref`, else the newest shipped one at or before it (estimates
    are per ref; `-unpatched` files describe a build without our patches and are skipped)."""
    folder = root / project
    if not folder.is_dir():
        return None
    candidates: list[tuple[Version, Path]] = []
    for path in folder.glob("*.json"):
        if path.stem.endswith("-unpatched"):
            continue
        try:
            candidates.append((Version(path.stem.lstrip("v")), path))
        except InvalidVersion:
            continue
    if not candidates:
        return None
    if ref is not None:
        try:
            want = Version(ref.lstrip("v"))
        except InvalidVersion:
            want = None
        if want is not None:
            older = [c for c in candidates if c[0] <= want]
            if older:
                return max(older)[1]
    return max(candidates)[1]


def load_shipped_entries(path: Path | None) -> list[Any]:
    if path is None:
        return []
    import json
    from types import SimpleNamespace

    data = json.loads(path.read_text())
    return [SimpleNamespace(**e) for e in data.get("entries", [])]


def check_memory(
    info: HostInfo, needed_peak_bytes: int | None, needed_from: str = ""
) -> list[Check]:
    """RAM, swap and cgroup limit, against what the build is predicted to need."""
    limit = min(info.total_ram_bytes, info.cgroup_limit_bytes or info.total_ram_bytes)
    budget = hostmod.default_budget(info.total_ram_bytes, info.cgroup_limit_bytes)
    ram_detail = (
        f"{format_size(info.total_ram_bytes)} RAM, {format_size(info.available_bytes)} available,"
        f" default budget {format_size(budget)}"
    )
    out: list[Check] = []
    data = {
        "total_ram_bytes": info.total_ram_bytes,
        "available_bytes": info.available_bytes,
        "budget_bytes": budget,
    }
    if needed_from:
        data["needed_from"] = needed_from
        ram_detail += f" (job peaks: {needed_from})"
    if needed_peak_bytes is None:
        out.append(_check("memory", "pass", ram_detail + "; build peak not known yet", **data))
    elif needed_peak_bytes <= budget:
        out.append(
            _check(
                "memory",
                "pass",
                f"{ram_detail}; the build needs ~{format_size(needed_peak_bytes)} at its peak",
                needed_peak_bytes=needed_peak_bytes,
                **data,
            )
        )
    elif needed_peak_bytes <= limit + info.swap_free_bytes:
        out.append(
            _check(
                "memory",
                "warn",
                f"{ram_detail}; the largest job needs ~{format_size(needed_peak_bytes)}: it will "
                "run alone and use swap",
                "use --low-ram (narrow AOT devices, fewer device-link jobs, a smaller kernel "
                "preset) or accept a slower exclusive step",
                needed_peak_bytes=needed_peak_bytes,
                **data,
            )
        )
    else:
        short = needed_peak_bytes - limit - info.swap_free_bytes
        out.append(
            _check(
                "memory",
                "fail",
                f"{ram_detail}; the largest job needs ~{format_size(needed_peak_bytes)}, more "
                f"than RAM + swap ({format_size(limit + info.swap_free_bytes)})",
                f"use --low-ram and narrow AOT devices to your GPU, or add at least "
                f"{format_size(short)} of swap",
                needed_peak_bytes=needed_peak_bytes,
                **data,
            )
        )
    if info.swap_total_bytes > 0:
        out.append(
            _check(
                "swap",
                "pass",
                f"{format_size(info.swap_total_bytes)} swap, "
                f"{format_size(info.swap_free_bytes)} free",
                swap_total_bytes=info.swap_total_bytes,
            )
        )
    elif needed_peak_bytes is not None and needed_peak_bytes > budget:
        out.append(
            _check(
                "swap",
                "warn",
                "no swap: a job above the memory budget cannot spill",
                "add swap (e.g. a swap file) or lower the build's peak with --low-ram",
                swap_total_bytes=0,
            )
        )
    else:
        out.append(
            _check(
                "swap", "pass", "no swap (fine while every job fits the budget)", swap_total_bytes=0
            )
        )
    if info.cgroup_limit_bytes is None:
        out.append(_check("cgroup", "pass", "no cgroup memory limit", cgroup_limit_bytes=None))
    elif info.cgroup_limit_bytes < info.total_ram_bytes:
        out.append(
            _check(
                "cgroup",
                "warn",
                f"cgroup memory limit {format_size(info.cgroup_limit_bytes)} is below RAM "
                f"({format_size(info.total_ram_bytes)}): the budget follows the limit",
                "raise the container/cgroup memory limit if the build needs more",
                cgroup_limit_bytes=info.cgroup_limit_bytes,
            )
        )
    else:
        out.append(
            _check(
                "cgroup",
                "pass",
                f"cgroup limit {format_size(info.cgroup_limit_bytes)} (not below RAM)",
                cgroup_limit_bytes=info.cgroup_limit_bytes,
            )
        )
    return out


def check_disk(free_bytes: int | None, path: str) -> Check:
    if free_bytes is None:
        return _check(
            "disk",
            "warn",
            f"cannot read free space at {path}",
            "check that the build directory exists and is readable",
        )
    detail = f"{format_size(free_bytes)} free at {path}"
    if free_bytes < DISK_FAIL_BYTES:
        return _check(
            "disk",
            "fail",
            detail,
            f"free at least {format_size(DISK_FAIL_BYTES)} (a kernel build dir with "
            "deps takes several GiB)",
            free_bytes=free_bytes,
        )
    if free_bytes < DISK_WARN_BYTES:
        return _check(
            "disk",
            "warn",
            detail,
            f"{format_size(DISK_WARN_BYTES)} or more is comfortable for vllm-xpu-kernels",
            free_bytes=free_bytes,
        )
    return _check("disk", "pass", detail, free_bytes=free_bytes)


# ----------------------------------------------------------------------------- tools

_VERSION_RE = re.compile(r"(\d+\.\d+(?:\.\d+)?)")


def parse_tool_version(text: str) -> str | None:
    match = _VERSION_RE.search(text or "")
    return match.group(1) if match else None


def check_cmake(version_text: str | None, need_xpu: bool) -> Check:
    """cmake >= 3.21 for buildctl's hooks; vllm-xpu-kernels itself wants 3.26."""
    if version_text is None:
        return _check(
            "cmake",
            "fail",
            "cmake not found",
            'pip install "cmake>=3.26" (or your distribution\'s cmake)',
        )
    version = parse_tool_version(version_text)
    if version is None:
        return _check(
            "cmake",
            "fail",
            f"cannot read the cmake version ({version_text[:60]!r})",
            "check that `cmake --version` works",
        )
    if Version(version) < Version(MIN_CMAKE):
        return _check(
            "cmake",
            "fail",
            f"cmake {version} is older than {MIN_CMAKE}",
            'pip install "cmake>=3.26"',
            version=version,
        )
    if need_xpu and Version(version) < Version(XPU_KERNELS_MIN_CMAKE):
        # upstream's cmake_minimum_required stops the configure: not a warning
        return _check(
            "cmake",
            "fail",
            f"cmake {version}: vllm-xpu-kernels requires {XPU_KERNELS_MIN_CMAKE}",
            'pip install "cmake>=3.26" into the build environment',
            version=version,
        )
    return _check("cmake", "pass", f"cmake {version}", version=version)


def check_ninja(version_text: str | None, where: str | None) -> Check:
    if version_text is None:
        return _check(
            "ninja", "fail", "ninja not found", "pip install ninja (or apt install ninja-build)"
        )
    version = parse_tool_version(version_text) or version_text.strip()
    return _check("ninja", "pass", f"ninja {version} ({where})", version=version)


def check_cxx(name: str, version_text: str | None, path: str | None, required: bool) -> Check:
    if version_text is None:
        status: Status = "fail" if required else "warn"
        return _check(
            name,
            status,
            f"{name} not found",
            "apt install g++ (a host C++ compiler is needed for every build)",
        )
    first = version_text.strip().splitlines()[0] if version_text.strip() else "?"
    return _check(name, "pass", f"{first} ({path})", version=parse_tool_version(first))


# ----------------------------------------------------------------------------- torch


def check_torch(probe: TorchProbe, resolution: Resolution | None) -> list[Check]:
    if probe.error and probe.torch is None:
        fix = (
            f"pip install torch=={resolution.torch_release} --index-url {XPU_INDEX}"
            if resolution
            else "install torch into the target Python or pass --python"
        )
        return [
            _check("torch", "fail", f"torch not importable in {probe.python}: {probe.error}", fix)
        ]
    out: list[Check] = []
    abi = {True: "cxx11 ABI", False: "pre-cxx11 ABI", None: "ABI unknown"}[probe.cxx11_abi]
    detail = f"torch {probe.torch} ({abi}, torch.version.xpu={probe.xpu_version}) in {probe.python}"
    data = {"version": probe.torch, "xpu_version": probe.xpu_version, "cxx11_abi": probe.cxx11_abi}
    if resolution is not None:
        try:
            have = Version(probe.torch or "")
        except InvalidVersion:
            have = None
        want = resolution.torch_release
        if have is None or have.base_version != want or have.local != "xpu":
            out.append(
                _check(
                    "torch",
                    "fail",
                    f"{detail}; the target is {resolution.torch}",
                    f"pip install torch=={want} --index-url {XPU_INDEX} (in a venv for this "
                    "target)",
                    **data,
                )
            )
        else:
            out.append(_check("torch", "pass", detail, **data))
    else:
        status: Status = "pass"
        fix = ""
        if probe.xpu_version is None:
            status, fix = "warn", f"install an XPU build of torch from {XPU_INDEX}"
        out.append(_check("torch", status, detail, fix, **data))
    if probe.python_version and resolution is not None:
        supported = resolution.python_supported_versions
        in_cmake_list = not supported or ".".join(probe.python_version.split(".")[:2]) in supported
        if not in_cmake_list:
            out.append(
                _check(
                    "python",
                    "fail",
                    f"Python {probe.python_version} is not one of vllm-xpu-kernels "
                    f"{resolution.kernel_ref}'s PYTHON_SUPPORTED_VERSIONS "
                    f"({', '.join(supported)}): its CMake configure stops",
                    f"create the build venv with Python {supported[-1]}",
                )
            )
        elif SpecifierSet(resolution.python).contains(probe.python_version, prereleases=True):
            out.append(
                _check(
                    "python",
                    "pass",
                    f"Python {probe.python_version} (target needs {resolution.python})",
                )
            )
        else:
            out.append(
                _check(
                    "python",
                    "fail",
                    f"Python {probe.python_version} is outside {resolution.python} "
                    f"(torch {resolution.torch} + vllm-xpu-kernels {resolution.kernel_ref})",
                    f"create the build venv with a Python in {resolution.python}",
                )
            )
    if probe.xpu_available:
        out.append(
            _check(
                "xpu",
                "pass",
                f"{len(probe.xpu_devices)} XPU device(s): " + ", ".join(probe.xpu_devices),
                devices=probe.xpu_devices,
            )
        )
    else:
        out.append(
            _check(
                "xpu",
                "warn",
                "torch sees no XPU device",
                "building works without a GPU; the import smoke test and running the "
                "kernels need one (install the Intel GPU driver / Level Zero)",
            )
        )
    return out


def check_runtime_wheels(
    dists: Mapping[str, str], compiler: str | None, expected: Mapping[str, str] | None
) -> Check:
    runtime = {k: v for k, v in dists.items() if k in runtime_wheels.COMPILER_RUNTIME_DISTS}
    if not runtime:
        return _check(
            "sycl-runtime",
            "skip",
            "not checked: no Intel SYCL runtime wheels are installed next to torch",
            compiler=compiler,
        )
    if compiler is None:
        listed = ", ".join(f"{k} {v}" for k, v in sorted(runtime.items()))
        return _check(
            "sycl-runtime", "skip", f"not checked: {listed} installed, but no compiler pinned"
        )
    problems = runtime_wheels.compare_runtime_wheels(runtime, compiler, expected)
    listed = ", ".join(f"{k} {v}" for k, v in sorted(runtime.items()))
    if not problems:
        return _check("sycl-runtime", "pass", f"{listed} match oneAPI {compiler}")
    status: Status = "fail" if any(p.severity == "fail" for p in problems) else "warn"
    return _check(
        "sycl-runtime",
        status,
        "; ".join(p.message for p in problems),
        problems[0].fix,
        mismatches=[p.dist for p in problems],
    )


def check_torch_vs_compiler(xpu_version: str | None, compiler: str | None) -> Check | None:
    """torch.version.xpu is torch's own reading of the icpx it was built with."""
    built = oneapi.xpu_version_to_compiler(xpu_version)
    if built is None or compiler is None:
        return None
    if oneapi.version_key(built) == oneapi.version_key(compiler):
        return _check(
            "torch-compiler",
            "pass",
            f"torch was built with oneAPI {built}; pinned compiler {compiler}",
        )
    return _check(
        "torch-compiler",
        "fail",
        f"torch was built with oneAPI {built} but the pinned compiler is {compiler}",
        f"build with oneAPI {oneapi.version_key(built)} or install the torch matching "
        f"{oneapi.version_key(compiler)}",
    )


# ----------------------------------------------------------------------------- oneAPI


def check_compiler(found: oneapi.Discovery, pinned: str | None) -> tuple[Check, str | None]:
    """The pinned icpx (when the target needs one); returns the compiler version found."""
    versions = ", ".join(found.versions()) or "none"
    if pinned is None:
        return _check("icpx", "pass", f"no oneAPI compiler needed (found: {versions})"), None
    try:
        install = oneapi.pin(found.installs, pinned)
    except BuildctlError as exc:
        return _check("icpx", "fail", exc.what, exc.fix), None
    full = install.full_version or install.version
    return _check(
        "icpx", "pass", f"{install.describe()}", version=full, vars_script=str(install.vars_script)
    ), full


def check_setvars(found: oneapi.Discovery, pinned: str | None) -> Check | None:
    """The field trap: setvars.sh / compiler/latest pointing at another toolkit than the pin."""
    if pinned is None:
        return None
    want = oneapi.version_key(pinned)
    wrong = {s: v for s, v in found.setvars_selects.items() if oneapi.version_key(v) != want}
    if not wrong:
        return None
    script, version = next(iter(wrong.items()))
    return _check(
        "setvars",
        "warn",
        f"{script} selects oneAPI {version} (compiler/latest), not the pinned {want}",
        f'do not source setvars.sh; in a new shell run: eval "$(buildctl env --compiler {want})"',
    )


def check_mixed(
    environ: Mapping[str, str], pinned: str | None, roots: Sequence[str], latest: Mapping[str, str]
) -> Check:
    conflicts = oneapi.find_mixed_versions(environ, pinned, roots, latest)
    if not conflicts:
        return _check("oneapi-env", "pass", "no mixed oneAPI versions in this environment")
    status: Status = "fail" if any(c.severity == "fail" for c in conflicts) else "warn"
    return _check(
        "oneapi-env",
        status,
        "; ".join(c.message for c in conflicts),
        conflicts[0].fix,
        variables=[c.var for c in conflicts],
    )


def check_level_zero(probe: LevelZeroProbe) -> Check:
    if not probe.loader:
        return _check(
            "level-zero",
            "warn",
            probe.error or "libze_loader.so.1 not found",
            "install the Level Zero loader (Debian/Ubuntu: libze1) and the Intel GPU "
            "driver; building does not need it, running the kernels does",
        )
    if probe.drivers == 0:
        return _check(
            "level-zero",
            "warn",
            f"Level Zero loader present, no driver (zeInit rc=0x{(probe.init_rc or 0):x})",
            "install the Intel GPU compute runtime (intel-level-zero-gpu / "
            "libze-intel-gpu1) to run the kernels",
            drivers=0,
        )
    return _check(
        "level-zero",
        "pass",
        f"{probe.drivers} driver(s), {probe.devices} device(s)",
        drivers=probe.drivers,
        devices=probe.devices,
    )


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    if environ.get("SYCL_CACHE_DIR"):
        return Path(environ["SYCL_CACHE_DIR"])
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME", "~")) / ".cache")
    return Path(base).expanduser() / "buildctl"


def check_cache_dir(path: Path) -> Check:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-", delete=True) as fh:
            fh.write(b"ok")
    except OSError as exc:
        return _check(
            "cache-dir",
            "fail",
            f"cache dir {path} is not writable: {exc}",
            "set SYCL_CACHE_DIR (or XDG_CACHE_HOME) to a writable directory",
        )
    return _check("cache-dir", "pass", f"{path} is writable", path=str(path))


# ----------------------------------------------------------------------------- gathering


def _tool_version(argv: Sequence[str]) -> str | None:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (proc.stdout or proc.stderr) if proc.returncode == 0 else None


def _find_ninja() -> tuple[str | None, str | None]:
    exe = shutil.which("ninja")
    if exe is None:
        try:  # the `ninja` wheel (a buildctl dependency) ships the binary
            import ninja  # type: ignore[import-not-found]

            candidate = Path(ninja.BIN_DIR) / "ninja"
            exe = str(candidate) if candidate.exists() else None
        except ImportError:
            exe = None
    return (_tool_version([exe, "--version"]), exe) if exe else (None, None)


def _guard(name: str, fn: Callable[[], Iterable[Check] | Check | None]) -> list[Check]:
    """One crashing check must not hide the others."""
    try:
        result = fn()
    except Exception as exc:
        return [
            _check(
                name,
                "fail",
                f"the {name} check crashed: {type(exc).__name__}: {exc}",
                "report this as a buildctl bug, with the output of buildctl doctor --json",
            )
        ]
    if result is None:
        return []
    return [result] if isinstance(result, Check) else list(result)


def run_doctor(
    torch: str | None,
    python: str = sys.executable,
    needed_peak_bytes: int | None = None,
    *,
    needed_from: str = "",
    roots: Sequence[str | os.PathLike[str]] = (),
    environ: Mapping[str, str] | None = None,
    disk_path: str | os.PathLike[str] | None = None,
    host_info: HostInfo | None = None,
    torch_probe: TorchProbe | None = None,
    level_zero: LevelZeroProbe | None = None,
) -> DoctorReport:
    """Run every check for building `torch` (e.g. "2.11.0+xpu"; None: just the host) with the
    target interpreter `python`. Keyword arguments let tests and callers supply facts."""
    env = dict(os.environ if environ is None else environ)
    root_strs = [str(r) for r in roots]
    checks: list[Check] = []
    resolution: Resolution | None = None
    if torch is not None:
        try:
            resolution = resolve(torch)
            checks.append(
                _check(
                    "target",
                    "pass",
                    f"torch {resolution.torch} -> vllm-xpu-kernels {resolution.kernel_ref}, oneAPI "
                    f"{resolution.oneapi} ({resolution.libsycl_soname})"
                    + (f", patches: {len(resolution.patches)}" if resolution.patches else ""),
                    kernel_ref=resolution.kernel_ref,
                    oneapi=resolution.oneapi,
                )
            )
        except BuildctlError as exc:
            checks.append(_check("target", "fail", exc.what, exc.fix))
    pinned = resolution.oneapi if resolution else None

    path = str(disk_path or os.getcwd())
    info = host_info
    if info is None:
        try:
            info = hostmod.probe(path)
        except OSError:
            info = hostmod.probe(None)
    checks += _guard("memory", lambda: check_memory(info, needed_peak_bytes, needed_from))
    checks += _guard("disk", lambda: check_disk(info.disk_free_bytes, path))
    checks += _guard(
        "cmake", lambda: check_cmake(_tool_version(["cmake", "--version"]), torch is not None)
    )
    checks += _guard("ninja", lambda: check_ninja(*_find_ninja()))
    for name in ("g++", "gcc"):
        exe = shutil.which(name)
        checks += _guard(
            name,
            lambda exe=exe, name=name: check_cxx(
                name, _tool_version([exe, "--version"]) if exe else None, exe, name == "g++"
            ),
        )

    found = oneapi.discover(root_strs, env)
    compiler: str | None = None

    def _compiler() -> Check:
        nonlocal compiler
        result, compiler = check_compiler(found, pinned)
        return result

    checks += _guard("icpx", _compiler)
    checks += _guard("setvars", lambda: check_setvars(found, pinned))
    checks += _guard(
        "oneapi-env",
        lambda: check_mixed(env, pinned, [str(r) for r in found.roots], found.latest_links),
    )

    tprobe = torch_probe or probe_torch(python)
    checks += _guard("torch", lambda: check_torch(tprobe, resolution))
    checks += _guard(
        "torch-compiler", lambda: check_torch_vs_compiler(tprobe.xpu_version, compiler or pinned)
    )
    checks += _guard(
        "sycl-runtime",
        lambda: check_runtime_wheels(
            tprobe.dists, compiler or pinned, resolution.runtime_wheels if resolution else None
        ),
    )
    checks += _guard("level-zero", lambda: check_level_zero(level_zero or probe_level_zero()))
    checks += _guard("cache-dir", lambda: check_cache_dir(default_cache_dir(env)))
    return DoctorReport(
        torch_target=torch,
        python=python,
        needed_peak_bytes=needed_peak_bytes,
        resolution=resolution,
        checks=checks,
    )


# ----------------------------------------------------------------------------- rendering

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def render(report: DoctorReport, console: Console) -> None:
    """A table for people: check, status, what was found, what to do."""
    title = "buildctl doctor" + (f" — torch {report.torch_target}" if report.torch_target else "")
    table = Table(title=title, show_lines=False, expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("found")
    table.add_column("fix")
    for c in report.checks:
        table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", c.detail, c.fix)
    console.print(table)
    counts = {
        s: sum(1 for c in report.checks if c.status == s) for s in ("pass", "warn", "fail", "skip")
    }
    console.print(
        f"[{_STYLE[report.status]}]{report.status}[/]: {counts['pass']} passed, "
        f"{counts['warn']} warnings, {counts['fail']} failed, {counts['skip']} not checked"
    )
    if report.resolution and report.resolution.notes:
        console.print("notes:")
        for note in report.resolution.notes:
            console.print(f"  - {note}", highlight=False)
