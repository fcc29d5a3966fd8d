"""Command line: argument parsing and rendering only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from buildctl import __version__, host
from buildctl.errors import EXIT_INTERRUPTED, BadInput, BuildctlError

EPILOG_BUILD = """\
examples:
  buildctl build                                  build the bundled kernel project
  buildctl build --source ~/src/proj --mem-budget 28G --report build.json
  buildctl build --source . --low-ram -- -DCMAKE_BUILD_TYPE=Release

how memory is governed:
  Every compile and link asks buildctl for admission. A job starts only when the predicted
  peak RSS of the running jobs plus its own fits the budget and a CPU slot is free (a job
  that its profile shows mostly waiting, on a CPU less than half the time, takes a fraction
  of a slot, at least a quarter; --whole-slots turns that off). Predictions come from
  measured peaks of earlier builds (`buildctl profile show`); unknown jobs get a
  conservative prior (--prior-rss; by default 1 GiB compile, 1.5 GiB link). A first build under
  a small budget therefore runs few jobs at once; --share-priors predicts unknown jobs at
  budget/slots instead (faster, but the total may pass the budget for a moment: a job that
  outgrows its share is then killed and re-run later at the full prior). If host memory runs
  low anyway, admission pauses; if it gets critical the youngest job is killed and re-run
  later, so the kernel OOM killer never picks.

exit codes: 0 built, 1 build failed, 2 bad input, 130 interrupted.
"""


def _size(text: str) -> int:
    try:
        return host.parse_size(text)
    except BadInput as exc:
        raise argparse.ArgumentTypeError(f"{exc.what} ({exc.fix})") from None


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read duration {text!r}; write e.g. 90s, 10m, 1h"
        ) from None


def add_governor_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("memory and scheduling")
    g.add_argument(
        "--mem-budget",
        type=_size,
        metavar="SIZE",
        help="memory the build may use, e.g. 28G, 512M, 1.5GiB "
        "(default: min(RAM, cgroup limit) minus a reserve)",
    )
    g.add_argument(
        "--low-ram",
        action="store_true",
        help="trade speed for memory: tighter budget and memory-saving build settings",
    )
    g.add_argument(
        "-j",
        "--jobs",
        type=int,
        metavar="N",
        help="CPU slots: jobs running at once at most (default: cores); jobs measured mostly "
        "waiting count as a fraction of a slot (see --whole-slots)",
    )
    g.add_argument(
        "--prior-rss",
        type=_size,
        metavar="SIZE",
        help="predicted peak for jobs never measured before (default 1 GiB compile, 1.5 GiB "
        "link)",
    )
    g.add_argument(
        "--share-priors",
        action="store_true",
        help="first builds: predict never-measured jobs at most budget/slots, so they run in "
        "parallel; the total may briefly pass the budget (the job that outgrew its share is "
        "killed and re-run alone)",
    )
    g.add_argument(
        "--whole-slots",
        action="store_true",
        help="every job takes a whole CPU slot, even one whose profile shows it mostly waiting "
        "(then -j N means N jobs at once, never more)",
    )
    g.add_argument(
        "--profiles",
        type=Path,
        metavar="DB",
        help="profile database (default ~/.cache/buildctl/profiles.sqlite or $BUILDCTL_PROFILE_DB)",
    )
    g.add_argument(
        "--low-water",
        type=_size,
        metavar="SIZE",
        help="pause admission when host available memory falls below this",
    )
    g.add_argument(
        "--critical",
        type=_size,
        metavar="SIZE",
        help="kill and re-queue the youngest job below this host available memory",
    )
    g.add_argument(
        "--hang-after",
        type=_duration,
        default=600.0,
        metavar="DURATION",
        help="a job with no CPU, I/O or process change for this long is stalled "
        "(default 10m; a busy silent compile is never stalled)",
    )
    g.add_argument(
        "--retries",
        type=int,
        default=1,
        metavar="N",
        help="re-runs of a job killed as stalled or crashed (default 1)",
    )
    x = parser.add_argument_group("where jobs run")
    x.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local (default) or ray: every admitted job becomes a Ray task asking "
                   "for its predicted memory; needs `pip install 'buildctl[ray]'` and a shared "
                   "filesystem (same paths on every node)")
    x.add_argument("--ray-address", metavar="HOST:PORT",
                   help="the Ray cluster to use with --executor ray (e.g. 127.0.0.1:6379)")
    o = parser.add_argument_group("output")
    o.add_argument("--report", type=Path, metavar="FILE", help="write the JSON build report here")
    o.add_argument(
        "--plain",
        action="store_true",
        default=None,
        help="plain line log instead of the live view (automatic when not a terminal)",
    )


def resolve_budget(args: argparse.Namespace) -> tuple[int, int]:
    info = host.probe()
    budget = args.mem_budget or host.default_budget(
        info.total_ram_bytes, info.cgroup_limit_bytes, low_ram=args.low_ram
    )
    if budget < 64 * 1024**2:
        raise BadInput(
            f"memory budget {host.format_size(budget)} is too small to run a compiler",
            "pass --mem-budget of at least 64M (a C++ compile needs ~100 MB and up)",
        )
    slots = args.jobs or info.cores
    if slots < 1:
        raise BadInput(f"--jobs {slots} is not a number of CPU slots", "pass --jobs 1 or more")
    return budget, slots


def remote_executor(args: argparse.Namespace, build_dir: Path, source: str):
    """The Ray executor and the cluster's totals, or (None, None) for local builds."""
    if getattr(args, "executor", "local") != "ray":
        return None, None
    if not args.ray_address:
        raise BadInput("--executor ray needs --ray-address HOST:PORT",
                       "start a cluster with `ray start --head --port 6379` and pass its address")
    from buildctl.govern.ray_executor import make_ray_executor

    build_dir.mkdir(parents=True, exist_ok=True)
    return make_ray_executor(args.ray_address, build_dir.resolve(), check_paths=[source])


