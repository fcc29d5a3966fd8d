"""Shards compile, and together define exactly the symbols of the unsplit file (both forms)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from buildctl.split.plan import parse_generated_source
from buildctl.split.writer import write_shards

GXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(GXX is None, reason="needs g++")

HEADER = """\
#pragma once
#include <cstddef>
namespace k {
template <typename T, int N> T dot(const T* a, const T* b) {
  T s = 0;
  for (int i = 0; i < N; ++i) s += a[i] * b[i];
  return s;
}
template <typename T> struct Box { T v; T twice() const { return v + v; } static int count; };
template <typename T> int Box<T>::count = 3;
inline int shared_helper() { return 7; }
namespace { int file_local() { return 1; } }
}  // namespace k
"""

INSTANTIATIONS = """\
// generated
#include "k.hpp"
namespace k {
template float dot<float, 1>(const float*, const float*);
template float dot<float, 2>(const float*, const float*);
template double dot<double, 3>(const double*, const double*);
template struct Box<int>;
template struct Box<double>;
template long dot<long, 4>(const long*, const long*);
template int dot<int, 5>(const int*, const int*);
}  // namespace k
"""

XMACRO = """\
#include "k.hpp"
namespace k {
#define INST(T, N) template T dot<T, N>(const T*, const T*);
INST(float, 1)
INST(float, 2)
INST(double, 3)
INST(long, 4)
INST(int, 5)
INST(short, 6)
#undef INST
}  // namespace k
"""


def _defined_globals(obj: Path) -> set[tuple[str, str]]:
    """(name, binding) of every defined non-local symbol in an object file."""
    out: set[tuple[str, str]] = set()
    with open(obj, "rb") as fh:
        for section in ELFFile(fh).iter_sections():
            if isinstance(section, SymbolTableSection) and section.name == ".symtab":
                for sym in section.iter_symbols():
                    bind = sym["st_info"]["bind"]
                    if sym.name and bind != "STB_LOCAL" and sym["st_shndx"] != "SHN_UNDEF":
                        out.add((sym.name, bind))
    return out


def _compile(src: Path, obj: Path) -> None:
    subprocess.run([GXX, "-O1", "-fPIC", "-c", str(src), "-o", str(obj)], check=True)


@pytest.mark.parametrize(("text", "n"), [(INSTANTIATIONS, 3), (INSTANTIATIONS, 7), (XMACRO, 4)])
def test_shards_define_the_same_symbols(tmp_path: Path, text: str, n: int) -> None:
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "k.hpp").write_text(HEADER)
    origin = gen / "inst.cpp"
    origin.write_text(text)
    _compile(origin, tmp_path / "whole.o")
    whole = _defined_globals(tmp_path / "whole.o")
    assert any("dot" in name for name, _ in whole)

    source = parse_generated_source(text, str(origin))
    shards = write_shards(source, n, tmp_path / "out", origin).paths
    assert len(shards) == n
    union: set[tuple[str, str]] = set()
    strong_seen: dict[str, Path] = {}
    for i, shard in enumerate(shards):
        obj = tmp_path / f"s{i}.o"
        _compile(shard, obj)
        for name, bind in _defined_globals(obj):
            union.add((name, bind))
            if bind == "STB_GLOBAL":  # a strong symbol in two shards would not link
                assert name not in strong_seen, f"{name} in {strong_seen.get(name)} and {shard}"
                strong_seen[name] = shard
    assert union == whole


def test_shard_diagnostics_point_at_the_original(tmp_path: Path) -> None:
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "k.hpp").write_text(HEADER)
    origin = gen / "inst.cpp"
    bad = INSTANTIATIONS.replace(
        "template long dot<long, 4>", "template struct Missing<int>;\ntemplate long dot<long, 4>"
    )
    origin.write_text(bad)
    source = parse_generated_source(bad, str(origin))
    shards = write_shards(source, 2, tmp_path / "out", origin).paths
    res = subprocess.run(
        [GXX, "-c", str(shards[1]), "-o", str(tmp_path / "x.o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode != 0
    line = bad.splitlines().index("template struct Missing<int>;") + 1
    assert f"{origin}:{line}:" in res.stderr
