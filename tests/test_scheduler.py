"""The admission policy, exhaustively, without processes."""

from __future__ import annotations

import itertools
import random

import pytest

from buildctl.govern.scheduler import (
    GATHER_MAX_S,
    GATHER_QUIET_S,
    MIN_CPU_SHARE,
    Running,
    Waiting,
    capped_prior,
    cpu_share,
    decide,
    gather_hold_s,
    reserved_total,
)

M = 1024**2


def w(i: int, mb: int, t: float = 0.0) -> Waiting:
    return Waiting(i, mb * M, t)


def r(i: int, mb: int, rss_mb: int = 0, exclusive: bool = False) -> Running:
    return Running(i, mb * M, rss_mb * M, exclusive)


def test_admits_while_budget_and_slots_allow() -> None:
    d = decide([w(1, 100), w(2, 100), w(3, 100)], [], budget=250 * M, slots=4)
    assert len(d.admit) == 2


def test_slots_limit_even_when_memory_is_plenty() -> None:
    d = decide([w(i, 10) for i in range(5)], [], budget=10_000 * M, slots=2)
    assert len(d.admit) == 2


def test_largest_that_fits_goes_first_then_backfill() -> None:
    d = decide([w(1, 50), w(2, 300), w(3, 200)], [r(9, 100)], budget=400 * M, slots=4)
    # 300 fits beside the 100 running, and then the budget is full: neither 200 nor 50 fits.
    assert d.admit == (2,)
    roomier = decide([w(1, 50), w(2, 300), w(3, 200)], [r(9, 100)], budget=460 * M, slots=4)
    # With 60 MiB more, the 50 MiB job backfills behind the largest; 200 still does not fit.
    assert roomier.admit == (2, 1)


def test_reserved_uses_live_rss_when_above_prediction() -> None:
    running = [r(9, 100, rss_mb=350)]
    assert reserved_total(running) == 350 * M
    d = decide([w(1, 100)], running, budget=400 * M, slots=4)
    assert d.admit == ()
    assert "memory" in d.reason


def test_oversized_job_runs_alone_when_idle() -> None:
    d = decide([w(1, 900), w(2, 10)], [], budget=500 * M, slots=4)
    assert d.admit == (1,) and d.exclusive == (1,)


def test_oversized_job_drains_the_machine_first() -> None:
    d = decide([w(1, 900), w(2, 10)], [r(9, 100)], budget=500 * M, slots=4)
    assert d.admit == ()
    assert "draining" in d.reason


def test_nothing_starts_beside_an_exclusive_job() -> None:
    d = decide([w(2, 1)], [r(1, 900, exclusive=True)], budget=500 * M, slots=4)
    assert d.admit == ()


def test_paused_admits_nothing() -> None:
    d = decide([w(1, 1)], [], budget=500 * M, slots=4, paused=True)
    assert d.admit == () and "paused" in d.reason


def test_long_waiting_large_job_stops_backfill() -> None:
    waiting = [w(1, 300, t=0.0), w(2, 50, t=1.0)]
    running = [r(9, 200)]
    early = decide(waiting, running, budget=400 * M, slots=4, now=10.0, max_bypass_s=60)
    late = decide(waiting, running, budget=400 * M, slots=4, now=100.0, max_bypass_s=60)
    assert early.admit == (2,)
    assert late.admit == ()


@pytest.mark.parametrize("seed", range(200))
def test_random_states_never_overcommit(seed: int) -> None:
    rng = random.Random(seed)
    budget = rng.randint(100, 2000) * M
    slots = rng.randint(1, 8)
    running = [
        r(100 + i, rng.randint(1, 600), rng.randint(0, 700)) for i in range(rng.randint(0, 4))
    ]
    waiting = [w(i, rng.randint(1, 2500), rng.random()) for i in range(rng.randint(0, 10))]
    d = decide(waiting, running, budget, slots, now=rng.random())
    predicted = {x.job_id: x.predicted for x in waiting}
    added = sum(predicted[i] for i in d.admit)
    assert len(running) + len(d.admit) <= max(slots, len(running))
    if d.exclusive:
        assert d.admit == d.exclusive and not running and len(d.admit) == 1
    else:
        assert reserved_total(running) + added <= budget or not d.admit
        if d.admit:
            assert reserved_total(running) + added <= budget
    assert len(set(d.admit)) == len(d.admit)


# --- CPU shares ------------------------------------------------------------------------------


def ws(i: int, mb: int, cpu: float, t: float = 0.0) -> Waiting:
    return Waiting(i, mb * M, t, cpu)


def rs(i: int, mb: int, cpu: float) -> Running:
    return Running(i, mb * M, 0, False, cpu)


