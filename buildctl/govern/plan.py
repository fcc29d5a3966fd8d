"""`buildctl plan`: will this build fit on that host? The I/O side: read jobs from the profile DB,
a profile export (e.g. the shipped profiles/<project>/<ref>.json) or a build report, work out the
host shape, run the pure simulation (`buildctl.govern.simulate`) and render the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from buildctl import host
from buildctl.errors import BadInput
from buildctl.govern.profiles import ProfileDB, parse_export
from buildctl.govern.simulate import (
    HostShape,
    SimJob,
    SimResult,
    jobs_from_profiles,
    jobs_from_report,
    simulate,
)
from buildctl.report import BuildReport

MIN_BUDGET = 64 * 1024**2
APPROXIMATIONS = (
    "same per-job wall time as where the jobs were measured; links wait for the compiles of "
    "their own target (else for all compiles); every job holds its peak for its whole run, so "
    "the peak is an upper bound; all jobs are known at the start (the real governor gathers "
    "the launchers that register within its first 0.5 s, later ones it admits as they arrive)"
)


@dataclass(frozen=True)
class PlanResult:
    source: str  # where the jobs came from, for the user
    host: HostShape
    host_note: str  # "this host" or what was given
    budget_note: str
    jobs: tuple[SimJob, ...]
    result: SimResult
    filter: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def verdict(self) -> str:
        r = self.result
        if r.fits:
            return "fits"
        if r.fits_in_ram:
            return "fits-running-alone"
        return "fits-with-swap" if r.fits_with_swap else "does-not-fit"

    @property
    def exit_code(self) -> int:
        """0 when the build can finish on that host (perhaps slowly, in swap), 1 when not."""
        return 1 if self.verdict == "does-not-fit" else 0

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "schema": "buildctl.plan/1",
            "source": self.source,
            "filter": self.filter,
            "host": {
                "cores": self.host.cores,
                "slots": self.host.effective_slots,
                "mem_bytes": self.host.mem_bytes,
                "swap_bytes": self.host.swap_bytes,
                "budget_bytes": self.host.budget_bytes,
                "usable_bytes": self.host.usable_bytes,
                "max_device_links": self.host.max_device_links,
                "note": self.host_note,
                "budget_note": self.budget_note,
            },
            "jobs": len(self.jobs),
            "verdict": self.verdict,
            "makespan_s": round(r.makespan_s, 3),
            "lower_bound_s": round(r.lower_bound_s, 3),
            "peak_total_rss_bytes": r.peak_total_bytes,
            "total_cpu_s": round(r.total_cpu_s, 3),
            "swap_needed_bytes": r.swap_needed_bytes,
            "alone": [
                {"output": a.output, "peak_rss_bytes": a.peak_bytes,
                 "over_budget_bytes": a.over_budget_bytes}
                for a in r.alone
            ],
            "schedule": [
                {"output": s.output, "kind": s.kind, "start_s": round(s.start_s, 3),
                 "end_s": round(s.end_s, 3), "peak_rss_bytes": s.peak_bytes,
                 "exclusive": s.exclusive, "device_link": s.device_link}
                for s in r.schedule
            ],
            "notes": list(self.notes),
            "approximations": APPROXIMATIONS,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


# --- inputs -----------------------------------------------------------------------------------


def _read_text(path: Path, what: str, fix: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {exc.strerror or exc}", fix) from None


def load_report_jobs(path: Path) -> list[SimJob]:
    fix = "pass a report written by `buildctl build --report FILE`"
    text = _read_text(path, "report", fix)
    try:
        report = BuildReport.model_validate(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise BadInput(
            f"{path} is not a buildctl build report: {str(exc).splitlines()[0]}", fix
        ) from None
    return jobs_from_report(report)


def load_export_jobs(path: Path) -> list[SimJob]:
    fix = "pass a file written by `buildctl profile export` (or one shipped under profiles/)"
    text = _read_text(path, "profile export", fix)
    # the same reader as `profile import`: every export schema it accepts, checked the same way
    return jobs_from_profiles(parse_export(text, str(path)))


def load_db_jobs(path: Path | None) -> tuple[list[SimJob], str]:
    from buildctl.govern.profile_cmd import print_warnings

    db = ProfileDB(path)
    try:
        return jobs_from_profiles(db.latest()), str(db.path)
    finally:
        print_warnings(db.warnings)
        db.close()


def load_jobs(
    report: Path | None, profiles: Path | None, profiles_json: Path | None, filter_text: str | None
) -> tuple[list[SimJob], str]:
    if sum(x is not None for x in (report, profiles, profiles_json)) > 1:
        raise BadInput(
            "plan reads one source of jobs, got several of --report, --profiles, --profiles-json",
            "pass only one of them",
        )
    if report is not None:
        jobs, source = load_report_jobs(report), f"report {report}"
    elif profiles_json is not None:
        jobs, source = load_export_jobs(profiles_json), f"profile export {profiles_json}"
    else:
        jobs, db_path = load_db_jobs(profiles)
        source = f"profile DB {db_path}"
    if filter_text:
        jobs = [j for j in jobs if filter_text in j.output]
    if not jobs:
        what = f" matching --filter {filter_text!r}" if filter_text else ""
        raise BadInput(
            f"no measured jobs{what} in the {source}",
            "build once with `buildctl build` (every job is profiled), or pass --report FILE or "
            "--profiles-json FILE" + ("; check the --filter text" if filter_text else ""),
        )
    return jobs, source


def host_shape(
    cores: int | None,
    mem: int | None,
    swap: int | None,
    mem_budget: int | None,
    slots: int | None = None,
    here: host.HostInfo | None = None,
    whole_slots: bool = False,
    device_links: int = 0,
) -> tuple[HostShape, str, str]:
    """The simulated host: what is given, this host for the rest. A given --mem means another
    host, so its swap is 0 unless --swap says otherwise."""
    if cores is not None and cores < 1:
        raise BadInput(f"--cores {cores} is not a number of cores", "pass --cores 1 or more")
    if slots is not None and slots < 1:
        raise BadInput(f"--jobs {slots} is not a number of CPU slots", "pass --jobs 1 or more")
    if device_links < 0:
        raise BadInput(f"--device-links {device_links} is not a number of device links",
                       "pass --device-links 1 or more, or 0 for no cap")
    info = here or host.probe()
    given = []
    if cores is not None:
        given.append(f"{cores} core" + ("s" if cores != 1 else ""))
    if mem is not None:
        given.append(f"{host.format_size(mem)} RAM")
    if swap is not None:
        given.append(f"{host.format_size(swap)} swap")
    note = ("given: " + ", ".join(given)) if given else "this host"
    n_cores = cores if cores is not None else info.cores
    if mem is None:
        ram, cgroup = info.total_ram_bytes, info.cgroup_limit_bytes
        swap_bytes = swap if swap is not None else info.swap_total_bytes
    else:
        ram, cgroup = mem, None
        swap_bytes = swap if swap is not None else 0
    if mem_budget is not None:
        budget, budget_note = mem_budget, "--mem-budget"
    else:
        budget = host.default_budget(ram, cgroup)
        budget_note = "default: min(RAM, cgroup limit) minus a reserve"
    if budget < MIN_BUDGET:
        raise BadInput(
            f"memory budget {host.format_size(budget)} is too small to run a compiler",
            "pass --mem/--mem-budget of at least 64M",
        )
    shape = HostShape(cores=n_cores, budget_bytes=budget, mem_bytes=mem if mem else ram,
                      swap_bytes=swap_bytes, slots=slots, whole_slots=whole_slots,
                      max_device_links=device_links)
    return shape, note, budget_note


def run_plan(
    *,
    cores: int | None = None,
    mem: int | None = None,
    swap: int | None = None,
    mem_budget: int | None = None,
    slots: int | None = None,
    report: Path | None = None,
    profiles: Path | None = None,
    profiles_json: Path | None = None,
    filter_text: str | None = None,
    here: host.HostInfo | None = None,
    whole_slots: bool = False,
    device_links: int = 0,
) -> PlanResult:
    """Everything `buildctl plan` does but printing. `here` replaces probing this host (tests)."""
    # The host arguments first: a wrong --cores is the message the user needs, whatever the jobs.
    shape, note, budget_note = host_shape(cores, mem, swap, mem_budget, slots, here, whole_slots,
                                          device_links)
    jobs, source = load_jobs(report, profiles, profiles_json, filter_text)
    notes = []
    if report is None and profiles_json is None and not filter_text:
        notes.append("the profile DB holds every project built with it: narrow it with --filter, "
                     "or plan from one build's --report")
    timeless = sum(1 for j in jobs if j.wall_s <= 0)
    if timeless:
        notes.append(f"{timeless} job(s) have no recorded wall time: the makespan undercounts them")
    ratios = sorted(j.wall_s / j.cpu_s for j in jobs if j.kind == "compile" and j.cpu_s > 0.5)
    if ratios and ratios[len(ratios) // 2] > 1.5:
        # Compilers are single-threaded: wall far above CPU means they waited for a busy CPU.
        notes.append(f"compile wall times are {ratios[len(ratios) // 2]:.1f}x their CPU times "
                     "(median): they were measured on a busy machine, so the makespan is "
                     "pessimistic")
    links = [j for j in jobs if j.kind == "link"]
    if device_links > 0 and not any(j.device_link for j in jobs):
        # The governor marks device links in reports and in the profile DB (schema 3); records
        # from before that, and shipped estimates, mark none.
        notes.append(f"--device-links {device_links}: no job is known to be a device link (none "
                     "is marked in these records: older records and estimates do not say), so "
                     "the cap changes nothing")
    result = simulate(jobs, shape)
    unknown = [o for o, why in result.link_deps.items() if why.startswith("all compiles")]
    if unknown:
        notes.append(f"{len(unknown)} of {len(links)} link(s) matched no compile target and were "
                     "placed after all compiles")
    return PlanResult(
        source=source,
        host=shape,
        host_note=note,
        budget_note=budget_note,
        jobs=tuple(jobs),
        result=result,
        filter=filter_text,
        notes=tuple(notes),
    )


# --- output -----------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def render_plan(plan: PlanResult, console: Console) -> None:
    r, h = plan.result, plan.host
    fs = host.format_size

    def say(text: str) -> None:
        console.print(text, highlight=False)

    # Paths and filters are user data: escape them, rich would read `[x]` as markup.
    say(f"[bold]buildctl plan[/bold]: {len(plan.jobs)} jobs from {escape(plan.source)}"
        + (f" (filter {escape(repr(plan.filter))})" if plan.filter else ""))
    swap = fs(h.swap_bytes) if h.swap_bytes else "no"
    cores = f"{h.cores} core" + ("s" if h.cores != 1 else "")
    say(f"host ({plan.host_note}): {cores}, {fs(h.mem_bytes or 0)} RAM, {swap} swap -> "
        f"budget {fs(h.budget_bytes)} ({plan.budget_note}), {h.effective_slots} CPU slots"
        + (f", at most {h.max_device_links} device link(s) at once" if h.max_device_links else ""))
    ratio = f", x{r.ratio_to_lower_bound:.2f}" if r.lower_bound_s > 0 else ""
    say(f"predicted makespan {format_duration(r.makespan_s)} (lower bound "
        f"{format_duration(r.lower_bound_s)}{ratio}); total CPU {format_duration(r.total_cpu_s)}")
    say(f"predicted peak total RSS {fs(r.peak_total_bytes)} of budget {fs(h.budget_bytes)}; at "
        f"most {r.busy_peak_slots} jobs at once")
    if r.alone:
        table = Table(title=f"must run alone: predicted above the budget ({len(r.alone)})")
        for col in ("job", "predicted peak", "over budget"):
            table.add_column(col, justify="left" if col == "job" else "right")
        for a in r.alone[:15]:
            table.add_row(escape(a.output), fs(a.peak_bytes), fs(a.over_budget_bytes))
        console.print(table)
        if len(r.alone) > 15:
            say(f"... and {len(r.alone) - 15} more")
        say(f"swap needed: {fs(r.swap_needed_bytes)} beyond {fs(h.usable_bytes)} of usable RAM "
            f"(host has {fs(h.swap_bytes)} of swap)")
    heavy = sorted(plan.jobs, key=lambda j: -j.peak_bytes)[:5]
    table = Table(title="heaviest jobs")
    for col in ("job", "kind", "peak", "wall"):
        table.add_column(col, justify="left" if col in ("job", "kind") else "right")
    for job in heavy:
        table.add_row(escape(job.output), job.kind, fs(job.peak_bytes),
                      format_duration(job.wall_s))
    console.print(table)
    for note in plan.notes:
        say(f"note: {escape(note)}")
    if plan.verdict == "fits":
        say(f"[green]verdict: fits[/green] in {fs(h.budget_bytes)} with {h.effective_slots} slots")
    elif plan.verdict == "fits-running-alone":
        say(f"[yellow]verdict: fits[/yellow], but {len(r.alone)} job(s) above the budget run alone "
            f"(each within {fs(h.usable_bytes)} of usable RAM)")
    elif plan.verdict == "fits-with-swap":
        say(f"[yellow]verdict: fits only with swap[/yellow]: {len(r.alone)} job(s) run alone "
            f"and page {fs(r.swap_needed_bytes)} out (slow, but it finishes)")
    else:
        worst = r.alone[0]
        say(f"[red]verdict: does not fit[/red]: {escape(worst.output)} needs "
            f"{fs(worst.peak_bytes)}, {fs(r.swap_needed_bytes)} more than the usable RAM "
            f"({fs(h.usable_bytes)}) and more than the host's swap ({fs(h.swap_bytes)})\n"
            "  fix: add swap (--swap to re-plan), a bigger host, --low-ram settings or a patch "
            "that shrinks that job")
    say(f"[dim]approximations: {APPROXIMATIONS}[/dim]")


def cmd_plan(args: argparse.Namespace, console: Console) -> int:
    from buildctl.settings import Layers, plan_settings

    settings = plan_settings(Layers.collect(args))
    result = run_plan(**settings.plan_kwargs())
    if settings.as_json:
        sys.stdout.write(result.to_json() + "\n")
    else:
        render_plan(result, console)
    return result.exit_code
