"""`buildctl wheel`: one verified, torch-tagged wheel per torch version.

resolve torch -> isolated env with exactly that torch -> scikit-build-core build under the
governor (per-torch build dir, so reruns are incremental) -> provenance -> auditwheel repair ->
symbol-level verify against that torch -> import smoke test in that env -> atomic move into
the wheelhouse and its per-torch index. A wheel that fails any step never reaches the wheelhouse.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildctl import host
from buildctl.build import find_tool
from buildctl.errors import BadInput, BuildFailed
from buildctl.govern.cache import chain_launchers, user_launchers
from buildctl.govern.session import GovernedSession, SessionOptions
from buildctl.kernels import fill_build_python
from buildctl.wheel.guard import add_import_guard
from buildctl.wheel.index import add_wheels, write_pages
from buildctl.wheel.provenance import (
    BuildProvenance,
    SourceRef,
    add_provenance,
    compiler_identity,
    patch_records,
    torch_identity,
)
from buildctl.wheel.repair import repair_wheel
from buildctl.wheel.reproducible import source_date_epoch
from buildctl.wheel.smoke import TorchEnv, ensure_torch_env, run_snippet, smoke_test
from buildctl.wheel.torchlink import wheel_links_torch
from buildctl.wheel.torchspec import TorchTarget, local_label, parse_torch, requires_dist
from buildctl.wheel.verify import TorchLibs, verify_wheel
from buildctl.wheel.wrapper import read_pyproject, wrapper_pyproject, write_wrapper


@dataclass
class WheelRequest:
    torch: str
    project: str
    source_dir: Path
    out_dir: Path
    cache_dir: Path
    cmake_defines: dict[str, str] = field(default_factory=dict)
    build_env: dict[str, str] = field(default_factory=dict)
    smoke_snippet: str = ""
    source_ref: str = "working tree"
    patches: list[Path] = field(default_factory=list)
    index_url: str | None = None
    extra_index_urls: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    allow_prerelease: bool = False
    ninja_width: int = 16
    verify_only_against: Path | None = None
    # pip's -C/--config-settings for the build backend (scikit-build-core), e.g.
    # "cmake.build-type=Debug"; CMake defines go in cmake_defines.
    config_settings: list[str] = field(default_factory=list)
    # For sources without a scikit-build-core pyproject (upstream vllm-xpu-kernels): from the
    # kernel manifest.
    dist_name: str | None = None
    base_version: str | None = None
    scikit_build: dict | None = None
    # When source_dir is a build-owned copy: the user's checkout commit, for provenance.
    source_commit: str | None = None
    source_dirty: bool = False


@dataclass
class WheelOutcome:
    wheel: Path
    label: str
    torch: str
    size_bytes: int
    wall_s: float
    peak_rss_bytes: int
    verify_summary: str
    plat: str
    build_dir: Path
    grafted: list[str]
    uses_torch: bool = True  # False: no torch label or pin (the extension does not link torch)


def parse_defines(items: Sequence[str]) -> dict[str, str]:
    """`NAME=VALUE` / `NAME:TYPE=VALUE` (CMake's -D syntax) into defines (pure)."""
    defines = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.split(":", 1)[0].strip()
        if not sep or not name:
            raise BadInput(f"-D {item!r} is not NAME=VALUE", "write it like -D USE_FOO=ON")
        defines[name] = value
    return defines


def build_dir_for(req: WheelRequest, target: TorchTarget) -> Path:
    """One build dir per (project, torch target, config): abi3-style tags are the same for every
    torch, so the key must carry torch and the configuration, never just the wheel tag."""
    blob = json.dumps(
        {"defines": req.cmake_defines, "src": str(req.source_dir)}
        | ({"config": req.config_settings} if req.config_settings else {}),
        sort_keys=True,
    )
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return req.cache_dir / "build" / f"{req.project}-{local_label(target)}-{digest}"


def _ensure_build_backend(env: TorchEnv) -> None:
    probe = run_snippet(env, "import scikit_build_core")
    if probe.ok:
        return
    # The env has no pip of its own: buildctl's pip drives it (`pip --python`).
    proc = subprocess.run(
        [*pip_for(env), "install", "-q", "--disable-pip-version-check", "scikit-build-core>=0.10"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildFailed(
            f"could not install scikit-build-core into {env.path}: {proc.stderr.strip()[-400:]}",
            "check that pip can reach PyPI (or a mirror) from this machine",
        )


def pip_for(env: TorchEnv) -> list[str]:
    return [sys.executable, "-m", "pip", "--python", str(env.python)]


def _check_wheel_version(wheel: Path, label: str) -> str:
    version = wheel.name.split("-")[1]
    if not version.endswith("+" + label):
        raise BuildFailed(
            f"{wheel.name} does not carry the torch label +{label}",
            "report this as a buildctl bug: the wrapper sets the version",
        )
    return version


def _check_plain_wheel(wheel: Path) -> None:
    """A wheel of an extension that does not use torch: no torch label, no torch pin added."""
    version = wheel.name.split("-")[1]
    if "+" in version:
        raise BuildFailed(
            f"{wheel.name} carries a local label although it does not use torch",
            "report this as a buildctl bug: the plain wrapper sets the version",
        )


def _metadata_requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    return [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


# The Intel runtime wheels an XPU torch pulls in: the SYCL/UR/oneAPI sonames and symbols of an
# XPU extension are checked against exactly these (see buildctl/wheel/runtime_libs.py).
XPU_RUNTIME_DISTS = ("intel-sycl-rt", "intel-cmplr-lib-ur", "intel-cmplr-lib-rt")


def _runtime_for(target: TorchTarget, env: TorchEnv) -> list:
    if target.variant != "xpu":
        return []
    from buildctl.wheel.runtime_libs import load_runtime

    return load_runtime(list(XPU_RUNTIME_DISTS), python=env.python)


def source_ref(project: str, source_dir: Path, ref: str) -> SourceRef:
    """The commit the sources came from, when they are in git (dirty = uncommitted changes)."""

    def git(*args: str) -> str:
        # A user's tree is read-only to us: `git status` must not refresh its index.
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
        proc = subprocess.run(
            ["git", "-C", str(source_dir), *args], capture_output=True, text=True, check=False,
            env=env,
        )
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--", ".")) if commit else False
    return SourceRef(project=project, ref=ref, commit=commit, dirty=dirty)


def build_wheel(req: WheelRequest, opts: SessionOptions, console: object = None) -> WheelOutcome:
    started = time.monotonic()
    target = parse_torch(req.torch, allow_prerelease=req.allow_prerelease)
    label = local_label(target)
    if not (req.source_dir / "CMakeLists.txt").is_file():
        raise BadInput(
            f"{req.source_dir} has no CMakeLists.txt",
            "pass --source pointing at the kernel project's top directory",
        )
    pyproject = read_pyproject(req.source_dir)
    if not pyproject and req.scikit_build is None:
        raise BadInput(
            f"{req.source_dir} has no pyproject.toml and buildctl has no manifest for it",
            "add a scikit-build-core pyproject.toml, or build it with --project NAME",
        )
    def wrapper_text(torch_label: str, torch_requirement: str) -> str:
        return wrapper_pyproject(
            pyproject,
            req.source_dir,
            torch_label,
            torch_requirement,
            name=req.dist_name,
            version=req.base_version,
            scikit_build=req.scikit_build,
        )

    labelled_wrapper = wrapper_text(label, requires_dist(target))
    env = ensure_torch_env(
        req.cache_dir / "envs" / target.spec,
        target,
        index_url=req.index_url,
        extra_index_urls=req.extra_index_urls,
        find_links=req.find_links,
    )
    _ensure_build_backend(env)
    build_dir = build_dir_for(req, target)
    wrapper = write_wrapper(build_dir.with_name(build_dir.name + "-wrapper"), labelled_wrapper)
    opts.build_dir = build_dir
    epoch = source_date_epoch()
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=req.cache_dir))
    try:
        raw_dir = staging / "raw"
        with GovernedSession(opts) as session:
            # A user launcher (ccache, from -D or the environment) runs after buildctl's.
            theirs = user_launchers([f"-D{k}={v}" for k, v in req.cmake_defines.items()],
                                    os.environ)
            project_defines = {k: v for k, v in req.cmake_defines.items() if k not in theirs}
            defines = fill_build_python(
                {**chain_launchers(session.cmake_defines(), theirs), **project_defines},
                str(env.python),
            )
            env_vars = {
                **os.environ,
                **req.build_env,
                "SOURCE_DATE_EPOCH": str(epoch),
                "CMAKE_BUILD_PARALLEL_LEVEL": str(req.ninja_width),
                "CMAKE_GENERATOR": "Ninja",
                "CMAKE_MAKE_PROGRAM": find_tool("ninja"),
            }

            def pip_wheel(wrapper_dir: Path) -> list[str]:
                return [
                    *pip_for(env),
                    "wheel",
                    "-v",
                    "--no-build-isolation",
                    "--no-deps",
                    "--disable-pip-version-check",
                    "-w",
                    str(raw_dir),
                    str(wrapper_dir),
                    f"-Cbuild-dir={build_dir}",
                    *[f"-Ccmake.define.{k}={v}" for k, v in defines.items()],
                    *[f"-C{item}" for item in req.config_settings],
                ]

            rc = session.run(pip_wheel(wrapper), cwd=wrapper, env=env_vars)
            built = sorted(raw_dir.glob("*.whl"))
            uses_torch = True
            if rc == 0 and len(built) == 1 and not wheel_links_torch(built[0]):
                # It works with any torch: no label, no pin. Packaged again from the same warm
                # build dir (CMake has nothing to rebuild), never renamed.
                uses_torch = False
                built[0].unlink()
                plain = write_wrapper(
                    build_dir.with_name(build_dir.name + "-plain-wrapper"), wrapper_text("", "")
                )
                rc = session.run(pip_wheel(plain), cwd=plain, env=env_vars)
        report = session.report
        if session.interrupted:
            raise KeyboardInterrupt
        if rc != 0:
            failed = [j.output for j in report.jobs if j.status in ("failed", "hung", "crashed")]
            raise BuildFailed(
                f"the wheel build for torch {target.spec} failed"
                + (f" at {', '.join(failed[:3])}" if failed else ""),
                "read the compiler output above; rerun continues incrementally in "
                + str(build_dir),
            )
        wheels = sorted(raw_dir.glob("*.whl"))
        if len(wheels) != 1:
            raise BuildFailed(
                f"expected one wheel in {raw_dir}, found {len(wheels)}",
                "check the project's pyproject.toml",
            )
        raw = wheels[0]
        if uses_torch:
            _check_wheel_version(raw, label)
        else:
            _check_plain_wheel(raw)
        if uses_torch and requires_dist(target) not in _metadata_requires(raw):
            raise BuildFailed(
                f"{raw.name} does not pin {requires_dist(target)}",
                "report this as a buildctl bug: the wrapper sets the pin",
            )
        cxx = defines.get("CMAKE_CXX_COMPILER") or shutil.which("c++") or "c++"
        provenance = BuildProvenance(
            source=SourceRef(
                project=req.project,
                ref=req.source_ref,
                commit=req.source_commit,
                dirty=req.source_dirty,
            )
            if req.source_commit
            else source_ref(req.project, req.source_dir, req.source_ref),
            patches=patch_records(req.patches),
            compilers={"CXX": compiler_identity(cxx)},
            torch=torch_identity(env.python, target.variant),
            cmake_defines={k: v for k, v in req.cmake_defines.items()},
            source_date_epoch=epoch,
        )
        add_provenance(raw, provenance)
        if uses_torch:
            add_import_guard(raw, target)
        repaired_dir = staging / "repaired"
        repaired = repair_wheel(raw, repaired_dir, torch_lib_dir=env.torch_lib_dir)
        against = (
            TorchLibs.from_path(req.verify_only_against)
            if req.verify_only_against
            else TorchLibs.from_installed(env.python)
        )
        result = verify_wheel(repaired.wheel, against, runtime=_runtime_for(target, env))
        result.raise_for_failure()
        if req.smoke_snippet:
            smoke_test(env, repaired.wheel, req.smoke_snippet).raise_for_failure(req.project)
        placed = add_wheels(req.out_dir, label, [repaired.wheel])
        write_pages(req.out_dir)
        final = placed[0]
        return WheelOutcome(
            wheel=final,
            label=label,
            torch=target.spec,
            size_bytes=final.stat().st_size,
            wall_s=round(time.monotonic() - started, 2),
            peak_rss_bytes=report.peak_total_rss_bytes,
            verify_summary=result.render().splitlines()[0] if result.render() else "ok",
            plat=repaired.plat,
            build_dir=build_dir,
            grafted=list(repaired.grafted),
            uses_torch=uses_torch,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def describe(outcome: WheelOutcome) -> str:
    return (
        f"{outcome.wheel} ({host.format_size(outcome.size_bytes)}, {outcome.plat}); "
        f"torch {outcome.torch}; peak RSS {host.format_size(outcome.peak_rss_bytes)}; "
        f"{outcome.wall_s:.0f}s"
    )