@pytest.mark.parametrize(
    ("cpu_s", "wall_s", "runq_s", "share"),
    [
        (None, 10.0, 0.0, 1.0),  # never measured
        (0.0, 10.0, 0.0, 1.0),  # no CPU recorded (e.g. a remote run): no evidence
        (9.5, 10.0, 0.0, 1.0),  # a compile
        (5.0, 10.0, 0.0, 1.0),  # half the time on a CPU: still a whole slot
        (4.0, 10.0, 0.0, 0.4),  # mostly waiting
        (0.3, 4.0, 0.0, MIN_CPU_SHARE),  # memcc-like: holds memory and sleeps
        (0.1, 0.5, 0.0, 1.0),  # too short to tell
        (3.0, 10.0, 6.0, 1.0),  # a compile on an overloaded machine: waited for a CPU
        (1.4, 5.2, 1.8, 0.41),  # a sleepy job run beside too many: not busier for that
        (4.0, 10.0, 9.0, 1.0),  # runq wait over-sampled: never more than a whole slot
        (20.0, 10.0, 0.0, 1.0),  # inner parallelism
    ],
)
def test_cpu_share_from_a_measured_run(
    cpu_s: float | None, wall_s: float, runq_s: float, share: float
) -> None:
    assert cpu_share(cpu_s, wall_s, runq_s) == pytest.approx(share)


def test_waiting_jobs_share_slots() -> None:
    # Four jobs that mostly wait fit in one slot; the fifth needs the other one.
    d = decide([ws(i, 10, 0.25) for i in range(10)], [], budget=10_000 * M, slots=2)
    assert len(d.admit) == 8
    d = decide([ws(i, 10, 0.25) for i in range(3)], [rs(9, 10, 1.0)], budget=10_000 * M, slots=2)
    assert len(d.admit) == 3


def test_whole_slot_job_is_not_squeezed_into_a_fraction() -> None:
    # 0.5 of a slot is left: the compile (1.0) waits, the waiting job (0.25) backfills.
    running = [rs(8, 10, 1.0), rs(9, 10, 0.5)]
    d = decide([ws(1, 500, 1.0), ws(2, 10, 0.25)], running, budget=10_000 * M, slots=2)
    assert d.admit == (2,)
    assert "CPU" in d.reason


def test_cpu_blocked_large_job_stops_backfill_after_the_bypass_window() -> None:
    running = [rs(8, 10, 1.0), rs(9, 10, 0.5)]
    waiting = [ws(1, 500, 1.0, t=0.0), ws(2, 10, 0.25, t=1.0)]
    assert decide(waiting, running, 10_000 * M, 2, now=10.0, max_bypass_s=60).admit == (2,)
    assert decide(waiting, running, 10_000 * M, 2, now=100.0, max_bypass_s=60).admit == ()


def test_memory_still_binds_waiting_jobs() -> None:
    d = decide([ws(i, 300, 0.25) for i in range(8)], [], budget=1000 * M, slots=2)
    assert len(d.admit) == 3


@pytest.mark.parametrize("seed", range(200))
def test_random_shares_never_overcommit_slots_or_memory(seed: int) -> None:
    rng = random.Random(seed)
    budget = rng.randint(100, 2000) * M
    slots = rng.randint(1, 4)
    shares = [MIN_CPU_SHARE, 0.4, 1.0]
    running = [
        rs(100 + i, rng.randint(1, 600), rng.choice(shares)) for i in range(rng.randint(0, 5))
    ]
    waiting = [ws(i, rng.randint(1, 900), rng.choice(shares), rng.random()) for i in range(12)]
    d = decide(waiting, running, budget, slots, now=rng.random())
    share = {x.job_id: x.cpu for x in waiting}
    predicted = {x.job_id: x.predicted for x in waiting}
    used = sum(x.cpu for x in running)
    if d.admit and not d.exclusive:
        assert used + sum(share[i] for i in d.admit) <= slots + 1e-9
        assert reserved_total(running) + sum(predicted[i] for i in d.admit) <= budget
    assert len(running) + len(d.admit) <= max(len(running), int(slots / MIN_CPU_SHARE))


def test_keeps_cpu_busy_when_something_fits() -> None:
    # Work conservation: with free slots and a job that fits, something is admitted.
    for sizes in itertools.product([50, 150, 300], repeat=3):
        waiting = [w(i, s) for i, s in enumerate(sizes)]
        d = decide(waiting, [], budget=320 * M, slots=2)
        assert d.admit, sizes


# --- start-up gathering ----------------------------------------------------------------------


def test_no_launcher_yet_means_no_hold() -> None:
    assert gather_hold_s(5.0, None, None) == 0.0


def test_holds_until_launchers_stop_registering() -> None:
    # First launcher at 1.0 s, the latest at 1.05 s: hold until 1.05 + quiet.
    assert gather_hold_s(1.05, 1.0, 1.05, quiet_s=0.1, max_s=0.5) == pytest.approx(0.1)
    assert gather_hold_s(1.10, 1.0, 1.05, quiet_s=0.1, max_s=0.5) == pytest.approx(0.05)
    assert gather_hold_s(1.15, 1.0, 1.05, quiet_s=0.1, max_s=0.5) == 0.0
    assert gather_hold_s(9.0, 1.0, 1.05, quiet_s=0.1, max_s=0.5) == 0.0


