"""Governed jobs on a Ray cluster.

`RayExecutor` is the governor's `RemoteExecutor`: once the governor admits a job (against the
cluster's total memory and CPUs), the job becomes a Ray task asking for `num_cpus=<its CPU
share>` (1, or less for a job its profile shows mostly waiting) and `memory=<its predicted
peak>`, so Ray only places it on a node whose memory resource still has room. The task runs the
exact argv in the same cwd (shared file system), measures the tree's peak RSS and CPU time, and
returns its output and node; the governor records that in the report and the profile DB like a
local job.

Failures:
- a node lost mid-build: Ray re-runs its tasks elsewhere (`max_retries`); a compile rewrites its
  whole output, and the task's supervisor kills the old tree when its worker dies, so a re-run
  never races a stale writer. Beyond Ray's retries we resubmit a few times ourselves.
- killed by Ray's memory monitor (`OutOfMemoryError`): resubmitted asking 1.5x the memory, up to
  the largest node, so it lands where it fits or runs with fewer neighbours.

`run_matrix_on_ray` fans out whole builds (e.g. one `buildctl wheel` per torch version), each
asking for the memory of its planned budget.

`import ray` happens only when a cluster is joined: the default install never imports it.

Why one module of about 600 lines: the executor, its submit-and-retry loop and the matrix
fan-out share one Ray connection and one classification of task failures (lost node, memory
monitor, cancel); the code that runs on the nodes and the cluster checks are in
`ray_cluster.py`. Cutting the submitter from the executor would move private state across a
module boundary without making either easier to read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from buildctl.errors import BadInput, BuildctlError
from buildctl.govern import ray_cluster
from buildctl.govern.ray_cluster import ClusterInfo, round_memory
from buildctl.host import format_size

if TYPE_CHECKING:
    from buildctl.govern.governor import Governor, Job
    from buildctl.govern.session import GovernedSession, SessionOptions


@dataclass(frozen=True)
class RemoteRun:
    """One attempt of one job on the cluster, as the executor saw it (node-side clock)."""

    output: str
    memory_request: int
    outcome: str  # ok | failed | oom | lost | cancelled
    node: str | None = None
    started_epoch: float = 0.0
    ended_epoch: float = 0.0
    detail: str = ""


@dataclass
class RetryPolicy:
    """How often a job is re-run after the cluster, not the job, failed."""

    ray_max_retries: int = 3  # Ray's own re-runs after a worker or node dies
    lost_resubmits: int = 2  # ours, after Ray gave up
    oom_resubmits: int = 3
    oom_growth: float = 1.5


class _Submitter:
    """Submits one argv as a Ray task and waits for it, growing the memory request after a kill
    by Ray's memory monitor and resubmitting after a lost node."""

    def __init__(
        self,
        ray: ModuleType,
        info: ClusterInfo,
        policy: RetryPolicy,
        extra_resources: Mapping[str, float] | None,
        sample_interval_s: float,
    ) -> None:
        self.ray = ray
        self.info = info
        self.policy = policy
        self.extra_resources = dict(extra_resources or {})
        self.sample_interval_s = sample_interval_s
        self.remote = ray.remote(ray_cluster._node_run)
        self.inflight: set[Any] = set()
        self.lock = threading.Lock()
        self.cancelled = False  # Ctrl-C or close(): a cancelled task is not "lost", never rerun

    def request_for(self, predicted: float) -> int:
        """Rounded up, never above the largest node: Ray would keep that task pending forever."""
        return min(round_memory(predicted), self.info.largest_node_memory)

    async def run(
        self,
        output: str,
        argv: list[str],
        cwd: str | None,
        env: dict[str, str] | None,
        predicted: float,
        num_cpus: float,
        note: Callable[[RemoteRun], None],
        event: Callable[..., None],
    ) -> dict[str, Any]:
        request = self.request_for(predicted)
        ooms = lost = 0
        while True:
            ref = self.remote.options(
                num_cpus=num_cpus,
                memory=request,
                max_retries=self.policy.ray_max_retries,
                retry_exceptions=False,
                resources=self.extra_resources or None,
            ).remote(argv, cwd, env, self.sample_interval_s)
            with self.lock:
                self.inflight.add(ref)
            try:
                facts: dict[str, Any] = await asyncio.wrap_future(ref.future())
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=True)
                raise
            except Exception as exc:
                now = time.time()
                if self.cancelled:
                    note(RemoteRun(output, request, "cancelled", ended_epoch=now))
                    return _failure(130, f"buildctl: {output} was cancelled on the Ray cluster\n")
                if ray_cluster.is_oom(self.ray, exc):
                    note(RemoteRun(output, request, "oom", ended_epoch=now, detail=str(exc)))
                    bigger = self.request_for(request * self.policy.oom_growth)
                    if ooms >= self.policy.oom_resubmits:
                        return _failure(
                            137,
                            f"buildctl: {output} was killed by Ray's memory monitor "
                            f"{ooms + 1} times (last asking {format_size(request)}): {exc}\n",
                        )
                    ooms += 1
                    event(
                        "retry",
                        output,
                        f"killed by Ray's memory monitor asking {format_size(request)}; "
                        f"re-queued asking {format_size(bigger)}",
                        memory_request=bigger,
                    )
                    request = bigger
                    continue
                note(RemoteRun(output, request, "lost", ended_epoch=now, detail=repr(exc)))
                if lost >= self.policy.lost_resubmits or isinstance(
                    exc, self.ray.exceptions.RayTaskError
                ):
                    return _failure(1, f"buildctl: {output} failed on the Ray cluster: {exc}\n")
                lost += 1
                event(
                    "retry", output, f"lost on the Ray cluster ({type(exc).__name__}); resubmitted"
                )
                await asyncio.sleep(1.0)
                continue
            finally:
                with self.lock:
                    self.inflight.discard(ref)
            if self.cancelled and facts.get("rc") != 0:  # it died of the cancel, not of itself
                note(
                    RemoteRun(
                        output,
                        request,
                        "cancelled",
                        node=facts.get("node"),
                        ended_epoch=time.time(),
                    )
                )
                return _failure(130, f"buildctl: {output} was cancelled on the Ray cluster\n")
            facts["memory_request"] = request
            note(
                RemoteRun(
                    output,
                    request,
                    "ok" if facts.get("rc") == 0 else "failed",
                    node=facts.get("node"),
                    started_epoch=float(facts.get("started_epoch", 0.0)),
                    ended_epoch=float(facts.get("ended_epoch", 0.0)),
                )
            )
            return facts

    def cancel_all(self) -> None:
        with self.lock:
            self.cancelled = True
            refs = list(self.inflight)
        for ref in refs:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)


