"""Side by side on a synthetic project with known memory: buildctl vs plain ninja vs the MAX_JOBS
heuristic vs -j1, from clean, one after another.

    .venv/bin/python bench/memjobs_bench.py [--quick] [--repeat N] [--work DIR]

Workload: bench/fixtures/memjobs_mixed, 12 compiles of 150-1200 MB (memcc allocates and holds
them, then runs g++) in two shared libraries. Two budgets: tight (1.3 x the largest job, so
packing matters) and generous (8 GiB, room for any two jobs). Not run by CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _harness import (
    ROOT,
    Bounds,
    GiB,
    MiB,
    Run,
    bounds_from_report,
    clean,
    cmake_configure,
    fastest_jobs,
    find,
    heuristic_jobs,
    job_span,
    machine,
    measure,
    median_run,
    mib,
    print_header,
    table,
    write_results,
)

from buildctl.govern.simulate import HostShape, jobs_from_report, simulate
from buildctl.report import BuildReport

FIXTURE = ROOT / "bench" / "fixtures" / "memjobs_mixed"
# (target, MB, hold ms): a few heavy jobs, a middle, a tail of light ones, like a real project.
WORKLOAD = [
    ("a", 1200, 4000), ("a", 1000, 3500), ("a", 800, 3000), ("b", 700, 3000),
    ("b", 600, 2500), ("a", 500, 2500), ("b", 400, 2000), ("b", 300, 2000),
    ("a", 300, 1500), ("b", 200, 1500), ("a", 200, 1000), ("b", 150, 1000),
]  # fmt: skip


def spec(scale: float) -> str:
    return ";".join(f"{t}:{mb}:{int(hold * scale)}" for t, mb, hold in WORKLOAD)


def build_memcc(work: Path) -> Path:
    exe = work / "memcc"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(ROOT / "tests/fixtures/memjobs/memcc.c")],
                   check=True)
    return exe


def buildctl_argv(build: Path, memcc: Path, budget: int, scale: float, report: Path,
                  *extra: str) -> list[str]:
    return [
        str(Path(sys.executable).parent / "buildctl"), "build", "--source", str(FIXTURE),
        "--build-dir", str(build), "--plain", "--mem-budget", f"{budget // MiB}M",
        "--report", str(report), *extra, "--", f"-DCMAKE_CXX_COMPILER={memcc}",
        f"-DMEMJOBS_SPEC={spec(scale)}",
    ]


def run_budget(label: str, budget: int, work: Path, memcc: Path, scale: float, repeat: int,
               cores: int) -> dict:
    print(f"\n## {label}: budget {mib(budget)}\n", flush=True)
    gov_dir = work / f"gov-{label}"
    plain_dir = work / f"plain-{label}"
    env = dict(os.environ, BUILDCTL_PROFILE_DB=str(work / f"profiles-{label}.sqlite"))
    Path(env["BUILDCTL_PROFILE_DB"]).unlink(missing_ok=True)
    report = work / f"report-{label}.json"
    # Configure both trees once, untimed: every method below times the build from clean objects.
    subprocess.run(buildctl_argv(gov_dir, memcc, budget, scale, report, "--target", "build.ninja"),
                   env=env, check=True, capture_output=True)
    cmake_configure(FIXTURE, plain_dir, {"CMAKE_CXX_COMPILER": str(memcc),
                                         "MEMJOBS_SPEC": spec(scale)})
    heur = heuristic_jobs(cores, budget)
    ninja = [find("ninja"), "-C", str(plain_dir)]

    clean(gov_dir)
    cold = measure("buildctl, first build (empty profile DB)",
                   buildctl_argv(gov_dir, memcc, budget, scale, report), budget=budget, env=env,
                   report_path=report, log=work / f"log-{label}-cold.txt")
    methods: dict[str, list[Run]] = {}
    labels = {
        "buildctl": "buildctl (warm profiles)",
        "whole": "buildctl --whole-slots (warm)",
        "ninja": f"ninja -j{cores} (plain, nproc)",
        "heur": f"MAX_JOBS heuristic: ninja -j{heur}",
        "j1": "ninja -j1",
    }
    for rep in range(repeat):
        for key in ("buildctl", "whole", "ninja", "heur", "j1"):
            if key == "heur" and heur in (1, cores):
                continue  # identical to -j1 or to plain ninja: not run twice
            if key in ("buildctl", "whole"):
                clean(gov_dir)
                extra = ("--whole-slots",) if key == "whole" else ()
                run = measure(labels[key],
                              buildctl_argv(gov_dir, memcc, budget, scale, report, *extra),
                              budget=budget, env=env, report_path=report,
                              log=work / f"log-{label}-{key}-{rep}.txt")
            else:
                jobs = {"ninja": cores, "heur": heur, "j1": 1}[key]
                clean(plain_dir)
                run = measure(labels[key], [*ninja, f"-j{jobs}"], budget=budget,
                              log=work / f"log-{label}-{key}-{rep}.txt")
            methods.setdefault(key, []).append(run)
    if heur == 1:
        labels["j1"] = f"ninja -j1 (= MAX_JOBS heuristic, {heur})"
    elif heur == cores:
        labels["ninja"] = f"ninja -j{cores} (plain = MAX_JOBS heuristic)"
    runs = []
    for key in ("buildctl", "whole", "ninja", "heur", "j1"):
        if key in methods:
            run = median_run(methods[key])
            run.method = labels[key]
            runs.append(run)
    gov = runs[0]
    assert gov.report is not None
    # Job times from the fastest run of each job over all governed runs of this budget.
    governed = [r.report for key in ("buildctl", "whole") for r in methods[key] if r.report]
    bounds = bounds_from_report(fastest_jobs(governed), cores, budget)
    rows = [*runs, cold]
    print()
    print(table(rows, gov, bounds))
    sim = predict(gov.report, cores, budget, gov.peak_jobs_bytes)
    extra = summary(label, bounds, gov, runs, sim, methods)
    print(extra)
    return {"label": label, "budget_bytes": budget, "heuristic_jobs": heur, "runs": rows,
            "all_runs": methods, "bounds": bounds, "plan_check": sim, "summary": extra}


def predict(report: dict, cores: int, budget: int, sampled_peak: int) -> dict:
    """The simulator's prediction for this very run (its jobs, this host) vs what happened. The
    measured peak is the larger of buildctl's (sampled every 250 ms) and ours (every 50 ms)."""
    rep = BuildReport.model_validate(report)
    host = HostShape(cores=cores, budget_bytes=budget)
    result = simulate(jobs_from_report(rep, replay=True), host)
    ideal = simulate(jobs_from_report(rep), host)  # what `buildctl plan --report` would say
    measured_span = job_span(report)
    return {
        "plan_makespan_s": ideal.makespan_s,
        "plan_peak_bytes": ideal.peak_total_bytes,
        "predicted_makespan_s": result.makespan_s,
        "measured_job_span_s": measured_span,
        "makespan_error": result.makespan_s / measured_span - 1 if measured_span else None,
        "predicted_peak_bytes": result.peak_total_bytes,
        "measured_peak_bytes": max(report["peak_total_rss_bytes"], sampled_peak),
        "peak_error": result.peak_total_bytes / max(report["peak_total_rss_bytes"], sampled_peak)
        - 1 if sampled_peak or report["peak_total_rss_bytes"] else None,
    }


