"""`buildctl wheel`, `buildctl matrix` and `buildctl verify`: the command handlers of the wheel
pipeline (verify lives here, not in verify.py, which is already long)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from buildctl import host
from buildctl.errors import BadInput, BuildctlError
from buildctl.settings import (
    Capacity,
    Layers,
    WheelSettings,
    command_settings,
    from_flags,
    govern_settings,
    join_cluster,
    show,
)
from buildctl.settings_base import Settings, flag_only


def _check_torch(specs: tuple[str, ...], allow: bool) -> None:
    from buildctl.wheel.torchspec import parse_torch

    for spec in specs:
        parse_torch(spec, allow_prerelease=allow)  # bad versions: exit 2 before any work


def _project_dir(source: Path | None) -> Path | None:
    """The directory whose pyproject.toml `[tool.buildctl]` is read (none for a missing one)."""
    return source if source is not None and source.is_dir() else None


def _entry_report(report: Path | None, spec: str) -> Path | None:
    return report.with_name(f"{report.stem}-{spec}{report.suffix}") if report else None


def entry_settings(settings_json: str) -> WheelSettings:
    """A matrix entry's settings, resolved once by the matrix and passed as JSON."""
    try:
        settings = WheelSettings.model_validate_json(settings_json)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadInput(f"--settings-json is not a matrix entry's settings: {first['msg']}",
                       "let `buildctl matrix --executor ray` write it") from None
    _check_torch(settings.torch, settings.allow_prerelease)
    return settings


def wheel_settings(layers: Layers) -> tuple[WheelSettings, Any]:
    """`buildctl wheel`'s settings and, for --executor ray, the executor of its jobs."""
    _check_torch(layers.get(WheelSettings, "torch"),
                 bool(layers.get(WheelSettings, "allow_prerelease")))
    from buildctl.kernels import BUNDLED, KERNELS_DIR

    cache_dir = layers.get(WheelSettings, "cache_dir")
    source = layers.get(WheelSettings, "source")
    shared = [source.resolve() if source else KERNELS_DIR / BUNDLED]
    executor, capacity = join_cluster(layers.ray_address(), cache_dir, shared, host.probe())
    try:
        return command_settings(WheelSettings, layers, govern_settings(layers, capacity)), executor
    except BaseException:
        if executor is not None:
            executor.close()
        raise


def cmd_wheel(args: argparse.Namespace, console: Console) -> int:
    from buildctl.wheel.pipeline import build_wheel, describe

    settings, executor = (
        (entry_settings(args.settings_json), None) if args.settings_json
        else wheel_settings(Layers.collect(args, project_dir=_project_dir(args.source),
                                           torch=(args.torch,))))
    try:
        if args.show_settings or args.verbose:
            console.print(show(settings), highlight=False, markup=False)
        if args.show_settings:
            return 0
        torch = settings.torch[0]
        project = settings.project_build(torch)
        req = settings.wheel_request(torch, project)
        govern = settings.govern
        opts = govern.session_options(
            req.cache_dir, f"buildctl wheel {req.project} torch {torch}", str(req.source_dir),
            executor=executor, project=req.project, console=console,
            device_link_job_bytes=project.device_link_job_bytes,
            max_device_links=project.max_device_links,
        )
        console.print(
            f"[bold]buildctl wheel[/bold]: {req.project} for torch {torch}, budget "
            f"{host.format_size(govern.mem_budget)}, {govern.jobs} CPU slots",
            highlight=False,
        )
        outcome = build_wheel(req, opts)
    finally:
        if executor is not None:
            executor.close()
    console.print(f"buildctl: wheel ready: {describe(outcome)}", highlight=False)
    console.print(
        f"  install: pip install --find-links {req.out_dir / outcome.label} {req.project}",
        highlight=False,
    )
    return 0


