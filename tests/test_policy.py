"""The memory policy, table first: pure functions over plain data, no processes."""

from __future__ import annotations

import pytest

from buildctl.govern import policy
from buildctl.govern.policy import Envelope, LiveJob, Sibling

MiB = 1024**2
GiB = 1024**3

# A compile that peaks briefly at 4 GiB half-way through a 100 s run, ~1 GiB otherwise.
PEAKY: policy.Curve = ((0.0, 100 * MiB), (20.0, 1 * GiB), (45.0, 1 * GiB), (50.0, 4 * GiB),
                       (60.0, 4 * GiB), (65.0, 1 * GiB), (100.0, 1 * GiB))


# --- envelopes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "rss", "own", "expected_ahead"),
    [
        (0.0, 0, False, 4 * GiB),  # before the peak: the whole peak is still to come
        (40.0, 1 * GiB, False, 4 * GiB),
        (90.0, 1 * GiB, False, 1 * GiB),  # well past the peak: only the tail
        (90.0, 2 * GiB, False, 2 * GiB),  # heavier than its record: the live RSS holds
        (90.0, 2 * GiB, True, 2 * GiB),
        # A sibling's curve: above where the clock puts it is a heavier job, scaled (3x here).
        (1.0, 300 * MiB, False, 12 * GiB),
        # Its own curve: ahead of its record in time is not heavier. The remaining peak holds,
        # not the curve scaled by how far ahead it is.
        (1.0, 300 * MiB, True, 4 * GiB),
        (40.0, 3 * GiB, True, 4 * GiB),
        (40.0, 5 * GiB, True, 5 * GiB),  # above all its record still holds: heavier, scaled
    ],
)
def test_peak_ahead_follows_the_curve(
    elapsed: float, rss: int, own: bool, expected_ahead: int
) -> None:
    envelope = policy.running_envelope(PEAKY, 4 * GiB, rss, elapsed, own=own)
    assert envelope.peak_ahead() == expected_ahead


def test_progress_is_estimated_low_so_the_peak_is_not_missed() -> None:
    # At 62 s by the wall clock the job sits at the end of its peak; the margin keeps the peak
    # in view rather than trusting an exact position on a loaded machine.
    envelope = policy.running_envelope(PEAKY, 4 * GiB, 4 * GiB, 62.0)
    assert envelope.peak_ahead() == 4 * GiB


def test_cpu_progress_behind_wall_keeps_the_peak_ahead() -> None:
    # 90 s of wall but only 30 s of 100 s CPU: a starved job has not reached its peak yet.
    envelope = policy.running_envelope(PEAKY, 4 * GiB, 1 * GiB, 90.0, cpu_s=30.0,
                                       predicted_cpu_s=100.0)
    assert envelope.peak_ahead() == 4 * GiB


def test_jobs_without_curves_hold_max_of_prediction_and_live() -> None:
    assert policy.running_envelope((), 3 * GiB, 1 * GiB, 10.0).peak_ahead() == 3 * GiB
    assert policy.running_envelope((), 3 * GiB, 5 * GiB, 10.0).peak_ahead() == 5 * GiB


def test_staggered_peaks_fit_where_a_sum_of_peaks_does_not() -> None:
    """Two peaky jobs: one at 70 s (past its peak), one about to start. Their peaks do not
    meet, so under 6 GiB the new one fits; a sum of peaks (8 GiB) would say no."""
    running = [policy.running_envelope(PEAKY, 4 * GiB, 1 * GiB, 80.0)]
    new = policy.waiting_envelope(PEAKY, 4 * GiB)
    assert policy.fits_beside(running, new, 6 * GiB)
    assert 4 * GiB + 4 * GiB > 6 * GiB


def test_coinciding_peaks_do_not_fit() -> None:
    """Two jobs that start together peak together: 8 GiB does not fit 6 GiB."""
    running = [policy.running_envelope(PEAKY, 4 * GiB, 100 * MiB, 0.0)]
    new = policy.waiting_envelope(PEAKY, 4 * GiB)
    assert not policy.fits_beside(running, new, 6 * GiB)
    assert policy.fits_beside(running, new, 8 * GiB + 1)


def test_a_curveless_job_holds_its_floor_for_the_whole_horizon() -> None:
    steady = Envelope((), 0.0, 3 * GiB)
    assert policy.future_total([steady, policy.waiting_envelope(PEAKY, 4 * GiB)]) == 7 * GiB


