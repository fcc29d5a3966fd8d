"""Pure split policy: parser shapes and errors, planner properties, slicing, rendering."""

from __future__ import annotations

import itertools

import pytest

from buildctl.errors import BadInput
from buildctl.split.gcc_gc import (
    GCC_GC_HEAPSIZE_MAX_KIB,
    GCC_GC_HEAPSIZE_MIN_KIB,
    gcc_gc_heapsize_kib,
    gcc_gc_sizing,
    is_gnu_compiler,
)
from buildctl.split.plan import (
    balanced_sizes,
    balanced_slices,
    parse_generated_source,
    plan_shards,
    probe_picks,
    render_probe,
    render_shard,
    rewrite_quoted_includes,
    shard_name,
    shard_target_from_budget,
)

MiB = 1024**2

INSTANTIATIONS = """\
// generated: do not edit
#include <vector>
#include "kern.hpp"

namespace ns {
namespace detail {
inline int helper() { return 1; }
}  // namespace detail

template void f<float, 1>(const float*, int);
template void f<float, 2>(const float*, int);
template class X<int, 4>;
template struct Y<double>;
template void f<double, 1'000>(const double*, int);

}  // namespace ns
"""

XMACRO = """\
#include "kern.hpp"
#define INST(T, N) template void f<T, N>(const T*, int);
INST(float, 1)
INST(float, 2)
INST(double, 1);
#undef INST
"""


def _bad(text: str, name: str = "gen.cpp") -> str:
    with pytest.raises(BadInput) as info:
        parse_generated_source(text, name)
    return info.value.what


# --------------------------------------------------------------------------------- parser


def test_parse_instantiations_preamble_entries_epilogue() -> None:
    src = parse_generated_source(INSTANTIATIONS, "gen.cpp")
    assert src.form == "instantiation"
    assert [e.line for e in src.entries] == [10, 11, 12, 13, 14]
    assert src.preamble.endswith("}  // namespace detail\n\n")
    assert src.epilogue == "\n}  // namespace ns\n"
    assert src.epilogue_line == 15
    assert src.macro is None
    # Nothing lost: preamble + entries + epilogue is the file.
    assert src.preamble + "".join(e.text for e in src.entries) + src.epilogue == INSTANTIATIONS


def test_parse_xmacro_needs_the_define_in_the_preamble() -> None:
    src = parse_generated_source(XMACRO, "gen.cpp")
    assert src.form == "xmacro"
    assert src.macro == "INST"
    assert len(src.entries) == 3
    assert src.epilogue == "#undef INST\n"


def test_xmacro_call_of_an_undefined_macro_is_not_a_list() -> None:
    text = '#include "kern.hpp"\nINST(float, 1)\nINST(float, 2)\n'
    assert "no list" in _bad(text)


def test_marker_allows_xmacro_defined_in_a_header() -> None:
    text = '#include "inst.hpp"\n// buildctl:split-list\nINST(float, 1)\nINST(float, 2)\n'
    src = parse_generated_source(text, "gen.cpp")
    assert (src.form, src.macro, len(src.entries)) == ("xmacro", "INST", 2)


def test_marker_picks_the_list_after_other_instantiations() -> None:
    text = (
        "#include <vector>\n"
        "template class std::vector<int>;\n"
        "int keep();\n"
        "// buildctl:split-list\n"
        "template void f<1>();\n"
        "template void f<2>();\n"
    )
    src = parse_generated_source(text, "gen.cpp")
    assert [e.line for e in src.entries] == [5, 6]
    assert "std::vector<int>" in src.preamble


def test_comments_between_entries_travel_with_the_next_entry() -> None:
    text = (
        "#include <a>\n"
        "template void f<1>();\n"
        "// group 2\n"
        "\n"
        "/* multi\n"
        "   line */\n"
        "template void f<2>();\n"
        "// trailing comment\n"
        "int tail();\n"
    )
    src = parse_generated_source(text, "gen.cpp")
    assert src.entries[1].leading == ("// group 2\n", "\n", "/* multi\n", "   line */\n")
    assert src.entries[1].first_line == 3
    assert src.epilogue == "// trailing comment\nint tail();\n"
    assert src.epilogue_line == 8


