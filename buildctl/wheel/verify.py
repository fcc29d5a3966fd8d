"""Symbol-level ABI verification: does every extension in a wheel link against *that* torch?

For each ELF shared object in the wheel (members ending in `.so` or `.so.N`), every strong
undefined dynamic symbol must be defined by a library the dynamic linker would search: the
extension's DT_NEEDED closure (other libraries in the wheel, the target torch's `lib/`, system
libraries from `ldconfig -p`) plus what `import torch` loads globally (`libtorch_global_deps.so`).

What is deliberately not checked, and reported as such:
- symbols of the Python C API (`Py*`, `_Py*`): the interpreter provides them, not a DT_NEEDED;
- external runtimes (CUDA, SYCL/oneAPI/Level Zero, ROCm; see `sonames.EXTERNAL_FAMILIES`): torch
  pulls them from pip packages or the driver, which a torch wheel read as a zip does not contain.
  Symbols that may come from them are listed as "unchecked", never as passing silently. Symbols
  in torch's own namespaces (at::, c10::, torch::, caffe2::) can never come from them, so those
  always fail when torch does not export them.

Only the libraries needed to settle the extension's symbols are indexed (lazily, in DT_NEEDED
breadth-first order), and each index is cached on disk (`elfsyms`), so verifying against a 2 GB
CUDA torch wheel costs a few seconds once and well under a second afterwards.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from buildctl.errors import BadInput, BuildFailed
from buildctl.wheel import elfsyms
from buildctl.wheel.elfsyms import ElfIndex, UndefinedSymbol
from buildctl.wheel.sonames import external_family
from buildctl.wheel.wheelzip import open_wheel, read_member

SHARED_OBJECT_RE = re.compile(r"\.so(\.\d+)*$")
_TORCH_LIB_MEMBER_RE = re.compile(r"^torch/lib/[^/]+\.so(\.\d+)*$")
_VERSION_PY_RE = re.compile(r"""__version__\s*=\s*['"]([^'"]+)['"]""")
# Mangled names in torch's namespaces: _ZN2at..., _ZNK3c10..., _ZTVN5torch..., _ZNR5torch...
_TORCH_MANGLED_RE = re.compile(r"^_Z(?:T[VIST]|GV|TH|TW)?N[rVKRO]*(2at|3c10|5torch|6caffe2)\d")
_TORCH_C_PREFIXES = ("aoti_torch_",)
_PYTHON_RE = re.compile(r"^_?Py[A-Za-z_]")
GLOBAL_DEPS = "libtorch_global_deps.so"


# ------------------------------------------------------------------ torch libraries


@dataclass(frozen=True)
class _LibRef:
    name: str
    path: Path | None = None  # an installed file
    wheel: Path | None = None  # or a member of a wheel
    member: str | None = None
    crc: int = 0
    size: int = 0


class TorchLibs:
    """The shared libraries of one torch build: an installed torch, a `lib/` dir, or a wheel file.

    Libraries are indexed on demand (`index(name)`) and cached in memory and on disk.
    """

    def __init__(self, refs: dict[str, _LibRef], version: str | None, origin: str) -> None:
        if not refs:
            raise BadInput(
                f"no torch shared libraries found in {origin}", "point at a torch install or wheel"
            )
        self.refs = refs
        self.version = version
        self.origin = origin
        self._memo: dict[str, ElfIndex] = {}
        self.extract_s = 0.0  # time spent inflating wheel members (for reports/tests)

    def __repr__(self) -> str:
        return f"TorchLibs({self.describe()!r}, {len(self.refs)} libs)"

    def describe(self) -> str:
        return f"torch {self.version or '?'} ({self.origin})"

    def names(self) -> list[str]:
        return sorted(self.refs)

    def has(self, soname: str) -> bool:
        return soname in self.refs

    def index(self, name: str) -> ElfIndex:
        if name in self._memo:
            return self._memo[name]
        ref = self.refs[name]
        result = elfsyms.index_file(ref.path) if ref.path else self._index_member(ref)
        self._memo[name] = result
        return result

    def _index_member(self, ref: _LibRef) -> ElfIndex:
        assert ref.wheel is not None and ref.member is not None
        key = elfsyms.member_cache_key(ref.member, ref.crc, ref.size)
        hit = elfsyms.load_cached(key)
        if hit is not None:
            return hit
        start = time.monotonic()
        # Inflate one member at a time to a private temp dir: libtorch_cuda.so is ~500 MB.
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
                    f"{ref.wheel.name}: member {ref.member} is corrupt ({exc})",
                    "re-download the torch wheel",
                ) from None
            self.extract_s += time.monotonic() - start
            result = elfsyms.parse_elf_file(dst)
        elfsyms.store_cached(key, result)
        return result

    # -- constructors

    @classmethod
    def from_path(cls, path: str | Path) -> TorchLibs:
        """A torch package dir (`.../torch`), its `lib/` dir, or a site-packages with `torch/`."""
        root = Path(path)
        if not root.is_dir():
            raise BadInput(f"{root} is not a directory", "give a torch install dir or its lib/ dir")
        if (root / "torch" / "lib").is_dir():
            root = root / "torch"
        if (root / "lib").is_dir() and any((root / "lib").glob("libc10*.so*")):
            lib_dir, pkg_dir = root / "lib", root
        elif any(root.glob("libc10*.so*")) or any(root.glob("libtorch*.so*")):
            lib_dir, pkg_dir = root, root.parent
        else:
            raise BadInput(
                f"{path} holds no torch libraries (no libc10/libtorch .so)",
                "give the torch package dir (python -c 'import torch; print(torch.__path__[0])')",
            )
        refs = {
            p.name: _LibRef(p.name, path=p)
            for p in sorted(lib_dir.iterdir())
            if p.is_file() and SHARED_OBJECT_RE.search(p.name)
        }
        version = None
        version_py = pkg_dir / "version.py"
        if version_py.is_file():
            match = _VERSION_PY_RE.search(version_py.read_text(errors="replace"))
            version = match.group(1) if match else None
        return cls(refs, version, str(lib_dir))

    @classmethod
    def from_installed(cls, python_or_dir: str | Path) -> TorchLibs:
        """The torch importable by a Python interpreter (path to `python`), or a directory."""
        target = Path(python_or_dir)
        if target.is_dir():
            return cls.from_path(target)
        if not target.exists():
            raise BadInput(f"{target} does not exist", "give a python executable or a torch dir")
        # find_spec, not `import torch`: two seconds cheaper and works without a working torch.
        code = (
            "import importlib.util as u; s = u.find_spec('torch'); "
            "print(s.submodule_search_locations[0] if s else '')"
        )
        try:
            proc = subprocess.run(
                [str(target), "-c", code], capture_output=True, text=True, timeout=120, check=False
            )
        except OSError as exc:
            raise BadInput(f"cannot run {target} ({exc})", "give a python executable") from None
        location = proc.stdout.strip()
        if proc.returncode != 0 or not location:
            raise BadInput(
                f"{target} has no torch installed", "pip install torch into that env first"
            )
        return cls.from_path(location)

    @classmethod
    def from_wheel(cls, path: str | Path) -> TorchLibs:
        """A torch wheel read as a zip, never installed: only `torch/lib/*.so*` are inflated."""
        wheel = Path(path)
        with open_wheel(wheel) as zf:
            refs: dict[str, _LibRef] = {}
            for info in zf.infolist():
                if _TORCH_LIB_MEMBER_RE.match(info.filename):
                    name = info.filename.rsplit("/", 1)[1]
                    refs[name] = _LibRef(
                        name,
                        wheel=wheel.resolve(),
                        member=info.filename,
                        crc=info.CRC,
                        size=info.file_size,
                    )
            if not refs:
                raise BadInput(f"{wheel.name} has no torch/lib/*.so", "give a torch wheel")
            version = None
            if "torch/version.py" in zf.namelist():
                text = read_member(zf, "torch/version.py", wheel).decode(errors="replace")
                match = _VERSION_PY_RE.search(text)
                version = match.group(1) if match else None
            if version is None:
                version = wheel.name.split("-")[1]
        return cls(refs, version, str(wheel))


# ------------------------------------------------------------------ system libraries


class SystemLibs:
    """Sonames the host's dynamic linker would find: `ldconfig -p`, then the standard dirs."""

    STANDARD_DIRS = (
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
    )

    def __init__(self, extra_dirs: Iterable[str | Path] = ()) -> None:
        self._cache: dict[str, list[Path]] | None = None
        self._extra = [Path(d) for d in extra_dirs]

    def _ldconfig(self) -> dict[str, list[Path]]:
        if self._cache is not None:
            return self._cache
        found: dict[str, list[Path]] = {}
        exe = shutil.which("ldconfig") or (
            "/sbin/ldconfig" if Path("/sbin/ldconfig").exists() else None
        )
        if exe:
            try:
                out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.TimeoutExpired):
                out = ""
            for line in out.splitlines():
                match = re.match(r"^\s+(\S+) \(([^)]*)\) => (\S+)$", line)
                if match:
                    found.setdefault(match.group(1), []).append(Path(match.group(3)))
        self._cache = found
        return found

    def find(self, soname: str, elfclass: int, machine: str) -> tuple[Path, ElfIndex] | None:
        candidates = [d / soname for d in self._extra]
        candidates += self._ldconfig().get(soname, [])
        candidates += [Path(d) / soname for d in self.STANDARD_DIRS]
        for cand in candidates:
            if not cand.is_file():
                continue
            try:
                idx = elfsyms.index_file(cand)
            except BadInput:
                continue
            if idx.elfclass == elfclass and idx.machine == machine:
                return cand, idx
        return None


