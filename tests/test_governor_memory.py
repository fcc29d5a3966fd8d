"""The governor's memory guard on a replayed real trace, through the fake runner: no processes,
no sleeps. The trace is 20 heavy nvcc jobs of a public CUDA template library (16-core host,
2.8-6.3 GiB each, peaks in short phases); bench/traces/README says where it came from."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import fake_governor, start_admitted

from buildctl.govern.governor import Job
from buildctl.govern.profiles import ProfileDB
from buildctl.govern.runner import FakeRunner

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "bench" / "traces" / "nvcc-template-20.json"
GiB = 1024**3
MiB = 1024**2
BUDGET = 16 * GiB
STEP_S = 0.5
# ggml's CUDA template instances on the 16-core host (bench/README.md, "Real project"): light
# jobs (0.30-0.36 GiB) that reach their plateau within seconds.
GGML_TRACE = ROOT / "bench" / "traces" / "ggml-cuda-sm90.json"
GGML_BUDGET = 1856 * MiB


def rss_script(series: list[list[float]]) -> Callable[[float], int]:
    points = [(float(t), int(rss)) for t, rss in series]

    def rss_at(t: float) -> int:
        value = points[0][1]
        for ts, rss in points:
            if ts > t:
                break
            value = rss
        return value

    return rss_at


@dataclass
class Replay:
    ok: int
    makespan_s: float
    peak_total: int
    kills: int
    freezes: int
    old_rule_fired: int  # ticks at which the removed reservation rule would have killed
    max_kills_per_job: int


def old_rule_would_kill(running: list[Job], budget: int) -> bool:
    """The rule this governor replaced: kill the youngest job above its prediction (or on a
    capped prior) whenever the reservations max(predicted, live) sum above the budget."""
    if len(running) < 2:
        return False
    reserved = sum(
        job.current_rss if job.capped_from else max(job.prediction.bytes, job.current_rss)
        for job in running
    )
    above = [
        job for job in running
        if job.capped_from
        or job.current_rss > job.prediction.bytes + max(job.prediction.bytes // 20, 8 * MiB)
    ]
    return reserved > budget and bool(above)


def replay(db: ProfileDB, tmp_path: Path, slots: int = 16, budget: int = BUDGET,
           trace_path: Path = TRACE) -> Replay:
    trace = json.loads(trace_path.read_text())
    jobs = {job["name"]: job for job in trace["jobs"]}
    runner = FakeRunner({f"CMakeFiles/gemm.dir/{name}": rss_script(job["rss"])
                         for name, job in jobs.items()})
    clock = [1000.0]
    governor = fake_governor(db, tmp_path, clock=lambda: clock[0], runner=runner,
                             budget_bytes=budget, slots=slots, sample_interval_s=STEP_S,
                             project="gemm")
    for name in jobs:
        governor.enqueue(f"CMakeFiles/gemm.dir/{name}", "compile", "nvcc 13.0",
                         fingerprint=name, source_bytes=4000)
    old_fired = 0
    kills_per_job: dict[str, int] = {}
    pid = 100
    for _ in range(20000):
        pid = start_admitted(governor, runner, pid)
        if all(j.state == "done" for j in governor.jobs.values()):
            break
        clock[0] += STEP_S
        runner.advance(STEP_S)
        governor.tick()
        running = [j for j in governor.jobs.values() if j.state == "running" and j.child_pid]
        old_fired += old_rule_would_kill(running, budget)
        for job in running:
            proc = runner.processes[job.id]
            name = job.output.rsplit("/", 1)[1]
            duration = jobs[name]["rss"][-1][0]
            if proc.killed:
                kills_per_job[job.output] = kills_per_job.get(job.output, 0) + 1
                governor._finish(job, {"rc": 137, "signal": 9, "cpu_s": proc.ran_s})
            elif proc.ran_s >= duration:
                governor._finish(job, {"rc": 0, "cpu_s": proc.ran_s, "maxrss": 0})
    else:
        pytest.fail("the replay did not finish")
    kinds = [event.kind for event in governor.events]
    return Replay(
        ok=sum(1 for r in governor.finished if r.status == "ok"),
        makespan_s=clock[0] - 1000.0,
        peak_total=governor.peak_total_rss,
        kills=kinds.count("oom-guard-kill"),
        freezes=kinds.count("freeze"),
        old_rule_fired=old_fired,
        max_kills_per_job=max(kills_per_job.values(), default=0),
    )


def fixed_j_makespan(n: int, trace_path: Path = TRACE) -> tuple[float, int]:
    """What `ninja -jN` would do with the same jobs: (makespan, peak total), no memory rule."""
    trace = json.loads(trace_path.read_text())
    durations = [(job["rss"][-1][0], rss_script(job["rss"])) for job in trace["jobs"]]
    t = 0.0
    running: list[tuple[float, Callable[[float], int]]] = []  # (start, script)
    queue = list(durations)
    peak = 0
    ends: dict[int, float] = {}
    while queue or running:
        while queue and len(running) < n:
            duration, script = queue.pop(0)
            running.append((t, script))
            ends[id(script)] = t + duration
        t += STEP_S
        peak = max(peak, sum(script(t - start) for start, script in running))
        running = [(s, f) for s, f in running if ends[id(f)] > t]
    return t, peak


@pytest.fixture
def db(tmp_path: Path) -> ProfileDB:
    return ProfileDB(tmp_path / "profiles.sqlite")


def test_first_and_second_build_never_kill_where_the_old_rule_did(
    db: ProfileDB, tmp_path: Path
) -> None:
    first = replay(db, tmp_path / "first")
    assert first.ok == 20
    assert first.peak_total <= BUDGET
    assert first.old_rule_fired > 0, "the old rule would not have killed: the case proves nothing"
    assert first.kills == 0
    second = replay(db, tmp_path / "second")
    assert second.ok == 20
    assert second.peak_total <= BUDGET
    assert second.kills == 0
    assert second.max_kills_per_job <= 1
    # The second build knows every curve: it overlaps jobs whose peaks do not meet and is
    # at least as fast as the fastest fixed -jN that stays under the budget.
    fitting = [fixed_j_makespan(n) for n in range(1, 17)]
    best = min(span for span, peak in fitting if peak <= BUDGET)
    assert second.makespan_s <= 1.05 * best, (second, best)
    assert second.makespan_s <= first.makespan_s * 1.02


def test_light_plateau_jobs_run_as_wide_as_the_budget_allows(
    db: ProfileDB, tmp_path: Path
) -> None:
    """The ggml trace under the budget of the 16-core run: on the real host the second build
    froze four of five jobs sitting on their recorded plateaus (recent rates projected past
    their peaks) and took 1.6x a fixed -j6. Replayed here, both builds stay under the budget
    without a kill, and the second is within 5 % of the fastest fixed -jN that fits."""
    first = replay(db, tmp_path / "first", budget=GGML_BUDGET, trace_path=GGML_TRACE)
    second = replay(db, tmp_path / "second", budget=GGML_BUDGET, trace_path=GGML_TRACE)
    fitting = [fixed_j_makespan(n, GGML_TRACE) for n in range(1, 17)]
    best = min(span for span, peak in fitting if peak <= GGML_BUDGET)
    for build in (first, second):
        assert build.ok == 20 and build.kills == 0
        assert build.peak_total <= GGML_BUDGET
    assert second.makespan_s <= 1.05 * best, (second, best)
    assert first.makespan_s <= 1.25 * best, (first, best)


def test_a_light_family_ramps_up_where_the_budget_is_ample(
    db: ProfileDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ggml trace at 16 GiB, where memory does not bind (call G on the 16-core host): the
    slow start alone ran two never-measured jobs for 18 s and took 1.41x plain -j16. Running
    jobs that sit well under their reservation vouch for their family (policy.vouches), so the
    first build ramps up within seconds: at most 1.25x plain -j16, with no freeze or kill. The
    second starts the longest jobs first and is within 5 % of plain -j16."""
    budget = 16 * GiB
    plain, _ = fixed_j_makespan(16, GGML_TRACE)
    first = replay(db, tmp_path / "first", budget=budget, trace_path=GGML_TRACE)
    assert first.ok == 20 and first.kills == 0 and first.freezes == 0
    assert first.peak_total <= budget
    assert first.makespan_s <= 1.25 * plain, (first, plain)
    second = replay(db, tmp_path / "second", budget=budget, trace_path=GGML_TRACE)
    assert second.ok == 20 and second.kills == 0 and second.peak_total <= budget
    assert second.makespan_s <= 1.05 * plain, (second, plain)
    monkeypatch.setattr("buildctl.govern.policy.RAMP_PER_VOUCH", 0)
    slow = replay(ProfileDB(tmp_path / "slow.sqlite"), tmp_path / "slow", budget=budget,
                  trace_path=GGML_TRACE)
    assert slow.makespan_s > 1.3 * plain, "without the ramp it was not slow: proves nothing"


