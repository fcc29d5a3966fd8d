"""Patch files: well-formed, touching only allowed paths, applied idempotently.

The test against real upstream source runs where a vllm-project/vllm-xpu-kernels clone with its
tags is found (BUILDCTL_VLLM_XPU_SRC or the fetch mirror, see upstream_checkouts): each listed tag
is cloned into the test's tmp dir, the clone itself is only read.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from upstream_checkouts import SKIP_REASON, checkout_tag, upstream_git_dir

from buildctl.errors import BadInput
from buildctl.toolchain import compat
from buildctl.toolchain.patches import apply_patches, parse_unified_diff, validate_patch

REPO = Path(__file__).resolve().parents[1]
PATCH_ROOT = REPO / "patches"
ALL_PATCHES = sorted(PATCH_ROOT.rglob("*.patch"))


def test_there_are_patches() -> None:
    assert ALL_PATCHES, "expected at least the vllm-xpu-kernels h576 backport"


@pytest.mark.parametrize("patch", ALL_PATCHES, ids=lambda p: str(p.relative_to(PATCH_ROOT)))
def test_patch_is_well_formed(patch: Path) -> None:
    text = patch.read_text()
    assert validate_patch(text) == []
    files = parse_unified_diff(text)
    assert all(f.old_path == f.new_path for f in files)  # edits only: no adds, deletes, renames
    assert sum(f.added + f.removed for f in files) < 200, "patches must stay minimal"


def test_every_patch_is_listed_in_the_matrix() -> None:
    listed = {rel for ref in compat.load_matrix().kernel_refs for rel in ref.patches}
    on_disk = {str(p.relative_to(PATCH_ROOT / "vllm-xpu-kernels")) for p in ALL_PATCHES}
    assert on_disk == listed


def test_validate_rejects_bad_diffs() -> None:
    good_hunk = "@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
    assert validate_patch(f"--- a/csrc/x.cpp\n+++ b/csrc/x.cpp\n{good_hunk}") == []
    assert validate_patch("just text") == ["no file diffs found (expected ---/+++ headers)"]
    assert any(
        "outside the allowed" in p
        for p in validate_patch(f"--- a/.github/ci.yml\n+++ b/.github/ci.yml\n{good_hunk}")
    )
    assert any(
        "escapes" in p
        for p in validate_patch(f"--- a/csrc/../../x\n+++ b/csrc/../../x\n{good_hunk}")
    )
    short = "--- a/csrc/x.cpp\n+++ b/csrc/x.cpp\n@@ -1,3 +1,3 @@\n a\n-b\n+c\n"
    assert any("do not match" in p for p in validate_patch(short))
    assert any("no hunks" in p for p in validate_patch("--- a/csrc/x\n+++ b/csrc/x\n"))


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def _tree(tmp_path: Path, as_git: bool) -> tuple[Path, Path]:
    src = tmp_path / "src"
    (src / "csrc").mkdir(parents=True)
    (src / "csrc" / "a.cpp").write_text("one\ntwo\nthree\n")
    if as_git:
        _git(src, "init", "-q")
    patch = tmp_path / "0001-fix.patch"
    patch.write_text(
        "Subject: test\n\n---\n"
        "diff --git a/csrc/a.cpp b/csrc/a.cpp\n--- a/csrc/a.cpp\n+++ b/csrc/a.cpp\n"
        "@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n"
    )
    return src, patch


@pytest.mark.parametrize("as_git", [True, False])
def test_apply_is_idempotent(tmp_path: Path, as_git: bool) -> None:
    src, patch = _tree(tmp_path, as_git)
    first = apply_patches(src, [patch])
    assert [r.status for r in first] == ["applied"]
    assert (src / "csrc" / "a.cpp").read_text() == "one\nTWO\nthree\n"
    second = apply_patches(src, [patch])
    assert [r.status for r in second] == ["already-applied"]
    assert (src / "csrc" / "a.cpp").read_text() == "one\nTWO\nthree\n"


def test_apply_from_directory_in_name_order(tmp_path: Path) -> None:
    src, patch = _tree(tmp_path, True)
    folder = tmp_path / "series"
    folder.mkdir()
    patch.rename(folder / "0001-fix.patch")
    (folder / "0002-more.patch").write_text(
        "--- a/csrc/a.cpp\n+++ b/csrc/a.cpp\n@@ -1,3 +1,3 @@\n one\n TWO\n-three\n+THREE\n"
    )
    results = apply_patches(src, folder)
    assert [r.patch.name for r in results] == ["0001-fix.patch", "0002-more.patch"]
    assert (src / "csrc" / "a.cpp").read_text() == "one\nTWO\nTHREE\n"


def test_apply_conflict_names_patch_and_fix(tmp_path: Path) -> None:
    src, patch = _tree(tmp_path, True)
    (src / "csrc" / "a.cpp").write_text("something else entirely\n")
    with pytest.raises(BadInput) as exc:
        apply_patches(src, [patch])
    assert "0001-fix.patch" in exc.value.what
    assert "check out that ref fresh" in exc.value.fix


def test_apply_inside_a_parent_repo_patches_the_right_tree(tmp_path: Path) -> None:
    """A plain source dir nested in another git checkout must still be patched in place."""
    _git(tmp_path, "init", "-q")
    src, patch = _tree(tmp_path, False)
    assert [r.status for r in apply_patches(src, [patch])] == ["applied"]
    assert (src / "csrc" / "a.cpp").read_text() == "one\nTWO\nthree\n"


UPSTREAM = upstream_git_dir()


@pytest.mark.skipif(UPSTREAM is None, reason=SKIP_REASON)
def test_patches_apply_to_upstream_tags(tmp_path: Path) -> None:
    """Each patch series applies to a fresh checkout of its tag (its own clone in tmp_path:
    the upstream repository is only read), and a second run finds it applied."""
    assert UPSTREAM is not None
    matrix = compat.load_matrix()
    for ref in matrix.kernel_refs:
        if not ref.patches:
            continue
        has_tag = subprocess.run(
            ["git", "--git-dir", str(UPSTREAM), "rev-parse", "-q", "--verify",
             f"{ref.ref}^{{commit}}"],
            capture_output=True,
        )
        if has_tag.returncode != 0:
            pytest.fail(f"{UPSTREAM} has no tag {ref.ref}")
        work = checkout_tag(UPSTREAM, ref.ref, tmp_path / ref.ref)
        patches = [PATCH_ROOT / "vllm-xpu-kernels" / rel for rel in ref.patches]
        assert [r.status for r in apply_patches(work, patches)] == ["applied"] * len(patches)
        assert {r.status for r in apply_patches(work, patches)} == {"already-applied"}