def test_list_runs_to_end_of_file_without_epilogue() -> None:
    src = parse_generated_source("#include <a>\ntemplate void f<1>();\ntemplate void f<2>();", "g")
    assert src.epilogue == ""
    assert len(src.entries) == 2


def test_entries_inside_comments_and_strings_are_ignored() -> None:
    text = (
        "/*\n"
        "template void f<0>();\n"
        "*/\n"
        'const char* s = R"x(\n'
        "template void f<9>();\n"
        ')x";\n'
        "template void f<1>();\n"
    )
    src = parse_generated_source(text, "gen.cpp")
    assert [e.line for e in src.entries] == [7]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("#include <a>\nint x;\n", 1, "no list"),
        ("// buildctl:split-list\n\n", 1, "empty"),
        ("// buildctl:split-list\nint x;\ntemplate void f<1>();\n", 2, "expected an explicit"),
        ("// buildctl:split-list\n// buildctl:split-list\ntemplate void f<1>();\n", 2, "second"),
        (
            "#include <a>\ntemplate void f<1>();\n#if A\ntemplate void f<2>();\n#endif\n",
            4,
            "interrupted at line 3",
        ),
        (
            "#include <a>\ntemplate void f<1>();\nint x;\ntemplate void f<2>();\n",
            4,
            "after the end of the list",
        ),
        ("struct A {\ntemplate void f<1>();\n};\n", 2, "non-namespace block opened at line 1"),
        ("namespace a {\ntemplate void f<1>();\n", 1, "never closed"),
        ("template void f<1>();\n}\n", 2, "never opened"),
        ("/* open\ntemplate void f<1>();\n", 2, "unterminated"),
        (
            "#include <torch/library.h>\nTORCH_LIBRARY(my, m) {}\ntemplate void f<1>();\n",
            2,
            "registers ops",
        ),
        (
            '#include "k.h"\n#define I(T) template void f<T>();\nI(int)\nI(long) I(short)\n',
            4,
            "after the end of the list",
        ),
    ],
)
def test_not_a_generated_source_names_file_and_line(text: str, line: int, words: str) -> None:
    what = _bad(text, "dir/gen.cpp")
    assert what.startswith(f"dir/gen.cpp:{line}:"), what
    assert words in what


def test_template_definitions_are_not_entries() -> None:
    text = (
        "template <typename T> void f(T) {}\n"
        "template <> void f<int>(int) {}\n"
        "extern template void f<long>(long);\n"
        "template void f<char>(char);\n"
    )
    src = parse_generated_source(text, "gen.cpp")
    assert [e.line for e in src.entries] == [4]


def test_own_line_directives_disable_ours() -> None:
    text = '#line 1 "gen.in"\n#include <a>\ntemplate void f<1>();\ntemplate void f<2>();\n'
    src = parse_generated_source(text, "gen.cpp")
    assert not src.line_directives
    shard = render_shard(src, range(0, 1), "/abs/gen.cpp")
    assert shard.count("#line") == 1  # only the file's own


def test_crlf_line_endings() -> None:
    text = "#include <a>\r\ntemplate void f<1>();\r\ntemplate void f<2>();\r\n}\r\n".replace(
        "}\r\n", ""
    )
    src = parse_generated_source(text, "gen.cpp")
    assert len(src.entries) == 2


# ------------------------------------------------------------------------------- rendering


def test_render_shard_keeps_preamble_epilogue_and_maps_lines() -> None:
    src = parse_generated_source(INSTANTIATIONS, "gen.cpp")
    shard = render_shard(src, range(1, 3), "/build/gen.cpp")
    lines = shard.splitlines()
    assert lines[0] == '#line 1 "/build/gen.cpp"'
    assert '#line 11 "/build/gen.cpp"' in lines
    assert "template void f<float, 2>(const float*, int);" in lines
    assert "template class X<int, 4>;" in lines
    assert "template void f<float, 1>(const float*, int);" not in lines
    assert '#line 15 "/build/gen.cpp"' in lines
    assert lines[-1] == "}  // namespace ns"
    # Without an origin: plain concatenation.
    plain = render_shard(src, range(0, 5))
    assert plain == INSTANTIATIONS


