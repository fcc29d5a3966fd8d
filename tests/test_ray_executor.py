"""Governed jobs on a real Ray cluster: a head and worker nodes on 127.0.0.1 with distinct CPU
and memory resources, real g++ builds (memjobs: each compile holds a known amount of memory, then
runs g++), a node killed mid-build, a job killed by Ray's memory monitor, whole builds fanned out
as tasks, and the errors for a missing ray or a dead address.

The cluster is a module fixture; its teardown fails if any process of it is left running. Tests
that add a node remove it and wait until the head knows, so the others see the same three nodes
in any order.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import FIXTURES, ROOT, build_memcc

MiB = 1024**2
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason="ray is not installed (pip install 'buildctl[ray]')"
)
pytestmark = [pytest.mark.ray, pytest.mark.slow]

PRIOR = 192 * MiB  # every job's predicted peak in these builds: 6 x 32 MiB, no rounding
# (name, CPUs, memory resource): B has 3 CPUs but memory for only 2 jobs, so memory binds.
NODES = [("head", 1, 256 * MiB), ("A", 2, 448 * MiB), ("B", 3, 448 * MiB)]
OBJECT_STORE = 80 * MiB


# --- the cluster ---------------------------------------------------------------------------


@dataclass
class RayTestCluster:
    cluster: Any
    tmp: str
    nodes: dict[str, Any] = field(default_factory=dict)  # name -> ray._private.node.Node
    pids: set[int] = field(default_factory=set)
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)  # nodes run apart
    down: bool = False

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self, name: str, cpus: int, memory: int, env: dict[str, str] | None = None,
            **kw: Any) -> Any:
        saved = {k: os.environ.get(k) for k in env or {}}
        os.environ.update(env or {})  # a node's raylet reads RAY_* from its environment
        try:
            node = self.cluster.add_node(num_cpus=cpus, memory=memory,
                                         object_store_memory=OBJECT_STORE,
                                         node_ip_address="127.0.0.1", **kw)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        self.nodes[name] = node
        self.remember()
        return node

    def remove(self, name: str) -> None:
        """Kill a node's processes at once (a lost machine), then wait until the head knows."""
        node = self.nodes.pop(name)
        self.cluster.remove_node(node, allow_graceful=False)
        self.wait_gone(node.node_id)

    @staticmethod
    def wait_gone(node_id: str) -> None:
        import ray

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            n["Alive"] for n in ray.nodes() if n["NodeID"] == node_id
        ):
            time.sleep(0.1)

    def node_id(self, name: str) -> str:
        return self.nodes[name].node_id

    def remember(self) -> None:
        """Every process of the cluster so far (raylets, GCS, agents, workers)."""
        roots = [info.process.pid for node in self.cluster.list_all_nodes()
                 for infos in node.all_processes.values() for info in infos]
        for pid in roots:
            self.pids.add(pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                self.pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))
        self.pids.update(p.pid for p in ours(self.tmp))

    def shutdown(self) -> None:
        if self.down:
            return
        self.down = True
        import ray

        self.remember()
        ray.shutdown()
        for proc in self.extra:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.cluster.shutdown()


