"""Side by side on a real third-party CUDA build: ggml's CUDA backend (the ggml/ directory of
llama.cpp, here from its standalone twin github.com/ggml-org/ggml), built with nvcc for one GPU
architecture. Fixed `ninja -jN`, plain `ninja -j$(nproc)`, the MAX_JOBS heuristic and buildctl's
first and second build, each from clean objects, measured from the outside by our own sampler
(bench/_harness.py's TreeSampler: summed RSS of the jobs' processes, ninja and buildctl left out).

    python bench/realbuild_bench.py --src .bench-src/ggml-<commit>.tar.gz \\
        --methods plain,maxjobs,fixed:15-1 --budget-fraction 0.4 --time-limit 540

Source: a `git archive --prefix=ggml/` tarball of ggml (src include cmake CMakeLists.txt
ggml.pc.in LICENSE) or an unpacked ggml directory; fetched sources are never committed (keep them
in a git-ignored folder such as .bench-src/). The commit comes from the tarball's name
(ggml-<sha>.tar.gz) or a COMMIT file beside it.

Methods run in the order given (--methods, comma-separated):
  plain            ninja -j$(nproc); with --budget-fraction it sets the budget B
  fixed:N, fixed:A-B   ninja -jN, or every N from A to B in that order (run the high N first:
                   they are cheap, and with --time-limit the slow low N are the ones skipped)
  maxjobs          ninja -jM, M = max(1, min(nproc, B // 8 GiB)): vLLM's/PyTorch's
                   MAX_JOBS = min(cores, RAM / 8 GB) with the budget standing in for RAM
  buildctl-first   buildctl build with a fresh profile DB (deleted first)
  buildctl-second  buildctl build again with the DB the first left, from clean objects
A fixed -jN already measured in this invocation is not run twice (plain is fixed:nproc).

Every ninja run also records per-job RSS curves (every 0.2 s, each ninja child and all its
descendants counted as one job); the run named by --trace-method is written to
<--trace-dir>/<--trace-name>.json in the format of the shared traces
(/work/shared/traces/README.md). Results go to <--results-dir>/realbuild-<date>.json after
every run, so a run cut short still leaves the finished rows.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import site
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _harness import ROOT, GiB, MiB, TreeSampler, find, heuristic_jobs, machine, mib

OBJ_DIR = "src/ggml-cuda/CMakeFiles/ggml-cuda.dir"
# The template-instance families of the CUDA backend: flash-attention kernels (MMA, tile, vector)
# and the quantised / float matrix-multiplication instances, the heavy compiles of the build.
POOL_FAMILIES = ("mmq-instance-*", "fattn-mma-f16-instance-*", "fattn-tile-instance-*",
                 "mmf-instance-*", "fattn-vec-instance-*")
TRACE_INTERVAL_S = 0.2
BUILDCTL_LABELS = {"buildctl-first": "buildctl, first build (empty profile DB)",
                   "buildctl-second": "buildctl, second build (profiles of the first)"}
# CMake code loaded right after project(ggml): where the toolkit lacks cuBLAS or the driver
# library (a compile-only machine), give ggml-cuda header-only targets so it configures. Only
# object files are built here, never linked, so nothing else changes. On a full toolkit it does
# nothing.
CUDA_SHIM = """\
find_package(CUDAToolkit QUIET)
foreach(lib cublas cuda_driver)
  if (NOT TARGET CUDA::${lib})
    find_path(BENCH_CUBLAS_INCLUDE cublas_v2.h
              HINTS ${CUDAToolkit_INCLUDE_DIRS} ${BENCH_CUBLAS_HINTS})
    message(STATUS "realbuild bench: CUDA::${lib} missing, "
                   "header-only stand-in (${BENCH_CUBLAS_INCLUDE})")
    add_library(CUDA::${lib} INTERFACE IMPORTED GLOBAL)
    target_include_directories(CUDA::${lib} INTERFACE ${BENCH_CUBLAS_INCLUDE})
  endif()