def test_shards_together_hold_every_entry_once() -> None:
    src = parse_generated_source(INSTANTIATIONS, "gen.cpp")
    for n in range(1, 6):
        texts = [render_shard(src, r) for r in balanced_slices(len(src.entries), n)]
        for entry in src.entries:
            assert sum(t.count(entry.text) for t in texts) == 1


def test_render_shard_escapes_origin() -> None:
    src = parse_generated_source("template void f<1>();\n", "g")
    assert '#line 1 "/a\\"b\\\\c.cpp"' in render_shard(src, range(0, 1), '/a"b\\c.cpp')


def test_render_shard_rejects_bad_slices() -> None:
    src = parse_generated_source(XMACRO, "gen.cpp")
    for bad in (range(0, 0), range(2, 4), range(-1, 1)):
        with pytest.raises(ValueError):
            render_shard(src, bad)


def test_rewrite_quoted_includes_only_where_the_file_exists() -> None:
    text = '#include "here.h"\n#include "there.h"\n#include <sys.h>\n  #  include "/abs.h"\n'
    out = rewrite_quoted_includes(text, "/gen", lambda p: p == "/gen/here.h")
    assert out.splitlines() == [
        '#include "/gen/here.h"',
        '#include "there.h"',
        "#include <sys.h>",
        '  #  include "/abs.h"',
    ]


def test_render_probe_and_picks() -> None:
    assert probe_picks(24, 4) == [3, 9, 15, 21]
    assert probe_picks(3, 8) == [0, 1, 2]
    assert probe_picks(5, 0) == []
    for n, k in itertools.product(range(1, 30), range(1, 10)):
        picks = probe_picks(n, k)
        assert len(picks) == min(n, k)
        assert all(0 <= p < n for p in picks)
    src = parse_generated_source(XMACRO, "gen.cpp")
    assert "INST(float, 2)" in render_probe(src, [1])
    assert "INST(float, 1)" not in render_probe(src, [1])
    assert render_probe(src, []) == src.preamble + src.epilogue


def test_shard_name() -> None:
    assert shard_name("gen", ".cpp", 0, 8) == "gen.shard-000-of-008.cpp"
    assert shard_name("gen", ".cu", 12, 1200) == "gen.shard-0012-of-1200.cu"


# ------------------------------------------------------------------------------- planning


def test_balanced_sizes() -> None:
    for n_entries in range(1, 60):
        for n in range(1, n_entries + 1):
            sizes = balanced_sizes(n_entries, n)
            assert sum(sizes) == n_entries
            assert max(sizes) - min(sizes) <= 1
            assert list(sizes) == sorted(sizes, reverse=True)
            slices = balanced_slices(n_entries, n)
            assert [i for r in slices for i in r] == list(range(n_entries))  # contiguous, ordered
    with pytest.raises(ValueError):
        balanced_sizes(3, 4)
    with pytest.raises(ValueError):
        balanced_sizes(3, 0)


def test_shard_target_from_budget() -> None:
    assert shard_target_from_budget(16 * 1024 * MiB, 2) == int(16 * 1024 * MiB * 0.8 / 2)
    assert shard_target_from_budget(1000, 1, safety=1.0) == 1000
    for bad in ((0, 2), (-5, 2), (100, 0)):
        with pytest.raises(BadInput):
            shard_target_from_budget(*bad)
    with pytest.raises(BadInput):
        shard_target_from_budget(100, 1, safety=0)


def test_plan_keeps_whole_when_it_fits() -> None:
    plan = plan_shards(900 * MiB, 100 * MiB, 40, 1000 * MiB)
    assert plan.n == 1
    assert plan.per_shard_entries == (40,)
    assert plan.predicted_shard_peak == 900 * MiB
    assert plan.fits


