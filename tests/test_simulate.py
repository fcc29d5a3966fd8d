"""The pure planner/simulator (buildctl.govern.simulate), without processes."""

from __future__ import annotations

import dataclasses
import random

import pytest

from buildctl.govern import policy
from buildctl.govern.profiles import ProfileEntry
from buildctl.govern.simulate import (
    HostShape,
    SimJob,
    infer_dependencies,
    jobs_from_profiles,
    jobs_from_report,
    link_target_candidates,
    lower_bound,
    peak_total,
    simulate,
)
from buildctl.report import BuildReport, Event, JobRecord

M = 1024**2
G = 1024**3
EXACT = {"dispatch_s": 0.0, "settle_s": 0.0, "admission_fraction": 1.0}  # exact arithmetic
# (no launcher/bookkeeping latency; admission packs to the whole budget, not FREEZE_AT of it)


def c(name: str, mb: int, wall: float, target: str = "t", cpu: float | None = None) -> SimJob:
    return SimJob(f"CMakeFiles/{target}.dir/{name}.cpp.o", "compile", mb * M, wall,
                  wall if cpu is None else cpu, target)


def link(name: str, mb: int, wall: float, target: str = "") -> SimJob:
    return SimJob(name, "link", mb * M, wall, wall, target or name)


def spans(result) -> dict[str, tuple[float, float]]:
    return {s.output.split("/")[-1].removesuffix(".cpp.o"): (s.start_s, s.end_s)
            for s in result.schedule}


def test_one_job() -> None:
    r = simulate([c("a", 100, 5.0)], HostShape(cores=2, budget_bytes=G), **EXACT)
    assert r.makespan_s == 5.0
    assert r.peak_total_bytes == 100 * M
    assert r.fits and r.fits_in_ram and not r.alone and r.swap_needed_bytes == 0


def test_jobs_that_fit_run_side_by_side_up_to_the_slots() -> None:
    jobs = [c("a", 100, 4.0), c("b", 100, 4.0), c("c", 100, 4.0)]
    r = simulate(jobs, HostShape(cores=2, budget_bytes=G), **EXACT)
    assert r.makespan_s == 8.0 and r.busy_peak_slots == 2
    assert r.peak_total_bytes == 200 * M
    one = simulate(jobs, HostShape(cores=2, budget_bytes=G, slots=1), **EXACT)
    assert one.makespan_s == 12.0 and one.peak_total_bytes == 100 * M


def test_jobs_that_do_not_fit_together_are_serialised() -> None:
    jobs = [c("a", 600, 3.0), c("b", 500, 2.0)]
    r = simulate(jobs, HostShape(cores=2, budget_bytes=1000 * M), **EXACT)
    assert r.makespan_s == 5.0
    assert r.peak_total_bytes == 600 * M
    assert spans(r) == {"a": (0.0, 3.0), "b": (3.0, 5.0)}  # largest first


def test_largest_first_then_backfill_as_the_governor_does() -> None:
    # Budget 1000: 700 starts first, 300 backfills beside it; 400 and 200 follow.
    jobs = [c("s", 200, 1.0), c("m", 400, 2.0), c("l", 700, 3.0), c("x", 300, 1.0)]
    r = simulate(jobs, HostShape(cores=2, budget_bytes=1000 * M), **EXACT)
    got = spans(r)
    assert got["l"] == (0.0, 3.0)
    assert got["x"] == (0.0, 1.0)
    assert got["s"] == (1.0, 2.0)  # 400 does not fit beside 700; 200 does
    assert got["m"] == (3.0, 5.0)
    assert r.makespan_s == 5.0
    assert r.peak_total_bytes == 1000 * M


