"""The compatibility matrix: torch XPU release -> vllm-xpu-kernels ref, oneAPI compiler, runtime.

The data lives in `buildctl/toolchain/data/compat_matrix.json` (shipped in the package;
`profiles/compat/matrix.json` is a symlink to it). Every row names its sources. `resolve` is pure
over a loaded matrix: no network, no filesystem beyond loading the file once.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from buildctl.errors import BadInput

SCHEMA = "buildctl.compat/1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OneAPIRow(_Model):
    version: str
    libsycl_soname: str
    source: str


class DepRev(_Model):
    """A dependency fetched at configure time (FetchContent) or checked out as a submodule."""

    mode: Literal["fetchcontent", "submodule"] = "fetchcontent"
    name: str | None = None  # FetchContent name (cutlass-sycl, oneDNN)
    path: str | None = None  # submodule path in the source tree
    url: str
    revision: str
    source: str


class KernelRef(_Model):
    ref: str
    commit: str
    date: str
    torch_cmake: str  # TORCH_SUPPORTED_VERSION_XPU in CMakeLists.txt (never read upstream)
    torch_requirements: str  # the torch pin in requirements.txt / build requirements
    builds_with_torch: str  # which of the two actually builds
    builds_with_source: str
    oneapi: str
    oneapi_source: str
    requires_python: str
    requires_python_source: str
    sycl_tla: DepRev
    onednn: DepRev
    kernel_config_presets: bool  # csrc/xpu/attn/kernel_configs/*.conf selection exists
    # CMakeLists.txt: cmake_minimum_required, PYTHON_SUPPORTED_VERSIONS (configure stops outside
    # them, whatever pyproject's requires-python says), and whether VLLM_XPU_AOT_DEVICES is read
    cmake_min: str = "3.26"
    python_supported_versions: list[str] = Field(default_factory=list)
    aot_devices_from_env: bool = True
    patches: list[str] = Field(default_factory=list)  # relative to patches/vllm-xpu-kernels/
    problems: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    source: list[str]


class TorchRow(_Model):
    series: str  # "2.11"
    releases: list[str]  # "2.11.0"
    local: str  # "xpu"
    oneapi: str | None
    libsycl_soname: str
    runtime_wheels: dict[str, str]
    oneccl: str | None
    pti: str | None
    python: str
    python_source: str
    kernel_refs: list[str]
    recommended_ref: str | None
    recommended_reason: str | None = None
    evidence: str
    source: list[str]
    notes: list[str] = Field(default_factory=list)


class Problem(_Model):
    id: str
    refs: list[str]
    summary: str
    fix: str
    introduced_by: str | None = None
    fixed_in: str | None = None
    source: list[str]


Fit = Literal["fits", "no", "unknown"]


class PublishedWheel(_Model):
    """What a published wheel's ELF files prove (`buildctl audit`), per runtime and torch."""

    dist: str
    version: str
    wheel: str
    requires_torch: str | None  # its Requires-Dist on torch (none of them declares one)
    libsycl_soname: str | None
    runtime: dict[str, Fit]  # intel-sycl-rt release -> fit; releases not listed: unknown
    torch: dict[str, Fit]  # torch release -> fit; releases not listed: unknown
    evidence: dict[str, str] = Field(default_factory=dict)  # torch release -> why
    source: list[str]

    def torch_fit(self, release: str) -> Fit:
        return self.torch.get(release, "unknown")

    def runtime_fit(self, version: str) -> Fit:
        return self.runtime.get(version, "unknown")


class CompatMatrix(_Model):
    schema_: str = Field(alias="schema")
    snapshot: str
    sources: dict[str, str]
    oneapi: list[OneAPIRow]
    torch: list[TorchRow]
    kernel_refs: list[KernelRef]
    problems: list[Problem]
    published_wheels: list[PublishedWheel] = Field(default_factory=list)

    def ref(self, name: str) -> KernelRef:
        for row in self.kernel_refs:
            if row.ref == name:
                return row
        known = ", ".join(r.ref for r in self.kernel_refs)
        raise BadInput(f"unknown vllm-xpu-kernels ref {name!r}", f"use one of: {known}")

    def problem(self, pid: str) -> Problem:
        for row in self.problems:
            if row.id == pid:
                return row
        raise KeyError(pid)

    def known_releases(self) -> list[str]:
        return [f"{rel}+{row.local}" for row in self.torch for rel in row.releases]

    def soname_for(self, oneapi: str) -> str | None:
        key = ".".join(oneapi.split(".")[:2])
        for row in self.oneapi:
            if row.version == key:
                return row.libsycl_soname
        return None