def test_plan_example_numbers() -> None:
    # 1.6 GiB whole, 100 MiB preamble, 96 entries -> 16 MiB per entry; 230 MiB target
    # -> 8 entries per shard -> 12 shards.
    plan = plan_shards(100 * MiB + 96 * 16 * MiB, 100 * MiB, 96, 230 * MiB)
    assert plan.n == 12
    assert plan.per_shard_entries == (8,) * 12
    assert plan.predicted_shard_peak == 100 * MiB + 8 * 16 * MiB
    assert plan.fits


WHOLES = [150, 400, 1_000, 4_000, 20_000]
BASES = [0, 50, 100, 140]
ENTRIES = [1, 2, 3, 7, 24, 100, 433]
TARGETS = [10, 60, 120, 200, 500, 5_000, 50_000]


@pytest.mark.parametrize("n_entries", ENTRIES)
def test_plan_properties(n_entries: int) -> None:
    for whole, base, target in itertools.product(WHOLES, BASES, TARGETS):
        plan = plan_shards(whole * MiB, base * MiB, n_entries, target * MiB)
        assert 1 <= plan.n <= n_entries
        assert len(plan.per_shard_entries) == plan.n
        assert sum(plan.per_shard_entries) == n_entries
        assert max(plan.per_shard_entries) - min(plan.per_shard_entries) <= 1
        k = plan.per_shard_entries[0]
        assert plan.predicted_shard_peak == base * MiB + k * (whole - base) * MiB // n_entries
        if whole <= target:
            assert plan.n == 1
        if plan.fits:
            assert plan.predicted_shard_peak <= target * MiB
            if plan.n > 1:  # minimal: one shard fewer would not fit
                fewer = balanced_sizes(n_entries, plan.n - 1)[0]
                assert base * MiB + fewer * (whole - base) * MiB // n_entries > target * MiB
        else:
            assert plan.n == n_entries
            assert plan.warnings


@pytest.mark.parametrize("n_entries", [5, 24, 96, 433])
def test_plan_monotonic_in_budget(n_entries: int) -> None:
    for whole, base in itertools.product(WHOLES, BASES):
        budgets = [2**i * MiB for i in range(4, 18)]
        counts = [
            plan_shards(whole * MiB, base * MiB, n_entries, shard_target_from_budget(b, 2)).n
            for b in budgets
        ]
        assert counts == sorted(counts, reverse=True), (whole, base, counts)
        assert counts[-1] == 1  # a huge budget never splits


def test_plan_caps_and_min() -> None:
    capped = plan_shards(1_000 * MiB, 0, 100, 20 * MiB, max_shards=8)
    assert capped.n == 8
    assert not capped.fits
    assert any("capped" in w for w in capped.warnings)
    assert plan_shards(100 * MiB, 0, 10, 10_000 * MiB, min_shards=3).n == 3
    assert plan_shards(100 * MiB, 0, 2, 10_000 * MiB, min_shards=5).n == 2
    # Entries that cost nothing: keep the minimum.
    assert plan_shards(100 * MiB, 100 * MiB, 50, 200 * MiB).n == 1


def test_plan_base_above_target_runs_one_entry_per_shard_and_warns() -> None:
    plan = plan_shards(800 * MiB, 300 * MiB, 6, 200 * MiB)
    assert plan.n == 6
    assert not plan.fits
    assert "above the per-shard target" in plan.warnings[0]


def test_plan_cpu_ratio() -> None:
    plan = plan_shards(1000 * MiB, 100 * MiB, 100, 300 * MiB, base_cpu_s=10.0, whole_cpu_s=100.0)
    # 5 shards: 5 * 10 s of preamble + 90 s of entries over 100 s
    assert plan.n == 5
    assert plan.predicted_cpu_ratio == pytest.approx(1.4)
    assert any("CPU time" in w for w in plan.warnings)
    cheap = plan_shards(1000 * MiB, 100 * MiB, 100, 300 * MiB, base_cpu_s=1.0, whole_cpu_s=100.0)
    assert cheap.predicted_cpu_ratio == pytest.approx(1.04)
    assert not cheap.warnings


