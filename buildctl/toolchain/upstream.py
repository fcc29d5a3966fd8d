"""What an upstream vllm-xpu-kernels checkout is, and what its own build scripts pass to CMake.

Pure: `parse_describe`, `scm_version`, `cmake_facts`, `setup_facts`, `fingerprint_refs`,
`ref_for_identity`, `check_torch_fits`. I/O at the edge: `identify_checkout` (runs
`git describe`/`rev-parse` read-only and reads version files) and `read_checkout` (reads
setup.py and CMakeLists.txt).

The tag decides which patches, dependency revisions and torch a build uses, so it is read from
the checkout itself, never guessed from `--torch`.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from buildctl.errors import BadInput
from buildctl.toolchain.compat import CompatMatrix, KernelRef, load_matrix

__all__ = [
    "CMakeFacts",
    "CheckoutIdentity",
    "SetupFacts",
    "check_torch_fits",
    "cmake_facts",
    "fingerprint_refs",
    "identify_checkout",
    "parse_describe",
    "read_checkout",
    "ref_for_identity",
    "scm_version",
    "setup_facts",
]

# ----------------------------------------------------------------------------- identity

_DESCRIBE_RE = re.compile(
    r"^(?P<tag>.+)-(?P<distance>\d+)-g(?P<short>[0-9a-f]+)(?P<dirty>-dirty)?$"
)


@dataclass(frozen=True)
class CheckoutIdentity:
    """Which upstream release a source tree is, and how we know."""

    tag: str | None  # the release tag at or below the sources
    distance: int  # commits after `tag` (0: exactly the tag)
    commit: str | None  # full commit id when the tree is a git checkout
    dirty: bool  # uncommitted changes to tracked files, or untracked files
    how: str  # "git describe", "version file <path>", "CMakeLists.txt fingerprint"

    @property
    def exact(self) -> bool:
        return self.tag is not None and self.distance == 0 and not self.dirty

    def describe(self) -> str:
        if self.tag is None:
            return "an unknown vllm-xpu-kernels revision"
        text = self.tag if self.distance == 0 else f"{self.distance} commits after {self.tag}"
        if self.commit:
            text += f" ({self.commit[:12]})"
        return text + (" with local changes" if self.dirty else "")


def parse_describe(text: str) -> tuple[str, int, str, bool] | None:
    """`git describe --tags --long [--dirty]` output -> (tag, distance, short commit, dirty)."""
    match = _DESCRIBE_RE.match(text.strip())
    if not match:
        return None
    return (
        match.group("tag"),
        int(match.group("distance")),
        match.group("short"),
        bool(match.group("dirty")),
    )


def scm_version(tag: str, distance: int) -> str:
    """The version upstream's setup.py (setuptools-scm, `v*` tags) gives, without its local part.

    At a tag it is the tag without the `v`; past a tag setuptools-scm guesses the next release
    (last component + 1) as a `.devN` pre-release. The `+g<commit>` local part is left out: the
    torch label takes the local slot, and the commit goes into the wheel's provenance.
    """
    try:
        base = Version(tag.lstrip("vV"))
    except InvalidVersion:
        raise BadInput(
            f"the checkout's tag {tag!r} is not a version",
            "check out a release tag (git checkout v0.1.13.1) or a commit after one",
        ) from None
    if distance == 0:
        return str(base)
    release = list(base.release)
    release[-1] += 1
    return ".".join(map(str, release)) + f".dev{distance}"


def _git(src: Path, *args: str) -> str | None:
    env = dict(os.environ)
    # Only the checkout itself counts: a plain source folder inside some other repository must
    # not be described by that repository's tags.
    env["GIT_CEILING_DIRECTORIES"] = str(src.resolve().parent)
    env["GIT_OPTIONAL_LOCKS"] = "0"  # read-only: `git status` must not refresh the index
    proc = subprocess.run(
        ["git", "-C", str(src), *args], capture_output=True, text=True, check=False, env=env
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


# setuptools-scm writes `__version__ = version = '0.1.13'`
_VERSION_FILE_RE = re.compile(
    r"""^(?:__version__|version)(?:\s*=\s*(?:__version__|version))*\s*=\s*['"]([^'"]+)['"]""",
    re.M,
)
VERSION_FILES = ("_version.py", "vllm_xpu_kernels/_version.py", "PKG-INFO")


def _version_file(src: Path) -> tuple[str, str] | None:
    for rel in VERSION_FILES:
        path = src / rel
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if rel == "PKG-INFO":
            match = re.search(r"^Version:\s*(\S+)", text, re.M)
        else:
            match = _VERSION_FILE_RE.search(text)
        if match:
            return rel, match.group(1)
    return None


def identify_checkout(src: Path, matrix: CompatMatrix | None = None) -> CheckoutIdentity:
    """Tag and commit of a source tree: git describe in a checkout; else a version file written
    by setuptools-scm or an sdist's PKG-INFO; else the revisions its CMakeLists.txt pins."""
    matrix = matrix or load_matrix()
    src = src.resolve()
    commit = (
        _git(src, "rev-parse", "--verify", "HEAD^{commit}") if (src / ".git").exists() else None
    )
    if commit:
        # No --dirty: it refreshes and rewrites the index whatever GIT_OPTIONAL_LOCKS says
        # (a CI run caught it); `status --porcelain` below tells dirtiness without writing.
        described = _git(src, "describe", "--tags", "--long", "--match", "v*")
        parsed = parse_describe(described) if described else None
        porcelain = _git(src, "status", "--porcelain", "--untracked-files=normal")
        dirty = bool(porcelain)
        if parsed:
            tag, distance, _short, _ = parsed
            if distance == 0:
                # Several tags on one commit (v0.1.12 and v0.1.12.1): the newest release names it.
                tags = (_git(src, "tag", "--points-at", "HEAD", "--list", "v*") or "").split()
                tag = newest_tag([tag, *tags])
            return CheckoutIdentity(tag, distance, commit, dirty, "git describe")
        rows = [r for r in matrix.kernel_refs if r.commit == commit]
        if rows:
            return CheckoutIdentity(_newest(rows).ref, 0, commit, dirty, "commit in the matrix")
    found = _version_file(src)
    if found:
        rel, text = found
        tag = _tag_for_version(text, matrix)
        if tag:
            return CheckoutIdentity(tag, 0, commit, False, f"version file {rel}")
    cmake = src / "CMakeLists.txt"
    if cmake.is_file():
        refs = fingerprint_refs(cmake_facts(cmake.read_text(errors="replace")), matrix)
        if refs:
            return CheckoutIdentity(
                _newest(refs).ref, 0, commit, False, "CMakeLists.txt fingerprint"
            )
    return CheckoutIdentity(None, 0, commit, False, "none")


