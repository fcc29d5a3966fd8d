"""buildctl doctor: pure checks over facts, and a full run on fake oneAPI trees."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from fixtures.oneapi_trees import make_field_trap_tree
from rich.console import Console

from buildctl.host import HostInfo
from buildctl.toolchain import compat, doctor
from buildctl.toolchain.probes import LevelZeroProbe, TorchProbe

GiB = 1024**3


def host(
    total: int = 24 * GiB, swap: int = 0, cgroup: int | None = None, disk: int | None = 100 * GiB
) -> HostInfo:
    return HostInfo(
        total_ram_bytes=total,
        available_bytes=total - GiB,
        swap_total_bytes=swap,
        swap_free_bytes=swap,
        cgroup_limit_bytes=cgroup,
        cores=2,
        disk_free_bytes=disk,
    )


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


# ----------------------------------------------------------------------------- host checks


def test_memory_unknown_need_passes() -> None:
    checks = by_name(doctor.check_memory(host(), None))
    assert checks["memory"].status == "pass" and "not known" in checks["memory"].detail
    assert checks["swap"].status == "pass" and checks["cgroup"].status == "pass"


def test_memory_need_vs_budget() -> None:
    ok = by_name(doctor.check_memory(host(), 8 * GiB))
    assert ok["memory"].status == "pass"
    spill = by_name(doctor.check_memory(host(swap=16 * GiB), 30 * GiB))
    assert spill["memory"].status == "warn" and "swap" in spill["memory"].detail
    fail = by_name(doctor.check_memory(host(), 120 * GiB))  # the paged_decode_xe2 blowup
    assert fail["memory"].status == "fail"
    assert "--low-ram" in fail["memory"].fix and "96.0 GiB of swap" in fail["memory"].fix
    assert fail["swap"].status == "warn"


def test_cgroup_limit_below_ram_warns() -> None:
    checks = by_name(doctor.check_memory(host(cgroup=8 * GiB), None))
    assert checks["cgroup"].status == "warn" and "8.0 GiB" in checks["cgroup"].detail


def test_disk_thresholds() -> None:
    assert doctor.check_disk(GiB, "/b").status == "fail"
    assert doctor.check_disk(10 * GiB, "/b").status == "warn"
    assert doctor.check_disk(100 * GiB, "/b").status == "pass"
    assert doctor.check_disk(None, "/b").status == "warn"


# ----------------------------------------------------------------------------- tools


def test_cmake_versions() -> None:
    assert doctor.check_cmake(None, False).status == "fail"
    assert doctor.check_cmake("cmake version 3.18.4", False).status == "fail"
    assert doctor.check_cmake("cmake version 3.25.1", False).status == "pass"
    # upstream's cmake_minimum_required(VERSION 3.26) stops its configure: a failure, not a warning
    too_old = doctor.check_cmake("cmake version 3.25.1\n", True)
    assert too_old.status == "fail" and "3.26" in too_old.detail
    assert doctor.check_cmake("cmake version 3.31.6", True).status == "pass"
    assert doctor.check_cmake("garbage", False).status == "fail"


def test_ninja_and_cxx() -> None:
    assert doctor.check_ninja(None, None).status == "fail"
    assert doctor.check_ninja("1.11.1\n", "/usr/bin/ninja").status == "pass"
    assert doctor.check_cxx("g++", None, None, True).status == "fail"
    assert doctor.check_cxx("gcc", None, None, False).status == "warn"
    ok = doctor.check_cxx("g++", "g++ (Debian 12.2.0-14) 12.2.0\n", "/usr/bin/g++", True)
    assert ok.status == "pass" and ok.data["version"] == "12.2.0"


# ----------------------------------------------------------------------------- torch


def xpu_probe(**kw) -> TorchProbe:
    base = dict(
        python="/venv/bin/python",
        python_version="3.11.7",
        torch="2.11.0+xpu",
        xpu_version="20250301",
        cxx11_abi=True,
        xpu_available=True,
        xpu_devices=["Intel(R) Arc(TM) Pro B70 Graphics"],
        dists={"intel-sycl-rt": "2025.3.2", "intel-cmplr-lib-ur": "2025.3.2"},
    )
    base.update(kw)
    return TorchProbe(**base)


def test_torch_matches_target() -> None:
    res = compat.resolve("2.11.0+xpu")
    checks = by_name(doctor.check_torch(xpu_probe(), res))
    assert checks["torch"].status == "pass" and "cxx11 ABI" in checks["torch"].detail
    assert checks["python"].status == "pass"
    assert checks["xpu"].status == "pass" and "B70" in checks["xpu"].detail


def test_torch_mismatches() -> None:
    res = compat.resolve("2.11.0+xpu")
    cpu = by_name(
        doctor.check_torch(
            xpu_probe(torch="2.13.0+cpu", xpu_version=None, xpu_available=False, xpu_devices=[]),
            res,
        )
    )
    assert cpu["torch"].status == "fail"
    assert "torch==2.11.0 --index-url https://download.pytorch.org/whl/xpu" in cpu["torch"].fix
    assert cpu["xpu"].status == "warn"
    old_py = by_name(doctor.check_torch(xpu_probe(python_version="3.14.0"), res))
    assert old_py["python"].status == "fail"
    broken = doctor.check_torch(TorchProbe(python="/x", error="ImportError: libsycl.so.8"), res)
    assert [c.status for c in broken] == ["fail"] and "libsycl.so.8" in broken[0].detail


def test_torch_vs_compiler_and_runtime_wheels() -> None:
    assert doctor.check_torch_vs_compiler("20250301", "2025.3.1").status == "pass"
    bad = doctor.check_torch_vs_compiler("20260000", "2025.3.1")
    assert bad.status == "fail" and "2026.0.0" in bad.detail
    assert doctor.check_torch_vs_compiler(None, "2025.3") is None
    ok = doctor.check_runtime_wheels(xpu_probe().dists, "2025.3.1", {"intel-sycl-rt": "2025.3.2"})
    assert ok.status == "pass"
    wrong = doctor.check_runtime_wheels({"intel-sycl-rt": "2026.0.0"}, "2025.3.1", None)
    assert wrong.status == "fail" and "intel-sycl-rt" in wrong.detail
    assert doctor.check_runtime_wheels({}, "2025.3", None).status == "skip"  # not checked


def test_level_zero_degrades() -> None:
    missing = doctor.check_level_zero(LevelZeroProbe(error="libze_loader.so.1 not loadable"))
    assert missing.status == "warn" and "libze1" in missing.fix
    no_driver = doctor.check_level_zero(LevelZeroProbe(loader=True, init_rc=0x78000001))
    assert no_driver.status == "warn" and "0x78000001" in no_driver.detail
    ok = doctor.check_level_zero(LevelZeroProbe(loader=True, drivers=1, devices=4))
    assert ok.status == "pass" and "4 device" in ok.detail


def test_level_zero_probe_runs_here() -> None:
    """Whatever this machine has (libze1 or nothing), the probe answers instead of crashing."""
    from buildctl.toolchain.probes import probe_level_zero

    result = probe_level_zero()
    assert result.loader or result.error
    assert doctor.check_level_zero(result).status in {"pass", "warn"}


def test_cache_dir(tmp_path: Path) -> None:
    assert doctor.default_cache_dir({"SYCL_CACHE_DIR": "/x"}) == Path("/x")
    assert doctor.default_cache_dir({"HOME": "/h"}) == Path("/h/.cache/buildctl")
    assert doctor.default_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/buildctl")
    assert doctor.check_cache_dir(tmp_path / "cache").status == "pass"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert doctor.check_cache_dir(blocker / "sub").status == "fail"


# ----------------------------------------------------------------------------- full runs


def _run(tmp_path: Path, torch: str | None, environ: dict[str, str], **kw) -> doctor.DoctorReport:
    root = make_field_trap_tree(tmp_path)
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", **environ}
    return doctor.run_doctor(
        torch,
        "/venv/bin/python",
        kw.pop("needed", None),
        roots=[root],
        environ=env,
        disk_path=tmp_path,
        host_info=host(),
        torch_probe=kw.pop("probe", xpu_probe()),
        level_zero=LevelZeroProbe(loader=True, drivers=1, devices=1),
    )


def test_full_run_field_stack_on_trap_tree(tmp_path: Path) -> None:
    report = _run(tmp_path, "2.11.0+xpu", {})
    checks = by_name(report.checks)
    assert checks["target"].status == "pass" and "v0.1.9" in checks["target"].detail
    assert checks["icpx"].status == "pass" and "2025.3.1" in checks["icpx"].detail
    assert "compiler/2025.3/env/vars.sh" in checks["icpx"].data["vars_script"]
    # setvars.sh -> compiler/latest -> 2026.0: the field trap is pointed out
    assert checks["setvars"].status == "warn"
    assert 'eval "$(buildctl env --compiler 2025.3)"' in checks["setvars"].fix
    assert checks["oneapi-env"].status == "pass"
    assert checks["torch-compiler"].status == "pass"
    assert checks["sycl-runtime"].status == "pass"
    assert report.resolution and report.resolution.kernel_ref == "v0.1.9"
    # warnings only, except a cmake below upstream's 3.26 on this machine (Debian 12 has 3.25)
    failed = {c.name for c in report.checks if c.status == "fail"}
    assert failed <= {"cmake"}
    assert report.exit_code == (1 if failed else 0)


def test_python_outside_cmake_supported_versions_fails() -> None:
    """pyproject allows <3.14, but upstream's CMake stops outside PYTHON_SUPPORTED_VERSIONS."""
    res = compat.resolve("2.12.0+xpu")
    for version, status in (("3.13.1", "fail"), ("3.12.4", "pass"), ("3.8.10", "fail")):
        probe = TorchProbe(
            python="/venv/bin/python",
            torch="2.12.0+xpu",
            python_version=version,
            xpu_version="20250301",
            cxx11_abi=True,
        )
        check = by_name(doctor.check_torch(probe, res))["python"]
        assert check.status == status, (version, check.detail)
    assert (
        "PYTHON_SUPPORTED_VERSIONS"
        in by_name(
            doctor.check_torch(
                TorchProbe(
                    python="p",
                    torch="2.12.0+xpu",
                    python_version="3.13.0",
                    xpu_version="20250301",
                    cxx11_abi=True,
                ),
                res,
            )
        )["python"].detail
    )


