"""Cheap configure-time probe: how much memory and CPU the preamble and one entry cost.

Two compiles with the real compiler and flags: the preamble alone, and the preamble plus `k`
entries spread over the list. The difference gives the per-entry growth of the linear model
`peak(k) = base + k * per_entry` that `plan.plan_shards` uses.

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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from buildctl.errors import BadInput
from buildctl.split.plan import GeneratedSource, probe_picks, render_probe

PROBE_VERSION = 1
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
    # Nested samples, fewest entries first: every other entry of the k picked, then all k.
    samples: tuple[CompileSample, ...]
    preamble_globals: tuple[str, ...]  # strong global symbols the preamble alone defines
    limited: bool = False  # the k-entry sample was skipped: predicted above the memory limit
    cached: bool = False

    def points(self) -> tuple[CompileSample, CompileSample]:
        """The two samples the line is drawn through (base and one sample if need be)."""
        chain = (self.base, *self.samples)
        return chain[-2], chain[-1]


@dataclass(frozen=True)
class PeakModel:
    """The linear model the planner uses, and where its numbers came from."""

    base_peak: int
    per_entry_peak: float
    whole_peak: int
    base_cpu_s: float | None
    whole_cpu_s: float | None
    source: str  # "probe" | "profile" | "profile+probe"


class ProbeFailed(Exception):
    """The probe compile failed (often: flags the hook could not resolve); not the user's input."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def default_probe_entries(n_entries: int) -> int:
    """A quarter of the list (the shard size the split aims at), 2..16 entries.

    Enough entries that shared instantiations (std containers, helpers) are paid inside the
    sample rather than counted as per-entry cost; capped so that on a large list the probe
    stays a small fraction of the whole compile.
    """
    return max(1, min(n_entries, max(2, min(16, math.ceil(n_entries / 4)))))


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


