"""Predictions from schema-2 records as the governor writes them: the fallback chain per project,
censored runs (killed, frozen, interrupted) that only ever raise a prediction, cache hits that are
never measurements, and the thinned RSS curves that come with exact predictions."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildctl.govern.profiles import (
    DEFAULT_PRIORS,
    JobKey,
    ProfileDB,
    ProfileEntry,
    current_value,
    thin_curve,
)

M = 1024**2
GXX = "g++: g++ (Debian 12.2.0-14) 12.2.0"
CLANG = "clang++: Debian clang version 16.0.6"
OUT = "CMakeFiles/ops.dir/gen/heavy.cpp.o"
PRIOR = DEFAULT_PRIORS["compile"] // M


@dataclass(frozen=True)
class Run:
    """One finished run, oldest first in each table row."""

    mb: int
    output: str = OUT
    fingerprint: str = "1a2b3c4d"
    compiler: str = GXX
    project: str = "ops"
    censored: bool = False
    cache_hit: bool = False


def _entry(run: Run, at: float) -> ProfileEntry:
    return ProfileEntry(
        output=run.output, kind="compile", compiler=run.compiler, fingerprint=run.fingerprint,
        project=run.project, peak_rss_bytes=run.mb * M, wall_s=10.0, cpu_s=9.5,
        censored=run.censored, cache_hit=run.cache_hit, recorded_at=at,
    )


KEY = JobKey(OUT, "compile", GXX, "1a2b3c4d", "ops")
SIBLING = "CMakeFiles/ops.dir/gen/light.cpp.o"

# (runs oldest first, expected source, expected MiB, expected censored)
CASES = {
    "nothing known": ([], "prior", PRIOR, False),
    "one complete run": ([Run(100)], "exact", 100, False),
    "max of the last three complete runs": (
        [Run(500), Run(100), Run(110), Run(105)], "exact", 110, False),
    "cut short above the last complete run raises it": (
        [Run(100), Run(150, censored=True)], "exact", 150, True),
    "cut short below the last complete run never lowers it": (
        [Run(100), Run(80, censored=True)], "exact", 100, False),
    "every bound since the last complete run counts": (
        [Run(100), Run(140, censored=True), Run(120, censored=True)], "exact", 140, True),
    "a complete run after a cut-short one supersedes its bound": (
        [Run(300, censored=True), Run(100)], "exact", 100, False),
    "only cut short, below the prior: the prior": (
        [Run(150, censored=True)], "prior", PRIOR, True),
    "only cut short, above the prior: the bound": (
        [Run(2000, censored=True)], "prior", 2000, True),
    "only cut short, a heavier sibling in the target": (
        [Run(150, censored=True), Run(300, output=SIBLING)], "target", 300, True),
    "only cut short, above its sibling in the target": (
        [Run(500, censored=True), Run(300, output=SIBLING)], "target", 500, True),
    "other flags of the same output": ([Run(120, fingerprint="ffff0000")], "output", 120, False),
    "another compiler of the same output": ([Run(120, compiler=CLANG)], "output", 120, False),
    "only cut short, other flags measured lighter": (
        [Run(120, fingerprint="ffff0000"), Run(150, censored=True)], "output", 150, True),
    "only cut short, other flags measured heavier": (
        [Run(200, fingerprint="ffff0000"), Run(150, censored=True)], "output", 200, True),
    "a cache hit is not a measurement": (
        [Run(194), Run(9, cache_hit=True)], "exact", 194, False),
    "only cache hits: as if nothing were known": (
        [Run(9, cache_hit=True)], "prior", PRIOR, False),
    "a sibling in the same target": ([Run(300, output=SIBLING)], "target", 300, False),
    "a sibling built by another compiler is no target match": (
        [Run(300, output=SIBLING, compiler=CLANG)], "prior", PRIOR, False),
    "a cut-short sibling counts at its bound": (
        [Run(200, output=SIBLING), Run(400, output=SIBLING, censored=True)], "target", 400, False),
    "the same output in another project is not shared": (
        [Run(100, project="other")], "prior", PRIOR, False),
    "a sibling in another project is not shared": (
        [Run(300, output=SIBLING, project="other")], "prior", PRIOR, False),
    "a family needs three other outputs": (
        [Run(100, output="a/x1.cpp.o"), Run(200, output="b/x2.cpp.o")], "prior", PRIOR, False),
    "a family of four: its upper quartile": (
        [Run(mb, output=f"d{mb}/f.cpp.o") for mb in (100, 200, 300, 400)], "family", 375, False),
    "a family in another project is not shared": (
        [Run(mb, output=f"d{mb}/f.cpp.o", project="other") for mb in (100, 200, 300)],
        "prior", PRIOR, False),
}


@pytest.mark.parametrize("runs,source,mb,censored", CASES.values(), ids=CASES.keys())
def test_prediction_table(
    tmp_path: Path, runs: list[Run], source: str, mb: int, censored: bool
) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    for at, run in enumerate(runs, start=1):
        assert db.record(_entry(run, float(at)))
    prediction = db.predict(KEY)
    assert (prediction.source, prediction.bytes, prediction.censored) == (source, mb * M, censored)
    assert not db.warnings


def test_prediction_never_drops_after_a_run_is_cut_short(tmp_path: Path) -> None:
    """Killing a job at whatever it reached, over and over (the kill storm of a guard that
    records peak-at-kill), never makes its prediction smaller."""
    db = ProfileDB(tmp_path / "p.sqlite")
    db.record(_entry(Run(900), 1.0))
    previous = db.predict(KEY).bytes
    for at, reached in enumerate((300, 950, 200, 100), start=2):
        db.record(_entry(Run(reached, censored=True), float(at)))
        now = db.predict(KEY).bytes
        assert now >= previous
        previous = now
    assert previous == 950 * M


# (runs oldest first, expected bound in MiB): what in-build sibling guesses must not go under.
BOUNDS = {
    "no run cut short": ([Run(100)], 0),
    "cut short after the last complete run": ([Run(100), Run(80, censored=True)], 80),
    "superseded by a complete run": ([Run(300, censored=True), Run(100)], 0),
    "only cut short, the prior above it": ([Run(150, censored=True)], 150),
    "only cut short, other flags measured": (
        [Run(200, fingerprint="ffff0000"), Run(150, censored=True)], 150),
}


@pytest.mark.parametrize("runs,bound", BOUNDS.values(), ids=BOUNDS.keys())
def test_prediction_tells_the_bound_of_runs_cut_short(
    tmp_path: Path, runs: list[Run], bound: int
) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    for at, run in enumerate(runs, start=1):
        db.record(_entry(run, float(at)))
    prediction = db.predict(KEY)
    assert prediction.bound == bound * M
    assert prediction.bytes >= prediction.bound


def test_exact_prediction_brings_the_curve_of_its_heaviest_run(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    light = [(t * 0.5, 50 * M + t * M) for t in range(10)]
    spiky = [(t * 0.1, (400 if t == 150 else 60) * M) for t in range(300)]
    for at, (mb, curve) in enumerate(((60, light), (400, spiky)), start=1):
        db.record(_entry(Run(mb), float(at)).model_copy(update={"curve": curve}))
    prediction = db.predict(KEY)
    assert prediction.bytes == 400 * M and prediction.source == "exact"
    assert 3 <= len(prediction.curve) <= 64
    assert max(rss for _, rss in prediction.curve) == 400 * M  # the short spike survives
    assert (15.0, 400 * M) in prediction.curve
    # Fallbacks to other outputs carry no curve: it belongs to another job.
    other = db.predict(JobKey("CMakeFiles/ops.dir/gen/new.cpp.o", "compile", GXX, "", "ops"))
    assert other.source == "target" and other.curve == ()


def test_wall_and_cpu_share_come_from_complete_runs_only(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    db.record(ProfileEntry(output="s.o", kind="compile", compiler="cc", peak_rss_bytes=M,
                           wall_s=8.0, cpu_s=1.0, recorded_at=1.0))
    # A frozen run: long wall, little CPU; it says nothing of how the job uses a CPU.
    db.record(ProfileEntry(output="s.o", kind="compile", compiler="cc", peak_rss_bytes=2 * M,
                           wall_s=100.0, cpu_s=30.0, censored=True, recorded_at=2.0))
    prediction = db.predict(JobKey("s.o", "compile", "cc"))
    assert (prediction.bytes, prediction.wall_s, prediction.cpu_share) == (2 * M, 8.0, 0.25)


def test_latest_raises_a_cut_short_peak_and_skips_cache_hits(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    runs = [Run(100), Run(180, censored=True), Run(5, cache_hit=True),
            Run(70, output="only-cut.o", censored=True),
            Run(3, output="only-hit.o", cache_hit=True),
            Run(60, project="other")]
    for at, run in enumerate(runs, start=1):
        db.record(_entry(run, float(at)))
    latest = {(e.project, e.output): e for e in db.latest()}
    assert set(latest) == {("ops", OUT), ("ops", "only-cut.o"), ("other", OUT)}
    assert (latest["ops", OUT].peak_rss_bytes, latest["ops", OUT].censored) == (180 * M, True)
    assert latest["ops", "only-cut.o"].censored
    assert [e.output for e in db.latest("other")] == [OUT]


def test_a_record_with_a_glued_fingerprint_lands_in_its_columns(tmp_path: Path) -> None:
    """Schema-1 exports (and a governor from before JobKey) write "identity #fingerprint" as
    the compiler of a compile job; it is stored split, so JobKey predictions find it."""
    db = ProfileDB(tmp_path / "p.sqlite")
    db.record(ProfileEntry(output=SIBLING, kind="compile", compiler=f"{GXX} #0badf00d",
                           peak_rss_bytes=300 * M))
    p = db.predict(JobKey(OUT, "compile", GXX, "1a2b3c4d"))
    assert (p.source, p.bytes) == ("target", 300 * M)
    assert db.predict(JobKey(SIBLING, "compile", GXX, "0badf00d")).source == "exact"
    (entry,) = db.latest()
    assert (entry.compiler, entry.fingerprint) == (GXX, "0badf00d")


def test_a_run_with_nothing_measured_is_not_recorded(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    assert not db.record(ProfileEntry(output="x.o", kind="compile", compiler="cc",
                                      peak_rss_bytes=0))
    # A job too short for the sampler: the launcher's wait4 maxrss stands in.
    assert db.record(ProfileEntry(output="y.o", kind="compile", compiler="cc", peak_rss_bytes=0,
                                  wait4_maxrss_bytes=7 * M))
    assert db.predict(JobKey("y.o", "compile", "cc")).bytes == 7 * M
    assert db.predict(JobKey("x.o", "compile", "cc")).source == "prior"
    assert not db.warnings


@pytest.mark.parametrize("runs_newest_first,value", [
    ([], None),
    ([(100, False)], 100),
    ([(80, True), (100, False)], 100),
    ([(150, True), (120, True), (100, False), (900, True)], 150),
    ([(70, True), (60, True)], 70),
    ([(100, False), (500, True)], 100),
])
def test_current_value_of_one_output(runs_newest_first: list[tuple[int, bool]],
                                     value: int | None) -> None:
    assert current_value(runs_newest_first) == value


# -- thin_curve ---------------------------------------------------------------------------------


def _random_curve(seed: int, n: int) -> list[tuple[float, int]]:
    rng = random.Random(seed)
    t, rss, curve = 0.0, 10 * M, []
    for _ in range(n):
        t += rng.uniform(0.01, 0.3)
        rss = max(M, rss + rng.randint(-5 * M, 6 * M))
        if rng.random() < 0.01:
            curve.append((t, rss * 3))  # a short phase, as cicc/ptxas or g++'s GC produce
        else:
            curve.append((t, rss))
    return curve


@pytest.mark.parametrize("seed,n,max_points", [(1, 10, 64), (2, 64, 64), (3, 65, 64),
                                                (4, 5000, 64), (5, 300, 8), (6, 4, 3)])
def test_thin_curve_keeps_the_peak_the_ends_and_an_upper_envelope(
    seed: int, n: int, max_points: int
) -> None:
    curve = _random_curve(seed, n)
    before = list(curve)
    thin = thin_curve(curve, max_points)
    assert curve == before  # pure
    assert len(thin) == n if n <= max_points else 3 <= len(thin) <= max_points
    assert set(thin) <= set(curve)
    assert max(r for _, r in thin) == max(r for _, r in curve)
    assert [t for t, _ in thin] == sorted(t for t, _ in thin)
    assert thin[0] == curve[0] and thin[-1] == curve[-1]
    # Between two kept points no sample is higher than both: the shape is an envelope.
    for (t0, r0), (t1, r1) in itertools.pairwise(thin):
        assert all(r <= max(r0, r1) for t, r in curve if t0 < t < t1)


def test_thin_curve_of_samples_at_one_instant_and_of_nothing() -> None:
    assert thin_curve([]) == []
    same_time = [(1.0, r) for r in range(100)]
    thin = thin_curve(same_time, 10)
    assert len(thin) <= 10 and (1.0, 99) in thin
    with pytest.raises(ValueError):
        thin_curve(same_time, 2)