endforeach()
"""


# --- source and configure -------------------------------------------------------------------------


def stage_source(src: Path, work: Path) -> tuple[Path, str]:
    """The ggml directory to build and its commit ("unknown" if nothing says)."""
    if src.is_dir():
        commit_file = src.parent / "COMMIT"
        commit = commit_file.read_text().strip() if commit_file.exists() else "unknown"
        return src.resolve(), commit
    match = re.search(r"([0-9a-f]{40})", src.name)
    commit = match.group(1) if match else "unknown"
    if commit == "unknown" and (src.parent / "COMMIT").exists():
        commit = (src.parent / "COMMIT").read_text().strip()
    dest = work / "src"
    marker = dest / ".staged-from"
    if not (marker.exists() and marker.read_text() == src.name):
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        with tarfile.open(src) as tar:
            tar.extractall(dest, filter="data")
        marker.write_text(src.name)
    ggml = dest / "ggml"
    if not (ggml / "CMakeLists.txt").exists():
        raise SystemExit(f"{src}: no ggml/CMakeLists.txt inside\n"
                         "make it with: git archive --prefix=ggml/ HEAD src include cmake "
                         "CMakeLists.txt ggml.pc.in LICENSE | gzip > ggml-<sha>.tar.gz")
    return ggml.resolve(), commit


def cublas_hints() -> list[str]:
    """Where a pip-installed cuBLAS keeps its headers (nvidia-cublas wheels)."""
    hints = [os.environ["BENCH_CUBLAS_INCLUDE"]] if os.environ.get("BENCH_CUBLAS_INCLUDE") else []
    for base in [*site.getsitepackages(), site.getusersitepackages()]:
        for sub in ("nvidia/cu13/include", "nvidia/cublas/include", "nvidia/cu12/include"):
            if (Path(base) / sub / "cublas_v2.h").exists():
                hints.append(str(Path(base) / sub))
    return hints


def cmake_defines(arch: str, shim: Path) -> list[str]:
    defines = {
        "GGML_CUDA": "ON",
        "CMAKE_CUDA_ARCHITECTURES": arch,
        "CMAKE_BUILD_TYPE": "Release",
        "GGML_BUILD_TESTS": "OFF",
        "GGML_BUILD_EXAMPLES": "OFF",
        "GGML_NATIVE": "OFF",
        # ggml turns ccache on when it finds one: a cache hit would time nothing.
        "GGML_CCACHE": "OFF",
        "CMAKE_PROJECT_ggml_INCLUDE": str(shim),
        "BENCH_CUBLAS_HINTS": ";".join(cublas_hints()),
    }
    return [f"-D{k}={v}" for k, v in defines.items()]


def configure(source: Path, build_dir: Path, defines: Sequence[str]) -> float:
    if build_dir.exists():
        shutil.rmtree(build_dir)
    argv = [find("cmake"), "-S", str(source), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={find('ninja')}", *defines]
    print(f"  $ {shlex.join(argv)}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"configure failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():
        if "realbuild bench" in line:
            print(f"  {line.strip()}", flush=True)
    return time.monotonic() - t0


def object_targets(build_dir: Path) -> list[str]:
    out = subprocess.run([find("ninja"), "-C", str(build_dir), "-t", "targets", "all"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split(":")[0] for line in out.splitlines()
            if line.startswith(OBJ_DIR) and line.split(":")[0].endswith(".cu.o")]


def resolve_targets(spec: str, available: list[str]) -> list[str]:
    """`spec`: comma-separated source names (mmq-instance-q4_k, template-instances/x.cu, x.cu.o),
    shell patterns of them (mmq-instance-*), or `all` for every CUDA object of ggml-cuda."""
    if spec == "all":
        return sorted(available)
    by_stem = {Path(t).name.removesuffix(".cu.o"): t for t in available}
    chosen: list[str] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        stem = Path(item).name.removesuffix(".o").removesuffix(".cu")
        matches = sorted(s for s in by_stem if fnmatch.fnmatchcase(s, stem))
        if not matches:
            raise SystemExit(f"target {item!r} is not an object of ggml-cuda in this tree\n"
                             f"pick from: {', '.join(sorted(by_stem)[:12])}, ...")
        chosen.extend(by_stem[m] for m in matches if by_stem[m] not in chosen)
    return chosen


def default_pool(available: list[str], stride: int) -> list[str]:
    """Every `stride`-th object of each template-instance family: a spread of the heavy jobs,
    small enough to build once at -j$(nproc) for sizing."""
    pool: list[str] = []
    for family in POOL_FAMILIES:
        pool.extend(resolve_targets(family, available)[::stride])
    return pool


def choose_subset(jobs: list[dict[str, Any]], cpu_target: float, min_jobs: int) -> list[str]:
    """Object names for a workload of about `cpu_target` CPU seconds: the largest peaks first,
    leaving out jobs longer than an eighth of the target (one long job would floor the wall of
    every high -jN and make the sweep cost the longest job many times over) unless that leaves
    fewer than `min_jobs`; at least `min_jobs` jobs where the pool has them, so that
    -j$(nproc) has work for every core."""
    done = [j for j in jobs if j["cpu_s"] > 0]
    if not done:
        return []
    by_cpu = sorted(j["cpu_s"] for j in done)
    cap = max(cpu_target / 8, by_cpu[min(min_jobs, len(by_cpu)) - 1])
    ranked = sorted((j for j in done if j["cpu_s"] <= cap),
                    key=lambda j: j["peak_rss_bytes"], reverse=True)
    chosen: list[dict[str, Any]] = []
    total = 0.0
    for job in ranked:
        if total >= cpu_target and len(chosen) >= min_jobs:
            break
        if total + job["cpu_s"] > cpu_target * 1.1 and len(chosen) >= min_jobs:
            continue
        chosen.append(job)
        total += job["cpu_s"]
    return [j["name"] for j in chosen]


# --- per-job RSS curves ---------------------------------------------------------------------------


@dataclass
class JobTrace:
    name: str
    start_s: float
    end_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_bytes: int = 0
    peak_by_process: dict[str, int] = field(default_factory=dict)
    rss: list[list[float]] = field(default_factory=list)


class JobTracer(threading.Thread):
    """Every `interval` s: each direct child of ninja (`/bin/sh -c <command>`) is one job; the
    summed RSS of it and all its descendants is the job's RSS. A job's CPU is, over its live
    processes, user + system + that of their reaped children: every process is counted once,
    alive in itself, after it exits in the parent that waited for it."""

    def __init__(self, ninja_pid: int, t0: float, interval: float = TRACE_INTERVAL_S) -> None:
        super().__init__(daemon=True)
        self.ninja_pid = ninja_pid
        self.t0 = t0  # time.monotonic() when ninja was started
        # The same instant on the wall clock, to place a job's process creation time.
        self.t0_epoch = time.time() - (time.monotonic() - t0)
        self.interval = interval
        self.jobs: dict[tuple[int, float], JobTrace] = {}
        self._halt = threading.Event()

    @staticmethod
    def _job_name(proc: psutil.Process) -> str:
        match = re.search(r"(?:^|\s)-o\s+(\S+)", " ".join(proc.cmdline()))
        return Path(match.group(1)).name if match else f"pid{proc.pid}"

    def _sample(self, root: psutil.Process) -> None:
        now = time.monotonic() - self.t0
        for child in root.children(recursive=False):
            try:
                key = (child.pid, child.create_time())
                job = self.jobs.get(key)
                if job is None:
                    start = min(now, max(0.0, child.create_time() - self.t0_epoch))
                    job = JobTrace(name=self._job_name(child), start_s=round(start, 2))
                    self.jobs[key] = job
                procs = [child, *child.children(recursive=True)]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total = 0
            cpu = 0.0
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    times = proc.cpu_times()
                    name = proc.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                cpu += times.user + times.system + times.children_user + times.children_system
                if rss > job.peak_by_process.get(name, 0):
                    job.peak_by_process[name] = rss
            job.rss.append([round(now - job.start_s, 2), total])
            job.peak_rss_bytes = max(job.peak_rss_bytes, total)
            job.cpu_s = max(job.cpu_s, cpu)
            job.end_s = round(now, 2)

    def run(self) -> None:
        try:
            root = psutil.Process(self.ninja_pid)
        except psutil.NoSuchProcess:
            return
        next_at = time.monotonic()
        while not self._halt.is_set():
            try:
                self._sample(root)
            except psutil.NoSuchProcess:
                return
            # Keep to the schedule: a sample takes a while when 16 jobs run, and sleeping a
            # whole interval after it stretched the spacing to ~0.3 s.
            next_at = max(next_at + self.interval, time.monotonic() + self.interval / 4)
            self._halt.wait(next_at - time.monotonic())

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def traces(self) -> list[JobTrace]:
        jobs = sorted(self.jobs.values(), key=lambda j: (j.start_s, j.name))
        for job in jobs:
            job.cpu_s = round(job.cpu_s, 2)
            # The shell ninja starts holds no memory worth a curve; the compiler's names matter.
            job.peak_by_process.pop("sh", None)
        return jobs


# --- one measured run -----------------------------------------------------------------------------


@dataclass
class RealRun:
    method: str
    jobs_n: int | None  # -jN for ninja runs, --jobs for buildctl
    command: list[str]
    rc: int
    wall_s: float
    cpu_s: float
    peak_jobs_bytes: int
    peak_all_bytes: int
    infra_cpu_s: float
    budget_bytes: int
    done: int
    targets: int
    timed_out: bool = False
    load_before: float = 0.0
    load_after: float = 0.0
    job_summaries: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] | None = None
    kills: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def exceeded(self) -> bool:
        return self.budget_bytes > 0 and self.peak_jobs_bytes > self.budget_bytes

    @property
    def complete(self) -> bool:
        return self.rc == 0 and not self.timed_out and self.done == self.targets


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def built_count(build_dir: Path, targets: Sequence[str], since: float) -> int:
    count = 0
    for target in targets:
        path = build_dir / target
        if path.exists() and path.stat().st_mtime >= since - 1:
            count += 1
    return count


def measure_run(method: str, argv: Sequence[str], *, build_dir: Path, targets: Sequence[str],
                budget: int, jobs_n: int | None, timeout_s: float | None, log: Path,
                trace: bool, env: dict[str, str] | None = None,
                report_path: Path | None = None) -> tuple[RealRun, list[JobTrace]]:
    if report_path is not None:
        report_path.unlink(missing_ok=True)
    print(f"  $ {shlex.join(argv)}" + (f"   (limit {timeout_s:.0f} s)" if timeout_s else ""),
          flush=True)
    load0 = os.getloadavg()[0]
    cpu0 = _children_cpu()
    started_wall = time.time()
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        tracer = JobTracer(proc.pid, t0) if trace else None
        if tracer is not None:
            tracer.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(proc)
    wall = time.monotonic() - t0
    sampler.stop()
    if tracer is not None:
        tracer.stop()
    cpu = _children_cpu() - cpu0
    traces = tracer.traces() if tracer is not None else []
    report = None
    if report_path is not None and report_path.exists():
        try:
            report = json.loads(report_path.read_text())
        except json.JSONDecodeError:
            report = None
    done = built_count(build_dir, targets, started_wall)
    run = RealRun(
        method=method, jobs_n=jobs_n, command=list(argv), rc=proc.returncode, wall_s=wall,
        cpu_s=cpu, peak_jobs_bytes=sampler.peak_jobs, peak_all_bytes=sampler.peak_all,
        infra_cpu_s=sampler.infra_cpu_s, budget_bytes=budget, done=done, targets=len(targets),
        timed_out=timed_out, load_before=load0, load_after=os.getloadavg()[0],
        job_summaries=[{k: v for k, v in asdict(j).items() if k != "rss"} for j in traces],
        report=_slim_report(report),
    )
    if run.rc != 0 or timed_out:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-12:])
        print(f"  ! {method}: rc {run.rc}{', timed out' if timed_out else ''}, "
              f"{done}/{len(targets)} objects\n{tail}", flush=True)
    print(f"    wall {wall:.1f} s, CPU {cpu:.1f} s, peak jobs {mib(sampler.peak_jobs)}, "
          f"{done}/{len(targets)} objects", flush=True)
    return run, traces


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _slim_report(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {k: v for k, v in report.items() if k != "samples"}


def kill_summary(report: dict[str, Any] | None) -> dict[str, Any]:
    """Kills, freezes and re-runs as buildctl's report tells them (the report's schema is
    read loosely: only event kinds and job attempts/statuses are relied on)."""
    if report is None:
        return {}
    kinds: dict[str, int] = {}
    lost_cpu = 0.0
    for event in report.get("events", []):
        kind = str(event.get("kind", ""))
        kinds[kind] = kinds.get(kind, 0) + 1
        data = event.get("data") or {}
        if "kill" in kind:
            for key in ("cpu_s", "cpu_lost_s", "lost_cpu_s"):
                if isinstance(data.get(key), int | float):
                    lost_cpu += float(data[key])
                    break
    jobs = report.get("jobs", [])
    retried = [j for j in jobs if int(j.get("attempts", 1)) > 1]
    return {
        "events": kinds,
        "kill_events": sum(n for k, n in kinds.items() if "kill" in k),
        "freeze_events": sum(n for k, n in kinds.items() if "freeze" in k),
        "jobs_rerun": len(retried),
        "extra_attempts": sum(int(j.get("attempts", 1)) - 1 for j in retried),
        "jobs_killed_twice_or_more": sum(1 for j in retried if int(j.get("attempts", 1)) > 2),
        "report_cpu_lost_s": round(lost_cpu, 1) if lost_cpu else None,
        "report_status": report.get("status"),
    }


# --- methods --------------------------------------------------------------------------------------


@dataclass
class Step:
    kind: str  # fixed | maxjobs | buildctl-first | buildctl-second
    n: int | None = None  # -jN for fixed
    plain: bool = False


def parse_methods(text: str, cores: int) -> list[Step]:
    steps: list[Step] = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        if item == "plain":
            steps.append(Step("fixed", cores, plain=True))
        elif item.startswith("fixed:"):
            rng = item.removeprefix("fixed:")
            try:
                if "-" in rng:
                    a, b = (int(x) for x in rng.split("-", 1))
                    step = 1 if b >= a else -1
                    steps.extend(Step("fixed", n) for n in range(a, b + step, step))
                else:
                    steps.append(Step("fixed", int(rng)))
            except ValueError:
                raise SystemExit(f"--methods: {item!r} is not fixed:N or fixed:A-B") from None
        elif item in ("maxjobs", "buildctl-first", "buildctl-second"):
            steps.append(Step(item))
        else:
            raise SystemExit(f"--methods: unknown method {item!r}\n"
                             "use plain, fixed:N, fixed:A-B, maxjobs, buildctl-first, "
                             "buildctl-second")
    if any(s.n is not None and s.n < 1 for s in steps):
        raise SystemExit("--methods: -jN needs N >= 1")
    return steps


def estimate_wall(n: int, cores: int, job_cpu: list[float]) -> float:
    """A fixed -jN run's wall from the jobs' CPU times: the larger of the CPU spread over
    min(N, cores) and the longest job, plus a little for ninja's start and the stragglers."""
    if not job_cpu:
        return 0.0
    return max(sum(job_cpu) / min(n, cores), max(job_cpu)) * 1.2 + 3.0