def session_options(args: argparse.Namespace, build_dir: Path, title: str, source: str):
    from buildctl.govern.session import SessionOptions

    budget, slots = resolve_budget(args)
    executor, cluster = remote_executor(args, build_dir, source)
    if cluster is not None:
        # The cluster's memory and CPUs are the budget: Ray packs tasks per node by memory.
        budget = args.mem_budget or cluster.total_memory
        slots = args.jobs or cluster.total_cpus
    return SessionOptions(
        build_dir=build_dir,
        budget_bytes=budget,
        slots=slots,
        report_path=args.report,
        profile_db=args.profiles,
        prior_bytes=args.prior_rss,
        share_priors=args.share_priors,
        cpu_shares=not args.whole_slots,
        plain=args.plain,
        title=title,
        low_water_bytes=args.low_water,
        critical_bytes=args.critical,
        hang_after_s=args.hang_after,
        retries=args.retries,
        command=sys.argv,
        source_dir=source,
        executor=executor,
    )


def cmd_build(args: argparse.Namespace, console: Console) -> int:
    from buildctl.build import BuildRequest, governed_build, ninja_width
    from buildctl.kernels import bundled_build_settings

    cmake_args = list(args.cmake_args)
    if cmake_args[:1] == ["--"]:
        cmake_args = cmake_args[1:]
    extra: dict[str, str] = {}
    budget, slots = resolve_budget(args)  # bad sizes fail before any project is looked at
    if args.source is None:
        source, extra, default_build = bundled_build_settings(
            args.preset, args.low_ram, budget, slots, split=not args.no_split
        )
        build_dir = args.build_dir or default_build
    else:
        source = args.source.resolve()
        if not source.is_dir():
            raise BadInput(
                f"--source {args.source} is not a directory",
                "pass the top directory of a CMake project",
            )
        build_dir = args.build_dir or (source / "build-buildctl")
    opts = session_options(args, build_dir, f"buildctl build {source.name}", str(source))
    req = BuildRequest(
        source_dir=source,
        build_dir=build_dir.resolve(),
        budget_bytes=opts.budget_bytes,
        slots=opts.slots,
        ninja_width=args.ninja_width or ninja_width(opts.slots),
        cmake_args=cmake_args,
        extra_defines=extra,
        targets=args.target or [],
    )
    console.print(
        f"[bold]buildctl[/bold] {__version__}: budget {host.format_size(opts.budget_bytes)}, "
        f"{opts.slots} CPU slots, build dir {req.build_dir}",
        highlight=False,
    )
    try:
        rc, session = governed_build(req, opts)
    finally:
        if opts.executor is not None:
            opts.executor.close()
    return _summarize(console, session, rc, args.report)