def _tag_version(tag: str) -> Version:
    try:
        return Version(tag.lstrip("vV"))
    except InvalidVersion:
        return Version("0")


def newest_tag(tags: list[str]) -> str:
    return max(tags, key=_tag_version)


def _newest(rows: list[KernelRef]) -> KernelRef:
    """Two tags on one commit (v0.1.12/v0.1.12.1): the later release names it."""
    return max(rows, key=lambda r: _tag_version(r.ref))


def _tag_for_version(text: str, matrix: CompatMatrix) -> str | None:
    try:
        version = Version(text)
    except InvalidVersion:
        return None
    for row in matrix.kernel_refs:
        try:
            if _tag_version(row.ref) == Version(version.public):
                return row.ref
        except InvalidVersion:
            continue
    return None


# ----------------------------------------------------------------------------- CMakeLists.txt


@dataclass(frozen=True)
class CMakeFacts:
    """What a tag's top-level CMakeLists.txt requires and pins (read, never run)."""

    cmake_min: str | None
    python_versions: tuple[str, ...]  # PYTHON_SUPPORTED_VERSIONS
    torch_supported: str | None  # TORCH_SUPPORTED_VERSION_XPU (never checked upstream)
    cutlass_revision: str | None
    onednn_tag: str | None
    aot_devices: str | None  # the hard-coded AOT_DEVICES
    aot_from_env: bool  # VLLM_XPU_AOT_DEVICES overrides AOT_DEVICES
    needs_python_executable: bool  # stops without -DVLLM_PYTHON_EXECUTABLE
    kernel_configs: bool  # VLLM_PAGED_DECODE_CONFIG selection exists


