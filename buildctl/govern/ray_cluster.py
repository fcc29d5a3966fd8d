"""Joining a Ray cluster, describing it, checking it shares our file system, and the code that
runs on its nodes.

Ray is an optional dependency (`pip install 'buildctl[ray]'`): nothing here imports it at module
load; `import_ray()` does, and turns its absence into a `BadInput` that says how to fix it.

The functions named `_node_*` run on cluster nodes. They use only the standard library, psutil
(which Ray ships) and ray itself, and this module is registered with Ray's pickler *by value*,
so a node needs Ray but not buildctl installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from buildctl import process
from buildctl.errors import BadInput
from buildctl.process import sample_tree

MiB = 1024**2
INSTALL_FIX = "install the extra: pip install 'buildctl[ray]'"
OUTPUT_CAP = 1024 * 1024  # bytes of stdout/stderr a remote job sends back (the tail is kept)
TAIL_BYTES = 16 * 1024
SERIES_STEP_S = 0.25  # a remote job's RSS series: one point per step, plus every new high
SERIES_MAX = 4000  # points; beyond it pairs are merged (keeping the higher)

# The job's guardian on the node, started by the task with the worker's Python. It leaves the
# worker (fork, parent exits), so Ray's cleanup of a dead worker's direct children (SIGKILL, no
# chance to clean up) does not reach it; it runs the job in a process group of its own, reports
# the job's pid and wait4 rusage on a pipe, and kills the whole group as soon as a "life" pipe
# held only by the task reaches EOF: the worker died (node lost, killed by Ray's memory monitor,
# ray.cancel). So no compiler outlives its task and races the re-run writing the same output.
# argv: life_fd result_fd job_argv... (the job's argv is exec'd as is, never parsed by a shell)
GUARDIAN = """
import json, os, signal, sys, threading
life, res, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
if os.fork():
    os._exit(0)
pid = os.fork()
if pid == 0:
    os.close(life)
    os.close(res)
    os.setpgid(0, 0)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, ("buildctl: cannot run %r: %s\\n" % (argv[0], exc)).encode())
    os._exit(127)
try:
    os.setpgid(pid, pid)
except OSError:
    pass
os.write(res, (json.dumps({"pid": pid}) + "\\n").encode())
finished = threading.Event()
def watch():
    while True:
        try:
            if not os.read(life, 1):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    if not finished.is_set():
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
threading.Thread(target=watch, daemon=True).start()
while True:
    try:
        _, status, usage = os.wait4(pid, 0)
        break
    except InterruptedError:
        continue
finished.set()
os.write(res, (json.dumps({"status": status, "maxrss": usage.ru_maxrss,
                           "cpu_s": usage.ru_utime + usage.ru_stime}) + "\\n").encode())
os._exit(0)
"""

_registered = False  # node-side functions registered with Ray's pickler by value


def import_ray() -> ModuleType:
    """`import ray`, or a BadInput naming the interpreter that lacks it."""
    try:
        import ray
    except ImportError as exc:
        raise BadInput(
            f"the Ray executor needs the `ray` package, which {sys.executable} cannot import "
            f"({exc})",
            INSTALL_FIX,
        ) from None
    return ray


def parse_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (or `ray://HOST:PORT`) -> (host, port), else BadInput."""
    text = address.strip()
    if text.startswith("ray://"):
        text = text[len("ray://") :]
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadInput(
            f"--ray-address {address!r} is not HOST:PORT",
            "pass the head node's GCS address, e.g. --ray-address 10.0.0.5:6379",
        )
    return host, int(port_text)


def _unreachable(address: str, why: str) -> BadInput:
    _, port = parse_address(address)
    return BadInput(
        f"cannot reach a Ray cluster at {address}: {why}",
        f"start one on the head node with `ray start --head --port {port}` (and "
        f"`ray start --address {address}` on each worker), or pass the right --ray-address",
    )


