"""Command line: the parser and the dispatch to each command's handler (which lives next to what
it drives).

About 600 lines, nearly all of them option declarations and help text: the whole command line
reads in one place, and nothing here does work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from rich.console import Console

from buildctl import __version__, host
from buildctl.build import EPILOG_BUILD, cmd_build
from buildctl.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, BadInput, BuildctlError
from buildctl.govern.plan import cmd_plan
from buildctl.govern.profile_cmd import add_profile_parser
from buildctl.govern.repro import cmd_repro
from buildctl.run import add_run_parser
from buildctl.settings import env_help, parse_duration
from buildctl.toolchain.commands import cmd_doctor, cmd_env
from buildctl.ui.completion import add_completion_parser
from buildctl.wheel.audit import add_audit_parser
from buildctl.wheel.commands import cmd_matrix, cmd_verify, cmd_wheel


def _size(text: str) -> int:
    try:
        return host.parse_size(text)
    except BadInput as exc:
        raise argparse.ArgumentTypeError(f"{exc.what} ({exc.fix})") from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except BadInput as exc:
        raise argparse.ArgumentTypeError(f"{exc.what} ({exc.fix})") from None


def add_governor_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("memory and scheduling")
    g.add_argument(
        "--mem-budget",
        type=_size,
        metavar="SIZE",
        help="memory the build may use, e.g. 28G, 512M, 1.5GiB (G = GiB, GB = 10^9 bytes; "
        "default: min(RAM, cgroup limit) minus a reserve, or the Ray cluster's memory); more "
        "than RAM + swap or the cgroup limit needs --force",
    )
    g.add_argument(
        "--low-ram",
        action="store_true",
        default=None,
        help="trade speed for memory: tighter budget and memory-saving build settings",
    )
    g.add_argument(
        "-j",
        "--jobs",
        type=int,
        metavar="N",
        help="CPU slots: jobs running at once at most, 1 or more (default: $MAX_JOBS, "
        "$CMAKE_BUILD_PARALLEL_LEVEL, else the cores); jobs measured mostly waiting count as a "
        "fraction of a slot (see --whole-slots)",
    )
    g.add_argument(
        "--prior-rss",
        type=_size,
        metavar="SIZE",
        help="predicted peak for jobs never measured before, e.g. 800M (default 1 GiB compile, "
        "1.5 GiB link)",
    )
    g.add_argument(
        "--share-priors",
        action="store_true",
        default=None,
        help="kept for older scripts: never-measured jobs are predicted at most budget/slots "
        "by default (unless --prior-rss is given)",
    )
    g.add_argument(
        "--whole-slots",
        action="store_true",
        default=None,
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
        help="pause admission when host available memory falls below this (below RAM; "
        "default 5%% of RAM, 256M to 1G)",
    )
    g.add_argument(
        "--critical",
        type=_size,
        metavar="SIZE",
        help="below this host available memory, kill and re-queue the job that loses least "
        "work per byte freed, where freeing the build's memory can lift the host back, e.g. "
        "512M (below --low-water; default half of it)",
    )
    g.add_argument(
        "--hang-after",
        type=_duration,
        metavar="DURATION",
        help="a job with no CPU, I/O or process change for this long is stalled: seconds, or "
        "90s/10m/1h, at least 1s (default 10m; a busy silent compile is never stalled)",
    )
    g.add_argument(
        "--sample-interval",
        type=_duration,
        metavar="DURATION",
        help="how often every running job's memory is read, 0.02s to 5s (default 0.25s); "
        "a job climbing faster than ~0.5 GB/s can pass the budget between two reads; 0.1s "
        "sees such climbs sooner, for ~2%% of a core on 16 jobs",
    )
    g.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="re-runs of a job killed as stalled or crashed (default 1)",
    )
    g.add_argument(
        "--force",
        action="store_true",
        default=None,
        help="accept a --mem-budget above RAM + swap or the cgroup limit, a --low-water not "
        "below RAM and a --critical not below --low-water (for tests of the guards)",
    )
    x = parser.add_argument_group("where jobs run")
    x.add_argument("--executor", choices=("local", "ray"),
                   help="local (default) or ray: every admitted job becomes a Ray task asking "
                   "for its predicted memory; needs `pip install 'buildctl[ray]'` and a shared "
                   "filesystem (same paths on every node)")
    x.add_argument("--ray-address", metavar="HOST:PORT",
                   help="the Ray cluster to use with --executor ray, e.g. 127.0.0.1:6379 "
                   "(default: none)")
    o = parser.add_argument_group("output")
    o.add_argument("--report", type=Path, metavar="FILE",
                   help="also copy the JSON build report here (default: only "
                   "BUILD_DIR/.buildctl/report.json, always written)")
    o.add_argument(
        "--plain",
        action="store_true",
        default=None,
        help="plain line log instead of the live view (automatic when not a terminal)",
    )
    o.add_argument(
        "--show-settings",
        action="store_true",
        help="print every setting and where it came from (flag, environment, config file, "
        "default), then exit",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in two lines like every other error (exit 2): what was
    wrong, then where the options are explained (not the whole usage block). Subcommand parsers
    are of this class too (argparse makes them of their parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message}\n  fix: see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="buildctl",
        description="Memory-governed builds of native GPU-kernel PyTorch extensions: every "
        "compile and link is admitted against a memory budget, measured, and reported.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with `buildctl build` (the bundled kernel project) or "
        "`buildctl build --source DIR`. `buildctl COMMAND --help` explains each command.\n\n"
        + env_help(),
    )
    parser.add_argument("--version", action="version", version=f"buildctl {__version__}")
    _verbosity_args(parser, 0)
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    b = sub.add_parser(
        "build",
        help="configure and build a CMake project under a memory budget",
        description="Configure a CMake project with Ninja and buildctl's launchers, "
        "then build it with every job admitted against the memory budget.",
        epilog=EPILOG_BUILD + "\n" + env_help(),
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
        metavar="NAME",
        help="kernel config preset of the bundled project: tiny, default (default), full, "
        "or a .conf file",
    )
    b.add_argument(
        "--no-split",
        action="store_true",
        default=None,
        help="build heavy generated sources whole (bundled project); for comparisons",
    )
    b.add_argument("--target", action="append", metavar="NAME",
                   help="build only this ninja target, repeatable (default: all)")
    bx = b.add_argument_group(
        "a known kernel project (vllm-xpu-kernels: --source is its checkout, read-only)"
    )
    bx.add_argument(
        "--project",
        metavar="NAME",
        help="vllm-xpu-kernels: build a checkout the way its setup.py configures it, with the "
        "patches, dependencies and oneAPI compiler its tag needs (default: plain CMake project)",
    )
    bx.add_argument(
        "--torch",
        metavar="VERSION",
        help="torch the build is for, e.g. 2.12.0+xpu (default: the one the checkout's tag needs)",
    )
    bx.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".buildctl-cache"),
        metavar="DIR",
        help="build-owned source copy, staged dependencies and build dir "
        "(default ./.buildctl-cache)",
    )
    bx.add_argument("--compiler", metavar="VERSION",
                    help="oneAPI compiler to pin, e.g. 2025.3 (default: the one the tag needs)")
    bx.add_argument("--oneapi-root", action="append", metavar="DIR",
                    help="oneAPI install root, repeatable (default /opt/intel/oneapi, "
                    "$ONEAPI_ROOT)")
    bx.add_argument("--aot", metavar="DEVICES",
                    help="AOT devices or GPU name, e.g. bmg-g31 (default: the project's list)")
    b.add_argument(
        "--ninja-width",
        type=int,
        metavar="N",
        help="jobs ninja may start at once; buildctl admits them (default max(4xslots,16))",
    )
    add_governor_args(b)
    b.add_argument("--json", action="store_true",
                   help="end with one JSON line: status, exit code, jobs, peak total RSS, the "
                   "3 heaviest jobs, seconds waiting for memory, kills, retries, report path")
    b.add_argument(
        "cmake_args",
        nargs=argparse.REMAINDER,
        help="after --: extra arguments for cmake, e.g. -- -DFOO=1",
    )
    b.set_defaults(func=cmd_build)

    add_run_parser(sub, add_governor_args)

    add_profile_parser(sub)

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
            metavar="DIR",
            help="wheelhouse: one folder and index per torch target (default ./wheelhouse)",
        )
        src.add_argument(
            "--cache-dir",
            type=Path,
            metavar="DIR",
            help="torch envs and per-torch build dirs (default ./.buildctl-cache)",
        )
        src.add_argument(
            "-C",
            "--config-settings",
            dest="config_settings",
            action="append",
            metavar="KEY=VALUE",
            help="passed to the build backend as pip's -C, repeatable, e.g. "
            "-C cmake.build-type=Debug (default: none)",
        )
        src.add_argument(
            "-D",
            dest="define",
            action="append",
            metavar="NAME=VALUE",
            help="a CMake define, repeatable, e.g. -D USE_FOO=ON (default: none; each set of "
            "defines gets its own build dir)",
        )
        idx = w.add_argument_group("where torch comes from")
        idx.add_argument(
            "--torch-index",
            metavar="URL",
            help="pip index to install torch from, e.g. https://download.pytorch.org/whl/cpu "
            "(default: pip's own configuration, PIP_INDEX_URL or pip.conf)",
        )
        idx.add_argument("--extra-index-url", action="append", metavar="URL",
                         help="another pip index for torch's dependencies, repeatable "
                         "(default: none)")
        idx.add_argument("--find-links", action="append", metavar="DIR_OR_URL",
                         help="a folder or page of wheels pip may install torch from, "
                         "repeatable (default: none)")
        idx.add_argument(
            "--allow-prerelease", action="store_true", default=None,
            help="accept nightly/dev torch versions",
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
            help="AOT device list or GPU name, e.g. bmg-g31 for Arc Pro B70 (default: the "
            "project's list)",
        )
        add_governor_args(w)
        # A matrix entry on a Ray node: the settings the matrix resolved, as JSON.
        w.add_argument("--settings-json", help=argparse.SUPPRESS)

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
        "\nexit codes: 0 wheel ready, 1 build or verification failed, 2 bad input.\n\n"
        + env_help(),
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
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  buildctl matrix --torch 2.12.0+cpu --torch 2.13.0+cpu --preset tiny\n"
        "  buildctl matrix --torch 2.11.0+xpu --torch 2.12.0+xpu --project vllm-xpu-kernels "
        "--aot bmg-g31\n"
        "  pip install --index-url file://$PWD/wheelhouse/pt213cpu/simple pagedattn\n"
        "\nexit codes: 0 every wheel ready, 1 any build or verification failed, 2 bad input.",
    )
    m.add_argument("--torch", action="append", required=True, metavar="VERSION",
                   help="a torch build to make a wheel for, repeatable, e.g. 2.13.0+cpu")
    add_wheel_args(m)
    m.set_defaults(func=cmd_matrix)

    v = sub.add_parser(
        "verify",
        help="check every undefined symbol of a wheel's extensions against one torch",
        description="Reads every ELF extension in the wheel and checks that each undefined "
        "symbol and DT_NEEDED library resolves against the given torch's libraries (plus what "
        "they pull in). Unresolved symbols are printed demangled. Exit 0 pass, 1 fail, 2 bad "
        "input.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  buildctl verify wheelhouse/pt213cpu/pagedattn-0.1.0+pt213cpu-py3-none-manylinux_2_28_"
        "x86_64.whl --torch 2.13.0+cpu\n"
        "  buildctl verify dist/ext.whl --against torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl\n"
        "  buildctl verify dist/xpu_ext.whl --torch 2.11.0+xpu --runtime intel_sycl_rt-2025.3.2-"
        "py2.py3-none-manylinux_2_28_x86_64.whl",
    )
    v.add_argument("wheel", type=Path, help="the wheel file to check")
    v.add_argument("--torch", metavar="VERSION",
                   help="verify against this torch, e.g. 2.13.0+cpu; an env with it is made "
                   "under --cache-dir (default: the torch of --against, else the installed one)")
    v.add_argument(
        "--against",
        type=Path,
        metavar="PATH",
        help="a torch wheel file (read, not installed), a torch dir or a python "
        "(default: --torch's env)",
    )
    v.add_argument("--runtime", action="append", default=[], metavar="WHEEL|DIR|DIST",
                   help="runtime to check SYCL/oneAPI sonames and symbols against: a runtime "
                   "wheel such as intel-sycl-rt (read, not installed), a directory of its "
                   "libraries, or an installed distribution name; repeatable, searched in order "
                   "(default: none; those families are then listed as unchecked)")
    v.add_argument("--cache-dir", type=Path, default=Path(".buildctl-cache"), metavar="DIR",
                   help="where torch envs for --torch are kept (default ./.buildctl-cache)")
    v.set_defaults(func=cmd_verify)
    add_audit_parser(sub)

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
    pl.add_argument("--mem", type=_size, metavar="SIZE",
                    help="RAM, e.g. 32G (G = GiB; default: this host)")
    pl.add_argument("--swap", type=_size, metavar="SIZE",
                    help="swap, e.g. 8G (default: this host)")
    pl.add_argument("--mem-budget", type=_size, metavar="SIZE",
                    help="budget, e.g. 28G (default: buildctl's default for that RAM)")
    pl.add_argument("-j", "--jobs", type=int, metavar="N", help="CPU slots (default: cores)")
    pl.add_argument("--whole-slots", action="store_true",
                    help="as `buildctl build --whole-slots`: every job takes a whole CPU slot")
    pl.add_argument("--device-links", type=int, metavar="K",
                    help="SYCL device links at once, as the build's link plan allows; only a "
                    "--report marks device links (0 = no cap; default 0)")
    pl.add_argument("--report", dest="report_in", type=Path, metavar="FILE",
                    help="take the jobs from a build report, e.g. BUILD_DIR/.buildctl/report.json "
                    "(default: the profile database)")
    pl.add_argument("--profiles", type=Path, metavar="DB",
                    help="profile database (default ~/.cache/buildctl/profiles.sqlite or "
                    "$BUILDCTL_PROFILE_DB)")
    pl.add_argument("--profiles-json", type=Path, metavar="FILE",
                    help="take the jobs from a profile export, e.g. one shipped in profiles/ "
                    "(default: the profile database)")
    pl.add_argument("--filter", metavar="TEXT",
                    help="only jobs whose output contains TEXT (default: all)")
    pl.add_argument("--json", dest="as_json", action="store_true",
                    help="machine-readable output")
    pl.set_defaults(func=cmd_plan)

    r = sub.add_parser(
        "repro",
        help="list or show compiler-crash repros and hang bundles of a build",
        description="Crash repros hold rerun.sh (exact argv, env, cwd), the compiler version, the "
        "preprocessed input and a README for the bug report; hang bundles hold /proc evidence. "
        "They live in BUILD_DIR/.buildctl/repro.",
    )
    r.add_argument("--build-dir", type=Path, default=Path.cwd(), metavar="DIR",
                   help="the build directory (default: the current directory)")
    rs = r.add_subparsers(dest="repro_cmd", metavar="ACTION", required=True)
    rs_parent = _parent(("--build-dir",), type=Path, metavar="DIR",
                        help="the build directory (default: the current directory)")
    rlist = rs.add_parser("list", help="saved repros and bundles, oldest first",
                          parents=[rs_parent], formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="examples:\n  buildctl repro list --build-dir build\n"
                          "  buildctl repro list --build-dir build --json")
    rlist.add_argument("--json", action="store_true",
                       help="one JSON array: path, kind, output, created, reason, compiler")
    rshow = rs.add_parser("show", help="what happened and how to re-run it", parents=[rs_parent],
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="examples:\n  buildctl repro show -1 --build-dir build      "
                          "(the newest)\n  buildctl repro show 2 --build-dir build\n"
                          "  (cd BUILD/.buildctl/repro/NAME && ./rerun.sh)   reproduces a crash")
    rshow.add_argument("ref", help="a path, a directory name, or a number from list (-1 = newest)")
    r.set_defaults(func=cmd_repro)

    d = sub.add_parser(
        "doctor",
        help="check this host, its tools, torch and oneAPI before a long build",
        description="Checks host memory, swap, disk and cgroup limit against what the build needs "
        "(from profiles), cmake/ninja, compilers, torch (version, XPU, C++ ABI), the Level Zero "
        "loader, mixed oneAPI versions and the compiler cache. Each check: pass/warn/fail and "
        "the fix. Exit 0 when nothing failed, 1 otherwise, 2 for a bad --torch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  buildctl doctor\n  buildctl doctor --torch 2.11.0+xpu\n"
        "  buildctl doctor --python .venv/bin/python --json",
    )
    d.add_argument("--torch", metavar="VERSION",
                   help="target torch, e.g. 2.11.0+xpu (default: the one --python has)")
    d.add_argument("--python", metavar="EXE",
                   help="the Python whose torch is checked (default: the one running buildctl)")
    d.add_argument("--profiles", type=Path, metavar="DB",
                   help="profile database (default ~/.cache/buildctl/profiles.sqlite or "
                   "$BUILDCTL_PROFILE_DB)")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_doctor)

    e = sub.add_parser(
        "env",
        help="print the environment of one pinned oneAPI compiler, for eval",
        description="Sources exactly one oneAPI compiler's vars script in a clean subshell "
        '(never setvars.sh) and prints export lines. Use: eval "$(buildctl env --compiler '
        '2025.3)"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='examples:\n  eval "$(buildctl env --compiler 2025.3)"\n'
        "  buildctl env --compiler 2025.1 --oneapi-root /opt/oneapi-2025.1",
    )
    e.add_argument("--compiler", required=True, metavar="VERSION", help="e.g. 2025.3")
    e.add_argument(
        "--oneapi-root",
        action="append",
        metavar="DIR",
        help="extra oneAPI install root (default /opt/intel/oneapi, $ONEAPI_ROOT)",
    )
    e.set_defaults(func=cmd_env)
    add_completion_parser(sub, parser)
    _everywhere(parser)
    return parser


def _verbosity_args(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("-q", "--quiet", action="count", default=default,
                        help="less output: buildctl's own lines are left out (errors and the "
                        "build's output, compiler messages included, stay)")
    parser.add_argument("-v", "--verbose", action="count", default=default,
                        help="more output: the settings and where they came from")


def _parent(flags: tuple[str, ...], **kwargs: object) -> argparse.ArgumentParser:
    """An option repeated on the action words, so `repro list --build-dir X` works too; not
    given there, it keeps the value given before the action word."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)  # type: ignore[arg-type]
    return parent


