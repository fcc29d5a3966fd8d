"""Real upstream vllm-xpu-kernels checkouts, every supported torch era, through buildctl:
the tag decides, upstream's own configure runs with what its setup.py passes, and the user's
checkout is byte-identical afterwards.

What is real: the upstream sources at each tag (git clone with tags, see upstream_checkouts),
their CMakeLists.txt/setup.py/toolchain.cmake, CMake 3.26+, torch's CMake config, the patches.
What stands in: the compiler (g++ that CMake identifies as IntelLLVM, tests/fixtures/
intel_llvm_standin.py: it cannot compile SYCL, so the build stops after configure), the oneAPI
tree, and small sycl-tla/oneDNN stand-ins for the revisions the tag pins (fixtures/
xpu_kernels_fixture/standins). CI has no upstream clone (it is offline, fetched upstream
sources are never committed, and PyPI has no sdist): these skip there. The configure cases also
need cmake >= 3.26 (Debian 12 has 3.25; `pip install 'cmake>=3.26'` gives one, and
BUILDCTL_TEST_CMAKE_DIR points at it); they pass with PyPI's cmake 3.31.10 and 4.4.5.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from helpers import ROOT, buildctl_cmd
from intel_llvm_standin import install_intel_llvm
from oneapi_trees import make_field_trap_tree
from upstream_checkouts import SKIP_REASON, checkout_tag, git, tree_state, upstream_git_dir

from buildctl.kernels.xpu import xpu_build_settings
from buildctl.toolchain import compat

UPSTREAM = upstream_git_dir()
STANDINS = ROOT / "tests" / "fixtures" / "xpu_kernels_fixture" / "standins"
GiB = 1024**3


def _cmake_version(cmake: Path) -> tuple[int, int] | None:
    try:
        out = subprocess.run([str(cmake), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"version (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _cmake_326() -> tuple[str | None, str]:
    """(a directory holding cmake >= 3.26, upstream's minimum, or None; why none fits)."""
    candidates = [
        Path(where) / "cmake"
        for where in (os.environ.get("BUILDCTL_TEST_CMAKE_DIR"), str(ROOT / ".upstream" / "bin"))
        if where
    ]
    found = shutil.which("cmake")
    if found:
        candidates.append(Path(found))
    seen = []
    for cmake in candidates:
        if not cmake.exists():
            continue
        version = _cmake_version(cmake)
        if version is not None and version >= (3, 26):
            return str(cmake.parent), ""
        seen.append(f"{cmake} is {'.'.join(map(str, version)) if version else 'unusable'}")
    return None, (
        "upstream's CMakeLists.txt needs cmake >= 3.26 (" + ("; ".join(seen) or "none on PATH")
        + "): set BUILDCTL_TEST_CMAKE_DIR to a directory with one, e.g. from "
        "`pip install 'cmake>=3.26'`"
    )


CMAKE_DIR, CMAKE_SKIP_REASON = _cmake_326()
pytestmark = pytest.mark.skipif(UPSTREAM is None, reason=SKIP_REASON)
# Only the tests that run upstream's configure need cmake (the others stop before CMake); their
# skip names everything missing, the clone first (what CI lacks whatever cmake it has).
_MISSING = [why for why, gone in ((SKIP_REASON, UPSTREAM is None),
                                  (CMAKE_SKIP_REASON, CMAKE_DIR is None)) if gone]
needs_cmake = pytest.mark.skipif(bool(_MISSING), reason="; and ".join(_MISSING))

# tag, the torch it builds with, the oneAPI compiler that torch needs
CASES = [
    ("v0.1.8.1", "2.11.0+xpu", "2025.3"),
    ("v0.1.9.1", "2.12.0+xpu", "2025.3"),
    ("v0.1.10.1", "2.12.0+xpu", "2025.3"),
    ("v0.1.11.1", "2.12.0+xpu", "2025.3"),
    ("v0.1.13.1", "2.13.0+xpu", "2026.0"),  # the newest tag
]


def prestage_standins(cache: Path, tag: str) -> dict[str, Path]:
    """Put the small sycl-tla/oneDNN stand-ins into buildctl's dependency cache under the
    revisions the tag pins, the way an offline host pre-stages them (no network, no clone)."""
    row = compat.load_matrix().ref(tag)
    staged = {}
    for key, rev in (("sycl-tla", row.sycl_tla.revision), ("oneDNN", row.onednn.revision)):
        dest = cache / "deps" / "src" / f"{key}-{rev[:12]}"
        shutil.copytree(STANDINS / key, dest)
        dest.with_name(dest.name + ".stamp").write_text(rev + "\n")
        staged[key] = dest
    return staged


@pytest.fixture(scope="module")
def oneapi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_field_trap_tree(tmp_path_factory.mktemp("oneapi"))
    install_intel_llvm(root / "compiler" / "2025.3" / "bin", "2025.3.1")
    install_intel_llvm(root / "compiler" / "2026.0" / "bin", "2026.0.0")
    return root


@pytest.mark.slow
@needs_cmake
@pytest.mark.parametrize("tag, torch, compiler", CASES, ids=[c[0] for c in CASES])
def test_real_configure_through_buildctl_build(
    tmp_path: Path, oneapi_root: Path, tag: str, torch: str, compiler: str
) -> None:
    assert UPSTREAM is not None and CMAKE_DIR is not None
    checkout = checkout_tag(UPSTREAM, tag, tmp_path / "vllm-xpu-kernels")
    before = tree_state(checkout)
    cache = tmp_path / "cache"
    prestage_standins(cache, tag)
    env = {**os.environ, "PATH": f"{CMAKE_DIR}:{os.environ['PATH']}"}
    # The real CLI: the tag decides torch, patches and deps; the governed configure runs on the
    # build-owned copy; then a no-op ninja target (the stand-in cannot compile SYCL sources).
    proc = subprocess.run(
        buildctl_cmd(
            "build",
            "--project",
            "vllm-xpu-kernels",
            "--source",
            str(checkout),
            "--cache-dir",
            str(cache),
            "--oneapi-root",
            str(oneapi_root),
            "--aot",
            "B70",
            "--low-ram",
            "--mem-budget",
            "16G",
            "--target",
            "build.ninja",
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert tree_state(checkout) == before  # the CLI left the checkout alone
    # what the CLI resolved, recomputed here (the copy and deps are reused, nothing is built)
    project, defines, build_dir = xpu_build_settings(
        torch=None,
        source=checkout,
        preset=None,
        low_ram=True,
        budget_bytes=16 * GiB,
        cache_dir=cache,
        oneapi_roots=[str(oneapi_root)],
        compiler=None,
        aot="B70",
        python=sys.executable,
    )
    assert project.source_torch == torch
    assert project.source_commit == git("rev-parse", "HEAD", cwd=checkout)
    assert project.source_ref == tag
    assert f"/compiler/{compiler}" in project.build_env["CMPLR_ROOT"]
    cmake_cache = (build_dir / "CMakeCache.txt").read_text()
    compiler_id = (build_dir / "CMakeFiles").glob("*/CMakeCXXCompiler.cmake")
    assert any('CMAKE_CXX_COMPILER_ID "IntelLLVM"' in p.read_text() for p in compiler_id)
    for key in ("VLLM_PYTHON_EXECUTABLE", "CMAKE_TOOLCHAIN_FILE", "VLLM_TARGET_DEVICE"):
        assert re.search(rf"^{key}:\w+={re.escape(defines[key])}$", cmake_cache, re.M), key
    assert defines["CMAKE_TOOLCHAIN_FILE"].startswith(str(project.source_dir))
    assert str(checkout) not in cmake_cache  # nothing points back into the user's tree
    hook = json.loads((build_dir / "buildctl" / "xpu_hook.json").read_text())
    assert hook["link_jobs"] == int(defines["BUILDCTL_SYCL_LINK_JOBS"])
    assert (build_dir / "build.ninja").is_file()  # upstream's configure ran to the end
    # the row's patches went into the copy only
    if project.patches:
        hpp = "csrc/xpu/attn/xe_2/paged_decode_utils.hpp"
        assert (project.source_dir / hpp).read_bytes() != (checkout / hpp).read_bytes()
    assert tree_state(checkout) == before
    assert before[0] == ""


def test_cli_wheel_refuses_a_torch_the_tag_does_not_build(tmp_path: Path) -> None:
    """The issue's case: v0.1.13.1 with --torch 2.11.0+xpu silently built the v0.1.9 recipe."""
    assert UPSTREAM is not None
    checkout = checkout_tag(UPSTREAM, "v0.1.13.1", tmp_path / "vllm-xpu-kernels")
    before = tree_state(checkout)
    proc = subprocess.run(
        buildctl_cmd(
            "wheel",
            "--project",
            "vllm-xpu-kernels",
            "--source",
            str(checkout),
            "--torch",
            "2.11.0+xpu",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "wh"),
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "v0.1.13.1" in out and "v0.1.9" in out and "Traceback" not in out
    assert tree_state(checkout) == before


@pytest.mark.slow
def test_cli_wheel_on_a_real_checkout_leaves_it_alone(tmp_path: Path, oneapi_root: Path) -> None:
    """`buildctl wheel` with the torch the tag builds with: the copy, patches and links are made
    in the cache; here no XPU torch can be installed, so it stops at the torch env (exit 1)."""
    assert UPSTREAM is not None
    checkout = checkout_tag(UPSTREAM, "v0.1.9.1", tmp_path / "vllm-xpu-kernels")
    before = tree_state(checkout)
    cache = tmp_path / "cache"
    prestage_standins(cache, "v0.1.9.1")
    proc = subprocess.run(
        buildctl_cmd(
            "wheel",
            "--project",
            "vllm-xpu-kernels",
            "--source",
            str(checkout),
            "--torch",
            "2.12.0+xpu",
            "--cache-dir",
            str(cache),
            "--out",
            str(tmp_path / "wh"),
            "--oneapi-root",
            str(oneapi_root),
            "--aot",
            "B70",
            "--low-ram",
        ),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2) and "Traceback" not in out, out[-3000:]
    assert "torch" in out
    # The copies, not their `.lock` files beside them.
    copies = [p for p in (cache / "sources").glob("vllm-xpu-kernels-*") if p.is_dir()]
    assert copies and (copies[0] / "third_party" / "oneDNN").is_symlink()  # staged in the copy
    assert tree_state(checkout) == before
