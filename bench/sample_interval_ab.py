"""The governor's sampling period, A/B on first builds: does a shorter `--sample-interval` keep
a build of fast-climbing jobs further under its budget, and what does it cost?

    .venv/bin/python bench/sample_interval_ab.py [--intervals 0.25,0.1,0.05] [--repeat 3]

Workload: memjobs' 12 memcc jobs with `--quick`'s holds (memcc touches up to 1,200 MB in ten
steps over half its hold: up to 1.2 GB/s, about nvcc's fastest climbs in
bench/traces/nvcc-template-20.json) under the tight budget (1.3 x the largest job). Every run is
a first build (a fresh profile DB): the guard meets the jobs unmeasured, where a burst between
two samples costs most. Intervals alternate within each repetition, so a drift in the shared
machine's speed falls on all of them alike. Peaks are our own 50 ms sampler's; kills come from
buildctl's report; "infra CPU" is ninja's, buildctl's and the launchers' CPU (sampled: a lower
bound), where a shorter period shows up. Not run by CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
from pathlib import Path
from typing import Any

from _harness import MiB, clean, machine, measure, mib, print_header, write_results
from memjobs_bench import WORKLOAD, build_memcc, buildctl_argv

QUICK_SCALE = 0.5  # memjobs --quick


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--intervals", default="0.25,0.1,0.05",
                        help="sampling periods in seconds, comma separated (default "
                        "0.25,0.1,0.05; 0.25 is buildctl's default)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/buildctl-bench-sampling"))
    args = parser.parse_args()
    header = print_header("sampling period A/B: memjobs first builds under the tight budget")
    intervals = [i.strip() for i in args.intervals.split(",") if i.strip()]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    memcc = build_memcc(work)
    budget = int(max(mb for _, mb, _ in WORKLOAD) * MiB * 1.3)
    rows: list[dict[str, Any]] = []
    for rep in range(args.repeat):
        for interval in intervals:
            gov = work / f"gov-{interval}"
            db = work / f"profiles-{interval}-{rep}.sqlite"
            env = dict(os.environ, BUILDCTL_PROFILE_DB=str(db))
            report = work / f"report-{interval}-{rep}.json"
            # Configure untimed, then forget what configuring recorded: a first build.
            subprocess.run(buildctl_argv(gov, memcc, budget, QUICK_SCALE, report, "--target",
                                         "build.ninja", "--sample-interval", interval),
                           env=env, check=True, capture_output=True)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            clean(gov)
            run = measure(f"first build, --sample-interval {interval}",
                          buildctl_argv(gov, memcc, budget, QUICK_SCALE, report,
                                        "--sample-interval", interval),
                          budget=budget, env=env, report_path=report,
                          log=work / f"log-{interval}-{rep}.txt")
            events = (run.report or {}).get("events", [])
            kills = sum(1 for e in events if e["kind"] == "oom-guard-kill")
            freezes = sum(1 for e in events if e["kind"] == "freeze")
            row = {"interval_s": float(interval), "rep": rep, "rc": run.rc,
                   "wall_s": round(run.wall_s, 2), "peak_jobs_bytes": run.peak_jobs_bytes,
                   "over_budget": run.exceeded, "kills": kills, "freezes": freezes,
                   "infra_cpu_s": round(run.infra_cpu_s, 2),
                   "buildctl_peak_bytes": (run.report or {}).get("peak_total_rss_bytes", 0)}
            rows.append(row)
            print(f"    {interval} s, run {rep + 1}: {run.wall_s:.1f} s, peak "
                  f"{mib(run.peak_jobs_bytes)}{' OVER' if run.exceeded else ''}, kills {kills}, "
                  f"freezes {freezes}, infra CPU {run.infra_cpu_s:.1f} s", flush=True)

    print(f"\nbudget {mib(budget)}, {args.repeat} first builds each\n")
    print("| --sample-interval | walls s (median) | peaks (max) | over budget | kills | "
          "infra CPU s (median) |")
    print("|---|---|---|---|---|---|")
    for interval in intervals:
        mine = [r for r in rows if r["interval_s"] == float(interval)]
        walls = [r["wall_s"] for r in mine]
        peaks = [r["peak_jobs_bytes"] for r in mine]
        print(f"| {interval} s | {', '.join(f'{w:.1f}' for w in walls)} "
              f"({statistics.median(walls):.1f}) | {', '.join(mib(p) for p in peaks)} "
              f"({mib(max(peaks))}) | {sum(1 for r in mine if r['over_budget'])} of "
              f"{len(mine)} | {sum(r['kills'] for r in mine)} | "
              f"{statistics.median(r['infra_cpu_s'] for r in mine):.1f} |")
    path = write_results("sampling-ab", {"header": header, "machine": machine(),
                                         "budget_bytes": budget, "rows": rows})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