def parse_size(text: str) -> int:
    from buildctl.host import parse_size as _parse

    return _parse(text)


def buildctl_argv(source: Path, build_dir: Path, budget: int, cores: int, db: Path,
                  report: Path, targets: Sequence[str], defines: Sequence[str],
                  extra: Sequence[str]) -> list[str]:
    return [
        sys.executable, "-c", "import sys; from buildctl.cli import main; sys.exit(main())",
        "build", "--source", str(source), "--build-dir", str(build_dir), "--plain",
        "--mem-budget", f"{budget // MiB}M", "--jobs", str(cores), "--profiles", str(db),
        "--report", str(report), *extra, *[a for t in targets for a in ("--target", t)],
        "--", *defines,
    ]


# --- output ---------------------------------------------------------------------------------------


def render_table(runs: list[RealRun], skipped: list[dict[str, Any]], budget: int,
                 best: RealRun | None, heur: RealRun | None) -> str:
    rows = [
        "| method | wall s | CPU s | peak RSS jobs | > B? | done | × best fitting -jN "
        "| × MAX_JOBS | notes |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for run in runs:
        over = (f"**yes** (+{mib(run.peak_jobs_bytes - budget)})" if run.exceeded
                else ("no" if budget else "—"))
        vs_best = f"{run.wall_s / best.wall_s:.2f}" if best and run.complete else "—"
        vs_heur = f"{run.wall_s / heur.wall_s:.2f}" if heur and run.complete else "—"
        note = run.note
        if run.kills:
            kills = run.kills
            note = (note + "; " if note else "") + (
                f"kills {kills.get('kill_events', 0)}, freezes {kills.get('freeze_events', 0)}, "
                f"re-runs {kills.get('extra_attempts', 0)}")
        wall = f"{run.wall_s:.1f}" + ("" if run.complete else " (not finished)")
        rows.append(f"| {run.method} | {wall} | {run.cpu_s:.1f} | {mib(run.peak_jobs_bytes)} "
                    f"| {over} | {run.done}/{run.targets} | {vs_best} | {vs_heur} | {note} |")
    for item in skipped:
        rows.append(f"| {item['method']} | **not run**: ≥ {item['wall_lower_bound_s']:.1f} "
                    f"| — | — | — | — | — | — | {item['why']} |")
    return "\n".join(rows)


def trace_payload(traces: list[JobTrace], run: RealRun, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": (
            f"Per-job RSS over time from a real nvcc build of {len(traces)} object files of "
            f"ggml's CUDA backend (llama.cpp's ggml/, commit {info['commit'][:12]}, "
            f"sm_{info['arch']}), `{run.method}` on a {info['cores']}-core, "
            f"{info['ram_gib']} GiB host. Job names are the object files. Each job's RSS is the "
            f"sum over its process tree (sh, nvcc, cudafe++, cicc, ptxas, cc1plus, fatbinary), "
            f"sampled every {TRACE_INTERVAL_S} s; t is seconds since the job started; start_s "
            f"and end_s are seconds since ninja started (process creation; last sample that saw "
            f"the job)."
        ),
        "host": {"cores": info["cores"], "ram_gib": info["ram_gib"],
                 "compiler": info["compiler"], "jobs": run.jobs_n},
        "wall_s": round(run.wall_s, 2),
        "jobs": [asdict(j) for j in traces],
    }


