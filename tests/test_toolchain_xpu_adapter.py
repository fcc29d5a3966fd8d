"""vllm-xpu-kernels adapter: manifest, AOT devices, link jobs, defines, dep pre-staging."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from buildctl.errors import BadInput, BuildFailed
from buildctl.toolchain import compat, xpu_adapter
from buildctl.toolchain.xpu_adapter import (
    aot_devices_for,
    cmake_defines_for,
    link_jobs_for_budget,
    load_manifest,
    populate_submodules,
    prestage_deps,
)

GiB = 1024**3


@pytest.fixture(scope="module")
def manifest() -> xpu_adapter.XpuManifest:
    return load_manifest()


def _tag_index(matrix: compat.CompatMatrix) -> dict[str, int]:
    return {r.ref: i for i, r in enumerate(matrix.kernel_refs)}


def _expand(matrix: compat.CompatMatrix, spec: str) -> list[str]:
    """'v0.1.0..v0.1.4' -> every tag between the two, in the matrix's (release) order."""
    first, _, last = spec.partition("..")
    idx = _tag_index(matrix)
    tags = [r.ref for r in matrix.kernel_refs]
    return tags[idx[first] : idx[last or first] + 1]


# ----------------------------------------------------------------------------- manifest


def test_manifest_refs_agree_with_matrix(manifest: xpu_adapter.XpuManifest) -> None:
    matrix = compat.load_matrix()
    for torch, ref in manifest.data["refs"].items():
        assert compat.resolve(torch).kernel_ref == ref
    revisions = {
        "sycl-tla": lambda r: r.sycl_tla.revision,
        "oneDNN": lambda r: r.onednn.revision,
    }
    for key, get in revisions.items():
        covered: list[str] = []
        for spec, rev in manifest.dep(key)["revisions"].items():
            for tag in _expand(matrix, spec):
                assert get(matrix.ref(tag)) == rev, (key, tag)
                covered.append(tag)
        assert sorted(covered) == sorted(r.ref for r in matrix.kernel_refs), key


def test_manifest_onednn_mode_switch(manifest: xpu_adapter.XpuManifest) -> None:
    matrix = compat.load_matrix()
    since = _tag_index(matrix)[manifest.dep("oneDNN")["fetchcontent_since"]]
    for i, ref in enumerate(matrix.kernel_refs):
        assert ref.onednn.mode == ("fetchcontent" if i >= since else "submodule"), ref.ref
    presets_since = _tag_index(matrix)[manifest.data["kernel_configs"]["since"]]
    for i, ref in enumerate(matrix.kernel_refs):
        assert ref.kernel_config_presets == (i >= presets_since), ref.ref


def test_manifest_hook_exists(manifest: xpu_adapter.XpuManifest) -> None:
    assert (Path(__file__).resolve().parents[1] / manifest.data["link"]["hook"]).is_file()
    assert xpu_adapter.HOOK_PATH.is_file()