def test_waiting_envelope_scales_a_curve_up_to_the_prediction() -> None:
    envelope = policy.waiting_envelope(PEAKY, 8 * GiB)
    assert envelope.peak_ahead() == 8 * GiB


# --- pressure ----------------------------------------------------------------------------------


def live(job_id: int, rss_gib: float, growth_mib_s: float = 0.0, started: float = 0.0,
         cpu: float = 10.0, **kw: object) -> LiveJob:
    return LiveJob(job_id, int(rss_gib * GiB), growth_mib_s * MiB, started, cpu, **kw)  # type: ignore[arg-type]


B = 16 * GiB

PRESSURE_TABLE = [
    # (case, jobs, expect_pause, expect_freeze, expect_thaw, expect_kill)
    ("plenty of room", [live(1, 4), live(2, 4, 50, 1)], False, (), (), None),
    # The old rule killed here: reservations 3 x 6 GiB = 18 GiB > 16 GiB, live only 9 GiB.
    ("sum of worst cases over budget, live far below", [live(1, 3), live(2, 3, 10, 1),
                                                       live(3, 3, 10, 2)], False, (), (), None),
    ("projected near budget pauses", [live(1, 7), live(2, 7.5, 50, 1)], True, (), (), None),
    ("growth into the budget freezes the cheapest growing job, not the oldest",
     [live(1, 6, 500, 0), live(2, 5, 500, 1), live(3, 4, 500, 2)], True, (3, 2), (), None),
    # Jobs on their own curves, only the projection at the mark: one freeze per tick, the next
    # tick re-projects (a real 16-core build froze seven at once, six thawed 2.8 s later).
    ("own curves into the budget: one freeze per tick",
     [live(1, 5, 0, 0, soon=int(6.5 * GiB), own_curve=True),
      live(2, 4.5, 0, 1, soon=6 * GiB, own_curve=True),
      live(3, 4, 0, 2, soon=int(5.5 * GiB), own_curve=True)], True, (3,), (), None),
    ("a job without its own curve among them: as many as it takes",
     [live(1, 5, 0, 0, soon=int(6.5 * GiB), own_curve=True),
      live(2, 4.5, 0, 1, soon=6 * GiB, own_curve=True),
      live(3, 4, 750, 2)], True, (3, 2), (), None),
    ("live memory at the freeze mark freezes as many as it takes",
     [live(1, 6, 500, 0), live(2, 5.6, 500, 1), live(3, 4, 500, 2)], True, (3, 2), (), None),
    # The ggml run on 16 cores: steps (new compiler phases) projected forward froze jobs at half
    # the budget for tens of seconds. Far from the budget a step is no trend.
    ("steps far from the budget neither pause nor freeze",
     [live(1, 4, 0, 0, recent_bps=2 * GiB), live(2, 4, 0, 1, recent_bps=2 * GiB),
      live(3, 3, 0, 2, recent_bps=2 * GiB)], False, (), (), None),
    ("a sustained climb into the budget freezes at any live level",
     [live(1, 4, 2000, 0), live(2, 4, 2000, 1), live(3, 3, 2000, 2)], True, (3, 2), (), None),
    ("a job's own curve passing the budget within the horizon freezes it",
     [live(1, 6, 0, 0), live(2, 4, 0, 1, soon=11 * GiB, own_curve=True)], True, (2,), (), None),
    ("its own curve rising, but not into the budget: no freeze, whatever its rate",
     [live(1, 6, 0, 0), live(2, 4, 3000, 1, soon=8 * GiB, peak_ahead=9 * GiB, own_curve=True)],
     False, (), (), None),
    ("over budget kills the least work per byte",
     [live(1, 6, 0, 0, cpu=100), live(2, 6, 0, 1, cpu=10), live(3, 5, 0, 2, cpu=50)],
     True, (), (), 2),
    ("a protected re-run is never the victim",
     [live(1, 6, 0, 0, cpu=100), live(2, 6, 0, 1, cpu=10, protected=True),
      live(3, 5, 0, 2, cpu=50)], True, (), (), 3),
    ("a lone job is never killed", [live(1, 17)], True, (), (), None),
    # Eight frozen at 1.76 GiB of 1.81 on a real build, the oldest growing on: the kill came a
    # sample after the budget was passed. Nothing left to freeze, live past the freeze mark,
    # the projection over the budget: kill before the budget is passed.
    ("nothing left to freeze, live past the mark, over within 0.5 s: kill before the budget",
     [live(1, 6, 1000, 0, cpu=100), live(2, 5.6, 0, 1, cpu=10, frozen=True),
      live(3, 4, 0, 2, cpu=50, frozen=True)], True, (), (), 2),
    # Over within the 2 s projection, not within KILL_HORIZON_S: the nvcc trace at 16 GiB
    # projected so and never passed the budget.
    ("nothing left to freeze, over in 2 s but not in 0.5 s: no kill yet",
     [live(1, 6, 600, 0, cpu=100), live(2, 5.6, 0, 1, cpu=10, frozen=True),
      live(3, 4, 0, 2, cpu=50, frozen=True)], True, (), (), None),
    ("nothing left to freeze, but live under the freeze mark: wait",
     [live(1, 6, 900, 0, cpu=100), live(2, 5.4, 0, 1, cpu=10, frozen=True),
      live(3, 4, 0, 2, cpu=50, frozen=True)], True, (), (), None),
    ("past the mark, but the projection fits the budget: no kill",
     [live(1, 6, 100, 0, cpu=100), live(2, 5.6, 0, 1, cpu=10, frozen=True),
      live(3, 4, 0, 2, cpu=50, frozen=True)], True, (), (), None),
    ("frozen job thaws when the others shrank",
     [live(1, 2, -100, 0), live(2, 3, 0, 1, frozen=True, peak_ahead=5 * GiB)],
     False, (), (2,), None),
    ("frozen job stays frozen while its growth would not fit",
     [live(1, 10, 0, 0), live(2, 4, 0, 1, frozen=True, peak_ahead=8 * GiB)],
     False, (), (), None),
    ("nothing else runs: the frozen job thaws whatever it may grow",
     [live(2, 4, 0, 1, frozen=True, peak_ahead=20 * GiB)], False, (), (2,), None),
]


