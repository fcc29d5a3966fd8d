"""The configure-time probe: real g++ compiles measured with wait4, the model, its cache."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buildctl.split.__main__ import main
from buildctl.split.plan import parse_generated_source
from buildctl.split.probe import (
    CompileSample,
    ProbeFailed,
    ProbeResult,
    default_probe_entries,
    estimate,
    extrapolate,
    probe_source,
    run_measured,
    sanitize_flags,
    usable_hint,
    wait_measured,
)

GXX = shutil.which("g++")
needs_gxx = pytest.mark.skipif(GXX is None, reason="needs g++")
MiB = 1024**2

HEADER = """\
#pragma once
#include <map>
#include <vector>
#include <algorithm>
#ifndef PROBE_OK
#error "PROBE_OK must come from the flags file"
#endif
template <int N> int work(int x) {
  std::map<int, std::vector<int>> m;
  for (int i = 0; i < N + x; ++i) m[i % (N + 1)].push_back(i * N);
  for (auto& kv : m) std::sort(kv.second.begin(), kv.second.end());
  return int(m.size());
}
"""


def _project(tmp_path: Path, n: int, preamble_extra: str = "") -> Path:
    gen = tmp_path / "gen"
    gen.mkdir(exist_ok=True)
    (gen / "work.hpp").write_text(HEADER)
    body = "".join(f"template int work<{i}>(int);\n" for i in range(n))
    origin = gen / "inst.cpp"
    origin.write_text(f'#include "work.hpp"\n{preamble_extra}{body}')
    (tmp_path / "flags.txt").write_text("-O1\n-DPROBE_OK=1\n-MD\n-o\nignored.o\n")
    return origin


def test_default_probe_entries() -> None:
    assert default_probe_entries(1) == 1
    assert default_probe_entries(2) == 2
    assert default_probe_entries(12) == 3  # pagedattn tiny
    assert default_probe_entries(24) == 6
    assert default_probe_entries(750) == 20  # default
    assert default_probe_entries(4320) == 20  # full


def test_sanitize_flags() -> None:
    flags = ["-O2", "-c", "-o", "x.o", "-MD", "-MF", "x.d", "-MTx", "-DA=1", "-I/inc"]
    assert sanitize_flags(flags) == ["-O2", "-DA=1", "-I/inc"]


def test_extrapolate_is_the_geometric_mean_of_flat_and_linear() -> None:
    # Growth above the preamble: 20 at k = 20; flat would keep 20, linear (750 entries) 750.
    flat, linear = 20.0, 20.0 * 750 / 20
    assert extrapolate(50.0, 70.0, 20, 750) == pytest.approx(50.0 + math.sqrt(flat * linear))
    assert extrapolate(50.0, 70.0, 12, 12) == 70.0  # the sample is the whole list
    assert extrapolate(50.0, 45.0, 4, 100) == 50.0  # noise below the preamble: no growth


def _pagedattn_probe(sample_mib: float, k: int, base_mib: float = 51.0) -> ProbeResult:
    return ProbeResult(
        base=CompileSample(0, int(base_mib * MiB), 0.6, 0.6),
        samples=(CompileSample(k, int(sample_mib * MiB), 6.5, 6.5),),
        preamble_globals=(),
    )


# Measured on the dev host with wait4 (g++ 12 -O2, GC sized; buildctl/split/README.md, "The
# probe"): the k-entry sample and the whole compile of pagedattn's presets (preamble alone
# 51 MiB).
PAGEDATTN = [
    # (entries, k, sample MiB, measured whole MiB)
    (12, 3, 68.3, 69.6),  # tiny
    (750, 20, 70.0, 136.0),  # default
    (4320, 20, 68.6, 397.5),  # full
]


@pytest.mark.parametrize(("n", "k", "sample", "whole"), PAGEDATTN)
def test_estimate_calibration_on_pagedattn(n: int, k: int, sample: float, whole: float) -> None:
    model = estimate(n, _pagedattn_probe(sample, k))
    assert model is not None
    assert abs(model.whole_peak / (whole * MiB) - 1) <= 0.35, model.whole_peak / MiB


def test_estimate_model_line_through_the_sample() -> None:
    probe = _pagedattn_probe(70.0, 20)
    model = estimate(750, probe)
    assert model is not None
    assert model.source == "probe"
    assert model.whole_peak == int(extrapolate(51 * MiB, 70 * MiB, 20, 750))
    assert model.probe_whole_peak == model.whole_peak
    # The planner's line passes through the sample: a shard of k entries is never below it.
    at_k = model.base_peak + 20 * model.per_entry_peak
    assert at_k == pytest.approx(70 * MiB, rel=1e-3)
    assert 51 * MiB <= model.base_peak <= 70 * MiB
    assert model.base_cpu_s == pytest.approx(0.6)
    assert model.whole_cpu_s == pytest.approx(extrapolate(0.6, 6.5, 20, 750))
    # A known whole-file peak replaces the extrapolation; the line still goes through the sample.
    known = estimate(750, probe, predicted_whole_peak=140 * MiB)
    assert known is not None
    assert known.whole_peak == 140 * MiB
    assert known.source == "profile+probe"
    assert known.probe_whole_peak == model.whole_peak
    assert known.base_peak + 20 * known.per_entry_peak == pytest.approx(70 * MiB, rel=1e-3)
    # The sample is the whole list: the measured peak is the whole peak.
    small = estimate(3, _pagedattn_probe(68.0, 3))
    assert small is not None
    assert small.whole_peak == 68 * MiB
    assert small.base_peak == 51 * MiB
    # Noise: a sample below the preamble-only compile never yields negative growth.
    noisy = estimate(100, _pagedattn_probe(49.0, 10))
    assert noisy is not None
    assert noisy.per_entry_peak == 0
    assert noisy.whole_peak == noisy.base_peak == 49 * MiB
    assert estimate(10, None) is None
    only = estimate(10, None, predicted_whole_peak=100 * MiB)
    assert only is not None
    assert (only.base_peak, only.source) == (0, "profile")


def test_usable_hint_rejects_a_whole_peak_below_the_sample() -> None:
    probe = _pagedattn_probe(70.0, 20)
    assert usable_hint(None, probe) == (None, None)
    assert usable_hint(140 * MiB, None) == (140 * MiB, None)
    assert usable_hint(140 * MiB, probe) == (140 * MiB, None)
    value, why = usable_hint(60 * MiB, probe)  # e.g. the tiny preset's object, same path
    assert value is None
    assert why is not None and "another version of the file" in why


@needs_gxx
def test_wait4_reports_the_compiler_child_not_the_driver(tmp_path: Path) -> None:
    """g++ runs cc1plus as a child; wait4 on the driver must still see cc1plus's peak."""
    src = tmp_path / "t.cpp"
    src.write_text(HEADER.replace("#error", "//") + "template int work<3>(int);\n")
    proc = run_measured(
        [GXX, "-O1", "-c", str(src), "-o", str(tmp_path / "t.o")], tmp_path, tmp_path / "log"
    )
    rc, peak, cpu, wall = wait_measured(proc, time.monotonic(), 120)
    assert rc == 0
    assert proc.returncode == 0
    # The driver alone is a few MB; cc1plus with <map> is tens of MB.
    assert peak > 30 * MiB
    assert cpu > 0.05
    assert wall >= cpu * 0.2