# ------------------------------------------------------------------ results


class SymbolReport(BaseModel):
    symbol: str
    demangled: str
    version: str | None = None
    note: str = ""


class ExtensionReport(BaseModel):
    path: str
    soname: str | None = None
    needed: list[str] = Field(default_factory=list)
    missing_needed: list[str] = Field(default_factory=list)
    external_needed: list[str] = Field(default_factory=list)
    undefined_total: int = 0
    python_symbols: int = 0
    unresolved: list[SymbolReport] = Field(default_factory=list)
    unchecked: list[SymbolReport] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    ok: bool = True


class VerifyResult(BaseModel):
    schema_: Literal["buildctl.verify/1"] = Field("buildctl.verify/1", alias="schema")
    wheel: str
    torch: str
    torch_version: str | None = None
    extensions: list[ExtensionReport] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    ok: bool = True
    elapsed_s: float = 0.0

    model_config = {"populate_by_name": True}

    def unresolved_demangled(self) -> list[str]:
        return [s.demangled for e in self.extensions for s in e.unresolved]

    def render(self, *, max_symbols: int = 50) -> str:
        """Plain text for the terminal and logs, grouped per extension."""
        verdict = "PASS" if self.ok else "FAIL"
        lines = [f"verify {Path(self.wheel).name} against {self.torch}: {verdict}"]
        for ext in self.extensions:
            state = "ok" if ext.ok else "FAIL"
            lines.append(
                f"  {ext.path}: {state} ({ext.undefined_total} undefined, "
                f"{len(ext.unresolved)} unresolved, {len(ext.unchecked)} unchecked)"
            )
            for problem in ext.problems:
                lines.append(f"    ! {problem}")
            for sym in ext.unresolved[:max_symbols]:
                ver = f"@{sym.version}" if sym.version else ""
                lines.append(f"    unresolved: {sym.demangled}{ver}")
                lines.append(f"        {sym.symbol}" + (f"  ({sym.note})" if sym.note else ""))
            if len(ext.unresolved) > max_symbols:
                lines.append(f"    ... {len(ext.unresolved) - max_symbols} more unresolved")
            if ext.unchecked:
                lines.append(
                    f"    {len(ext.unchecked)} symbol(s) not checked: {ext.unchecked[0].note}"
                )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        if not self.ok:
            first = self.unresolved_demangled()[:3]
            raise BuildFailed(
                f"{Path(self.wheel).name} does not link against {self.torch}"
                + (f": unresolved {', '.join(first)}" if first else ""),
                "rebuild against that torch (buildctl wheel --torch ...) "
                "or pin the torch it was built for",
            )


