"""Shared pieces of the side-by-side benchmarks: run a command from clean, measure it from the
outside (wall, CPU, sampled RSS of its whole process tree), and render/record the results.

The sampler is ours, not buildctl's: every ~50 ms it sums the RSS of every process under the
command. Two sums are kept, because the honest answer to "how much memory did the build use"
depends on what you count:

- jobs only: compilers, linkers and whatever they run (memcc, cc1plus, as, ld, ...); not ninja,
  cmake, buildctl's own Python process or its launcher processes. This is what buildctl's budget
  governs and what "exceeded budget" is judged on.
- everything: the whole tree including ninja, buildctl and its launchers (one small Python per
  job that ninja started, waiting or running; RSS counts their shared pages once per process, so
  this overstates the real cost of the launchers).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
MiB = 1024**2
GiB = 1024**3
INFRA_NAMES = {"ninja", "cmake", "ctest"}

sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def mib(n: float) -> str:
    return f"{n / MiB:,.0f} MiB"


class TreeSampler(threading.Thread):
    """Peak summed RSS of a process tree, sampled every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_jobs = 0
        self.peak_all = 0
        self.samples = 0
        self._infra: dict[tuple[int, float], bool] = {}
        # Last CPU time seen per infra process (buildctl, its launchers, ninja): what the
        # controller itself costs, as far as 50 ms sampling sees it.
        self._infra_cpu: dict[tuple[int, float], float] = {}
        self._halt = threading.Event()

    def _is_infra(self, proc: psutil.Process) -> bool:
        """ninja, cmake, buildctl and its launchers: not a build job. Cached per process, since
        reading cmdlines 20 times a second for every process would cost a core."""
        key = (proc.pid, proc.create_time())
        cached = self._infra.get(key)
        if cached is None:
            if proc.pid == self.pid:
                cached = True
            else:
                name = proc.name()
                cmd = " ".join(proc.cmdline()[:4])
                cached = name in INFRA_NAMES or any(
                    mark in cmd for mark in ("buildctl.govern.launcher", "govern/launcher.py")
                )
            self._infra[key] = cached
        return cached

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            jobs = total = 0
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    infra = self._is_infra(proc)
                    if infra:
                        times = proc.cpu_times()
                        key = (proc.pid, proc.create_time())
                        self._infra_cpu[key] = times.user + times.system
                except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
                    continue
                total += rss
                if not infra:
                    jobs += rss
            self.peak_jobs = max(self.peak_jobs, jobs)
            self.peak_all = max(self.peak_all, total)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    @property
    def infra_cpu_s(self) -> float:
        return sum(self._infra_cpu.values())


@dataclass
class Run:
    method: str
    command: list[str]
    rc: int
    wall_s: float
    cpu_s: float  # user + sys of every process of the run that was waited for
    peak_jobs_bytes: int
    peak_all_bytes: int
    failures: int
    budget_bytes: int
    report: dict[str, Any] | None = None
    note: str = ""
    load_before: float = 0.0  # 1-minute load average: how busy the shared machine was
    load_after: float = 0.0
    infra_cpu_s: float = 0.0  # CPU of ninja / buildctl / launchers (a lower bound: sampled)

    @property
    def exceeded(self) -> bool:
        return self.peak_jobs_bytes > self.budget_bytes


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    method: str,
    argv: Sequence[str],
    *,
    budget: int,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    report_path: Path | None = None,
    log: Path | None = None,
    note: str = "",
) -> Run:
    """Run `argv` to the end under our sampler; count failures from buildctl's report or
    ninja's FAILED lines."""
    if report_path is not None:
        report_path.unlink(missing_ok=True)
    print(f"  $ {shlex.join(argv)}", flush=True)
    load0 = os.getloadavg()[0]
    cpu0 = _children_cpu()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.monotonic() - t0
    sampler.stop()
    cpu = _children_cpu() - cpu0
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(out)
    report = None
    if report_path is not None and report_path.exists():
        report = json.loads(report_path.read_text())
    if report is not None:
        failures = sum(1 for j in report["jobs"] if j["status"] not in ("ok", "killed-retried"))
    else:
        failures = out.count("FAILED: ")
    if proc.returncode != 0:
        failures = max(failures, 1)
        tail = "\n".join(out.strip().splitlines()[-15:])
        print(f"  ! {method} exited {proc.returncode}:\n{tail}", flush=True)
    return Run(
        method=method,
        command=list(argv),
        rc=proc.returncode,
        wall_s=wall,
        cpu_s=cpu,
        peak_jobs_bytes=sampler.peak_jobs,
        peak_all_bytes=sampler.peak_all,
        failures=failures,
        budget_bytes=budget,
        report=report,
        note=note,
        load_before=load0,
        load_after=os.getloadavg()[0],
        infra_cpu_s=sampler.infra_cpu_s,
    )