@pytest.mark.parametrize(
    ("case", "jobs", "pause", "freeze", "thaw", "kill"), PRESSURE_TABLE,
    ids=[row[0] for row in PRESSURE_TABLE],
)
def test_pressure_actions(case: str, jobs: list[LiveJob], pause: bool, freeze: tuple[int, ...],
                          thaw: tuple[int, ...], kill: int | None) -> None:
    actions = policy.pressure_actions(jobs, B)
    assert bool(actions.pause) is pause, actions
    assert actions.freeze == freeze
    assert actions.thaw == thaw
    assert actions.kill == kill


def test_host_critical_kills_even_under_budget() -> None:
    jobs = [live(1, 2, 0, 0, cpu=100), live(2, 2, 0, 1, cpu=1)]
    actions = policy.pressure_actions(jobs, B, host_available=100 * MiB, low_water=1 * GiB,
                                      critical=512 * MiB)
    assert actions.kill == 2
    assert "critical" in actions.why


@pytest.mark.parametrize(
    ("available", "critical", "kills"),
    [
        (100 * MiB, 512 * MiB, True),  # the build's 4 GiB would lift the host: kill
        (100 * MiB, 4 * GiB + 100 * MiB, True),  # exactly enough
        (100 * MiB, 4 * GiB + 101 * MiB, False),  # not even all of it would: no kill helps
        (8 * GiB, 16 * GiB, False),  # `--critical 16G --force` on a smaller host
    ],
)
def test_host_critical_kills_only_where_a_kill_can_help(
    available: int, critical: int, kills: bool
) -> None:
    jobs = [live(1, 2, 0, 0, cpu=100), live(2, 2, 0, 1, cpu=1)]
    actions = policy.pressure_actions(jobs, B, host_available=available,
                                      low_water=critical + 1 * GiB, critical=critical)
    assert (actions.kill is not None) is kills
    assert actions.pause
    if not kills:
        assert "lower --critical" in actions.pause and "would not lift it" in actions.pause


def test_a_hopeless_critical_mark_still_kills_for_the_budget() -> None:
    jobs = [live(1, 9, 0, 0, cpu=100), live(2, 8, 0, 1, cpu=1)]  # 17 GiB live, B = 16 GiB
    actions = policy.pressure_actions(jobs, B, host_available=1 * GiB, low_water=64 * GiB,
                                      critical=32 * GiB)
    assert actions.kill == 2 and "budget" in actions.why


