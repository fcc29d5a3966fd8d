"""External runtime libraries for `verify`: intel-sycl-rt & co. as wheels, dirs or installed dists.

A torch wheel does not contain the SYCL/Level Zero/oneAPI runtime it runs on: torch's XPU build
declares pip packages for it (intel-sycl-rt, intel-cmplr-lib-ur, intel-cmplr-lib-rt, ...). Given
those packages, `verify` checks an extension's runtime sonames and symbols instead of listing them
as "unchecked". A source is one of:

- a runtime wheel, read as a zip and never installed (only `.so` members; a member is inflated
  when it is first needed, and its index is cached on disk like torch's);
- a directory of libraries (`/opt/intel/oneapi/compiler/2025.3/lib`, or a prefix with `lib/`);
- an installed distribution name (`intel-sycl-rt`), located through its RECORD, in this
  interpreter or in another Python's environment.

`RuntimeSet` merges the sources in order (the first provider of a soname wins, like a search path)
and says which sonames it is authoritative for: a family (`sonames.EXTERNAL_FAMILIES`) counts as
covered once any source ships a library of it; libraries that come from the GPU driver or the ICD
loader (`DRIVER_GLOBS`: libze_loader, libOpenCL, libcuda...) stay unchecked unless a source ships
them, because no pip runtime does.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import parse_wheel_filename

from buildctl.errors import BadInput
from buildctl.wheel import elfsyms
from buildctl.wheel.elfsyms import ElfIndex
from buildctl.wheel.sonames import external_family, matches
from buildctl.wheel.wheelzip import open_wheel

SHARED_OBJECT_RE = re.compile(r"\.so(\.\d+)*$")
# Shipped with the GPU driver / ICD loader, never by the pip runtime packages.
DRIVER_GLOBS: tuple[str, ...] = (
    "libze_loader.so*",
    "libze_intel_gpu.so*",
    "libOpenCL.so*",
    "libigdrcl.so*",
    "libcuda.so*",
    "libnvidia-*.so*",
)
# Smallest possible ELF64 header; smaller `.so` members are linker scripts (libintlc.so = 21 bytes).
_MIN_ELF_SIZE = 64
_DIST_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_SOURCE_FIX = (
    "give a runtime wheel (e.g. intel_sycl_rt-2025.3.2-...whl), a directory of its libraries, "
    "or the name of an installed distribution (intel-sycl-rt)"
)


@dataclass(frozen=True)
class LibRef:
    """One shared library: an installed file, or a member of a wheel (inflated on demand)."""

    name: str
    path: Path | None = None
    wheel: Path | None = None
    member: str | None = None
    crc: int = 0
    size: int = 0

    @property
    def identity(self) -> tuple[object, ...]:
        """Same content, same identity: wheels ship libsycl.so, .so.8 and .so.8.0.0 as copies."""
        if self.path is not None:
            return ("file", self.path.resolve())
        return ("zip", self.crc, self.size)


def index_ref(ref: LibRef, fix: str) -> tuple[ElfIndex, float]:
    """Index `ref` through the disk cache; returns the index and the seconds spent inflating."""
    if ref.path is not None:
        return elfsyms.index_file(ref.path), 0.0
    assert ref.wheel is not None and ref.member is not None
    key = elfsyms.member_cache_key(ref.member, ref.crc, ref.size)
    hit = elfsyms.load_cached(key)
    if hit is not None:
        return hit, 0.0
    start = time.monotonic()
    # One member at a time into a private temp dir: libtorch_cuda.so and libsycl-jit.so are huge.
    with tempfile.TemporaryDirectory(prefix="buildctl-symidx-") as tmp:
        dst = Path(tmp) / "lib.so"
        try:
            with (
                zipfile.ZipFile(ref.wheel) as zf,
                zf.open(ref.member) as src,
                open(dst, "wb") as out,
            ):
                shutil.copyfileobj(src, out, 1 << 20)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise BadInput(
                f"{ref.wheel.name}: member {ref.member} is corrupt ({exc})", fix
            ) from None
        spent = time.monotonic() - start
        what = f"{ref.wheel.name}: {ref.member}"
        with open(dst, "rb") as handle:
            if not elfsyms.is_elf(handle.read(4)):
                raise BadInput(f"{what} is named like a shared object but is not ELF", fix)
            handle.seek(0)
            result = elfsyms.parse_elf(handle, what)
    elfsyms.store_cached(key, result)
    return result, spent


def _is_elf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return elfsyms.is_elf(handle.read(4))
    except OSError:
        return False


def _soname_stem(soname: str) -> str | None:
    """`libsycl.so.8` -> `libsycl.so`: other versions of the same library share the stem."""
    pos = soname.find(".so")
    return soname[: pos + 3] if pos > 0 else None


class RuntimeLibs:
    """The shared libraries of one runtime source, indexed on demand (memory + disk cache)."""

    def __init__(self, refs: dict[str, LibRef], label: str, origin: str) -> None:
        if not refs:
            raise BadInput(f"runtime {origin} holds no ELF shared libraries", _SOURCE_FIX)
        self.refs = refs
        self.label = label  # "intel-sycl-rt 2025.3.2" (wheel, dist) or the directory
        self.origin = origin
        self._memo: dict[str, ElfIndex] = {}
        self.extract_s = 0.0

    def __repr__(self) -> str:
        return f"RuntimeLibs({self.label!r}, {len(self.refs)} libs)"

    def names(self) -> list[str]:
        return sorted(self.refs)

    def has(self, soname: str) -> bool:
        return soname in self.refs

    def index(self, name: str) -> ElfIndex:
        if name not in self._memo:
            result, spent = index_ref(self.refs[name], f"re-download or reinstall {self.label}")
            self.extract_s += spent
            self._memo[name] = result
        return self._memo[name]

    def families(self) -> set[str]:
        return {f for n in self.refs if (f := external_family(n)) is not None}

    # -- constructors

    @classmethod
    def from_wheel(cls, path: str | Path) -> RuntimeLibs:
        """A runtime wheel read as a zip: every `.so` member, wherever the wheel puts it."""
        wheel = Path(path)
        with open_wheel(wheel) as zf:
            refs: dict[str, LibRef] = {}
            # Prefer `<dist>.data/data/lib/` (what pip installs into <prefix>/lib) on name clashes.
            infos = sorted(
                zf.infolist(), key=lambda i: ("/data/lib/" not in i.filename, i.filename)
            )
            for info in infos:
                base = info.filename.rsplit("/", 1)[-1]
                if info.is_dir() or not SHARED_OBJECT_RE.search(base):
                    continue
                if info.file_size < _MIN_ELF_SIZE or base in refs:
                    continue
                refs[base] = LibRef(
                    base,
                    wheel=wheel.resolve(),
                    member=info.filename,
                    crc=info.CRC,
                    size=info.file_size,
                )
        name, version, _build, _tags = parse_wheel_filename(wheel.name)
        return cls(refs, f"{name} {version}", str(wheel))

    @classmethod
    def from_dir(cls, path: str | Path) -> RuntimeLibs:
        """A directory of libraries, or a prefix whose `lib/` holds them (not recursive)."""
        root = Path(path)
        if not root.is_dir():
            raise BadInput(f"runtime {root} is not a directory", _SOURCE_FIX)

        def scan(d: Path) -> dict[str, LibRef]:
            return {
                p.name: LibRef(p.name, path=p)
                for p in sorted(d.iterdir())
                if SHARED_OBJECT_RE.search(p.name) and p.is_file() and _is_elf_file(p)
            }

        refs = scan(root)
        if not refs and (root / "lib").is_dir():
            root = root / "lib"
            refs = scan(root)
        return cls(refs, str(root), str(root))

    @classmethod
    def from_distribution(cls, name: str, *, python: str | Path | None = None) -> RuntimeLibs:
        """An installed distribution, found in this interpreter or in `python`'s environment."""
        info = _dist_files_here(name) if python is None else _dist_files_in(name, Path(python))
        if info is None:
            where = f" in {python}'s environment" if python else ""
            raise BadInput(f"runtime distribution {name} is not installed{where}", _SOURCE_FIX)
        dist_name, version, files = info
        refs: dict[str, LibRef] = {}
        for file in sorted(files, key=lambda f: ("/lib/" not in f, f)):
            p = Path(file)
            if p.name not in refs and p.is_file() and _is_elf_file(p):
                refs[p.name] = LibRef(p.name, path=p)
        return cls(refs, f"{dist_name} {version}", f"{dist_name} {version} (installed)")

    @classmethod
    def from_source(cls, spec: str | Path, *, python: str | Path | None = None) -> RuntimeLibs:
        """`--runtime` value: a `.whl` file, a directory, or an installed distribution's name."""
        text = str(spec)
        path = Path(spec)
        if path.is_dir():
            return cls.from_dir(path)
        if path.is_file():
            if path.suffix != ".whl":
                raise BadInput(f"runtime {text} is neither a wheel nor a directory", _SOURCE_FIX)
            return cls.from_wheel(path)  # open_wheel validates name, zip and member paths
        if "/" in text or text.endswith(".whl") or not _DIST_NAME_RE.match(text):
            raise BadInput(f"runtime {text} does not exist", _SOURCE_FIX)
        return cls.from_distribution(text, python=python)