def test_a_job_is_killed_at_most_once_and_its_rerun_is_protected(tmp_path: Path) -> None:
    """A budget far below what jobs need side by side: kills may happen, but never twice to
    one job, and every job still finishes (re-runs are protected)."""
    db = ProfileDB(tmp_path / "p.sqlite")
    result = replay(db, tmp_path / "tight", budget=7 * GiB)
    assert result.ok == 20
    assert result.max_kills_per_job <= 1


def test_with_nothing_left_to_freeze_the_kill_comes_before_the_budget(
    db: ProfileDB, tmp_path: Path
) -> None:
    """Call H4 on the 16-core host: every job but the oldest frozen near the budget, the oldest
    climbing on, and the kill came when the live total had reached the budget (our sampler saw
    it 1 MiB over). Here two jobs are frozen at once and the oldest climbs 40 MiB/s: the guard
    kills while the live total is still under the budget, and nothing is killed twice."""
    budget = 1000 * MiB
    runner = FakeRunner({
        "a.o": lambda t: int(300 * MiB + 40 * MiB * t),
        "b.o": lambda t: int(300 * MiB + 5 * MiB * t),
        "c.o": lambda t: int(300 * MiB + 5 * MiB * t),
    })
    clock = [100.0]
    governor = fake_governor(db, tmp_path, clock=lambda: clock[0], runner=runner,
                             budget_bytes=budget, slots=3, sample_interval_s=0.25)
    for name in ("a.o", "b.o", "c.o"):
        governor.enqueue(name, "compile", "g++ 12", fingerprint=name, source_bytes=100)
    pid = start_admitted(governor, runner, 100)
    assert pid == 103, "all three must run together for the case to mean anything"
    live_at_kill = None
    for _ in range(16):  # 4 s
        clock[0] += 0.25
        runner.advance(0.25)
        governor.tick()
        kills = [e for e in governor.events if e.kind == "oom-guard-kill"]
        if kills and live_at_kill is None:
            live_at_kill = kills[0].data["total_rss"]
        for job in list(governor.jobs.values()):
            proc = runner.processes.get(job.id)
            if job.state == "running" and proc is not None and proc.killed:
                governor._finish(job, {"rc": 137, "signal": 9, "cpu_s": proc.ran_s})
        pid = start_admitted(governor, runner, pid)
    assert [a for a, _ in runner.actions].count("freeze") >= 2
    assert live_at_kill is not None, "no kill: the oldest would have passed the budget"
    assert live_at_kill <= budget
    assert governor.peak_total_rss <= budget
    assert max(j.memory_kills for j in governor.jobs.values()) <= 1