def test_host_low_water_pauses_without_killing() -> None:
    jobs = [live(1, 2), live(2, 2, 0, 1)]
    actions = policy.pressure_actions(jobs, B, host_available=700 * MiB, low_water=1 * GiB,
                                      critical=512 * MiB)
    assert actions.pause and actions.kill is None and not actions.freeze


@pytest.mark.parametrize(("kill_horizon_s", "kills"), [(0.1, False), (0.5, False), (2.0, True)])
def test_the_kill_ahead_looks_as_far_as_it_is_given(kill_horizon_s: float, kills: bool) -> None:
    """The horizon the guard passes (`kill_horizon`) decides: the same 600 MiB/s climb, 400 MiB
    under the budget, is no kill within 0.1 or 0.5 s and a kill within 2 s."""
    jobs = [live(1, 6, 600, 0, cpu=100), live(2, 5.6, 0, 1, cpu=10, frozen=True),
            live(3, 4, 0, 2, cpu=50, frozen=True)]  # 15.6 of 16 GiB, 600 MiB/s climbing
    actions = policy.pressure_actions(jobs, B, kill_horizon_s=kill_horizon_s)
    assert (actions.kill == 2) is kills, actions


@pytest.mark.parametrize(("interval", "horizon"), [(0.02, 0.04), (0.05, 0.1), (0.25, 0.5),
                                                   (0.5, 0.5), (5.0, 0.5)])
def test_the_kill_horizon_is_two_periods_at_most_half_a_second(interval: float,
                                                               horizon: float) -> None:
    assert policy.kill_horizon(interval) == pytest.approx(horizon)


def test_without_freezing_nothing_is_frozen() -> None:
    jobs = [live(1, 6, 500, 0), live(2, 5, 500, 1), live(3, 4, 500, 2)]
    assert policy.pressure_actions(jobs, B, can_freeze=False).freeze == ()


def test_growth_is_capped_by_what_the_profile_says_is_ahead() -> None:
    capped = live(1, 6, 1000, peak_ahead=6 * GiB + 100 * MiB)
    assert policy.projected_total([capped]) == 6 * GiB + 100 * MiB
    unknown = live(1, 6, 1000)
    assert policy.projected_total([unknown]) == 6 * GiB + 2000 * MiB


@pytest.mark.parametrize(
    ("samples", "rate"),
    [
        ([], 0.0),
        ([(0.0, 0)], 0.0),
        ([(0.0, 0), (1.0, 100)], 0.0),  # two samples are no trend
        ([(0.0, 0), (1.0, 100), (2.0, 300)], 100.0),  # young: halves of 1 s, 100 and 200 B/s
        ([(0.0, 0), (1.0, 0), (2.0, 300)], 0.0),  # young, and a step
        ([(0.0, 0), (1.5, 150), (3.0, 450)], 100.0),  # the slower of 100 and 200 B/s
        ([(0.0, 0), (1.0, 100), (2.0, 200), (3.0, 300)], 100.0),  # a steady climb
        ([(0.0, 0), (0.5, 0), (1.0, 0), (1.5, 0), (2.0, 0), (2.5, 900), (3.0, 900)], 0.0),  # a step
        ([(0.0, 1000), (1.5, 500), (3.0, 0)], -1000 / 3),
    ],
)
def test_growth_rate(samples: list[tuple[float, int]], rate: float) -> None:
    assert policy.growth_rate(samples, window_s=1.5) == pytest.approx(rate)


def test_recent_rate_counts_a_step() -> None:
    step = [(0.0, 0), (0.5, 0), (1.0, 0), (1.5, 0), (2.0, 0), (2.5, 900), (3.0, 900)]
    assert policy.growth_rate(step, window_s=1.5) == 0.0
    assert policy.recent_rate(step, window_s=1.5) == pytest.approx(600.0)
    assert policy.recent_rate([(0.0, 0)]) == 0.0
    assert policy.recent_rate([(0.0, 0), (0.5, 100)], window_s=1.5) == pytest.approx(200.0)