def cmd_matrix(args: argparse.Namespace, console: Console) -> int:
    from buildctl.wheel.index import SummaryTable, WheelSummary
    from buildctl.wheel.pipeline import build_wheel

    layers = Layers.collect(args, project_dir=_project_dir(args.source), torch=tuple(args.torch))
    specs: tuple[str, ...] = layers.get(WheelSettings, "torch")
    _check_torch(specs, bool(layers.get(WheelSettings, "allow_prerelease")))
    ray_address = layers.ray_address()
    # Each entry is a whole wheel build: the budget is per build, from this host (or the flags),
    # on Ray too (a task asks the cluster for exactly that much).
    settings = command_settings(
        WheelSettings, layers, govern_settings(layers, Capacity(host=host.probe()))
    )
    if args.show_settings:
        console.print(show(settings), highlight=False, markup=False)
        return 0
    if args.verbose:
        console.print(show(settings), highlight=False, markup=False)
    if ray_address is not None:
        return _matrix_on_ray(settings, ray_address, console)
    rows: list[WheelSummary] = []
    failed = 0
    for spec in specs:
        project = settings.project_build(spec)
        req = settings.wheel_request(spec, project)
        opts = settings.govern.session_options(
            req.cache_dir, f"buildctl matrix {req.project} torch {spec}",
            str(req.source_dir), project=req.project,
            report=_entry_report(settings.govern.report, spec), console=console,
            device_link_job_bytes=project.device_link_job_bytes,
            max_device_links=project.max_device_links,
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

    write_text_atomic(settings.out / "SUMMARY.md", table.to_markdown())
    console.print(f"buildctl: summary in {settings.out / 'SUMMARY.md'}; index pages under "
                  f"{settings.out}")
    return 1 if failed else 0


def _matrix_on_ray(settings: WheelSettings, address: str, console: Console) -> int:
    """Each torch version's whole wheel build becomes one Ray task asking for its budget; the
    task runs `buildctl wheel` with these settings, serialised."""
    from buildctl.govern.ray_executor import MatrixBuild, run_matrix_on_ray
    from buildctl.report import write_text_atomic
    from buildctl.wheel.index import SummaryTable, WheelSummary, write_pages
    from buildctl.wheel.torchspec import local_label, parse_torch

    govern = settings.govern
    builds = []
    for spec in settings.torch:
        entry = settings.for_one_torch(spec, _entry_report(govern.report, spec))
        argv = [sys.executable, "-m", "buildctl", "wheel", "--torch", spec,
                "--settings-json", entry.model_dump_json()]
        builds.append(MatrixBuild(name=spec, argv=argv, memory_bytes=govern.mem_budget,
                                  cpus=govern.jobs, cwd=str(Path.cwd())))
    paths = [settings.out, settings.cache_dir]
    results = run_matrix_on_ray(builds, address, check_paths=paths,
                                on_event=lambda text: console.print(text, highlight=False))
    rows = []
    for res in results:
        label = local_label(parse_torch(res.name, allow_prerelease=True))
        wheels = sorted((settings.out / label).rglob("*.whl"))
        ok = res.rc == 0 and wheels
        rows.append(WheelSummary(
            torch=res.name, wheel=wheels[-1].name if ok else "-",
            size_bytes=wheels[-1].stat().st_size if ok else 0, peak_rss_bytes=res.peak_rss_bytes,
            wall_s=res.wall_s, verify="pass" if ok else "fail",
            note=f"node {res.node}" + ("" if ok else f"; exit {res.rc}: "
                                       + (res.stderr.strip().splitlines() or [""])[-1][:120]),
        ))
    write_pages(settings.out)
    table = SummaryTable(rows=rows)
    console.print(table.to_rich())
    write_text_atomic(settings.out / "SUMMARY.md", table.to_markdown())
    return 0 if all(r.verify == "pass" for r in rows) else 1


class VerifySettings(Settings):
    """`buildctl verify`'s settings: flags only (its --cache-dir reads no environment variable,
    unlike wheel's)."""

    wheel: Path = flag_only(flag="WHEEL")
    torch: str | None = flag_only(None)
    against: Path | None = flag_only(None)
    runtime: tuple[str, ...] = flag_only(())
    cache_dir: Path = flag_only(Path(".buildctl-cache"), flag="--cache-dir")


def cmd_verify(args: argparse.Namespace, console: Console) -> int:
    settings = from_flags(VerifySettings, args)
    from buildctl.wheel.verify import TorchLibs, verify_wheel

    if bool(settings.torch) == bool(settings.against):
        raise BadInput(
            "verify needs exactly one of --torch VERSION or --against PATH",
            "e.g. --against /path/to/torch-2.14.1-...whl or --against .venv/bin/python",
        )
    from buildctl.wheel.runtime_libs import load_runtime

    python = None
    if settings.against:
        path = settings.against
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

        assert settings.torch is not None
        target = parse_torch(settings.torch, allow_prerelease=True)
        env = ensure_torch_env(settings.cache_dir / "envs" / target.spec, target)
        libs = TorchLibs.from_installed(env.python)
        python = env.python
    runtime = load_runtime(list(settings.runtime), python=python)
    result = verify_wheel(settings.wheel, libs, runtime=runtime)
    console.print(result.render(), highlight=False, markup=False)
    return 0 if result.ok else 1