def ours(tmp: str) -> list[psutil.Process]:
    """Processes started for this cluster: they carry its RAY_TMPDIR or its paths."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == os.getpid():
            continue
        try:
            if tmp in " ".join(proc.info["cmdline"] or []) or \
                    proc.environ().get("RAY_TMPDIR") == tmp:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def left_running(cluster: RayTestCluster, timeout: float = 20) -> list[str]:
    """What is still running, after shutdown, of the processes the cluster ever had."""
    deadline = time.monotonic() + timeout
    while True:
        left = alive(cluster.pids) + [f"{p.pid} {p.name()}" for p in ours(cluster.tmp)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def still_running(procs: list[psutil.Process], timeout: float = 10) -> list[psutil.Process]:
    """Those of `procs` still running (zombies count as gone) once they all ended or `timeout`
    passed: a killed tree takes a moment to go."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(proc)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def alive(pids: set[int]) -> list[str]:
    left = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {proc.name()}")
        except psutil.NoSuchProcess:
            continue
    return left


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayTestCluster]:
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'buildctl[ray]')")
    tmp = tempfile.mkdtemp(prefix="rbt", dir="/tmp")  # short: Ray's socket paths live here
    env = {
        "RAY_TMPDIR": tmp,  # sessions, sockets and the "current cluster" file stay ours
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback addresses stay 127.0.0.1
        "RAY_health_check_period_ms": "500",  # notice a killed node in seconds, not 30s
        "RAY_health_check_timeout_ms": "500",
        "RAY_health_check_failure_threshold": "3",
        "RAY_task_oom_retries": "0",  # what ray_cluster.connect sets for a buildctl driver
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is first imported; another test
    # module may have imported it before this fixture ran. With the flag on, ray.init rewrites
    # 127.0.0.1 to the host's outward address, where a loopback-bound GCS never answers.
    saved_cluster_flag = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False

    name, cpus, memory = NODES[0]
    cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args=dict(
        num_cpus=cpus, memory=memory, object_store_memory=OBJECT_STORE,
        node_ip_address="127.0.0.1", include_dashboard=False))
    tc = RayTestCluster(cluster, tmp, {name: cluster.head_node})
    try:
        for name, cpus, memory in NODES[1:]:
            tc.add(name, cpus, memory)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        tc.remember()
        yield tc
    finally:
        tc.shutdown()  # remembers every process first
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster_flag
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        left = left_running(tc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert tc.pids, "the cluster's processes were never recorded"
    assert not left, f"still running after the cluster shut down: {left}"


@pytest.fixture(scope="module")
def memcc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_memcc(tmp_path_factory.mktemp("memcc"))


# --- helpers -------------------------------------------------------------------------------


def ray_build(tmp: Path, build: Path, compiler: Path, executor: Any, *, count: int = 0,
              mb: int = 0, hold_ms: int = 0, prior: int = PRIOR,
              source: Path = FIXTURES / "memjobs") -> tuple[int, Any]:
    """Configure and build `source` through a governed session whose jobs run on the cluster
    (the memjobs knobs only matter for the memjobs fixture)."""
    from rich.console import Console

    from buildctl.build import BuildRequest, run_build
    from buildctl.govern.ray_executor import ray_session
    from buildctl.govern.session import SessionOptions

    info = executor.info
    opts = SessionOptions(
        build_dir=build, budget_bytes=info.total_memory, slots=info.total_cpus,
        report_path=tmp / f"{build.name}.json", profile_db=tmp / "profiles.sqlite",
        prior_bytes=prior, plain=True, console=Console(file=io.StringIO()),
        title="ray test",
    )
    req = BuildRequest(
        source_dir=source, build_dir=build.resolve(), budget_bytes=opts.budget_bytes,
        slots=opts.slots, ninja_width=16,
        cmake_args=[f"-DCMAKE_CXX_COMPILER={compiler}", f"-DMEMJOBS_COUNT={count}",
                    f"-DMEMJOBS_MB={mb}", f"-DMEMJOBS_HOLD_MS={hold_ms}"],
    )
    with ray_session(opts, executor) as session:
        rc = run_build(session, req)
    return rc, session.report


def local_build(build: Path, *, count: int, mb: int, hold_ms: int) -> Path:
    """The same sources built plainly here with g++ (no buildctl, no Ray)."""
    subprocess.run(["cmake", "-S", str(FIXTURES / "memjobs"), "-B", str(build), "-G", "Ninja",
                    "-DCMAKE_CXX_COMPILER=g++", f"-DMEMJOBS_COUNT={count}",
                    f"-DMEMJOBS_MB={mb}", f"-DMEMJOBS_HOLD_MS={hold_ms}"],
                   check=True, capture_output=True)
    subprocess.run(["ninja", "-C", str(build)], check=True, capture_output=True)
    return build / "libmemjobs.so"


def exported(lib: Path) -> list[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], check=True,
                         capture_output=True, text=True).stdout
    return sorted(" ".join(line.split()[1:]) for line in out.splitlines() if line.strip())