def test_bad_manifest(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("name = 'x'\n")
    with pytest.raises(BadInput):
        load_manifest(path)
    path.write_text("[[[")
    with pytest.raises(BadInput):
        load_manifest(path)


# ----------------------------------------------------------------------------- AOT devices


@pytest.mark.parametrize(
    ("name", "device"),
    [
        ("B70", "bmg-g31-a0"),
        ("Intel(R) Arc(TM) Pro B70 Graphics", "bmg-g31-a0"),
        ("arc-pro-b60", "bmg-g21-a0"),
        ("B50", "bmg-g21-a0"),
        ("Intel(R) Arc(TM) B580 Graphics", "bmg-g21-a0"),
        ("Intel(R) Data Center GPU Max 1550", "pvc"),
        ("pvc", "pvc"),
        ("bmg-g21-a0", "bmg-g21-a0"),
    ],
)
def test_aot_devices_for(manifest: xpu_adapter.XpuManifest, name: str, device: str) -> None:
    assert aot_devices_for(name, manifest) == device


def test_aot_devices_lists_and_errors(manifest: xpu_adapter.XpuManifest) -> None:
    assert aot_devices_for(["B70", "B60", "b70"], manifest) == "bmg-g31-a0,bmg-g21-a0"
    assert aot_devices_for("b70,pvc", manifest) == "bmg-g31-a0,pvc"
    with pytest.raises(BadInput) as exc:
        aot_devices_for("GeForce RTX 4090", manifest)
    assert "b70" in exc.value.fix and "bmg-g31-a0" in exc.value.fix
    with pytest.raises(BadInput):
        aot_devices_for("", manifest)


# ----------------------------------------------------------------------------- link jobs


def test_link_jobs_for_budget() -> None:
    assert link_jobs_for_budget(21 * GiB, 6 * GiB) == 3
    assert link_jobs_for_budget(96 * GiB, 6 * GiB, concurrent_links=4) == 4  # the PR #347 case
    assert link_jobs_for_budget(1 * GiB, 6 * GiB) == 1  # never 0
    assert link_jobs_for_budget(10**15, GiB) == 16  # never above upstream's 16
    assert link_jobs_for_budget(10**15, GiB, max_jobs=8) == 8
    assert link_jobs_for_budget(20 * GiB, 6 * GiB, reserved_bytes=10 * GiB) == 1
    with pytest.raises(BadInput):
        link_jobs_for_budget(GiB, 0)


# ----------------------------------------------------------------------------- defines


def test_cmake_defines_low_ram_with_presets(manifest: xpu_adapter.XpuManifest) -> None:
    res = compat.resolve("2.12.0+xpu")
    defines = cmake_defines_for(res, 16 * GiB, "bmg-g31-a0", None, True, None, manifest=manifest)
    assert defines == {
        "BUILDCTL_SYCL_LINK_JOBS": "2",
        "BUILDCTL_XPU_AOT_DEVICES": "bmg-g31-a0",
        "BUILDCTL_XPU_XE2_AOT_DEVICES": "bmg-g31-a0",
        "VLLM_PAGED_DECODE_CONFIG": "paged_decode_default.conf",
        "VLLM_CHUNK_PREFILL_CONFIG": "chunk_prefill_default.conf",
    }


def test_cmake_defines_full_build_keeps_upstream_defaults(manifest) -> None:
    res = compat.resolve("2.13.0+xpu")
    defines = cmake_defines_for(res, 200 * GiB, None, None, False, {"X": "1"}, manifest=manifest)
    assert defines == {"BUILDCTL_SYCL_LINK_JOBS": "16", "X": "1"}
    jit = cmake_defines_for(
        res,
        8 * GiB,
        "",
        "full",
        False,
        None,
        no_rdc=True,
        per_link_job_bytes=GiB,
        manifest=manifest,
    )
    assert jit["BUILDCTL_XPU_AOT_DEVICES"] == ""  # empty = AOT off, as upstream
    assert jit["VLLM_PAGED_DECODE_CONFIG"] == "paged_decode_full.conf"
    assert jit["BUILDCTL_SYCL_NO_RDC"] == "ON" and jit["BUILDCTL_SYCL_LINK_JOBS"] == "8"


def test_presets_only_where_the_ref_has_them(manifest: xpu_adapter.XpuManifest) -> None:
    old = compat.resolve("2.11.0+xpu")  # v0.1.9: no kernel_configs yet
    assert "VLLM_PAGED_DECODE_CONFIG" not in cmake_defines_for(
        old, 16 * GiB, None, None, True, None, manifest=manifest
    )
    with pytest.raises(BadInput) as exc:
        cmake_defines_for(old, 16 * GiB, None, "default", False, None, manifest=manifest)
    assert "v0.1.10" in exc.value.what
    with pytest.raises(BadInput):
        cmake_defines_for(
            compat.resolve("2.12.0+xpu"), GiB, None, "tiny", False, None, manifest=manifest
        )


def test_aot_env() -> None:
    assert xpu_adapter.aot_env(None) == {}
    assert xpu_adapter.aot_env("pvc") == {
        "VLLM_XPU_AOT_DEVICES": "pvc",
        "VLLM_XPU_XE2_AOT_DEVICES": "pvc",
    }


def test_patches_for_resolution() -> None:
    paths = xpu_adapter.patches_for(compat.resolve("2.11.0+xpu"))
    assert len(paths) == 1 and paths[0].is_file()
    assert xpu_adapter.patches_for(compat.resolve("2.13.0+xpu")) == []


# ----------------------------------------------------------------------------- pre-staging


def make_git_repo(path: Path, files: dict[str, str]) -> str:
    """A tiny local git repo standing in for a dependency; returns its HEAD commit."""
    path.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    run = {"cwd": path, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)
    subprocess.run(["git", "add", "-A"], **run)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], **run
    )
    return subprocess.run(["git", "rev-parse", "HEAD"], text=True, **run).stdout.strip()