def test_a_steady_stream_of_launchers_holds_at_most_max_s() -> None:
    # A launcher every 50 ms never leaves 100 ms of quiet: the cap ends the hold.
    first = 2.0
    for k in range(1, 20):
        now = first + 0.05 * k
        hold = gather_hold_s(now, first, now, quiet_s=0.1, max_s=0.5)
        assert now + hold <= max(now, first + 0.5) + 1e-9
    assert gather_hold_s(first + 0.5, first, first + 0.5, quiet_s=0.1, max_s=0.5) == 0.0


def test_default_window_is_short() -> None:
    assert 0 < GATHER_QUIET_S <= GATHER_MAX_S <= 0.5
    assert gather_hold_s(0.0, 0.0, 0.0) == pytest.approx(GATHER_QUIET_S)


def test_gathered_queue_starts_the_largest_jobs_first() -> None:
    # What gathering buys: the small early arrivals do not take the slots from the big job.
    early = [w(1, 30, t=0.00), w(2, 140, t=0.02), w(3, 140, t=0.03)]
    first_come = decide(early[:2], [], budget=768 * M, slots=2)
    assert first_come.admit == (2, 1)  # without gathering: whoever registered first
    gathered = decide([*early, w(4, 580, t=0.2)], [], budget=768 * M, slots=2)
    assert gathered.admit == (4, 2)


# --- priors under a small budget -------------------------------------------------------------


def test_prior_is_capped_at_one_slots_share_of_the_budget() -> None:
    assert capped_prior(1024 * M, 768 * M, 2) == 384 * M
    assert capped_prior(1024 * M, 64 * 1024 * M, 8) == 1024 * M  # a big budget keeps it
    assert capped_prior(1024 * M, 768 * M, 0) == 768 * M  # slots < 1 count as one
    assert capped_prior(1024 * M, 0, 2) == 1


def test_capped_priors_let_a_first_build_use_every_slot() -> None:
    # Unknown jobs under 768 MiB with 2 slots: the 1 GiB prior is above the budget (each job
    # ran alone); capped at 384 MiB two of them start together.
    uncapped = decide([w(1, 1024), w(2, 1024)], [], budget=768 * M, slots=2)
    assert uncapped.admit == (1,) and uncapped.exclusive == (1,)
    prior = capped_prior(1024 * M, 768 * M, 2) // M
    capped = decide([w(1, prior), w(2, prior), w(3, prior)], [], budget=768 * M, slots=2)
    assert capped.admit == (1, 2) and capped.exclusive == ()


def test_a_job_grown_past_its_capped_prior_blocks_new_admissions() -> None:
    # Reserved = max(predicted, live RSS): the grown job keeps a third one out.
    running = [r(1, 384, rss_mb=600), r(2, 100, rss_mb=100)]
    assert decide([w(3, 100)], running, budget=768 * M, slots=3).admit == ()




def _unknown(i: int) -> Waiting:
    return Waiting(i, 100 * M, float(i), unknown_group="g")


def test_unknown_family_limit_per_family_overrides_the_default() -> None:
    """Two jobs of an unmeasured family run; the default slow start (2) admits no third, a
    family ramped to 5 (policy.unknown_family_limit with vouching jobs) admits three more,
    and another family keeps the default."""
    running = [Running(0, 100 * M, 50 * M, unknown_group="g"),
               Running(1, 100 * M, 50 * M, unknown_group="g")]
    waiting = [_unknown(i) for i in range(2, 8)]
    slow = decide(waiting, running, 10_000 * M, 16, unknown_limit=2)
    assert slow.admit == () and slow.reason.startswith("learning")
    ramped = decide(waiting, running, 10_000 * M, 16, unknown_limit=2, unknown_limits={"g": 5})
    assert ramped.admit == (2, 3, 4)
    other = decide([Waiting(i, 100 * M, float(i), unknown_group="h") for i in range(2, 8)],
                   running, 10_000 * M, 16, unknown_limit=2, unknown_limits={"g": 5})
    assert other.admit == (2, 3)


def test_the_longest_recorded_job_goes_first_then_the_largest() -> None:
    """One slot, two recorded jobs: the 40 s one starts before a larger 10 s one (the longest
    job bounds the build); jobs with no record follow, largest first."""
    short_large = Waiting(1, 900 * M, 0.0, curve=((0.0, M), (10.0, 900 * M)))
    long_small = Waiting(2, 300 * M, 1.0, curve=((0.0, M), (40.0, 300 * M)))
    unknown_large = Waiting(3, 950 * M, 0.0)
    assert decide([short_large, long_small, unknown_large], [], 4000 * M, 1).admit == (2,)
    assert decide([short_large, long_small, unknown_large], [], 4000 * M, 3).admit == (2, 1, 3)
    assert decide([unknown_large, w(4, 100)], [], 4000 * M, 1).admit == (3,)