def test_a_job_with_its_own_curve_is_projected_by_the_curve_not_its_rate() -> None:
    """Far from the budget a job running within its record grows as its curve says (the phase
    steps of nvcc are in it), whatever its rate; near the budget the rate counts too."""
    job = live(1, 1, 3000, peak_ahead=3 * GiB, soon=int(1.5 * GiB), own_curve=True)
    assert policy.projected_total([job]) == int(1.5 * GiB)
    assert policy.projected_total([job], steps=True) == 3 * GiB
    above_record = live(1, 4, 500, peak_ahead=4 * GiB, soon=3 * GiB, own_curve=True,
                        predicted=3 * GiB)
    assert policy.projected_total([above_record]) == 4 * GiB + 1000 * MiB


def test_a_job_on_its_recorded_plateau_is_not_projected_past_it() -> None:
    """The ggml run on 16 cores (second build): five jobs reached ~320 MiB in 2.5 s, at their
    recorded plateaus, live 86 % of the budget. Their recent rates, projected uncapped, froze four
    of them for up to 47 s. Within its prediction a job grows no further than its profile says;
    only a job above its predicted peak has outgrown it."""
    plateau = [live(i, 3, 0, i, recent_bps=150 * MiB, peak_ahead=3 * GiB, soon=3 * GiB,
                    own_curve=True, predicted=3 * GiB) for i in range(1, 6)]
    actions = policy.pressure_actions(plateau, B)
    assert actions.freeze == () and actions.kill is None
    outgrown = [*plateau[:4], live(5, 3.5, 0, 5, recent_bps=150 * MiB, peak_ahead=int(3.5 * GiB),
                                   own_curve=True, predicted=3 * GiB)]
    assert policy.projected_total(outgrown, steps=True) == int(15.5 * GiB) + 300 * MiB


def test_near_the_budget_a_step_freezes() -> None:
    """Live 14 of 16 GiB and the youngest job just jumped: no sustained rate yet, but near
    the budget any rise counts. Far from the budget the same jump only pauses admission."""
    near = [live(1, 8, 0, 0), live(2, 6, 0, 1, recent_bps=2 * GiB)]
    assert policy.pressure_actions(near, B).freeze == (2,)
    far = [live(1, 4, 0, 0), live(2, 4, 0, 1, recent_bps=2 * GiB)]
    assert policy.pressure_actions(far, B).freeze == ()


# --- retry and censoring -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predicted", "reached", "kills", "expected"),
    [
        (1 * GiB, 3 * GiB, 1, policy.Rerun(int(3 * GiB * 1.1), True)),
        (5 * GiB, 3 * GiB, 1, policy.Rerun(5 * GiB, True)),  # never below its prediction
        (1 * GiB, 3 * GiB, 2, None),  # killed twice cannot happen: no second memory retry
    ],
)
def test_after_memory_kill(predicted: int, reached: int, kills: int,
                           expected: policy.Rerun | None) -> None:
    assert policy.after_memory_kill(predicted, reached, kills) == expected


@pytest.mark.parametrize(
    ("status", "censored"),
    [("ok", False), ("guard", True), ("hang", True), ("interrupted", True)],
)
def test_censored_record(status: str, censored: bool) -> None:
    assert policy.censored_record(status, 123) == (123, censored)


# --- siblings ----------------------------------------------------------------------------------


def sib(peak_mib: int, size: int = 40_000, directory: str = "CMakeFiles/k.dir",
        family: str = ".cu", finished: bool = True, compiler: str = "nvcc",
        kind: str = "compile") -> Sibling:
    return Sibling(compiler, kind, directory, family, size, peak_mib * MiB, finished)


SIBLING_TABLE = [
    ("no siblings", [], None),
    ("only running siblings say nothing yet", [sib(900, finished=False)], None),
    ("one finished sibling, with a margin for the spread", [sib(800)], (1200, "sibling-dir")),
    ("upper quartile of finished siblings, margin / 4", [sib(100), sib(200), sib(300), sib(400)],
     (450, "sibling-dir")),
    ("a running sibling raises the estimate", [sib(300), sib(900, finished=False)],
     (900, "sibling-dir")),
    ("size scaling, capped at 2x", [sib(300, size=17_000)], (900, "sibling-dir")),
    ("size scaling down, floored at 0.5x", [sib(300, size=400_000)], (225, "sibling-dir")),
    ("an include shell's size says nothing", [sib(300, size=2_000)], (450, "sibling-dir")),
    ("other directory, same family", [sib(700, directory="CMakeFiles/other.dir")],
     (1050, "sibling")),
    ("another compiler is no sibling", [sib(700, compiler="g++")], None),
    ("a link is no sibling of a compile", [sib(700, kind="link")], None),
    ("another family is no sibling", [sib(700, family=".cpp")], None),
]