def test_a_thawed_job_resumes_its_climb_in_the_projection(db: ProfileDB, tmp_path: Path) -> None:
    """A thaw clears a job's samples; until new ones show a rate, the guard projects the climb
    it was frozen in, so thawing several jobs at once cannot walk the total past the budget
    unseen."""
    from buildctl.process import TreeSample

    governor = fake_governor(db, tmp_path, clock=lambda: 10.0, budget_bytes=BUDGET, slots=2)
    governor.enqueue("a.o", "compile", "g++ 12", fingerprint="a", source_bytes=100)
    (job,) = governor.jobs.values()
    job.growth_at_freeze = 300.0 * MiB
    job.samples.append(TreeSample(t=9.9, rss=1 * GiB, cpu_s=1.0, io_bytes=0, major_faults=0))
    assert governor._live(job, 10.0).growth_bps == 300.0 * MiB
    for i in range(3):  # new samples show it flat now: they win
        job.samples.append(TreeSample(t=10.0 + i, rss=1 * GiB, cpu_s=1.0, io_bytes=0,
                                      major_faults=0))
    assert governor._live(job, 12.0).growth_bps == 0.0


def test_a_sibling_prediction_takes_the_peak_the_samples_missed(
    db: ProfileDB, tmp_path: Path
) -> None:
    """A short peak between two samples: the finished job's wait4 maxrss saw it, the sampler
    did not. Its never-measured sibling is predicted from what the job really reached."""
    runner = FakeRunner({"CMakeFiles/k.dir/a.cu.o": lambda t: 100 * MiB,
                         "CMakeFiles/k.dir/b.cu.o": lambda t: 100 * MiB})
    clock = [1000.0]
    governor = fake_governor(db, tmp_path, clock=lambda: clock[0], runner=runner,
                             budget_bytes=BUDGET, slots=1)
    for name in ("a", "b"):
        governor.enqueue(f"CMakeFiles/k.dir/{name}.cu.o", "compile", "nvcc 13.0",
                         fingerprint=name, source_bytes=500)
    first = next(j for j in governor.jobs.values() if j.state == "running")
    first.child_pid = 101
    runner.start(first.id, first.output)
    for _ in range(4):
        clock[0] += STEP_S
        runner.advance(STEP_S)
        governor.tick()
    assert first.peak_rss == 100 * MiB
    governor._finish(first, {"rc": 0, "cpu_s": 2.0, "maxrss": 300 * MiB})
    (second,) = [j for j in governor.jobs.values() if j is not first]
    assert second.prediction.source.startswith("sibling")
    assert second.prediction.bytes >= 300 * MiB


