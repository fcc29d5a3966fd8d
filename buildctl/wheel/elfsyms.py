"""Dynamic symbol index of one ELF shared object, fast enough for libtorch_cpu.so, cached on disk.

pyelftools reads the headers, the dynamic section and the GNU version sections (all small); the
symbol table itself (75k+ entries in libtorch_cpu.so) is unpacked with `struct.iter_unpack`,
because pyelftools' per-symbol parsing takes seconds there. Indexes are cached under
`~/.cache/buildctl/symidx/` keyed on the file's identity (path, size, mtime) or, for members of
a wheel, on the member's name, CRC and size.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

from buildctl.errors import BadInput

INDEX_SCHEMA = 2

_STB_GLOBAL, _STB_WEAK, _STB_GNU_UNIQUE = 1, 2, 10
_STT_SECTION, _STT_FILE = 3, 4
_STV_DEFAULT, _STV_PROTECTED = 0, 3
_SHN_UNDEF = 0


@dataclass(frozen=True)
class UndefinedSymbol:
    """A strong undefined dynamic symbol; `version`/`version_file` from .gnu.version_r."""

    name: str
    version: str | None = None
    version_file: str | None = None

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name


@dataclass
class ElfIndex:
    """What the dynamic linker sees of one shared object."""

    soname: str | None
    needed: list[str]
    runpath: list[str]
    machine: str
    elfclass: int
    # Exported names, plus `name@VERSION` for versioned definitions (GLIBC_2.14, GLIBCXX_3.4.21...).
    defined: frozenset[str] = field(default_factory=frozenset)
    undefined: list[UndefinedSymbol] = field(default_factory=list)

    def provides(self, sym: UndefinedSymbol) -> bool:
        return sym.key in self.defined

    def to_json(self) -> dict[str, object]:
        return {
            "schema": INDEX_SCHEMA,
            "soname": self.soname,
            "needed": self.needed,
            "runpath": self.runpath,
            "machine": self.machine,
            "elfclass": self.elfclass,
            "defined": sorted(self.defined),
            "undefined": [[u.name, u.version, u.version_file] for u in self.undefined],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ElfIndex:
        return cls(
            soname=data["soname"],  # type: ignore[arg-type]
            needed=list(data["needed"]),  # type: ignore[call-overload]
            runpath=list(data["runpath"]),  # type: ignore[call-overload]
            machine=str(data["machine"]),
            elfclass=int(data["elfclass"]),  # type: ignore[call-overload]
            defined=frozenset(data["defined"]),  # type: ignore[arg-type]
            undefined=[UndefinedSymbol(*u) for u in data["undefined"]],  # type: ignore[attr-defined]
        )


def is_elf(head: bytes) -> bool:
    return head[:4] == b"\x7fELF"


def _version_maps(elf: ELFFile) -> tuple[dict[int, str], dict[int, tuple[str, str]]]:
    """verdef index -> version name; verneed index -> (version name, library file)."""
    defs: dict[int, str] = {}
    needs: dict[int, tuple[str, str]] = {}
    for sec in elf.iter_sections():
        if isinstance(sec, GNUVerDefSection):
            for verdef, auxiter in sec.iter_versions():
                aux = next(iter(auxiter), None)
                if aux is not None and not verdef["vd_flags"] & 0x1:  # VER_FLG_BASE = file name
                    defs[verdef["vd_ndx"]] = aux.name
        elif isinstance(sec, GNUVerNeedSection):
            for verneed, auxiter in sec.iter_versions():
                for aux in auxiter:
                    needs[aux["vna_other"]] = (aux.name, verneed.name)
    return defs, needs


def parse_elf(stream: BinaryIO, what: str) -> ElfIndex:
    """Index an ELF shared object read from `stream` (seekable). `what` names it in errors."""
    try:
        elf = ELFFile(stream)
        soname: str | None = None
        needed: list[str] = []
        runpath: list[str] = []
        dynsym = versym = None
        for sec in elf.iter_sections():
            if isinstance(sec, DynamicSection):
                for tag in sec.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif tag.entry.d_tag == "DT_SONAME":
                        soname = tag.soname
                    elif tag.entry.d_tag == "DT_RUNPATH":
                        runpath.extend(tag.runpath.split(":"))
                    elif tag.entry.d_tag == "DT_RPATH":
                        runpath.extend(tag.rpath.split(":"))
            elif sec["sh_type"] == "SHT_DYNSYM":
                dynsym = sec
            elif sec["sh_type"] == "SHT_GNU_versym":
                versym = sec
        defs, needs = _version_maps(elf)
        index = ElfIndex(
            soname=soname,
            needed=needed,
            runpath=[p for p in runpath if p],
            machine=str(elf["e_machine"]),
            elfclass=elf.elfclass,
        )
        if dynsym is None:
            return index
        strtab = elf.get_section(dynsym["sh_link"])
        strings = strtab.data()
        raw = dynsym.data()
        endian = "<" if elf.little_endian else ">"
        if elf.elfclass == 64:
            fmt = endian + "IBBHQQ"
            rows = ((n, i, o, s) for n, i, o, s, _v, _z in struct.iter_unpack(fmt, raw))
        else:
            fmt = endian + "IIIBBH"
            rows = ((n, i, o, s) for n, _v, _z, i, o, s in struct.iter_unpack(fmt, raw))
        vers: tuple[int, ...] = ()
        if versym is not None:
            vraw = versym.data()
            vers = struct.unpack(f"{endian}{len(vraw) // 2}H", vraw)
    except (ELFError, struct.error, ValueError, IndexError) as exc:
        raise BadInput(
            f"{what} is not a readable ELF shared object ({exc})", "rebuild it"
        ) from None
    defined: set[str] = set()
    undefined: list[UndefinedSymbol] = []
    for idx, (st_name, st_info, st_other, st_shndx) in enumerate(rows):
        if not st_name:
            continue
        bind = st_info >> 4
        if bind not in (_STB_GLOBAL, _STB_WEAK, _STB_GNU_UNIQUE):
            continue
        end = strings.find(b"\0", st_name)
        name = strings[st_name:end].decode("utf-8", "replace")
        ver = vers[idx] & 0x7FFF if idx < len(vers) else 1
        if st_shndx == _SHN_UNDEF:
            # Weak undefined symbols may stay unresolved at run time (__gmon_start__, _ITM_*).
            if bind == _STB_WEAK:
                continue
            if ver >= 2 and ver in needs:
                vname, vfile = needs[ver]
                undefined.append(UndefinedSymbol(name, vname, vfile))
            else:
                undefined.append(UndefinedSymbol(name))
            continue
        if (st_info & 0xF) in (_STT_SECTION, _STT_FILE):
            continue
        if (st_other & 0x3) not in (_STV_DEFAULT, _STV_PROTECTED):
            continue
        defined.add(name)
        if ver >= 2 and ver in defs:
            defined.add(f"{name}@{defs[ver]}")
    index.defined = frozenset(defined)
    index.undefined = undefined
    return index


def parse_elf_file(path: Path) -> ElfIndex:
    with open(path, "rb") as handle:
        if not is_elf(handle.read(4)):
            raise BadInput(f"{path} is not an ELF file", "point at a shared object")
        handle.seek(0)
        return parse_elf(handle, str(path))


# ---------------------------------------------------------------- disk cache


def cache_dir() -> Path:
    """`$BUILDCTL_CACHE_DIR/symidx` or `$XDG_CACHE_HOME/buildctl/symidx` (~/.cache/...)."""
    root = os.environ.get("BUILDCTL_CACHE_DIR")
    if root:
        return Path(root) / "symidx"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "buildctl" / "symidx"


def file_cache_key(path: Path) -> str:
    st = path.stat()
    ident = f"file\0{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
    return hashlib.sha256(ident.encode()).hexdigest()[:40]


def member_cache_key(member: str, crc: int, size: int) -> str:
    # CRC + size + name identify a member's content whichever wheel file (or copy) it sits in.
    ident = f"zip\0{member}\0{crc:08x}\0{size}"
    return hashlib.sha256(ident.encode()).hexdigest()[:40]


def load_cached(key: str) -> ElfIndex | None:
    path = cache_dir() / f"{key}.json.gz"
    try:
        data = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, ValueError, EOFError):
        return None
    if not isinstance(data, dict) or data.get("schema") != INDEX_SCHEMA:
        return None
    try:
        return ElfIndex.from_json(data)
    except (KeyError, TypeError, ValueError):
        return None  # a damaged cache entry is rebuilt, never trusted


def store_cached(key: str, index: ElfIndex) -> None:
    target = cache_dir() / f"{key}.json.gz"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        blob = gzip.compress(json.dumps(index.to_json()).encode(), compresslevel=3, mtime=0)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{key}.")
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
        os.replace(tmp, target)  # atomic: concurrent verifies never read half an index
    except OSError:
        pass  # the cache is an optimisation; a read-only home must not fail a verify


def index_file(path: Path, *, use_cache: bool = True) -> ElfIndex:
    """Index an installed shared object, through the cache."""
    key = file_cache_key(path)
    if use_cache and (hit := load_cached(key)) is not None:
        return hit
    index = parse_elf_file(path)
    if use_cache:
        store_cached(key, index)
    return index