def load_runtime(
    specs: Sequence[str | Path], *, python: str | Path | None = None
) -> list[RuntimeLibs]:
    """Every `--runtime` value, in order; `python` is where distribution names are looked up."""
    return [RuntimeLibs.from_source(s, python=python) for s in specs]


# ------------------------------------------------------------------ installed distributions

_DIST_SNIPPET = """
import importlib.metadata as m, json, sys
try:
    d = m.distribution(sys.argv[1])
except m.PackageNotFoundError:
    print("null"); raise SystemExit(0)
files = [str(d.locate_file(f)) for f in (d.files or [])]
print(json.dumps([d.metadata["Name"], d.version, files]))
"""


def _shared_objects(files: list[str]) -> list[str]:
    return [f for f in files if SHARED_OBJECT_RE.search(f.rsplit("/", 1)[-1])]


def _dist_files_here(name: str) -> tuple[str, str, list[str]] | None:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    files = [str(dist.locate_file(f)) for f in (dist.files or [])]
    return str(dist.metadata["Name"]), dist.version, _shared_objects(files)


def _dist_files_in(name: str, python: Path) -> tuple[str, str, list[str]] | None:
    # Another environment's metadata can only be read by its own interpreter (sys.path, .pth).
    try:
        proc = subprocess.run(
            [str(python), "-c", _DIST_SNIPPET, name],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BadInput(f"cannot run {python} ({exc})", "give a python executable") from None
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        data = "unreadable"
    if proc.returncode != 0 or data == "unreadable":
        raise BadInput(
            f"{python} failed to list distribution {name}: {proc.stderr.strip()[-300:]}",
            "give a working python executable",
        )
    if data is None:
        return None
    dist_name, version, files = data
    return str(dist_name), str(version), _shared_objects([str(f) for f in files])


# ------------------------------------------------------------------ merged view


class RuntimeSet:
    """Runtime sources in search order, and which external sonames they are authoritative for."""

    def __init__(self, sources: Sequence[RuntimeLibs]) -> None:
        self.sources = list(sources)
        self.covered: set[str] = set()
        for src in self.sources:
            self.covered |= src.families()

    def __bool__(self) -> bool:
        return bool(self.sources)

    def describe(self) -> str:
        return ", ".join(s.label for s in self.sources) or "no runtime"

    def source(self, soname: str) -> RuntimeLibs | None:
        return next((s for s in self.sources if s.has(soname)), None)

    def has(self, soname: str) -> bool:
        return self.source(soname) is not None

    def index(self, soname: str) -> ElfIndex:
        src = self.source(soname)
        if src is None:
            raise KeyError(soname)
        return src.index(soname)

    def label(self, soname: str) -> str:
        src = self.source(soname)
        return src.label if src else "?"

    def covers(self, soname: str) -> bool:
        """Provided here, or of a family some source ships (driver libraries excepted)."""
        if self.has(soname):
            return True
        family = external_family(soname)
        return family in self.covered and not matches(soname, DRIVER_GLOBS)

    def alternatives(self, soname: str) -> list[tuple[str, RuntimeLibs]]:
        """Other versions of `soname`'s library in the sources (`libsycl.so.9` for `.so.8`).

        Copies of one file (libsycl.so, .so.9, .so.9.0.0) count once, under the soname-like name.
        """
        stem = _soname_stem(soname)
        if stem is None:
            return []
        found: dict[tuple[object, ...], tuple[str, RuntimeLibs]] = {}
        for src in self.sources:
            names = [n for n in src.refs if n == stem or n.startswith(stem + ".")]
            # Soname-like first: one version component (`libsycl.so.9`), then the shortest.
            names.sort(key=lambda n: (n.count(".") != stem.count(".") + 1, len(n), n))
            for name in names:
                found.setdefault((id(src), *src.refs[name].identity), (name, src))
        return sorted(found.values(), key=lambda item: item[0])