def _summarize(console: Console, session, rc: int, report_path: Path | None) -> int:
    rep = session.report
    console.print(
        f"buildctl: {rep.status} in {rep.wall_s:.1f}s; {len(rep.jobs)} jobs; peak total RSS "
        f"{host.format_size(rep.peak_total_rss_bytes)} of budget "
        f"{host.format_size(rep.budget_bytes)}"
        + (f"; report {report_path}" if report_path else ""),
        highlight=False,
    )
    from buildctl.govern.repro import failure_lines

    for line in failure_lines(rep):
        console.print(line, highlight=False, markup=False)
    if session.interrupted:
        console.print("buildctl: interrupted; finished objects are kept, rerun to continue")
        return EXIT_INTERRUPTED
    if rc != 0:
        failed = [j.output for j in rep.jobs if j.status in ("failed", "hung", "crashed")]
        console.print(
            f"error: the build failed{(' at ' + ', '.join(failed[:5])) if failed else ''}\n"
            "  fix: read the compiler output above"
            + (f"; details in {report_path}" if report_path else "; add --report FILE for details"),
            highlight=False,
        )
        return 1
    return 0


def cmd_profile(args: argparse.Namespace, console: Console) -> int:
    from buildctl.govern.profiles import ProfileDB, summarize_by_target

    db = ProfileDB(args.profiles)
    try:
        if args.profile_cmd == "show":
            entries = db.latest()
            if args.filter:
                entries = [e for e in entries if args.filter in e.output]
            if not entries:
                console.print(f"no profiles in {db.path} yet; run `buildctl build` once")
                return 0
            table = Table(title=f"expected peak memory per target ({db.path})")
            for col in ("target", "jobs", "max peak", "link peak", "CPU s", "heaviest job"):
                table.add_column(
                    col,
                    justify="right"
                    if col in ("jobs", "max peak", "link peak", "CPU s")
                    else "left",
                )
            for s in summarize_by_target(entries):
                table.add_row(
                    s.target,
                    str(s.jobs),
                    host.format_size(s.max_peak_bytes),
                    host.format_size(s.link_peak_bytes) if s.link_peak_bytes else "-",
                    f"{s.total_cpu_s:.1f}",
                    s.heaviest_output,
                )
            console.print(table)
            if args.jobs_detail:
                from buildctl.govern.scheduler import cpu_share

                jt = Table(title="per job (latest run)")
                for col in ("output", "kind", "peak", "wall s", "CPU slot", "compiler"):
                    jt.add_column(col)
                for e in entries:
                    jt.add_row(
                        e.output,
                        e.kind,
                        host.format_size(e.peak_rss_bytes),
                        f"{e.wall_s:.1f}",
                        # The share this run alone gives (predictions take the max of 3 runs).
                        f"{cpu_share(e.cpu_s, e.wall_s, e.runq_wait_s):.2g}",
                        e.compiler,
                    )
                console.print(jt)
        elif args.profile_cmd == "export":
            text = db.export_json()
            if args.file is None or str(args.file) == "-":
                sys.stdout.write(text + "\n")
            else:
                from buildctl.report import write_text_atomic

                write_text_atomic(args.file, text + "\n")
                console.print(f"exported {len(db.latest())} job profiles to {args.file}")
        elif args.profile_cmd == "import":
            try:
                text = Path(args.file).read_text()
            except OSError as exc:
                raise BadInput(
                    f"cannot read {args.file}: {exc.strerror}",
                    "pass a file written by `buildctl profile export`",
                ) from None
            count = db.import_json(text, str(args.file))
            console.print(f"imported {count} job profiles into {db.path}")
    finally:
        db.close()
    return 0


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


def cmd_repro(args: argparse.Namespace, console: Console) -> int:
    from buildctl.govern.repro import default_root, list_repros, resolve_repro, show_repro

    root = default_root(args.build_dir.resolve())
    if args.repro_cmd == "list":
        items = list_repros(root)
        if not items:
            console.print(f"no repros in {root}", highlight=False)
        for i, it in enumerate(items, 1):
            console.print(
                f"{i:3} {it.kind:5} {it.output}  {it.created}\n      {it.reason}\n      {it.path}",
                highlight=False,
                markup=False,
            )
    else:
        console.print(show_repro(resolve_repro(root, args.ref)), highlight=False, markup=False)
    return 0


