"""The vllm-xpu-kernels path of `buildctl wheel`, end to end on our fixture (no icpx here):
oneAPI discovery and pinning on a field-report-shaped install tree (2025.3 + a newer 2026.0 that
`setvars.sh` would pick), the pinned environment, offline pre-staged deps, budget-derived link
parallelism through the CMake hook, a governed scikit-build-core build, repair and verify.

What is not real here: the stand-in `icpx` hands compiles to g++, and the wheel is built against
torch 2.13.0+cpu (no XPU torch is installable on this machine) while the ref comes from the
torch 2.12.0+xpu row of the compatibility matrix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from helpers import ROOT
from oneapi_trees import make_field_trap_tree

from buildctl.govern.session import SessionOptions
from buildctl.kernels.xpu import xpu_project
from buildctl.wheel.pipeline import WheelRequest, build_wheel

FIXTURE = ROOT / "tests" / "fixtures" / "xpu_kernels_fixture"
GiB = 1024**3
pytestmark = pytest.mark.slow

ICPX_TO_GXX = """#!/bin/sh
# stand-in icpx that really compiles: version banner like oneAPI, everything else to g++
if [ "$1" = "--version" ]; then
  echo "Intel(R) oneAPI DPC++/C++ Compiler 2025.3.1 (2025.3.1.20251023)"
  exit 0
fi
exec g++ "$@"
"""
ICX_TO_GCC = '#!/bin/sh\nexec gcc "$@"\n'


def _git_repo_from(src: Path, dest: Path) -> str:
    shutil.copytree(src, dest)
    run = {"cwd": dest, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)
    subprocess.run(["git", "add", "-A"], **run)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], **run
    )
    return subprocess.run(["git", "rev-parse", "HEAD"], text=True, **run).stdout.strip()


def test_xpu_project_pins_2025_3_and_builds_a_verified_wheel(tmp_path: Path) -> None:
    root = make_field_trap_tree(tmp_path)
    good = root / "compiler" / "2025.3" / "bin"
    (good / "icpx").write_text(ICPX_TO_GXX)
    (good / "icx").write_text(ICX_TO_GCC)
    (good / "icx").chmod(0o755)
    overrides = {
        key: (
            str(tmp_path / "up" / key),
            _git_repo_from(FIXTURE / "standins" / key, tmp_path / "up" / key),
        )
        for key in ("sycl-tla", "oneDNN")
    }
    source = tmp_path / "src"
    commit = _git_repo_from(FIXTURE, source)
    # the fixture stands in for v0.1.11.1 (oneDNN by FetchContent, kernel config presets)
    subprocess.run(["git", "tag", "v0.1.11.1"], cwd=source, check=True)
    project = xpu_project(
        torch="2.12.0+xpu",
        source=source,
        preset=None,
        low_ram=True,
        budget_bytes=16 * GiB,
        cache_dir=tmp_path / "cache",
        oneapi_roots=[str(root)],
        compiler=None,
        aot="B70",
        dep_overrides=overrides,
    )
    # Pinned to the compiler the torch row needs, not to what `latest`/setvars.sh select.
    assert "/compiler/2025.3" in project.build_env["CMPLR_ROOT"]
    assert "2026.0" not in project.build_env["PATH"]
    assert project.build_env["CXX"] == str(good / "icpx")
    # K inner jobs x L concurrent device links from 16 GiB and the shipped link profile
    link_jobs = int(project.cmake_defines["BUILDCTL_SYCL_LINK_JOBS"])
    concurrent = int(project.cmake_defines["BUILDCTL_SYCL_CONCURRENT_LINKS"])
    assert link_jobs * concurrent * 5 * GiB <= 16 * GiB and link_jobs * concurrent >= 2
    assert project.cmake_defines["BUILDCTL_XPU_AOT_DEVICES"] == "bmg-g31-a0"
    assert project.source_ref == "v0.1.11.1"
    assert project.source_commit == commit
    assert project.source_dir != source  # built from the build-owned copy

    cache = ROOT / ".buildctl-cache"  # the torch env is shared with the other wheel tests
    req = WheelRequest(
        torch="2.13.0+cpu",
        project=project.name,
        source_dir=project.source_dir,
        out_dir=tmp_path / "wheelhouse",
        cache_dir=cache,
        cmake_defines=project.cmake_defines,
        build_env=project.build_env,
        source_ref=project.source_ref,
        source_commit=project.source_commit,
        patches=project.patches,
    )
    opts = SessionOptions(
        build_dir=tmp_path / "unused",
        budget_bytes=16 * GiB,
        slots=2,
        report_path=tmp_path / "report.json",
        plain=True,
        profile_db=tmp_path / "profiles.sqlite",
    )
    outcome = build_wheel(req, opts)
    assert outcome.wheel.is_file()
    # the label and torch pin only when the extension links torch (the fixture's does not)
    assert ("+pt213cpu" in outcome.wheel.name) == outcome.uses_torch
    from buildctl.wheel.provenance import read_provenance

    recorded = read_provenance(outcome.wheel)
    assert recorded is not None and recorded.source.commit == commit  # the user's checkout
    assert recorded.source.ref == "v0.1.11.1"
    hook = json.loads((outcome.build_dir / "buildctl" / "xpu_hook.json").read_text())
    assert hook["link_jobs"] == link_jobs
    report = json.loads((tmp_path / "report.json").read_text())
    compilers = {j["output"] for j in report["jobs"] if j["kind"] == "compile"}
    assert compilers, "compiles went through the governor"
    shutil.rmtree(outcome.build_dir, ignore_errors=True)