def _failure(rc: int, message: str) -> dict[str, Any]:
    return {
        "rc": rc,
        "maxrss": 0,
        "tree_peak": 0,
        "cpu_s": 0.0,
        "wall_s": 0.0,
        "stdout": "",
        "stderr": message,
        "stderr_tail": message,
        "node": None,
    }


class RayExecutor:
    """The governor's RemoteExecutor for a Ray cluster (see the module docstring)."""

    def __init__(
        self,
        ray: ModuleType,
        info: ClusterInfo,
        *,
        env: Mapping[str, str] | None = None,
        extra_resources: Mapping[str, float] | None = None,
        policy: RetryPolicy | None = None,
        sample_interval_s: float = 0.05,
        owns_connection: bool = True,
        build_dir: Path | None = None,
        check_paths: Sequence[Path | str] = (),
        watch_interval_s: float = 1.0,
    ) -> None:
        self.ray = ray
        self.info = info
        self.env = ray_cluster.job_env(env)
        self.policy = policy or RetryPolicy()
        self._submitter = _Submitter(ray, info, self.policy, extra_resources, sample_interval_s)
        self.runs: list[RemoteRun] = []
        self._runs_lock = threading.Lock()
        self._owns_connection = owns_connection
        self._governor: Governor | None = None
        self._tools_ok: dict[str, str] = {}  # compiler path -> "" (ok) or the problem
        self._tool_locks: dict[str, asyncio.Lock] = {}
        self._build_dir = build_dir
        self._check_paths = list(check_paths)
        self._watch_interval_s = watch_interval_s
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()
        self._series: list[tuple[list[tuple[float, int]], float]] = []
        self.peak_total_rss = 0

    # --- wiring ------------------------------------------------------------------------------

    def attach(self, governor: Governor) -> None:
        """Gives the executor the governor's clock (to report when a job really started on its
        node) and its event log (retries after OOM kills, nodes leaving and joining)."""
        self._governor = governor
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch_nodes, name="ray-nodes", daemon=True
            )
            self._watcher.start()

    def describe(self) -> str:
        return self.info.describe()

    def cancel_all(self) -> None:
        """Ctrl-C: kill every job still running on the cluster."""
        self._submitter.cancel_all()

    def close(self) -> None:
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join(10)
        self.cancel_all()
        if self._owns_connection and self.ray.is_initialized():
            self.ray.shutdown()

    # --- the RemoteExecutor protocol ---------------------------------------------------------

    async def run(self, job: Job) -> dict[str, Any]:
        entered = time.monotonic()
        problem = await self._check_tool(job.argv[0] if job.argv else "", job.env)
        if problem:
            return _failure(127, f"buildctl: {problem}\n")
        facts = await self._submitter.run(
            job.output,
            list(job.argv),
            job.cwd or None,
            ray_cluster.job_env(job.env) if job.env else self.env,
            job.prediction.bytes,
            job.cpu_share,  # a job measured mostly waiting asks for part of a CPU
            self._note,
            self._event,
        )
        if facts.get("node") is None:
            return facts
        # The governor's sampler cannot see a remote tree: hand it what the node measured.
        job.peak_rss = max(job.peak_rss, int(facts.get("tree_peak", 0)))
        self._record_series(facts)
        job.cpu_s = float(facts.get("cpu_s", 0.0))
        # Report the time the job started on its node, not when it was handed to Ray.
        now = (
            self._governor.now()
            if self._governor
            else job.started_at + (time.monotonic() - entered)
        )
        began = now - (time.time() - float(facts.get("started_epoch", time.time())))
        job.started_at = min(max(job.started_at, began), now)
        return facts

    # --- helpers -----------------------------------------------------------------------------

    def _record_series(self, facts: Mapping[str, Any]) -> None:
        """The build's peak total RSS over the cluster: the sum of what ran at once, from each
        job's node-side RSS series (node clocks; they agree to NTP accuracy). Reported like the
        local sampler's peak, which cannot see remote trees."""
        series = [(float(t), int(rss)) for t, rss in facts.get("rss_series") or ()]
        if not series:
            return
        ended = float(facts.get("ended_epoch", series[-1][0]))
        start = series[0][0]
        with self._runs_lock:
            self._series.append((series, ended))
            # Only the runs that overlap this one can raise the peak now; the last-recorded
            # of the runs active at any instant sees all of them, so nothing is missed.
            overlapping = [r for r in self._series if r[0][0][0] < ended and r[1] > start]
            peak = ray_cluster.peak_of_sum(overlapping)
        self.peak_total_rss = max(self.peak_total_rss, peak)
        if self._governor is not None:
            self._governor.peak_total_rss = max(self._governor.peak_total_rss, peak)

    def _note(self, run: RemoteRun) -> None:
        with self._runs_lock:
            self.runs.append(run)

    def _event(self, kind: str, output: str | None, detail: str, **data: object) -> None:
        if self._governor is not None:
            self._governor.event(kind, output, detail, **data)

    async def _check_tool(self, tool: str, job_env: Mapping[str, str] | None) -> str:
        """The first time a compiler shows up, check every node has it (cached)."""
        if not tool:
            return ""
        path = ray_cluster.resolve_tool(tool, (job_env or self.env).get("PATH"))
        if path in self._tools_ok:
            return self._tools_ok[path]
        lock = self._tool_locks.setdefault(path, asyncio.Lock())
        async with lock:
            if path not in self._tools_ok:
                loop = asyncio.get_running_loop()
                try:
                    await loop.run_in_executor(
                        None,
                        lambda: ray_cluster.check_shared_paths(
                            self.ray,
                            self._alive_info(),
                            (),
                            [path],
                            None,
                            30.0,
                            silent_nodes_fail=False,
                        ),
                    )
                    self._tools_ok[path] = ""
                except BadInput as exc:
                    self._tools_ok[path] = exc.what
        return self._tools_ok[path]

    def _watch_nodes(self) -> None:
        """Put nodes leaving and joining in the report. Ray itself re-runs a lost node's tasks;
        a node that joins is checked for the shared file system (Ray will use it either way, so
        a failed check is the first thing to read when its jobs fail)."""
        known = {n.node_id: n for n in self.info.nodes}
        while not self._closing.wait(self._watch_interval_s):
            try:
                current = {n.node_id: n for n in self._alive_info(strict=True).nodes}
            except Exception:
                continue  # the head is busy or gone: the jobs' own errors will say so
            for node_id in known.keys() - current.keys():
                self._event(
                    "info",
                    None,
                    f"Ray node {known[node_id].label} left the cluster; "
                    "Ray re-runs the jobs it was running on other nodes",
                    node=known[node_id].label,
                )
            if current.keys() != known.keys():  # memory requests are capped by the largest node
                self._submitter.info = ClusterInfo(self.info.address, tuple(current.values()))
            for node_id in current.keys() - known.keys():
                node = current[node_id]
                verdict = "it sees the build tree"
                if self._build_dir is not None:
                    try:
                        ray_cluster.check_shared_paths(
                            self.ray,
                            ClusterInfo(self.info.address, (node,)),
                            [self._build_dir, *self._check_paths],
                            (),
                            self._build_dir,
                            30.0,
                        )
                    except BadInput as exc:
                        verdict = f"WARNING: {exc.what}"
                self._event(
                    "info",
                    None,
                    f"Ray node {node.label} joined the cluster "
                    f"({node.cpus:g} CPUs, {format_size(node.memory)}); {verdict}",
                    node=node.label,
                )
            known = current

    def _alive_info(self, strict: bool = False) -> ClusterInfo:
        try:
            return ray_cluster.cluster_info(
                self.ray, self.info.address, self._submitter.extra_resources
            )
        except BadInput:
            if strict:
                raise
            return self.info


