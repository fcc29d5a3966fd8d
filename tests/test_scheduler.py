"""The admission policy, exhaustively, without processes."""

from __future__ import annotations

import itertools
import random

import pytest

from buildctl.govern.scheduler import Running, Waiting, decide, reserved_total

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
    # 300 fits with 100 running; then 200 does not; 50 backfills.
    assert d.admit == (2,) or d.admit == (2, 1)
    assert d.admit[0] == 2
    assert 3 not in d.admit


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


def test_keeps_cpu_busy_when_something_fits() -> None:
    # Work conservation: with free slots and a job that fits, something is admitted.
    for sizes in itertools.product([50, 150, 300], repeat=3):
        waiting = [w(i, s) for i, s in enumerate(sizes)]
        d = decide(waiting, [], budget=320 * M, slots=2)
        assert d.admit, sizes
