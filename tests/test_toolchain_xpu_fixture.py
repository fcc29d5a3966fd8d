"""Configure (and build) the vllm-xpu-kernels-shaped fixture offline with buildctl's defines and
CMake hook: the hook must rewrite the device-link parallelism to the budget-derived value."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from buildctl.toolchain import compat, xpu_adapter

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "xpu_kernels_fixture"
GiB = 1024**3

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("ninja") is None or shutil.which("g++") is None,
    reason="needs cmake, ninja and g++",
)


def _git_repo_from(src: Path, dest: Path) -> str:
    shutil.copytree(src, dest)
    run = {"cwd": dest, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)
    subprocess.run(["git", "add", "-A"], **run)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], **run
    )
    return subprocess.run(["git", "rev-parse", "HEAD"], text=True, **run).stdout.strip()


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> xpu_adapter.StagedDeps:
    """The stand-in deps as local git repos, pre-staged through buildctl's real code path."""
    base = tmp_path_factory.mktemp("deps")
    overrides = {
        key: (str(base / "up" / key), _git_repo_from(FIXTURE / "standins" / key, base / "up" / key))
        for key in ("sycl-tla", "oneDNN")
    }
    # v0.1.13.1 takes both deps through FetchContent, as the fixture does
    return xpu_adapter.prestage_deps(
        xpu_adapter.load_manifest(), "v0.1.13.1", base / "cache", overrides=overrides
    )


def configure(build: Path, defines: dict[str, str], hook: bool = True) -> dict:
    args = ["cmake", "-G", "Ninja", "-S", str(FIXTURE), "-B", str(build)]
    if hook:
        args.append(f"-DCMAKE_PROJECT_INCLUDE={xpu_adapter.HOOK_PATH}")
    args += [f"-D{k}={v}" for k, v in defines.items()]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(build)}  # no VLLM_XPU_* leaks
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((build / "fixture_configure.json").read_text())


def hook_record(build: Path) -> dict:
    return json.loads((build / "buildctl" / "xpu_hook.json").read_text())


def link_jobs(options: str) -> list[int]:
    import re

    return [int(n) for n in re.findall(r"-fsycl-max-parallel-link-jobs=(\d+)", options)]


@pytest.mark.slow
def test_configure_offline_with_buildctl_defines(tmp_path: Path, staged) -> None:
    res = compat.resolve("2.12.0+xpu")
    budget = 16 * GiB
    defines = xpu_adapter.cmake_defines_for(
        res,
        budget,
        xpu_adapter.aot_devices_for("B70"),
        None,
        True,
        staged,
        per_link_job_bytes=6 * GiB,
    )
    expected_jobs = xpu_adapter.link_jobs_for_budget(budget, 6 * GiB)
    assert expected_jobs == 2
    rec = configure(tmp_path / "build", defines)
    # the configure saw the defines: AOT narrowed, low-RAM preset, deps from the staged dirs
    assert rec["aot_devices"] == "bmg-g31-a0" and rec["xe2_aot_devices"] == "bmg-g31-a0"
    assert rec["paged_decode_config"].endswith("paged_decode_default.conf")
    assert rec["generated_kernels"] == "2"
    assert rec["cutlass_source_dir"] == defines["FETCHCONTENT_SOURCE_DIR_CUTLASS-SYCL"]
    assert rec["onednn_source_dir"] == defines["FETCHCONTENT_SOURCE_DIR_ONEDNN"]
    assert rec["fully_disconnected"] == "ON"
    # the hook rewrote upstream's 16 to the budget-derived value on every device-linked target
    assert set(rec["link_options"]) == {"attn_kernels_fixture", "_C"}
    for options in rec["link_options"].values():
        assert link_jobs(options) == [expected_jobs]
        assert "-flink-huge-device-code" in options
    hook = hook_record(tmp_path / "build")
    assert hook["link_jobs"] == expected_jobs
    assert "target:_C:LINK_OPTIONS" in hook["rewritten"]
    assert set(hook["device_linked"]) == {"attn_kernels_fixture", "_C"}
    generated = sorted(p.name for p in (tmp_path / "build" / "generated").glob("paged_decode_*"))
    assert generated == ["paged_decode_q16_h128_p64.cpp", "paged_decode_q8_h128_p64.cpp"]


@pytest.mark.slow
def test_without_hook_upstream_value_stays(tmp_path: Path, staged) -> None:
    rec = configure(tmp_path / "build", dict(staged.defines), hook=False)
    assert rec["aot_devices"] == "pvc,bmg,bmg-g21-a0,bmg-g31-a0"  # upstream default
    assert rec["generated_kernels"] == "6"  # full preset is upstream's default
    for options in rec["link_options"].values():
        assert link_jobs(options) == [16]
    assert not (tmp_path / "build" / "buildctl" / "xpu_hook.json").exists()