def _everywhere(parser: argparse.ArgumentParser) -> None:
    """-q/-v after any command or action word too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _verbosity_args(child, argparse.SUPPRESS)
                _everywhere(child)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = args.quiet > 0 and args.verbose == 0
    # Logs and CI: no wrapping at 80 columns, so paths and symbols stay greppable.
    console = (Console(quiet=quiet) if sys.stdout.isatty()
               else Console(width=160, soft_wrap=True, quiet=quiet))
    errors = Console(stderr=True, soft_wrap=True)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args, console) or 0)
    except BuildctlError as exc:
        errors.print(exc.render(), highlight=False, markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        errors.print("buildctl: interrupted")
        return EXIT_INTERRUPTED
    except (OSError, UnicodeDecodeError) as exc:
        failure = file_error(exc, user_paths(args))
        errors.print(failure.render(), highlight=False, markup=False)
        return failure.exit_code
    except Exception as exc:  # a bug: the user gets two lines, -v the traceback
        if args.verbose:
            errors.print_exception()
        errors.print(f"error: internal error: {type(exc).__name__}: {exc}\n"
                     "  fix: rerun with -v for the traceback and report it as a buildctl bug",
                     highlight=False, markup=False)
        return 1


def user_paths(args: argparse.Namespace) -> list[Path]:
    """The paths named on the command line."""
    found: list[Path] = []
    for value in vars(args).values():
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, Path):
                found.append(item.absolute())
    return found


def file_error(exc: OSError | UnicodeDecodeError, named: list[Path]) -> BuildctlError:
    """An OSError or undecodable file as two lines: bad input when it is about a path the user
    named (or a file under it), a failed run otherwise (a full disk, a vanished file)."""
    if isinstance(exc, UnicodeDecodeError):
        files = [str(p) for p in named if p.is_file()]
        where = ", ".join(files) if files else "a file buildctl read"
        return BadInput(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                        "pass a file buildctl wrote (JSON or TOML in UTF-8)")
    filename = Path(str(exc.filename)).absolute() if exc.filename else None
    what = f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)
    if filename is not None and any(filename == p or filename.is_relative_to(p) for p in named):
        return BadInput(what, "pass a path of the right kind (a directory for --build-dir and "
                        "--source, a file for --report) that you can write to")
    return BuildctlError(what, "check free disk space and permissions, then run it again")


if __name__ == "__main__":
    sys.exit(main())