def cmd_plan(args: argparse.Namespace, console: Console) -> int:
    from buildctl.govern.plan import render_plan, run_plan

    result = run_plan(
        cores=args.cores, mem=args.mem, swap=args.swap, mem_budget=args.mem_budget,
        slots=args.jobs, report=args.report_in, profiles=args.profiles,
        profiles_json=args.profiles_json, filter_text=args.filter,
        whole_slots=args.whole_slots,
    )
    if args.json:
        sys.stdout.write(result.to_json() + "\n")
    else:
        render_plan(result, console)
    return result.exit_code


def cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    from buildctl.govern.profiles import ProfileDB
    from buildctl.toolchain.compat import resolve
    from buildctl.toolchain.doctor import render, run_doctor

    if args.torch:
        resolve(args.torch)  # an unknown or malformed version is bad input: exit 2
    needed = None
    db = ProfileDB(args.profiles)
    try:
        entries = db.latest()
        if entries:
            needed = max(e.peak_rss_bytes for e in entries)
    finally:
        db.close()
    report = run_doctor(args.torch, python=args.python or sys.executable, needed_peak_bytes=needed)
    if args.json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        render(report, console)
    return report.exit_code


def cmd_env(args: argparse.Namespace, console: Console) -> int:
    from buildctl.toolchain.oneapi import env_command

    sys.stdout.write(env_command(args.compiler, args.oneapi_root or ()) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="buildctl",
        description="Memory-governed builds of native GPU-kernel PyTorch extensions: every "
        "compile and link is admitted against a memory budget, measured, and reported.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with `buildctl build` (the bundled kernel project) or "
        "`buildctl build --source DIR`. `buildctl COMMAND --help` explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"buildctl {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    b = sub.add_parser(
        "build",
        help="configure and build a CMake project under a memory budget",
        description="Configure a CMake project with Ninja and buildctl's launchers, "
        "then build it with every job admitted against the memory budget.",
        epilog=EPILOG_BUILD,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument(
        "--source",
        type=Path,
        metavar="DIR",
        help="CMake project to build (default: the bundled pagedattn kernel project)",
    )
    b.add_argument(
        "--build-dir",
        type=Path,
        metavar="DIR",
        help="build directory (default: DIR/build-buildctl, or _build/pagedattn-PRESET)",
    )
    b.add_argument(
        "--preset",
        default="default",
        metavar="NAME",
        help="kernel config preset of the bundled project: tiny, default, full",
    )
    b.add_argument(
        "--no-split",
        action="store_true",
        help="build heavy generated sources whole (bundled project); for comparisons",
    )
    b.add_argument("--target", action="append", metavar="NAME", help="build only this ninja target")
    b.add_argument(
        "--ninja-width",
        type=int,
        metavar="N",
        help="jobs ninja may start at once; buildctl admits them (default max(4xslots,16))",
    )
    add_governor_args(b)
    b.add_argument(
        "cmake_args",
        nargs=argparse.REMAINDER,
        help="after --: extra arguments for cmake, e.g. -- -DFOO=1",
    )
    b.set_defaults(func=cmd_build)

    p = sub.add_parser("profile", help="show, export or import measured peak-RSS profiles")
    p.add_argument("--profiles", type=Path, metavar="DB", help="profile database path")
    psub = p.add_subparsers(dest="profile_cmd", metavar="ACTION", required=True)
    show = psub.add_parser("show", help="expected peak memory per target")
    show.add_argument("--jobs", dest="jobs_detail", action="store_true", help="also list every job")
    show.add_argument("--filter", metavar="TEXT", help="only outputs containing TEXT")
    exp = psub.add_parser("export", help="write profiles as JSON (for profiles/ or CI)")
    exp.add_argument("file", nargs="?", type=Path, help="output file (default: stdout)")
    imp = psub.add_parser("import", help="merge a JSON export into the database")
    imp.add_argument("file", type=Path)
    p.set_defaults(func=cmd_profile)

    def add_wheel_args(w: argparse.ArgumentParser) -> None:
        src = w.add_argument_group("what to build")
        src.add_argument(
            "--project",
            metavar="NAME",
            help="a kernel project buildctl knows: pagedattn (default, bundled) or "
            "vllm-xpu-kernels",
        )
        src.add_argument(
            "--source",
            type=Path,
            metavar="DIR",
            help="a source checkout to build instead of the project's default",
        )
        src.add_argument(
            "--preset",
            default=None,
            metavar="NAME",
            help="kernel config preset (pagedattn: tiny/default/full)",
        )
        src.add_argument(
            "--out",
            type=Path,
            default=Path("wheelhouse"),
            metavar="DIR",
            help="wheelhouse: one folder and index per torch target (default ./wheelhouse)",
        )
        src.add_argument(
            "--cache-dir",
            type=Path,
            default=Path(".buildctl-cache"),
            metavar="DIR",
            help="torch envs and per-torch build dirs (default ./.buildctl-cache)",
        )
        idx = w.add_argument_group("where torch comes from")
        idx.add_argument(
            "--torch-index",
            metavar="URL",
            help="pip index for torch (default: pip's configuration; see `buildctl wheel --help`)",
        )
        idx.add_argument("--extra-index-url", action="append", metavar="URL")
        idx.add_argument("--find-links", action="append", metavar="DIR_OR_URL")
        idx.add_argument(
            "--allow-prerelease", action="store_true", help="accept nightly/dev torch versions"
        )
        xpu = w.add_argument_group("Intel XPU (vllm-xpu-kernels)")
        xpu.add_argument(
            "--compiler",
            metavar="VERSION",
            help="oneAPI compiler to pin (default: the one the torch version needs)",
        )
        xpu.add_argument(
            "--oneapi-root",
            action="append",
            metavar="DIR",
            help="oneAPI install root (default /opt/intel/oneapi, $ONEAPI_ROOT)",
        )
        xpu.add_argument(
            "--aot",
            metavar="DEVICES",
            help="AOT device list or GPU name, e.g. bmg-g31 for Arc Pro B70",
        )
        add_governor_args(w)

    w = sub.add_parser(
        "wheel",
        help="build a verified wheel for one torch version",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build one wheel for exactly one torch version: an isolated env with that "
        "torch, a governed scikit-build-core build in a per-torch build dir (reruns are "
        "incremental), a local version label (+pt213cpu), Requires-Dist pinning the torch "
        "release, auditwheel repair that never grafts torch/SYCL/Level Zero libraries, a "
        "symbol-by-symbol check against that torch, and an import smoke test. Only a wheel that "
        "passes everything lands in --out.",
        epilog="examples:\n  buildctl wheel --torch 2.13.0+cpu\n"
        "  buildctl wheel --torch 2.11.0+xpu --project vllm-xpu-kernels --aot bmg-g31 --low-ram\n"
        "\nexit codes: 0 wheel ready, 1 build or verification failed, 2 bad input.",
    )
    w.add_argument(
        "--torch",
        required=True,
        metavar="VERSION",
        help="torch build, e.g. 2.13.0+cpu, 2.11.0+xpu, 2.14.1",
    )
    add_wheel_args(w)
    w.set_defaults(func=cmd_wheel)

    m = sub.add_parser(
        "matrix",
        help="build wheels for several torch versions, with index pages and a summary",
        description="Runs `buildctl wheel` for each --torch, writes a PEP 503 / find-links index "
        "per torch version under --out and a summary table (SUMMARY.md). Exit 1 if any failed.",
    )
    m.add_argument("--torch", action="append", required=True, metavar="VERSION")
    add_wheel_args(m)
    m.set_defaults(func=cmd_matrix)

    v = sub.add_parser(
        "verify",
        help="check every undefined symbol of a wheel's extensions against one torch",
        description="Reads every ELF extension in the wheel and checks that each undefined "
        "symbol and DT_NEEDED library resolves against the given torch's libraries (plus what "
        "they pull in). Unresolved symbols are printed demangled. Exit 0 pass, 1 fail, 2 bad "
        "input.",
    )
    v.add_argument("wheel", type=Path)
    v.add_argument("--torch", metavar="VERSION", help="verify against this torch (env is made)")
    v.add_argument(
        "--against",
        type=Path,
        metavar="PATH",
        help="a torch wheel file (read, not installed), a torch dir or a python",
    )
    v.add_argument("--runtime", action="append", default=[], metavar="WHEEL|DIR|DIST",
                   help="runtime to check SYCL/oneAPI sonames and symbols against: a runtime "
                   "wheel such as intel-sycl-rt (read, not installed), a directory of its "
                   "libraries, or an installed distribution name; repeatable, searched in order "
                   "(without it those families are listed as unchecked)")
    v.add_argument("--cache-dir", type=Path, default=Path(".buildctl-cache"), metavar="DIR")
    v.set_defaults(func=cmd_verify)

    pl = sub.add_parser(
        "plan",
        help="will it fit? simulate the governed build on another host shape",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Replays the measured jobs (from profiles, a --report file, or a profile "
        "export) through buildctl's own admission policy on a host with the given cores, RAM "
        "and swap, and prints the predicted makespan, peak RSS, the jobs that must run alone, "
        "the swap they need, and whether the build fits. Exit 0 if it fits (possibly with swap "
        "or jobs running alone), 1 if it does not, 2 for bad input.",
        epilog="examples:\n  buildctl plan --cores 8 --mem 32G\n"
        "  buildctl plan --cores 24 --mem 64G --profiles-json "
        "profiles/vllm-xpu-kernels/v0.1.9.json\n"
        "  buildctl plan --report build.json --cores 2 --mem 24G",
    )
    pl.add_argument("--cores", type=int, metavar="N", help="CPU cores (default: this host)")
    pl.add_argument("--mem", type=_size, metavar="SIZE", help="RAM (default: this host)")
    pl.add_argument("--swap", type=_size, metavar="SIZE", help="swap (default: this host)")
    pl.add_argument("--mem-budget", type=_size, metavar="SIZE",
                    help="budget (default: buildctl's default for that RAM)")
    pl.add_argument("-j", "--jobs", type=int, metavar="N", help="CPU slots (default: cores)")
    pl.add_argument("--whole-slots", action="store_true",
                    help="as `buildctl build --whole-slots`: every job takes a whole CPU slot")
    pl.add_argument("--report", dest="report_in", type=Path, metavar="FILE",
                    help="take the jobs from a build report instead of the profile database")
    pl.add_argument("--profiles", type=Path, metavar="DB", help="profile database path")
    pl.add_argument("--profiles-json", type=Path, metavar="FILE",
                    help="take the jobs from a profile export (e.g. shipped in profiles/)")
    pl.add_argument("--filter", metavar="TEXT", help="only jobs whose output contains TEXT")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.set_defaults(func=cmd_plan)

    r = sub.add_parser(
        "repro",
        help="list or show compiler-crash repros and hang bundles of a build",
        description="Crash repros hold rerun.sh (exact argv, env, cwd), the compiler version, the "
        "preprocessed input and a README for the bug report; hang bundles hold /proc evidence. "
        "They live in BUILD_DIR/.buildctl/repro.",
    )
    r.add_argument("--build-dir", type=Path, default=Path.cwd(), metavar="DIR")
    rs = r.add_subparsers(dest="repro_cmd", metavar="ACTION", required=True)
    rs.add_parser("list", help="saved repros and bundles, oldest first")
    rshow = rs.add_parser("show", help="what happened and how to re-run it")
    rshow.add_argument("ref", help="a path, a directory name, or a number from list (-1 = newest)")
    r.set_defaults(func=cmd_repro)

    d = sub.add_parser(
        "doctor",
        help="check this host, its tools, torch and oneAPI before a long build",
        description="Checks host memory, swap, disk and cgroup limit against what the build needs "
        "(from profiles), cmake/ninja, compilers, torch (version, XPU, C++ ABI), the Level Zero "
        "loader, mixed oneAPI versions and the compiler cache. Each check: pass/warn/fail and "
        "the fix. Exit 0 when nothing failed, 1 otherwise, 2 for a bad --torch.",
    )
    d.add_argument("--torch", metavar="VERSION", help="target torch, e.g. 2.11.0+xpu")
    d.add_argument("--python", metavar="EXE", help="the Python whose torch is checked")
    d.add_argument("--profiles", type=Path, metavar="DB", help="profile database path")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_doctor)

    e = sub.add_parser(
        "env",
        help="print the environment of one pinned oneAPI compiler, for eval",
        description="Sources exactly one oneAPI compiler's vars script in a clean subshell "
        '(never setvars.sh) and prints export lines. Use: eval "$(buildctl env --compiler '
        '2025.3)"',
    )
    e.add_argument("--compiler", required=True, metavar="VERSION", help="e.g. 2025.3")
    e.add_argument(
        "--oneapi-root",
        action="append",
        metavar="DIR",
        help="extra oneAPI install root (default /opt/intel/oneapi, $ONEAPI_ROOT)",
    )
    e.set_defaults(func=cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Logs and CI: no wrapping at 80 columns, so paths and symbols stay greppable.
    console = Console() if sys.stdout.isatty() else Console(width=160, soft_wrap=True)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args, console) or 0)
    except BuildctlError as exc:
        Console(stderr=True).print(exc.render(), highlight=False, markup=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        Console(stderr=True).print("buildctl: interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
