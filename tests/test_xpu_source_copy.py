"""The user's source tree is read-only: patches, staged dependency links and generated files go
into a build-owned copy keyed by the tree's content."""

from __future__ import annotations

import os
from pathlib import Path

from upstream_checkouts import git, tree_state

from buildctl.toolchain.source_copy import copy_dir_for, stage_source

PATCH = """--- a/csrc/kernel.hpp
+++ b/csrc/kernel.hpp
@@ -1,2 +1,2 @@
 // kernel
-int pages = 16;
+int pages = 64;
"""


def _checkout(tmp: Path) -> Path:
    src = tmp / "user-checkout"
    (src / "csrc").mkdir(parents=True)
    (src / "third_party" / "oneDNN").mkdir(parents=True)  # an uninitialised submodule
    (src / "csrc" / "kernel.hpp").write_text("// kernel\nint pages = 16;\n")
    (src / "CMakeLists.txt").write_text("project(x)\n")
    (src / ".gitignore").write_text("build/\n")
    git("init", "-q", cwd=src)
    git("add", "-A", cwd=src)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", cwd=src)
    return src


def test_copy_gets_patches_and_links_checkout_stays_byte_identical(tmp_path: Path) -> None:
    src = _checkout(tmp_path)
    patch = tmp_path / "0001.patch"
    patch.write_text(PATCH)
    dep = tmp_path / "deps" / "oneDNN"
    dep.mkdir(parents=True)
    before = tree_state(src)
    dest = copy_dir_for(src, tmp_path / "cache", "proj")
    staged = stage_source(src, dest, patches=[patch], links={"third_party/oneDNN": dep})
    assert tree_state(src) == before
    assert before[0] == ""  # git status --porcelain --ignored: clean
    assert staged.path == dest and not staged.reused
    assert staged.commit == git("rev-parse", "HEAD", cwd=src)
    assert "pages = 64" in (dest / "csrc" / "kernel.hpp").read_text()
    assert "pages = 16" in (src / "csrc" / "kernel.hpp").read_text()
    assert (dest / "third_party" / "oneDNN").resolve() == dep.resolve()
    assert not (src / "third_party" / "oneDNN").is_symlink()
    assert not (dest / ".git").exists()


def test_same_content_is_reused_and_edits_resync_only_what_changed(tmp_path: Path) -> None:
    src = _checkout(tmp_path)
    dest = copy_dir_for(src, tmp_path / "cache", "proj")
    first = stage_source(src, dest)
    assert stage_source(src, dest).reused
    cmake_mtime = (dest / "CMakeLists.txt").stat().st_mtime_ns
    os.utime(dest / "CMakeLists.txt", ns=(1, 1))  # so a rewrite would show
    # an uncommitted edit and an untracked file are part of the sources; ignored build output not
    (src / "csrc" / "kernel.hpp").write_text("// kernel\nint pages = 32;\n")
    (src / "csrc" / "new.cpp").write_text("int x;\n")
    (src / "build").mkdir()
    (src / "build" / "junk.o").write_text("x")
    before = tree_state(src)
    second = stage_source(src, dest)
    assert tree_state(src) == before
    assert second.key != first.key and not second.reused
    assert "pages = 32" in (dest / "csrc" / "kernel.hpp").read_text()
    assert (dest / "csrc" / "new.cpp").is_file()
    assert not (dest / "build").exists()
    assert (dest / "CMakeLists.txt").stat().st_mtime_ns == 1 != cmake_mtime  # not rewritten
    (src / "csrc" / "new.cpp").unlink()
    stage_source(src, dest)
    assert not (dest / "csrc" / "new.cpp").exists()


def test_plain_directory_without_git(tmp_path: Path) -> None:
    src = tmp_path / "plain"
    (src / "csrc").mkdir(parents=True)
    (src / "csrc" / "a.cpp").write_text("int a;\n")
    before = tree_state(src)
    dest = tmp_path / "copy"
    staged = stage_source(src, dest)
    assert staged.commit is None and (dest / "csrc" / "a.cpp").read_text() == "int a;\n"
    assert stage_source(src, dest).reused
    (src / "csrc" / "a.cpp").write_text("int b;\n")
    assert not stage_source(src, dest).reused
    assert (dest / "csrc" / "a.cpp").read_text() == "int b;\n"
    assert tree_state(src) != before  # (the test's own edit) — the copy followed it