def test_a_job_slowed_by_its_neighbours_is_placed_by_its_cpu_progress(
    db: ProfileDB, tmp_path: Path
) -> None:
    """Its record peaked 8 s into a 10 s run that used 10 s of CPU. On a loaded machine it has
    run 10 s of wall but done 3 s of CPU: admission must still see the peak ahead of it, not
    behind it."""
    import dataclasses

    governor = fake_governor(db, tmp_path, clock=lambda: 1010.0, budget_bytes=BUDGET, slots=2)
    governor.enqueue("a.o", "compile", "g++ 12", fingerprint="a", source_bytes=100)
    (job,) = governor.jobs.values()
    curve = ((0.0, 100 * MiB), (7.9, 100 * MiB), (8.0, 2 * GiB), (8.5, 100 * MiB), (10.0, 0))
    job.prediction = dataclasses.replace(job.prediction, bytes=2 * GiB, source="exact",
                                         curve=curve, cpu_s=10.0)
    job.state, job.started_at, job.current_rss, job.cpu_s = "running", 1000.0, 100 * MiB, 3.0
    assert governor._running_envelope(job, 1010.0).peak_ahead() == 2 * GiB
    job.prediction = dataclasses.replace(job.prediction, cpu_s=0.0)  # no CPU record: wall only
    assert governor._running_envelope(job, 1010.0).peak_ahead() < 2 * GiB
