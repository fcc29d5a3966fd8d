"""Cheap configure-time probe: what the preamble and a sample of the entries cost.

Two compiles with the real compiler and flags (including the GC sizing the managed source will
be built with, see `gcc_gc.gcc_gc_sizing`), run at once: the preamble alone, and the preamble
plus `k` entries spread evenly over the list (`k` = a quarter of the list, 2..20). `estimate`
turns them into the model `plan.plan_shards` uses.

The model, and how far to trust it. A cheap sample cannot see the per-entry memory of a big
generated TU. Measured on pagedattn (g++ 12 -O2, GC sized): the preamble alone peaks at 51 MiB;
2..32 spread entries at 67-72 MiB (instantiating the shared helpers is paid at once); the whole
list at 136 MiB (`default`, 750 entries) and 398 MiB (`full`, 4320). What an entry adds (about
0.08 MiB here) is below the +-2 MiB by which samples of different entries differ, and samples
large enough to show it cost a third of the whole compile. So the extrapolation is a prior,
not a measurement: a sample cannot tell whether the entries share their cost (the growth above
the preamble stays what the sample showed) or not (it grows n/k times); the prediction takes
the geometric mean of the two,

    whole = p0 + (pk - p0) * sqrt(n / k)

(p0: preamble-only peak, pk: the k-entry sample). Against measured whole compiles (k = 3 for
tiny, 20 otherwise): tiny 85 vs 70 MiB (+22 %), default 166-168 vs 136 MiB (+22..24 %),
full 299-302 vs 398 MiB (-24..-25 %); with GC sizing off: tiny +11 %, default 1.8x (GCC's
128 MiB heap inflates the sample's growth). The old line through two samples over-predicted
8-10x. Outside this kernel family the prior may be off by more in either direction: a list
whose entries share nothing grows n/k times (under-predicted by sqrt(n/k)). Two things bound
the damage: the governor admits jobs by their measured peaks, not by this model, and a
measured whole-file peak (`--hints`, written from the profile DB by `buildctl build`)
replaces the extrapolation.

The CPU model uses the same prior: whole CPU = c0 + (ck - c0) * sqrt(n / k), and a shard costs
c0 (the preamble) more than its share; it under-predicts the whole's CPU (-40 % default, -56 %
full), so the predicted CPU ratio of a split errs high.

The probe's cost: two compiles, 7-8 s of CPU on pagedattn (12-15 % of `default`'s whole
compile, more than the 10 % it should stay under; 3.6 % of `full`'s; for `tiny`, 12 entries,
the sample is 3 entries, 2.6 s). 12-24 spread entries all cost 6-7 s; k = 8 would cost 4 s
and over-predict `default` by 70 %.

Measuring: `os.wait4` on the compiler driver. On Linux the rusage that `wait4` returns for a
child includes the descendants that child waited for (the kernel folds their `maxrss` and CPU
times into the child's at reap time), so for `g++` -> `cc1plus` -> `as` it reports the largest
single process (cc1plus) and the CPU time of the whole tree; verified on this host: the driver
alone is ~4 MB, wait4 reported cc1plus's 84 MB. It is *not* the sum of concurrently running
processes, so for drivers with inner parallelism (nvcc, icpx device links) it is a lower bound;
for one-TU C++ front-end compiles the largest process is the peak. See DESIGN.md §3.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from buildctl import process
from buildctl.errors import BadInput
from buildctl.host import format_size
from buildctl.split.plan import GeneratedSource, probe_picks, render_probe

PROBE_VERSION = 2
# Entries in the probe's sample at most: see the module docstring for cost and accuracy.
MAX_PROBE_ENTRIES = 20
# Flags that name outputs or change the compile mode; the probe sets its own.
_DROP_WITH_ARG = {"-o", "-MF", "-MT", "-MQ"}
_DROP = {"-c", "-MD", "-MMD", "-E", "-S", "-M", "-MM"}


@dataclass(frozen=True)
class CompileSample:
    """One measured compile: how many entries it held, its peak RSS and CPU time."""

    entries: int
    peak_rss_bytes: int
    cpu_s: float
    wall_s: float


@dataclass(frozen=True)
class ProbeResult:
    base: CompileSample  # preamble (+ epilogue) only
    samples: tuple[CompileSample, ...]  # the k-entry sample (one; a tuple for the record)
    preamble_globals: tuple[str, ...]  # strong global symbols the preamble alone defines
    # The sample was stopped when its memory passed the limit: its peak is a lower bound.
    limited: bool = False
    cached: bool = False


@dataclass(frozen=True)
class PeakModel:
    """The linear model the planner uses, and where its numbers came from."""

    base_peak: int
    per_entry_peak: float
    whole_peak: int
    base_cpu_s: float | None
    whole_cpu_s: float | None
    source: str  # "probe" | "profile" | "profile+probe"
    # Whole-file peak the probe alone predicts (kept when a hint replaced it), for the record.
    probe_whole_peak: int | None = None


class ProbeFailed(Exception):
    """The probe compile failed (often: flags the hook could not resolve); not the user's input."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def default_probe_entries(n_entries: int) -> int:
    """A quarter of the list, 2..20 entries.

    Enough entries that shared instantiations (std containers, helpers) are paid inside the
    sample; capped so that on a large list the probe stays a small fraction of the whole
    compile (about 7 s of CPU for 20 pagedattn kernels).
    """
    return max(1, min(n_entries, max(2, min(MAX_PROBE_ENTRIES, math.ceil(n_entries / 4)))))


