"""The governor's admission at start-up and under capped priors, with a real governor in this
process: raw protocol clients for the gathering window, real launchers and processes that hold
known memory for the budget overrun check."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import ROOT, fake_governor, start_admitted

from buildctl.govern.governor import Governor, GovernorOptions
from buildctl.govern.profiles import ProfileDB, ProfileEntry
from buildctl.report import BuildReport

MiB = 1024**2


def _governor(tmp_path: Path, db: ProfileDB, **options: object) -> Governor:
    opts = GovernorOptions(
        socket_path=tmp_path / "gov.sock",
        build_dir=tmp_path,
        sample_interval_s=0.1,
        **options,  # type: ignore[arg-type]
    )
    gov = Governor(opts, db)
    gov.start()
    return gov


class Client:
    """One launcher's side of the protocol, by hand: admit, then wait for `go`."""

    def __init__(self, path: Path, output: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.output = output
        self.go_at: float | None = None
        msg = {
            "op": "admit",
            "output": output,
            "kind": "compile",
            "argv": ["true", "-c", "x.c"],
            "cwd": "/",
            "pid": os.getpid(),
            "env": {},
        }
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        threading.Thread(target=self._wait_go, daemon=True).start()

    def _wait_go(self) -> None:
        data = b""
        while b"\n" not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                return
            data += chunk
        if json.loads(data.split(b"\n", 1)[0]).get("op") == "go":
            self.go_at = time.monotonic()

    def close(self) -> None:
        self.sock.close()


@contextmanager
def _governed(
    tmp_path: Path, db: ProfileDB, **options: object
) -> Iterator[tuple[Governor, list[Client]]]:
    """A running governor and a list for the clients a test opens; closes all of them, the
    governor and the profile DB after the test, however it ends."""
    gov = _governor(tmp_path, db, **options)
    clients: list[Client] = []
    try:
        yield gov, clients
    finally:
        for client in clients:
            client.close()
        gov.stop()
        db.close()


def test_the_first_admission_waits_for_the_largest_job_to_register(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "profiles.sqlite")
    for output, mb in (("small-1.o", 30), ("small-2.o", 40), ("big.o", 600)):
        db.record(
            ProfileEntry(
                output=output, kind="compile", compiler="cc", peak_rss_bytes=mb * MiB, wall_s=1.0
            )
        )
    with _governed(tmp_path, db, budget_bytes=1024 * MiB, slots=1) as (gov, clients):
        # The small jobs' launchers register first, the big one 50 ms later (ninja started them
        # together; Python start-up order is luck). One slot: it must go to the big job.
        clients.append(Client(gov.opts.socket_path, "small-1.o"))
        clients.append(Client(gov.opts.socket_path, "small-2.o"))
        time.sleep(0.05)
        started = time.monotonic()
        clients.append(Client(gov.opts.socket_path, "big.o"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(c.go_at for c in clients):
            time.sleep(0.01)
        time.sleep(0.2)
        admitted = [c.output for c in clients if c.go_at]
        assert admitted == ["big.o"]
        # ...after the quiet period, not much later.
        waited = clients[2].go_at - started  # type: ignore[operator]
        assert 0.05 < waited < 1.0


def test_gathering_is_only_at_start_up(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "profiles.sqlite")
    options = {"budget_bytes": 4096 * MiB, "slots": 4, "gather_quiet_s": 0.3,
               "gather_max_s": 0.3}
    with _governed(tmp_path, db, **options) as (gov, clients):
        clients.append(Client(gov.opts.socket_path, "a.o"))
        time.sleep(0.6)
        assert clients[0].go_at is not None  # held for the window, then admitted
        late = Client(gov.opts.socket_path, "b.o")
        clients.append(late)
        sent = time.monotonic()
        deadline = sent + 5
        while late.go_at is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert late.go_at is not None and late.go_at - sent < 0.25  # no second window


def _hog(
    sock: Path, cwd: Path, output: str, mb: int, hold_s: float, delay_s: float = 0.0,
    ramp_s: float = 0.0,
) -> subprocess.Popen[str]:
    """A job that holds `mb` MiB for `hold_s` seconds, after `delay_s` seconds holding little;
    with `ramp_s` it climbs to `mb` in 16 steps over that time, as a compiler grows."""
    code = (
        f"import time; time.sleep({delay_s}); block = []\n"
        f"for _ in range(16 if {ramp_s} else 1):\n"
        f"    block.append(bytearray(b'1') * (({mb} << 20) // (16 if {ramp_s} else 1)))\n"
        f"    time.sleep({ramp_s} / 16)\n"
        f"time.sleep({hold_s})"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "buildctl.govern.launcher",
            "--socket",
            str(sock),
            "--",
            sys.executable,
            "-c",
            code,
            "-o",
            output,
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_hogs(
    tmp_path: Path,
    db: ProfileDB,
    budget_mib: int,
    hogs: list[tuple[str, int, float]] | list[tuple[str, int, float, float]]
    | list[tuple[str, int, float, float, float]],
    **opts: object,
) -> BuildReport:
    """One governed 'build' of memory hogs (output, MB held, seconds[, delay]), 2 slots; closes
    the DB.
    Every hog must succeed; returns the governor's report."""
    gov = _governor(tmp_path, db, budget_bytes=budget_mib * MiB, slots=2, **opts)
    try:
        procs = [_hog(gov.opts.socket_path, tmp_path, *hog) for hog in hogs]
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        gov.stop()
        db.close()
    assert [p.returncode for p in procs] == [0] * len(hogs), outs
    report = BuildReport(budget_bytes=budget_mib * MiB, slots=2)
    gov.fill_report(report)
    return report


def test_unknown_jobs_that_outgrow_the_budget_together_are_frozen_not_killed(
    tmp_path: Path,
) -> None:
    # Budget 450 MiB, 2 slots, nothing measured: the 1 GiB prior is capped at half of what
    # admission packs (97 % of the budget), so the two unknown jobs start together; each climbs
    # to 260 MiB over 2 s, as a compiler does, together over the budget. The guard sees the
    # total heading for the budget and freezes the younger one while the older finishes, then
    # resumes it: no work thrown away. (A jump faster than the sampling period cannot be frozen
    # in time; that is what the one memory kill per job is for.)
    db = ProfileDB(tmp_path / "profiles.sqlite")
    report = _run_hogs(tmp_path, db, 450, [("a.o", 260, 2.0, 0.0, 2.0),
                                           ("b.o", 260, 2.0, 0.0, 2.0)], cap_priors=True)
    jobs = {j.output: j for j in report.jobs}
    assert all(j.status == "ok" and j.attempts == 1 for j in jobs.values()), jobs
    assert not [e for e in report.events if e.kind == "oom-guard-kill"]
    frozen = [e.output for e in report.events if e.kind == "freeze"]
    thawed = [e.output for e in report.events if e.kind == "thaw"]
    assert frozen and set(frozen) == set(thawed)
    assert jobs[frozen[0]].frozen_s > 0


@pytest.mark.parametrize("share", [False, True])
def test_unknown_jobs_share_the_budget_only_when_asked(tmp_path: Path, share: bool) -> None:
    """Budget 1.5 GiB, 2 slots, nothing measured, two 40 MiB jobs. By default each is predicted
    at the conservative 1 GiB prior, so they run one after the other; with share_priors the
    prior is capped at 768 MiB and they run together."""
    db = ProfileDB(tmp_path / "profiles.sqlite")
    report = _run_hogs(tmp_path, db, 1536, [("a.o", 40, 1.0), ("b.o", 40, 1.0)], cap_priors=share)
    first, second = sorted(report.jobs, key=lambda j: j.started_at_s)
    overlapped = second.started_at_s < first.started_at_s + first.wall_s - 0.2
    assert overlapped is share, [(j.output, j.started_at_s, j.wall_s) for j in report.jobs]
    expected = int(1536 * MiB * 0.97) // 2 if share else 1024 * MiB
    assert {j.predicted_rss_bytes for j in report.jobs} == {expected}


def test_a_job_above_its_measured_prediction_is_held_not_killed_while_memory_lasts(
    tmp_path: Path,
) -> None:
    """A profile recorded with other flags predicts a.o at 60 MiB; this time it holds 150 MiB
    from the start, while b.o (measured at 300 MiB) holds little for a second, then its
    300 MiB: 450 MiB together, over the 400 MiB budget. The old rule killed a.o on the sum of
    reservations while the live total was ~160 MiB. Now the guard acts on the live total and
    its growth: b.o is frozen as it grows toward the budget, a.o finishes, b.o resumes."""
    db = ProfileDB(tmp_path / "profiles.sqlite")
    gov = _governor(tmp_path, db, budget_bytes=400 * MiB, slots=2)
    try:
        for output, mb in (("a.o", 60), ("b.o", 300)):
            proc = _hog(gov.opts.socket_path, tmp_path, output, mb, 0.3)
            assert proc.wait(timeout=60) == 0, proc.communicate()
    finally:
        gov.stop()
    report = _run_hogs(tmp_path, db, 400, [("a.o", 150, 2.0), ("b.o", 300, 1.0, 1.0)])
    jobs = {j.output: j for j in report.jobs}
    assert all(j.status == "ok" for j in jobs.values()), jobs
    # b.o's own curve says its rise is coming: it is frozen before it allocates. (On a loaded
    # machine a sample can still come late; then one kill, never two, is the price.)
    # Which of the two started first decides which one is held (the oldest always runs).
    frozen = {e.output for e in report.events if e.kind == "freeze"}
    kills = [e for e in report.events if e.kind == "oom-guard-kill"]
    assert frozen or kills  # the overrun was acted on, by a freeze when the samples allow
    assert frozen <= {e.output for e in report.events if e.kind == "thaw"}
    assert all(j.memory_kills <= 1 for j in jobs.values())


def test_a_kill_happens_at_most_once_and_the_rerun_is_protected(tmp_path: Path) -> None:
    """Two measured jobs that each fill most of the budget, growing at once: freezing one
    cannot stop the other passing the budget beside it, so one is killed, once, and re-run
    protected after the other; the build still succeeds."""
    db = ProfileDB(tmp_path / "profiles.sqlite")
    report = _run_hogs(tmp_path, db, 300, [("a.o", 250, 1.5), ("b.o", 250, 1.5)],
                       cap_priors=True)
    jobs = {j.output: j for j in report.jobs}
    assert all(j.status == "ok" for j in jobs.values())
    assert all(j.memory_kills <= 1 and j.attempts <= 2 for j in jobs.values())
    kills = [e.output for e in report.events if e.kind == "oom-guard-kill"]
    assert len(kills) == len(set(kills))


# --- marks the host can never meet (--low-water / --critical with --force) -------------------

GiB = 1024**3


def _drive_marks(tmp_path: Path, **marks: int) -> tuple[Governor, int, dict[str, int]]:
    """Four 2 s jobs of 100 MiB on 2 slots, on a host with 8 GiB available that a mark (given
    with --force) says is short of memory for good: (governor, most jobs at once, memory kills
    per output). Fails if the build does not finish."""
    from buildctl.govern.runner import FakeRunner

    outputs = [f"CMakeFiles/p.dir/u{i}.cpp.o" for i in range(4)]
    runner = FakeRunner({out: (lambda t: 100 * MiB) for out in outputs})
    clock = [1000.0]
    db = ProfileDB(tmp_path / "profiles.sqlite")
    governor = fake_governor(db, tmp_path, clock=lambda: clock[0], runner=runner,
                             available=8 * GiB, budget_bytes=4 * GiB, slots=2,
                             sample_interval_s=0.25, **marks)
    governor.tick()  # the sampler's first tick, before the launchers arrive (start-up gathering)
    for out in outputs:
        governor.enqueue(out, "compile", "g++ 12")
    most, kills, pid = 0, dict.fromkeys(outputs, 0), 100
    for _ in range(400):
        most = max(most, sum(1 for j in governor.jobs.values() if j.state == "running"))
        pid = start_admitted(governor, runner, pid)
        if all(j.state == "done" for j in governor.jobs.values()):
            break
        clock[0] += 0.25
        runner.advance(0.25)
        governor.tick()
        for job in [j for j in governor.jobs.values() if j.state == "running" and j.child_pid]:
            proc = runner.processes[job.id]
            if proc.killed:
                kills[job.output] += 1
                governor._finish(job, {"rc": 137, "signal": 9, "cpu_s": proc.ran_s})
            elif proc.ran_s >= 2.0:
                governor._finish(job, {"rc": 0, "cpu_s": proc.ran_s, "maxrss": 100 * MiB})
    else:
        pytest.fail(f"the build never finished: {[e.detail for e in governor.events][-5:]}")
    db.close()
    return governor, most, kills


def test_a_low_water_mark_above_the_host_runs_one_job_at_a_time_not_never(
    tmp_path: Path,
) -> None:
    """`--low-water 100G --force` on a smaller host once waited forever with nothing running:
    the pause can only be lifted by running jobs, so with none running the build goes on one
    job at a time, and says why it is paused."""
    governor, most, kills = _drive_marks(tmp_path, low_water_bytes=16 * GiB)
    assert all(r.status == "ok" for r in governor.finished) and len(governor.finished) == 4
    assert most == 1
    assert sum(kills.values()) == 0
    pauses = [e.detail for e in governor.events if e.kind == "throttle"]
    assert pauses and "low-water" in pauses[0], pauses


def test_a_critical_mark_above_the_host_kills_nothing_and_says_why(tmp_path: Path) -> None:
    """`--critical 100G --force` once killed the same job 21 times, and later each job once:
    no kill can lift 8 GiB available above a 16 GiB mark, so none is made. The build finishes
    (one job at a time, the low-water mark being above the host too), and the pause names the
    real cause and the fix."""
    governor, most, kills = _drive_marks(tmp_path, low_water_bytes=32 * GiB,
                                         critical_bytes=16 * GiB)
    assert all(r.status == "ok" for r in governor.finished) and len(governor.finished) == 4
    assert sum(kills.values()) == 0, kills
    assert not [e for e in governor.events if e.kind == "oom-guard-kill"]
    assert most == 1
    pauses = [e.detail for e in governor.events if e.kind == "throttle"]
    assert any("would not lift it" in p and "lower --critical" in p for p in pauses), pauses