def _set_value(text: str, name: str) -> str | None:
    match = re.search(rf'set\(\s*{re.escape(name)}\s+"([^"]*)"', text)
    return match.group(1) if match else None


def cmake_facts(text: str) -> CMakeFacts:
    cmake_min = re.search(r"cmake_minimum_required\(\s*VERSION\s+([\d.]+)", text, re.I)
    pyvers = re.search(r"set\(\s*PYTHON_SUPPORTED_VERSIONS\s+([^)]*)\)", text)
    return CMakeFacts(
        cmake_min=cmake_min.group(1) if cmake_min else None,
        python_versions=tuple(re.findall(r'"([\d.]+)"', pyvers.group(1))) if pyvers else (),
        torch_supported=_set_value(text, "TORCH_SUPPORTED_VERSION_XPU"),
        cutlass_revision=_set_value(text, "CUTLASS_REVISION"),
        onednn_tag=_set_value(text, "ONEDNN_GIT_TAG"),
        aot_devices=_set_value(text, "AOT_DEVICES"),
        aot_from_env="ENV{VLLM_XPU_AOT_DEVICES}" in text,
        needs_python_executable="Please set VLLM_PYTHON_EXECUTABLE" in text,
        kernel_configs="VLLM_PAGED_DECODE_CONFIG" in text,
    )


def fingerprint_refs(facts: CMakeFacts, matrix: CompatMatrix) -> list[KernelRef]:
    """Matrix rows whose pins agree with a CMakeLists.txt (for trees without git or a version
    file). Several rows may match; the caller takes the newest and says how it knew."""
    if facts.torch_supported is None or facts.cutlass_revision is None:
        return []
    out = []
    for row in matrix.kernel_refs:
        if row.torch_cmake != facts.torch_supported:
            continue
        if row.sycl_tla.revision != facts.cutlass_revision:
            continue
        if facts.onednn_tag and row.onednn.mode == "fetchcontent":
            if row.onednn.revision != facts.onednn_tag:
                continue
        elif facts.onednn_tag or row.onednn.mode == "fetchcontent":
            continue
        out.append(row)
    return out


# ----------------------------------------------------------------------------- setup.py


@dataclass(frozen=True)
class SetupFacts:
    """The CMake arguments a tag's setup.py passes (read from its source, never run)."""

    toolchain_file: str | None  # -DCMAKE_TOOLCHAIN_FILE=...
    target_device: bool  # -DVLLM_TARGET_DEVICE
    python_executable: bool  # -DVLLM_PYTHON_EXECUTABLE=sys.executable
    python_path: bool  # -DVLLM_PYTHON_PATH (only silences a warning upstream)
    fetchcontent_base_dir: bool  # -DFETCHCONTENT_BASE_DIR=<src>/.deps
    job_pool: bool  # -DCMAKE_JOB_POOLS=compile=N
    kernel_options: tuple[str, ...] = ()  # -D<OPT>=ON|OFF from the same-named env var
    forwarded_env: tuple[str, ...] = ()  # env vars forwarded as -D<same name>
    default_device: str = "xpu"


