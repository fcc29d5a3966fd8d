"""Patch files for kernel sources: parse and validate unified diffs, apply them idempotently.

`parse_unified_diff` and `validate_patch` are pure; `apply_patches` runs `git apply` in the
source tree (which need not be a git repository).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from buildctl.errors import BadInput

# What a kernel patch may touch: sources and build files, never tests, CI or packaging metadata.
DEFAULT_ALLOWED = ("csrc/", "cmake/", "CMakeLists.txt", "setup.py")
_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass
class FilePatch:
    old_path: str | None  # None for /dev/null (new file)
    new_path: str | None  # None for /dev/null (deleted file)
    hunks: int = 0
    added: int = 0
    removed: int = 0
    errors: list[str] = field(default_factory=list)


def _strip_prefix(path: str) -> str | None:
    path = path.split("\t", 1)[0].strip()
    if path == "/dev/null":
        return None
    if path.startswith(("a/", "b/")):
        return path[2:]
    return path


def parse_unified_diff(text: str) -> list[FilePatch]:
    """Split a unified diff into files and check every hunk's line counts."""
    lines = text.splitlines()
    files: list[FilePatch] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            current = FilePatch(_strip_prefix(line[4:]), _strip_prefix(lines[i + 1][4:]))
            files.append(current)
            i += 2
            while i < len(lines) and lines[i].startswith("@@"):
                match = _HUNK_RE.match(lines[i])
                if not match:
                    current.errors.append(f"line {i + 1}: malformed hunk header {lines[i]!r}")
                    break
                old_n = int(match.group(2) or 1)
                new_n = int(match.group(4) or 1)
                current.hunks += 1
                i += 1
                while i < len(lines) and (old_n > 0 or new_n > 0):
                    body = lines[i]
                    tag = body[:1]
                    if tag == " " or body == "":
                        old_n -= 1
                        new_n -= 1
                    elif tag == "-":
                        old_n -= 1
                        current.removed += 1
                    elif tag == "+":
                        new_n -= 1
                        current.added += 1
                    elif tag == "\\":
                        pass  # "\ No newline at end of file"
                    else:
                        break
                    i += 1
                if old_n != 0 or new_n != 0:
                    current.errors.append(
                        f"hunk {current.hunks} of {current.new_path or current.old_path}: line "
                        f"counts do not match its header (left over: -{old_n} +{new_n})"
                    )
                while i < len(lines) and lines[i].startswith("\\"):
                    i += 1
            continue
        i += 1
    return files


def validate_patch(text: str, allowed: Sequence[str] = DEFAULT_ALLOWED) -> list[str]:
    """Problems with a patch file; empty when it is a well-formed diff touching allowed paths."""
    files = parse_unified_diff(text)
    if not files:
        return ["no file diffs found (expected ---/+++ headers)"]
    problems: list[str] = []
    for fp in files:
        problems.extend(fp.errors)
        if fp.hunks == 0:
            problems.append(f"{fp.new_path or fp.old_path}: no hunks")
        for path in {fp.old_path, fp.new_path} - {None}:
            assert path is not None
            if ".." in Path(path).parts or path.startswith("/"):
                problems.append(f"{path}: path escapes the source tree")
            elif not any(path == a or (a.endswith("/") and path.startswith(a)) for a in allowed):
                problems.append(f"{path}: outside the allowed paths ({', '.join(allowed)})")
    return problems


@dataclass(frozen=True)
class PatchResult:
    patch: Path
    status: Literal["applied", "already-applied"]


def _git_apply(src_dir: Path, patch: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # Keep git from treating a parent repository as the tree to patch when src_dir is a plain
    # directory (e.g. an unpacked sdist inside some other checkout).
    env["GIT_CEILING_DIRECTORIES"] = str(src_dir.resolve().parent)
    return subprocess.run(
        ["git", "apply", *extra, str(patch.resolve())],
        cwd=src_dir,
        capture_output=True,
        text=True,
        env=env,
    )


def list_patches(patches: Path | Sequence[Path]) -> list[Path]:
    """A directory means its `*.patch` files in name order; a sequence is taken as given."""
    if isinstance(patches, Path):
        if not patches.is_dir():
            return []
        return sorted(patches.glob("*.patch"))
    return list(patches)


def apply_patches(
    src_dir: str | os.PathLike[str], patches: Path | Sequence[Path]
) -> list[PatchResult]:
    """Apply each patch once: applied, already applied, or stop with what to do."""
    src = Path(src_dir)
    if not src.is_dir():
        raise BadInput(f"source directory {src} does not exist", "fetch the kernel source first")
    results: list[PatchResult] = []
    for patch in list_patches(patches):
        if not patch.is_file():
            raise BadInput(f"patch {patch} does not exist", "check the patches/ folder and matrix")
        forward = _git_apply(src, patch, "--check")
        if forward.returncode == 0:
            done = _git_apply(src, patch)
            if done.returncode != 0:
                raise BadInput(
                    f"patch {patch.name} passed --check but failed to apply in {src}: "
                    f"{done.stderr.strip()}",
                    "check the source tree for concurrent changes and re-run",
                )
            results.append(PatchResult(patch, "applied"))
            continue
        reverse = _git_apply(src, patch, "--reverse", "--check")
        if reverse.returncode == 0:
            results.append(PatchResult(patch, "already-applied"))
            continue
        reason = (forward.stderr.strip().splitlines() or ["no detail"])[0]
        raise BadInput(
            f"patch {patch.name} neither applies to nor is already applied in {src} ({reason})",
            "the tree is not the ref the patch was written for, or it has local edits: check out "
            "that ref fresh (git checkout -- . && git clean -fd) or refresh the patch",
        )
    return results


def patches_for_ref(patch_root: Path, relative: Sequence[str]) -> list[Path]:
    """Resolve the matrix's per-ref patch list (paths relative to patches/<project>/)."""
    return [patch_root / rel for rel in relative]
