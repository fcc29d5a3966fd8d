#!/usr/bin/env python3
"""A replay "compiler": stands in for the real compiler of a recorded build and replays one job
of a trace (bench/traces/*.json): its RSS curve, scaled, with real memory (every page touched),
and its CPU, scaled, with real work, so a build tool governing it sees what it would see with the
real compiler, on a smaller machine.

Invoked by CMake/ninja as the C++ compiler (through a wrapper that runs it with `python -I -S`).
It finds `replaycc.json` in the source's directory or one above it (at most 6 levels); the
config maps source paths (relative to the config's directory) to trace job names:

    {"trace": "/abs/trace.json", "time_scale": 0.1, "mem_scale": 0.05, "cpu_duty": 0.1,
     "child": true, "tick_s": 0.02, "jobs": {"j01.cu": "j01.cu.o", ...}}

Environment variables override the config: REPLAYCC_CONFIG (the config file itself),
REPLAYCC_TRACE, REPLAYCC_TIME_SCALE, REPLAYCC_MEM_SCALE, REPLAYCC_CPU_DUTY, REPLAYCC_CHILD (0/1),
REPLAYCC_TICK_S, REPLAYCC_LEDGER (a directory for per-process CPU ledgers, see below).
A source not in the config (CMake's compiler checks) goes to the real compiler: REPLAYCC_REAL,
else the config's "real", else g++.

How it follows the job, every tick (20 ms):
- memory: the curve's value at the current point, times mem_scale, is the target RSS of the
  whole replay tree; the replay holds target minus its own baseline (interpreter) in one private
  anonymous mapping, touching every new page and returning freed ones with MADV_DONTNEED.
  With `child`, the memory is held by a child process instead (as nvcc's cicc holds it), and a
  new child is started at every phase boundary of the curve (RSS falling below half of the
  previous sample: one compiler process ended, the next begins).
- CPU: the job was CPU-bound for a fraction f = cpu_s / wall of its run. Each tick the replay
  spins until it has used cpu_duty x f x tick of CPU (or the tick is over), then sleeps. It
  advances along the curve by (1 - f) x wall time + f x own CPU / cpu_duty, never faster than
  the wall clock: uncontended, the job takes wall x time_scale; starved of CPU, it takes longer,
  as a real compile would. Stopped (SIGSTOP), it does not advance.
With cpu_duty = 1/8 on a 2-core machine each job stands for one core of a 16-core host.

Ledger (optional): each replay process keeps `<ledger>/<root pid>.<role>.<pid>` up to date with
"<job> <cpu s> <done 0/1> <wall s> <uncontended wall s>", so a benchmark can tell the CPU of runs
that were killed, and how much the machine stretched the jobs.

Only the standard library, imported lazily: this starts once per compile.
"""

from __future__ import annotations

import bisect
import json
import mmap
import os
import sys
import time

PAGE = mmap.PAGESIZE
CHUNK = 1 << 20
SOURCE_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".c++", ".cu", ".C")
MAX_CONFIG_DEPTH = 6
PHASE_DROP = 0.5  # RSS below this fraction of the previous sample: a new compiler process
PHASE_MIN_FRACTION = 0.02  # ...if the previous sample was at least this fraction of the peak
LEDGER_EVERY_TICKS = 5
# CPU owed from scheduling delays is made up later, up to this many ticks' worth (1 s): a stall
# caused by neighbours on a shared machine is noise, a lasting shortage of CPU is not made up.
CATCH_UP_TICKS = 50


# --- the arguments of a compile ---------------------------------------------------------------


def parse_compile(argv: list[str]) -> tuple[str | None, str | None, str | None, str | None]:
    """(source, output, depfile, dep target) of a compiler command line."""
    source = output = depfile = deptarget = None
    skip_next = {"-o", "-MF", "-MT", "-MQ", "-x", "-I", "-D", "-include", "-isystem"}
    index = 0
    while index < len(argv):
        arg = argv[index]
        value = argv[index + 1] if index + 1 < len(argv) else None
        if arg in skip_next:
            if arg == "-o":
                output = value
            elif arg == "-MF":
                depfile = value
            elif arg in ("-MT", "-MQ"):
                deptarget = value
            index += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            output = arg[2:]
        elif not arg.startswith("-") and arg.endswith(SOURCE_SUFFIXES):
            source = arg
        index += 1
    return source, output, depfile, deptarget


def find_config(source: str) -> str | None:
    explicit = os.environ.get("REPLAYCC_CONFIG")
    if explicit:
        return explicit
    folder = os.path.dirname(os.path.abspath(source))
    for _ in range(MAX_CONFIG_DEPTH):
        candidate = os.path.join(folder, "replaycc.json")
        if os.path.exists(candidate):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return None