def make_ray_executor(
    address: str,
    build_dir: Path,
    *,
    check_paths: Sequence[Path | str] = (),
    tools: Sequence[str] = (),
    extra_resources: Mapping[str, float] | None = None,
    env: Mapping[str, str] | None = None,
    connect_timeout_s: float = 5.0,
    policy: RetryPolicy | None = None,
) -> tuple[RayExecutor, ClusterInfo]:
    """Join the cluster, check every node sees `build_dir`, `check_paths` (e.g. the source dir)
    and `tools` (e.g. the compiler) at the same paths, and return the executor plus the cluster's
    size: the session's budget is `info.total_memory`, its slots `info.total_cpus`.

    Raises BadInput (exit 2) when ray is not installed, the address is unreachable, or a node
    does not share the file system."""
    ray, joined = ray_cluster.connect(address, connect_timeout_s)
    try:
        info = ray_cluster.cluster_info(ray, address, extra_resources)
        build_dir = Path(build_dir).resolve()
        ray_cluster.check_shared_paths(
            ray, info, [build_dir, *check_paths], tools, marker_dir=build_dir
        )
    except BaseException:
        if joined:
            ray.shutdown()
        raise
    executor = RayExecutor(
        ray,
        info,
        env=env,
        extra_resources=extra_resources,
        policy=policy,
        owns_connection=joined,
        build_dir=build_dir,
        check_paths=check_paths,
    )
    return executor, info


