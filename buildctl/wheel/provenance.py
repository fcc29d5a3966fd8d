"""`BUILD-PROVENANCE.json` inside the wheel's `.dist-info`: how exactly this wheel was made.

Answers the questions a user asks when a wheel misbehaves: which source ref, which of our patches
(by content hash), which compiler binary, which torch and C++ ABI flag, which CMake defines, which
buildctl, which SOURCE_DATE_EPOCH. Adding it rewrites the wheel deterministically with a valid
RECORD (`reproducible.write_entries`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

import buildctl
from buildctl.errors import BadInput
from buildctl.wheel.reproducible import read_entries, source_date_epoch, write_entries

PROVENANCE_NAME = "BUILD-PROVENANCE.json"


class SourceRef(BaseModel):
    project: str
    url: str = ""
    ref: str = ""  # tag or branch as asked for
    commit: str = ""  # what it resolved to
    dirty: bool = False


class PatchRecord(BaseModel):
    name: str
    sha256: str


class CompilerIdentity(BaseModel):
    path: str
    version: str  # first line of `--version`
    sha256: str = ""


class TorchIdentity(BaseModel):
    version: str  # e.g. 2.13.0+cpu, as torch.__version__
    cxx11_abi: bool | None = None  # torch._C._GLIBCXX_USE_CXX11_ABI
    variant: str | None = None


class BuildProvenance(BaseModel):
    schema_: Literal["buildctl.provenance/1"] = Field("buildctl.provenance/1", alias="schema")
    buildctl_version: str = buildctl.__version__
    source: SourceRef
    patches: list[PatchRecord] = Field(default_factory=list)
    compilers: dict[str, CompilerIdentity] = Field(default_factory=dict)  # "CXX", "C", "SYCL"...
    torch: TorchIdentity
    cmake_defines: dict[str, str] = Field(default_factory=dict)
    source_date_epoch: int | None = None

    model_config = {"populate_by_name": True}

    def to_json(self) -> str:
        # Sorted keys + fixed indent: the file's bytes depend only on its content.
        return (
            json.dumps(self.model_dump(by_alias=True, mode="json"), indent=2, sort_keys=True) + "\n"
        )


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def patch_records(paths: list[Path]) -> list[PatchRecord]:
    """Patches in the order applied, each with its content hash."""
    for path in paths:
        if not path.is_file():
            raise BadInput(f"patch {path} does not exist", "check the patch series")
    return [PatchRecord(name=p.name, sha256=sha256_file(p)) for p in paths]


def compiler_identity(compiler: str | Path) -> CompilerIdentity:
    """Resolved path, first `--version` line and binary hash of a compiler."""
    found = shutil.which(str(compiler))
    if not found:
        raise BadInput(f"compiler {compiler} not found", "install it or give its full path")
    path = Path(found).resolve()
    try:
        proc = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
        first = (proc.stdout or proc.stderr).strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        first = []
    return CompilerIdentity(
        path=str(path), version=first[0] if first else "unknown", sha256=sha256_file(path)
    )


def torch_identity(python: str | Path, variant: str | None = None) -> TorchIdentity:
    """Ask an env's torch for its version and `_GLIBCXX_USE_CXX11_ABI` (imports torch: ~2 s)."""
    code = "import torch; print(torch.__version__); print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"
    try:
        proc = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BadInput(f"cannot run {python} ({exc})", "give the build env's python") from None
    lines = proc.stdout.split()
    if proc.returncode != 0 or len(lines) != 2:
        raise BadInput(f"torch does not import in {python}", "install torch into the build env")
    return TorchIdentity(version=lines[0], cxx11_abi=lines[1] == "1", variant=variant)


def add_provenance(
    wheel: str | Path, provenance: BuildProvenance, out: str | Path | None = None
) -> Path:
    """Put `BUILD-PROVENANCE.json` into the wheel's `.dist-info` (replacing an old one).

    RECORD is recomputed, so the wheel stays valid.

    The rewrite is deterministic; its timestamps come from `provenance.source_date_epoch` or
    $SOURCE_DATE_EPOCH, which is recorded when it was not set.
    """
    src = Path(wheel)
    entries, dist_info = read_entries(src)
    if provenance.source_date_epoch is None:
        provenance = provenance.model_copy(update={"source_date_epoch": source_date_epoch()})
    entries[f"{dist_info}/{PROVENANCE_NAME}"] = provenance.to_json().encode()
    dst = Path(out) if out is not None else src
    return write_entries(dst, entries, dist_info, epoch=provenance.source_date_epoch)


def read_provenance(wheel: str | Path) -> BuildProvenance | None:
    entries, dist_info = read_entries(Path(wheel))
    blob = entries.get(f"{dist_info}/{PROVENANCE_NAME}")
    if blob is None:
        return None
    try:
        return BuildProvenance.model_validate(json.loads(blob))
    except ValueError as exc:
        raise BadInput(
            f"{Path(wheel).name}: {PROVENANCE_NAME} is invalid ({exc})", "rebuild the wheel"
        ) from None
