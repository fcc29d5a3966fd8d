"""Chaos: a real g++ build of 12 small TUs, SIGKILLed again and again at random moments — a
compiler, a launcher, ninja or buildctl itself. After every kill nothing of the build may
survive, no object finished before may need rebuilding, and finally one uninterrupted build
must succeed and equal a clean build bit for bit."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from fixtures.faults.kit import build_args, env_for, find_child, wait_gone

pytestmark = pytest.mark.slow
UNITS = 12
COMPILERS = ("c++", "g++", "cc1plus", "as", "collect2", "ld")

UNIT = """#include <algorithm>
#include <numeric>
#include <string>
#include <vector>
namespace {{
template <int N> struct Fib {{ static constexpr long v = Fib<N - 1>::v + Fib<N - 2>::v; }};
template <> struct Fib<1> {{ static constexpr long v = 1; }};
template <> struct Fib<0> {{ static constexpr long v = 0; }};
}}
std::string unit_{i}(int x) {{
  std::vector<std::vector<int>> table({mod});
  for (int i = 0; i < x; ++i) table[i % {mod}].push_back(i * {i});
  std::string out;
  for (auto &v : table) out += std::to_string(std::accumulate(v.begin(), v.end(), 0L));
  std::vector<long> fibs{{Fib<{fib}>::v, Fib<20>::v + {i}}};
  std::sort(fibs.begin(), fibs.end());
  return out + std::to_string(fibs.front());
}}
"""


def _project(src: Path) -> list[Path]:
    (src / "src").mkdir(parents=True)
    files = []
    for i in range(UNITS):
        path = src / "src" / f"unit{i:02d}.cpp"
        path.write_text(UNIT.format(i=i, mod=3 + i, fib=25 + i))
        files.append(path)
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.21)\nproject(chaos CXX)\nset(CMAKE_CXX_STANDARD 17)\n"
        "file(GLOB units ${CMAKE_CURRENT_SOURCE_DIR}/src/*.cpp)\n"
        "add_library(chaos SHARED ${units})\n"
    )
    return files


def _dirty(build: Path) -> set[str]:
    """Outputs ninja would (re)build now (a dry run executes nothing)."""
    out = subprocess.run(["ninja", "-C", str(build), "-n", "-d", "explain"], capture_output=True,
                         text=True, check=True).stderr
    return {line.split(" is dirty")[0].split()[-1] for line in out.splitlines()
            if line.startswith("ninja explain: ") and " is dirty" in line}


def _victims(root: psutil.Process, kind: str) -> list[psutil.Process]:
    if kind == "buildctl":
        return [root]
    found = []
    for proc in root.children(recursive=True):
        try:
            name = proc.name()
            cmd = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        launcher = "buildctl.govern.launcher" in cmd or "buildctl/govern/launcher.py" in cmd
        if (kind == "compiler" and name in COMPILERS and not launcher) or (
            kind == "launcher" and launcher and name != "sh"  # not ninja's `sh -c` wrapper
        ) or (kind == "ninja" and name == "ninja"):
            found.append(proc)
    return found


def _objects(build: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (build / "CMakeFiles" / "chaos.dir").rglob("*.o")}


def _exports(lib: Path) -> str:
    return subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                          text=True, check=True).stdout


ATTEMPTS = 3  # per round: a build can end before the kill moment comes


def _kill_one(proc: subprocess.Popen[bytes], kind: str, delay: float,
              rng: random.Random) -> str | None:
    """After `delay`, SIGKILL one running process of `kind` under the build; what was killed,
    or None when the build ended first."""
    root = psutil.Process(proc.pid)
    find_child(proc.pid, lambda p: p.name() == "ninja")
    time.sleep(delay)  # the random kill moment, not a wait for state
    deadline = time.time() + 2.0
    while time.time() < deadline and proc.poll() is None:
        candidates = _victims(root, kind)
        if candidates:
            victim = rng.choice(candidates)
            try:
                what = f"{kind} {victim.name()}[{victim.pid}]"
                victim.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                continue
            return what
        time.sleep(0.02)
    return None


def test_random_sigkills_lose_nothing_leave_nothing_and_the_result_equals_a_clean_build(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("BUILDCTL_CHAOS_SEED", time.time_ns() % 100000))
    rng = random.Random(seed)
    src = tmp_path / "src"
    sources = _project(src)
    build = tmp_path / "b"
    env = env_for(tmp_path)
    args = build_args(src, build, "-j", "2")
    # Six rounds: every kind of victim once, two more at random, in random order.
    kinds = ["compiler", "launcher", "ninja", "buildctl"]
    kinds += rng.sample(kinds, 2)
    rng.shuffle(kinds)
    log = [f"seed {seed} (rerun with BUILDCTL_CHAOS_SEED={seed})"]
    killed: list[str] = []
    for round_no, kind in enumerate(kinds):
        for attempt in range(ATTEMPTS):
            if round_no or attempt:
                # Give every attempt work: touch a few sources (as an edit would).
                for path in rng.sample(sources, 4):
                    os.utime(path)
            dirty_before = _dirty(build) if (build / "build.ninja").exists() else None
            proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            # A retry kills early: the first attempt's delay outlasted the build.
            delay = rng.uniform(0.1, 2.0) if attempt == 0 else rng.uniform(0.0, 0.3)
            what = _kill_one(proc, kind, delay, rng)
            rc = proc.wait(timeout=90)
            log.append(f"round {round_no}.{attempt}: killed {what or 'nothing (build over)'}; "
                       f"buildctl exit {rc}")
            left = wait_gone(str(tmp_path), timeout=15)
            assert not left, "\n".join([*log, "left running:", *left])
            if dirty_before is not None:
                # Nothing that was up to date before the round needs rebuilding after the kill.
                assert _dirty(build) <= dirty_before, "\n".join(log)
            if what is not None:
                killed.append(kind)
                break
    # Every round killed something: a run that killed nothing would prove nothing.
    assert sorted(killed) == sorted(kinds), "\n".join(log)

    print("\n".join(log))
    final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300,
                           check=False)
    assert final.returncode == 0, "\n".join([*log, final.stdout, final.stderr])
    assert not wait_gone(str(tmp_path), timeout=15)
    assert not (build / ".buildctl" / "governor.sock").exists()
    assert _dirty(build) == set()

    clean_build = tmp_path / "clean"
    clean = subprocess.run(build_args(src, clean_build, "-j", "2"),
                           env=env, capture_output=True, text=True, timeout=300, check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    chaos_objects, clean_objects = _objects(build), _objects(clean_build)
    assert len(clean_objects) == UNITS
    assert chaos_objects == clean_objects, "\n".join(log)
    assert _exports(build / "libchaos.so") == _exports(clean_build / "libchaos.so")
    assert "unit_11" in _exports(build / "libchaos.so")