def probe_tcp(address: str, timeout_s: float) -> None:
    """Fail fast: ray.init() on a dead address retries for minutes before it gives up."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise _unreachable(address, exc.strerror or str(exc)) from None


def probe_grpc(address: str, timeout_s: float) -> None:
    """Something listens there: is it a gRPC server (Ray's GCS is one)? ray.init() would spend
    minutes retrying a port that accepts connections but never speaks HTTP/2."""
    import grpc  # a dependency of ray

    host, port = parse_address(address)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=max(timeout_s, 2.0))
    except grpc.FutureTimeoutError:
        raise _unreachable(
            address,
            f"the port accepts connections but no Ray GCS answered within "
            f"{max(timeout_s, 2.0):.0f}s",
        ) from None
    finally:
        channel.close()


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    ip: str
    cpus: float
    memory: int
    resources: Mapping[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.ip}/{self.node_id[:12]}"


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    nodes: tuple[NodeInfo, ...]  # alive nodes that can run a job (>= 1 CPU, the extra resources)

    @property
    def total_memory(self) -> int:
        return sum(n.memory for n in self.nodes)

    @property
    def total_cpus(self) -> int:
        return int(sum(n.cpus for n in self.nodes))

    @property
    def largest_node_memory(self) -> int:
        return max((n.memory for n in self.nodes), default=0)

    def describe(self) -> str:
        from buildctl.host import format_size

        return (
            f"Ray cluster {self.address}: {len(self.nodes)} nodes, {self.total_cpus} CPUs, "
            f"{format_size(self.total_memory)} memory"
        )


def connect(address: str, connect_timeout_s: float = 5.0) -> tuple[ModuleType, bool]:
    """Join the cluster at `address` as a driver; return the ray module and whether this call
    joined (so the caller knows whether to leave). A process already joined stays joined."""
    global _registered
    parse_address(address)
    ray = import_ray()
    if not _registered:
        # Ship the node-side functions by value: nodes need ray, not buildctl. The tree sampler
        # they call goes the same way.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        ray.cloudpickle.register_pickle_by_value(process)
        _registered = True
    if ray.is_initialized():
        return ray, False
    probe_tcp(address, connect_timeout_s)
    probe_grpc(address, connect_timeout_s)
    # A task killed by Ray's memory monitor must come back to us at once, so the retry can ask
    # for more memory; Ray's own OOM retries reuse the same request. Read when the driver starts.
    os.environ.setdefault("RAY_task_oom_retries", "0")
    try:
        ray.init(
            address=address,
            namespace="buildctl",
            log_to_driver=False,  # worker logs would interleave with the build output
            logging_level=logging.WARNING,
        )
    except Exception as exc:
        with contextlib.suppress(Exception):
            ray.shutdown()  # a half-made connection must not linger
        raise BadInput(
            f"cannot join the Ray cluster at {address}: {type(exc).__name__}: {exc}",
            f"this Python's ray ({getattr(ray, '__version__', '?')}) must match the cluster's "
            "(`ray --version` on the head), and the address must be the head's GCS port "
            "(`ray start --head --port PORT`)",
        ) from None
    return ray, True


def cluster_info(
    ray: ModuleType, address: str, extra_resources: Mapping[str, float] | None = None
) -> ClusterInfo:
    nodes = []
    for raw in ray.nodes():
        if not raw.get("Alive"):
            continue
        res = raw.get("Resources", {})
        if res.get("CPU", 0) < 1:
            continue  # a driver-only head never runs a job
        if any(res.get(k, 0) < v for k, v in (extra_resources or {}).items()):
            continue
        nodes.append(
            NodeInfo(
                node_id=raw["NodeID"],
                ip=raw.get("NodeManagerAddress", "?"),
                cpus=float(res.get("CPU", 0)),
                memory=int(res.get("memory", 0)),
                resources=dict(res),
            )
        )
    if not nodes:
        raise BadInput(
            f"the Ray cluster at {address} has no alive node with a CPU"
            + (f" and the resources {dict(extra_resources)}" if extra_resources else ""),
            "start workers with `ray start --address ADDRESS --num-cpus N`",
        )
    return ClusterInfo(address=address, nodes=tuple(nodes))


# --- the shared file system check ----------------------------------------------------------


def _node_probe(paths: list[str], tools: list[str], marker: str, token: str) -> dict[str, Any]:
    """Runs on one node: which of our paths does it not see the way the head does?"""
    import os

    import ray

    missing = [p for p in paths if not os.path.exists(p)]
    missing += [t for t in tools if not (os.path.isfile(t) and os.access(t, os.X_OK))]
    marker_ok = False
    if marker:
        try:
            with open(marker) as handle:
                marker_ok = handle.read() == token
        except OSError:
            marker_ok = False
        if not marker_ok:
            missing.append(marker)
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "ip": ray.util.get_node_ip_address(),
        "missing": missing,
    }


def check_shared_paths(
    ray: ModuleType,
    info: ClusterInfo,
    paths: Iterable[Path | str] = (),
    tools: Iterable[str] = (),
    marker_dir: Path | None = None,
    timeout_s: float = 60.0,
    silent_nodes_fail: bool = True,
) -> None:
    """Every node that may run a job must see the build tree, the sources and the toolchain at
    the same paths as this head. A marker written into `marker_dir` (the build dir) proves it is
    the *same* tree, not an empty directory of the same name. Raises BadInput naming the node
    and the path. With `silent_nodes_fail=False` a node that does not answer (it just died) is
    not held against the cluster."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = secrets.token_hex(16)
    marker: Path | None = None
    if marker_dir is not None:
        state = marker_dir / ".buildctl"
        state.mkdir(parents=True, exist_ok=True)
        marker = state / f"ray-check-{token[:12]}"
        marker.write_text(token)
    probe = ray.remote(_node_probe)
    want = [str(p) for p in paths]
    tool_paths = [resolve_tool(t) for t in tools]
    problems = []
    try:
        refs = {
            probe.options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
                max_retries=0,
            ).remote(want, tool_paths, str(marker or ""), token): node
            for node in info.nodes
        }
        ready, not_ready = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        # A node that left meanwhile runs no job either: only live nodes can fail the check.
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        for ref in not_ready:
            if silent_nodes_fail and refs[ref].node_id in alive:
                problems.append(f"node {refs[ref].label} did not answer within {timeout_s:.0f}s")
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        for ref in ready:
            node = refs[ref]
            try:
                answer = ray.get(ref)
            except ray.exceptions.TaskUnschedulableError:
                continue  # "the node ... doesn't exist any more": it left the cluster
            except Exception as exc:
                if silent_nodes_fail and node.node_id in alive:
                    problems.append(f"node {node.label} could not run the check: {exc}")
                continue
            for path in answer["missing"]:
                if path == str(marker):
                    problems.append(
                        f"node {node.label} sees a different {marker_dir} than the head (the "
                        f"marker file {marker} the head just wrote is not there)"
                    )
                else:
                    problems.append(f"node {node.label} does not see {path}")
    finally:
        if marker is not None:
            with contextlib.suppress(OSError):
                marker.unlink()
    if problems:
        raise BadInput(
            "the build tree and toolchain must be at the same paths on every Ray node: "
            + "; ".join(problems),
            "mount the shared file system (build dir, sources, compilers, Python) at the same "
            "path on every node, or remove that node from the cluster",
        )


