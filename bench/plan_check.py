"""Check the planner against measured governed builds: every buildctl run recorded in bench
results (bench/results/*.json) is fed back through the simulator with the same cores and budget.

    .venv/bin/python bench/plan_check.py bench/results/memjobs-*.json bench/results/pagedattn-*.json

Two predictions per run: "replay" (the run's own predictions and the order its first launchers
arrived in) and "plan" (what `buildctl plan --report` says: every job known at the start,
predictions = measured peaks). Measured makespan = first job start to last job end (the governed
phase; the command's wall time adds Python start-up); measured peak = the larger of buildctl's
own sampled peak (250 ms) and the benchmark's (50 ms). Goals: makespan within 20 %, peak within
10 %.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _harness import job_span, mib

from buildctl.govern.simulate import HostShape, jobs_from_report, simulate
from buildctl.report import BuildReport


def check(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    cores = data["machine"]["cores"]
    rows = []
    for budget in data["budgets"]:
        runs = list(budget["runs"])
        for series in budget.get("all_runs", {}).values():
            runs.extend(series)  # every repetition, not only the medians
        seen = set()
        for run in runs:
            report = run.get("report")
            if not report or not report.get("jobs"):
                continue
            key = (report["wall_s"], report["peak_total_rss_bytes"])
            if key in seen:
                continue
            seen.add(key)
            rep = BuildReport.model_validate(report)
            shape = HostShape(cores=cores, budget_bytes=rep.budget_bytes, slots=rep.slots,
                              whole_slots=whole_slots(run["method"]))
            replay = simulate(jobs_from_report(rep, replay=True), shape)
            plan = simulate(jobs_from_report(rep), shape)
            span = job_span(report)
            peak = max(report["peak_total_rss_bytes"], run.get("peak_jobs_bytes", 0))
            rows.append(
                f"| {path.name} | {budget['label']} | {run['method']} | {span:.1f} "
                f"| {replay.makespan_s:.1f} ({replay.makespan_s / span - 1:+.0%}) "
                f"| {plan.makespan_s:.1f} ({plan.makespan_s / span - 1:+.0%}) | {mib(peak)} "
                f"| {mib(replay.peak_total_bytes)} ({replay.peak_total_bytes / peak - 1:+.0%}) "
                f"| {mib(plan.peak_total_bytes)} ({plan.peak_total_bytes / peak - 1:+.0%}) |"
            )
    return rows


def whole_slots(method: str) -> bool:
    """Runs in which every job took a whole CPU slot: plain ninja and `--whole-slots`."""
    return "--whole-slots" in method or not method.startswith("buildctl")


def mode(method: str) -> str:
    """Which job set a run built: the heavy TU split, whole, or (memjobs) the only one."""
    method = method.replace("--whole-slots", "")
    if "kept whole" in method or "whole" in method or "--no-split" in method:
        return "whole"
    return "split" if "split" in method else ""


def cross(path: Path) -> list[str]:
    """Predict the other configurations of the same results file from one governed run: the
    governed build under the other budget, and every plain ninja -jN run (no budget, N slots)."""
    data = json.loads(path.read_text())
    cores = data["machine"]["cores"]
    first = data["budgets"][0]
    source = next((r for r in first["runs"] if r.get("report") and "first build" not in
                   r["method"]), None)
    if source is None:
        return []
    rep = BuildReport.model_validate(source["report"])
    jobs = jobs_from_report(rep)
    rows = []
    for budget in data["budgets"]:
        for run in budget["runs"]:
            if "first build" in run["method"]:
                continue
            if mode(run["method"]) != mode(source["method"]):
                continue  # another job set (split vs whole)
            if run.get("report"):
                if run is source:
                    continue
                shape = HostShape(cores=cores, budget_bytes=budget["budget_bytes"],
                                  whole_slots=whole_slots(run["method"]))
                measured = job_span(run["report"])
            else:
                n = int(run["command"][-1].removeprefix("-j"))
                shape = HostShape(cores=cores, budget_bytes=10**15, slots=n, whole_slots=True)
                measured = run["wall_s"]
            result = simulate(jobs, shape)
            rows.append(f"| {path.name} | {source['method']} ({first['label']}) | "
                        f"{run['method']} ({budget['label']}) | {measured:.1f} | "
                        f"{result.makespan_s:.1f} ({result.makespan_s / measured - 1:+.0%}) | "
                        f"{mib(run['peak_jobs_bytes'])} | {mib(result.peak_total_bytes)} |")
    return rows


def main() -> int:
    paths = [Path(p) for p in sys.argv[1:]]
    if not paths or any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return 0 if paths else 2
    print("| results | budget | run | measured span s | replay s | plan s | measured peak "
          "| replay peak | plan peak |\n|---|---|---|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        for row in check(path):
            print(row)
    print("\nFrom one governed run to other configurations (plain ninja: no budget, N slots):\n")
    print("| results | predicted from | run | measured s | predicted s | measured peak "
          "| predicted peak |\n|---|---|---|---:|---:|---:|---:|")
    for path in paths:
        for row in cross(path):
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
