"""`python -m buildctl.split`: the command the CMake hook runs at the end of configure.

Prints what the target should compile (shard paths, or the original when it stays whole) on
stdout, one per line or as one CMake list (`--format cmake`); a one-line summary and any
warnings go to stderr, each line starting with `buildctl:`. Exit 2 on bad input (file:line).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from buildctl.errors import EXIT_BAD_INPUT, EXIT_OK, BadInput
from buildctl.host import format_size, parse_size
from buildctl.split.gcc_gc import GccGcSizing, gcc_gc_sizing, is_gnu_compiler
from buildctl.split.plan import (
    GeneratedSource,
    ShardPlan,
    balanced_sizes,
    parse_generated_source,
    plan_shards,
    predict_peak,
    shard_target_from_budget,
)
from buildctl.split.probe import (
    PeakModel,
    ProbeFailed,
    ProbeResult,
    compiler_version_text,
    estimate,
    probe_source,
    read_flags_file,
    usable_hint,
)
from buildctl.split.writer import (
    localized_parts,
    write_compile_options,
    write_plan_record,
    write_shards,
)

DEFAULT_MAX_SHARDS = 64


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m buildctl.split",
        description="Split a generated source (preamble + list of explicit instantiations or "
        "X-macro calls) into shards sized for the memory budget.",
    )
    p.add_argument("--source", required=True, type=Path, help="the heavy generated source")
    p.add_argument("--out-dir", required=True, type=Path, help="where shards and the plan go")
    p.add_argument("--budget", help="memory budget, e.g. 16G (default: host RAM minus reserve)")
    p.add_argument("--slots", type=int, help="jobs that may run at once (default: cores)")
    p.add_argument("--compiler", help="compiler for the probe (CMAKE_CXX_COMPILER)")
    p.add_argument(
        "--compiler-id",
        help="CMake's compiler id (CMAKE_CXX_COMPILER_ID); without it `--compiler --version` "
        "tells whether it is GNU",
    )
    p.add_argument("--flags-file", type=Path, help="compile flags for the probe, one per line")
    p.add_argument("--shards", type=int, help="force this many shards (skips planning)")
    p.add_argument("--whole-peak", help="known peak RSS of the whole file (profile DB)")
    p.add_argument("--hints", type=Path, help='JSON {"<file name or path>": peak_bytes}')
    p.add_argument("--max-shards", type=int, default=DEFAULT_MAX_SHARDS)
    p.add_argument("--probe-entries", type=int, help="entries in the probe compile")
    p.add_argument("--safety", type=float, default=0.8, help="share of a slot a shard may use")
    p.add_argument(
        "--no-line-directives",
        action="store_true",
        help="do not map shard lines back to the original file with #line",
    )
    p.add_argument("--no-probe-cache", action="store_true")
    p.add_argument(
        "--no-gcc-gc",
        action="store_true",
        help="do not size GCC's garbage collector for the shards (and the probe)",
    )
    p.add_argument("--format", choices=("lines", "cmake"), default="lines")
    return p


@dataclass(frozen=True)
class SplitSettings:
    """The hook's settings, from its flags alone (CMake passes everything; no environment or
    config file is read). A frozen dataclass, not a pydantic model: the hook runs once per split
    target at configure time and imports nothing it does not need."""

    source: Path
    out_dir: Path
    budget: str | None = None  # a size, parsed where the budget is resolved
    slots: int | None = None
    compiler: str | None = None
    compiler_id: str | None = None
    flags_file: Path | None = None
    shards: int | None = None
    whole_peak: str | None = None  # a size
    hints: Path | None = None
    max_shards: int = DEFAULT_MAX_SHARDS
    probe_entries: int | None = None
    safety: float = 0.8
    no_line_directives: bool = False
    no_probe_cache: bool = False
    no_gcc_gc: bool = False
    format: str = "lines"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SplitSettings:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def _say(line: str) -> None:
    print(f"buildctl: {line}", file=sys.stderr)


def _whole_peak_hint(settings: SplitSettings, source: Path) -> int | None:
    if settings.whole_peak:
        return parse_size(settings.whole_peak)
    if settings.hints is None:
        return None
    try:
        hints = json.loads(settings.hints.read_text())
    except OSError as exc:
        raise BadInput(
            f"cannot read {settings.hints}: {exc.strerror}", "pass an existing file"
        ) from exc
    except ValueError as exc:
        raise BadInput(f"{settings.hints}: not JSON ({exc})",
                       'write {"file.cpp": 1234567}') from exc
    if not isinstance(hints, dict):
        raise BadInput(f"{settings.hints}: expected a JSON object", 'write {"file.cpp": 1234567}')
    value = hints.get(str(source), hints.get(source.name))
    if value is None:
        return None
    return parse_size(str(value))


def _host_defaults(settings: SplitSettings) -> tuple[int, int]:
    from buildctl import host

    info = None
    if settings.budget is None or settings.slots is None:
        info = host.probe()
    if settings.budget is not None:
        budget = parse_size(settings.budget)
    else:
        assert info is not None
        budget = host.default_budget(info.total_ram_bytes, info.cgroup_limit_bytes)
    slots = settings.slots if settings.slots is not None else (info.cores if info else 1)
    return budget, slots


def _flags(settings: SplitSettings) -> list[str]:
    return read_flags_file(settings.flags_file) if settings.flags_file else []


def _gc_sizing(settings: SplitSettings, flags: Sequence[str], target: int) -> GccGcSizing:
    if settings.compiler_id:
        gnu = is_gnu_compiler(compiler_id=settings.compiler_id)
    elif settings.compiler and not settings.no_gcc_gc:
        gnu = is_gnu_compiler(version_text=compiler_version_text(settings.compiler))
    else:
        gnu = False
    return gcc_gc_sizing(
        enabled=not settings.no_gcc_gc, gnu=gnu, flags=flags, shard_target_bytes=target
    )


def _probe(
    settings: SplitSettings,
    parsed: GeneratedSource,
    origin: Path,
    budget: int,
    flags: Sequence[str],
) -> ProbeResult | None:
    if not settings.compiler:
        return None
    pre, epi = localized_parts(parsed, origin)
    try:
        result = probe_source(
            parsed,
            compiler=settings.compiler,
            flags=flags,
            work_dir=settings.out_dir / "probe",
            preamble=pre,
            epilogue=epi,
            k=settings.probe_entries,
            # The probe is one job under the same budget: a sample predicted above it is
            # skipped (the model then draws its line from the preamble-only compile).
            max_probe_peak=int(budget * settings.safety),
            use_cache=not settings.no_probe_cache,
        )
    except ProbeFailed as exc:
        first = next((ln for ln in exc.stderr.splitlines() if "error" in ln), "")
        _say(f"warning: {exc} ({first.strip()[:200]}); cannot predict memory for {origin.name}")
        return None
    except OSError as exc:
        _say(f"warning: cannot run the probe compiler {settings.compiler}: {exc.strerror}")
        return None
    if result.preamble_globals:
        shown = ", ".join(result.preamble_globals[:5])
        raise BadInput(
            f"{origin}:1-{parsed.entries[0].first_line - 1}: the preamble defines non-inline "
            f"symbols ({shown}) that every shard would define again",
            "make them inline/static or move them to another source file",
        )
    return result


def _record(
    settings: SplitSettings,
    parsed: GeneratedSource,
    origin: Path,
    budget: int,
    slots: int,
    target: int,
    plan: ShardPlan,
    model: PeakModel | None,
    probe: ProbeResult | None,
    forced: bool,
    paths: Sequence[Path],
    gc: GccGcSizing,
    hint: int | None,
) -> dict[str, Any]:
    return {
        "source": str(origin),
        "form": parsed.form,
        "macro": parsed.macro,
        "entries": len(parsed.entries),
        "n": plan.n,
        "per_shard_entries": list(plan.per_shard_entries),
        "shards": [str(p) for p in paths],
        "forced": forced,
        "budget_bytes": budget,
        "slots": slots,
        "shard_target_bytes": target,
        "predicted_whole_peak_bytes": model.whole_peak if model else None,
        "predicted_shard_peak_bytes": plan.predicted_shard_peak if model else None,
        "predicted_cpu_ratio": plan.predicted_cpu_ratio,
        "fits": plan.fits if model else None,
        "reason": plan.reason,
        "warnings": list(plan.warnings),
        "model": asdict(model) if model else None,
        "probe": asdict(probe) if probe else None,
        "whole_peak_hint_bytes": hint,
        # GCC GC sizing: options added to what the target compiles (shards, or the original
        # when it stays whole) and to the probe.
        "gcc_gc": {**asdict(gc), "options": list(gc.options)},
    }


def run(settings: SplitSettings) -> list[Path]:
    origin = settings.source.resolve()
    try:
        text = origin.read_text()
    except FileNotFoundError as exc:
        raise BadInput(f"{origin}: no such file", "generate it before splitting") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{origin}: cannot read ({exc})", "pass a readable text source") from exc
    if settings.shards is not None and settings.shards < 1:
        raise BadInput(f"--shards must be at least 1, got {settings.shards}", "pass --shards 4")
    if settings.max_shards < 1:
        raise BadInput(f"--max-shards must be at least 1, got {settings.max_shards}", "")
    if settings.probe_entries is not None and settings.probe_entries < 1:
        raise BadInput(f"--probe-entries must be at least 1, got {settings.probe_entries}", "")
    parsed = parse_generated_source(text, str(origin))
    n_entries = len(parsed.entries)
    budget, slots = _host_defaults(settings)
    target = shard_target_from_budget(budget, slots, settings.safety)
    whole_hint = _whole_peak_hint(settings, origin)
    if settings.shards is None and settings.compiler is None and whole_hint is None:
        raise BadInput(
            "nothing to plan from: no --compiler for the probe, no --whole-peak or --hints",
            "pass --compiler (and --flags-file), a known --whole-peak, or force --shards N",
        )
    settings.out_dir.mkdir(parents=True, exist_ok=True)

    forced = settings.shards is not None
    flags = _flags(settings)
    gc = _gc_sizing(settings, flags, target)
    # A forced N needs no prediction: skip the probe's compiles (that is why one forces N).
    # The probe compiles with the GC sizing the shards get: it measures what will be built.
    probe = None if forced else _probe(settings, parsed, origin, budget, [*flags, *gc.options])
    whole_hint, hint_warning = usable_hint(whole_hint, probe)
    if hint_warning:
        _say(f"warning: {hint_warning}")
    model = estimate(n_entries, probe, whole_hint)
    if model is not None and model.source == "profile" and not forced:
        _say("warning: no probe numbers: shard peaks are predicted without the preamble's cost")
    if forced:
        n = min(settings.shards, n_entries)
        if n < settings.shards:
            _say(f"warning: --shards {settings.shards} capped at the {n_entries} entries of "
                 "the list")
        sizes = balanced_sizes(n_entries, n)
        peak = predict_peak(model.base_peak, model.per_entry_peak, sizes[0]) if model else 0
        plan = ShardPlan(n, sizes, peak, peak <= target, f"forced {n} shards")
    elif model is None:
        plan = ShardPlan(1, (n_entries,), 0, False, "no prediction (probe failed)")
    else:
        plan = plan_shards(
            model.whole_peak,
            model.base_peak,
            n_entries,
            target,
            max_shards=settings.max_shards,
            base_cpu_s=model.base_cpu_s,
            whole_cpu_s=model.whole_cpu_s,
        )
    result = write_shards(
        parsed, plan.n, settings.out_dir, origin, line_directives=not settings.no_line_directives
    )
    write_compile_options(settings.out_dir, gc.options)
    write_plan_record(
        settings.out_dir,
        _record(settings,
            parsed,
            origin,
            budget,
            slots,
            target,
            plan,
            model,
            probe,
            forced,
            result.paths,
            gc,
            whole_hint,
        ),
    )
    for warning in plan.warnings:
        _say(f"warning: {warning}")
    _say(_summary(origin, plan, model, target, gc))
    return list(result.paths)


def _summary(
    origin: Path, plan: ShardPlan, model: PeakModel | None, target: int, gc: GccGcSizing
) -> str:
    numbers = ""
    if model is not None:
        numbers = (
            f"predicted whole {format_size(model.whole_peak)}, "
            f"shard {format_size(plan.predicted_shard_peak)}, "
            f"target {format_size(target)} per shard"
        )
    if gc.applied:
        numbers += (", " if numbers else "") + (
            f"GCC GC sized: ggc-min-expand={gc.expand_percent} "
            f"ggc-min-heapsize={gc.min_heapsize_kib}"
        )
    if plan.n == 1:
        return f"kept {origin.name} whole ({numbers or plan.reason})"
    return f"split {origin.name} into {plan.n} shards ({numbers or plan.reason})"


def main(argv: Sequence[str] | None = None) -> int:
    settings = SplitSettings.from_args(_parser().parse_args(argv))
    try:
        paths = run(settings)
    except BadInput as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    if settings.format == "cmake":
        print(";".join(str(p) for p in paths))
    else:
        for path in paths:
            print(path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
