"""Shared helpers for tests that run real builds (no mocks of the OS)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def build_memcc(dest: Path) -> Path:
    """Compile the memjobs test compiler (allocates a known amount, then execs g++)."""
    exe = dest / "memcc"
    if not exe.exists():
        subprocess.run(
            ["gcc", "-O1", "-o", str(exe), str(FIXTURES / "memjobs" / "memcc.c")], check=True
        )
    return exe


def buildctl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "buildctl.cli", *args]


def run_buildctl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
):
    return subprocess.run(
        buildctl_cmd(*args), capture_output=True, text=True, env=env, timeout=timeout,
        check=False, cwd=cwd,
    )


def isolated_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["BUILDCTL_PROFILE_DB"] = str(tmp / "profiles.sqlite")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def read_report(path: Path) -> dict:
    return json.loads(path.read_text())


def is_launcher(proc: psutil.Process) -> bool:
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    # `python -I -S .../buildctl/govern/launcher.py` from CMake; `-m buildctl.govern.launcher`
    return "buildctl.govern.launcher" in cmd or "buildctl/govern/launcher.py" in cmd


class TreeSampler(threading.Thread):
    """Samples, independently of buildctl, the summed RSS of the job processes under `pid`
    (everything but buildctl itself, ninja and the launchers)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.max_total = 0
        self.max_jobs = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                procs = psutil.Process(self.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                return
            total = 0
            jobs = 0
            for proc in procs:
                try:
                    name = proc.name()
                    if name in ("ninja", "cmake") or is_launcher(proc):
                        continue
                    rss = proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                if name in ("memcc", "cc1plus"):
                    jobs += 1
            self.max_total = max(self.max_total, total)
            self.max_jobs = max(self.max_jobs, jobs)
            time.sleep(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if text in cmd and proc.pid != os.getpid():
            found.append(proc)
    return found


def intervals_overlap(jobs: list[dict]) -> bool:
    spans = sorted((j["started_at_s"], j["started_at_s"] + j["wall_s"]) for j in jobs)
    return any(b[0] < a[1] - 0.05 for a, b in itertools.pairwise(spans))


def fake_governor(db: Any, tmp_path: Path, *, clock: Any, runner: Any = None,
                  available: int = 1 << 50, **options: Any) -> Any:
    """A Governor on the fake runner, a test's clock and `available` host memory (endless by
    default), with no start-up gathering, host watermarks or hang detection unless `options`
    say otherwise."""
    from buildctl.govern.governor import Governor, GovernorOptions
    from buildctl.govern.runner import FakeRunner

    settings: dict[str, Any] = dict(
        socket_path=tmp_path / "unused.sock", build_dir=tmp_path, low_water_bytes=0,
        critical_bytes=0, gather_quiet_s=0.0, gather_max_s=0.0, hang_after_s=1e9,
    )
    settings.update(options)
    return Governor(GovernorOptions(**settings), db, runner=runner or FakeRunner({}),
                    clock=clock, available=lambda: available)


def start_admitted(governor: Any, runner: Any, last_pid: int) -> int:
    """Give every newly admitted job of a fake-runner governor a pid and start it on the
    runner, as its launcher would; returns the last pid handed out."""
    for job in governor.jobs.values():
        if job.state == "running" and job.child_pid is None:
            last_pid += 1
            job.child_pid = last_pid
            runner.start(job.id, job.output)
    return last_pid


def tiny_cmake_project(tmp_path: Path) -> Path:
    """A one-file shared library CMake project under `tmp_path/src`."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.cpp").write_text("int a() { return 1; }\n")
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.21)\nproject(p CXX)\nadd_library(p SHARED a.cpp)\n"
    )
    return src
