"""The compatibility matrix: data integrity, sources, resolve()."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from buildctl.errors import BadInput
from buildctl.toolchain import compat

REPO = Path(__file__).resolve().parents[1]
SHARED_REF = REPO.parent / "shared" / "reference"


@pytest.fixture(scope="module")
def matrix() -> compat.CompatMatrix:
    return compat.load_matrix()


def test_repo_copy_is_the_packaged_file() -> None:
    repo_copy = REPO / "profiles" / "compat" / "matrix.json"
    assert repo_copy.resolve() == compat.default_matrix_path().resolve()
    assert compat.load_matrix(repo_copy) == compat.load_matrix()


def test_every_row_names_known_sources(matrix: compat.CompatMatrix) -> None:
    sources = set(matrix.sources)
    for ref in matrix.kernel_refs:
        assert ref.source and set(ref.source) <= sources, ref.ref
        assert ref.builds_with_source and ref.oneapi_source and ref.requires_python_source
        assert ref.sycl_tla.source and ref.onednn.source
    for row in matrix.torch:
        assert row.source and set(row.source) <= sources, row.series
        assert row.evidence and row.python_source
    for prob in matrix.problems:
        assert set(prob.source) <= sources, prob.id
    for row in matrix.oneapi:
        assert row.source


def test_matrix_matches_reference_tags(matrix: compat.CompatMatrix) -> None:
    tsv = SHARED_REF / "vllm-xpu-kernels-tags.tsv"
    if not tsv.exists():
        pytest.skip(f"{tsv} not available")
    rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
    assert [r["tag"] for r in rows] == [k.ref for k in matrix.kernel_refs]
    for r in rows:
        ref = matrix.ref(r["tag"])
        assert ref.commit == r["commit"]
        assert ref.torch_cmake == r["torch_supported_version_xpu"]
        assert "torch==" + ref.torch_requirements == r["requirements_torch_pin"]
        assert ref.sycl_tla.revision == r["sycl_tla_revision"]
        if r["onednn_tag"]:
            assert ref.onednn.mode == "fetchcontent" and ref.onednn.revision == r["onednn_tag"]
        else:
            assert ref.onednn.mode == "submodule" and ref.onednn.path == "third_party/oneDNN"
        if r["oneapi_in_wheel_workflow"] != "unknown":
            assert ref.oneapi == r["oneapi_in_wheel_workflow"]


def test_matrix_matches_reference_torch_runtime(matrix: compat.CompatMatrix) -> None:
    tsv = SHARED_REF / "torch-xpu-oneapi.tsv"
    if not tsv.exists():
        pytest.skip(f"{tsv} not available")
    for r in csv.DictReader(tsv.open(), delimiter="\t"):
        row = next(t for t in matrix.torch if t.series == r["torch"])
        assert row.libsycl_soname == r["libsycl_soname"]
        if not r["intel_sycl_rt"].startswith("?"):
            assert row.runtime_wheels["intel-sycl-rt"] == r["intel_sycl_rt"]
            assert row.oneapi == r["oneapi_dpcpp"]


def test_cmake_vs_requirements_inconsistency_recorded(matrix: compat.CompatMatrix) -> None:
    for tag in ("v0.1.0", "v0.1.3", "v0.1.6"):
        ref = matrix.ref(tag)
        assert ref.torch_cmake == "2.9.0"
        assert ref.torch_requirements == "2.10.0+xpu"
        assert ref.builds_with_torch == "2.10.0"  # the requirements pin is what builds
        assert "cmake-vs-requirements-torch" in ref.problems
    assert "cmake-vs-requirements-torch" not in matrix.ref("v0.1.7").problems


def test_h576_refs_carry_the_patch(matrix: compat.CompatMatrix) -> None:
    patched = {r.ref for r in matrix.kernel_refs if r.patches}
    assert patched == {"v0.1.8.1", "v0.1.8.2", "v0.1.9", "v0.1.9.1"}
    prob = matrix.problem("h576-decode-blowup")
    assert set(prob.refs) == patched and prob.fixed_in and prob.fixed_in.startswith("v0.1.10")
    root = REPO / "patches" / "vllm-xpu-kernels"
    for ref in matrix.kernel_refs:
        for rel in ref.patches:
            assert (root / rel).is_file(), rel


def test_torch_rows_list_refs_that_build_with_them(matrix: compat.CompatMatrix) -> None:
    for row in matrix.torch:
        for tag in row.kernel_refs:
            assert matrix.ref(tag).builds_with_torch.startswith(row.series + ".")
        if row.recommended_ref:
            assert row.recommended_ref in row.kernel_refs


@pytest.mark.parametrize(
    ("torch", "ref", "oneapi", "soname"),
    [
        ("2.10.0+xpu", "v0.1.6", "2025.3", "libsycl.so.8"),
        ("2.11.0+xpu", "v0.1.9", "2025.3", "libsycl.so.8"),
        ("2.12.0+xpu", "v0.1.11.1", "2025.3", "libsycl.so.8"),
        ("2.13.0+xpu", "v0.1.13.1", "2026.0", "libsycl.so.9"),
    ],
)
def test_resolve(torch: str, ref: str, oneapi: str, soname: str) -> None:
    res = compat.resolve(torch)
    assert (res.kernel_ref, res.oneapi, res.libsycl_soname) == (ref, oneapi, soname)
    assert res.torch == torch and res.torch_release == torch.split("+")[0]


def test_resolve_211_field_stack() -> None:
    res = compat.resolve("2.11.0+xpu")
    assert res.patches == ["v0.1.8.1/0001-restrict-h576-decode-to-instantiated-pages.patch"]
    assert res.problems == ["h576-decode-blowup"]
    assert res.runtime_wheels == {"intel-sycl-rt": "2025.3.2"}
    assert res.python == ">=3.10,<3.14"
    assert compat.python_ok(res, "3.11.7") and not compat.python_ok(res, "3.14.0")
    assert any("compiler/2025.3/env/vars.sh" in n for n in res.notes)
    assert "v0.1.8" in res.alternatives
    assert res.onednn.mode == "submodule" and res.sycl_tla.name == "cutlass-sycl"


def test_resolve_without_local_label_notes_the_cuda_trap() -> None:
    res = compat.resolve("2.12.0")
    assert res.torch == "2.12.0+xpu"
    assert any("CUDA build" in n for n in res.notes)


def test_resolve_with_explicit_ref() -> None:
    assert compat.resolve("2.11.0+xpu", kernel_ref="v0.1.8").patches == []
    with pytest.raises(BadInput) as exc:
        compat.resolve("2.11.0+xpu", kernel_ref="v0.1.13")
    assert "builds with torch 2.13.0" in exc.value.what
    with pytest.raises(BadInput):
        compat.resolve("2.11.0+xpu", kernel_ref="v9.9.9")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("2.11", "not a full release"),
        ("banana", "cannot read"),
        ("2.11.1+xpu", "not in the compatibility matrix"),
        ("3.0.0+xpu", "not in the compatibility matrix"),
        ("2.11.0+cu128", "not an XPU build"),
        ("2.13.0.dev20260520+xpu", "nightly"),
        ("2.9.0+xpu", "no vllm-xpu-kernels ref"),
    ],
)
def test_resolve_bad_versions(text: str, words: str) -> None:
    with pytest.raises(BadInput) as exc:
        compat.resolve(text)
    assert words in exc.value.what
    assert exc.value.exit_code == 2
    if "XPU build" not in exc.value.what:
        assert "2.11.0+xpu" in exc.value.fix and "2.13.0+xpu" in exc.value.fix


def test_loader_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(BadInput):
        compat.load_matrix(bad)
    data = json.loads(compat.default_matrix_path().read_text())
    del data["torch"][0]["oneapi"]
    bad.write_text(json.dumps(data))
    with pytest.raises(BadInput) as exc:
        compat.load_matrix(bad)
    assert "torch.0.oneapi" in exc.value.what
    data = json.loads(compat.default_matrix_path().read_text())
    data["schema"] = "other/9"
    bad.write_text(json.dumps(data))
    with pytest.raises(BadInput):
        compat.load_matrix(bad)
    with pytest.raises(BadInput):
        compat.load_matrix(tmp_path / "missing.json")


def test_soname_lookup(matrix: compat.CompatMatrix) -> None:
    assert matrix.soname_for("2025.3.1") == "libsycl.so.8"
    assert matrix.soname_for("2026.0") == "libsycl.so.9"
    assert matrix.soname_for("2030.1") is None
