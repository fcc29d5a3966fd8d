"""The views' pure parts: job names cut in the middle, the ETA, the end summary."""

from __future__ import annotations

import json
import re

import pytest

from buildctl.report import BuildReport, Event, JobRecord
from buildctl.ui.eta import Eta, EtaPlan, plan_eta_s
from buildctl.ui.summary import (
    effective_peak_total,
    heaviest_jobs,
    json_line,
    memory_wait_s,
    summarize,
    summary_lines,
)
from buildctl.ui.text import elide_middle

MiB = 1024**2
LONG = "CMakeFiles/paged_attention_kernels.dir/generated/attention_kernel_f16_h128_b16.cpp.o"


@pytest.mark.parametrize("width", [10, 20, 41, 60])
def test_elide_middle_keeps_both_ends(width: int) -> None:
    cut = elide_middle(LONG, width)
    assert len(cut) == width
    assert "..." in cut
    keep = width - 3
    assert LONG.startswith(cut[: keep // 2])
    assert LONG.endswith(cut[keep // 2 + 3 :])


def test_elide_middle_short_and_tiny_widths() -> None:
    assert elide_middle("a.o", 10) == "a.o"
    assert elide_middle(LONG, len(LONG)) == LONG
    assert elide_middle(LONG, 3) == "..."
    assert elide_middle(LONG, 0) == ""
    assert elide_middle(LONG, 40).endswith("b16.cpp.o")  # the file name survives


@pytest.mark.parametrize("width", [80, 100, 160])
def test_live_table_keeps_the_numbers_whole_and_cuts_the_name_in_the_middle(width: int) -> None:
    import io

    from rich.console import Console

    from buildctl.govern.snapshot import RunningView, Snapshot
    from buildctl.ui.live import RichView

    job = RunningView(output=LONG, rss=512 * MiB, predicted=600 * MiB, elapsed_s=75,
                      verdict="healthy", evidence="cpu 98%, rss growing 12 MiB/s, no I/O",
                      exclusive=False, attempts=1)
    snap = Snapshot(t=1, budget=8192 * MiB, slots=2, running=(job,), waiting=3, finished=4,
                    failed=0, reserved=1024 * MiB, live_rss=512 * MiB, peak_total_rss=0,
                    host_available=10240 * MiB, paused="", wait_reason="")
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    console.print(RichView(console, "buildctl build")._render(snap))
    lines = out.getvalue().splitlines()
    row = next(line for line in lines if line.startswith("CMakeFiles/"))
    assert "b16.cpp.o " in row  # both ends of the name
    for cell in ("512.0 MiB", "600.0 MiB", "1m15s", "healthy"):  # whole, on the job's line
        assert cell in row, row
    assert any(line.startswith("memory ") and line.endswith("host free 10.0 GiB")
               for line in lines)  # a line of its own, not cut after the budget bar
    assert all(len(line) <= width for line in lines)


# --- ETA -------------------------------------------------------------------------------------

# Nine small jobs end early, one heavy job ends at 100 s: the shape that made the rate climb.
PLAN = EtaPlan(makespan_s=100.0, end_times=(*[float(i) for i in range(1, 10)], 100.0))


def test_plan_eta_on_pace_counts_down_while_the_heavy_job_runs() -> None:
    assert plan_eta_s(PLAN, elapsed_s=0.0, done=0) == pytest.approx(100.0)
    assert plan_eta_s(PLAN, elapsed_s=9.0, done=9) == pytest.approx(91.0)
    assert plan_eta_s(PLAN, elapsed_s=50.0, done=9) == pytest.approx(50.0)
    assert plan_eta_s(PLAN, elapsed_s=100.0, done=10) == 0.0


def test_plan_eta_scales_with_the_builds_pace_within_limits() -> None:
    # Five jobs done at 10 s where the plan had six done at 6 s: 10/6 slower.
    assert plan_eta_s(PLAN, elapsed_s=10.0, done=5) == pytest.approx((100 - 6) * 10 / 6)
    # Far slower than planned: scaled at most 3x.
    assert plan_eta_s(PLAN, elapsed_s=60.0, done=5) == pytest.approx((100 - 6) * 3)
    # Faster: the heavy job is done early.
    assert plan_eta_s(PLAN, elapsed_s=50.0, done=10) == 0.0


def test_rate_eta_climbs_but_the_plan_holds_the_finish_time() -> None:
    """Ninja's progress over the build above: the plain rate says a second is left when the
    heavy job starts, then climbs; the plan's finish time holds at 100 s."""
    steps = [(2, 2.0), (5, 5.0), (9, 9.0), (9, 50.0), (9, 90.0)]
    rated = [Eta(None).estimate(t, done, 10, done) for done, t in steps]
    assert rated[2] < 2 and rated[4] > 5 * rated[2]
    finish = [Eta(PLAN).estimate(t, done, 10, done) + t for done, t in steps]
    assert finish == pytest.approx([100.0] * 5)


def test_plan_is_not_used_for_a_much_smaller_incremental_build() -> None:
    eta = Eta(PLAN)
    assert eta.plan_applies(10) and eta.plan_applies(0)
    assert not eta.plan_applies(3)


def test_rate_eta_is_smoothed() -> None:
    eta = Eta(None)
    first = eta.estimate(10.0, 5, 10, 5)
    jumped = eta.estimate(11.0, 5, 10, 5)  # no progress for a second: raw rate says 11 s
    assert first == pytest.approx(10.0)
    assert jumped < 11.0 - 0.5


# --- summary ---------------------------------------------------------------------------------


def job(output: str, peak: int, start: float, wall: float, queued: float = 0.0,
        share: float = 1.0, wait4: int = 0) -> JobRecord:
    return JobRecord(output=output, kind="compile", predicted_rss_bytes=peak,
                     peak_rss_bytes=peak, wait4_maxrss_bytes=wait4, started_at_s=start,
                     wall_s=wall, queued_s=queued, cpu_share=share, status="ok")


def test_memory_wait_counts_only_time_with_a_free_slot() -> None:
    jobs = [
        job("a.o", 900 * MiB, 0.0, 10.0),
        # Waited 10 s with one of two slots free: memory kept it out.
        job("b.o", 800 * MiB, 10.0, 5.0, queued=10.0),
        # Waited while both slots ran: that is waiting for a CPU, not for memory.
        job("c.o", 10 * MiB, 0.0, 4.0),
        job("d.o", 10 * MiB, 4.0, 1.0),
        job("e.o", 10 * MiB, 5.0, 1.0, queued=1.0),
    ]
    # b waits 0-10 s; a slot is free from 5 s on (c ends at 4, d 4-5, e 4-5 queued then
    # starts at 5 and ends at 6): free slot while b waits: 4-5 (d and a hold both), so 0-4
    # a+c, 4-5 a+d full, 5-6 a+e full, 6-10 only a -> 4 s of memory wait.
    assert memory_wait_s(jobs, slots=2) == pytest.approx(4.0)


def test_summary_names_heaviest_kills_retries_and_falls_back_to_wait4_peaks() -> None:
    report = BuildReport(
        budget_bytes=2048 * MiB, slots=2, status="ok", exit_code=0, wall_s=12.0,
        jobs=[job("a.o", 0, 0, 1, wait4=30 * MiB), job("b.o", 0, 0, 1, wait4=50 * MiB),
              job("c.o", 0, 1, 1, wait4=20 * MiB), job("d.o", 0, 1, 1, wait4=10 * MiB)],
        events=[Event(kind="oom-guard-kill", t_s=1.0), Event(kind="retry", t_s=1.1),
                Event(kind="retry", t_s=2.0)],
    )
    assert report.peak_total_rss_bytes == 0  # sampling never saw a job
    assert effective_peak_total(report) == 50 * MiB
    assert [j.output for j in heaviest_jobs(report)] == ["b.o", "a.o", "c.o"]
    summary = summarize(report)
    text = "\n".join(summary_lines(summary))
    assert "0 B" not in text
    assert "heaviest: b.o 50.0 MiB, a.o 30.0 MiB, c.o 20.0 MiB" in text
    assert "1 kill, 2 retries" in text
    data = json.loads(json_line(summary))
    assert data["kills"] == 1 and data["retries"] == 2 and data["jobs"] == 4
    assert data["peak_total_rss_bytes"] == 50 * MiB


def test_summary_of_a_build_with_nothing_to_do_shows_no_zero_peak() -> None:
    report = BuildReport(budget_bytes=2048 * MiB, slots=2, status="ok", exit_code=0, wall_s=0.1)
    text = "\n".join(summary_lines(summarize(report, None)))
    assert "0 B" not in text and "0 jobs" in text and "launcher" in text


def test_plan_from_a_previous_report_replays_its_jobs(tmp_path) -> None:
    from buildctl.ui.eta import plan_from_report

    report = BuildReport(
        budget_bytes=1024 * MiB, slots=2, status="ok",
        jobs=[job(f"CMakeFiles/t.dir/{n}.cc.o", 300 * MiB, 0.0, wall) for n, wall in
              (("a", 10.0), ("b", 4.0), ("c", 4.0))],
    )
    path = tmp_path / "report.json"
    report.write(path)
    plan = plan_from_report(path, slots=2, budget_bytes=1024 * MiB)
    assert plan is not None and plan.jobs == 3
    assert plan.makespan_s == pytest.approx(10.0, abs=0.5)  # a beside b then c
    # Half the memory: the 300 MiB jobs run one at a time.
    alone = plan_from_report(path, slots=2, budget_bytes=400 * MiB)
    assert alone is not None and alone.makespan_s == pytest.approx(18.0, abs=0.5)
    assert plan_from_report(tmp_path / "missing.json", 2, 1024 * MiB) is None


def test_without_a_previous_report_the_plan_comes_from_the_projects_profiles(tmp_path) -> None:
    # A fresh build dir (CI restored the profile DB; the next torch version of a matrix): the
    # ETA replays the project's measured jobs, not another project's.
    from buildctl.govern.profiles import ProfileDB, ProfileEntry
    from buildctl.ui.eta import build_plan

    db = ProfileDB(tmp_path / "profiles.sqlite")
    try:
        for project, jobs in (("ours", (("a", 10.0), ("b", 4.0), ("c", 4.0))),
                              ("theirs", tuple((f"x{i}", 60.0) for i in range(5)))):
            for name, wall in jobs:
                db.record(ProfileEntry(output=f"CMakeFiles/t.dir/{name}.cc.o", kind="compile",
                                       compiler="g++", project=project,
                                       peak_rss_bytes=300 * MiB, wall_s=wall, cpu_s=wall))
        missing = tmp_path / "no-report.json"
        plan = build_plan(missing, lambda: db.latest("ours"), 2, 1024 * MiB)
        assert plan is not None and plan.jobs == 3
        assert plan.makespan_s == pytest.approx(10.0, abs=0.5)
        assert build_plan(missing, lambda: db.latest("new"), 2, 1024 * MiB) is None
        # A previous report in the build dir comes first.
        report = tmp_path / "report.json"
        BuildReport(budget_bytes=1024 * MiB, slots=2, status="ok",
                    jobs=[job("only.o", 300 * MiB, 0.0, 7.0)]).write(report)
        first = build_plan(report, lambda: db.latest("ours"), 2, 1024 * MiB)
        assert first is not None and first.jobs == 1
    finally:
        db.close()
    # A governed session in a fresh build dir takes its project's plan.
    import io

    from rich.console import Console

    from buildctl.govern.session import GovernedSession, SessionOptions

    opts = SessionOptions(build_dir=tmp_path / "fresh", budget_bytes=1024 * MiB, slots=2,
                          profile_db=tmp_path / "profiles.sqlite", plain=True, project="ours",
                          console=Console(file=io.StringIO()))
    with GovernedSession(opts) as session:
        plan = session.view.eta.plan  # type: ignore[attr-defined]
        assert plan is not None and plan.jobs == 3


def test_both_views_show_the_plans_eta() -> None:
    import io

    from rich.console import Console

    from buildctl.govern.snapshot import Snapshot
    from buildctl.ui.live import PlainView, RichView

    snap = Snapshot(t=1, budget=1024 * MiB, slots=2, running=(), waiting=0, finished=9,
                    failed=0, reserved=0, live_rss=0, peak_total_rss=0, host_available=0,
                    paused="", wait_reason="")
    out = io.StringIO()
    plain = PlainView(stream=out, every_s=0.0)
    plain.set_plan(PLAN)
    plain.start()
    # Nine of ten jobs done and no ninja progress to go by: only the plan knows (91 s left,
    # at most halved because this build runs ahead of it).
    plain.refresh(snap)
    assert re.search(r"ETA [4-9]\ds", out.getvalue()), out.getvalue()
    console = Console(file=io.StringIO(), width=120, color_system=None)
    rich = RichView(console, "buildctl build")
    rich.set_plan(PLAN)
    console.print(rich._render(snap))
    assert re.search(r"ETA [4-9]\ds", console.file.getvalue())  # type: ignore[attr-defined]
    without = PlainView(stream=io.StringIO(), every_s=0.0)
    without.refresh(snap)
    assert "ETA ?" in without.stream.getvalue()  # type: ignore[attr-defined]
