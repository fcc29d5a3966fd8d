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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from buildctl.errors import EXIT_BAD_INPUT, EXIT_OK, BadInput
from buildctl.host import format_size, parse_size
from buildctl.split.plan import (
    GccGcSizing,
    GeneratedSource,
    ShardPlan,
    balanced_sizes,
    gcc_gc_sizing,
    is_gnu_compiler,
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


def _say(line: str) -> None:
    print(f"buildctl: {line}", file=sys.stderr)


def _whole_peak_hint(args: argparse.Namespace, source: Path) -> int | None:
    if args.whole_peak:
        return parse_size(args.whole_peak)
    if args.hints is None:
        return None
    try:
        hints = json.loads(args.hints.read_text())
    except OSError as exc:
        raise BadInput(
            f"cannot read {args.hints}: {exc.strerror}", "pass an existing file"
        ) from exc
    except ValueError as exc:
        raise BadInput(f"{args.hints}: not JSON ({exc})", 'write {"file.cpp": 1234567}') from exc
    if not isinstance(hints, dict):
        raise BadInput(f"{args.hints}: expected a JSON object", 'write {"file.cpp": 1234567}')
    value = hints.get(str(source), hints.get(source.name))
    if value is None:
        return None
    return parse_size(str(value))


def _host_defaults(args: argparse.Namespace) -> tuple[int, int]:
    from buildctl import host

    info = None
    if args.budget is None or args.slots is None:
        info = host.probe()
    if args.budget is not None:
        budget = parse_size(args.budget)
    else:
        assert info is not None
        budget = host.default_budget(info.total_ram_bytes, info.cgroup_limit_bytes)
    slots = args.slots if args.slots is not None else (info.cores if info else 1)
    return budget, slots


def _flags(args: argparse.Namespace) -> list[str]:
    return read_flags_file(args.flags_file) if args.flags_file else []


def _gc_sizing(args: argparse.Namespace, flags: Sequence[str], target: int) -> GccGcSizing:
    if args.compiler_id:
        gnu = is_gnu_compiler(compiler_id=args.compiler_id)
    elif args.compiler and not args.no_gcc_gc:
        gnu = is_gnu_compiler(version_text=compiler_version_text(args.compiler))
    else:
        gnu = False
    return gcc_gc_sizing(
        enabled=not args.no_gcc_gc, gnu=gnu, flags=flags, shard_target_bytes=target
    )


def _probe(
    args: argparse.Namespace,
    parsed: GeneratedSource,
    origin: Path,
    budget: int,
    flags: Sequence[str],
) -> ProbeResult | None:
    if not args.compiler:
        return None
    pre, epi = localized_parts(parsed, origin)
    try:
        result = probe_source(
            parsed,
            compiler=args.compiler,
            flags=flags,
            work_dir=args.out_dir / "probe",
            preamble=pre,
            epilogue=epi,
            k=args.probe_entries,
            # The probe is one job under the same budget: a sample predicted above it is
            # skipped (the model then draws its line from the preamble-only compile).
            max_probe_peak=int(budget * args.safety),
            use_cache=not args.no_probe_cache,
        )
    except ProbeFailed as exc:
        first = next((ln for ln in exc.stderr.splitlines() if "error" in ln), "")
        _say(f"warning: {exc} ({first.strip()[:200]}); cannot predict memory for {origin.name}")
        return None
    except OSError as exc:
        _say(f"warning: cannot run the probe compiler {args.compiler}: {exc.strerror}")
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
    args: argparse.Namespace,
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


def run(args: argparse.Namespace) -> list[Path]:
    origin = args.source.resolve()
    try:
        text = origin.read_text()
    except FileNotFoundError as exc:
        raise BadInput(f"{origin}: no such file", "generate it before splitting") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{origin}: cannot read ({exc})", "pass a readable text source") from exc
    if args.shards is not None and args.shards < 1:
        raise BadInput(f"--shards must be at least 1, got {args.shards}", "pass --shards 4")
    if args.max_shards < 1:
        raise BadInput(f"--max-shards must be at least 1, got {args.max_shards}", "")
    if args.probe_entries is not None and args.probe_entries < 1:
        raise BadInput(f"--probe-entries must be at least 1, got {args.probe_entries}", "")
    parsed = parse_generated_source(text, str(origin))
    n_entries = len(parsed.entries)
    budget, slots = _host_defaults(args)
    target = shard_target_from_budget(budget, slots, args.safety)
    whole_hint = _whole_peak_hint(args, origin)
    if args.shards is None and args.compiler is None and whole_hint is None:
        raise BadInput(
            "nothing to plan from: no --compiler for the probe, no --whole-peak or --hints",
            "pass --compiler (and --flags-file), a known --whole-peak, or force --shards N",
        )
    args.out_dir.mkdir(parents=True, exist_ok=True)

    forced = args.shards is not None
    flags = _flags(args)
    gc = _gc_sizing(args, flags, target)
    # A forced N needs no prediction: skip the probe's compiles (that is why one forces N).
    # The probe compiles with the GC sizing the shards get: it measures what will be built.
    probe = None if forced else _probe(args, parsed, origin, budget, [*flags, *gc.options])
    whole_hint, hint_warning = usable_hint(whole_hint, probe)
    if hint_warning:
        _say(f"warning: {hint_warning}")
    model = estimate(n_entries, probe, whole_hint)
    if model is not None and model.source == "profile" and not forced:
        _say("warning: no probe numbers: shard peaks are predicted without the preamble's cost")
    if forced:
        n = min(args.shards, n_entries)
        if n < args.shards:
            _say(f"warning: --shards {args.shards} capped at the {n_entries} entries of the list")
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
            max_shards=args.max_shards,
            base_cpu_s=model.base_cpu_s,
            whole_cpu_s=model.whole_cpu_s,
        )
    result = write_shards(
        parsed, plan.n, args.out_dir, origin, line_directives=not args.no_line_directives
    )
    write_compile_options(args.out_dir, gc.options)
    write_plan_record(
        args.out_dir,
        _record(
            args,
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
    args = _parser().parse_args(argv)
    try:
        paths = run(args)
    except BadInput as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.format == "cmake":
        print(";".join(str(p) for p in paths))
    else:
        for path in paths:
            print(path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
