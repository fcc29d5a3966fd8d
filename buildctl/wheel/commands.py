"""`buildctl wheel`, `buildctl matrix` and `buildctl verify`: the command handlers of the wheel
pipeline (verify lives here, not in verify.py, which is already long)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from buildctl import host
from buildctl.errors import BadInput, BuildctlError
from buildctl.settings import resolve_budget, session_options


def _wheel_request(args: argparse.Namespace, torch: str):
    from buildctl.kernels import resolve_project
    from buildctl.wheel.pipeline import WheelRequest

    budget, slots = resolve_budget(args)
    project = resolve_project(
        name=args.project,
        source=args.source,
        preset=args.preset,
        low_ram=args.low_ram,
        budget_bytes=budget,
        slots=slots,
        torch=torch,
        cache_dir=args.cache_dir,
        oneapi_roots=args.oneapi_root or [],
        compiler=args.compiler,
        aot=args.aot,
    )
    return WheelRequest(
        torch=torch,
        project=project.name,
        source_dir=project.source_dir,
        out_dir=args.out.resolve(),
        cache_dir=args.cache_dir.resolve(),
        cmake_defines=project.cmake_defines,
        build_env=project.build_env,
        smoke_snippet=project.smoke_snippet,
        source_ref=project.source_ref,
        patches=project.patches,
        index_url=args.torch_index,
        extra_index_urls=args.extra_index_url or [],
        find_links=args.find_links or [],
        allow_prerelease=args.allow_prerelease,
    )


def cmd_wheel(args: argparse.Namespace, console: Console) -> int:
    from buildctl.wheel.pipeline import build_wheel, describe
    from buildctl.wheel.torchspec import parse_torch

    parse_torch(args.torch, allow_prerelease=args.allow_prerelease)  # bad versions: exit 2 now
    req = _wheel_request(args, args.torch)
    opts = session_options(
        args, req.cache_dir, f"buildctl wheel {req.project} torch {args.torch}", str(req.source_dir)
    )
    console.print(
        f"[bold]buildctl wheel[/bold]: {req.project} for torch {args.torch}, budget "
        f"{host.format_size(opts.budget_bytes)}, {opts.slots} CPU slots",
        highlight=False,
    )
    try:
        outcome = build_wheel(req, opts)
    finally:
        if opts.executor is not None:
            opts.executor.close()
    console.print(f"buildctl: wheel ready: {describe(outcome)}", highlight=False)
    console.print(
        f"  install: pip install --find-links {req.out_dir / outcome.label} {req.project}",
        highlight=False,
    )
    return 0


def cmd_matrix(args: argparse.Namespace, console: Console) -> int:
    from buildctl.wheel.index import SummaryTable, WheelSummary
    from buildctl.wheel.pipeline import build_wheel
    from buildctl.wheel.torchspec import parse_torch

    for spec in args.torch:
        parse_torch(spec, allow_prerelease=args.allow_prerelease)
    if args.executor == "ray":
        return _matrix_on_ray(args, console)
    rows: list[WheelSummary] = []
    failed = 0
    for spec in args.torch:
        req = _wheel_request(args, spec)
        opts = session_options(
            args, req.cache_dir, f"buildctl matrix {req.project} torch {spec}", str(req.source_dir)
        )
        if args.report:
            opts.report_path = args.report.with_name(
                f"{args.report.stem}-{spec}{args.report.suffix}"
            )
        try:
            out = build_wheel(req, opts)
            rows.append(
                WheelSummary(
                    torch=spec,
                    wheel=out.wheel.name,
                    size_bytes=out.size_bytes,
                    peak_rss_bytes=out.peak_rss_bytes,
                    wall_s=out.wall_s,
                    verify="pass",
                )
            )
        except BuildctlError as exc:
            failed += 1
            console.print(exc.render(), highlight=False, markup=False)
            rows.append(
                WheelSummary(
                    torch=spec,
                    wheel="-",
                    size_bytes=0,
                    peak_rss_bytes=0,
                    wall_s=0.0,
                    verify="fail",
                    note=exc.what.splitlines()[0],
                )
            )
    table = SummaryTable(rows=rows)
    console.print(table.to_rich())
    from buildctl.report import write_text_atomic

    write_text_atomic(args.out / "SUMMARY.md", table.to_markdown())
    console.print(f"buildctl: summary in {args.out / 'SUMMARY.md'}; index pages under {args.out}")
    return 1 if failed else 0


def _forwarded_wheel_args(args: argparse.Namespace) -> list[str]:
    """The `buildctl wheel` arguments a matrix entry passes on to each build."""
    out: list[str] = []
    for flag, value in (
        ("--project", args.project), ("--source", args.source), ("--preset", args.preset),
        ("--out", args.out.resolve()), ("--cache-dir", args.cache_dir.resolve()),
        ("--torch-index", args.torch_index), ("--compiler", args.compiler), ("--aot", args.aot),
        ("--profiles", args.profiles), ("--prior-rss", args.prior_rss),
    ):
        if value is not None:
            out += [flag, str(value)]
    for flag, values in (("--extra-index-url", args.extra_index_url),
                         ("--find-links", args.find_links), ("--oneapi-root", args.oneapi_root)):
        for value in values or []:
            out += [flag, str(value)]
    if args.allow_prerelease:
        out.append("--allow-prerelease")
    if args.low_ram:
        out.append("--low-ram")
    if args.share_priors:
        out.append("--share-priors")
    if args.whole_slots:
        out.append("--whole-slots")
    return out


def _matrix_on_ray(args: argparse.Namespace, console: Console) -> int:
    """Each torch version's whole wheel build becomes one Ray task asking for its budget."""
    from buildctl.govern.ray_executor import MatrixBuild, run_matrix_on_ray
    from buildctl.report import write_text_atomic
    from buildctl.wheel.index import SummaryTable, WheelSummary, write_pages
    from buildctl.wheel.torchspec import local_label, parse_torch

    if not args.ray_address:
        raise BadInput("--executor ray needs --ray-address HOST:PORT",
                       "start a cluster with `ray start --head --port 6379` and pass its address")
    budget, slots = resolve_budget(args)
    builds = []
    for spec in args.torch:
        argv = [sys.executable, "-m", "buildctl.cli", "wheel", "--torch", spec,
                *_forwarded_wheel_args(args), "--mem-budget", str(budget), "-j", str(slots),
                "--plain"]
        if args.report:
            argv += ["--report", str(args.report.with_name(
                f"{args.report.stem}-{spec}{args.report.suffix}").resolve())]
        builds.append(MatrixBuild(name=spec, argv=argv, memory_bytes=budget, cpus=slots,
                                  cwd=str(Path.cwd())))
    paths = [args.out.resolve(), args.cache_dir.resolve()]
    results = run_matrix_on_ray(builds, args.ray_address, check_paths=paths,
                                on_event=lambda text: console.print(text, highlight=False))
    rows = []
    for res in results:
        label = local_label(parse_torch(res.name, allow_prerelease=True))
        wheels = sorted((args.out / label).rglob("*.whl"))
        ok = res.rc == 0 and wheels
        rows.append(WheelSummary(
            torch=res.name, wheel=wheels[-1].name if ok else "-",
            size_bytes=wheels[-1].stat().st_size if ok else 0, peak_rss_bytes=res.peak_rss_bytes,
            wall_s=res.wall_s, verify="pass" if ok else "fail",
            note=f"node {res.node}" + ("" if ok else f"; exit {res.rc}: "
                                       + (res.stderr.strip().splitlines() or [""])[-1][:120]),
        ))
    write_pages(args.out)
    table = SummaryTable(rows=rows)
    console.print(table.to_rich())
    write_text_atomic(args.out / "SUMMARY.md", table.to_markdown())
    return 0 if all(r.verify == "pass" for r in rows) else 1


def cmd_verify(args: argparse.Namespace, console: Console) -> int:
    from buildctl.wheel.verify import TorchLibs, verify_wheel

    if bool(args.torch) == bool(args.against):
        raise BadInput(
            "verify needs exactly one of --torch VERSION or --against PATH",
            "e.g. --against /path/to/torch-2.14.1-...whl or --against .venv/bin/python",
        )
    from buildctl.wheel.runtime_libs import load_runtime

    python = None
    if args.against:
        path = args.against
        if path.suffix == ".whl":
            libs = TorchLibs.from_wheel(path)
        elif path.is_dir():
            libs = TorchLibs.from_path(path)
        else:
            libs = TorchLibs.from_installed(path)
            python = path
    else:
        from buildctl.wheel.smoke import ensure_torch_env
        from buildctl.wheel.torchspec import parse_torch

        target = parse_torch(args.torch, allow_prerelease=True)
        env = ensure_torch_env(args.cache_dir / "envs" / target.spec, target)
        libs = TorchLibs.from_installed(env.python)
        python = env.python
    runtime = load_runtime(args.runtime, python=python)
    result = verify_wheel(args.wheel, libs, runtime=runtime)
    console.print(result.render(), highlight=False, markup=False)
    return 0 if result.ok else 1