@needs_gxx
def test_a_big_parent_does_not_inflate_the_measured_peak(tmp_path: Path) -> None:
    """Linux carries ru_maxrss across fork+exec: a compiler forked straight from a 600 MB
    process would report >= 600 MB. The reporter in between keeps the compiler's own number."""
    src = tmp_path / "t.cpp"
    src.write_text("int f(int x) { return x + 1; }\n")
    ballast = bytearray(b"x") * (600 * MiB)  # touched pages: RSS of this process
    proc = run_measured(
        [GXX, "-O1", "-c", str(src), "-o", str(tmp_path / "t.o")], tmp_path, tmp_path / "log"
    )
    rc, peak, _, _ = wait_measured(proc, time.monotonic(), 120)
    del ballast
    assert rc == 0
    assert 5 * MiB < peak < 200 * MiB, peak / MiB


@needs_gxx
def test_probe_measures_and_caches(tmp_path: Path) -> None:
    origin = _project(tmp_path, 12)
    src = parse_generated_source(origin.read_text(), str(origin))
    flags = (tmp_path / "flags.txt").read_text().split()
    pre = src.preamble.replace('"work.hpp"', f'"{origin.parent}/work.hpp"')
    work = tmp_path / "probe"
    result = probe_source(src, compiler=GXX, flags=flags, work_dir=work, preamble=pre)
    assert not result.cached
    assert [x.entries for x in result.samples] == [3]  # one sample: a quarter of 12
    assert not result.limited
    assert result.base.peak_rss_bytes > 20 * MiB
    assert result.samples[-1].peak_rss_bytes >= result.base.peak_rss_bytes * 0.9
    assert result.samples[-1].cpu_s > result.base.cpu_s * 0.5
    assert result.preamble_globals == ()
    assert not list(work.glob("*.o"))  # probe objects are cleaned up
    again = probe_source(src, compiler=GXX, flags=flags, work_dir=work, preamble=pre)
    assert again.cached
    assert again.samples == result.samples
    # Other flags: a new key, a fresh probe.
    other = probe_source(src, compiler=GXX, flags=[*flags, "-DX=2"], work_dir=work, preamble=pre)
    assert not other.cached