@pytest.mark.parametrize(("case", "siblings", "expected"), SIBLING_TABLE,
                         ids=[row[0] for row in SIBLING_TABLE])
def test_sibling_prediction(case: str, siblings: list[Sibling],
                            expected: tuple[int, str] | None) -> None:
    guess = policy.sibling_prediction(sib(0), siblings)
    if expected is None:
        assert guess is None
    else:
        assert guess is not None
        assert (guess[0], guess[1]) == (expected[0] * MiB, expected[1])


@pytest.mark.parametrize(("slots", "limit"), [(1, 2), (2, 2), (8, 2), (16, 2), (24, 3), (64, 8)])
def test_unknown_family_limit(slots: int, limit: int) -> None:
    assert policy.unknown_family_limit(slots) == limit


@pytest.mark.parametrize(("slots", "vouching", "limit"),
                         [(16, 0, 2), (16, 1, 9), (16, 2, 16), (64, 2, 22), (16, -1, 2)])
def test_each_vouching_job_lets_more_of_its_family_start(slots: int, vouching: int,
                                                         limit: int) -> None:
    assert policy.unknown_family_limit(slots, vouching) == limit


def _curve(*points: tuple[float, int]) -> policy.Curve:
    return tuple((t, mb * MiB) for t, mb in points)


# ggml-like: peaks at 330 MiB within 2 s, then sits lower (cicc) for the rest of its run.
LIGHT = _curve((0.2, 57), (0.9, 207), (1.6, 330), (2.4, 202), (3.8, 175), (5.5, 176), (6.2, 176))
RESERVED = 921 * MiB  # the capped prior at 16 GiB over 16 slots

VOUCH_TABLE: list[tuple[str, policy.Curve, int, bool]] = [
    ("light, quiet 4.6 s since its high", LIGHT, RESERVED, True),
    ("light, but quiet only 3.9 s", LIGHT[:-1], RESERVED, False),
    ("its high above half its reservation", LIGHT, 600 * MiB, False),
    # nvcc-like: each phase drops and sets a new high within 2.8 s (j02 of the nvcc trace).
    ("phase drop, then a new high", _curve((0.4, 95), (2.1, 231), (2.5, 39), (4.1, 226),
                                           (4.5, 55), (4.9, 247), (6.2, 240)), RESERVED, False),
    ("still climbing", _curve((1.0, 100), (3.0, 200), (5.0, 300), (7.0, 400)), RESERVED, False),
    # Within RAMP_NEW_HIGH of its high is no new high: a flat top vouches.
    ("flat at its high", _curve((1.0, 300), (3.0, 310), (5.5, 312)), RESERVED, True),
    # Quiet for RAMP_QUIET_S is not enough late in a long run: 5 s of 17 is under 30 %.
    ("long run, high 5 s ago", _curve((1.0, 100), (12.0, 300), (17.0, 280)), RESERVED, False),
    ("long run, high 6 s ago", _curve((1.0, 100), (10.0, 300), (16.0, 280)), RESERVED, True),
    ("no samples", (), RESERVED, False),
    ("no memory seen", _curve((1.0, 0), (9.0, 0)), RESERVED, False),
    ("no reservation", LIGHT, 0, False),
]


def test_vouches_counts_its_age_past_the_last_sample() -> None:
    """A step curve (the simulator's) has no sample for every moment: its age comes apart."""
    sparse = _curve((1.0, 300), (2.0, 150))
    assert not policy.vouches(sparse, RESERVED)
    assert not policy.vouches(sparse, RESERVED, 4.9)
    assert policy.vouches(sparse, RESERVED, 5.0)


@pytest.mark.parametrize(("case", "curve", "reserved", "expected"), VOUCH_TABLE,
                         ids=[row[0] for row in VOUCH_TABLE])
def test_vouches(case: str, curve: policy.Curve, reserved: int, expected: bool) -> None:
    assert policy.vouches(curve, reserved) is expected


def _prefixes(curve: list[list[float]]) -> list[policy.Curve]:
    points = tuple((float(t), int(rss)) for t, rss in curve)
    return [points[:k] for k in range(1, len(points) + 1)]