def setup_facts(setup_text: str, envs_text: str = "") -> SetupFacts:
    toolchain = re.search(r"-DCMAKE_TOOLCHAIN_FILE=([^'\"\s]+)", setup_text)
    options = re.search(r"_kernel_options\s*=\s*\[(.*?)\]", setup_text, re.S)
    forwarded = re.findall(r"os\.environ\.get\(\s*\"(VLLM_\w+_CONFIG)\"", setup_text)
    device = re.search(r"VLLM_TARGET_DEVICE\",\s*\"(\w+)\"", envs_text)
    return SetupFacts(
        toolchain_file=toolchain.group(1) if toolchain else None,
        target_device="-DVLLM_TARGET_DEVICE" in setup_text,
        python_executable="-DVLLM_PYTHON_EXECUTABLE" in setup_text,
        python_path="-DVLLM_PYTHON_PATH" in setup_text,
        fetchcontent_base_dir="-DFETCHCONTENT_BASE_DIR" in setup_text,
        job_pool="CMAKE_JOB_POOLS" in setup_text,
        kernel_options=tuple(re.findall(r"\"(\w+)\"", options.group(1))) if options else (),
        forwarded_env=tuple(dict.fromkeys(forwarded)),
        default_device=device.group(1) if device else "xpu",
    )


@dataclass(frozen=True)
class UpstreamCheckout:
    path: Path
    identity: CheckoutIdentity
    cmake: CMakeFacts
    setup: SetupFacts
    name: str  # [project] name of its pyproject.toml
    extra: dict[str, str] = field(default_factory=dict)


def read_checkout(src: Path, matrix: CompatMatrix | None = None) -> UpstreamCheckout:
    src = src.resolve()
    cmake = src / "CMakeLists.txt"
    setup = src / "setup.py"
    if not cmake.is_file():
        raise BadInput(
            f"{src} is not a vllm-xpu-kernels checkout (no CMakeLists.txt)",
            "pass the top directory of a vllm-xpu-kernels checkout with --source",
        )
    envs = src / "tools" / "envs.py"
    name = "vllm-xpu-kernels"
    pyproject = src / "pyproject.toml"
    if pyproject.is_file():
        match = re.search(r'^name\s*=\s*"([^"]+)"', pyproject.read_text(errors="replace"), re.M)
        name = match.group(1) if match else name
    return UpstreamCheckout(
        path=src,
        identity=identify_checkout(src, matrix),
        cmake=cmake_facts(cmake.read_text(errors="replace")),
        setup=setup_facts(
            setup.read_text(errors="replace") if setup.is_file() else "",
            envs.read_text(errors="replace") if envs.is_file() else "",
        ),
        name=name,
    )


# ----------------------------------------------------------------------------- matching


def ref_for_identity(identity: CheckoutIdentity, matrix: CompatMatrix) -> KernelRef:
    """The matrix row that decides patches, dependency revisions and torch for a checkout."""
    if identity.tag is None:
        raise BadInput(
            "cannot tell which vllm-xpu-kernels release the source tree is (no git tags, no "
            "version file, and its CMakeLists.txt pins match no known release)",
            "use a git checkout with its tags (git fetch --tags) or an unpacked release sdist",
        )
    return matrix.ref(identity.tag)


def check_torch_fits(row: KernelRef, torch_release: str, matrix: CompatMatrix) -> None:
    """A torch release that the checkout's tag does not build with is bad input, naming the
    tag that does fit it."""
    if row.builds_with_torch == torch_release:
        return
    series = ".".join(torch_release.split(".")[:2])
    torch_row = next((t for t in matrix.torch if t.series == series), None)
    fits = torch_row.recommended_ref if torch_row else None
    fix = f"build this checkout with --torch {row.builds_with_torch}+xpu"
    if fits:
        fix += f", or check out {fits} (git checkout {fits}) for torch {torch_release}"
    raise BadInput(
        f"the checkout is vllm-xpu-kernels {row.ref}, which builds with torch "
        f"{row.builds_with_torch}, not {torch_release}"
        + (f"; the tag for torch {torch_release} is {fits}" if fits else ""),
        fix,
    )