def compiler_identity(compiler: str) -> str:
    """realpath + size + mtime: a compiler upgrade invalidates cached probe numbers."""
    real = os.path.realpath(compiler)
    try:
        st = os.stat(real)
    except OSError:
        return real
    return f"{real}:{st.st_size}:{int(st.st_mtime)}"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_measured(argv: Sequence[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start `argv` in its own process group, stderr+stdout to `log` (not a pipe: no deadlock)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            list(argv), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_measured(
    proc: subprocess.Popen[bytes], started: float, timeout_s: float
) -> tuple[int, int, float, float]:
    """Reap with wait4: (returncode, maxrss bytes, cpu seconds, wall seconds)."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.monotonic() - started > timeout_s:
            _kill_group(proc.pid)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc  # we reaped it ourselves; keep Popen from waiting again
    wall = time.monotonic() - started
    # Linux reports ru_maxrss in KiB.
    return rc, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime, wall


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


def _compile_all(
    jobs: dict[str, tuple[str, int]],
    *,
    compiler: str,
    flags: Sequence[str],
    work_dir: Path,
    suffix: str,
    timeout_s: float,
    keep_objects: Sequence[str] = (),
) -> dict[str, tuple[CompileSample, Path]]:
    """Run the jobs at once (each is measured on its own process tree) and reap them."""
    running: dict[str, tuple[subprocess.Popen[bytes], float, Path, Path, int]] = {}
    for label, (text, count) in jobs.items():
        src = work_dir / f"probe-{label}{suffix}"
        obj = work_dir / f"probe-{label}.o"
        log = work_dir / f"probe-{label}.log"
        src.write_text(text)
        argv = [compiler, *flags, "-c", str(src), "-o", str(obj)]
        running[label] = (run_measured(argv, work_dir, log), time.monotonic(), obj, log, count)
    out: dict[str, tuple[CompileSample, Path]] = {}
    failure: ProbeFailed | None = None
    for label, (proc, started, obj, log, count) in running.items():
        rc, peak, cpu, wall = wait_measured(proc, started, timeout_s)
        if rc != 0 and failure is None:
            failure = ProbeFailed(
                f"probe compile ({label}) exited with {rc}", log.read_text(errors="replace")
            )
        out[label] = (CompileSample(count, peak, cpu, wall), obj)
        if label not in keep_objects:
            obj.unlink(missing_ok=True)
    if failure is not None:
        raise failure
    return out


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
    """Compile the preamble alone, with k/2 and with k entries; measure each with wait4.

    The k/2 entries are a subset of the k, so the difference between the two is the marginal
    cost of entries once shared instantiations are paid (the preamble-only compile alone would
    charge those to the first entries and over-predict: 2.6x on the test fixture).

    Preamble and k/2 run at once; the k-entry compile runs after, and only if the line through
    the first two predicts it under `max_probe_peak` (the probe must not be what runs the host
    out of memory on a file whose entries are huge).

    `preamble`/`epilogue` are the include-rewritten texts the shards will use (the probe
    sources live in `work_dir`, not next to the original). Results are cached in `work_dir`
    under a key of compiler identity, flags and text, so a re-configure does not re-probe.
    """
    n_entries = len(source.entries)
    k = default_probe_entries(n_entries) if k is None else max(1, min(k, n_entries))
    picks = probe_picks(n_entries, k)
    pre = source.preamble if preamble is None else preamble
    epi = source.epilogue if epilogue is None else epilogue
    flags = sanitize_flags(flags)
    work_dir.mkdir(parents=True, exist_ok=True)
    cache = work_dir / "probe-cache.json"
    key = _cache_key(source, picks, compiler, flags, pre, epi)
    if use_cache and (hit := _load_cache(cache, key)) is not None:
        return hit

    suffix = Path(source.name).suffix or ".cpp"

    def run(
        jobs: dict[str, tuple[str, int]], keep: Sequence[str] = ()
    ) -> dict[str, tuple[CompileSample, Path]]:
        return _compile_all(
            jobs,
            compiler=compiler,
            flags=flags,
            work_dir=work_dir,
            suffix=suffix,
            timeout_s=timeout_s,
            keep_objects=keep,
        )

    steps = [picks[::2], picks] if len(picks) >= 2 else [picks]
    first = run(
        {
            "base": (render_probe(source, [], preamble=pre, epilogue=epi), 0),
            "sample0": (render_probe(source, steps[0], preamble=pre, epilogue=epi), len(steps[0])),
        },
        keep=["base"],
    )
    base, base_obj = first["base"]
    globals_ = tuple(preamble_strong_globals(base_obj))
    base_obj.unlink(missing_ok=True)
    samples = [first["sample0"][0]]
    limited = False
    for index, step in enumerate(steps[1:], start=1):
        lo, hi = (base, *samples)[-2:]
        slope = max(0.0, (hi.peak_rss_bytes - lo.peak_rss_bytes) / max(1, hi.entries - lo.entries))
        predicted = hi.peak_rss_bytes + slope * (len(step) - hi.entries)
        if max_probe_peak is not None and predicted > max_probe_peak:
            limited = True
            break
        label = f"sample{index}"
        done = run({label: (render_probe(source, step, preamble=pre, epilogue=epi), len(step))})
        samples.append(done[label][0])
    result = ProbeResult(
        base=base, samples=tuple(samples), preamble_globals=globals_, limited=limited
    )
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "result": asdict(result)}, indent=1))
    os.replace(tmp, cache)
    return result


def _line(lo: tuple[int, float], hi: tuple[int, float], floor: float) -> tuple[float, float]:
    """Intercept and slope through two (entries, value) points; slope >= 0, intercept >= floor."""
    (k1, v1), (k2, v2) = lo, hi
    slope = max(0.0, (v2 - v1) / (k2 - k1)) if k2 > k1 else 0.0
    intercept = max(floor, v2 - k2 * slope)
    return intercept, slope


def estimate(
    n_entries: int,
    probe: ProbeResult | None,
    predicted_whole_peak: int | None = None,
) -> PeakModel | None:
    """The peak model from the probe, a known whole-file peak (profile DB), or both.

    From the probe: a line through its last two nested samples (k/2 and k entries); its
    intercept (the preamble plus instantiations every shard shares) is the `base` of the
    planner's model. A measured
    whole-file peak beats extrapolating that line to all entries; the probe still supplies the
    intercept, which the whole-file number alone cannot separate out.
    """
    if probe is None and predicted_whole_peak is None:
        return None
    if probe is not None:
        lo, hi = probe.points()
        base_peak, slope = _line(
            (lo.entries, lo.peak_rss_bytes),
            (hi.entries, hi.peak_rss_bytes),
            probe.base.peak_rss_bytes,
        )
        base_cpu, cpu_slope = _line(
            (lo.entries, lo.cpu_s), (hi.entries, hi.cpu_s), probe.base.cpu_s
        )
        whole = int(base_peak + n_entries * slope)
        origin = "probe"
        if predicted_whole_peak is not None:
            whole = max(int(base_peak), predicted_whole_peak)
            slope = (whole - base_peak) / n_entries
            origin = "profile+probe"
        return PeakModel(
            int(base_peak), slope, whole, base_cpu, base_cpu + n_entries * cpu_slope, origin
        )
    assert predicted_whole_peak is not None
    # No probe: no way to tell the preamble from the entries. Assume no preamble cost, which
    # under-predicts shards; the caller warns.
    return PeakModel(
        0, predicted_whole_peak / n_entries, predicted_whole_peak, None, None, "profile"
    )
