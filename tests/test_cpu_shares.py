"""CPU shares end to end: the monitor reads run-queue waits from real processes, the profile DB
keeps them (and upgrades an older DB), the governor admits jobs that mostly wait beyond the
slot count, and the simulator predicts the same."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from test_governor_admission import Client, _governed, _run_hogs

from buildctl.govern.monitor import sample_tree
from buildctl.govern.profiles import JobKey, ProfileDB, ProfileEntry
from buildctl.govern.simulate import HostShape, SimJob, lower_bound, simulate

MiB = 1024**2


def test_monitor_sees_run_queue_wait_of_processes_sharing_one_cpu() -> None:
    # Three busy loops pinned to one CPU: each runs a third of the time and waits the rest.
    proc = subprocess.Popen(
        ["taskset", "-c", "0", "sh", "-c",
         "for i in 1 2 3; do (while :; do :; done) & done; wait"],
        start_new_session=True,
    )
    try:
        time.sleep(1.5)
        sample = sample_tree(proc.pid, time.monotonic())
        assert sample is not None
        loops = [p for p in sample.procs if p.pid != proc.pid]
        runq = sum(p.runq_s for p in sample.procs)
        cpu = sum(p.cpu_s for p in loops)
        # 3 x 1.5 s of wanting a CPU, 1.5 s of it served: about 3 s of waiting.
        assert runq > 1.5, (runq, cpu)
        assert runq > cpu
    finally:
        subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
        proc.wait(timeout=5)


def test_profile_db_keeps_run_queue_wait_and_predicts_the_share(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    db.record(ProfileEntry(output="sleepy.o", kind="compile", compiler="cc",
                           peak_rss_bytes=100 * MiB, wall_s=4.0, cpu_s=0.4))
    db.record(ProfileEntry(output="busy.o", kind="compile", compiler="cc",
                           peak_rss_bytes=100 * MiB, wall_s=4.0, cpu_s=1.0, runq_wait_s=2.5))
    assert db.predict(JobKey("sleepy.o", "compile", "cc")).cpu_share == 0.25
    # CPU-starved, not sleeping: a whole slot.
    assert db.predict(JobKey("busy.o", "compile", "cc")).cpu_share == 1.0
    # Another compiler or flags: the same output's runs still tell its share.
    assert db.predict(JobKey("sleepy.o", "compile", "cc", "1234")).cpu_share == 0.25
    assert db.predict(JobKey("unknown.o", "compile", "cc")).cpu_share == 1.0
    # A run that computed this time wins over an older sleepy one (the largest share of recent
    # runs: never lighter than any of them).
    db.record(ProfileEntry(output="sleepy.o", kind="compile", compiler="cc",
                           peak_rss_bytes=100 * MiB, wall_s=4.0, cpu_s=3.9))
    assert db.predict(JobKey("sleepy.o", "compile", "cc")).cpu_share == 1.0
    exported = {e.output: e for e in db.latest()}
    assert exported["busy.o"].runq_wait_s == 2.5
    db.close()


def test_profile_db_from_before_run_queue_waits_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE runs (id INTEGER PRIMARY KEY, output TEXT NOT NULL, kind TEXT NOT NULL,"
        " compiler TEXT NOT NULL, target TEXT NOT NULL, family TEXT NOT NULL,"
        " peak_rss INTEGER NOT NULL, wait4_rss INTEGER NOT NULL, wall_s REAL NOT NULL,"
        " cpu_s REAL NOT NULL, recorded_at REAL NOT NULL);"
        "INSERT INTO runs VALUES (1, 'old.o', 'compile', 'cc', '', '.o', 1000, 0, 4.0, 0.4, 1.0);"
    )
    conn.commit()
    conn.close()
    # Several builds opening the old DB at once (the upgrade runs under the write lock).
    with ThreadPoolExecutor(4) as pool:
        for other in list(pool.map(lambda _: ProfileDB(path), range(4))):
            other.close()
    db = ProfileDB(path)
    assert db.predict(JobKey("old.o", "compile", "cc")).cpu_share == 0.25
    db.record(ProfileEntry(output="new.o", kind="compile", compiler="cc",
                           peak_rss_bytes=1000, wall_s=4.0, cpu_s=1.0, runq_wait_s=3.0))
    assert db.predict(JobKey("new.o", "compile", "cc")).cpu_share == 1.0
    db.close()


def _admitted_after_gathering(tmp_path: Path, cpu_shares: bool, cpu_s: float,
                              runq_s: float) -> int:
    db = ProfileDB(tmp_path / f"p-{cpu_shares}-{cpu_s}.sqlite")
    for i in range(6):
        db.record(ProfileEntry(output=f"j{i}.o", kind="compile", compiler="cc",
                               peak_rss_bytes=50 * MiB, wall_s=4.0, cpu_s=cpu_s,
                               runq_wait_s=runq_s))
    options = {"budget_bytes": 4096 * MiB, "slots": 1, "cpu_shares": cpu_shares}
    with _governed(tmp_path, db, **options) as (gov, clients):
        clients.extend(Client(gov.opts.socket_path, f"j{i}.o") for i in range(6))
        time.sleep(1.2)  # past the gathering window; nothing finishes (the clients hold)
        return sum(1 for c in clients if c.go_at)


def test_governor_runs_four_waiting_jobs_on_one_slot(tmp_path: Path) -> None:
    assert _admitted_after_gathering(tmp_path, cpu_shares=True, cpu_s=0.4, runq_s=0.0) == 4


def test_governor_whole_slots_runs_one(tmp_path: Path) -> None:
    assert _admitted_after_gathering(tmp_path, cpu_shares=False, cpu_s=0.4, runq_s=0.0) == 1


def test_governor_gives_cpu_starved_jobs_a_whole_slot(tmp_path: Path) -> None:
    # 1 s on a CPU in 4 s, 2.9 s of them waiting for one: a compile on a busy machine.
    assert _admitted_after_gathering(tmp_path, cpu_shares=True, cpu_s=1.0, runq_s=2.9) == 1


def test_simulator_packs_waiting_jobs_like_the_governor() -> None:
    jobs = [SimJob(f"CMakeFiles/t.dir/j{i}.o", "compile", 50 * MiB, 4.0, cpu_s=0.4)
            for i in range(8)]
    shared = simulate(jobs, HostShape(cores=1, budget_bytes=4096 * MiB))
    whole = simulate(jobs, HostShape(cores=1, budget_bytes=4096 * MiB, whole_slots=True))
    assert shared.busy_peak_slots == 4 and shared.makespan_s == 8.0
    assert whole.busy_peak_slots == 1 and whole.makespan_s == 32.0
    # The slot term of the lower bound weighs jobs by their share too.
    assert lower_bound(jobs, 1, 4096 * MiB, 1) == 8.0
    assert lower_bound(jobs, 1, 4096 * MiB, 1, whole_slots=True) == 32.0
    # Memory still binds: admission packs to 97 % (policy.FREEZE_AT) of 160 MiB, room for three
    # 50 MiB jobs.
    tight = simulate(jobs, HostShape(cores=1, budget_bytes=160 * MiB))
    assert tight.busy_peak_slots == 3


def test_report_records_the_share_each_job_was_admitted_with(tmp_path: Path) -> None:
    """Real launchers: a.o's profile shows it mostly waiting, b.o is unknown. The report keeps
    the share each was admitted with (a replay needs it: the next run's times would say
    otherwise for b.o)."""
    db = ProfileDB(tmp_path / "p.sqlite")
    db.record(ProfileEntry(output="a.o", kind="other", compiler="cc",
                           peak_rss_bytes=50 * MiB, wall_s=4.0, cpu_s=0.4))
    report = _run_hogs(tmp_path, db, 4096, [("a.o", 20, 1.2), ("b.o", 20, 1.2)])
    shares = {j.output: j.cpu_share for j in report.jobs}
    assert shares == {"a.o": 0.25, "b.o": 1.0}
    assert all(j.cpu_s > 0 and j.runq_wait_s >= 0 for j in report.jobs)