@needs_gxx
def test_probe_stops_a_sample_above_the_memory_limit(tmp_path: Path) -> None:
    origin = _project(tmp_path, 12)
    src = parse_generated_source(origin.read_text(), str(origin))
    flags = (tmp_path / "flags.txt").read_text().split()
    pre = src.preamble.replace('"work.hpp"', f'"{origin.parent}/work.hpp"')
    started = time.monotonic()
    result = probe_source(
        src,
        compiler=GXX,
        flags=flags,
        work_dir=tmp_path / "p",
        preamble=pre,
        max_probe_peak=8 * MiB,
    )
    assert result.limited  # killed, not a probe failure
    (sample,) = result.samples
    assert sample.entries == 3
    assert sample.peak_rss_bytes > 8 * MiB  # what it reached: a lower bound
    assert time.monotonic() - started < 60
    model = estimate(12, result)
    assert model is not None and model.whole_peak >= sample.peak_rss_bytes


@needs_gxx
def test_probe_failure_is_reported(tmp_path: Path) -> None:
    origin = _project(tmp_path, 4)
    src = parse_generated_source(origin.read_text(), str(origin))
    pre = src.preamble.replace('"work.hpp"', f'"{origin.parent}/work.hpp"')
    with pytest.raises(ProbeFailed) as info:
        probe_source(src, compiler=GXX, flags=["-O0"], work_dir=tmp_path / "p", preamble=pre)
    assert "PROBE_OK" in info.value.stderr


def _cli(tmp_path: Path, origin: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # Through a real subprocess: the hook runs it this way.
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "buildctl.split",
            "--source",
            str(origin),
            "--out-dir",
            str(tmp_path / "out"),
            "--compiler",
            str(GXX),
            "--flags-file",
            str(tmp_path / "flags.txt"),
            "--slots",
            "1",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@needs_gxx
def test_cli_probe_plans_from_budget(tmp_path: Path) -> None:
    origin = _project(tmp_path, 12)
    # GC sizing off here: its heap size follows the per-shard target, so with it every budget
    # below 128 MiB per shard would re-probe with other params (tests/test_split_gcc_gc.py).
    huge = _cli(tmp_path, origin, "--budget", "64G", "--no-gcc-gc")
    assert huge.returncode == 0, huge.stderr
    assert huge.stdout.split() == [str(origin)]
    record = json.loads((tmp_path / "out" / "split-plan.json").read_text())
    assert not record["gcc_gc"]["applied"]
    model = record["model"]
    assert model["source"] == "probe"
    assert model["per_entry_peak"] >= 0
    assert [x["entries"] for x in record["probe"]["samples"]] == [3]
    # A budget between one shard of 1 entry and the whole: more than one shard, fewer than 12.
    if model["per_entry_peak"] > 0:
        target = model["base_peak"] + 4.5 * model["per_entry_peak"]
        mid = _cli(tmp_path, origin, "--budget", str(int(target / 0.8) + 1), "--no-gcc-gc")
        assert mid.returncode == 0, mid.stderr
        assert len(mid.stdout.split()) == 3  # ceil(12 / 4)
        assert json.loads((tmp_path / "out" / "split-plan.json").read_text())["probe"]["cached"]
    tiny = _cli(tmp_path, origin, "--budget", "1M", "--no-gcc-gc")
    assert tiny.returncode == 0, tiny.stderr
    assert len(tiny.stdout.split()) == 12
    assert "warning:" in tiny.stderr


@needs_gxx
def test_cli_preamble_with_strong_definitions_is_bad_input(tmp_path: Path) -> None:
    origin = _project(tmp_path, 4, preamble_extra="int counter = 0;\nint helper() { return 1; }\n")
    res = _cli(tmp_path, origin, "--budget", "1G")
    assert res.returncode == 2
    assert "counter" in res.stderr and "_Z6helperv" in res.stderr
    assert f"{origin}:1-" in res.stderr


@needs_gxx
def test_cli_probe_failure_keeps_the_file_whole(tmp_path: Path) -> None:
    origin = _project(tmp_path, 4)
    (tmp_path / "flags.txt").write_text("-O0\n")  # PROBE_OK missing: the probe cannot compile
    res = _cli(tmp_path, origin, "--budget", "1G")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(origin)]
    assert "warning: probe compile" in res.stderr
    assert "PROBE_OK" in res.stderr


def test_cli_runs_in_process_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    origin = _project(tmp_path, 4)
    assert (
        main(
            [
                "--source",
                str(origin),
                "--out-dir",
                str(tmp_path / "o"),
                "--budget",
                "1G",
                "--slots",
                "1",
                "--shards",
                "2",
            ]
        )
        == 0
    )
    assert len(capsys.readouterr().out.split()) == 2
