"""The configure-time probe: real g++ compiles measured with wait4, the model, its cache."""

from __future__ import annotations

import json
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
    probe_source,
    run_measured,
    sanitize_flags,
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
    assert default_probe_entries(24) == 6
    assert default_probe_entries(1000) == 16


def test_sanitize_flags() -> None:
    flags = ["-O2", "-c", "-o", "x.o", "-MD", "-MF", "x.d", "-MTx", "-DA=1", "-I/inc"]
    assert sanitize_flags(flags) == ["-O2", "-DA=1", "-I/inc"]


def test_estimate_two_point_line() -> None:
    probe = ProbeResult(
        base=CompileSample(0, 80 * MiB, 1.0, 1.0),
        samples=(CompileSample(3, 130 * MiB, 3.0, 3.0), CompileSample(6, 142 * MiB, 3.6, 3.6)),
        preamble_globals=(),
    )
    model = estimate(24, probe)
    assert model is not None
    assert model.per_entry_peak == pytest.approx(4 * MiB)
    assert model.base_peak == 118 * MiB  # intercept: preamble + shared instantiations
    assert model.whole_peak == 118 * MiB + 24 * 4 * MiB
    assert model.base_cpu_s == pytest.approx(2.4)
    assert model.whole_cpu_s == pytest.approx(2.4 + 24 * 0.2)
    assert model.source == "probe"
    # A known whole-file peak replaces the extrapolation, keeping the intercept.
    known = estimate(24, probe, predicted_whole_peak=200 * MiB)
    assert known is not None
    assert known.whole_peak == 200 * MiB
    assert known.per_entry_peak == pytest.approx((200 - 118) * MiB / 24)
    assert known.source == "profile+probe"
    # Noise: a sample below the base never yields a negative cost or an intercept below base.
    noisy = ProbeResult(
        base=CompileSample(0, 80 * MiB, 1.0, 1.0),
        samples=(CompileSample(2, 90 * MiB, 1.5, 1.5), CompileSample(4, 85 * MiB, 1.4, 1.4)),
        preamble_globals=(),
    )
    model = estimate(10, noisy)
    assert model is not None
    assert model.per_entry_peak == 0
    assert model.base_peak == 85 * MiB
    # Only one sample (the k-entry one was skipped): the line runs from the preamble.
    short = ProbeResult(
        base=CompileSample(0, 80 * MiB, 1.0, 1.0),
        samples=(CompileSample(2, 100 * MiB, 2.0, 2.0),),
        preamble_globals=(),
        limited=True,
    )
    model = estimate(10, short)
    assert model is not None
    assert (model.base_peak, model.per_entry_peak) == (80 * MiB, 10 * MiB)
    assert estimate(10, None) is None
    only = estimate(10, None, predicted_whole_peak=100 * MiB)
    assert only is not None
    assert (only.base_peak, only.source) == (0, "profile")


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
def test_probe_measures_and_caches(tmp_path: Path) -> None:
    origin = _project(tmp_path, 12)
    src = parse_generated_source(origin.read_text(), str(origin))
    flags = (tmp_path / "flags.txt").read_text().split()
    pre = src.preamble.replace('"work.hpp"', f'"{origin.parent}/work.hpp"')
    work = tmp_path / "probe"
    result = probe_source(src, compiler=GXX, flags=flags, work_dir=work, preamble=pre)
    assert not result.cached
    assert [x.entries for x in result.samples] == [2, 3]
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
def test_probe_skips_a_sample_predicted_above_the_limit(tmp_path: Path) -> None:
    origin = _project(tmp_path, 12)
    src = parse_generated_source(origin.read_text(), str(origin))
    flags = (tmp_path / "flags.txt").read_text().split()
    pre = src.preamble.replace('"work.hpp"', f'"{origin.parent}/work.hpp"')
    result = probe_source(
        src, compiler=GXX, flags=flags, work_dir=tmp_path / "p", preamble=pre, max_probe_peak=1
    )
    assert result.limited
    assert [x.entries for x in result.samples] == [2]
    assert estimate(12, result) is not None


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
    huge = _cli(tmp_path, origin, "--budget", "64G")
    assert huge.returncode == 0, huge.stderr
    assert huge.stdout.split() == [str(origin)]
    record = json.loads((tmp_path / "out" / "split-plan.json").read_text())
    model = record["model"]
    assert model["source"] == "probe"
    assert model["per_entry_peak"] >= 0
    assert [x["entries"] for x in record["probe"]["samples"]] == [2, 3]
    # A budget between one shard of 1 entry and the whole: more than one shard, fewer than 12.
    if model["per_entry_peak"] > 0:
        target = model["base_peak"] + 4.5 * model["per_entry_peak"]
        mid = _cli(tmp_path, origin, "--budget", str(int(target / 0.8) + 1))
        assert mid.returncode == 0, mid.stderr
        assert len(mid.stdout.split()) == 3  # ceil(12 / 4)
        assert json.loads((tmp_path / "out" / "split-plan.json").read_text())["probe"]["cached"]
    tiny = _cli(tmp_path, origin, "--budget", "1M")
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