def summary(label: str, bounds: Bounds, gov: Run, runs: list[Run], sim: dict,
            methods: dict[str, list[Run]]) -> str:
    lines = [
        "",
        f"lower bound {bounds.lower_bound_s:.1f}s = max(CPU/cores {bounds.cpu_term_s:.1f}s, "
        f"sum(peak x wall)/B {bounds.mem_term_s:.1f}s, longest job {bounds.longest_s:.1f}s); "
        f"each job at its fastest over the governed runs; "
        f"with {gov.report['slots'] if gov.report else '?'} slots sum(wall)/slots gives "
        f"{bounds.slot_bound_s:.1f}s, a bound only for methods that run at most that many "
        f"jobs at once (ninja -jN, buildctl --whole-slots; memcc jobs sleep, so buildctl gives "
        f"them part of a slot)",
        f"buildctl job span (first start to last end) {job_span(gov.report or {'jobs': []}):.1f}s"
        f" = {job_span(gov.report or {'jobs': []}) / bounds.lower_bound_s:.2f} x the lower bound",
        f"plan check: predicted makespan {sim['predicted_makespan_s']:.1f}s vs measured job span "
        f"{sim['measured_job_span_s']:.1f}s ({sim['makespan_error']:+.0%}); predicted peak "
        f"{mib(sim['predicted_peak_bytes'])} vs sampled {mib(sim['measured_peak_bytes'])}"
        f" ({sim['peak_error']:+.0%}) [replay: the run's own predictions and launcher arrival "
        f"order]; `buildctl plan --report` (all jobs known at the start) says "
        f"{sim['plan_makespan_s']:.1f}s, peak {mib(sim['plan_peak_bytes'])}",
    ]
    for key, rs in methods.items():
        if len(rs) > 1:
            walls = [r.wall_s for r in rs]
            lines.append(f"{key}: walls {', '.join(f'{w:.1f}' for w in walls)} "
                         f"(median {statistics.median(walls):.1f}s)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="shorter holds (x0.5) and one repetition")
    parser.add_argument("--repeat", type=int, help="repetitions per method (default 3, quick 1)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/buildctl-bench-memjobs"))
    args = parser.parse_args()
    header = print_header("memjobs: buildctl vs ninja vs MAX_JOBS heuristic vs -j1")
    scale = 0.5 if args.quick else 1.0
    repeat = args.repeat or (1 if args.quick else 3)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    memcc = build_memcc(work)
    cores = len(os.sched_getaffinity(0))
    largest = max(mb for _, mb, _ in WORKLOAD) * MiB
    tight = int(largest * 1.3)
    print(f"workload: {len(WORKLOAD)} compiles, MEMJOBS_SPEC={spec(scale)}; cores {cores}; "
          f"repetitions {repeat} (medians; peaks are the max over repetitions)\n"
          "measurements are noisy: other builds share this machine", flush=True)
    results = [
        run_budget("tight", tight, work, memcc, scale, repeat, cores),
        run_budget("generous", 8 * GiB, work, memcc, scale, repeat, cores),
    ]
    path = write_results("memjobs", {"header": header, "machine": machine(), "scale": scale,
                                     "repeat": repeat, "workload": WORKLOAD, "budgets": results})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