# ------------------------------------------------------------------ helpers


def demangle(names: Iterable[str]) -> dict[str, str]:
    """Batch-demangle with one `c++filt` process; raw names when it is missing or misbehaves."""
    todo = sorted(set(names))
    identity = {n: n for n in todo}
    exe = shutil.which("c++filt")
    if not todo or not exe:
        return identity
    try:
        proc = subprocess.run(
            [exe], input="\n".join(todo) + "\n", capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return identity
    out = proc.stdout.splitlines()
    if proc.returncode != 0 or len(out) != len(todo):
        return identity
    return dict(zip(todo, out, strict=True))


def is_torch_symbol(name: str) -> bool:
    """Mangled names in at::/c10::/torch::/caffe2:: or torch's C shim: only torch defines them."""
    return bool(_TORCH_MANGLED_RE.match(name)) or name.startswith(_TORCH_C_PREFIXES)


def is_python_symbol(name: str) -> bool:
    return bool(_PYTHON_RE.match(name))


@dataclass
class _WheelElf:
    member: str
    index: ElfIndex


def _read_wheel_elves(wheel: Path) -> tuple[list[_WheelElf], list[str]]:
    notes: list[str] = []
    elves: list[_WheelElf] = []
    with open_wheel(wheel) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir() or not SHARED_OBJECT_RE.search(info.filename):
                continue
            data = read_member(zf, info.filename, wheel)
            if not elfsyms.is_elf(data):
                raise BadInput(
                    f"{wheel.name}: {info.filename} is named like a shared object but is not ELF",
                    "rebuild the wheel",
                )
            elves.append(
                _WheelElf(info.filename, elfsyms.parse_elf(io.BytesIO(data), info.filename))
            )
    if not elves:
        notes.append("the wheel contains no ELF shared objects: nothing to verify")
    return elves, notes


# ------------------------------------------------------------------ verification


class _Resolver:
    """Finds the provider of a soname and indexes it: wheel, torch, external, system, missing."""

    def __init__(
        self, against: TorchLibs, system: SystemLibs, wheel_elves: list[_WheelElf]
    ) -> None:
        self.torch = against
        self.system = system
        self.wheel: dict[str, ElfIndex] = {}
        for elf in wheel_elves:
            self.wheel.setdefault(elf.member.rsplit("/", 1)[-1], elf.index)
            if elf.index.soname:
                self.wheel.setdefault(elf.index.soname, elf.index)

    def provider(self, soname: str, elfclass: int, machine: str) -> tuple[str, ElfIndex | None]:
        if soname in self.wheel:
            return "wheel", self.wheel[soname]
        if self.torch.has(soname):
            return "torch", self.torch.index(soname)
        if external_family(soname):
            return "external", None
        found = self.system.find(soname, elfclass, machine)
        if found is not None:
            return "system", found[1]
        return "missing", None

    def kind(self, soname: str) -> str:
        """Provider kind without indexing (for the extension's own DT_NEEDED check)."""
        if soname in self.wheel:
            return "wheel"
        if self.torch.has(soname):
            return "torch"
        if external_family(soname):
            return "external"
        return "system"


def _verify_one(
    elf: _WheelElf, resolver: _Resolver, against: TorchLibs
) -> tuple[ExtensionReport, list[UndefinedSymbol], list[tuple[UndefinedSymbol, str]]]:
    idx = elf.index
    report = ExtensionReport(
        path=elf.member,
        soname=idx.soname,
        needed=list(idx.needed),
        undefined_total=len(idx.undefined),
    )
    pending: dict[str, UndefinedSymbol] = {}
    for sym in idx.undefined:
        if is_python_symbol(sym.name) and not sym.version:
            report.python_symbols += 1
        else:
            pending[sym.key] = sym
    # Direct DT_NEEDED: each must exist somewhere (a missing one fails the import outright).
    for soname in idx.needed:
        kind = resolver.kind(soname)
        if kind == "external":
            report.external_needed.append(soname)
        elif kind == "system" and resolver.system.find(soname, idx.elfclass, idx.machine) is None:
            report.missing_needed.append(soname)
            report.problems.append(
                f"DT_NEEDED {soname} is neither in the wheel, in {against.describe()}, "
                "nor on this system"
            )
    # Breadth-first over the DT_NEEDED closure plus torch's global deps, indexing lazily.
    start = list(idx.needed)
    if against.has(GLOBAL_DEPS):
        start.append(GLOBAL_DEPS)
    queue: deque[str] = deque(start)
    seen: set[str] = set()
    externals: list[str] = list(report.external_needed)
    while queue and pending:
        soname = queue.popleft()
        if soname in seen:
            continue
        seen.add(soname)
        kind, lib = resolver.provider(soname, idx.elfclass, idx.machine)
        if kind == "external":
            if soname not in externals:
                externals.append(soname)
            continue
        if lib is None:
            continue
        if (lib.elfclass, lib.machine) != (idx.elfclass, idx.machine):
            report.problems.append(
                f"{soname} is {lib.machine}/ELF{lib.elfclass}, "
                f"the extension is {idx.machine}/ELF{idx.elfclass}"
            )
            continue
        for key in [k for k, s in pending.items() if lib.provides(s)]:
            del pending[key]
        queue.extend(n for n in lib.needed if n not in seen)
    unresolved: list[UndefinedSymbol] = []
    unchecked: list[tuple[UndefinedSymbol, str]] = []
    for sym in pending.values():
        if sym.version_file and external_family(sym.version_file):
            unchecked.append((sym, f"versioned from external runtime {sym.version_file}"))
        elif is_torch_symbol(sym.name) or not externals or sym.version:
            unresolved.append(sym)
        else:
            unchecked.append((sym, "may come from external runtime " + ", ".join(externals)))
    return report, unresolved, unchecked


def _hints(unresolved: list[UndefinedSymbol], against: TorchLibs) -> dict[str, str]:
    """Why a symbol is unresolved: in a torch lib the extension does not link, or nowhere."""
    hints: dict[str, str] = {}
    torch_syms = [s for s in unresolved if not s.version]
    if torch_syms:
        # Only on failure: index every torch library to say where (if anywhere) a symbol lives.
        for name in against.names():
            try:
                lib = against.index(name)
            except BadInput:
                continue
            for sym in torch_syms:
                if sym.key not in hints and lib.provides(sym):
                    hints[sym.key] = f"defined in {name}, which the extension does not link"
        for sym in torch_syms:
            hints.setdefault(sym.key, f"not exported by torch {against.version or against.origin}")
    for sym in unresolved:
        if sym.version:
            hints.setdefault(
                sym.key, f"{sym.version_file} here does not provide version {sym.version}"
            )
    return hints


def verify_wheel(
    wheel_path: str | Path,
    against: TorchLibs,
    *,
    system: SystemLibs | None = None,
) -> VerifyResult:
    """Check every ELF in `wheel_path` against `against`; never raises for a failed check.

    Raises BadInput for a wheel that is not one (name, zip, unsafe paths, non-ELF `.so`).
    Call `result.raise_for_failure()` to turn a failed check into BuildFailed (exit 1).
    """
    started = time.monotonic()
    wheel = Path(wheel_path)
    elves, notes = _read_wheel_elves(wheel)
    resolver = _Resolver(against, system or SystemLibs(), elves)
    result = VerifyResult(
        wheel=str(wheel), torch=against.describe(), torch_version=against.version, notes=notes
    )
    collected: list[
        tuple[ExtensionReport, ElfIndex, list[UndefinedSymbol], list[tuple[UndefinedSymbol, str]]]
    ] = []
    for elf in elves:
        report, unresolved, unchecked = _verify_one(elf, resolver, against)
        collected.append((report, elf.index, unresolved, unchecked))
    names = [s.name for _, _, un, _ in collected for s in un]
    names += [s.name for _, _, _, uc in collected for s, _ in uc]
    pretty = demangle(names)
    externals_seen: set[str] = set()
    for report, _index, unresolved, unchecked in collected:
        hints = _hints(unresolved, against) if unresolved else {}
        report.unresolved = sorted(
            (
                SymbolReport(
                    symbol=s.name,
                    demangled=pretty.get(s.name, s.name),
                    version=s.version,
                    note=hints.get(s.key, ""),
                )
                for s in unresolved
            ),
            key=lambda r: r.demangled,
        )
        report.unchecked = sorted(
            (
                SymbolReport(
                    symbol=s.name,
                    demangled=pretty.get(s.name, s.name),
                    version=s.version,
                    note=note,
                )
                for s, note in unchecked
            ),
            key=lambda r: r.demangled,
        )
        report.ok = not report.unresolved and not report.missing_needed and not report.problems
        externals_seen.update(report.external_needed)
        result.extensions.append(report)
    if externals_seen or any(r.unchecked for r in result.extensions):
        result.notes.append(
            "external runtime libraries (CUDA/SYCL/Level Zero/ROCm) are not part of the torch "
            "build "
            "checked here: their symbols are listed as unchecked, not verified"
        )
    result.ok = all(r.ok for r in result.extensions)
    result.elapsed_s = round(time.monotonic() - started, 3)
    return result
