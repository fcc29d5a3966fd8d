"""auditwheel repair: torch/runtime libraries are excluded; grafting one of them fails loudly."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from buildctl.errors import BadInput, BuildFailed
from buildctl.wheel.repair import (
    forbidden_grafts,
    grafted_libraries,
    parse_show_platform,
    repair_wheel,
    wheel_platform_tags,
)
from buildctl.wheel.reproducible import write_wheel
from buildctl.wheel.sonames import NEVER_GRAFT_GLOBS, external_family, is_torch_lib
from buildctl.wheel.torchspec import parse_torch
from buildctl.wheel.verify import TorchLibs, verify_wheel

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "abi_probe"))
import probe_build

SHOW_OUTPUT = """
abi_probe-0.1.0+pt213cpu-cp311-cp311-linux_x86_64.whl is consistent
with the following platform tag: "linux_x86_64".

The wheel references external versioned symbols in these
system-provided shared libraries: libc.so.6 with versions {'GLIBC_2.32'}

This constrains the platform tag to "manylinux_2_34_x86_64". In order
to achieve a more compatible tag, you would need to recompile a new
wheel from source on a system with earlier versions of these
libraries, such as a recent manylinux image.
"""


def test_parse_show_platform() -> None:
    assert parse_show_platform(SHOW_OUTPUT) == "manylinux_2_34_x86_64"
    plain = 'x.whl is consistent with the\nfollowing platform tag: "manylinux_2_28_x86_64".'
    assert parse_show_platform(plain) == "manylinux_2_28_x86_64"
    assert parse_show_platform("garbage") is None


def test_forbidden_grafts_and_families() -> None:
    grafted = [
        "pkg.libs/libc10-52d951ec.so",
        "pkg.libs/libtorch_cpu-872a1bfe.so",
        "pkg.libs/libsycl-0a1b2c3d.so.8",
        "pkg.libs/libze_loader-0a1b2c3d.so.1",
        "pkg.libs/libcudart-0a1b2c3d.so.13",
        "pkg.libs/libgomp-78511033.so.1",
        "pkg.libs/libhelper-0a1b2c3d.so",
        "pkg.libs/libmkl_core-0a1b2c3d.so.2",
    ]
    assert forbidden_grafts(grafted) == [g for g in grafted if "helper" not in g]
    assert external_family("libsycl.so.8") == "sycl/oneapi"
    assert external_family("libcublasLt.so.13") == "cuda"
    assert external_family("libur_adapter_level_zero.so.0") == "sycl/oneapi"
    assert external_family("libc10.so") is None and is_torch_lib("libc10_xpu.so")
    for glob in (
        "libtorch*.so*",
        "libc10*.so*",
        "libsycl.so*",
        "libze_loader.so*",
        "libcudart.so*",
    ):
        assert glob in NEVER_GRAFT_GLOBS


@pytest.fixture(scope="module")
def torch_dir() -> Path:
    spec = importlib.util.find_spec("torch")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def probe_whl(torch_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    so = probe_build.build_probe(torch_dir)
    return probe_build.probe_wheel(tmp_path_factory.mktemp("probe"), so, parse_torch("2.13.0+cpu"))


@pytest.mark.slow
def test_repair_does_not_graft_torch(probe_whl: Path, torch_dir: Path, tmp_path: Path) -> None:
    result = repair_wheel(probe_whl, tmp_path / "a", torch_lib_dir=torch_dir / "lib")
    assert result.grafted == []  # libc10/libtorch/libtorch_cpu/libgomp all stayed outside
    assert result.plat.startswith("manylinux_") and result.plat in result.wheel.name
    assert wheel_platform_tags(result.wheel) == [f"cp311-cp311-{result.plat}"]
    assert verify_wheel(result.wheel, TorchLibs.from_path(torch_dir)).ok
    # Normalized after repair: repairing again gives the same bytes.
    again = repair_wheel(
        probe_whl, tmp_path / "b", torch_lib_dir=torch_dir / "lib", plat=result.plat
    )
    assert again.wheel.read_bytes() == result.wheel.read_bytes()


@pytest.mark.slow
def test_repair_fails_when_a_torch_lib_would_be_grafted(
    probe_whl: Path, torch_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(BuildFailed) as info:
        # Excluding only libtorch*: auditwheel grafts libc10.so, and the guard must catch it.
        repair_wheel(probe_whl, out, torch_lib_dir=torch_dir / "lib", excludes=("libtorch*.so*",))
    assert "libc10" in info.value.what and info.value.exit_code == 1
    assert list(out.glob("*.whl")) == []  # the bad wheel was removed


@pytest.mark.slow
def test_repair_grafts_own_dependency_but_not_libc10(torch_dir: Path, tmp_path: Path) -> None:
    deps = tmp_path / "deps"
    deps.mkdir()
    helper_src = deps / "helper.c"
    helper_src.write_text("int buildctl_helper(void) { return 7; }\n")
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-Wl,-soname,libbuildctl_helper.so.1",
         "-o", str(deps / "libbuildctl_helper.so.1"), str(helper_src)],
        check=True,
    )  # fmt: skip
    (deps / "libbuildctl_helper.so").symlink_to("libbuildctl_helper.so.1")
    ext_src = tmp_path / "ext.cpp"
    ext_src.write_text(
        '#include <c10/core/Device.h>\nextern "C" int buildctl_helper(void);\n'
        'extern "C" int f() { return buildctl_helper() + (int)c10::Device("cpu").type(); }\n'
    )
    ext = tmp_path / "_ext.so"
    subprocess.run(
        ["g++", "-shared", "-fPIC", "-std=c++17", f"-I{torch_dir / 'include'}", "-o", str(ext),
         str(ext_src), f"-L{deps}", "-lbuildctl_helper", f"-L{torch_dir / 'lib'}", "-lc10"],
        check=True,
    )  # fmt: skip
    wheel = write_wheel(
        tmp_path / "dist", name="graftcase", version="1.0", tag="cp311-cp311-linux_x86_64",
        files={"graftcase/_ext.so": ext},
    )  # fmt: skip
    result = repair_wheel(
        wheel, tmp_path / "out", torch_lib_dir=torch_dir / "lib", extra_lib_dirs=[deps]
    )
    assert len(result.grafted) == 1 and "libbuildctl_helper" in result.grafted[0]
    assert grafted_libraries(result.wheel) == result.grafted
    assert not any("libc10" in g for g in result.grafted)


def test_repair_bad_input(tmp_path: Path, torch_dir: Path) -> None:
    not_zip = tmp_path / "x-1.0-cp311-cp311-linux_x86_64.whl"
    not_zip.write_bytes(b"nope")
    with pytest.raises(BadInput):
        repair_wheel(not_zip, tmp_path / "out")
    ok = write_wheel(tmp_path, name="y", version="1.0", tag="cp311-cp311-linux_x86_64", files={})
    with pytest.raises(BadInput, match="torch lib dir"):
        repair_wheel(ok, tmp_path / "out", torch_lib_dir=tmp_path / "missing")
    assert not (tmp_path / "out").exists()