class Resolution(_Model):
    """Everything a build for one torch version needs to know, with the reasons."""

    torch: str  # normalized: "2.11.0+xpu"
    torch_release: str  # "2.11.0"
    kernel_ref: str
    kernel_commit: str
    oneapi: str
    libsycl_soname: str
    python: str  # specifier set: torch's and the kernel ref's Python range together
    runtime_wheels: dict[str, str]
    sycl_tla: DepRev
    onednn: DepRev
    kernel_config_presets: bool
    patches: list[str]
    problems: list[str]
    alternatives: list[str]
    notes: list[str]
    cmake_min: str = "3.26"
    python_supported_versions: list[str] = Field(default_factory=list)  # "3.9" .. "3.12"
    aot_devices_from_env: bool = True


def default_matrix_path() -> Path:
    return Path(str(resources.files("buildctl.toolchain") / "data" / "compat_matrix.json"))


def load_matrix(path: str | Path | None = None) -> CompatMatrix:
    """Load and validate a matrix file (default: the one shipped in the package)."""
    if path is None:
        return _load_default()
    return _load(Path(path))


@lru_cache(maxsize=1)
def _load_default() -> CompatMatrix:
    return _load(default_matrix_path())


def _load(path: Path) -> CompatMatrix:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise BadInput(f"cannot read compatibility matrix {path}: {exc}", "check the path") from exc
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"compatibility matrix {path} is not valid JSON: {exc}", "fix the JSON syntax"
        ) from exc
    try:
        matrix = CompatMatrix.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise BadInput(
            f"compatibility matrix {path} is malformed at {loc}: {first['msg']}",
            "compare it with buildctl/toolchain/data/compat_matrix.json",
        ) from exc
    if matrix.schema_ != SCHEMA:
        raise BadInput(
            f"compatibility matrix {path} has schema {matrix.schema_!r}, expected {SCHEMA!r}",
            "use a matrix written for this buildctl version",
        )
    return matrix


def parse_torch_version(text: str, hint: str = "give a full release such as 2.11.0+xpu") -> Version:
    """Parse `2.11.0+xpu` (release 2.11.0, local label xpu); unreadable text raises BadInput."""
    try:
        return Version(text.strip())
    except InvalidVersion as exc:
        raise BadInput(f"cannot read torch version {text!r}", hint) from exc


def _known_hint(matrix: CompatMatrix) -> str:
    """The torch releases a kernel ref exists for (what `--torch` accepts)."""
    usable = [
        f"{rel}+{row.local}"
        for row in matrix.torch
        if row.recommended_ref and row.oneapi
        for rel in row.releases
    ]
    return "use one of: " + ", ".join(usable)