def test_memory_figure_comes_from_the_project_being_built(tmp_path: Path) -> None:
    from types import SimpleNamespace as E

    shipped_path = doctor.shipped_profile_path(
        "vllm-xpu-kernels", "v0.1.11.1", Path(__file__).resolve().parent.parent / "profiles"
    )
    assert shipped_path is not None and shipped_path.name == "v0.1.9.json"
    shipped = doctor.load_shipped_entries(shipped_path)
    other = E(output="CMakeFiles/huge.dir/a.o", peak_rss_bytes=500 * 2**30, project="other")
    peak, where = doctor.project_peak("vllm-xpu-kernels", [other], shipped, shipped_path.name)
    assert peak == max(e.peak_rss_bytes for e in shipped) and "shipped estimate" in where
    mine = E(output=shipped[0].output, peak_rss_bytes=7 * 2**30, project="vllm-xpu-kernels")
    peak, where = doctor.project_peak("vllm-xpu-kernels", [other, mine], shipped)
    assert peak == 7 * 2**30 and where.startswith("measured")
    assert doctor.project_peak("pagedattn", [other], []) == (None, "no profile of pagedattn yet")


def test_full_run_flags_mixed_env(tmp_path: Path) -> None:
    root_marker = tmp_path / "opt" / "intel" / "oneapi"
    env = {
        "PATH": f"{root_marker}/compiler/2026.0/bin:{root_marker}/compiler/2025.3/bin:/usr/bin",
        "SETVARS_COMPLETED": "1",
    }
    report = _run(tmp_path, "2.11.0+xpu", env)
    mixed = by_name(report.checks)["oneapi-env"]
    assert mixed.status == "fail" and "PATH" in mixed.data["variables"]
    assert "without setvars.sh" in mixed.fix
    assert report.exit_code == 1