def ray_session(opts: SessionOptions, executor: RayExecutor) -> GovernedSession:
    """A GovernedSession whose admitted jobs run on the cluster, with the executor attached to
    its governor. Works whether or not SessionOptions has an `executor` field yet."""
    import dataclasses

    from buildctl.govern.session import GovernedSession

    if any(f.name == "executor" for f in dataclasses.fields(opts)):
        opts = dataclasses.replace(opts, executor=executor)  # type: ignore[call-arg]
    session = GovernedSession(opts)
    session.governor.opts.executor = executor
    executor.attach(session.governor)  # idempotent if the session attached it already
    return session


# --- whole builds as tasks (buildctl matrix --executor ray) -----------------------------------


@dataclass(frozen=True)
class MatrixBuild:
    name: str  # e.g. "torch 2.5.1"
    argv: list[str]  # e.g. ["buildctl", "wheel", "--torch", "2.5.1", "--mem-budget", "12G", ...]
    memory_bytes: int  # the build's planned budget: Ray places it where that much is free
    cpus: float = 1.0  # its CPU slots
    cwd: str | None = None
    env: Mapping[str, str] | None = None


@dataclass
class MatrixResult:
    name: str
    rc: int
    node: str | None
    memory_request: int
    wall_s: float
    peak_rss_bytes: int
    cpu_s: float
    stdout: str
    stderr: str
    attempts: list[RemoteRun] = field(default_factory=list)


