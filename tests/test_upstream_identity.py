"""The tag decides: reading a checkout's tag/commit, its setup.py and CMakeLists.txt, and
matching it against `--torch` (pure functions table-driven over every tag of the matrix; the
I/O parts on small git repos here and on real upstream tags when a clone is available)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from upstream_checkouts import SKIP_REASON, checkout_tag, export_tag, git, upstream_git_dir

from buildctl.errors import BadInput
from buildctl.toolchain import compat, upstream

MATRIX = compat.load_matrix()
ROWS = MATRIX.kernel_refs
UPSTREAM = upstream_git_dir()


def _cmake_text(row: compat.KernelRef) -> str:
    """The pins of a tag's CMakeLists.txt as upstream writes them (from the matrix row)."""
    lines = [
        "cmake_minimum_required(VERSION 3.26)",
        'set(PYTHON_SUPPORTED_VERSIONS "3.9" "3.10" "3.11" "3.12")',
        f'set(TORCH_SUPPORTED_VERSION_XPU "{row.torch_cmake}")',
        f'  set(CUTLASS_REVISION\n      "{row.sycl_tla.revision}"\n      CACHE STRING "x")',
    ]
    if row.onednn.mode == "fetchcontent":
        lines.append(f'set(ONEDNN_GIT_TAG\n    "{row.onednn.revision}"\n    CACHE STRING "x")')
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("v0.1.13.1-0-g07d44bc", ("v0.1.13.1", 0, "07d44bc", False)),
        ("v0.1.9-3-gabcdef12-dirty", ("v0.1.9", 3, "abcdef12", True)),
        ("v0.1.4-rc0-12-g60e0e85", ("v0.1.4-rc0", 12, "60e0e85", False)),
        ("07d44bc", None),
    ],
)
def test_parse_describe(text: str, expected: tuple | None) -> None:
    assert upstream.parse_describe(text) == expected


@pytest.mark.parametrize(
    "tag, distance, version",
    [("v0.1.13.1", 0, "0.1.13.1"), ("v0.1.9", 3, "0.1.10.dev3"), ("v0.1.10.1", 1, "0.1.10.2.dev1")],
)
def test_scm_version_like_setuptools_scm(tag: str, distance: int, version: str) -> None:
    assert upstream.scm_version(tag, distance) == version


@pytest.mark.parametrize("row", ROWS, ids=[r.ref for r in ROWS])
def test_fingerprint_names_a_tag_with_the_same_pins(row: compat.KernelRef) -> None:
    refs = upstream.fingerprint_refs(upstream.cmake_facts(_cmake_text(row)), MATRIX)
    assert row.ref in [r.ref for r in refs]
    for other in refs:  # every candidate builds the same deps with the same torch pin
        assert other.sycl_tla.revision == row.sycl_tla.revision
        assert other.onednn.mode == row.onednn.mode


@pytest.mark.parametrize("row", ROWS, ids=[r.ref for r in ROWS])
def test_torch_mismatch_names_the_fitting_tag(row: compat.KernelRef) -> None:
    upstream.check_torch_fits(row, row.builds_with_torch, MATRIX)  # its own torch fits
    for torch_row in MATRIX.torch:
        release = torch_row.releases[0] if torch_row.releases else f"{torch_row.series}.0"
        if release == row.builds_with_torch:
            continue
        with pytest.raises(BadInput) as info:
            upstream.check_torch_fits(row, release, MATRIX)
        assert row.ref in info.value.what and row.builds_with_torch in info.value.what
        if torch_row.recommended_ref:
            assert torch_row.recommended_ref in info.value.what
            assert f"git checkout {torch_row.recommended_ref}" in info.value.fix


def test_v0_1_13_1_with_torch_2_11_is_refused() -> None:
    """The issue's case: a v0.1.13.1 checkout built with --torch 2.11.0+xpu silently got v0.1.9."""
    with pytest.raises(BadInput) as info:
        upstream.check_torch_fits(MATRIX.ref("v0.1.13.1"), "2.11.0", MATRIX)
    assert "v0.1.13.1" in info.value.what and "v0.1.9" in info.value.what


def _repo(tmp: Path, tag: str | None, extra_commits: int = 0) -> Path:
    src = tmp / "src"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(_cmake_text(MATRIX.ref("v0.1.11.1")))
    (src / "setup.py").write_text("cmake_args = ['-DVLLM_PYTHON_EXECUTABLE={}']\n")
    git("init", "-q", cwd=src)
    commit = ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm"]
    git("add", "-A", cwd=src)
    git(*commit, "init", cwd=src)
    if tag:
        git("tag", tag, cwd=src)
    for n in range(extra_commits):
        (src / f"f{n}").write_text(str(n))
        git("add", "-A", cwd=src)
        git(*commit, f"c{n}", cwd=src)
    return src


