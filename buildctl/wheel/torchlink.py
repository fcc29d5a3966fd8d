"""Does a built extension use torch? Only then does its wheel get the torch label (+pt213cpu)
and the `Requires-Dist: torch==` pin: a plain C++ extension works with any torch, or none.

Read from the ELF files themselves: a DT_NEEDED entry naming a torch library, or an undefined
symbol only torch defines (at::, c10::, torch::, caffe2:: or torch's C shim; an extension
built with `-Wl,--as-needed` off or loaded through torch's globals may lack DT_NEEDED).
"""

from __future__ import annotations

import fnmatch
import io
from collections.abc import Iterable
from pathlib import Path

from buildctl.wheel import elfsyms
from buildctl.wheel.elfsyms import ElfIndex
from buildctl.wheel.runtime_libs import SHARED_OBJECT_RE
from buildctl.wheel.sonames import TORCH_GLOBS
from buildctl.wheel.verify import is_torch_symbol
from buildctl.wheel.wheelzip import open_wheel, read_member

# torch ships its own libgomp, but an OpenMP extension needs libgomp without needing torch.
TORCH_LIBRARY_GLOBS = tuple(glob for glob in TORCH_GLOBS if not glob.startswith("libgomp"))


def needs_torch_library(soname: str) -> bool:
    return any(fnmatch.fnmatch(soname, glob) for glob in TORCH_LIBRARY_GLOBS)


def links_torch(elves: Iterable[ElfIndex]) -> bool:
    """Whether any of these shared objects needs torch (pure)."""
    for index in elves:
        if any(needs_torch_library(name) for name in index.needed):
            return True
        if any(is_torch_symbol(symbol.name) for symbol in index.undefined):
            return True
    return False


def wheel_elves(wheel: Path) -> list[ElfIndex]:
    elves = []
    with open_wheel(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir() or not SHARED_OBJECT_RE.search(info.filename):
                continue
            data = read_member(zf, info.filename, wheel)
            if elfsyms.is_elf(data):
                elves.append(elfsyms.parse_elf(io.BytesIO(data), info.filename))
    return elves


def wheel_links_torch(wheel: Path) -> bool:
    return links_torch(wheel_elves(wheel))