def run_matrix_on_ray(
    builds: Sequence[MatrixBuild],
    address: str,
    *,
    extra_resources: Mapping[str, float] | None = None,
    connect_timeout_s: float = 5.0,
    policy: RetryPolicy | None = None,
    check_paths: Sequence[Path | str] = (),
    on_event: Callable[[str], None] | None = None,
) -> list[MatrixResult]:
    """Run each build's argv as one Ray task asking for its planned memory and CPUs; return the
    results in the order given. Every path the builds use must be shared (see make_ray_executor);
    `check_paths` are checked on every node first (pass the build dirs' parent and the sources).
    """
    ray, joined = ray_cluster.connect(address, connect_timeout_s)
    try:
        info = ray_cluster.cluster_info(ray, address, extra_resources)
        if check_paths:
            ray_cluster.check_shared_paths(ray, info, check_paths)
        submitter = _Submitter(ray, info, policy or RetryPolicy(), extra_resources, 0.25)
        too_big = [b for b in builds if b.memory_bytes > info.largest_node_memory]
        for build in too_big:
            _say(
                on_event,
                f"{build.name}: planned {format_size(build.memory_bytes)} is more than "
                f"any node offers; asking {format_size(info.largest_node_memory)}",
            )
        results = asyncio.run(_run_all(submitter, builds, on_event))
    finally:
        if joined:
            ray.shutdown()
    return results


async def _run_all(
    submitter: _Submitter, builds: Sequence[MatrixBuild], on_event: Callable[[str], None] | None
) -> list[MatrixResult]:
    async def one(build: MatrixBuild) -> MatrixResult:
        attempts: list[RemoteRun] = []

        def event(kind: str, output: str | None, detail: str, **_: object) -> None:
            _say(on_event, f"{output}: {detail}")

        env = ray_cluster.job_env(build.env)
        facts = await submitter.run(
            build.name,
            list(build.argv),
            build.cwd,
            env,
            build.memory_bytes,
            build.cpus,
            attempts.append,
            event,
        )
        return MatrixResult(
            name=build.name,
            rc=int(facts.get("rc", 1)),
            node=facts.get("node"),
            memory_request=int(facts.get("memory_request", 0)),
            wall_s=float(facts.get("wall_s", 0.0)),
            peak_rss_bytes=max(int(facts.get("tree_peak", 0)), int(facts.get("maxrss", 0))),
            cpu_s=float(facts.get("cpu_s", 0.0)),
            stdout=facts.get("stdout", ""),
            stderr=facts.get("stderr", ""),
            attempts=attempts,
        )

    return list(await asyncio.gather(*(one(b) for b in builds)))


def _say(on_event: Callable[[str], None] | None, text: str) -> None:
    if on_event is not None:
        on_event(text)


# --- `python -m buildctl.govern.ray_executor`: is this cluster ready for us? ------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m buildctl.govern.ray_executor",
        description="Join a Ray cluster and check every node sees the build dir at the same path.",
    )
    parser.add_argument("--ray-address", required=True, metavar="HOST:PORT")
    parser.add_argument("--build-dir", type=Path, default=Path.cwd(), metavar="DIR")
    parser.add_argument(
        "--check",
        action="append",
        default=[],
        metavar="PATH",
        help="another path every node must see (sources, compiler)",
    )
    parser.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    try:
        executor, info = make_ray_executor(
            args.ray_address,
            args.build_dir,
            check_paths=args.check,
            connect_timeout_s=args.connect_timeout,
        )
    except BuildctlError as exc:
        sys.stderr.write(exc.render() + "\n")
        return exc.exit_code
    print(info.describe())
    for node in info.nodes:
        print(f"  {node.label}: {node.cpus:g} CPUs, {format_size(node.memory)}")
    executor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