def settings(config: dict, env: dict[str, str]) -> dict:
    """The config with REPLAYCC_* environment overrides applied."""
    out = dict(config)
    for key, conv in (("trace", str), ("time_scale", float), ("mem_scale", float),
                      ("cpu_duty", float), ("tick_s", float), ("ledger", str)):
        value = env.get(f"REPLAYCC_{key.upper()}")
        if value:
            out[key] = conv(value)
    if env.get("REPLAYCC_CHILD"):
        out["child"] = env["REPLAYCC_CHILD"] not in ("0", "false", "no")
    out.setdefault("time_scale", 1.0)
    out.setdefault("mem_scale", 1.0)
    out.setdefault("cpu_duty", 1.0)
    out.setdefault("tick_s", 0.02)
    out.setdefault("child", False)
    return out


# --- the curve -------------------------------------------------------------------------------


class Curve:
    """A job's RSS over its own time (trace seconds), linearly interpolated."""

    def __init__(self, points: list[list[float]], wall_s: float) -> None:
        self.times = [float(t) for t, _ in points]
        self.values = [float(v) for _, v in points]
        self.wall_s = max(wall_s, self.times[-1] if self.times else 0.0)
        peak = max(self.values, default=0.0)
        self.boundaries = [
            self.times[i] for i in range(1, len(self.values))
            if self.values[i] < PHASE_DROP * self.values[i - 1]
            and self.values[i - 1] >= PHASE_MIN_FRACTION * peak
        ]

    def at(self, t: float) -> float:
        if not self.times or t >= self.times[-1]:
            return self.values[-1] if self.values and t < self.wall_s else 0.0
        i = bisect.bisect_right(self.times, t)
        if i == 0:
            return self.values[0]
        t0, t1 = self.times[i - 1], self.times[i]
        v0, v1 = self.values[i - 1], self.values[i]
        if v1 < PHASE_DROP * v0:  # a process ended: the drop is a step, not a ramp
            return v0
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)

    def phase(self, t: float) -> int:
        return bisect.bisect_right(self.boundaries, t)


# --- memory ----------------------------------------------------------------------------------


def own_rss() -> int:
    with open("/proc/self/statm", "rb") as handle:
        return int(handle.read().split()[1]) * PAGE


class Holder:
    """Holds `size` bytes of touched private memory, growing and shrinking in place."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(PAGE, capacity + PAGE - capacity % PAGE)
        self.area = mmap.mmap(-1, self.capacity, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.ones = memoryview(b"\x01" * CHUNK)
        self.size = 0

    def set(self, size: int) -> None:
        size = max(0, min(self.capacity, size - size % PAGE))
        while self.size < size:  # touch: write every byte of the new pages
            step = min(CHUNK, size - self.size)
            self.area[self.size:self.size + step] = self.ones[:step]
            self.size += step
        if size < self.size:
            self.area.madvise(mmap.MADV_DONTNEED, size, self.size - size)
            self.size = size


class Ledger:
    """`<dir>/<root pid>.<role>.<pid>`: job, CPU so far, done, wall so far, and the wall the
    job takes uncontended (replay seconds). Rewritten in place (one pwrite)."""

    def __init__(self, folder: str | None, root_pid: int, role: str, job: str,
                 ideal_s: float = 0.0) -> None:
        self.fd = -1
        self.job = job.replace(" ", "_")
        self.ideal_s = ideal_s
        self.began = time.monotonic()
        if folder:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{root_pid}.{role}.{os.getpid()}")
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self.write(done=False)

    def write(self, done: bool) -> None:
        if self.fd >= 0:
            line = (f"{self.job} {time.process_time():14.4f} {int(done)} "
                    f"{time.monotonic() - self.began:10.3f} {self.ideal_s:10.3f}\n")
            os.pwrite(self.fd, line.encode(), 0)


# --- the child that holds the memory ----------------------------------------------------------


class Child:
    """One compiler process of the job (as nvcc runs cicc): a forked child that holds as many
    bytes as the last line on its pipe says, and exits when the pipe closes. Forked, not a new
    interpreter, so a phase change costs a fork, not a Python start-up."""

    def __init__(self, capacity: int, ledger_dir: str | None, job: str) -> None:
        self.baseline = own_rss()  # the forked child starts sharing (and counting) our pages
        read_end, self.pipe = os.pipe()
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:  # the child never returns into the parent's code
            code = 1
            try:
                os.close(self.pipe)
                code = hold(read_end, capacity, Ledger(ledger_dir, parent, "child", job))
            finally:
                os._exit(code)
        os.close(read_end)
        self.sent = -1

    def set(self, size: int) -> None:
        if size != self.sent:
            os.write(self.pipe, f"{size}\n".encode())
            self.sent = size

    def close(self) -> None:
        """Let it go: it frees its memory as it exits; reaped later (`reap`)."""
        os.close(self.pipe)


def hold(read_end: int, capacity: int, ledger: Ledger) -> int:
    holder = Holder(capacity)
    pending = b""
    updates = 0
    while True:
        data = os.read(read_end, 4096)
        if not data:
            break
        pending += data
        lines = pending.split(b"\n")
        pending = lines.pop()
        if lines:
            holder.set(int(lines[-1]))
            updates += 1
            if updates % LEDGER_EVERY_TICKS == 0:
                ledger.write(done=False)
    ledger.write(done=True)
    return 0


def reap(block: bool) -> None:
    """Collect exited children (phase processes) so none stays a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# --- the replay ------------------------------------------------------------------------------


