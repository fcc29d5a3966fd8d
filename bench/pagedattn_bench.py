"""Side by side on the bundled kernel project (kernels/pagedattn, real g++): buildctl vs plain
ninja vs the MAX_JOBS heuristic vs -j1, each with the heavy generated TU split and whole.

    .venv/bin/python bench/pagedattn_bench.py [--quick] [--repeat N] [--preset NAME]
                                              [--budget SIZE] [--work DIR]

Every method builds the same configured tree from clean objects (`ninja -t clean`); the plain
trees are configured with exactly the defines `buildctl build` uses (preset, torch prefix,
Release, and the split hook with the same budget and slots) minus the launchers. Budgets: tight
(1.3 x the largest job of a first measured build, unless --budget) and, without --quick, the
host's default budget. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _harness import (
    MiB,
    Run,
    bounds_from_report,
    clean,
    cmake_configure,
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

from buildctl import host
from buildctl.govern.simulate import HostShape, jobs_from_report, simulate
from buildctl.kernels import bundled_build_settings
from buildctl.report import BuildReport


def buildctl_argv(preset: str, build: Path, budget: int, report: Path, split: bool,
                  *extra: str) -> list[str]:
    return [
        str(Path(sys.executable).parent / "buildctl"), "build", "--preset", preset,
        "--build-dir", str(build), "--plain", "--mem-budget", f"{budget // MiB}M",
        "--report", str(report), *([] if split else ["--no-split"]), *extra,
    ]


def split_shards(build: Path) -> int | None:
    plans = list(build.glob("buildctl-split/*/split-plan.json"))
    if not plans:
        return None
    return int(json.loads(plans[0].read_text())["n"])


def configure_pair(preset: str, work: Path, tag: str, budget: int, cores: int, split: bool,
                   env: dict[str, str]) -> tuple[Path, Path]:
    gov = work / f"gov-{tag}"
    plain = work / f"plain-{tag}"
    subprocess.run(
        buildctl_argv(preset, gov, budget, work / "configure.json", split, "--target",
                      "build.ninja"),
        env=env, check=True, capture_output=True,
    )
    source, defines, _ = bundled_build_settings(preset, False, budget, cores, split=split)
    cmake_configure(source, plain, defines)
    gov_n, plain_n = split_shards(gov), split_shards(plain)
    if gov_n != plain_n:
        print(f"  note: the split probe chose {gov_n} shards for buildctl's tree and {plain_n} "
              "for the plain tree (probe noise); the comparison is still like for like in "
              "configuration, not in shard count", flush=True)
    return gov, plain


def run_budget(label: str, preset: str, budget: int, work: Path, repeat: int, cores: int,
               modes: list[bool]) -> dict:
    print(f"\n## {label}: budget {mib(budget)}\n", flush=True)
    env = dict(os.environ, BUILDCTL_PROFILE_DB=str(work / f"profiles-{label}.sqlite"))
    Path(env["BUILDCTL_PROFILE_DB"]).unlink(missing_ok=True)
    heur = heuristic_jobs(cores, budget)
    all_runs: dict[str, list[Run]] = {}
    colds: list[Run] = []
    shards: dict[str, int | None] = {}
    trees = {}
    for split in modes:
        tag = f"{label}-{'split' if split else 'whole'}"
        trees[split] = configure_pair(preset, work, tag, budget, cores, split, env)
        shards[tag] = split_shards(trees[split][0])
        gov, _ = trees[split]
        clean(gov)
        report = work / f"report-{tag}-cold.json"
        colds.append(measure(
            f"buildctl {'split' if split else '--no-split'}, first build (empty profile DB)",
            buildctl_argv(preset, gov, budget, report, split), budget=budget, env=env,
            report_path=report, log=work / f"log-{tag}-cold.txt"))
    js = {"ninja": cores, "heur": heur, "j1": 1}
    for rep in range(repeat):
        for split in modes:
            mode = "split" if split else "whole"
            gov, plain = trees[split]
            for key in ("buildctl", "ninja", "heur", "j1"):
                if key == "heur" and heur in (1, cores):
                    continue
                name = f"{key}-{mode}"
                log = work / f"log-{label}-{name}-{rep}.txt"
                if key == "buildctl":
                    report = work / f"report-{label}-{mode}.json"
                    clean(gov)
                    run = measure(name, buildctl_argv(preset, gov, budget, report, split),
                                  budget=budget, env=env, report_path=report, log=log)
                else:
                    clean(plain)
                    run = measure(name, [find("ninja"), "-C", str(plain), f"-j{js[key]}"],
                                  budget=budget, log=log)
                all_runs.setdefault(name, []).append(run)
    runs: list[Run] = []
    for split in modes:
        mode = "split" if split else "whole"
        n = shards.get(f"{label}-{mode}")
        what = "whole"
        if split:
            what = f"split ({n} shards)" if n and n > 1 else "split: kept whole"
        for key, text in (
            ("buildctl", f"buildctl, {what}"),
            ("ninja", f"ninja -j{cores}, {what}"),
            ("heur", f"MAX_JOBS heuristic -j{heur}, {what}"),
            ("j1", f"ninja -j1, {what}"),
        ):
            if f"{key}-{mode}" not in all_runs:
                continue
            run = median_run(all_runs[f"{key}-{mode}"])
            if key == "j1" and heur == 1:
                text += " (= MAX_JOBS heuristic)"
            if key == "ninja" and heur == cores:
                text += " (= MAX_JOBS heuristic)"
            run.method = text
            runs.append(run)
    reference = runs[0]
    assert reference.report is not None
    bounds = bounds_from_report(reference.report, cores, budget)
    rows = [*runs, *colds]
    print()
    print(table(rows, reference, bounds))
    checks = {}
    idle = bounds_from_report(reference.report, cores, budget, durations="cpu_s")
    lines = [
        "",
        f"lower bound (from the first row's jobs) {bounds.lower_bound_s:.1f}s = max(CPU/cores "
        f"{bounds.cpu_term_s:.1f}s, sum(peak x wall)/B {bounds.mem_term_s:.1f}s, longest job "
        f"{bounds.longest_s:.1f}s); with each job's CPU time as its duration (an idle machine) "
        f"{idle.lower_bound_s:.1f}s (memory term {idle.mem_term_s:.1f}s, longest "
        f"{idle.longest_s:.1f}s)",
    ]
    for run in runs:
        if run.report is None:
            continue
        rep = BuildReport.model_validate(run.report)
        hs = HostShape(cores=cores, budget_bytes=budget)
        replay = simulate(jobs_from_report(rep, replay=True), hs)
        span = job_span(run.report)
        jb = bounds_from_report(run.report, cores, budget)
        # buildctl samples every 250 ms, we every 50 ms: the larger is the better measurement.
        measured_peak = max(run.report["peak_total_rss_bytes"], run.peak_jobs_bytes)
        checks[run.method] = {
            "predicted_makespan_s": replay.makespan_s, "measured_job_span_s": span,
            "predicted_peak_bytes": replay.peak_total_bytes,
            "measured_peak_bytes": measured_peak,
            "lower_bound_s": jb.lower_bound_s,
        }
        lines.append(
            f"{run.method}: job span {span:.1f}s of {run.wall_s:.1f}s wall (the rest: Python and "
            f"torch import, governor start, configure check); span / its own lower bound "
            f"{span / jb.lower_bound_s:.2f}; plan check: predicted {replay.makespan_s:.1f}s "
            f"({replay.makespan_s / span - 1:+.0%}), peak {mib(replay.peak_total_bytes)} vs "
            f"{mib(measured_peak)} ({replay.peak_total_bytes / max(1, measured_peak) - 1:+.0%})"
        )
        heavy = sorted(rep.jobs, key=lambda j: -j.peak_rss_bytes)[:3]
        lines.append("  heaviest jobs: " + "; ".join(
            f"{Path(j.output).name} {mib(j.peak_rss_bytes)} {j.wall_s:.0f}s wall {j.cpu_s:.0f}s CPU"
            for j in heavy))
    print("\n".join(lines))
    return {"label": label, "budget_bytes": budget, "heuristic_jobs": heur, "shards": shards,
            "runs": rows, "all_runs": all_runs, "bounds": bounds, "plan_checks": checks,
            "summary": "\n".join(lines)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tight budget only, one repetition")
    parser.add_argument("--repeat", type=int, help="repetitions per method (default 3, quick 1)")
    parser.add_argument("--preset", default="default", help="tiny, default or full")
    parser.add_argument("--budget", help="tight budget (default: 1.3 x the largest job)")
    parser.add_argument("--budgets", default=None,
                        help="which budgets: tight,default (default: both; quick: tight)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/buildctl-bench-pagedattn"))
    args = parser.parse_args()
    header = print_header(f"pagedattn ({args.preset}): buildctl vs ninja vs MAX_JOBS vs -j1")
    repeat = args.repeat or (1 if args.quick else 3)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    info = host.probe()
    if args.budget:
        tight = host.parse_size(args.budget)
    else:
        # Size the tight budget from a measured whole build: 1.3 x its largest job.
        env = dict(os.environ, BUILDCTL_PROFILE_DB=str(work / "profiles-sizing.sqlite"))
        report = work / "report-sizing.json"
        subprocess.run(buildctl_argv(args.preset, work / "sizing", info.total_ram_bytes // 2,
                                     report, False), env=env, check=True, capture_output=True)
        largest = max(j["peak_rss_bytes"] for j in json.loads(report.read_text())["jobs"])
        tight = int(largest * 1.3)
        print(f"sizing build: largest job {mib(largest)} -> tight budget {mib(tight)}")
    print(f"cores {cores}; repetitions {repeat} (medians; peaks are the max over repetitions); "
          "measurements are noisy: other builds share this machine", flush=True)
    wanted = (args.budgets or ("tight" if args.quick else "tight,default")).split(",")
    budgets = []
    if "tight" in wanted:
        budgets.append(("tight", tight))
    if "default" in wanted:
        budgets.append(("default", host.default_budget(info.total_ram_bytes,
                                                        info.cgroup_limit_bytes)))
    results = [run_budget(label, args.preset, b, work, repeat, cores, [True, False])
               for label, b in budgets]
    path = write_results(f"pagedattn-{args.preset}", {
        "header": header, "machine": machine(), "preset": args.preset, "repeat": repeat,
        "budgets": results})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
