"""The end-of-build summary: status, the heaviest jobs, time spent waiting for memory, kills and
retries; as text for people and as one JSON line for scripts (`--json`)."""

from __future__ import annotations

import json
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from buildctl.host import format_size
from buildctl.report import BuildReport, JobRecord

HEAVIEST = 3


def job_peak(job: JobRecord) -> int:
    return max(job.peak_rss_bytes, job.wait4_maxrss_bytes)


def effective_peak_total(report: BuildReport) -> int:
    """The build's peak total RSS; when sampling never caught a job (a build of a few short
    compiles), the largest job's own peak from wait4 is the best lower bound there is."""
    if report.peak_total_rss_bytes:
        return report.peak_total_rss_bytes
    return max((job_peak(job) for job in report.jobs), default=0)


def heaviest_jobs(report: BuildReport, count: int = HEAVIEST) -> list[JobRecord]:
    return sorted(report.jobs, key=lambda job: (-job_peak(job), job.output))[:count]


def memory_wait_s(jobs: list[JobRecord], slots: int) -> float:
    """Seconds during which some job waited although a whole CPU slot was free: waiting that
    only memory explains (pure; from the jobs' queue and run intervals)."""
    points: list[tuple[float, int, float]] = []  # (time, queued delta, running share delta)
    for job in jobs:
        start = job.started_at_s
        queued_at = start - job.queued_s
        share = job.cpu_share if job.cpu_share is not None else 1.0
        if job.queued_s > 0:
            points += [(queued_at, 1, 0.0), (start, -1, 0.0)]
        points += [(start, 0, share), (start + job.wall_s, 0, -share)]
    points.sort(key=lambda p: (p[0], -p[2]))  # at one instant, starts before ends
    waited = 0.0
    queued = 0
    running = 0.0
    last = None
    for t, dq, ds in points:
        if last is not None and queued > 0 and running <= slots - 1 + 1e-9:
            waited += t - last
        queued += dq
        running += ds
        last = t
    return round(waited, 3)


@dataclass
class Summary:
    status: str
    exit_code: int | None
    wall_s: float
    jobs: int
    peak_total_rss_bytes: int
    budget_bytes: int
    memory_wait_s: float
    kills: int
    retries: int
    heaviest: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    report: str | None = None


def summarize(report: BuildReport, report_file: Path | None = None) -> Summary:
    """Pure: what the end of a build tells."""
    return Summary(
        status=report.status,
        exit_code=report.exit_code,
        wall_s=report.wall_s,
        jobs=len(report.jobs),
        peak_total_rss_bytes=effective_peak_total(report),
        budget_bytes=report.budget_bytes,
        memory_wait_s=memory_wait_s(report.jobs, report.slots),
        kills=sum(1 for e in report.events if e.kind == "oom-guard-kill"),
        retries=sum(1 for e in report.events if e.kind == "retry"),
        heaviest=[
            {"output": j.output, "peak_rss_bytes": job_peak(j), "wall_s": j.wall_s}
            for j in heaviest_jobs(report)
        ],
        failed=[j.output for j in report.jobs if j.status in ("failed", "hung", "crashed")],
        report=str(report_file) if report_file else None,
    )


def summary_lines(summary: Summary) -> list[str]:
    if summary.jobs == 0:  # up to date, or nothing reached the launcher: no peak to speak of
        lines = [f"buildctl: {summary.status} in {summary.wall_s:.1f}s; 0 jobs (nothing was "
                 "compiled or linked through buildctl's launcher)"]
        return lines + ([f"  report: {summary.report}"] if summary.report else [])
    lines = [
        f"buildctl: {summary.status} in {summary.wall_s:.1f}s; {summary.jobs} jobs; peak total "
        f"RSS {format_size(summary.peak_total_rss_bytes)} of budget "
        f"{format_size(summary.budget_bytes)}"
    ]
    if summary.heaviest:
        lines.append(
            "  heaviest: "
            + ", ".join(
                f"{h['output']} {format_size(h['peak_rss_bytes'])}" for h in summary.heaviest
            )
        )
    lines.append(
        f"  waited for memory {summary.memory_wait_s:.1f}s; "
        f"{summary.kills} kill{'s' if summary.kills != 1 else ''}, "
        f"{summary.retries} retr{'ies' if summary.retries != 1 else 'y'}"
    )
    if summary.report:
        lines.append(f"  report: {summary.report}")
    return lines


def json_line(summary: Summary) -> str:
    return json.dumps(asdict(summary), sort_keys=True)


def print_summary(
    console: Console,
    session: Any,
    rc: int,
    report_copy: Path | None,
    json_line_too: bool = False,
    *,
    what: str = "the build",
    failed_exit: int | None = None,
) -> int:
    """Print the end of a finished session; return its exit code: 130 when interrupted, else
    `failed_exit` for a failure if given (`build`: 1), else the command's own (`run`)."""
    from buildctl.errors import EXIT_INTERRUPTED
    from buildctl.govern.repro import failure_lines

    report_file = report_copy or getattr(session, "report_file", None)
    summary = summarize(session.report, report_file)
    for line in summary_lines(summary):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    for line in failure_lines(session.report):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    code = rc
    if session.interrupted:
        console.print("buildctl: interrupted; finished objects are kept, rerun to continue")
        code = EXIT_INTERRUPTED
    elif rc != 0 and not summary.failed and (
        rc < 0 or getattr(session, "stopped_from_outside", False)
    ):
        # The build command was killed or interrupted from outside (no job failed): compiler
        # output has nothing to say about that.
        how = (f"was killed by {_signal_name(-rc)}" if rc < 0
               else "was interrupted")
        console.print(
            f"error: {what} was stopped: its build command {how}, from outside buildctl\n"
            "  fix: rerun the same command to continue (finished objects are kept)"
            + (f"; details in {report_file}" if report_file else ""),
            highlight=False, markup=False, soft_wrap=True,
        )
        code = rc if failed_exit is None else failed_exit
    elif rc != 0:
        at = f" at {', '.join(summary.failed[:5])}" if summary.failed else ""
        console.print(
            f"error: {what} failed{at}\n  fix: read the compiler output above"
            + (f"; details in {report_file}" if report_file else ""),
            highlight=False, markup=False, soft_wrap=True,
        )
        code = rc if failed_exit is None else failed_exit
    if json_line_too:
        # The last line of stdout, whatever the console does: scripts read it with `tail -n1`.
        console.file.flush()
        print(json_line(summary), flush=True)
    return code


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