def resolve_tool(tool: str, path_env: str | None = None) -> str:
    found = shutil.which(tool, path=path_env) if os.sep not in tool else tool
    return os.path.realpath(found or tool)


# --- running one argv on a node --------------------------------------------------------------


def _node_run(
    argv: list[str], cwd: str | None, env: dict[str, str] | None, sample_interval_s: float
) -> dict[str, Any]:
    """Runs on a node: the exact argv in cwd, with its process tree's peak RSS (sampled sum),
    wait4's ru_maxrss (largest single process) and CPU time, its output, and where it ran."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    import ray

    node_id = ray.get_runtime_context().get_node_id()
    ip = ray.util.get_node_ip_address()
    started = time.time()
    base = {
        "node": f"{ip}/{node_id[:12]}",
        "node_id": node_id,
        "node_ip": ip,
        "started_epoch": started,
    }

    def failed(message: str) -> dict[str, Any]:
        return {
            **base,
            "rc": 127,
            "signal": 0,
            "maxrss": 0,
            "tree_peak": 0,
            "cpu_s": 0.0,
            "wall_s": time.time() - started,
            "stdout": "",
            "stderr": message,
            "stderr_tail": message,
            "ended_epoch": time.time(),
        }

    if env is not None:
        env = {**env, "BUILDCTL_RAY_NODE": node_id}  # where it runs, for wrappers and debugging
    life_r, life_w = os.pipe()
    res_r, res_w = os.pipe()
    try:
        guardian = subprocess.Popen(
            [sys.executable, "-c", GUARDIAN, str(life_r), str(res_w), *argv],
            cwd=cwd or None,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(life_r, res_w),
            start_new_session=True,
        )
    except OSError as exc:
        for fd in (life_r, life_w, res_r, res_w):
            os.close(fd)
        return failed(f"buildctl: cannot run a job in {cwd} on node {base['node']}: {exc}\n")
    os.close(life_r)
    os.close(res_w)
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}

    def pump(stream: Any, key: str) -> None:
        size = 0
        for chunk in iter(lambda: stream.read1(65536), b""):
            chunks[key].append(chunk)
            size += len(chunk)
            while size > OUTPUT_CAP and len(chunks[key]) > 1:  # keep the tail
                size -= len(chunks[key].pop(0))
        stream.close()

    readers = [
        threading.Thread(target=pump, args=(guardian.stdout, "out"), daemon=True),
        threading.Thread(target=pump, args=(guardian.stderr, "err"), daemon=True),
    ]
    for reader in readers:
        reader.start()
    peak = [0, 0.0]  # tree RSS sum, tree CPU seconds
    series: list[tuple[float, int]] = []
    done = threading.Event()
    job_pid = [0]

    def sample() -> None:
        while not done.is_set():
            tree = sample_tree(job_pid[0], time.time())
            if tree is None:
                return
            rss, cpu = tree.rss, tree.cpu_s  # CPU of the live tree and its reaped children
            peak[0] = max(peak[0], rss)
            peak[1] = max(peak[1], cpu)
            now = time.time()
            # A thinned series (node clock) so the driver can sum what ran at once.
            if not series or now - series[-1][0] >= SERIES_STEP_S or rss > series[-1][1]:
                series.append((round(now, 3), rss))
                if len(series) > SERIES_MAX:
                    series[:] = thin_series(series)
            done.wait(sample_interval_s)

    result: dict[str, Any] = {}
    try:
        with os.fdopen(res_r, "rb") as res:
            first = res.readline()
            if first:
                job_pid[0] = int(json.loads(first)["pid"])
                threading.Thread(target=sample, daemon=True).start()
                last = res.readline()  # EOF here: the guardian itself was killed
                result = json.loads(last) if last else {}
        guardian.wait()
    finally:
        # A task interrupted here (ray.cancel) takes the job down with it; so does the
        # guardian once the worker is gone and this end of the life pipe closes.
        if not result and job_pid[0]:
            with contextlib.suppress(OSError):
                os.killpg(job_pid[0], signal.SIGKILL)
        done.set()
        os.close(life_w)
    ended = time.time()
    for reader in readers:
        reader.join(10)
    if "status" in result:
        code = os.waitstatus_to_exitcode(int(result["status"]))
    else:
        code = -signal.SIGKILL
    sig = -code if code < 0 else 0
    rc = 128 + sig if sig else code  # what a shell (and ninja) would report
    out = b"".join(chunks["out"]).decode(errors="replace")
    err = b"".join(chunks["err"]).decode(errors="replace")
    return {
        **base,
        "rc": rc,
        "signal": sig,
        "maxrss": int(result.get("maxrss", 0)) * 1024,  # Linux: KiB; covers the waited-for tree
        "tree_peak": peak[0],
        "cpu_s": max(float(result.get("cpu_s", 0.0)), peak[1]),
        "wall_s": ended - started,
        "stdout": out,
        "stderr": err,
        "stderr_tail": err[-TAIL_BYTES:],
        "ended_epoch": ended,
        "rss_series": series,
    }


def thin_series(series: Sequence[tuple[float, int]]) -> list[tuple[float, int]]:
    """Half the points: each pair becomes one at the pair's first time with the pair's higher
    RSS, so a thinned series never hides a peak (it may only move it earlier by one step)."""
    out = [(series[i][0], max(p[1] for p in series[i : i + 2])) for i in range(0, len(series), 2)]
    return out


def peak_of_sum(runs: Sequence[tuple[Sequence[tuple[float, int]], float]]) -> int:
    """The highest total RSS of jobs that ran at once, from each job's series and end time.

    A job's RSS is taken to hold from one sample to the next and to be 0 after it ended. Pure;
    the times must come from one clock (one node, or nodes whose clocks agree)."""
    events: list[tuple[float, int, int]] = []  # (time, order, job) -- ends sort first
    values: list[list[int]] = []
    for job, (series, ended) in enumerate(runs):
        kept = [(t, rss) for t, rss in series if t < ended]
        values.append([rss for _, rss in kept])
        events.extend((t, 1, job) for t, _ in kept)
        if kept:
            events.append((ended, 0, job))
    events.sort()
    current = [0] * len(runs)
    cursor = [0] * len(runs)
    total = peak = 0
    for _t, kind, job in events:
        new = 0
        if kind == 1:
            new = values[job][cursor[job]]
            cursor[job] += 1
        total += new - current[job]
        current[job] = new
        peak = max(peak, total)
    return peak


def job_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a remote job gets: ours (the one ninja would give a local compile),
    minus what only makes sense on this host or to this process."""
    drop_prefixes = ("RAY_", "BUILDCTL_SOCKET")
    drop = {
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
        "HOSTNAME",
        "XDG_RUNTIME_DIR",
        "TERM",
        "DISPLAY",
        "SSH_AUTH_SOCK",
        "SSH_CONNECTION",
        "SSH_CLIENT",
        "SSH_TTY",
        "NINJA_STATUS",
    }
    source = os.environ if base is None else base
    return {k: v for k, v in source.items() if k not in drop and not k.startswith(drop_prefixes)}


def round_memory(num_bytes: float, step: int = 32 * MiB) -> int:
    """Ray memory requests in whole steps, so near-equal predictions pack alike."""
    steps = max(1, -(-int(num_bytes) // step))
    return steps * step


def is_oom(ray: ModuleType, exc: BaseException) -> bool:
    return isinstance(exc, ray.exceptions.OutOfMemoryError)