def resolve(
    torch_version: str, matrix: CompatMatrix | None = None, kernel_ref: str | None = None
) -> Resolution:
    """torch version -> kernel ref, compiler, libsycl soname, patches and notes.

    `2.11.0` is read as `2.11.0+xpu` (with a note: `torch==2.11.0` alone installs the CUDA build
    from PyPI); other local labels, pre-releases/nightlies and unknown releases are BadInput.
    `kernel_ref` overrides the recommended ref but must be one that builds with this torch.
    """
    matrix = matrix or load_matrix()
    version = parse_torch_version(torch_version, _known_hint(matrix))
    notes: list[str] = []
    if len(version.release) != 3:
        raise BadInput(
            f"torch version {torch_version!r} is not a full release (major.minor.patch)",
            _known_hint(matrix),
        )
    if version.is_prerelease or version.is_devrelease or version.is_postrelease:
        raise BadInput(
            f"torch {torch_version} is a pre-release/nightly; the matrix covers releases only "
            "(a 2.13 nightly failed in vLLM's torch.compile in the field)",
            _known_hint(matrix),
        )
    if version.local is None:
        notes.append(
            f"read {version.public} as {version.public}+xpu; pin the release and install from "
            f"the XPU index (torch=={version.public} alone is the CUDA build on PyPI)"
        )
    release = version.base_version
    row = next((r for r in matrix.torch if release in r.releases), None)
    if row is None:
        raise BadInput(
            f"torch {torch_version} is not in the compatibility matrix", _known_hint(matrix)
        )
    if version.local is not None and version.local != row.local:
        raise BadInput(
            f"torch {torch_version} is a {version.local!r} build, not an XPU build",
            f"use {release}+{row.local}",
        )
    chosen = kernel_ref or row.recommended_ref
    if chosen is None or row.oneapi is None:
        extra = "; ".join(row.notes)
        raise BadInput(
            f"no vllm-xpu-kernels ref builds with torch {release}+{row.local}"
            + (f" ({extra})" if extra else ""),
            _known_hint(matrix),
        )
    ref = matrix.ref(chosen)
    if ref.builds_with_torch != release:
        raise BadInput(
            f"vllm-xpu-kernels {chosen} builds with torch {ref.builds_with_torch}, not {release}",
            f"use one of: {', '.join(row.kernel_refs)}",
        )
    soname = matrix.soname_for(ref.oneapi) or row.libsycl_soname
    python = _combine_python(row.python, ref.requires_python)
    for pid in ref.problems:
        prob = matrix.problem(pid)
        notes.append(f"{pid}: {prob.fix}")
    notes.extend(ref.notes)
    notes.extend(row.notes)
    return Resolution(
        torch=f"{release}+{row.local}",
        torch_release=release,
        kernel_ref=ref.ref,
        kernel_commit=ref.commit,
        oneapi=ref.oneapi,
        libsycl_soname=soname,
        python=python,
        runtime_wheels=dict(row.runtime_wheels),
        sycl_tla=ref.sycl_tla,
        onednn=ref.onednn,
        kernel_config_presets=ref.kernel_config_presets,
        patches=list(ref.patches),
        problems=list(ref.problems),
        alternatives=[r for r in row.kernel_refs if r != ref.ref],
        notes=notes,
        cmake_min=ref.cmake_min,
        python_supported_versions=list(ref.python_supported_versions),
        aot_devices_from_env=ref.aot_devices_from_env,
    )


def _combine_python(*specs: str) -> str:
    """Intersect Python ranges, keeping only the tightest `>=` and `<` bounds for readability."""
    lower: Version | None = None
    upper: Version | None = None
    rest: list[str] = []
    for spec in specs:
        try:
            parsed = SpecifierSet(spec)
        except InvalidSpecifier:
            continue
        for item in parsed:
            bound = Version(item.version) if "*" not in item.version else None
            if item.operator == ">=" and bound is not None:
                lower = bound if lower is None else max(lower, bound)
            elif item.operator == "<" and bound is not None:
                upper = bound if upper is None else min(upper, bound)
            else:
                rest.append(str(item))
    parts = ([f">={lower}"] if lower else []) + ([f"<{upper}"] if upper else []) + rest
    return ",".join(parts)


def python_ok(resolution: Resolution, python_version: str) -> bool:
    """Whether a target interpreter version (e.g. "3.11.4") is inside the resolved range and,
    where the ref's CMakeLists.txt lists them, one of its PYTHON_SUPPORTED_VERSIONS."""
    if not SpecifierSet(resolution.python).contains(python_version, prereleases=True):
        return False
    if resolution.python_supported_versions:
        major_minor = ".".join(python_version.split(".")[:2])
        return major_minor in resolution.python_supported_versions
    return True


def torch_row_for_oneapi(matrix: CompatMatrix, torch_version: str) -> TorchRow | None:
    """The matrix row for a torch version string, or None (for doctor: no BadInput)."""
    try:
        release = Version(torch_version).base_version
    except InvalidVersion:
        return None
    return next((r for r in matrix.torch if release in r.releases), None)