def test_full_run_unknown_target_and_missing_compiler(tmp_path: Path) -> None:
    report = _run(tmp_path, "2.11", {})
    assert by_name(report.checks)["target"].status == "fail"
    assert report.resolution is None
    report = _run(
        tmp_path / "b",
        "2.13.0+xpu",
        {},
        probe=xpu_probe(
            torch="2.13.0+xpu", xpu_version="20260000", dists={"intel-sycl-rt": "2026.0.0"}
        ),
    )
    checks = by_name(report.checks)
    assert checks["icpx"].status == "pass" and "2026.0.0" in checks["icpx"].detail
    assert "setvars" not in checks  # latest points at the pinned 2026.0: no trap


def test_full_run_without_target(tmp_path: Path) -> None:
    report = _run(tmp_path, None, {}, needed=4 * GiB)
    checks = by_name(report.checks)
    assert "target" not in checks
    assert checks["icpx"].status == "pass" and "no oneAPI compiler needed" in checks["icpx"].detail
    assert checks["memory"].data["needed_peak_bytes"] == 4 * GiB


def test_crashing_check_is_reported(tmp_path: Path, monkeypatch) -> None:
    def boom(*_a, **_k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(doctor, "check_disk", boom)
    report = _run(tmp_path, None, {})
    disk = by_name(report.checks)["disk"]
    assert disk.status == "fail" and "kaboom" in disk.detail
    assert "memory" in by_name(report.checks)  # the others still ran


def test_json_and_render(tmp_path: Path) -> None:
    report = _run(tmp_path, "2.11.0+xpu", {}, needed=120 * GiB)
    data = json.loads(report.to_json())
    assert data["schema"] == "buildctl.doctor/1" and data["status"] == "fail"
    assert data["resolution"]["kernel_ref"] == "v0.1.9"
    assert {c["name"] for c in data["checks"]} >= {"memory", "cmake", "icpx", "torch"}
    again = doctor.DoctorReport.model_validate({k: v for k, v in data.items() if k != "status"})
    assert again.checks == report.checks
    buf = io.StringIO()
    doctor.render(report, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert "buildctl doctor" in text and "memory" in text and "fail" in text
    assert "h576-decode-blowup" in text  # the resolution's notes are shown


@pytest.mark.slow
def test_real_probes_on_this_machine() -> None:
    """No injected facts: the probes of this host and this interpreter must not crash."""
    report = doctor.run_doctor(None, sys.executable, None)
    names = {c.name for c in report.checks}
    assert {"memory", "disk", "cmake", "ninja", "g++", "torch", "level-zero", "cache-dir"} <= names
    assert report.exit_code in (0, 1)


def test_probes_degrade_on_broken_pythons(tmp_path: Path) -> None:
    from buildctl.toolchain.probes import probe_torch, read_runtime_wheels

    missing = probe_torch(str(tmp_path / "no-python"))
    assert missing.torch is None and "not found" in (missing.error or "")
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\necho 'Segmentation fault' >&2\nexit 139\n")
    crashing.chmod(0o755)
    crashed = probe_torch(str(crashing))
    assert crashed.torch is None and "Segmentation fault" in (crashed.error or "")
    assert doctor.check_torch(crashed, None)[0].status == "fail"
    assert read_runtime_wheels(str(crashing)) == {}
    assert isinstance(read_runtime_wheels(sys.executable), dict)


def test_env_command_is_exposed_for_the_cli() -> None:
    from buildctl.toolchain import oneapi

    assert doctor.env_command is oneapi.env_command


def test_cli_doctor_ignores_other_projects_in_the_profile_db(tmp_path: Path) -> None:
    """The CLI once took the largest job of the whole database, whatever project it came from."""
    import subprocess

    from buildctl.govern.profiles import ProfileDB, ProfileEntry

    db_path = tmp_path / "profiles.sqlite"
    db = ProfileDB(db_path)
    db.record(
        ProfileEntry(
            output="CMakeFiles/huge.dir/huge.cpp.o",
            kind="compile",
            compiler="g++ 12",
            peak_rss_bytes=900 * GiB,
            project="someotherproject",
        )
    )
    db.close()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "buildctl.cli",
            "doctor",
            "--torch",
            "2.11.0+xpu",
            "--json",
            "--profiles",
            str(db_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(proc.stdout)
    memory = next(c for c in report["checks"] if c["name"] == "memory")
    assert report["needed_peak_bytes"] < 900 * GiB
    assert "shipped estimate v0.1.9.json" in memory["data"]["needed_from"]