def _deps(tmp_path: Path) -> dict[str, tuple[str, str]]:
    tla = make_git_repo(tmp_path / "up" / "sycl-tla", {"include/cute/x.hpp": "// tla\n"})
    dnn = make_git_repo(tmp_path / "up" / "oneDNN", {"include/dnnl.hpp": "// dnnl\n"})
    return {
        "sycl-tla": (str(tmp_path / "up" / "sycl-tla"), tla),
        "oneDNN": (str(tmp_path / "up" / "oneDNN"), dnn),
    }


def test_prestage_fetchcontent_ref(tmp_path: Path, manifest) -> None:
    overrides = _deps(tmp_path)
    cache = tmp_path / "cache"
    staged = prestage_deps(manifest, "v0.1.13.1", cache, overrides=overrides)
    tla = Path(staged.defines["FETCHCONTENT_SOURCE_DIR_CUTLASS-SYCL"])
    assert (tla / "include/cute/x.hpp").is_file()
    assert staged.defines["VLLM_CUTLASS_SRC_DIR"] == str(tla)
    assert (Path(staged.defines["FETCHCONTENT_SOURCE_DIR_ONEDNN"]) / "include/dnnl.hpp").is_file()
    assert staged.defines["FETCHCONTENT_FULLY_DISCONNECTED"] == "ON"
    assert staged.submodules == {}
    # second run: served from the cache, even with the "upstream" gone
    import shutil

    shutil.rmtree(tmp_path / "up")
    again = prestage_deps(manifest, "v0.1.13.1", cache, overrides=overrides)
    assert again.defines == staged.defines


def test_prestage_submodule_ref_and_populate(tmp_path: Path, manifest) -> None:
    overrides = _deps(tmp_path)
    staged = prestage_deps(manifest, "v0.1.9", tmp_path / "cache", overrides=overrides)
    assert "FETCHCONTENT_SOURCE_DIR_ONEDNN" not in staged.defines
    assert set(staged.submodules) == {"third_party/oneDNN"}
    src = tmp_path / "src"
    (src / "third_party" / "oneDNN").mkdir(parents=True)  # an uninitialised submodule
    linked = populate_submodules(src, staged)
    assert linked == [src / "third_party" / "oneDNN"]
    assert (src / "third_party" / "oneDNN" / "include" / "dnnl.hpp").is_file()
    assert populate_submodules(src, staged) == []  # idempotent


def test_prestage_bad_revision_and_url(tmp_path: Path, manifest) -> None:
    overrides = _deps(tmp_path)
    overrides["sycl-tla"] = (overrides["sycl-tla"][0], "0" * 40)
    with pytest.raises(BuildFailed) as exc:
        prestage_deps(manifest, "v0.1.13.1", tmp_path / "c1", overrides=overrides)
    assert "not in" in exc.value.what
    overrides["sycl-tla"] = (str(tmp_path / "nowhere"), "0" * 40)
    with pytest.raises(BuildFailed) as exc:
        prestage_deps(manifest, "v0.1.13.1", tmp_path / "c2", overrides=overrides)
    assert "cannot clone" in exc.value.what and "git clone --mirror" in exc.value.fix
