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
  Unless the runtime is given (`verify_wheel(..., runtime=[RuntimeLibs...])`, e.g. the
  intel-sycl-rt, intel-cmplr-lib-ur and intel-cmplr-lib-rt wheels): then every soname of a family
  it ships is checked like torch's (found, or a failure naming the versions it does ship), its
  symbols resolve against it, and the runtime libraries' own DT_NEEDED closure and versioned
  references to each other are checked too (`runtime_libs.py`).

Only the libraries needed to settle the extension's symbols are indexed (lazily, in DT_NEEDED
breadth-first order), and each index is cached on disk (`elfsyms`), so verifying against a 2 GB
CUDA torch wheel costs a few seconds once and well under a second afterwards.

Why one module of about 640 lines: the resolver and the torch and system library sets it
searches are one algorithm (the dynamic linker's search, done the same way for every extension).
The results and their rendering (`verify_result`), the ELF symbol index (`elfsyms`), soname
families (`sonames`), runtime wheels (`runtime_libs`) and the command handler
(`wheel/commands.py`) are modules of their own.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildctl.errors import BadInput
from buildctl.wheel import elfsyms
from buildctl.wheel.elfsyms import ElfIndex, UndefinedSymbol
from buildctl.wheel.runtime_libs import SHARED_OBJECT_RE, LibRef, RuntimeLibs, RuntimeSet, index_ref
from buildctl.wheel.sonames import external_family
from buildctl.wheel.verify_result import ExtensionReport, SymbolReport, VerifyResult
from buildctl.wheel.wheelzip import open_wheel, read_member

_TORCH_LIB_MEMBER_RE = re.compile(r"^torch/lib/[^/]+\.so(\.\d+)*$")
_VERSION_PY_RE = re.compile(r"""__version__\s*=\s*['"]([^'"]+)['"]""")
# Mangled names in torch's namespaces: _ZN2at..., _ZNK3c10..., _ZTVN5torch..., _ZNR5torch...
_TORCH_MANGLED_RE = re.compile(r"^_Z(?:T[VIST]|GV|TH|TW)?N[rVKRO]*(2at|3c10|5torch|6caffe2)\d")
_TORCH_C_PREFIXES = ("aoti_torch_",)
_PYTHON_RE = re.compile(r"^_?Py[A-Za-z_]")
GLOBAL_DEPS = "libtorch_global_deps.so"


# ------------------------------------------------------------------ torch libraries


class TorchLibs:
    """The shared libraries of one torch build: an installed torch, a `lib/` dir, or a wheel file.

    Libraries are indexed on demand (`index(name)`) and cached in memory and on disk.
    """

    def __init__(self, refs: dict[str, LibRef], version: str | None, origin: str) -> None:
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
        if name not in self._memo:
            result, spent = index_ref(self.refs[name], "re-download the torch wheel")
            self.extract_s += spent
            self._memo[name] = result
        return self._memo[name]

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
            p.name: LibRef(p.name, path=p)
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
            refs: dict[str, LibRef] = {}
            for info in zf.infolist():
                if _TORCH_LIB_MEMBER_RE.match(info.filename):
                    name = info.filename.rsplit("/", 1)[1]
                    refs[name] = LibRef(
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
    """Finds the provider of a soname: wheel, torch, runtime, external, system or missing."""

    def __init__(
        self,
        against: TorchLibs,
        system: SystemLibs,
        wheel_elves: list[_WheelElf],
        runtime: RuntimeSet,
    ) -> None:
        self.torch = against
        self.system = system
        self.runtime = runtime
        self.wheel: dict[str, ElfIndex] = {}
        for elf in wheel_elves:
            self.wheel.setdefault(elf.member.rsplit("/", 1)[-1], elf.index)
            if elf.index.soname:
                self.wheel.setdefault(elf.index.soname, elf.index)
        self._deps_memo: dict[str, tuple[list[str], list[str]]] = {}

    def kind(self, soname: str) -> str:
        """Provider kind without indexing; "system" means: ask `self.system`."""
        if soname in self.wheel:
            return "wheel"
        if self.torch.has(soname):
            return "torch"
        if self.runtime.has(soname):
            return "runtime"
        if external_family(soname) and not self.runtime.covers(soname):
            return "external"  # no runtime source given for it: listed, never checked
        return "system"

    def provider(self, soname: str, elfclass: int, machine: str) -> tuple[str, ElfIndex | None]:
        kind = self.kind(soname)
        if kind == "wheel":
            return kind, self.wheel[soname]
        if kind == "torch":
            return kind, self.torch.index(soname)
        if kind == "runtime":
            return kind, self.runtime.index(soname)
        if kind == "external":
            return kind, None
        found = self.system.find(soname, elfclass, machine)
        if found is not None:
            return "system", found[1]
        return "missing", None

    def not_provided(self, soname: str) -> str:
        """The tail of a "`soname` ..." sentence naming where it was looked for."""
        if self.runtime.covers(soname):
            others = [n for n, _src in self.runtime.alternatives(soname) if n != soname]
            ships = f" (they ship {', '.join(others)})" if others else ""
            return (
                f"is not provided by the runtime {self.runtime.describe()}{ships}, "
                f"by {self.torch.describe()}, nor by this system"
            )
        return f"is neither in the wheel, in {self.torch.describe()}, nor on this system"

    def runtime_deps(self, soname: str, elfclass: int, machine: str) -> tuple[list[str], list[str]]:
        """(runtime sonames it needs, problems) for one runtime library; memoized per verify."""
        if soname in self._deps_memo:
            return self._deps_memo[soname]
        lib = self.runtime.index(soname)
        label = self.runtime.label(soname)
        deps: list[str] = []
        problems: list[str] = []
        if (lib.elfclass, lib.machine) != (elfclass, machine):
            problems.append(f"{soname} ({label}) is {lib.machine}/ELF{lib.elfclass}")
        for dep in lib.needed:
            kind = self.kind(dep)
            if kind == "runtime":
                deps.append(dep)
            elif kind == "system" and self.system.find(dep, elfclass, machine) is None:
                problems.append(f"{soname} ({label}) needs {dep}, which {self.not_provided(dep)}")
        # Versioned references between runtime libraries (libsycl -> urX@LIBUR_LOADER_0.12): a
        # libur_loader from another oneAPI release lacks some, the "undefined UR symbol" failure.
        # References to glibc/libstdc++ are the host's business and are not checked here.
        by_file: dict[str, list[UndefinedSymbol]] = {}
        for sym in lib.undefined:
            if sym.version_file and self.runtime.has(sym.version_file):
                by_file.setdefault(sym.version_file, []).append(sym)
        for vfile, syms in by_file.items():
            provider = self.runtime.index(vfile)
            gone = sorted({s.key for s in syms if not provider.provides(s)})
            if gone:
                problems.append(
                    f"{soname} ({label}) needs {len(gone)} symbol(s) that {vfile} "
                    f"({self.runtime.label(vfile)}) does not define (mixed runtime releases?): "
                    + ", ".join(gone[:5])
                    + (", ..." if len(gone) > 5 else "")
                )
        self._deps_memo[soname] = (deps, problems)
        return deps, problems

    def runtime_closure(
        self, seeds: Iterable[str], elfclass: int, machine: str
    ) -> tuple[dict[str, str], list[str]]:
        """Every runtime library reachable from `seeds`, with the problems of the whole closure."""
        libs: dict[str, str] = {}
        problems: list[str] = []
        queue: deque[str] = deque(seeds)
        while queue:
            name = queue.popleft()
            if name in libs:
                continue
            libs[name] = self.runtime.label(name)
            deps, found = self.runtime_deps(name, elfclass, machine)
            problems.extend(p for p in found if p not in problems)
            queue.extend(d for d in deps if d not in libs)
        return libs, problems


def _verify_one(
    elf: _WheelElf, resolver: _Resolver, against: TorchLibs
) -> tuple[ExtensionReport, list[UndefinedSymbol], list[tuple[UndefinedSymbol, str]]]:
    idx = elf.index
    runtime = resolver.runtime
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
            report.problems.append(f"DT_NEEDED {soname} {resolver.not_provided(soname)}")
    # Breadth-first over the DT_NEEDED closure plus torch's global deps, indexing lazily.
    start = list(idx.needed)
    if against.has(GLOBAL_DEPS):
        start.append(GLOBAL_DEPS)
    queue: deque[str] = deque(start)
    seen: set[str] = set()
    needed_by: dict[str, str] = {}
    externals: list[str] = list(report.external_needed)
    runtime_seeds = [n for n in idx.needed if runtime.has(n)]
    # With a runtime given the walk goes on after the last symbol resolved: a runtime soname deep
    # in the closure (torch's libtorch_xpu.so -> libsycl.so.9) must be there too. Indexes are
    # disk-cached, so only the first verify against a torch pays for the extra libraries.
    while queue and (pending or runtime):
        soname = queue.popleft()
        if soname in seen:
            continue
        seen.add(soname)
        kind, lib = resolver.provider(soname, idx.elfclass, idx.machine)
        if kind == "external":
            if soname not in externals:
                externals.append(soname)
            continue
        parent = needed_by.get(soname, "?")
        # e.g. torch's libtorch_xpu.so needs libsycl.so.9 but the runtime given ships .so.8 (a
        # runtime library's own deps are reported by runtime_closure, naming its source)
        if (
            kind == "missing"
            and soname not in idx.needed
            and runtime.covers(soname)
            and not runtime.has(parent)
        ):
            report.problems.append(
                f"{parent} needs {soname}, which {resolver.not_provided(soname)}"
            )
        if lib is None:
            continue
        if (lib.elfclass, lib.machine) != (idx.elfclass, idx.machine):
            report.problems.append(
                f"{soname} is {lib.machine}/ELF{lib.elfclass}, "
                f"the extension is {idx.machine}/ELF{idx.elfclass}"
            )
            continue
        if kind == "runtime":
            runtime_seeds.append(soname)
        for key in [k for k, s in pending.items() if lib.provides(s)]:
            del pending[key]
        for dep in lib.needed:
            if dep not in seen:
                needed_by.setdefault(dep, soname)
                queue.append(dep)
    if runtime:
        # The runtime's own closure (libsycl -> libur_loader -> libimf...) must load as well,
        # whether or not the extension's symbols needed to look that far.
        report.runtime_libs, closure_problems = resolver.runtime_closure(
            runtime_seeds, idx.elfclass, idx.machine
        )
        report.problems.extend(p for p in closure_problems if p not in report.problems)
    unresolved: list[UndefinedSymbol] = []
    unchecked: list[tuple[UndefinedSymbol, str]] = []
    for sym in pending.values():
        vfile = sym.version_file
        if vfile and external_family(vfile) and not runtime.covers(vfile):
            unchecked.append((sym, f"versioned from external runtime {vfile}"))
        elif is_torch_symbol(sym.name) or not externals or sym.version:
            unresolved.append(sym)
        else:
            unchecked.append((sym, "may come from external runtime " + ", ".join(externals)))
    return report, unresolved, unchecked


def _runtime_hints(
    unresolved: list[UndefinedSymbol], needed: list[str], runtime: RuntimeSet
) -> dict[str, str]:
    """For runtime symbols: exported by another version of the library (libsycl.so.9), or not."""
    syms = [s for s in unresolved if not s.version and not is_torch_symbol(s.name)]
    candidates: list[tuple[str, RuntimeLibs]] = []
    for soname in needed:
        if external_family(soname) and runtime.covers(soname):
            candidates += [c for c in runtime.alternatives(soname) if c not in candidates]
    hints: dict[str, str] = {}
    if not syms or not candidates:
        return hints
    where = ", ".join(f"{name} ({src.label})" for name, src in candidates)
    for sym in syms:
        providers = [(n, src) for n, src in candidates if src.index(n).provides(sym)]
        if providers:
            name, src = providers[0]
            hints[sym.key] = f"exported by {name} ({src.label}), which the extension does not link"
        else:
            hints[sym.key] = f"not exported by {where}"
    return hints


def _hints(
    unresolved: list[UndefinedSymbol],
    against: TorchLibs,
    resolver: _Resolver,
    needed: list[str],
) -> dict[str, str]:
    """Why a symbol is unresolved: in a library the extension does not link, or nowhere."""
    hints: dict[str, str] = {}
    if resolver.runtime:
        hints.update(_runtime_hints(unresolved, needed, resolver.runtime))
    torch_syms = [s for s in unresolved if not s.version and s.key not in hints]
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
    runtime: Sequence[RuntimeLibs] = (),
    system: SystemLibs | None = None,
) -> VerifyResult:
    """Check every ELF in `wheel_path` against `against` and `runtime`; never raises for a failure.

    `runtime`: external runtime sources (`RuntimeLibs`, e.g. the intel-sycl-rt wheels torch XPU
    declares), searched in order after torch. Sonames of a family they ship are then checked
    like torch's (and their DT_NEEDED closure with them); without them those stay "unchecked".
    Raises BadInput for a wheel that is not one (name, zip, unsafe paths, non-ELF `.so`).
    Call `result.raise_for_failure()` to turn a failed check into BuildFailed (exit 1).
    """
    started = time.monotonic()
    wheel = Path(wheel_path)
    elves, notes = _read_wheel_elves(wheel)
    runtime_set = RuntimeSet(runtime)
    resolver = _Resolver(against, system or SystemLibs(), elves, runtime_set)
    result = VerifyResult(
        wheel=str(wheel),
        torch=against.describe(),
        torch_version=against.version,
        runtime=[src.label for src in runtime_set.sources],
        notes=notes,
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
    for report, index, unresolved, unchecked in collected:
        hints = _hints(unresolved, against, resolver, index.needed) if unresolved else {}
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
        given = f" (no runtime source given covers them: {runtime_set.describe()})"
        result.notes.append(
            "external runtime libraries (CUDA/SYCL/Level Zero/ROCm) are not part of the torch "
            "build checked here" + (given if runtime_set else "") + ": their symbols are listed "
            "as unchecked, not verified"
        )
    if runtime_set:
        result.notes.append(
            f"runtime {runtime_set.describe()}: the extension's runtime sonames and symbols, the "
            "runtime libraries' DT_NEEDED closure and their versioned references to each other "
            "are checked; driver libraries (libze_loader, libOpenCL) only if a source ships them"
        )
    result.ok = all(r.ok for r in result.extensions)
    result.elapsed_s = round(time.monotonic() - started, 3)
    return result
