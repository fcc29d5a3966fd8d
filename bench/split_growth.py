"""How the bundled kernel project grows with its number of kernel instantiations, split vs whole,
measured with real g++ through buildctl (per-job numbers from buildctl's report).

    .venv/bin/python bench/split_growth.py [--quick] [--full | --presets LIST] [--budget SIZE]
                                           [--shards 4,8,12] [--nogc-shards 12] [--work DIR]

For each preset (tiny, default; `full` with --full, it is slow), each measured as the second
build from clean objects (the first one records the profiles):

- `whole`: the heavy generated TU as the project builds it (--no-split: no hook, so no GCC GC
  sizing either) — the reference of every ratio;
- `split (planner: N)`: the hook as `buildctl build` injects it, N planned under --budget, with
  GCC GC sizing (the default);
- `whole, GC sized`: the hook with N forced to 1, i.e. the unsplit TU with buildctl's GC sizing
  (skipped when the planner already kept it whole: that row is the same build);
- `split-N` for each --shards N (forced, with GC sizing), and `split-N, no GC sizing` for each
  --nogc-shards N (BUILDCTL_SPLIT_GCC_GC=OFF: what splitting alone does).

Reported: instantiations (counted in the generated file), the heavy TU's peak RSS and CPU whole
vs the largest shard and the shards' total CPU (the splitter's goals: largest shard <= 1/4 of the
whole peak, shards' CPU <= 1.3 x the whole compile), the splitter's predicted whole peak and its
probe's CPU time, and the build's job span and peak total RSS. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from _harness import MiB, Run, clean, machine, measure, mib, print_header, write_results

from buildctl import host

HEAVY = "pagedattn_instances"


def count_instantiations(build: Path) -> int:
    text = (build / "generated" / "pagedattn_instances.cpp").read_text()
    return sum(1 for line in text.splitlines() if line.startswith("template "))


def split_plan(build: Path) -> dict | None:
    plans = list(build.glob("buildctl-split/*/split-plan.json"))
    return json.loads(plans[0].read_text()) if plans else None


def one_build(
    preset: str, mode: str, work: Path, budget: int, shards: int | None, gcc_gc: bool = True
) -> dict:
    build = work / f"{preset}-{mode}"
    report = work / f"report-{preset}-{mode}.json"
    env = dict(os.environ, BUILDCTL_PROFILE_DB=str(work / f"profiles-{preset}-{mode}.sqlite"))
    Path(env["BUILDCTL_PROFILE_DB"]).unlink(missing_ok=True)
    argv = [
        str(Path(sys.executable).parent / "buildctl"),
        "build",
        "--preset",
        preset,
        "--build-dir",
        str(build),
        "--plain",
        "--mem-budget",
        f"{budget // MiB}M",
        "--report",
        str(report),
    ]
    cmake_args = []
    if mode == "whole":
        argv.append("--no-split")
    if shards is not None:
        cmake_args.append(f"-DBUILDCTL_SPLIT_SHARDS={shards}")
    if not gcc_gc:
        cmake_args.append("-DBUILDCTL_SPLIT_GCC_GC=OFF")
    if cmake_args:
        argv += ["--", *cmake_args]
    # A first build from scratch (configure, split probe, empty profile DB: every job gets the
    # 1 GiB prior, which under a small budget means one job at a time), then the measured one:
    # the same tree from clean objects with the profiles the first build recorded.
    if build.exists():
        shutil.rmtree(build)
    def build_once(label: str, log_name: str) -> Run:
        return measure(
            label, argv, budget=budget, env=env, report_path=report, log=work / log_name
        )

    first = build_once(f"{preset} {mode} (first build)", f"log-{preset}-{mode}-first.txt")
    if first.rc != 0:
        raise SystemExit(f"{preset} {mode}: the first build failed; see the log in {work}")
    clean(build)
    run = build_once(f"{preset} {mode}", f"log-{preset}-{mode}.txt")
    rep = run.report or {"jobs": []}
    heavy = [j for j in rep["jobs"] if HEAVY in j["output"]]
    ops = [j for j in rep["jobs"] if j["output"].endswith("pagedattn_ops.cpp.o")]
    plan = split_plan(build)
    probe = (plan or {}).get("probe") or {}
    probe_cpu = (
        probe["base"]["cpu_s"] + sum(x["cpu_s"] for x in probe["samples"]) if probe else None
    )
    jobs = rep["jobs"]
    span = (
        (max(j["started_at_s"] + j["wall_s"] for j in jobs) - min(j["started_at_s"] for j in jobs))
        if jobs
        else 0.0
    )
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
        "probe_cpu_s": probe_cpu,
        "split_n": (plan or {}).get("n"),
        "gcc_gc": bool(((plan or {}).get("gcc_gc") or {}).get("applied")),
        "gcc_gc_options": ((plan or {}).get("gcc_gc") or {}).get("options", []),
        "command": run.command,
    }


def render(rows: list[dict]) -> str:
    out = [
        "| preset | instantiations | mode | GCC GC sized | heavy jobs | heavy peak (largest) "
        "| × whole peak | heavy CPU s (sum) | × whole CPU | build span s | peak total RSS "
        "| splitter's predicted whole | probe CPU s |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    whole = {r["preset"]: r for r in rows if r["mode"] == "whole"}
    for r in rows:
        w = whole.get(r["preset"])
        peak_ratio = r["heavy_max_peak_bytes"] / w["heavy_max_peak_bytes"] if w else float("nan")
        cpu_ratio = r["heavy_cpu_s"] / w["heavy_cpu_s"] if w and w["heavy_cpu_s"] else float("nan")
        pred = r["predicted_whole_peak_bytes"]
        probe = r.get("probe_cpu_s")
        out.append(
            f"| {r['preset']} | {r['instantiations']} | {r['label']} "
            f"| {'yes' if r['gcc_gc'] else 'no'} | {r['heavy_jobs']} "
            f"| {mib(r['heavy_max_peak_bytes'])} | {peak_ratio:.2f} | {r['heavy_cpu_s']:.1f} "
            f"| {cpu_ratio:.2f} | {r['build_job_span_s']:.1f} | {mib(r['peak_total_rss_bytes'])} "
            f"| {mib(pred) if pred else '-'} | {f'{probe:.1f}' if probe is not None else '-'} |"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="no forced shard counts")
    parser.add_argument("--full", action="store_true", help="also the full preset (slow)")
    parser.add_argument("--presets", help="comma list instead: e.g. full (default tiny,default)")
    parser.add_argument(
        "--budget", default="768M", help="budget the splitter plans shards for (default 768M)"
    )
    parser.add_argument(
        "--shards", default="4,8,12", help="forced shard counts, with GC sizing (default 4,8,12)"
    )
    parser.add_argument(
        "--nogc-shards", default="12", help="forced shard counts without GC sizing (default 12)"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/buildctl-bench-growth"))
    args = parser.parse_args()
    header = print_header("pagedattn growth: split vs whole, real g++")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    budget = host.parse_size(args.budget)
    forced = [] if args.quick else [int(n) for n in args.shards.split(",") if n]
    nogc = [] if args.quick else [int(n) for n in args.nogc_shards.split(",") if n]
    presets = ["tiny", "default"] + (["full"] if args.full else [])
    if args.presets:
        presets = [p for p in args.presets.split(",") if p]
    print(
        f"budget {mib(budget)} (splitter target: budget x 0.8 / slots); cores "
        f"{len(os.sched_getaffinity(0))}; one build each, noisy machine\n",
        flush=True,
    )
    rows = []
    for preset in presets:
        rows.append(
            {
                **one_build(preset, "whole", work, budget, None),
                "label": "whole (as the project builds it)",
            }
        )
        planned = one_build(preset, "split", work, budget, None)
        n = planned["split_n"] or 1
        rows.append(
            {
                **planned,
                "label": f"planner: {n} shard{'s' if n > 1 else ''}"
                + (" (kept whole)" if n == 1 else ""),
            }
        )
        if n != 1:
            rows.append(
                {
                    **one_build(preset, "whole-gc", work, budget, 1),
                    "label": "whole, GC sized (N forced to 1)",
                }
            )
        for k in forced:
            rows.append(
                {**one_build(preset, f"split-{k}", work, budget, k), "label": f"{k} shards"}
            )
        for k in nogc:
            rows.append(
                {
                    **one_build(preset, f"split-{k}-nogc", work, budget, k, gcc_gc=False),
                    "label": f"{k} shards, no GC sizing",
                }
            )
    print()
    print(render(rows))
    print(
        "\nheavy = the generated pagedattn_instances TU (whole) or its shards; CPU and peaks "
        "from buildctl's report (sampled tree peak per job); × = relative to the `whole` row "
        "(no buildctl GC sizing); the torch-facing pagedattn_ops.cpp is not heavy: it peaks at "
        f"{mib(max(r['ops_peak_bytes'] for r in rows))}"
    )
    path = write_results(
        "split_growth",
        {"header": header, "machine": machine(), "budget_bytes": budget, "rows": rows},
    )
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