def prefault(size: int) -> None:
    """Touch `size` bytes once and free them: on a VM whose memory grows as it is first used, the
    first build would otherwise pay for the growth and the others not."""
    before = psutil.virtual_memory().total
    t0 = time.monotonic()
    block = bytearray(size)
    block[:: 4096] = b"\x01" * len(range(0, size, 4096))
    del block
    print(f"  prefault {mib(size)}: MemTotal {mib(before)} -> "
          f"{mib(psutil.virtual_memory().total)} in {time.monotonic() - t0:.1f} s", flush=True)


def tool_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, check=False).stdout
    except OSError:
        return "missing"
    lines = [line.strip() for line in out.strip().splitlines() if line.strip()]
    # nvcc: "Cuda compilation tools, release 13.0, V13.0.88"; cmake: "cmake version 3.31.6"
    named = [line for line in lines if "release" in line or "version" in line]
    return (named or lines or [""])[0]


def main() -> int:
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True,
                        help="ggml tarball (git archive --prefix=ggml/) or ggml directory")
    parser.add_argument("--work", type=Path, default=Path("/tmp/realbuild"),
                        help="build trees, logs, profile DB (default /tmp/realbuild)")
    parser.add_argument("--methods", default="plain,maxjobs,fixed:1-16",
                        help="comma-separated, run in this order (see above)")
    parser.add_argument("--targets",
                        help="comma-separated ggml-cuda sources or patterns (mmq-instance-q4_k, "
                             "fattn-mma-*), or all; without it a sizing run picks them (below)")
    parser.add_argument("--pool", help="sizing: objects to choose from (same syntax as "
                        "--targets; default every --pool-stride-th template instance)")
    parser.add_argument("--pool-stride", type=int, default=2)
    parser.add_argument("--size-cpu", type=float, default=140.0,
                        help="sizing: CPU seconds the chosen workload should take (default 140)")
    parser.add_argument("--min-jobs", type=int, default=0,
                        help="sizing: at least this many objects (default nproc + 4)")
    parser.add_argument("--arch", default="90", help="CMAKE_CUDA_ARCHITECTURES (default 90)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget", help="memory budget B, e.g. 18G")
    budget.add_argument("--budget-fraction", type=float, default=0.4,
                        help="B = this × plain ninja -j$(nproc)'s peak (default 0.4; plain must "
                             "run first)")
    parser.add_argument("--time-limit", type=float, default=0,
                        help="seconds for the whole script: fixed -jN runs estimated not to fit "
                             "are skipped (reported with a lower bound), buildctl runs are cut "
                             "off (and reported as not finished)")
    parser.add_argument("--trace-method", default="plain",
                        help="ninja run whose per-job curves go to the trace file: plain or "
                             "fixed:N (default plain)")
    parser.add_argument("--trace-name", default="ggml-cuda-sm90",
                        help="trace file name without .json")
    parser.add_argument("--trace-dir", type=Path, default=ROOT / "bench" / "traces")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--prefault", help="touch this much memory once before the runs")
    parser.add_argument("--buildctl-arg", action="append", default=[],
                        help="extra argument for both buildctl runs (repeatable)")
    args = parser.parse_args()

    started = time.monotonic()
    deadline = started + args.time_limit if args.time_limit else None
    steps = parse_methods(args.methods, cores)
    fixed_budget = parse_size(args.budget) if args.budget else 0
    needs_budget = [s for s in steps if s.kind != "fixed"]
    if needs_budget and not fixed_budget:
        first_plain = next((i for i, s in enumerate(steps) if s.plain), None)
        first_needy = steps.index(needs_budget[0])
        if first_plain is None or first_plain > first_needy:
            raise SystemExit("maxjobs and buildctl need the budget: pass --budget, or put plain "
                             "first in --methods")
    trace_n = cores if args.trace_method == "plain" else int(args.trace_method.split(":")[1])

    args.work.mkdir(parents=True, exist_ok=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results_path = args.results_dir / f"realbuild-{stamp}.json"
    command = shlex.join([sys.executable, *sys.argv])
    print(f"# real project: ggml CUDA backend\n\ncommand: `{command}`\n", flush=True)

    if args.prefault:
        prefault(parse_size(args.prefault))
    source, commit = stage_source(args.src, args.work)
    shim = args.work / "cuda-shim.cmake"
    shim.write_text(CUDA_SHIM)
    defines = cmake_defines(args.arch, shim)
    plain_dir = args.work / "plain"
    configure_s = configure(source, plain_dir, defines)
    ninja = find("ninja")
    available = object_targets(plain_dir)
    sizing: dict[str, Any] | None = None
    if args.targets:
        targets = resolve_targets(args.targets, available)
    else:
        pool = (resolve_targets(args.pool, available) if args.pool
                else default_pool(available, args.pool_stride))
        print(f"sizing: {len(pool)} pool objects at -j{cores}, choosing about {args.size_cpu:g} "
              f"CPU s of them", flush=True)
        left = deadline - time.monotonic() if deadline else None
        pool_run, _ = measure_run(
            f"sizing: ninja -j{cores} over the pool", [ninja, "-C", str(plain_dir), f"-j{cores}",
                                                        *pool],
            build_dir=plain_dir, targets=pool, budget=0, jobs_n=cores, timeout_s=left,
            log=args.work / "log-sizing.txt", trace=True)
        by_name = {Path(t).name: t for t in pool}
        names = choose_subset(pool_run.job_summaries, args.size_cpu,
                              args.min_jobs or cores + 4)
        targets = [by_name[n] for n in names if n in by_name]
        if not targets:
            raise SystemExit("sizing: the pool run measured no job; pass --targets")
        sizing = {"pool": pool, "run": _run_dict(pool_run), "cpu_target_s": args.size_cpu,
                  "chosen_cpu_s": round(sum(j["cpu_s"] for j in pool_run.job_summaries
                                            if j["name"] in names), 1)}
    targets_arg = ",".join(Path(t).name.removesuffix(".cu.o") for t in targets)
    print(f"targets ({len(targets)}): --targets {targets_arg}", flush=True)
    vm = psutil.virtual_memory()
    info: dict[str, Any] = {
        "project": "ggml CUDA backend (llama.cpp's ggml/; standalone github.com/ggml-org/ggml)",
        "commit": commit, "arch": args.arch, "cores": cores,
        "ram_gib": round(vm.total / GiB), "compiler": tool_version(["nvcc", "--version"]),
        "cmake": tool_version([find("cmake"), "--version"]),
    }
    print(f"source {source} (commit {commit}), {len(targets)} objects, {cores} cores, "
          f"{mib(vm.total)} RAM, {info['compiler']}; configure {configure_s:.1f} s\n", flush=True)

    runs: list[RealRun] = []
    skipped: list[dict[str, Any]] = []
    by_n: dict[int, RealRun] = {}
    job_cpu: list[float] = []
    budget = fixed_budget
    budget_how = f"--budget {args.budget}" if args.budget else ""
    heur_n: int | None = None
    heur_run: RealRun | None = None
    trace_written: Path | None = None
    first_db = args.work / "profiles.sqlite"
    gov_dir = args.work / "gov"
    gov_configured = False

    def save() -> None:
        fitting = [r for r in by_n.values() if r.complete and not r.exceeded and budget]
        best = min(fitting, key=lambda r: r.wall_s) if fitting else None
        for run in runs:
            if run.report is not None and not run.kills:
                run.kills = kill_summary(run.report)
        ref_cpu = (sum(j["cpu_s"] for j in best.job_summaries) if best and best.job_summaries
                   else None)
        derived: dict[str, Any] = {}
        for run in runs:
            if run.method.startswith("buildctl") and ref_cpu is not None:
                derived[run.method] = {
                    "jobs_cpu_s": round(run.cpu_s - run.infra_cpu_s, 1),
                    "reference_jobs_cpu_s": round(ref_cpu, 1),
                    "cpu_lost_estimate_s": round(run.cpu_s - run.infra_cpu_s - ref_cpu, 1),
                    "vs_best_fitting": round(run.wall_s / best.wall_s, 3) if best else None,
                    "maxjobs_wall_over_this": (round(heur_run.wall_s / run.wall_s, 3)
                                   if heur_run and run.complete else None),
                }
        table = render_table(runs, skipped, budget, best, heur_run)
        payload = {
            "command": command, "info": info, "source_dir": str(source), "defines": defines,
            "targets": targets, "targets_arg": targets_arg, "sizing": sizing,
            "budget_bytes": budget, "budget_how": budget_how,
            "maxjobs_n": heur_n,
            "maxjobs_rule": "max(1, min(nproc, B // 8 GiB)): MAX_JOBS = min(cores, RAM/8 GB) "
                            "with the budget standing in for RAM",
            "best_fitting_fixed": best.method if best else None,
            "buildctl_derived": derived, "runs": [_run_dict(r) for r in runs],
            "skipped": skipped, "trace_file": str(trace_written) if trace_written else None,
            "table": table, "configure_s": configure_s,
            "machine": machine(), "elapsed_s": round(time.monotonic() - started, 1),
        }
        results_path.write_text(json.dumps(payload, indent=1) + "\n")

    for step in steps:
        remaining = deadline - time.monotonic() if deadline else None
        if step.kind in ("fixed", "maxjobs"):
            if step.kind == "maxjobs":
                heur_n = heuristic_jobs(cores, budget)
                n = heur_n
            else:
                assert step.n is not None
                n = step.n
            label = (f"ninja -j{n}" + (" (plain, nproc)" if n == cores else "")
                     + (" = MAX_JOBS heuristic" if step.kind == "maxjobs" else ""))
            if n in by_n:
                if step.kind == "maxjobs":
                    heur_run = by_n[n]
                    heur_run.method += " = MAX_JOBS heuristic"
                continue
            est = estimate_wall(n, cores, job_cpu)
            if remaining is not None and est > remaining:
                if step.kind == "fixed" and any(k["n"] == n for k in skipped):
                    continue  # already listed (MAX_JOBS picked this N)
                bound = max(sum(job_cpu) / min(n, cores), max(job_cpu, default=0.0))
                skipped.append({"method": label, "n": n,
                                "wall_lower_bound_s": round(bound, 1),
                                "why": f"not run (time): wall ≥ CPU/{min(n, cores)} and ≥ the "
                                       f"longest job; estimated {est:.0f} s, {remaining:.0f} s "
                                       f"left"})
                print(f"  skip ninja -j{n}: estimated {est:.0f} s, {remaining:.0f} s left",
                      flush=True)
                save()
                continue
            subprocess.run([ninja, "-C", str(plain_dir), "-t", "clean"], check=True,
                           capture_output=True)
            run, traces = measure_run(
                label, [ninja, "-C", str(plain_dir), f"-j{n}", *targets], build_dir=plain_dir,
                targets=targets, budget=budget, jobs_n=n,
                timeout_s=max(remaining, 1) if remaining is not None else None,
                log=args.work / f"log-j{n}.txt", trace=True)
            runs.append(run)
            by_n[n] = run
            if step.kind == "maxjobs":
                heur_run = run
            if traces and run.complete and not job_cpu:
                job_cpu = [j.cpu_s for j in traces]
            if step.plain and not budget and run.complete:
                quantum = 64 * MiB
                budget = max(quantum, int(run.peak_jobs_bytes * args.budget_fraction)
                             // quantum * quantum)
                budget_how = (f"{args.budget_fraction:g} × plain ninja -j{cores}'s peak "
                              f"{mib(run.peak_jobs_bytes)}, rounded down to 64 MiB")
                for earlier in runs:
                    earlier.budget_bytes = budget
                print(f"  budget B = {mib(budget)} ({budget_how})", flush=True)
            if n == trace_n and trace_written is None and traces:
                args.trace_dir.mkdir(parents=True, exist_ok=True)
                trace_written = args.trace_dir / f"{args.trace_name}.json"
                trace_written.write_text(json.dumps(trace_payload(traces, run, info)) + "\n")
                print(f"  trace: {trace_written}", flush=True)
        else:
            if not budget:
                raise SystemExit("no budget: plain did not finish, and no --budget was given")
            if remaining is not None and remaining < 30:
                skipped.append({"method": step.kind, "n": None, "wall_lower_bound_s": 0.0,
                                "why": f"not run (time): {remaining:.0f} s left"})
                save()
                continue
            # One report per run: a second `buildctl-second` must not overwrite the first's.
            runs_of_kind = sum(1 for r in runs if r.method == BUILDCTL_LABELS[step.kind])
            report = args.work / f"report-{step.kind}-{runs_of_kind + 1}.json"
            env = dict(os.environ, BUILDCTL_PROFILE_DB=str(first_db),
                       PYTHONPATH=os.pathsep.join(
                           p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
            if step.kind == "buildctl-first":
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{first_db}{suffix}").unlink(missing_ok=True)
            if not gov_configured:
                # Configure untimed, like the ninja trees: `build.ninja` is a target with no jobs.
                cfg = buildctl_argv(source, gov_dir, budget, cores, first_db,
                                    args.work / "report-configure.json", ["build.ninja"], defines,
                                    args.buildctl_arg)
                proc = subprocess.run(cfg, env=env, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise SystemExit(f"buildctl configure failed:\n{proc.stdout[-3000:]}\n"
                                     f"{proc.stderr[-3000:]}")
                gov_configured = True
            subprocess.run([ninja, "-C", str(gov_dir), "-t", "clean"], check=True,
                           capture_output=True)
            label = BUILDCTL_LABELS[step.kind]
            argv = buildctl_argv(source, gov_dir, budget, cores, first_db, report, targets,
                                 defines, args.buildctl_arg)
            run, _ = measure_run(label, argv, build_dir=gov_dir, targets=targets, budget=budget,
                                 jobs_n=cores, timeout_s=remaining, env=env,
                                 log=args.work / f"log-{step.kind}.txt", trace=False,
                                 report_path=report)
            run.kills = kill_summary(run.report)
            runs.append(run)
        save()

    save()
    payload = json.loads(results_path.read_text())
    print(f"\nbudget B = {mib(budget)} ({budget_how}); MAX_JOBS = -j{heur_n}; best fitting "
          f"fixed: {payload['best_fitting_fixed']}\n")
    print(payload["table"])
    if payload["buildctl_derived"]:
        print("\n" + json.dumps(payload["buildctl_derived"], indent=1))
    print(f"\nresults: {results_path}" + (f"\ntrace: {trace_written}" if trace_written else ""))
    print(f"elapsed {time.monotonic() - started:.0f} s", flush=True)
    return 0


def _run_dict(run: RealRun) -> dict[str, Any]:
    data = asdict(run)
    data["exceeded"] = run.exceeded
    data["complete"] = run.complete
    return data


if __name__ == "__main__":
    sys.exit(main())
