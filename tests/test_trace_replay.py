"""A real nvcc build's memory, replayed through `buildctl build` with real processes.

Five jobs of bench/traces/nvcc-template-20.json (heavy CUDA template compiles, 2.8-4.0 GiB
each on a 16-core host), each replayed by bench/replaycc.py: its recorded RSS curve scaled by
1/20 in real touched memory (a child process per compiler phase, as nvcc runs cicc), its time by
1/20, on a virtual 16-core host (--jobs 16). The budget is the scaled equivalent of 8 GiB: all
five at once would pass it, about two at a time fit. buildctl's prior is scaled too, so a first
build admits them all and has to handle the memory as they grow.

Asserted: our own 50 ms sampler never saw the jobs above the budget, every job built, no job
was killed more than once (kill events per output in the report, and attempts per job in the
replay's own ledger), and where buildctl's own samples saw the total above the budget, it
killed (it never sat there without acting).
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, buildctl_cmd, isolated_env

sys.path.insert(0, str(ROOT / "bench"))
from _harness import TreeSampler
from trace_replay import (
    KILL_KINDS,
    compile_jobs,
    read_ledger,
    write_project,
    write_wrapper,
)

pytestmark = pytest.mark.slow
MiB = 1024**2
GiB = 1024**3
TRACE = ROOT / "bench" / "traces" / "nvcc-template-20.json"
JOBS = ("j02.cu.o", "j12.cu.o", "j13.cu.o", "j17.cu.o", "j19.cu.o")
TIME_SCALE = 0.05
MEM_SCALE = 0.05
BUDGET = int(8 * GiB * MEM_SCALE)
PRIOR = int(1 * GiB * MEM_SCALE)  # buildctl's default compile prior, scaled like the memory
TIME_LIMIT_S = 150


def replay_project(tmp: Path) -> tuple[Path, Path, list[str]]:
    trace = json.loads(TRACE.read_text())
    jobs = [j for j in compile_jobs(trace) if j["name"] in JOBS]
    assert [j["name"] for j in jobs] == sorted(JOBS)
    source = tmp / "src"
    write_project(TRACE, jobs, source, {"time_scale": TIME_SCALE, "mem_scale": MEM_SCALE,
                                        "cpu_duty": 1 / 16, "child": True, "tick_s": 0.02})
    return source, write_wrapper(tmp / "replaycc"), [j["name"] for j in jobs]


def test_replayed_nvcc_jobs_stay_in_budget_and_are_killed_at_most_once(tmp_path: Path) -> None:
    source, wrapper, names = replay_project(tmp_path)
    report_path = tmp_path / "report.json"
    ledger = tmp_path / "ledger"
    env = dict(isolated_env(tmp_path), REPLAYCC_LEDGER=str(ledger))
    proc = subprocess.Popen(
        buildctl_cmd(
            "build", "--source", str(source), "--build-dir", str(tmp_path / "b"), "--plain",
            "--mem-budget", f"{BUDGET // MiB}M", "--jobs", "16", "--whole-slots",
            "--prior-rss", f"{PRIOR // MiB}M", "--report", str(report_path),
            "--", f"-DCMAKE_CXX_COMPILER={wrapper}",
        ),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        out, _ = proc.communicate(timeout=TIME_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the build did not finish in {TIME_LIMIT_S} s:\n{out[-3000:]}")
    finally:
        sampler.stop()
    assert proc.returncode == 0, out[-3000:]
    report = json.loads(report_path.read_text())

    kills = collections.Counter(
        e["output"] for e in report["events"] if e["kind"] in KILL_KINDS
    )
    replayed = read_ledger(ledger)
    summary = (f"sampled jobs peak {sampler.peak_jobs / MiB:.0f} MiB of {BUDGET / MiB:.0f} MiB; "
               f"kills per output {dict(kills)}; attempts {replayed.attempts}; events "
               f"{collections.Counter(e['kind'] for e in report['events'])}")

    assert sampler.peak_jobs <= BUDGET, summary
    if report["peak_total_rss_bytes"] > BUDGET:
        # buildctl's own 250 ms samples saw the total pass the budget (1 run in 6 here: its
        # tree sums count what our jobs-only sampler leaves out, and jobs replayed 20x faster
        # step past a sample); then the last step must have been taken, once.
        assert kills, summary
    assert sorted(Path(j["output"]).name for j in report["jobs"] if j["status"] == "ok") == \
        sorted(names), summary
    assert all(replayed.completed.get(name) == 1 for name in names), summary
    assert max(kills.values(), default=0) <= 1, summary
    assert max(replayed.attempts.values()) <= 2, summary