def max_concurrent_memory(runs: list[Any]) -> int:
    """Largest sum of memory requests of runs overlapping in time (node-side start/end)."""
    edges = sorted([(r.started_epoch, r.memory_request) for r in runs]
                   + [(r.ended_epoch, -r.memory_request) for r in runs],
                   key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    current = peak = 0
    for _, delta in edges:
        current += delta
        peak = max(peak, current)
    return peak


def executor_for(cluster: RayTestCluster, build: Path, **kw: Any) -> Any:
    from buildctl.govern.ray_executor import make_ray_executor

    executor, info = make_ray_executor(cluster.address, build, **kw)
    assert info.total_cpus >= 1
    return executor


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """This environment without what the cluster fixture set (RAY_*), plus `extra`: a child
    sees the same environment whether or not the cluster is up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([*extra.pop("prepend", "").split(os.pathsep), str(ROOT)])
    env.update(extra)
    return {k: v for k, v in env.items() if v}


def checker(address: str, build: Path, env: dict[str, str] | None = None,
            use_cli: bool = False) -> subprocess.CompletedProcess[str]:
    if use_cli:
        argv = ["-m", "buildctl.cli", "build", "--source", str(FIXTURES / "cxxproj"),
                "--build-dir", str(build), "--executor", "ray", "--ray-address", address]
    else:
        argv = ["-m", "buildctl.govern.ray_executor", "--ray-address", address,
                "--build-dir", str(build), "--connect-timeout", "2"]
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          env=env or child_env(), timeout=120, check=False)


# --- without a cluster -----------------------------------------------------------------------


def test_default_install_never_imports_ray() -> None:
    code = ("import sys, buildctl.cli, buildctl.build, buildctl.govern.session, "
            "buildctl.govern.ray_executor, buildctl.govern.ray_cluster; "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env())


@pytest.mark.parametrize("use_cli", [False, True], ids=["module", "cli"])
def test_ray_missing_is_bad_input_with_the_install_fix(tmp_path: Path, use_cli: bool) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "ray.py").write_text("raise ImportError('No module named ray (test stand-in)')\n")
    result = checker("127.0.0.1:6379", tmp_path / "b", child_env(prepend=str(fake)), use_cli)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pip install 'buildctl[ray]'" in result.stderr
    assert "ray" in result.stderr and "Traceback" not in result.stderr


@needs_ray
@pytest.mark.parametrize("use_cli", [False, True], ids=["module", "cli"])
def test_unreachable_address_is_bad_input_with_the_start_command(
    tmp_path: Path, use_cli: bool
) -> None:
    port = free_port()
    started = time.monotonic()
    result = checker(f"127.0.0.1:{port}", tmp_path / "b", use_cli=use_cli)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert f"ray start --head --port {port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60


def test_addresses_and_memory_requests() -> None:
    from buildctl.errors import BadInput
    from buildctl.govern.ray_cluster import job_env, parse_address, round_memory

    assert parse_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert parse_address("ray://head:10001") == ("head", 10001)
    assert parse_address("[::1]:6379") == ("::1", 6379)
    for bad in ("head", "head:", ":6379", "head:99999", "head:port"):
        with pytest.raises(BadInput, match="HOST:PORT"):
            parse_address(bad)
    assert round_memory(1) == 32 * MiB
    assert round_memory(192 * MiB) == 192 * MiB
    assert round_memory(192 * MiB + 1) == 224 * MiB
    env = job_env({"PATH": "/usr/bin", "BUILDCTL_SOCKET": "/s", "RAY_ADDRESS": "x", "PWD": "/"})
    assert env == {"PATH": "/usr/bin"}


def test_peak_of_sum_counts_only_what_ran_at_once() -> None:
    from buildctl.govern.ray_cluster import peak_of_sum

    # a: 10 then 50 then 20 until 3; b: 30 from 1.5, 5 from 2.5 until 4; c: 100 from 3.
    runs = [
        ([(0.0, 10), (1.0, 50), (2.0, 20)], 3.0),
        ([(1.5, 30), (2.5, 5)], 4.0),
        ([(3.0, 100)], 5.0),
    ]
    # a ends at 3.0 as c starts: 5 + 100, not 20 + 5 + 100.
    assert peak_of_sum(runs) == 105
    assert peak_of_sum(runs[:2]) == 80  # 50 + 30 during [1.5, 2)
    assert peak_of_sum([]) == 0
    # Back to back (end == next start) never add up; samples at or after the end are ignored.
    assert peak_of_sum([([(0.0, 70)], 1.0), ([(1.0, 60), (9.0, 999)], 2.0)]) == 70
    # The order runs are recorded in does not matter.
    assert peak_of_sum(list(reversed(runs))) == 105


def test_thinned_series_keeps_every_peak() -> None:
    from buildctl.govern.ray_cluster import thin_series

    series = [(float(t), (t * 37) % 101) for t in range(1001)]
    thinned = thin_series(series)
    assert len(thinned) == 501
    assert max(r for _, r in thinned) == max(r for _, r in series)
    # Each point keeps the higher of its pair, at the pair's first time.
    assert all(
        thinned[i] == (series[2 * i][0], max(r for _, r in series[2 * i : 2 * i + 2]))
        for i in range(len(thinned))
    )


@needs_ray
def test_a_port_that_is_not_ray_fails_fast(tmp_path: Path) -> None:
    """Something accepts connections but never speaks Ray: exit 2 in seconds, not minutes."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        started = time.monotonic()
        result = checker(address, tmp_path / "b")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot reach a Ray cluster at {address}" in result.stderr
    assert "no Ray GCS answered" in result.stderr
    assert time.monotonic() - started < 30


# --- on the cluster --------------------------------------------------------------------------


def test_cluster_check_from_a_separate_driver(ray_cluster: RayTestCluster, tmp_path: Path) -> None:
    """A separate buildctl process joins the cluster, every node sees the build dir."""
    build = tmp_path / "b"
    build.mkdir()
    result = checker(ray_cluster.address, build,
                     child_env(RAY_TMPDIR=ray_cluster.tmp, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 nodes, 6 CPUs" in result.stdout
    assert not list((build / ".buildctl").glob("ray-check-*"))  # the marker is cleaned up


def test_build_spreads_over_nodes_within_each_nodes_memory(
    ray_cluster: RayTestCluster, memcc: Path, tmp_path: Path
) -> None:
    from buildctl.govern.profiles import ProfileDB

    build = tmp_path / "spread"
    executor = executor_for(ray_cluster, build, check_paths=[FIXTURES / "memjobs"],
                            tools=[str(memcc)])
    try:
        rc, report = ray_build(tmp_path, build, memcc, executor, count=8, mb=60, hold_ms=1500)
    finally:
        executor.close()
    assert rc == 0, [(j.output, j.status) for j in report.jobs]
    jobs = report.jobs
    assert sorted(j.kind for j in jobs) == ["compile"] * 8 + ["link"]
    assert all(j.status == "ok" and j.node for j in jobs), [(j.output, j.node) for j in jobs]
    labels = {name: ray_cluster.node_id(name)[:12] for name, _, _ in NODES}
    used = {j.node.split("/")[1] for j in jobs}
    assert used <= set(labels.values()) and len(used) >= 2, used
    # Each job's peak was measured on its node: the 60 MB memcc holds, then g++.
    for job in jobs:
        if job.kind == "compile":
            assert job.peak_rss_bytes >= 58 * MiB, job
            assert job.wait4_maxrss_bytes >= 58 * MiB, job
            assert job.cpu_s > 0
    # Node-side start/end of every run vs the node's memory resource: Ray never overbooked one.
    runs = [r for r in executor.runs if r.outcome == "ok"]
    assert len(runs) == 9
    for name, _cpus, memory in NODES:
        on_node = [r for r in runs if r.node.split("/")[1] == labels[name]]
        assert max_concurrent_memory(on_node) <= memory, (name, on_node)
    # B has 3 CPUs but memory for 2 jobs of 192 MiB: it never ran 3.
    on_b = [r for r in runs if r.node.split("/")[1] == labels["B"]]
    assert max_concurrent_memory(on_b) <= 2 * PRIOR
    # The report says where each job ran and when it started there (the node-side start, not
    # when it was handed to Ray): its starts are the runs' node-side starts on the build's
    # clock. Its ends are not compared: they include the trip back to the governor, which a
    # loaded machine stretches by seconds.
    assert {j.output: j.node for j in jobs} == {r.output: r.node for r in runs}
    node_start = {r.output: r.started_epoch for r in runs}
    offsets = [j.started_at_s - node_start[j.output] for j in jobs]
    assert max(offsets) - min(offsets) < 0.5, offsets
    # The report's peak total RSS is the cluster-wide sum of what ran at once (node series):
    # at least two 60 MB jobs overlapped, and never more than the nodes could hold.
    assert 2 * 58 * MiB <= report.peak_total_rss_bytes <= sum(m for _, _, m in NODES), (
        report.peak_total_rss_bytes
    )
    assert report.peak_total_rss_bytes == executor.peak_total_rss
    # The profile DB learned every job, as after a local build.
    db = ProfileDB(tmp_path / "profiles.sqlite")
    try:
        assert len(db.latest()) == 9
    finally:
        db.close()
    assert (build / "libmemjobs.so").exists()


def test_compile_error_on_the_cluster_reaches_the_log_and_the_report(
    ray_cluster: RayTestCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.21)\nproject(p CXX)\n"
                                        "add_library(p STATIC bad.cpp)\n")
    (src / "bad.cpp").write_text("int f() { return undeclared_thing; }\n")
    build = tmp_path / "bad"
    executor = executor_for(ray_cluster, build)
    try:
        rc, report = ray_build(tmp_path, build, Path(shutil.which("g++") or "g++"), executor,
                               source=src)
    finally:
        executor.close()
    assert rc == 1
    out = capsys.readouterr().out
    assert "undeclared_thing" in out  # the node's stderr, replayed to ninja by the launcher
    [job] = report.jobs
    assert job.status == "failed" and job.exit_code == 1 and job.node, job


def test_cancel_all_kills_the_remote_trees(ray_cluster: RayTestCluster, tmp_path: Path) -> None:
    """What Ctrl-C must do (the session calls executor.cancel_all()): no job keeps running on
    the cluster, and a cancelled job is not mistaken for a lost one and re-run."""
    import asyncio
    from types import SimpleNamespace

    from buildctl.govern.profiles import Prediction

    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nsleep 60 & sleep 60\nwait\n")
    script.chmod(0o755)
    executor = executor_for(ray_cluster, tmp_path)
    job = SimpleNamespace(output="slow.o", argv=[str(script)], cwd=str(tmp_path), env=None,
                          prediction=Prediction(64 * MiB, "prior"), peak_rss=0, cpu_s=0.0,
                          started_at=0.0, cpu_share=1.0)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(asyncio.run(executor.run(job))))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        tree: list[psutil.Process] = []
        while time.monotonic() < deadline and not tree:
            tree = [p for proc in processes_with(str(script)) for p in
                    [proc, *proc.children(recursive=True)]]
            time.sleep(0.05)
        assert tree, "the job never started"
        started = time.monotonic()
        executor.cancel_all()
        thread.join(30)
        assert not thread.is_alive()
        assert time.monotonic() - started < 15
    finally:
        executor.close()
    assert result["rc"] == 130, (result["rc"], result["stderr"], executor.runs)
    assert "cancelled" in result["stderr"]
    assert not still_running(tree)
    assert [r.outcome for r in executor.runs] == ["cancelled"]  # not re-run as if lost


def processes_with(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if any(text in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
    return found


def _running_on(node_id: str, name: str) -> list[psutil.Process]:
    """Jobs run under a guardian that left the Ray worker: find them by the node id the task
    puts in their environment."""
    found = []
    for proc in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if proc.info["name"] == name and \
                    proc.environ().get("BUILDCTL_RAY_NODE") == node_id:
                found.append(proc)
    return found


def test_node_lost_mid_build_still_builds_the_same_library(
    ray_cluster: RayTestCluster, memcc: Path, tmp_path: Path
) -> None:
    ray_cluster.add("C", 2, 448 * MiB)
    c_id = ray_cluster.node_id("C")
    build = tmp_path / "lost"
    executor = executor_for(ray_cluster, build)
    seen: dict[str, Any] = {"running": []}

    def kill_c_once_it_runs_a_job() -> None:
        # The build runs in the main thread (the session installs signal handlers).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not seen["running"]:
            seen["running"] = _running_on(c_id, "memcc")
            time.sleep(0.05)
        if seen["running"]:
            seen["outputs"] = {arg for p in seen["running"] for arg in p.cmdline()
                               if arg.endswith(".o")}
            ray_cluster.cluster.remove_node(ray_cluster.nodes.pop("C"), allow_graceful=False)
            seen["killed_at"] = time.monotonic()

    killer = threading.Thread(target=kill_c_once_it_runs_a_job, daemon=True)
    killer.start()
    try:
        rc, report = ray_build(tmp_path, build, memcc, executor, count=8, mb=40, hold_ms=4000)
    finally:
        killer.join(30)
        executor.close()
        if "C" in ray_cluster.nodes:  # it never ran a job: leave the cluster as it was
            ray_cluster.remove("C")
        else:
            ray_cluster.wait_gone(c_id)
    assert seen["running"], "no job ever ran on node C"
    assert "killed_at" in seen
    lost_outputs, running = seen["outputs"], seen["running"]
    assert rc == 0, [(j.output, j.status, j.node) for j in report.jobs]
    assert all(j.status == "ok" for j in report.jobs)
    assert any(e.kind == "info" and c_id[:12] in e.detail and "left the cluster" in e.detail
               for e in report.events), report.events
    finished_on_c = [j.output for j in report.jobs if j.node and j.node.split("/")[1] == c_id[:12]]
    for output in lost_outputs:  # what C was running when it died was re-run elsewhere
        assert output not in finished_on_c
        assert any(j.output == output and j.status == "ok" for j in report.jobs), output
    # Nothing the dead node started survives it (its supervisors killed their trees).
    assert not still_running(running)
    local = local_build(tmp_path / "local", count=8, mb=40, hold_ms=4000)
    assert exported(build / "libmemjobs.so") == exported(local)
    assert len([s for s in exported(local) if "job" in s]) == 8


def test_oom_kill_requeues_with_more_memory_and_the_build_succeeds(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    # A node whose memory monitor fires 1.5 GiB above what the host uses now; only this test's
    # jobs go there (a custom resource). The first compile of hog.cpp grows its memory until
    # the monitor kills it (other engineers' jobs move the host's usage; a fixed size could
    # stay under the line), never past `cap`.
    vm = psutil.virtual_memory()
    cap = min(8 * 1024**3, vm.available - 6 * 1024**3)
    if cap < 3 * 1024**3:
        pytest.skip("needs ~9 GiB free RAM to stage a Ray memory-monitor kill")
    threshold = (vm.total - vm.available + 1536 * MiB) / vm.total
    ray_cluster.add("oom", 1, 1024 * MiB, resources={"oomtest": 1},
                    env={"RAY_memory_usage_threshold": f"{threshold:.4f}",
                         "RAY_memory_monitor_refresh_ms": "50"})
    src = tmp_path / "src"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.21)\nproject(hog CXX)\n"
        "add_library(hog SHARED hog.cpp)\n")
    (src / "hog.cpp").write_text("int hog(int x) { return x + 1; }\n")
    mark = tmp_path / "hogged"
    grow = tmp_path / "grow.py"
    grow.write_text(
        "import sys, time\n"
        "held, step = [], 128 * 1024 * 1024\n"
        f"while len(held) * step < {cap}:\n"
        "    held.append(b'x' * step)  # touched: it counts as used memory\n"
        "    time.sleep(0.03)\n"
        "time.sleep(60)\n")
    hogcc = tmp_path / "hogcc"
    hogcc.write_text(
        "#!/bin/sh\n"
        "# The first compile of hog.cpp hogs memory until Ray's monitor kills it.\n"
        f'case "$*" in *hog.cpp*) if [ ! -e {mark} ]; then : > {mark}; '
        f"{sys.executable} {grow}; fi;; esac\n"
        'exec g++ "$@"\n')
    hogcc.chmod(0o755)
    build = tmp_path / "oomb"
    executor = executor_for(ray_cluster, build, extra_resources={"oomtest": 0.01})
    try:
        assert len(executor.info.nodes) == 1  # only the oom node offers "oomtest"
        rc, report = ray_build(tmp_path, build, hogcc, executor, prior=256 * MiB, source=src)
    finally:
        executor.close()
        ray_cluster.remove("oom")
    assert rc == 0, [(j.output, j.status) for j in report.jobs]
    assert mark.exists()
    hog_runs = [r for r in executor.runs if r.output.endswith("hog.cpp.o")]
    assert [r.outcome for r in hog_runs][:1] == ["oom"], hog_runs
    assert hog_runs[-1].outcome == "ok"
    assert hog_runs[0].memory_request == 256 * MiB
    assert hog_runs[1].memory_request == 384 * MiB  # 1.5x, in 32 MiB steps
    assert any(e.kind == "retry" and "memory monitor" in e.detail for e in report.events)
    assert all(j.status == "ok" for j in report.jobs)
    assert (build / "libhog.so").exists()


def test_matrix_builds_fan_out_with_their_memory_requests(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    from buildctl.govern.ray_executor import MatrixBuild, run_matrix_on_ray

    def build(name: str, mb: int, budget: int, rc: int = 0) -> MatrixBuild:
        code = (f"b = bytearray({mb} * 1024 * 1024); import sys; print('built', {name!r}); "
                f"sys.exit({rc})")
        return MatrixBuild(name=name, argv=[sys.executable, "-c", code], memory_bytes=budget,
                           cwd=str(tmp_path))

    builds = [build("torch-a", 80, 300 * MiB), build("torch-b", 80, 400 * MiB),
              build("torch-c", 10, 200 * MiB, rc=3), build("torch-huge", 10, 4096 * MiB)]
    notes: list[str] = []
    results = run_matrix_on_ray(builds, ray_cluster.address, on_event=notes.append,
                                check_paths=[tmp_path])
    assert [r.name for r in results] == [b.name for b in builds]
    assert [r.rc for r in results] == [0, 0, 3, 0]
    assert "built torch-a" in results[0].stdout
    assert [r.memory_request for r in results] == [320 * MiB, 416 * MiB, 224 * MiB, 448 * MiB]
    assert all(r.node for r in results)
    assert results[0].peak_rss_bytes >= 80 * MiB
    assert any("torch-huge" in n and "more than any node" in n for n in notes)
    import ray

    assert ray.is_initialized()  # it used the connection it found and left it open


def test_a_node_that_does_not_see_the_build_dir_is_named(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    """A worker in its own mount namespace, with a tmpfs over the build dir: same path, but not
    the same tree. The check names that node and the marker it could not read."""
    if shutil.which("unshare") is None or subprocess.run(
        ["unshare", "-m", "true"], capture_output=True, check=False
    ).returncode != 0:
        pytest.skip("needs unshare -m (mount namespaces) to hide the build dir from one node")
    import ray

    from buildctl.errors import BadInput

    build = tmp_path / "hidden"
    build.mkdir()
    before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    # What Cluster.add_node does, in a process of its own (`ray start` refuses loopback-only
    # clusters), so that its raylet and workers live in the namespace where the tmpfs hides it.
    node_script = (
        "import signal, sys, time\n"
        "from ray._private.node import Node\n"
        "from ray._private.parameter import RayParams\n"
        f"params = RayParams(num_cpus=1, num_gpus=0, memory={256 * MiB}, "
        f"object_store_memory={OBJECT_STORE}, node_ip_address='127.0.0.1', "
        f"gcs_address='{ray_cluster.address}', include_log_monitor=False, node_manager_port=0, "
        "min_worker_port=0, max_worker_port=0)\n"
        "params.dashboard_agent_listen_port = None\n"
        "node = Node(params, head=False, shutdown_at_exit=False, spawn_reaper=True)\n"
        "def stop(*_):\n"
        "    node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "while True:\n"
        "    time.sleep(1)\n"
    )
    script = f'mount -t tmpfs buildctl-test {build} && exec "$0" -c "$1"'
    log = tmp_path / "node.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                                 sys.executable, node_script],
                                stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    ray_cluster.extra.append(proc)
    try:
        deadline = time.monotonic() + 60
        new: set[str] = set()
        while time.monotonic() < deadline and not new:
            assert proc.poll() is None, log.read_text()[-3000:]
            new = {n["NodeID"] for n in ray.nodes() if n["Alive"]} - before
            time.sleep(0.2)
        assert new, "the namespaced node never joined"
        hidden = new.pop()
        ray_cluster.pids.update(p.pid for p in [psutil.Process(proc.pid),
                                               *psutil.Process(proc.pid).children(True)])
        compiler = build / "bin" / "mycc"  # a toolchain inside the hidden tree
        compiler.parent.mkdir()
        compiler.write_text("#!/bin/sh\nexec g++ \"$@\"\n")
        compiler.chmod(0o755)
        with pytest.raises(BadInput) as err:
            executor_for(ray_cluster, build, tools=[str(compiler)])
        text = err.value.what
        assert f"node 127.0.0.1/{hidden[:12]} sees a different {build} than the head" in text
        assert f"node 127.0.0.1/{hidden[:12]} does not see {compiler}" in text
        assert set(re.findall(r"node 127\.0\.0\.1/(\w+)", text)) == {hidden[:12]}, text
        assert "same path" in err.value.fix
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for node_id in {n["NodeID"] for n in ray.nodes() if n["Alive"]} - before:
            ray_cluster.wait_gone(node_id)