@pytest.mark.slow
def test_hook_rewrites_linker_flag_variables(tmp_path: Path, staged) -> None:
    defines = dict(staged.defines)
    defines["BUILDCTL_SYCL_LINK_JOBS"] = "3"
    defines["CMAKE_SHARED_LINKER_FLAGS"] = "-Wl,--as-needed -fsycl-max-parallel-link-jobs=16"
    rec = configure(tmp_path / "build", defines)
    assert rec["shared_linker_flags"] == "-Wl,--as-needed -fsycl-max-parallel-link-jobs=3"
    assert "variable:CMAKE_SHARED_LINKER_FLAGS" in hook_record(tmp_path / "build")["rewritten"]


@pytest.mark.slow
def test_hook_rejects_bad_link_jobs(tmp_path: Path, staged) -> None:
    args = [
        "cmake",
        "-G",
        "Ninja",
        "-S",
        str(FIXTURE),
        "-B",
        str(tmp_path / "b"),
        f"-DCMAKE_PROJECT_INCLUDE={xpu_adapter.HOOK_PATH}",
        "-DBUILDCTL_SYCL_LINK_JOBS=64",
    ]
    args += [f"-D{k}={v}" for k, v in staged.defines.items()]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "BUILDCTL_SYCL_LINK_JOBS must be a whole number from 1 to 16" in proc.stderr


@pytest.mark.slow
def test_build_and_install_with_no_rdc(tmp_path: Path, staged) -> None:
    """g++ builds the fixture with the hook's icpx-only flags in place (guarded), then installs
    the components the way a wheel build would."""
    defines = dict(staged.defines)
    defines.update(
        {
            "BUILDCTL_SYCL_LINK_JOBS": "4",
            "BUILDCTL_SYCL_NO_RDC": "ON",
            "VLLM_PAGED_DECODE_CONFIG": "paged_decode_default",
        }
    )
    build = tmp_path / "build"
    rec = configure(build, defines)
    assert all("-fno-sycl-rdc" in o for o in rec["link_options"].values())
    assert hook_record(build)["no_rdc"] is True
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    ninja_file = (build / "build.ninja").read_text()
    assert "-fsycl" not in ninja_file  # g++ never saw a SYCL flag
    for component in ("_C", "attn_kernels_fixture"):
        subprocess.run(
            [
                "cmake",
                "--install",
                str(build),
                "--prefix",
                str(tmp_path / "inst"),
                "--component",
                component,
            ],
            check=True,
            capture_output=True,
        )
    pkg = tmp_path / "inst" / "xpu_kernels_fixture"
    assert (pkg / "_C.so").is_file() and (pkg / "libattn_kernels_fixture.so").is_file()
    import ctypes

    ctypes.CDLL(str(pkg / "libattn_kernels_fixture.so"))
    lib = ctypes.CDLL(str(pkg / "_C.so"))
    assert lib.xpu_kernels_fixture_kernel_count() == 2
    assert lib.xpu_kernels_fixture_dnnl_version() == 3


@pytest.mark.slow
def test_aot_env_knob_is_honoured_without_hook(tmp_path: Path, staged) -> None:
    """The fixture reads VLLM_XPU_AOT_DEVICES from the environment, as upstream does."""
    args = ["cmake", "-G", "Ninja", "-S", str(FIXTURE), "-B", str(tmp_path / "b")]
    args += [f"-D{k}={v}" for k, v in staged.defines.items()]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        **xpu_adapter.aot_env("pvc"),
    }
    subprocess.run(args, check=True, capture_output=True, env=env)
    rec = json.loads((tmp_path / "b" / "fixture_configure.json").read_text())
    assert rec["aot_devices"] == "pvc" and rec["xe2_aot_devices"] == "pvc"


@pytest.mark.slow
def test_hook_also_works_as_top_level_include(tmp_path: Path, staged) -> None:
    """CMAKE_PROJECT_TOP_LEVEL_INCLUDES (CMake >= 3.24) is a list: the hook can share it."""
    version = subprocess.run(["cmake", "--version"], capture_output=True, text=True).stdout
    major, minor = (int(x) for x in version.split()[2].split(".")[:2])
    if (major, minor) < (3, 24):
        pytest.skip("CMAKE_PROJECT_TOP_LEVEL_INCLUDES needs CMake 3.24")
    defines = dict(staged.defines)
    defines["CMAKE_PROJECT_TOP_LEVEL_INCLUDES"] = str(xpu_adapter.HOOK_PATH)
    defines["BUILDCTL_SYCL_LINK_JOBS"] = "5"
    rec = configure(tmp_path / "build", defines, hook=False)
    assert all(link_jobs(o) == [5] for o in rec["link_options"].values())