def test_plan_rejects_bad_input() -> None:
    with pytest.raises(BadInput):
        plan_shards(100, 0, 0, 100)
    with pytest.raises(BadInput):
        plan_shards(100, 0, 5, 0)
    with pytest.raises(BadInput):
        plan_shards(100, 0, 5, 100, min_shards=0)
    with pytest.raises(BadInput):
        plan_shards(100, 0, 5, 100, max_shards=0)


# ------------------------------------------------------------------------ GCC GC sizing

GXX_VERSION = """g++ (Debian 12.2.0-14+deb12u1) 12.2.0
Copyright (C) 2022 Free Software Foundation, Inc.
This is free software; see the source for copying conditions.
"""
CLANG_VERSION = """Debian clang version 14.0.6
Target: x86_64-pc-linux-gnu
Thread model: posix
"""
ICPX_VERSION = """Intel(R) oneAPI DPC++/C++ Compiler 2025.0.4 (2025.0.4.20241205)
Target: x86_64-unknown-linux-gnu
"""


def test_gcc_gc_heapsize_is_an_eighth_of_the_target_in_4_8_16_mib_steps() -> None:
    assert gcc_gc_heapsize_kib(307 * MiB) == GCC_GC_HEAPSIZE_MAX_KIB == 16 * 1024
    assert gcc_gc_heapsize_kib(128 * MiB) == 16 * 1024
    assert gcc_gc_heapsize_kib(127 * MiB) == 8 * 1024
    assert gcc_gc_heapsize_kib(64 * MiB) == 8 * 1024
    assert gcc_gc_heapsize_kib(63 * MiB) == 4 * 1024
    assert gcc_gc_heapsize_kib(8 * MiB) == GCC_GC_HEAPSIZE_MIN_KIB == 4 * 1024
    assert gcc_gc_heapsize_kib(0) == GCC_GC_HEAPSIZE_MIN_KIB
    sizes = [gcc_gc_heapsize_kib(t * MiB) for t in range(0, 400)]
    assert sizes == sorted(sizes)  # monotone in the target
    assert set(sizes) == {4 * 1024, 8 * 1024, 16 * 1024}


def test_is_gnu_compiler() -> None:
    assert is_gnu_compiler(compiler_id="GNU")
    for other in ("Clang", "AppleClang", "IntelLLVM", "NVIDIA", "MSVC"):
        assert not is_gnu_compiler(compiler_id=other)
    # CMake's id wins over the version text.
    assert not is_gnu_compiler(compiler_id="Clang", version_text=GXX_VERSION)
    assert is_gnu_compiler(version_text=GXX_VERSION)
    assert not is_gnu_compiler(version_text=CLANG_VERSION)
    assert not is_gnu_compiler(version_text=ICPX_VERSION)
    assert not is_gnu_compiler(version_text="clang version 18 (Free Software Foundation quoted)")
    assert not is_gnu_compiler()


def test_gcc_gc_sizing_decision() -> None:
    applied = gcc_gc_sizing(enabled=True, gnu=True, flags=["-O2"], shard_target_bytes=307 * MiB)
    assert applied.applied
    assert (applied.expand_percent, applied.min_heapsize_kib) == (10, 16 * 1024)
    # Joined form: one token per param, safe from CMake's COMPILE_OPTIONS de-duplication.
    assert applied.options == (
        "--param=ggc-min-expand=10",
        "--param=ggc-min-heapsize=16384",
    )
    small = gcc_gc_sizing(enabled=True, gnu=True, flags=[], shard_target_bytes=100 * MiB)
    assert small.options[1] == "--param=ggc-min-heapsize=8192"

    off = gcc_gc_sizing(enabled=False, gnu=True, flags=[], shard_target_bytes=307 * MiB)
    assert not off.applied and off.options == () and "off" in off.reason
    clang = gcc_gc_sizing(enabled=True, gnu=False, flags=[], shard_target_bytes=307 * MiB)
    assert not clang.applied and clang.options == () and "not a GNU" in clang.reason
    for own in (["--param", "ggc-min-expand=30"], ["--param=ggc-min-heapsize=4096"]):
        mine = gcc_gc_sizing(enabled=True, gnu=True, flags=own, shard_target_bytes=307 * MiB)
        assert not mine.applied and "itself" in mine.reason