def median_run(runs: list[Run]) -> Run:
    """The run with the median wall time; peaks are the maximum over repeats (a budget holds
    only if it holds every time)."""
    ordered = sorted(runs, key=lambda r: r.wall_s)
    mid = ordered[(len(ordered) - 1) // 2]
    return Run(
        method=mid.method,
        command=mid.command,
        rc=max(r.rc for r in runs),
        wall_s=statistics.median(r.wall_s for r in runs),
        cpu_s=statistics.median(r.cpu_s for r in runs),
        peak_jobs_bytes=max(r.peak_jobs_bytes for r in runs),
        peak_all_bytes=max(r.peak_all_bytes for r in runs),
        failures=sum(r.failures for r in runs),
        budget_bytes=mid.budget_bytes,
        report=mid.report,
        note=mid.note,
        load_before=statistics.median(r.load_before for r in runs),
        load_after=statistics.median(r.load_after for r in runs),
        infra_cpu_s=statistics.median(r.infra_cpu_s for r in runs),
    )


# --- bounds from buildctl's report --------------------------------------------------------------


@dataclass
class Bounds:
    lower_bound_s: float  # max(CPU / cores, sum(peak x wall) / B, longest job)
    slot_bound_s: float  # sum(wall) / slots: binds when jobs sleep (memcc) for a method that runs
    # at most `slots` jobs at once (ninja -jN, buildctl --whole-slots)
    cpu_term_s: float
    mem_term_s: float
    longest_s: float
    jobs: int


def bounds_from_report(report: dict[str, Any], cores: int, budget: int,
                       durations: str = "wall_s") -> Bounds:
    """`durations="cpu_s"` takes each job's CPU time as its duration: for single-threaded
    compilers that is what the job would take on an idle machine, so the bound does not move
    with the background load of a shared machine (not for memcc, whose jobs sleep)."""
    jobs = [j for j in report["jobs"] if j["status"] == "ok"]
    if not jobs:
        return Bounds(0, 0, 0, 0, 0, 0)
    cpu = sum(j["cpu_s"] for j in jobs) / cores
    mem = sum(min(j["peak_rss_bytes"], budget) * j[durations] for j in jobs) / budget
    longest = max(j[durations] for j in jobs)
    slot = sum(j[durations] for j in jobs) / max(1, report.get("slots", cores))
    return Bounds(max(cpu, mem, longest), max(cpu, mem, longest, slot), cpu, mem, longest,
                  len(jobs))


def fastest_jobs(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report-like dict whose jobs are each output's fastest clean run over `reports`
    (its largest peak): the bound then does not grow with a run's own oversubscription (jobs
    run beside too many others take longer, which would make that run's bound easier)."""
    best: dict[str, dict[str, Any]] = {}
    peaks: dict[str, int] = {}
    for report in reports:
        for job in report["jobs"]:
            if job["status"] != "ok":
                continue
            out = job["output"]
            peaks[out] = max(peaks.get(out, 0), job["peak_rss_bytes"])
            if out not in best or job["wall_s"] < best[out]["wall_s"]:
                best[out] = job
    jobs = [dict(job, peak_rss_bytes=peaks[out]) for out, job in best.items()]
    return {**reports[0], "jobs": jobs}


def job_span(report: dict[str, Any]) -> float:
    """First job start to last job end: the build phase buildctl governed."""
    jobs = report["jobs"]
    if not jobs:
        return 0.0
    start = min(j["started_at_s"] for j in jobs)
    return max(j["started_at_s"] + j["wall_s"] for j in jobs) - start


# --- output -------------------------------------------------------------------------------------


def heuristic_jobs(cores: int, budget: int) -> int:
    """vLLM/PyTorch's MAX_JOBS = min(cores, RAM / 8 GB), with the budget standing in for RAM."""
    return max(1, min(cores, budget // (8 * GiB)))


def table(runs: list[Run], reference: Run, bounds: Bounds) -> str:
    head = (
        "| method | wall s | CPU s (of it ninja/buildctl) | peak RSS jobs | peak RSS all | budget "
        "| exceeded | failures | × buildctl | × lower bound | load |\n"
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    )
    rows = [head]
    for run in runs:
        over = f"**yes** (+{mib(run.peak_jobs_bytes - run.budget_bytes)})" if run.exceeded else "no"
        lb = run.wall_s / bounds.lower_bound_s if bounds.lower_bound_s else float("nan")
        rows.append(
            f"| {run.method} | {run.wall_s:.1f} | {run.cpu_s:.1f} ({run.infra_cpu_s:.1f}) "
            f"| {mib(run.peak_jobs_bytes)} "
            f"| {mib(run.peak_all_bytes)} | {mib(run.budget_bytes)} | {over} | {run.failures} "
            f"| {run.wall_s / reference.wall_s:.2f} | {lb:.2f} "
            f"| {run.load_before:.1f}→{run.load_after:.1f} |"
        )
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {
        "host": platform.node(),
        "cores": len(os.sched_getaffinity(0)),
        "ram_bytes": vm.total,
        "available_bytes_at_start": vm.available,
        "load_avg_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "ninja": subprocess.run([find("ninja"), "--version"], capture_output=True, text=True,
                                check=False).stdout.strip(),
        "gxx": subprocess.run(["g++", "-dumpfullversion"], capture_output=True, text=True,
                              check=False).stdout.strip(),
    }


def find(tool: str) -> str:
    """The same lookup buildctl uses (PATH first, then beside this Python)."""
    from buildctl.build import find_tool

    return find_tool(tool)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=1, default=_jsonable) + "\n")
    return path


def _jsonable(value: object) -> object:
    if isinstance(value, Run | Bounds):
        data = asdict(value)
        if isinstance(value, Run):
            data["exceeded"] = value.exceeded
            report = data.pop("report")
            if report is not None:  # jobs and events, not the RSS time series
                data["report"] = {k: v for k, v in report.items() if k != "samples"}
        return data
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def clean(build_dir: Path) -> None:
    """Objects and the library go; the configured tree (and buildctl's configure stamp) stays,
    so every method times the build, not CMake."""
    subprocess.run([find("ninja"), "-C", str(build_dir), "-t", "clean"], check=True,
                   capture_output=True)


def cmake_configure(source: Path, build_dir: Path, defines: dict[str, str],
                    extra: Sequence[str] = ()) -> None:
    if build_dir.exists():
        shutil.rmtree(build_dir)
    argv = [find("cmake"), "-S", str(source), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={find('ninja')}",
            *[f"-D{k}={v}" for k, v in defines.items()], *extra]
    print(f"  $ {shlex.join(argv)}", flush=True)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"configure failed:\n{proc.stdout}\n{proc.stderr}")


@dataclass
class Header:
    command: str
    started: str = field(default_factory=lambda: _dt.datetime.now().isoformat(timespec="seconds"))


def print_header(title: str) -> Header:
    header = Header(command=shlex.join([sys.executable, *sys.argv]))
    print(f"# {title}\n\ncommand: `{header.command}`\nstarted: {header.started}\n", flush=True)
    return header