def test_identify_tagged_checkout(tmp_path: Path) -> None:
    src = _repo(tmp_path, "v0.1.11.1")
    ident = upstream.identify_checkout(src, MATRIX)
    assert (ident.tag, ident.distance, ident.dirty, ident.how) == (
        "v0.1.11.1",
        0,
        False,
        "git describe",
    )
    assert ident.commit == git("rev-parse", "HEAD", cwd=src)


def test_identify_commits_after_a_tag_and_local_edits(tmp_path: Path) -> None:
    src = _repo(tmp_path, "v0.1.11", extra_commits=2)
    (src / "CMakeLists.txt").write_text("# edited\n")
    ident = upstream.identify_checkout(src, MATRIX)
    assert (ident.tag, ident.distance, ident.dirty) == ("v0.1.11", 2, True)
    assert "2 commits after v0.1.11" in ident.describe() and "local changes" in ident.describe()


def test_identify_without_git_by_version_file_then_fingerprint(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(_cmake_text(MATRIX.ref("v0.1.13.1")))
    ident = upstream.identify_checkout(src, MATRIX)
    assert (ident.tag, ident.how) == ("v0.1.13.1", "CMakeLists.txt fingerprint")
    (src / "_version.py").write_text("__version__ = version = '0.1.13'\n")
    assert upstream.identify_checkout(src, MATRIX).tag == "v0.1.13"


def test_unknown_tree_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "CMakeLists.txt").write_text("project(x)\n")
    ident = upstream.identify_checkout(tmp_path, MATRIX)
    with pytest.raises(BadInput, match="cannot tell which vllm-xpu-kernels release"):
        upstream.ref_for_identity(ident, MATRIX)


def test_identify_leaves_the_index_alone(tmp_path: Path) -> None:
    src = _repo(tmp_path, "v0.1.11.1")
    index = (src / ".git" / "index").read_bytes()
    (src / "setup.py").touch()  # stat change: a plain `git status` would rewrite the index
    upstream.identify_checkout(src, MATRIX)
    assert (src / ".git" / "index").read_bytes() == index


# ----------------------------------------------------------------------------- real upstream

needs_upstream = pytest.mark.skipif(UPSTREAM is None, reason=SKIP_REASON)


@needs_upstream
@pytest.mark.parametrize("row", ROWS, ids=[r.ref for r in ROWS])
def test_real_tags_read_as_the_matrix_says(row: compat.KernelRef) -> None:
    assert UPSTREAM is not None
    show = ["git", "--git-dir", str(UPSTREAM), "show"]
    cmake = subprocess.run([*show, f"{row.ref}:CMakeLists.txt"], capture_output=True, text=True)
    setup = subprocess.run([*show, f"{row.ref}:setup.py"], capture_output=True, text=True)
    facts = upstream.cmake_facts(cmake.stdout)
    assert facts.torch_supported == row.torch_cmake
    assert facts.cutlass_revision == row.sycl_tla.revision
    assert facts.cmake_min == row.cmake_min
    assert list(facts.python_versions) == row.python_supported_versions
    assert facts.aot_from_env == row.aot_devices_from_env
    assert facts.needs_python_executable
    assert (facts.onednn_tag is not None) == (row.onednn.mode == "fetchcontent")
    assert row.ref in [r.ref for r in upstream.fingerprint_refs(facts, MATRIX)]
    sf = upstream.setup_facts(setup.stdout)
    assert sf.toolchain_file == "cmake/toolchain.cmake"
    assert sf.python_executable and sf.target_device and sf.fetchcontent_base_dir


@needs_upstream
@pytest.mark.parametrize("tag", ["v0.1.8.1", "v0.1.9.1", "v0.1.12.1"])
def test_real_checkout_and_tarball_identify(tmp_path: Path, tag: str) -> None:
    assert UPSTREAM is not None
    src = checkout_tag(UPSTREAM, tag, tmp_path / "co")
    ident = upstream.identify_checkout(src, MATRIX)
    assert (ident.tag, ident.distance, ident.dirty) == (tag, 0, False)
    assert ident.commit == MATRIX.ref(tag).commit
    plain = export_tag(UPSTREAM, tag, tmp_path / "plain")
    by_pins = upstream.identify_checkout(plain, MATRIX)
    assert by_pins.how == "CMakeLists.txt fingerprint"
    assert MATRIX.ref(by_pins.tag or "").sycl_tla == MATRIX.ref(tag).sycl_tla
