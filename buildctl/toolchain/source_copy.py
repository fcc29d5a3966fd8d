"""A build-owned copy of a user's source tree: patches, staged dependencies and generated files
go there, never into the user's checkout.

The copy lives at one path per checkout (so build dirs keyed on the source path stay warm) and
carries a content key: the checkout's HEAD commit plus its uncommitted diff and untracked files
(or, without git, every file's content), the patches and the staged links. The same key means
the copy is reused as it is. A new key rebuilds the tree in a staging folder and syncs it into
the copy file by file, rewriting only files whose bytes changed, so unchanged files keep their
timestamps and ninja stays incremental.

Reading the checkout is read-only: `git archive`, `git diff`, `git ls-files` with optional
locks off (a plain `git status` may rewrite the index).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildctl.errors import BadInput, BuildFailed
from buildctl.toolchain.patches import PatchResult, apply_patches

__all__ = ["StagedSource", "copy_dir_for", "stage_source", "tree_digest"]

STAMP = ".buildctl-source-key"
# Build outputs and caches inside a checkout are not sources.
SKIP_DIRS = frozenset({".git", "build", ".deps", "__pycache__", ".pytest_cache", ".eggs"})


@dataclass
class StagedSource:
    path: Path  # the build-owned copy
    key: str
    reused: bool
    commit: str | None
    patches: list[PatchResult] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)


def _git_env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_CEILING_DIRECTORIES"] = str(src.parent)
    env["GIT_OPTIONAL_LOCKS"] = "0"
    return env


def _git_bytes(src: Path, *args: str) -> bytes | None:
    proc = subprocess.run(
        ["git", "-C", str(src), *args], capture_output=True, check=False, env=_git_env(src)
    )
    return proc.stdout if proc.returncode == 0 else None


def _walk(src: Path) -> list[str]:
    """Relative paths of files and symlinks under `src`, sorted, build folders left out."""
    out: list[str] = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        rel_root = Path(root).relative_to(src)
        for name in files:
            out.append(str(rel_root / name) if str(rel_root) != "." else name)
        for name in dirs:
            if (Path(root) / name).is_symlink():
                out.append(str(rel_root / name) if str(rel_root) != "." else name)
    return sorted(out)


def tree_digest(root: Path, paths: Sequence[str] | None = None) -> str:
    """sha256 over every file's relative path and bytes (symlinks by target)."""
    digest = hashlib.sha256()
    for rel in paths if paths is not None else _walk(root):
        path = root / rel
        digest.update(rel.encode() + b"\0")
        if path.is_symlink():
            digest.update(b"L" + os.readlink(path).encode())
        elif path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        digest.update(b"\0")
    return digest.hexdigest()


def copy_dir_for(src: Path, root: Path, name: str) -> Path:
    """One copy per checkout path: rebuilding after an edit reuses the same build dir."""
    tag = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:10]
    return root / f"{name}-{tag}"


@dataclass(frozen=True)
class _Snapshot:
    commit: str | None
    key_parts: list[bytes]
    diff: bytes
    untracked: list[str]


def _snapshot(src: Path) -> _Snapshot:
    commit_raw = (
        _git_bytes(src, "rev-parse", "--verify", "HEAD^{commit}")
        if (src / ".git").exists()
        else None
    )
    if not commit_raw:
        files = _walk(src)
        return _Snapshot(None, [b"tree", tree_digest(src, files).encode()], b"", files)
    commit = commit_raw.decode().strip()
    diff = _git_bytes(src, "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff") or b""
    listed = _git_bytes(src, "ls-files", "--others", "--exclude-standard", "-z") or b""
    untracked = sorted(p for p in listed.decode().split("\0") if p)
    parts = [b"git", commit.encode(), hashlib.sha256(diff).hexdigest().encode()]
    parts.append(tree_digest(src, untracked).encode())
    return _Snapshot(commit, parts, diff, untracked)


def _materialize(src: Path, snap: _Snapshot, dest: Path) -> None:
    if snap.commit is None:
        for rel in snap.untracked:
            _copy_entry(src / rel, dest / rel)
        return
    archive = _git_bytes(src, "archive", "--format=tar", snap.commit)
    if archive is None:
        raise BuildFailed(
            f"git archive of {snap.commit[:12]} in {src} failed",
            "check that the checkout is a readable git repository (git -C SRC status)",
        )
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="tar")
    if snap.diff:
        proc = subprocess.run(
            ["git", "apply", "--binary", "--whitespace=nowarn", "-"],
            input=snap.diff,
            cwd=dest,
            capture_output=True,
            check=False,
            env=_git_env(dest),
        )
        if proc.returncode != 0:
            raise BuildFailed(
                f"could not carry the uncommitted changes of {src} into the build copy: "
                f"{proc.stderr.decode(errors='replace').strip()[:200]}",
                "commit or stash the changes and rerun",
            )
    for rel in snap.untracked:
        _copy_entry(src / rel, dest / rel)


def _copy_entry(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        dest.symlink_to(os.readlink(src))
    elif src.is_file():
        shutil.copy2(src, dest)


def _same(a: Path, b: Path) -> bool:
    if a.is_symlink() or b.is_symlink():
        return a.is_symlink() and b.is_symlink() and os.readlink(a) == os.readlink(b)
    if not b.is_file():
        return False
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def _sync(staging: Path, dest: Path) -> None:
    """Make `dest` hold exactly `staging`'s files, touching only what differs."""
    want = set(_walk(staging))
    if dest.is_dir():
        for rel in _walk(dest):
            if rel not in want and rel != STAMP:
                (dest / rel).unlink()
    for rel in sorted(want):
        src, out = staging / rel, dest / rel
        if _same(src, out):
            continue
        if out.is_symlink() or out.is_file():
            out.unlink()
        elif out.is_dir():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, out) if not src.is_symlink() else out.symlink_to(os.readlink(src))


def stage_source(
    src: Path,
    dest: Path,
    *,
    patches: Sequence[Path] = (),
    links: Mapping[str, Path] | None = None,
) -> StagedSource:
    """The build-owned copy of `src` at `dest`, with `patches` applied and `links` (path in the
    tree -> staged dependency checkout, e.g. third_party/oneDNN) in place. `src` is only read."""
    src = src.resolve()
    if not src.is_dir():
        raise BadInput(f"--source {src} is not a directory", "pass the top of a checkout")
    links = dict(links or {})
    snap = _snapshot(src)
    parts = list(snap.key_parts)
    for patch in patches:
        parts.append(hashlib.sha256(Path(patch).read_bytes()).hexdigest().encode())
    for rel, target in sorted(links.items()):
        parts.append(f"{rel}->{Path(target).resolve()}".encode())
    key = hashlib.sha256(b"\n".join(parts)).hexdigest()
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = dest.with_name(dest.name + ".lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = dest / STAMP
        if stamp.is_file() and stamp.read_text().strip() == key:
            return StagedSource(dest, key, True, snap.commit, linked=sorted(links))
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            _materialize(src, snap, staging)
            results = apply_patches(staging, list(patches)) if patches else []
            for rel, target in links.items():
                where = staging / rel
                if where.is_symlink() or where.is_file():
                    where.unlink()
                elif where.is_dir():
                    if any(where.iterdir()):
                        continue  # the checkout carries this dependency itself
                    where.rmdir()
                where.parent.mkdir(parents=True, exist_ok=True)
                where.symlink_to(Path(target).resolve(), target_is_directory=True)
            _sync(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        stamp.write_text(key + "\n")
        return StagedSource(dest, key, False, snap.commit, results, sorted(links))
    finally:
        lock.close()