def sanitize_flags(flags: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for flag in flags:
        if skip:
            skip = False
            continue
        if flag in _DROP_WITH_ARG:
            skip = True
            continue
        if flag in _DROP or flag.startswith(("-MF", "-MT", "-MQ")):
            continue
        out.append(flag)
    return out


def read_flags_file(path: Path) -> list[str]:
    """One flag per line (so paths with spaces survive); blank lines ignored."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(
            f"cannot read flags file {path}: {exc.strerror}", "pass an existing file"
        ) from exc
    return [line for line in text.splitlines() if line.strip()]


def compiler_version_text(compiler: str) -> str:
    """`compiler --version` (stdout), or "" when it cannot be run."""
    try:
        res = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return res.stdout


def compiler_identity(compiler: str) -> str:
    """realpath + size + mtime: a compiler upgrade invalidates cached probe numbers."""
    real = os.path.realpath(compiler)
    try:
        st = os.stat(real)
    except OSError:
        return real
    return f"{real}:{st.st_size}:{int(st.st_mtime)}"


# Why a reporter between us and the compiler: Linux carries a process's ru_maxrss across
# fork+exec, so a compiler forked straight from a big Python (a test run with torch loaded, or a
# large build driver) "peaks" at least at its parent's RSS. The reporter is a fresh `python -I
# -S` (~10 MB); the compiler it forks starts from that, and it hands back the compiler's own
# wait4 numbers.
_REPORTER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({"status": status, "maxrss_kib": ru.ru_maxrss,
               "cpu_s": ru.ru_utime + ru.ru_stime}, f)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
code = os.waitstatus_to_exitcode(status)
sys.exit(128 - code if code < 0 else code)
"""


def _usage_file(log: Path) -> Path:
    return log.with_name(log.name + ".rusage.json")


def run_measured(argv: Sequence[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start `argv` (under the reporter) in its own process group, stderr+stdout to `log` (not
    a pipe: no deadlock)."""
    usage = _usage_file(log)
    usage.unlink(missing_ok=True)
    with open(log, "wb") as out:
        proc = process.spawn(
            [sys.executable, "-I", "-S", "-c", _REPORTER, str(usage), *argv],
            sig=signal.SIGKILL,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    proc.usage_file = usage  # type: ignore[attr-defined]
    return proc


def wait_measured(
    proc: subprocess.Popen[bytes], started: float, timeout_s: float
) -> tuple[int, int, float, float]:
    """Reap with wait4: (returncode, maxrss bytes, cpu seconds, wall seconds)."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.monotonic() - started > timeout_s:
            process.kill_tree(proc.pid)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc  # we reaped it ourselves; keep Popen from waiting again
    wall = time.monotonic() - started
    # Linux reports ru_maxrss in KiB. The compiler's own numbers from the reporter, if it
    # finished; else (killed on timeout) the reporter's, which include the compiler's.
    maxrss, cpu = usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime
    usage_file: Path | None = getattr(proc, "usage_file", None)
    if usage_file is not None and usage_file.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            facts = json.loads(usage_file.read_text())
            rc = os.waitstatus_to_exitcode(int(facts["status"]))
            maxrss, cpu = int(facts["maxrss_kib"]) * 1024, float(facts["cpu_s"])
        usage_file.unlink(missing_ok=True)
    return rc, maxrss, cpu, wall


def preamble_strong_globals(obj: Path) -> list[str]:
    """Strong (non-weak, non-unique) global symbols defined in an object file.

    Template instantiations and inline functions are weak/COMDAT, so a strong definition in
    the preamble-only object is something every shard would define again: a link error.
    """
    try:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection
    except ImportError:  # pragma: no cover - pyelftools is a dependency
        return []
    names: list[str] = []
    try:
        with open(obj, "rb") as fh:
            elf = ELFFile(fh)
            for section in elf.iter_sections():
                if not isinstance(section, SymbolTableSection) or section.name != ".symtab":
                    continue
                for sym in section.iter_symbols():
                    if (
                        sym.name
                        and sym["st_info"]["bind"] == "STB_GLOBAL"
                        and sym["st_shndx"] not in ("SHN_UNDEF", "SHN_ABS")
                        and sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_TLS")
                    ):
                        names.append(sym.name)
    except (OSError, ELFError):
        return []  # not ELF (another toolchain): skip the check rather than guess
    return sorted(names)


def _cache_key(
    source: GeneratedSource,
    picks: Sequence[int],
    compiler: str,
    flags: Sequence[str],
    preamble: str,
    epilogue: str,
) -> str:
    blob = json.dumps(
        {
            "v": PROBE_VERSION,
            "compiler": compiler_identity(compiler),
            "flags": list(flags),
            "preamble": preamble,
            "epilogue": epilogue,
            "entries": [source.entries[i].text for i in picks],
            "n": len(source.entries),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_cache(path: Path, key: str) -> ProbeResult | None:
    try:
        data = json.loads(path.read_text())
        if data.get("key") != key:
            return None
        res = data["result"]
        return ProbeResult(
            base=CompileSample(**res["base"]),
            samples=tuple(CompileSample(**x) for x in res["samples"]),
            preamble_globals=tuple(res["preamble_globals"]),
            limited=bool(res["limited"]),
            cached=True,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _tree_rss(pid: int) -> int:
    """Summed RSS of `pid` and its descendants now (0 if it is gone)."""
    sample = process.sample_tree(pid, 0.0)
    return sample.rss if sample else 0


def _compile_all(
    jobs: dict[str, tuple[str, int]],
    *,
    compiler: str,
    flags: Sequence[str],
    work_dir: Path,
    suffix: str,
    timeout_s: float,
    keep_objects: Sequence[str] = (),
    watch: dict[str, int] | None = None,
) -> tuple[dict[str, tuple[CompileSample, Path]], set[str]]:
    """Run the jobs at once (each is measured on its own process tree) and reap them.

    `watch` maps a label to a memory limit: that job is killed when its tree's RSS passes it
    (returned in the second value; its sample's peak is then a lower bound, not a failure).
    """
    running: dict[str, tuple[subprocess.Popen[bytes], float, Path, Path, int]] = {}
    for label, (text, count) in jobs.items():
        src = work_dir / f"probe-{label}{suffix}"
        obj = work_dir / f"probe-{label}.o"
        log = work_dir / f"probe-{label}.log"
        src.write_text(text)
        argv = [compiler, *flags, "-c", str(src), "-o", str(obj)]
        running[label] = (run_measured(argv, work_dir, log), time.monotonic(), obj, log, count)
    watch = watch or {}
    stopped: set[str] = set()
    reaped: dict[str, tuple[int, int, float, float]] = {}
    while len(reaped) < len(running):
        for label, (proc, started, _, _, _) in running.items():
            if label in reaped:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                rc = os.waitstatus_to_exitcode(status)
                proc.returncode = rc  # reaped here; keep Popen from waiting again
                wall = time.monotonic() - started
                reaped[label] = (rc, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime, wall)
                continue
            over = label in watch and _tree_rss(proc.pid) > watch[label]
            if over:
                stopped.add(label)
            if over or time.monotonic() - started > timeout_s:
                process.kill_tree(proc.pid)
        time.sleep(0.02)
    out: dict[str, tuple[CompileSample, Path]] = {}
    failure: ProbeFailed | None = None
    for label, (_, _, obj, log, count) in running.items():
        rc, peak, cpu, wall = reaped[label]
        if rc != 0 and label not in stopped and failure is None:
            failure = ProbeFailed(
                f"probe compile ({label}) exited with {rc}", log.read_text(errors="replace")
            )
        out[label] = (CompileSample(count, peak, cpu, wall), obj)
        if label not in keep_objects:
            obj.unlink(missing_ok=True)
    if failure is not None:
        raise failure
    return out, stopped


def probe_source(
    source: GeneratedSource,
    *,
    compiler: str,
    flags: Sequence[str],
    work_dir: Path,
    preamble: str | None = None,
    epilogue: str | None = None,
    k: int | None = None,
    max_probe_peak: int | None = None,
    timeout_s: float = 900.0,
    use_cache: bool = True,
) -> ProbeResult:
    """Compile the preamble alone and with k spread entries, at once; measure each with wait4.

    The k-entry compile is stopped if its memory passes `max_probe_peak` (the probe must not be
    what runs the host out of memory on a file whose entries are huge); its peak then is a
    lower bound and the result says `limited`.

    `flags` are the compile flags including any GC sizing (the probe measures what will be
    built). `preamble`/`epilogue` are the include-rewritten texts the shards will use (the
    probe sources live in `work_dir`, not next to the original). Results are cached in
    `work_dir` under a key of compiler identity, flags and text, so a re-configure does not
    re-probe.
    """
    n_entries = len(source.entries)
    k = default_probe_entries(n_entries) if k is None else max(1, min(k, n_entries))
    picks = probe_picks(n_entries, k)
    pre = source.preamble if preamble is None else preamble
    epi = source.epilogue if epilogue is None else epilogue
    flags = sanitize_flags(flags)
    work_dir = work_dir.resolve()  # compiles run in it: relative paths would not resolve
    work_dir.mkdir(parents=True, exist_ok=True)
    cache = work_dir / "probe-cache.json"
    key = _cache_key(source, picks, compiler, flags, pre, epi)
    if use_cache and (hit := _load_cache(cache, key)) is not None:
        return hit

    done, stopped = _compile_all(
        {
            "base": (render_probe(source, [], preamble=pre, epilogue=epi), 0),
            "sample": (render_probe(source, picks, preamble=pre, epilogue=epi), len(picks)),
        },
        compiler=compiler,
        flags=flags,
        work_dir=work_dir,
        suffix=Path(source.name).suffix or ".cpp",
        timeout_s=timeout_s,
        keep_objects=["base"],
        watch={"sample": max_probe_peak} if max_probe_peak is not None else None,
    )
    base, base_obj = done["base"]
    globals_ = tuple(preamble_strong_globals(base_obj))
    base_obj.unlink(missing_ok=True)
    result = ProbeResult(
        base=base,
        samples=(done["sample"][0],),
        preamble_globals=globals_,
        limited="sample" in stopped,
    )
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "result": asdict(result)}, indent=1))
    os.replace(tmp, cache)
    return result


def extrapolate(at_zero: float, at_k: float, k: int, n: int) -> float:
    """The prior of the module docstring: growth above the preamble-only value, times
    sqrt(n / k) (the geometric mean of "entries share everything" and "share nothing")."""
    if k >= n or k <= 0:
        return at_k
    return at_zero + max(0.0, at_k - at_zero) * math.sqrt(n / k)


def usable_hint(hint: int | None, probe: ProbeResult | None) -> tuple[int | None, str | None]:
    """A whole-file peak from the profile DB, or None with the reason it cannot be this file's.

    The DB is keyed by object path and compiler, not by the generated file's contents: two
    configs of one project (pagedattn's presets) share the object path. A "whole-file" peak
    below what the probe measured for a subset of the entries cannot be this file's.
    """
    if hint is None or probe is None or not probe.samples:
        return hint, None
    sample = probe.samples[-1]
    if hint < sample.peak_rss_bytes:
        return None, (
            f"ignored the whole-file peak hint ({format_size(hint)}): below the probe's "
            f"{format_size(sample.peak_rss_bytes)} for {sample.entries} of the entries, so it "
            "was measured on another version of the file"
        )
    return hint, None


def estimate(
    n_entries: int,
    probe: ProbeResult | None,
    predicted_whole_peak: int | None = None,
) -> PeakModel | None:
    """The peak model from the probe, a known whole-file peak (profile DB), or both.

    From the probe: the whole-file peak by `extrapolate` (module docstring). The planner's
    model is linear, `peak(m) = base + m * per_entry`; it is drawn through the sample (k, pk)
    and the whole (n, whole), so a shard of at least k entries is never predicted below what
    the sample measured. `base` is kept between the preamble-only peak and pk.
    A measured whole-file peak replaces the extrapolation; the probe still gives the line its
    other point.
    """
    if probe is None and predicted_whole_peak is None:
        return None
    if probe is not None:
        b = probe.base
        s = probe.samples[-1]
        if s.peak_rss_bytes < b.peak_rss_bytes:  # noise: entries never lower the peak
            b = CompileSample(0, s.peak_rss_bytes, b.cpu_s, b.wall_s)
        k = max(1, s.entries)
        probe_whole = int(extrapolate(b.peak_rss_bytes, s.peak_rss_bytes, k, n_entries))
        whole = probe_whole
        origin = "probe"
        if predicted_whole_peak is not None:
            whole = max(s.peak_rss_bytes, predicted_whole_peak)
            origin = "profile+probe"
        if k < n_entries:
            slope = max(0.0, (whole - s.peak_rss_bytes) / (n_entries - k))
            base_peak = s.peak_rss_bytes - k * slope
        else:
            base_peak = b.peak_rss_bytes
        base_peak = min(max(base_peak, b.peak_rss_bytes), s.peak_rss_bytes)
        whole = max(whole, int(base_peak))
        slope = (whole - base_peak) / n_entries
        whole_cpu = extrapolate(b.cpu_s, s.cpu_s, k, n_entries)
        return PeakModel(
            int(base_peak), slope, whole, b.cpu_s, whole_cpu, origin, probe_whole_peak=probe_whole
        )
    assert predicted_whole_peak is not None
    # No probe: no way to tell the preamble from the entries. Assume no preamble cost, which
    # under-predicts shards; the caller warns.
    return PeakModel(
        0, predicted_whole_peak / n_entries, predicted_whole_peak, None, None, "profile"
    )
