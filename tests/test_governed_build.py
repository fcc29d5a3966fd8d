"""`buildctl build` end to end with real processes: CMake, Ninja, g++, the launcher, the
governor. Jobs with known memory come from the memcc test compiler (allocates N MB, then g++)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import (
    FIXTURES,
    TreeSampler,
    build_memcc,
    buildctl_cmd,
    intervals_overlap,
    isolated_env,
    processes_mentioning,
    read_report,
    run_buildctl,
)

from buildctl import host

MiB = 1024**2
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def memcc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_memcc(tmp_path_factory.mktemp("memcc"))


def memjobs_args(
    build: Path, memcc: Path, *extra: str, count: int = 6, mb: int = 150, hold_ms: int = 1500
) -> list[str]:
    return [
        "build",
        "--source",
        str(FIXTURES / "memjobs"),
        "--build-dir",
        str(build),
        "--plain",
        *extra,
        "--",
        f"-DCMAKE_CXX_COMPILER={memcc}",
        f"-DMEMJOBS_COUNT={count}",
        f"-DMEMJOBS_MB={mb}",
        f"-DMEMJOBS_HOLD_MS={hold_ms}",
    ]


def governed_run(args: list[str], env: dict[str, str]) -> tuple[int, TreeSampler, str]:
    proc = subprocess.Popen(
        buildctl_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, _ = proc.communicate(timeout=600)
    sampler.stop()
    return proc.returncode, sampler, out


def test_budget_holds_and_jobs_run_concurrently_when_they_fit(tmp_path: Path, memcc: Path) -> None:
    env = isolated_env(tmp_path)
    budget = 400 * MiB
    rc, sampler, out = governed_run(
        memjobs_args(
            tmp_path / "b",
            memcc,
            "--mem-budget",
            "400M",
            "-j",
            "2",
            "--prior-rss",
            "190M",
            "--report",
            str(tmp_path / "r.json"),
        ),
        env,
    )
    assert rc == 0, out
    report = read_report(tmp_path / "r.json")
    compiles = [j for j in report["jobs"] if j["kind"] == "compile"]
    assert len(compiles) == 6
    # Independently sampled by this test, and sampled by buildctl: never above the budget.
    assert 0 < sampler.max_total <= budget
    assert report["peak_total_rss_bytes"] <= budget
    assert sampler.max_jobs == 2  # two 150 MB jobs fit in 400 MB: they ran side by side
    assert intervals_overlap(compiles)
    # Each job's measured peak: the sampled tree peak, cross-checked by wait4's lower bound.
    for job in compiles:
        assert 140 * MiB <= job["wait4_maxrss_bytes"] <= job["peak_rss_bytes"] + 8 * MiB
        assert job["status"] == "ok" and job["attempts"] == 1


def test_tight_budget_serialises_and_second_build_predicts_within_15_percent(
    tmp_path: Path, memcc: Path
) -> None:
    env = isolated_env(tmp_path)
    budget = 250 * MiB
    rc, sampler, out = governed_run(
        memjobs_args(
            tmp_path / "b",
            memcc,
            "--mem-budget",
            "250M",
            "-j",
            "2",
            "--prior-rss",
            "190M",
            "--report",
            str(tmp_path / "r1.json"),
            count=4,
        ),
        env,
    )
    assert rc == 0, out
    first = read_report(tmp_path / "r1.json")
    compiles = sorted((j for j in first["jobs"] if j["kind"] == "compile"),
                      key=lambda j: j["started_at_s"])
    # Nothing measured yet: two 190M guesses do not fit 250M, so the first two do not overlap;
    # later ones are predicted from their measured siblings.
    assert not intervals_overlap(compiles[:2])
    assert all(j["prediction_source"] != "prior" for j in compiles[2:])
    assert sampler.max_total <= budget
    # Second build from clean: predictions now come from the measured profile.
    subprocess.run(
        ["ninja", "-C", str(tmp_path / "b"), "-t", "clean"], check=True, capture_output=True
    )
    rc, _, out = governed_run(
        memjobs_args(
            tmp_path / "b",
            memcc,
            "--mem-budget",
            "250M",
            "-j",
            "2",
            "--report",
            str(tmp_path / "r2.json"),
            count=4,
        ),
        env,
    )
    assert rc == 0, out
    second = read_report(tmp_path / "r2.json")
    for job in second["jobs"]:
        assert job["prediction_source"] == "exact"
        # 15 %. The ~10 MB link is at least 6 MiB: its peak is wait4's largest process (ld,
        # ~10 MB) unless a 0.25 s sample happens to catch g++, collect2 and ld alive at once.
        tolerance = max(0.15 * job["peak_rss_bytes"], 6 * 1024 * 1024)
        assert abs(job["predicted_rss_bytes"] - job["peak_rss_bytes"]) <= tolerance, job


def test_real_gxx_build_then_plain_ninja_has_no_work(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    build = tmp_path / "b"
    result = run_buildctl(
        "build",
        "--source",
        str(FIXTURES / "cxxproj"),
        "--build-dir",
        str(build),
        "--plain",
        "--report",
        str(tmp_path / "r.json"),
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    demo = subprocess.run([str(build / "shapes_demo")], capture_output=True, text=True, check=True)
    assert demo.stdout.strip() == "14 5.0"
    report = read_report(tmp_path / "r.json")
    kinds = sorted(j["kind"] for j in report["jobs"])
    assert kinds == ["compile", "compile", "compile", "link", "link"]
    assert all(j["peak_rss_bytes"] > 1 * MiB for j in report["jobs"])
    plain = subprocess.run(["ninja", "-C", str(build)], capture_output=True, text=True, check=True)
    assert "no work to do" in plain.stdout
    # Without a governor the launcher execs the compiler directly: a plain rebuild works.
    (build / "CMakeFiles" / "shapes.dir" / "shapes.cpp.o").unlink()
    plain = subprocess.run(["ninja", "-C", str(build)], capture_output=True, text=True, check=True)
    assert "shapes.cpp.o" in plain.stdout


def test_compile_error_exits_1_with_the_compiler_message(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.21)\nproject(p CXX)\nadd_library(p STATIC bad.cpp)\n"
    )
    (src / "bad.cpp").write_text("int f() { return undeclared_thing; }\n")
    result = run_buildctl(
        "build",
        "--source",
        str(src),
        "--plain",
        "--report",
        str(tmp_path / "r.json"),
        env=isolated_env(tmp_path),
    )
    assert result.returncode == 1
    assert "undeclared_thing" in result.stdout
    assert "error: the build failed" in result.stdout
    report = read_report(tmp_path / "r.json")
    assert report["status"] == "failed"
    assert [j["status"] for j in report["jobs"]] == ["failed"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mem-budget", "banana"], "cannot read size"),
        (["--mem-budget", "10M"], "too small"),
        (["--source", "/nonexistent/dir"], "not a directory"),
        (["--source", "/tmp"], "no CMakeLists.txt"),
        (["--hang-after", "soon"], "cannot read duration"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_buildctl(
        "build", *args, "--build-dir", str(tmp_path / "b"), env=isolated_env(tmp_path)
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stdout + result.stderr


def test_job_above_budget_runs_alone_with_a_swap_warning(tmp_path: Path, memcc: Path) -> None:
    env = isolated_env(tmp_path)
    rc, _, out = governed_run(
        memjobs_args(
            tmp_path / "b",
            memcc,
            "--mem-budget",
            "120M",
            "-j",
            "2",
            "--prior-rss",
            "300M",
            "--report",
            str(tmp_path / "r.json"),
            count=3,
            mb=60,
            hold_ms=800,
        ),
        env,
    )
    assert rc == 0, out
    report = read_report(tmp_path / "r.json")
    assert any(e["kind"] == "exclusive" and "swap" in e["detail"] for e in report["events"])
    assert "run alone" in out
    compiles = [j for j in report["jobs"] if j["kind"] == "compile"]
    # A job predicted above the budget overlaps nothing; once one is measured, its siblings
    # are predicted from it (60 MB each) and may share the budget.
    alone = [j for j in compiles if j["predicted_rss_bytes"] > 120 * MiB]
    assert alone and all(j["exclusive"] for j in alone)
    for job in alone:
        assert not any(intervals_overlap([job, other]) for other in compiles if other is not job)
    assert any(j["prediction_source"].startswith("sibling") for j in compiles)


def test_outside_memory_hog_triggers_the_guard_and_the_build_still_succeeds(
    tmp_path: Path, memcc: Path
) -> None:
    env = isolated_env(tmp_path)
    avail = host.available_bytes()  # what the governor reads: the cgroup's headroom included
    hog_bytes = 3 * 1024**3
    if avail < hog_bytes + 4 * 1024**3:
        pytest.skip("needs ~7 GiB free RAM to stage an outside memory hog safely")
    # Marks crossed after 0.75 and 1.25 GiB of the hog: page-touching can run at only a few
    # hundred MB/s on a busy VM, and the critical mark must be crossed while jobs still run.
    low = avail - 768 * MiB
    critical = avail - 1280 * MiB
    args = memjobs_args(
        tmp_path / "b",
        memcc,
        "--mem-budget",
        "800M",
        "-j",
        "2",
        "--prior-rss",
        "320M",
        "--low-water",
        str(low),
        "--critical",
        str(critical),
        "--report",
        str(tmp_path / "r.json"),
        count=4,
        mb=200,
        hold_ms=30000,
    )
    proc = subprocess.Popen(
        buildctl_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    killed = threading.Event()

    def read_output() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("buildctl oom-guard-kill"):
                killed.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    # Once two jobs run, the hog holds the guard's own reading (host.available_bytes) between
    # 64 and 320 MiB under the critical mark, taking or giving back 32 MiB at a time, until the
    # guard has killed (or 90 s). It follows the reading, not a fixed size: other processes'
    # memory drifts during the test (a fixed 3 GiB hog crossed only the low-water mark on one
    # loaded CI run; on another, a hog that stopped once it was under the mark saw no kill,
    # likely because the host had drifted to where freeing the build's 2 x 200 MB would not
    # lift it, and there the guard rightly does not kill).
    _wait_for_jobs(proc.pid, ("memcc",), 2)
    release = tmp_path / "release-the-hog"
    readings = tmp_path / "hog-readings"
    hog = subprocess.Popen([
        sys.executable, "-c",
        "import os, time\n"
        "from buildctl import host\n"
        "chunks, seen = [], []\n"
        f"high, low = {critical - 64 * MiB}, {critical - 320 * MiB}\n"
        f"cap = {hog_bytes + 2 * 1024**3}\n"
        "end = time.time() + 90\n"
        f"while time.time() < end and not os.path.exists({str(release)!r}):\n"
        "    now = host.available_bytes()\n"
        "    seen.append(now)\n"
        "    if now > high and len(chunks) * 32 * 2**20 < cap and now > 2**30:\n"
        "        chunks.append(bytearray(b'1') * (32 * 2**20))\n"
        "    elif now < low and chunks:\n"
        "        chunks.pop()\n"
        "    else:\n"
        "        time.sleep(0.02)\n"
        f"open({str(readings)!r}, 'w').write(f'{{len(chunks)}} chunks; min {{min(seen)}}, "
        "last {seen[-1]}')\n",
    ])
    killed.wait(timeout=90)
    release.touch()
    hog.wait(timeout=60)
    proc.wait(timeout=600)
    reader.join(timeout=30)
    out = "".join(lines)
    assert proc.returncode == 0, out
    report = read_report(tmp_path / "r.json")
    kinds = [e["kind"] for e in report["events"]]
    assert "throttle" in kinds
    hog_saw = readings.read_text() if readings.exists() else "no readings"
    assert "oom-guard-kill" in kinds and "retry" in kinds, (
        f"critical {critical}, hog: {hog_saw}", report["events"])
    retried = [j for j in report["jobs"] if j["attempts"] > 1]
    assert retried and all(j["status"] == "ok" for j in report["jobs"])
    assert report["host_min_available_bytes"] < critical
    (tmp_path / "b" / "libmemjobs.so").stat()


def _wait_for_jobs(pid: int, names: tuple[str, ...], count: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            kids = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        running = 0
        for kid in kids:
            try:
                running += kid.name() in names
            except psutil.NoSuchProcess:
                continue
        if running >= count:
            return
        time.sleep(0.05)
    raise AssertionError("jobs never started")


def _assert_nothing_left(marker: str, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    left = processes_mentioning(marker)
    while left and time.time() < deadline:
        time.sleep(0.1)
        left = [
            p for p in processes_mentioning(marker) if p.is_running() and p.status() != "zombie"
        ]
    assert not left, [p.cmdline() for p in left]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_killing_buildctl_leaves_no_job_and_a_rerun_finishes(
    tmp_path: Path, memcc: Path, sig: signal.Signals
) -> None:
    env = isolated_env(tmp_path)
    build = tmp_path / "b"
    args = memjobs_args(
        build,
        memcc,
        "--mem-budget",
        "400M",
        "-j",
        "2",
        "--prior-rss",
        "150M",
        count=6,
        mb=50,
        hold_ms=3000,
    )
    proc = subprocess.Popen(
        buildctl_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _wait_for_jobs(proc.pid, ("memcc",), 2)
    time.sleep(3.5)  # let the first two finish so there is something to keep
    _wait_for_jobs(proc.pid, ("memcc",), 1)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    if sig != signal.SIGKILL:
        assert proc.returncode == 130, out
        assert "interrupted" in out
    _assert_nothing_left(str(build))
    objects_kept = list((build / "CMakeFiles" / "memjobs.dir" / "gen").glob("*.o"))
    assert objects_kept, "finished objects must survive the kill"
    rerun = subprocess.run(
        buildctl_cmd(*args), env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # Incremental: the kept objects were not rebuilt.
    rebuilt = rerun.stdout.count("Building CXX object")
    assert rebuilt <= 6 - len(objects_kept)
    assert (build / "libmemjobs.so").exists()
    assert not (build / ".buildctl" / "governor.sock").exists()


def test_report_schema(tmp_path: Path, memcc: Path) -> None:
    from buildctl.report import BuildReport

    env = isolated_env(tmp_path)
    rc, _, out = governed_run(
        memjobs_args(
            tmp_path / "b",
            memcc,
            "--mem-budget",
            "1G",
            "--report",
            str(tmp_path / "r.json"),
            count=2,
            mb=20,
            hold_ms=200,
        ),
        env,
    )
    assert rc == 0, out
    raw = read_report(tmp_path / "r.json")
    assert raw["schema"] == "buildctl.report/1"
    for key in (
        "budget_bytes",
        "wall_s",
        "peak_total_rss_bytes",
        "host_min_available_bytes",
        "jobs",
        "events",
    ):
        assert key in raw
    for key in (
        "output",
        "kind",
        "predicted_rss_bytes",
        "peak_rss_bytes",
        "wall_s",
        "cpu_s",
        "attempts",
        "status",
    ):
        assert key in raw["jobs"][0]
    assert BuildReport.read(tmp_path / "r.json").budget_bytes == 1024**3
    assert os.path.getsize(tmp_path / "r.json") > 0