def test_a_job_above_the_budget_runs_alone_and_needs_swap() -> None:
    jobs = [c("huge", 3000, 10.0), c("a", 100, 1.0), c("b", 100, 1.0)]
    shape = HostShape(cores=4, budget_bytes=2 * G, mem_bytes=2 * G + G // 2, swap_bytes=0)
    r = simulate(jobs, shape, **EXACT)
    huge = next(s for s in r.schedule if "huge" in s.output)
    assert huge.exclusive
    for other in r.schedule:
        if other is not huge:
            assert other.end_s <= huge.start_s or other.start_s >= huge.end_s
    assert [a.output for a in r.alone] == [huge.output]
    assert r.alone[0].over_budget_bytes == 3000 * M - 2 * G
    # usable RAM of a 2.5 GiB host is 1.5 GiB (1 GiB reserve) < the 2 GiB budget -> the budget
    assert r.swap_needed_bytes == 3000 * M - 2 * G
    assert not r.fits and not r.fits_in_ram and not r.fits_with_swap
    with_swap = simulate(jobs, HostShape(cores=4, budget_bytes=2 * G, mem_bytes=2 * G + G // 2,
                                         swap_bytes=4 * G), **EXACT)
    assert with_swap.fits_with_swap
    assert r.peak_total_bytes == 3000 * M


def test_above_the_budget_but_within_ram_needs_no_swap() -> None:
    r = simulate([c("big", 3000, 1.0)], HostShape(cores=2, budget_bytes=2 * G, mem_bytes=16 * G),
                 **EXACT)
    assert not r.fits and r.fits_in_ram and r.swap_needed_bytes == 0


def test_links_wait_for_the_compiles_of_their_target_only() -> None:
    jobs = [
        c("a1", 100, 2.0, "liba"), c("a2", 100, 2.0, "liba"), c("b1", 100, 6.0, "libb"),
        link("libliba.so", 50, 1.0), link("libb.so", 50, 1.0),
    ]
    r = simulate(jobs, HostShape(cores=3, budget_bytes=G), **EXACT)
    got = {s.output: (s.start_s, s.end_s) for s in r.schedule}
    assert got["libliba.so"] == (2.0, 3.0)  # after a1, a2; not after b1
    assert got["libb.so"] == (6.0, 7.0)
    assert r.link_deps == {"libliba.so": "compiles of target liba",
                           "libb.so": "compiles of target libb"}


def test_a_link_of_unknown_target_waits_for_every_compile() -> None:
    jobs = [c("a", 100, 2.0, "x"), c("b", 100, 5.0, "y"), link("app", 50, 1.0, "app")]
    r = simulate(jobs, HostShape(cores=4, budget_bytes=G), **EXACT)
    assert {s.output: s.start_s for s in r.schedule}["app"] == 5.0
    assert r.link_deps["app"].startswith("all compiles")


def test_links_alone_are_ready_at_once() -> None:
    r = simulate([link("liba.so", 10, 1.0), link("libb.so", 10, 1.0)],
                 HostShape(cores=2, budget_bytes=G), **EXACT)
    assert r.makespan_s == 1.0


@pytest.mark.parametrize(
    ("output", "names"),
    [
        ("libfoo.so", ["foo", "libfoo"]),
        ("lib/libfoo.so.1.2", ["foo", "libfoo"]),
        ("_C.abi3.so", ["_C"]),
        ("_ops.cpython-311-x86_64-linux-gnu.so", ["_ops"]),
        ("libbar.a", ["bar", "libbar"]),
        ("bin/shapes_demo", ["shapes_demo"]),
        ("_pagedattn_ops.so", ["_pagedattn_ops"]),
    ],
)
def test_link_target_candidates(output: str, names: list[str]) -> None:
    assert link_target_candidates(output) == names


def test_dependencies_use_the_object_path_when_the_record_has_no_target() -> None:
    jobs = [SimJob("sub/CMakeFiles/k.dir/gen/x.cpp.o", "compile", M, 1.0),
            SimJob("libk.so", "link", M, 1.0)]
    deps, _ = infer_dependencies(jobs)
    assert deps == {1: frozenset({0})}


def test_ninja_width_limits_what_the_governor_sees() -> None:
    jobs = [c("a", 10, 1.0), c("b", 10, 1.0), c("c", 10, 1.0)]
    r = simulate(jobs, HostShape(cores=4, budget_bytes=G, ninja_width=1), **EXACT)
    assert r.makespan_s == 3.0 and r.busy_peak_slots == 1


def test_window_takes_the_longest_path_first() -> None:
    # Width 1: the long compile whose target has a long link goes before the short one.
    jobs = [c("short", 10, 1.0, "s"), c("long", 10, 1.0, "l"), link("libl.so", 10, 5.0),
            link("libs.so", 10, 0.5)]
    r = simulate(jobs, HostShape(cores=1, budget_bytes=G, ninja_width=1), **EXACT)
    assert r.schedule[0].output.endswith("long.cpp.o")


def test_arrival_times_delay_admission() -> None:
    jobs = [c("a", 600, 4.0), SimJob("CMakeFiles/t.dir/b.cpp.o", "compile", 300 * M, 1.0,
                                     arrival_s=0.5)]
    r = simulate(jobs, HostShape(cores=2, budget_bytes=G), **EXACT)
    assert spans(r)["b"] == (0.5, 1.5)


def test_early_arrivals_take_the_slots_as_in_the_governor() -> None:
    # The smaller job arrives first and starts; the big one cannot join it and waits.
    jobs = [SimJob("CMakeFiles/t.dir/small.cpp.o", "compile", 600 * M, 2.0),
            SimJob("CMakeFiles/t.dir/big.cpp.o", "compile", 700 * M, 2.0, arrival_s=0.1)]
    r = simulate(jobs, HostShape(cores=2, budget_bytes=G), **EXACT)
    assert spans(r) == {"small": (0.0, 2.0), "big": (2.0, 4.0)}


def test_dispatch_and_settle_latencies() -> None:
    jobs = [c("a", 10, 1.0, "x"), c("b", 10, 1.0, "x"), link("libx.so", 10, 1.0)]
    r = simulate(jobs, HostShape(cores=1, budget_bytes=G), dispatch_s=0.2, settle_s=0.1)
    got = {s.output.split("/")[-1]: (round(s.start_s, 3), round(s.end_s, 3)) for s in r.schedule}
    assert got["a.cpp.o"] == (0.0, 1.0)
    assert got["b.cpp.o"] == (1.1, 2.1)  # the slot is free once the first job's `done` settled
    assert got["libx.so"] == (2.4, 3.4)  # settle + the link's launcher starting up
    assert r.makespan_s == pytest.approx(3.4)


def test_predictions_below_the_peak_overcommit_as_the_governor_would() -> None:
    # A cold build: the governor believes 100 MB; both start, and really use 600 MB each.
    jobs = [SimJob(f"CMakeFiles/t.dir/{n}.cpp.o", "compile", 600 * M, 2.0, predicted_bytes=100 * M)
            for n in ("a", "b")]
    r = simulate(jobs, HostShape(cores=2, budget_bytes=G), **EXACT)
    assert r.makespan_s == 2.0 and r.peak_total_bytes == 1200 * M


def test_a_long_waiting_big_job_stops_small_ones_overtaking() -> None:
    # 900 MB runs for 100 s; a 600 MB job cannot join it; small ones keep coming through the
    # other slot until the 600 has waited max_bypass_s, then they are held back.
    jobs = [c("big", 900, 100.0), c("mid", 600, 10.0)] + [c(f"s{i}", 50, 30.0) for i in range(4)]
    r = simulate(jobs, HostShape(cores=2, budget_bytes=G), max_bypass_s=60.0, **EXACT)
    got = spans(r)
    small_starts = sorted(got[f"s{i}"][0] for i in range(4))
    assert small_starts[:2] == [0.0, 30.0]  # before the 600 MB job waited 60 s
    assert got["mid"][0] == 100.0  # as soon as the big one ended
    assert small_starts[2] >= 100.0  # held back from t=60 on


def test_lower_bound_terms() -> None:
    jobs = [c("a", 500, 10.0, cpu=10.0), c("b", 500, 10.0, cpu=10.0), c("c", 100, 2.0, cpu=2.0)]
    assert lower_bound(jobs, cores=2, budget=G) == pytest.approx(11.0)  # CPU 22 / 2
    assert lower_bound(jobs, cores=8, budget=500 * M) == pytest.approx(20.4)  # memory
    assert lower_bound(jobs, cores=8, budget=100 * G) == pytest.approx(10.0)  # longest
    sleepy = [c("a", 10, 10.0, cpu=0.1), c("b", 10, 10.0, cpu=0.1)]
    assert lower_bound(sleepy, cores=1, budget=G, slots=1, whole_slots=True) == pytest.approx(20.0)
    # ...on a quarter slot each they can run side by side: the longest job binds.
    assert lower_bound(sleepy, cores=1, budget=G, slots=1) == pytest.approx(10.0)
    assert lower_bound([], cores=1, budget=G) == 0.0
    # A job above the budget counts as the whole budget for its time.
    assert lower_bound([c("h", 4000, 5.0, cpu=0.0)], cores=1, budget=G) == pytest.approx(5.0)


def _random_jobs(rng: random.Random) -> list[SimJob]:
    jobs = []
    for t in range(rng.randint(1, 3)):
        for i in range(rng.randint(1, 12)):
            wall = rng.uniform(0.1, 20.0)  # single-threaded jobs: CPU <= wall
            jobs.append(c(f"t{t}_{i}", rng.randint(10, 1500), wall, f"t{t}",
                          cpu=wall * rng.uniform(0.0, 1.0)))
        if rng.random() < 0.8:
            jobs.append(link(f"libt{t}.so", rng.randint(10, 800), rng.uniform(0.1, 5.0)))
    rng.shuffle(jobs)
    return jobs


@pytest.mark.parametrize("seed", range(300))
def test_invariants_on_random_builds(seed: int) -> None:
    rng = random.Random(seed)
    jobs = _random_jobs(rng)
    shape = HostShape(cores=rng.randint(1, 8), budget_bytes=rng.randint(300, 3000) * M,
                      ninja_width=rng.choice([None, 1, 3, 64]), whole_slots=rng.random() < 0.3)
    r = simulate(jobs, shape, dispatch_s=rng.choice([0.0, 0.15]), settle_s=rng.choice([0.0, 0.1]))
    assert sorted(s.output for s in r.schedule) == sorted(j.output for j in jobs)
    assert r.makespan_s >= r.lower_bound_s - 1e-9
    assert r.makespan_s <= sum(j.wall_s for j in jobs) + len(jobs) * 0.25 + 1e-6
    events = sorted({s.start_s for s in r.schedule})
    share = {j.output: 1.0 if shape.whole_slots else j.cpu_share for j in jobs}
    for t in events:
        live = [s for s in r.schedule if s.start_s <= t < s.end_s]
        # Jobs that mostly wait take part of a slot (scheduler.cpu_share), never more than slots.
        assert sum(share[s.output] for s in live) <= shape.effective_slots + 1e-9
        if any(s.exclusive for s in live):
            assert len(live) == 1
        else:
            assert sum(s.peak_bytes for s in live) <= shape.budget_bytes
    ends = {s.output: s.end_s for s in r.schedule}
    starts = {s.output: s.start_s for s in r.schedule}
    deps, _ = infer_dependencies(jobs)
    for index, needs in deps.items():
        for need in needs:
            assert starts[jobs[index].output] >= ends[jobs[need].output] - 1e-9
    over = {j.output for j in jobs if j.peak_bytes > shape.budget_bytes}
    assert {a.output for a in r.alone} == over


def test_jobs_from_report_keeps_clean_jobs_and_replays_predictions_and_arrivals() -> None:
    report = BuildReport(budget_bytes=G, slots=2, jobs=[
        JobRecord(output="CMakeFiles/t.dir/a.cpp.o", kind="compile", target="t",
                  predicted_rss_bytes=G, peak_rss_bytes=300 * M, wall_s=4.0, cpu_s=3.5,
                  started_at_s=10.0, queued_s=0.0, status="ok"),
        JobRecord(output="CMakeFiles/t.dir/b.cpp.o", kind="compile", target="t",
                  predicted_rss_bytes=G, peak_rss_bytes=200 * M, wall_s=2.0, cpu_s=1.0,
                  started_at_s=14.0, queued_s=3.7, status="ok"),
        JobRecord(output="CMakeFiles/t.dir/bad.cpp.o", kind="compile", target="t",
                  predicted_rss_bytes=G, peak_rss_bytes=50 * M, wall_s=0.2, status="failed"),
        JobRecord(output="t.so", kind="link", target="t.so", predicted_rss_bytes=G,
                  peak_rss_bytes=20 * M, wall_s=0.5, started_at_s=16.2, status="ok"),
    ])
    warm = jobs_from_report(report)
    assert [j.output for j in warm] == ["CMakeFiles/t.dir/a.cpp.o", "CMakeFiles/t.dir/b.cpp.o",
                                        "t.so"]
    assert all(j.predicted == j.peak_bytes and j.arrival_s == 0 for j in warm)
    replay = jobs_from_report(report, replay=True)
    assert all(j.predicted == G for j in replay)
    assert replay[1].arrival_s == pytest.approx(0.3)  # registered at 10.3, first start at 10.0
    # A replay keeps the share a job was admitted with; a report from before CPU shares has
    # none, and the share comes from the job's times (b.cpp.o computed half its time: 1.0).
    assert all(j.cpu_share == 1.0 for j in replay)
    old = report.jobs[0].model_copy(update={"cpu_s": 0.4})
    assert old.cpu_share is None
    assert jobs_from_report(report.model_copy(update={"jobs": [old]}), replay=True)[0].cpu_share \
        == 0.25
    sleepy = report.jobs[0].model_copy(update={"cpu_s": 0.4, "cpu_share": 1.0})
    rep2 = report.model_copy(update={"jobs": [sleepy]})
    assert jobs_from_report(rep2, replay=True)[0].cpu_share == 1.0  # a first build: no profile
    assert jobs_from_report(rep2)[0].cpu_share == 0.25  # the next build will know
    assert jobs_from_report(BuildReport(budget_bytes=G, slots=1)) == []


def test_jobs_from_profiles_keeps_the_latest_entry_per_output() -> None:
    entries = [
        ProfileEntry(output="a.o", kind="compile", compiler="gcc 12", peak_rss_bytes=M,
                     wall_s=1.0, recorded_at=1.0),
        ProfileEntry(output="a.o", kind="compile", compiler="gcc 13", peak_rss_bytes=2 * M,
                     wall_s=2.0, recorded_at=2.0),
        ProfileEntry(output="x", kind="weird", compiler="?", peak_rss_bytes=M),
    ]
    jobs = {j.output: j for j in jobs_from_profiles(entries)}
    assert jobs["a.o"].peak_bytes == 2 * M and jobs["a.o"].wall_s == 2.0
    assert jobs["x"].kind == "other"


# --- RSS curves: admission over time, as scheduler.decide sees it --------------------------------

EARLY = ((0.0, 100 * M), (1.0, 600 * M), (4.0, 600 * M), (5.0, 100 * M), (10.0, 100 * M))
LATE = ((0.0, 100 * M), (6.0, 100 * M), (7.0, 600 * M), (9.0, 600 * M), (10.0, 100 * M))
FLAT = ((0.0, 600 * M), (10.0, 600 * M))


@pytest.mark.parametrize(
    ("curve", "b_starts", "peak_mb"),
    [
        # Peaks early: b joins once a is past its peak (found mid-run, at no start or end).
        (EARLY, (4.0, 6.0), 700),
        # Peaks late: b joins early enough that its own peak comes after a's.
        (LATE, (3.0, 5.0), 700),
        # Peak held throughout: the peaks always coincide, as a sum of peaks says.
        (FLAT, (10.0, 10.0), 600),
        # No curve: the job holds its peak for its whole run.
        ((), (10.0, 10.0), 600),
    ],
)
def test_jobs_whose_peaks_do_not_coincide_overlap(
    curve: tuple[tuple[float, int], ...], b_starts: tuple[float, float], peak_mb: int
) -> None:
    # Two 600 MB jobs under 1000 MB: a sum of peaks never lets them run together.
    jobs = [SimJob(f"CMakeFiles/t.dir/{n}.cpp.o", "compile", 600 * M, 10.0, 10.0, "t",
                   curve=curve) for n in ("a", "b")]
    r = simulate(jobs, HostShape(cores=2, budget_bytes=1000 * M), **EXACT)
    got = spans(r)
    assert got["a"][0] == 0.0
    assert b_starts[0] <= got["b"][0] <= b_starts[1]
    # The peak total is the largest sum of the curves as scheduled, not a sum of peaks.
    assert r.peak_total_bytes == peak_mb * M


def test_a_replay_admits_on_the_predicted_curve_not_the_real_one() -> None:
    # The governor predicted a flat curve (a sibling's): no overlap, whatever really happened.
    jobs = [SimJob(f"CMakeFiles/t.dir/{n}.cpp.o", "compile", 600 * M, 10.0, 10.0, "t",
                   curve=EARLY, predicted_curve=FLAT) for n in ("a", "b")]
    r = simulate(jobs, HostShape(cores=2, budget_bytes=1000 * M), **EXACT)
    assert spans(r)["b"][0] == 10.0 and r.peak_total_bytes == 600 * M
    # Predicted on a prior (no curve) below what it reaches: admitted together, overcommitted.
    cold = [SimJob(f"CMakeFiles/t.dir/{n}.cpp.o", "compile", 600 * M, 10.0, 10.0, "t",
                   predicted_bytes=300 * M, curve=EARLY, predicted_curve=()) for n in ("a", "b")]
    r = simulate(cold, HostShape(cores=2, budget_bytes=1000 * M), **EXACT)
    assert spans(r) == {"a": (0.0, 10.0), "b": (0.0, 10.0)}
    assert r.peak_total_bytes == 1200 * M


@pytest.mark.parametrize(
    ("placed", "peak_mb"),
    [
        ([], 0),
        ([(FLAT, 0.0)], 600),
        ([(EARLY, 0.0), (EARLY, 0.0)], 1200),  # coinciding peaks add up
        ([(EARLY, 0.0), (EARLY, 4.0)], 700),  # b's rise at 5 s meets a's fall at 5 s
        ([(EARLY, 0.0), (EARLY, 3.5)], 1200),  # b peaks from 4.5 s, a until 5 s
        ([(EARLY, 0.0), ((), 2.0)], 1200),  # no curve: its peak from start to end
        ([((), 0.0), ((), 10.0)], 600),  # one ends as the other starts: never both
        ([(LATE, 0.0), (EARLY, 0.0)], 700),
    ],
)
def test_peak_total_sums_the_curves_over_time(
    placed: list[tuple[tuple[tuple[float, int], ...], float]], peak_mb: int
) -> None:
    jobs = [(SimJob(f"j{i}.o", "compile", 600 * M, 10.0, curve=curve), start)
            for i, (curve, start) in enumerate(placed)]
    assert peak_total(jobs) == peak_mb * M


def test_rss_at_holds_between_points_and_is_zero_before_the_first() -> None:
    job = SimJob("a.o", "compile", 600 * M, 10.0, curve=((0.5, 50 * M), (2.0, 600 * M)))
    assert [job.rss_at(t) for t in (0.0, 0.5, 1.9, 2.0, 9.0)] == [0, 50 * M, 50 * M, 600 * M,
                                                                 600 * M]
    assert SimJob("b.o", "compile", 600 * M, 10.0).rss_at(1.0) == 600 * M


def test_admission_packs_below_the_freeze_mark_as_the_governor_does() -> None:
    # 700 + 300 fit 1000 MB exactly, but the governor admits against 97 % of the budget.
    jobs = [c("l", 700, 3.0), c("x", 300, 1.0)]
    shape = HostShape(cores=2, budget_bytes=1000 * M)
    assert spans(simulate(jobs, shape, **EXACT))["x"] == (0.0, 1.0)
    assert spans(simulate(jobs, shape, dispatch_s=0.0, settle_s=0.0))["x"] == (3.0, 4.0)


def test_jobs_on_a_prior_start_a_few_at_a_time() -> None:
    # Never-measured family: policy.unknown_family_limit(4 slots) = 2 at once.
    jobs = [SimJob(f"CMakeFiles/t.dir/{i}.cpp.o", "compile", 10 * M, 1.0, 1.0, "t",
                   unknown_group="compile|.cpp") for i in range(4)]
    r = simulate(jobs, HostShape(cores=4, budget_bytes=G), **EXACT)
    assert r.busy_peak_slots == 2 and r.makespan_s == 2.0
    known = [dataclasses.replace(j, unknown_group="") for j in jobs]
    assert simulate(known, HostShape(cores=4, budget_bytes=G), **EXACT).busy_peak_slots == 4


def test_a_family_whose_running_jobs_vouch_ramps_up_as_the_governor_does() -> None:
    # Light jobs that peak at 1 s and sit lower for 20 s: each running one vouches after
    # policy.RAMP_QUIET_S of quiet, and each voucher lets RAMP_PER_VOUCH more start.
    curve = ((0.5, 100 * M), (1.0, 300 * M), (2.0, 150 * M), (20.0, 150 * M))
    jobs = [SimJob(f"CMakeFiles/t.dir/{i}.cu.o", "compile", 300 * M, 20.0, 20.0, "t",
                   curve=curve, predicted_bytes=G, predicted_curve=(),
                   unknown_group="compile|.cu") for i in range(16)]
    r = simulate(jobs, HostShape(cores=16, budget_bytes=32 * G), **EXACT)
    starts = sorted(start for start, _ in spans(r).values())
    assert starts[:2] == [0.0, 0.0] and starts[2] > 0.0
    assert r.busy_peak_slots == 16
    assert starts[-1] <= 2 * (1.0 + policy.RAMP_QUIET_S) + 0.5
    assert r.makespan_s < 40.0  # the slow start alone: 2 at a time, 160 s


def test_reports_and_profiles_carry_curves() -> None:
    curve = [(0.0, 10 * M), (1.5, 300 * M), (2.0, 20 * M)]
    sibling = [(0.0, 10 * M), (2.0, 250 * M)]
    report = BuildReport(budget_bytes=G, slots=2, jobs=[
        JobRecord(output="CMakeFiles/t.dir/a.cpp.o", kind="compile", target="t",
                  predicted_rss_bytes=250 * M, prediction_source="sibling", peak_rss_bytes=300 * M,
                  wall_s=2.0, status="ok", curve=curve, predicted_curve=sibling),
        JobRecord(output="CMakeFiles/t.dir/b.cpp.o", kind="compile", target="t",
                  predicted_rss_bytes=400 * M, prediction_source="prior", peak_rss_bytes=300 * M,
                  wall_s=2.0, status="ok", curve=curve),
    ])
    report = BuildReport.model_validate_json(report.to_json())  # through JSON, as read back
    warm, prior = jobs_from_report(report)
    assert warm.curve == tuple(curve) and warm.prediction_curve == tuple(curve)
    assert warm.unknown_group == "" and prior.unknown_group == ""
    sib, prior = jobs_from_report(report, replay=True)
    assert sib.prediction_curve == tuple(sibling) and sib.unknown_group == ""
    assert prior.prediction_curve == () and prior.unknown_group == "compile|.cpp"
    # Both were never measured: a replay predicts them again as the build learns.
    assert sib.learns and prior.learns and sib.prior_bytes == prior.prior_bytes == 400 * M
    assert not any(j.learns for j in jobs_from_report(report))
    # A report from before curves: no curve, every job holds its peak.
    old = JobRecord.model_validate({"output": "x.o", "kind": "compile",
                                    "predicted_rss_bytes": M, "status": "ok"})
    assert old.curve == [] and old.predicted_curve == []
    entry = ProfileEntry(output="a.o", kind="compile", compiler="gcc", peak_rss_bytes=300 * M,
                         wall_s=2.0, curve=curve)
    (job,) = jobs_from_profiles([entry])
    assert job.curve == tuple(curve) and job.prediction_curve == tuple(curve)


def test_a_replayed_freeze_keeps_the_slot_and_holds_the_rss() -> None:
    rising = ((0.0, 100 * M), (1.5, 500 * M), (4.0, 500 * M))
    a = SimJob("CMakeFiles/t.dir/a.cpp.o", "compile", 500 * M, 4.0, 4.0, "t", curve=rising,
               pauses=((1.0, 2.0),))
    assert a.occupancy_s == 6.0
    assert [a.running_s(t) for t in (0.5, 1.0, 2.0, 3.0, 3.5, 6.0)] == [0.5, 1.0, 1.0, 1.0, 1.5,
                                                                          4.0]
    # Frozen from 1 s to 3 s of the wall clock: its rise comes at 3.5 s, not 1.5 s.
    other = SimJob("x.o", "compile", 450 * M, 0.4)
    assert peak_total([(a, 0.0), (other, 3.0)]) == 550 * M
    assert peak_total([(a, 0.0), (other, 3.5)]) == 950 * M
    report = BuildReport(budget_bytes=G, slots=1, jobs=[
        JobRecord(output=a.output, kind="compile", target="t", predicted_rss_bytes=500 * M,
                  peak_rss_bytes=500 * M, wall_s=4.0, started_at_s=10.0, frozen_s=2.5,
                  status="ok", curve=list(rising), predicted_curve=list(rising)),
    ], events=[
        Event(kind="freeze", t_s=8.0, output=a.output),  # an earlier attempt's
        Event(kind="thaw", t_s=8.5, output=a.output),
        Event(kind="freeze", t_s=11.0, output=a.output),
        Event(kind="thaw", t_s=13.0, output=a.output),
    ])
    (replayed,) = jobs_from_report(report, replay=True)
    assert replayed.pauses == ((1.0, 2.0),)
    # The sample the guard froze it on (curve times rounded to 10 ms) comes before the freeze.
    sampled = report.jobs[0].model_copy(update={"curve": [(0.0, 0), (1.01, 400 * M)]})
    (snapped,) = jobs_from_report(report.model_copy(update={"jobs": [sampled]}), replay=True)
    assert snapped.pauses == ((1.01, 2.0),) and snapped.rss_at(snapped.running_s(2.0)) == 400 * M
    assert jobs_from_report(report)[0].pauses == ()  # a plan: the guard is not replayed
    r = simulate([replayed, SimJob("CMakeFiles/t.dir/b.cpp.o", "compile", 500 * M, 1.0, 1.0,
                                   "t")], HostShape(cores=1, budget_bytes=G), **EXACT)
    assert spans(r) == {"a": (0.0, 6.0), "b": (6.0, 7.0)}  # a frozen job keeps its slot


@pytest.mark.parametrize(
    ("learns", "expected"),
    [
        # As the governor: all three start on the prior (400 MB), two at once (slow start,
        # enqueue order); c is predicted from a (300 MB) when a ends, and fits beside b.
        (True, {"a": (0.0, 1.0), "b": (0.0, 2.0), "c": (1.0, 2.0)}),
        # With its final prediction from the start, c (600 MB) would go first.
        (False, {"c": (0.0, 1.0), "a": (0.0, 1.0), "b": (1.0, 3.0)}),
    ],
)
def test_a_cold_replay_predicts_again_as_siblings_finish(
    learns: bool, expected: dict[str, tuple[float, float]]
) -> None:
    def job(name: str, peak: int, wall: float, source_predicted: int) -> SimJob:
        return SimJob(f"CMakeFiles/t.dir/{name}.cpp.o", "compile", peak * M, wall, wall, "t",
                      predicted_bytes=source_predicted * M, learns=learns, prior_bytes=400 * M)
    jobs = [job("a", 300, 1.0, 400), job("b", 300, 2.0, 400), job("c", 600, 1.0, 600)]
    r = simulate(jobs, HostShape(cores=2, budget_bytes=1000 * M), **EXACT)
    assert spans(r) == expected


# --- the device-link cap (GovernorOptions.max_device_links) -----------------------------------


def dlink(name: str, wall: float = 2.0) -> SimJob:
    return dataclasses.replace(link(name, 100, wall), device_link=True)


@pytest.mark.parametrize(
    ("cap", "jobs", "expected"),
    [
        # K=2: the third device link starts when the first ends.
        (2, [dlink("d1"), dlink("d2"), dlink("d3")],
         {"d1": (0.0, 2.0), "d2": (0.0, 2.0), "d3": (2.0, 4.0)}),
        # K=0: no cap, all at once.
        (0, [dlink("d1"), dlink("d2"), dlink("d3")],
         {"d1": (0.0, 2.0), "d2": (0.0, 2.0), "d3": (0.0, 2.0)}),
        (1, [dlink("d1"), dlink("d2"), dlink("d3")],
         {"d1": (0.0, 2.0), "d2": (2.0, 4.0), "d3": (4.0, 6.0)}),
        # Links that are not device links, and other jobs, are not held by the cap.
        (1, [link("l1", 100, 2.0), link("l2", 100, 2.0), link("l3", 100, 2.0)],
         {"l1": (0.0, 2.0), "l2": (0.0, 2.0), "l3": (0.0, 2.0)}),
        # Compiles start at once; each link waits for its target's compile, then the device
        # links go one at a time beside the plain link.
        (1, [c("ca", 100, 1.0, "d1"), c("cb", 100, 1.0, "d2"), c("cg", 100, 4.0, "g"),
             dlink("d1"), dlink("d2"), link("g", 100, 2.0)],
         {"ca": (0.0, 1.0), "cb": (0.0, 1.0), "cg": (0.0, 4.0), "d1": (1.0, 3.0),
          "d2": (3.0, 5.0), "g": (4.0, 6.0)}),
    ],
    ids=["cap-2", "no-cap", "cap-1", "plain-links", "mixed"],
)
def test_device_links_are_capped_as_the_governor_caps_them(
    cap: int, jobs: list[SimJob], expected: dict[str, tuple[float, float]]
) -> None:
    r = simulate(jobs, HostShape(cores=8, budget_bytes=G, max_device_links=cap), **EXACT)
    assert spans(r) == expected
    assert r.makespan_s == max(end for _, end in expected.values())


def test_a_held_device_link_does_not_hold_the_jobs_behind_it() -> None:
    # Three slots, K=2: the third slot goes to the plain link, and when it ends d3 still waits.
    jobs = [dlink("d1", 4.0), dlink("d2", 4.0), dlink("d3", 1.0), link("p", 100, 1.0)]
    r = simulate(jobs, HostShape(cores=3, budget_bytes=G, max_device_links=2), **EXACT)
    assert spans(r) == {"d1": (0.0, 4.0), "d2": (0.0, 4.0), "p": (0.0, 1.0), "d3": (4.0, 5.0)}
    uncapped = simulate(jobs, HostShape(cores=3, budget_bytes=G), **EXACT)
    assert spans(uncapped)["d3"][0] < 4.0


def test_jobs_from_report_marks_device_links() -> None:
    def record(output: str, kind: str, source: str | None) -> JobRecord:
        extra = {} if source is None else {"prediction_source": source}
        return JobRecord(output=output, kind=kind, target=output, predicted_rss_bytes=G,
                         peak_rss_bytes=G, wall_s=2.0, status="ok", **extra)

    report = BuildReport(budget_bytes=4 * G, slots=4, jobs=[
        record("libdev.so", "link", "device-link"),
        record("libplain.so", "link", "profile"),
        record("CMakeFiles/t.dir/a.cpp.o", "compile", "device-link"),  # only links count
        record("libold.so", "link", None),  # a report from before device links
    ])
    # Old reports stay readable: the JSON without the field validates, and nothing is marked.
    old = BuildReport.model_validate_json(report.model_dump_json())
    marks = {j.output: j.device_link for j in jobs_from_report(old)}
    assert marks == {"libdev.so": True, "libplain.so": False,
                     "CMakeFiles/t.dir/a.cpp.o": False, "libold.so": False}
    assert [j.device_link for j in jobs_from_report(old, replay=True)] == [True, False, False,
                                                                          False]
    assert not any(j.device_link for j in jobs_from_profiles([]))
