"""How the bundled kernel project grows with its number of kernel instantiations, split vs whole,
measured with real g++ through buildctl (per-job numbers from buildctl's report).

    .venv/bin/python bench/split_growth.py [--quick] [--full | --presets LIST] [--budget SIZE]
                                           [--shards 4,8] [--work DIR]

For each preset (tiny, default; `full` with --full, it is slow): one build with the heavy
generated TU whole (--no-split), one split as the planner decides under --budget, and one per
forced shard count (--shards); each measured as the second build from clean objects (the first
one records the profiles). Reported: instantiations (counted in the generated file), the
heavy TU's peak RSS and CPU whole vs the largest shard and the shards' total CPU (issue 3's
goals: largest shard <= 1/4 of the whole peak, shards' CPU <= 1.3 x the whole compile), the
splitter's predicted whole peak, and the build's wall time and peak total RSS. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from _harness import MiB, clean, machine, measure, mib, print_header, write_results

from buildctl import host

HEAVY = "pagedattn_instances"


def count_instantiations(build: Path) -> int:
    text = (build / "generated" / "pagedattn_instances.cpp").read_text()
    return sum(1 for line in text.splitlines() if line.startswith("template "))


def split_plan(build: Path) -> dict | None:
    plans = list(build.glob("buildctl-split/*/split-plan.json"))
    return json.loads(plans[0].read_text()) if plans else None


def one_build(preset: str, mode: str, work: Path, budget: int, shards: int | None) -> dict:
    build = work / f"{preset}-{mode}"
    report = work / f"report-{preset}-{mode}.json"
    env = dict(os.environ, BUILDCTL_PROFILE_DB=str(work / f"profiles-{preset}-{mode}.sqlite"))
    Path(env["BUILDCTL_PROFILE_DB"]).unlink(missing_ok=True)
    argv = [str(Path(sys.executable).parent / "buildctl"), "build", "--preset", preset,
            "--build-dir", str(build), "--plain", "--mem-budget", f"{budget // MiB}M",
            "--report", str(report)]
    if mode == "whole":
        argv.append("--no-split")
    if shards is not None:
        argv += ["--", f"-DBUILDCTL_SPLIT_SHARDS={shards}"]
    # A first build from scratch (configure, split probe, empty profile DB: every job gets the
    # 1 GiB prior, which under a small budget means one job at a time), then the measured one:
    # the same tree from clean objects with the profiles the first build recorded.
    if build.exists():
        shutil.rmtree(build)
    first = measure(f"{preset} {mode} (first build)", argv, budget=budget, env=env,
                    report_path=report, log=work / f"log-{preset}-{mode}-first.txt")
    if first.rc != 0:
        raise SystemExit(f"{preset} {mode}: the first build failed; see the log in {work}")
    clean(build)
    run = measure(f"{preset} {mode}", argv, budget=budget, env=env, report_path=report,
                  log=work / f"log-{preset}-{mode}.txt")
    rep = run.report or {"jobs": []}
    heavy = [j for j in rep["jobs"] if HEAVY in j["output"]]
    ops = [j for j in rep["jobs"] if j["output"].endswith("pagedattn_ops.cpp.o")]
    plan = split_plan(build)
    jobs = rep["jobs"]
    span = (max(j["started_at_s"] + j["wall_s"] for j in jobs) - min(j["started_at_s"]
            for j in jobs)) if jobs else 0.0
    return {
        "preset": preset,
        "mode": mode,
        "ok": run.rc == 0,
        "instantiations": count_instantiations(build),
        "heavy_jobs": len(heavy),
        "heavy_max_peak_bytes": max((j["peak_rss_bytes"] for j in heavy), default=0),
        "heavy_cpu_s": sum(j["cpu_s"] for j in heavy),
        "heavy_max_wall_s": max((j["wall_s"] for j in heavy), default=0.0),
        "ops_peak_bytes": ops[0]["peak_rss_bytes"] if ops else 0,
        "build_job_span_s": span,
        "command_wall_s": run.wall_s,
        "first_build_wall_s": first.wall_s,
        "peak_total_rss_bytes": rep.get("peak_total_rss_bytes", 0),
        "sampled_peak_jobs_bytes": run.peak_jobs_bytes,
        "predicted_whole_peak_bytes": (plan or {}).get("predicted_whole_peak_bytes"),
        "predicted_shard_peak_bytes": (plan or {}).get("predicted_shard_peak_bytes"),
        "split_n": (plan or {}).get("n"),
        "command": run.command,
    }


def render(rows: list[dict]) -> str:
    out = [
        "| preset | instantiations | mode | heavy jobs | heavy peak (largest) | × whole peak "
        "| heavy CPU s (sum) | × whole CPU | build span s | peak total RSS | splitter's "
        "predicted whole |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    whole = {r["preset"]: r for r in rows if r["mode"] == "whole"}
    for r in rows:
        w = whole.get(r["preset"])
        peak_ratio = r["heavy_max_peak_bytes"] / w["heavy_max_peak_bytes"] if w else float("nan")
        cpu_ratio = r["heavy_cpu_s"] / w["heavy_cpu_s"] if w and w["heavy_cpu_s"] else float("nan")
        pred = r["predicted_whole_peak_bytes"]
        out.append(
            f"| {r['preset']} | {r['instantiations']} | {r['mode']} | {r['heavy_jobs']} "
            f"| {mib(r['heavy_max_peak_bytes'])} | {peak_ratio:.2f} | {r['heavy_cpu_s']:.1f} "
            f"| {cpu_ratio:.2f} | {r['build_job_span_s']:.1f} | {mib(r['peak_total_rss_bytes'])} "
            f"| {mib(pred) if pred else '-'} |"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="no forced shard counts")
    parser.add_argument("--full", action="store_true", help="also the full preset (slow)")
    parser.add_argument("--presets", help="comma list instead: e.g. full (default tiny,default)")
    parser.add_argument("--budget", default="768M",
                        help="budget the splitter plans shards for (default 768M)")
    parser.add_argument("--shards", default="4,8", help="forced shard counts (default 4,8)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/buildctl-bench-growth"))
    args = parser.parse_args()
    header = print_header("pagedattn growth: split vs whole, real g++")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    budget = host.parse_size(args.budget)
    forced = [] if args.quick else [int(n) for n in args.shards.split(",") if n]
    presets = ["tiny", "default"] + (["full"] if args.full else [])
    if args.presets:
        presets = [p for p in args.presets.split(",") if p]
    print(f"budget {mib(budget)} (splitter target: budget x 0.8 / slots); cores "
          f"{len(os.sched_getaffinity(0))}; one build each, noisy machine\n", flush=True)
    rows = []
    for preset in presets:
        rows.append(one_build(preset, "whole", work, budget, None))
        rows.append(one_build(preset, "split", work, budget, None))
        for n in forced:
            rows.append(one_build(preset, f"split-{n}", work, budget, n))
    rows = [{**r, "mode": r["mode"] if r["mode"] != "split" else
             f"split (planner: {r['split_n'] or 1})"} for r in rows]
    print()
    print(render(rows))
    print("\nheavy = the generated pagedattn_instances TU (whole) or its shards; CPU and peaks "
          "from buildctl's report (sampled tree peak per job); the torch-facing pagedattn_ops.cpp "
          f"is not heavy: it peaks at {mib(max(r['ops_peak_bytes'] for r in rows))}")
    path = write_results("split_growth", {"header": header, "machine": machine(),
                                          "budget_bytes": budget, "rows": rows})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
