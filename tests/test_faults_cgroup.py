"""Real memory pressure without swap, inside a small cgroup v1 memory group this test creates
(and removes): a job that pages its working set in and out (thrashing) and a job the kernel
OOM killer kills. Skipped where a memory cgroup cannot be created (not root, no cgroup v1).

Only the faultcc process of one job joins the group (it writes its own pid); no existing
cgroup is modified."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.faults.kit import build_args, build_faultcc, env_for, make_project

pytestmark = pytest.mark.slow
MEMCG_ROOT = Path("/sys/fs/cgroup/memory")
MiB = 1024**2


@pytest.fixture
def memcg() -> Iterator[Path]:
    """A fresh memory cgroup limited to 64 MiB, removed afterwards (its processes killed)."""
    if os.geteuid() != 0 or not (MEMCG_ROOT / "memory.limit_in_bytes").exists():
        pytest.skip("needs root and a cgroup v1 memory controller at /sys/fs/cgroup/memory")
    group = MEMCG_ROOT / f"buildctl-test-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(64 * MiB))
    except OSError as exc:
        with contextlib.suppress(OSError):
            group.rmdir()
        pytest.skip(f"cannot create a memory cgroup here: {exc}")
    try:
        yield group
    finally:
        for _ in range(50):
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
            for pid in pids:  # only processes this test put there
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@pytest.fixture(scope="module")
def faultcc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_faultcc(tmp_path_factory.mktemp("faultcc"))


def test_kernel_oom_kill_is_a_crash_with_a_repro(tmp_path: Path, faultcc: Path,
                                                  memcg: Path) -> None:
    src = make_project(tmp_path / "src", {
        # Needs 200 MB inside a 64 MiB group: the kernel OOM killer SIGKILLs it.
        "hog.cpp": f"// faultcc: cgroup={memcg} alloc=200\nint hog() {{ return 1; }}\n",
        "fine.cpp": "int fine() { return 2; }\n",
    })
    result = subprocess.run(
        build_args(src, tmp_path / "b", "--report", str(tmp_path / "r.json"), compiler=faultcc),
        env=env_for(tmp_path), capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    job = next(j for j in report["jobs"] if j["output"].endswith("hog.cpp.o"))
    assert job["status"] == "crashed" and job["attempts"] == 2 and job["signal"] == 9
    crashes = [e for e in report["events"] if e["kind"] == "crash"]
    assert len(crashes) == 2 and "kernel OOM killer" in crashes[0]["detail"]
    repro = Path(job["repro_dir"])
    assert "OOM killer" in (repro / "README.md").read_text()
    assert f"repro: {repro}" in result.stdout
    # rerun.sh joins the same group again and is OOM-killed again.
    rerun = subprocess.run(["bash", str(repro / "rerun.sh")], capture_output=True, timeout=60,
                           check=False)
    assert rerun.returncode == 137


def test_real_thrash_is_reported_with_evidence_sheds_load_and_is_not_killed(
    tmp_path: Path, faultcc: Path, memcg: Path
) -> None:
    # A 256 MiB file read at random through mmap by a job held to 64 MiB: every page it needs
    # was just evicted by the group's own reclaim (a major fault each).
    data = tmp_path / "working-set.bin"
    with open(data, "wb") as handle:
        block = os.urandom(MiB)
        for _ in range(256):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    # `pager` and `early` are ready at once; the `late` objects only after `early` is built
    # (1.5 s in), by which time `pager` thrashes: they must wait for it.
    src = make_project(tmp_path / "src", {
        "pager.cpp": f"// faultcc: cgroup={memcg} thrash={data}:4000\n"
                     "int pager() { return 1; }\n",
        "early.cpp": "// faultcc: spin=1500\nint early() { return 2; }\n",
        "late0.in": "int late0() { return 3; }\n",
        "late1.in": "int late1() { return 4; }\n",
    })
    # The late sources are generated from early's object: they cannot compile before it exists.
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.21)\nproject(thrash CXX)\n"
        "add_library(pager OBJECT pager.cpp)\nadd_library(early OBJECT early.cpp)\n"
        "foreach(n 0 1)\n"
        "  add_custom_command(OUTPUT late${n}.cpp COMMAND ${CMAKE_COMMAND} -E copy"
        " ${CMAKE_SOURCE_DIR}/late${n}.in late${n}.cpp"
        " DEPENDS late${n}.in $<TARGET_OBJECTS:early>)\n"
        "endforeach()\n"
        "add_library(late OBJECT ${CMAKE_BINARY_DIR}/late0.cpp ${CMAKE_BINARY_DIR}/late1.cpp)\n"
    )
    try:
        result = subprocess.run(
            build_args(src, tmp_path / "b", "-j", "2", "--hang-after", "2s", "--report",
                       str(tmp_path / "r.json"), compiler=faultcc),
            env=env_for(tmp_path), capture_output=True, text=True, timeout=300, check=False,
        )
    finally:
        data.unlink()
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    jobs = {Path(j["output"]).name: j for j in report["jobs"]}
    pager = jobs["pager.cpp.o"]
    assert pager["status"] == "ok" and pager["attempts"] == 1  # thrashing is not a reason to kill
    (thrash,) = [e for e in report["events"] if e["kind"] == "thrash"]
    assert thrash["output"] == pager["output"]
    assert thrash["data"]["faults_per_s"] >= 200 and thrash["data"]["user_share"] < 0.3
    assert thrash["data"]["culprit"]["name"] == "faultcc"
    assert "major faults/s" in thrash["detail"] and "faulting faultcc" in thrash["detail"]
    assert not [e for e in report["events"] if e["kind"] in ("stall", "hang", "crash")]
    # Load was shed: admission paused while it thrashed, so `late` waited for it.
    paused = [e for e in report["events"]
              if e["kind"] == "throttle" and "thrashing" in e["detail"]]
    assert paused, report["events"]
    # The pause ends when memory comes back, or, when the host's pressure (PSI avg10 decays over
    # seconds) outlasts the pager, once nothing runs: then the build goes on one job at a time.
    resumed = [e["t_s"] for e in report["events"] if e["kind"] == "throttle"
               and e["detail"] == "admission resumed" and e["t_s"] > paused[0]["t_s"]]
    pager_end = pager["started_at_s"] + pager["wall_s"]
    go_on = min([*resumed, pager_end])
    for name in ("late0.cpp.o", "late1.cpp.o"):
        assert jobs[name]["started_at_s"] >= go_on - 0.3, (name, report["events"], report["jobs"])
        assert jobs[name]["queued_s"] > 1.0


def test_available_memory_is_the_cgroups_headroom_inside_a_limited_group(memcg: Path) -> None:
    # The host has GiBs free; a process in a 64 MiB group can get at most 64 MiB, and the guard's
    # critical mark must see that (a container or CI job on a big host).
    code = (
        "import os, sys\n"
        f"open('{memcg}/cgroup.procs', 'w').write(str(os.getpid()))\n"
        "from buildctl import host\n"
        "print(host.available_bytes(), host.cgroup_memory_limit(), host.probe().available_bytes)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    available, limit, probed = (int(v) for v in out)
    assert limit == 64 * MiB
    assert 0 < available <= 64 * MiB and 0 < probed <= 64 * MiB