def replay(job: dict, opts: dict) -> None:
    wall = float(job.get("end_s", 0) - job.get("start_s", 0)) or float(job["rss"][-1][0])
    curve = Curve(job["rss"], wall)
    cpu_fraction = min(1.0, float(job.get("cpu_s", wall)) / curve.wall_s) if curve.wall_s else 0
    time_scale, mem_scale = opts["time_scale"], opts["mem_scale"]
    duty, tick = opts["cpu_duty"], opts["tick_s"]
    capacity = int(max(curve.values, default=0) * mem_scale) + CHUNK
    ledger_dir = opts.get("ledger") or None
    name = job["name"]
    ledger = Ledger(ledger_dir, os.getpid(), "job", name, curve.wall_s * time_scale)

    holder: Holder | None = None
    child: Child | None = None
    phase = 0
    if opts["child"]:
        child = Child(capacity, ledger_dir, name)
    else:
        holder = Holder(capacity)
    baseline = own_rss()

    rate = duty * cpu_fraction  # CPU seconds per uncontended second
    catch_up = rate * CATCH_UP_TICKS * tick
    virtual = 0.0  # trace seconds of the job done
    done = 0.0  # the same in uncontended replay seconds
    began_wall, began_cpu = time.monotonic(), time.process_time()
    ticks = 0
    while virtual < curve.wall_s:
        start_wall = time.monotonic()
        start_cpu = time.process_time()
        target = int(curve.at(virtual) * mem_scale)
        if child is not None:
            current = curve.phase(virtual)
            if current != phase:  # the next compiler process of the job
                child.close()
                reap(block=False)
                child = Child(capacity, ledger_dir, name)
                phase = current
            child.set(max(0, target - baseline - child.baseline))
        elif holder is not None:
            holder.set(target - baseline)
        # Burn this tick's share, plus a little of what scheduling latency took from earlier
        # ticks: jitter on a busy machine is made up, a real shortage of CPU is not.
        used_so_far = start_cpu - began_cpu
        owed = rate * (start_wall + tick - began_wall)
        want = min(owed, used_so_far + rate * tick + catch_up) - used_so_far
        end = start_wall + tick
        while time.process_time() - start_cpu < want and time.monotonic() < end:
            pass
        rest = end - time.monotonic()
        if rest > 0:
            time.sleep(rest)
        now = time.monotonic()
        elapsed = now - start_wall
        used = time.process_time() - start_cpu
        waited = (1.0 - cpu_fraction) * min(elapsed, 2 * tick)  # a stopped job does not wait
        worked = cpu_fraction * used / duty if duty > 0 else cpu_fraction * elapsed
        done = min(now - began_wall, done + waited + worked)  # never ahead of the clock
        virtual = done / time_scale
        ticks += 1
        if ticks % LEDGER_EVERY_TICKS == 0:
            ledger.write(done=False)
    if child is not None:
        child.close()
        reap(block=True)
    ledger.write(done=True)


def write_outputs(name: str, source: str, output: str | None, depfile: str | None,
                  deptarget: str | None) -> None:
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as handle:
            handle.write(f"replaycc object for trace job {name}\n")
    if depfile:
        os.makedirs(os.path.dirname(os.path.abspath(depfile)), exist_ok=True)
        with open(depfile, "w") as handle:
            handle.write(f"{deptarget or output}: {source}\n")


def exec_real(argv: list[str], config: dict | None) -> None:
    real = os.environ.get("REPLAYCC_REAL") or (config or {}).get("real") or "g++"
    os.execvp(real, [real, *argv])


def main(argv: list[str]) -> int:
    source, output, depfile, deptarget = parse_compile(argv)
    config_path = find_config(source) if source else None
    config: dict | None = None
    name = None
    if config_path:
        with open(config_path) as handle:
            config = json.load(handle)
        assert source is not None
        rel = os.path.relpath(os.path.abspath(source), os.path.dirname(config_path))
        name = config.get("jobs", {}).get(rel)
    if config is None or name is None:
        exec_real(argv, config)
        return 127
    opts = settings(config, dict(os.environ))
    with open(opts["trace"]) as handle:
        trace = json.load(handle)
    job = next((j for j in trace["jobs"] if j["name"] == name), None)
    if job is None:
        print(f"replaycc: job {name!r} is not in {opts['trace']}", file=sys.stderr)
        return 2
    del trace  # the job's curve is all we keep: the baseline is measured after this
    replay(job, opts)
    assert source is not None
    write_outputs(name, source, output, depfile, deptarget)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