def test_real_traces_vouch_for_light_families_only() -> None:
    """On the recorded 16-core builds (bench/traces), at a 16 GiB budget over 16 slots: every
    ggml template instance vouches for its family within 12 s; no prefix of any heavy nvcc
    job (2.8-6.3 GiB at its peak) ever does."""
    import json
    from pathlib import Path

    traces = Path(__file__).resolve().parent.parent / "bench" / "traces"
    light = json.loads((traces / "ggml-cuda-sm90.json").read_text())["jobs"]
    heavy = json.loads((traces / "nvcc-template-20.json").read_text())["jobs"]
    for job in light:
        first = next((p[-1][0] for p in _prefixes(job["rss"]) if policy.vouches(p, RESERVED)),
                     None)
        assert first is not None and first <= 12.0, (job["name"], first)
    for job in heavy:
        assert not any(policy.vouches(p, RESERVED) for p in _prefixes(job["rss"])), job["name"]


def test_peaks_that_follow_one_another_within_the_horizon_are_not_summed() -> None:
    """Six jobs at their start, each with its own curve peaking at a different moment of the
    next two seconds (the ggml replay runs jobs 5x faster than the real host, so a 2 s horizon
    spans a third of a job): summed piece by piece they fit; summing each job's own maximum
    over the horizon froze two jobs at 53 MiB live."""
    jobs = [live(i, 0.01, 0, i, own_curve=True, soon=3 * GiB,
                 soon_path=tuple(3 * GiB if k == i else int(0.5 * GiB) for k in range(8)))
            for i in range(6)]
    assert policy.projected_total(jobs) == 3 * GiB + 5 * int(0.5 * GiB)
    assert policy.pressure_actions(jobs, B).freeze == ()
    meeting = [live(i, 0.01, 0, i, own_curve=True, soon=3 * GiB, soon_path=(3 * GiB,) * 8)
               for i in range(6)]
    assert policy.projected_total(meeting) == 18 * GiB
    assert policy.pressure_actions(meeting, B).freeze


def test_expected_path_pieces() -> None:
    curve = ((0.0, 0), (1.0, 100), (2.0, 300), (3.0, 50))
    assert policy.expected_path(curve, 0.0, 2.0, steps=2) == (100, 300)
    assert policy.expected_path(curve, 2.0, 2.0, steps=2) == (300, 50)  # RSS holds till 3.0
    assert policy.expected_path((), 0.0, 2.0) == ()


def test_a_peak_shorter_than_the_grid_step_is_not_missed() -> None:
    """A 2 s job with a 0.2 s peak of 600 MiB beside a 500 MiB job that holds for 63 s, under
    1000 MiB: the grid's 49 points are 1.4 s apart, wider than the short job's blur, and must
    not step over its peak."""
    long_hold = policy.waiting_envelope(((0.0, 500 * MiB), (63.0, 500 * MiB)), 500 * MiB)
    short_peak = policy.waiting_envelope(((0.0, 10 * MiB), (1.0, 10 * MiB), (1.05, 600 * MiB),
                                          (1.2, 600 * MiB), (1.25, 10 * MiB), (2.0, 10 * MiB)),
                                         600 * MiB)
    assert not policy.fits_beside([long_hold], short_peak, 1000 * MiB)


def test_a_frozen_job_holds_what_it_will_still_reach() -> None:
    """Frozen near the end of its curve, a job would seem to finish within a second; stopped,
    it holds its remaining peak until it is thawed (the plan-validate build admitted a
    451 MiB job beside a frozen one on the moving curve, and passed the budget)."""
    curve = ((0.0, 100 * MiB), (5.0, 451 * MiB), (9.0, 491 * MiB), (10.0, 0))
    moving = policy.running_envelope(curve, 491 * MiB, 451 * MiB, 9.0)
    held = policy.held_envelope(moving)
    assert moving.at(2.0) == 0
    assert held.at(2.0) == held.at(100.0) == 491 * MiB


def test_ramped_limits_count_only_the_jobs_that_vouch_per_family() -> None:
    votes = [("cu", True), ("cu", False), ("cu", True), ("cpp", False)]
    assert policy.ramped_limits(16, votes) == {"cu": 2 + 2 * policy.RAMP_PER_VOUCH, "cpp": 2}
    assert policy.ramped_limits(16, []) == {}
