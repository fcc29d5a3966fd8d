"""`buildctl build`: configure any CMake project with Ninja and buildctl's launchers, then run
ninja wide under the governor."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from buildctl import __version__, host, process
from buildctl.errors import BadInput, BuildFailed
from buildctl.govern.cache import chain_launchers, strip_launcher_defines, user_launchers
from buildctl.govern.profiles import ProfileEntry
from buildctl.govern.session import GovernedSession, SessionOptions
from buildctl.ui.cmake_output import cmake_warnings

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
  measured peaks of earlier builds (`buildctl profile show`), else from jobs of the same family
  this build has finished. A job never measured at all is predicted at a prior (1 GiB compile,
  1.5 GiB link) capped at budget/slots, and only 2 of its family start (more on many cores)
  until one finishes, or until running ones sit well under their share for a few seconds (a
  light family then fills the slots). --prior-rss sets the prior and turns the cap off.
  A job that outgrows its prediction is frozen (SIGSTOP) while memory is short and resumed
  when there is room; a job is killed only as the last step before the budget or host memory
  runs out, at most once, and re-run protected. So the kernel OOM killer never picks.

exit codes: 0 built, 1 build failed, 2 bad input, 130 interrupted.
"""


def find_tool(name: str) -> str:
    """PATH first (the ninja a user types later must read the same .ninja_log format), then the
    one installed beside this Python."""
    found = shutil.which(name)
    local = Path(sys.executable).parent / name
    if not found and local.exists():
        found = str(local)
    if not found:
        raise BadInput(
            f"{name} is not installed",
            f"install it (`pip install {name}` or your distribution's {name} package)",
        )
    return found


@dataclass
class BuildRequest:
    source_dir: Path
    build_dir: Path
    budget_bytes: int
    slots: int
    ninja_width: int
    cmake_args: list[str] = field(default_factory=list)
    extra_defines: dict[str, str] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)


def ninja_width(slots: int) -> int:
    """How many launchers ninja may start: enough waiting jobs for the packer to choose from."""
    return max(4 * slots, 16)


def _configure_stamp(defines: dict[str, str], cmake_args: list[str]) -> str:
    blob = json.dumps({"defines": defines, "args": cmake_args}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _split_source_of(output: str) -> str:
    """`CMakeFiles/t.dir/generated/x.cpp.o` -> `generated/x.cpp` (what the object compiles)."""
    path = output[: -len(".o")] if output.endswith(".o") else output
    parts = Path(path).parts
    for index, part in enumerate(parts):
        if part.endswith(".dir") and index > 0 and parts[index - 1] == "CMakeFiles":
            return "/".join(parts[index + 1 :])
    return path


def _matches(pattern: str, name: str, source: str) -> bool:
    if not pattern:
        return False
    if pattern == name:
        return True
    try:
        return re.search(pattern, source) is not None
    except re.error:  # CMake regex syntax Python does not take: file names only
        return False


def split_hints(entries: Iterable[ProfileEntry], patterns: Sequence[str]) -> dict[str, int]:
    """Measured whole-file peaks of the sources the split hook matches, by file name (pure).

    From the profile DB's compile jobs: the most recent peak of each matched source compiled
    whole (shards are skipped; they are not the whole file). `patterns` are the hook's
    BUILDCTL_SPLIT_SOURCES items: a file name, or a regex searched in the source path.
    """
    latest: dict[str, tuple[float, int]] = {}
    for entry in entries:
        if entry.kind != "compile" or not entry.output.endswith(".o"):
            continue
        source = _split_source_of(entry.output)
        name = source.rsplit("/", 1)[-1]
        if ".shard-" in name:
            continue
        if not any(_matches(p, name, source) for p in patterns):
            continue
        if name not in latest or entry.recorded_at > latest[name][0]:
            latest[name] = (entry.recorded_at, entry.peak_rss_bytes)
    return {name: peak for name, (_, peak) in sorted(latest.items())}


def write_split_hints(session: GovernedSession, build_dir: Path, patterns: str) -> Path:
    """The BUILDCTL_SPLIT_HINTS file for the hook, from the session's profile DB.

    Written on every configure (`{}` when the DB knows nothing yet); its path never changes,
    so new measurements do not force a re-configure: they are used the next time CMake runs.
    """
    hints = split_hints(session.profiles.latest(session.opts.project), patterns.split(";"))
    path = build_dir / ".buildctl" / "split-hints.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(hints, indent=1) + "\n")
    return path


def configure(session: GovernedSession, req: BuildRequest) -> None:
    """Run CMake when the build dir is new or what we inject changed; ninja re-runs it otherwise."""
    if not (req.source_dir / "CMakeLists.txt").is_file():
        raise BadInput(
            f"{req.source_dir} has no CMakeLists.txt",
            "pass --source pointing at a CMake project's top directory",
        )
    # A user launcher (ccache) runs after buildctl's, never instead of it.
    launchers = chain_launchers(session.cmake_defines(), user_launchers(req.cmake_args, os.environ))
    defines = {**launchers, **req.extra_defines}
    cmake_args = strip_launcher_defines(req.cmake_args)
    if defines.get("BUILDCTL_SPLIT_SOURCES") and "BUILDCTL_SPLIT_HINTS" not in defines:
        # Measured whole-file peaks replace the probe's extrapolation (buildctl/split).
        hints = write_split_hints(session, req.build_dir, defines["BUILDCTL_SPLIT_SOURCES"])
        defines["BUILDCTL_SPLIT_HINTS"] = str(hints)
    stamp_file = req.build_dir / ".buildctl" / "configure.stamp"
    stamp = _configure_stamp(defines, cmake_args)
    if (
        (req.build_dir / "build.ninja").exists()
        and stamp_file.exists()
        and stamp_file.read_text() == stamp
    ):
        return
    cache = req.build_dir / "CMakeCache.txt"
    if cache.exists() and "CMAKE_GENERATOR:INTERNAL=Ninja" not in cache.read_text(errors="replace"):
        raise BadInput(
            f"{req.build_dir} was configured with another CMake generator",
            "pass a fresh --build-dir (buildctl drives Ninja builds)",
        )
    argv = [
        find_tool("cmake"),
        "-S",
        str(req.source_dir),
        "-B",
        str(req.build_dir),
        "-G",
        "Ninja",
        f"-DCMAKE_MAKE_PROGRAM={find_tool('ninja')}",
        *[f"-D{k}={v}" for k, v in defines.items()],
        *cmake_args,
    ]
    session.console.print(f"[bold]buildctl[/bold]: configuring {req.source_dir}", highlight=False)
    # Tied to our life like ninja: a killed buildctl leaves no cmake behind.
    # stderr joined into stdout as CMake wrote them, so errors stay next to what caused them.
    proc = process.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       errors="replace")  # CMake echoes the project's bytes, UTF-8 or not
    log = req.build_dir / ".buildctl" / "logs" / "configure.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout)
    if proc.returncode != 0:
        # CMake's own words on stdout, with the build's output; the error stays two lines.
        for line in proc.stdout.strip().splitlines()[-25:]:
            session.console.print(line, highlight=False, markup=False)
        raise BuildFailed(
            f"CMake configure failed for {req.source_dir} (its last lines are above)",
            f"fix the configure error; the full log is {log}",
        )
    for line in proc.stdout.splitlines():
        if "buildctl" in line:
            session.console.print(line, highlight=False, markup=False)
    for warning in cmake_warnings(proc.stdout):
        session.console.print(warning, style="yellow", highlight=False, markup=False)
    stamp_file.write_text(stamp)


def run_build(session: GovernedSession, req: BuildRequest) -> int:
    configure(session, req)
    argv = [find_tool("ninja"), "-C", str(req.build_dir), "-j", str(req.ninja_width), *req.targets]
    return session.run(argv, cwd=req.build_dir)


def governed_build(req: BuildRequest, opts: SessionOptions) -> tuple[int, GovernedSession]:
    with GovernedSession(opts) as session:
        rc = run_build(session, req)
    return rc, session


def cmd_build(args: argparse.Namespace, console: Console) -> int:
    from buildctl.kernels import BUNDLED, KERNELS_DIR, bundled_build_settings
    from buildctl.settings import (
        BuildSettings,
        Layers,
        command_settings,
        govern_settings,
        join_cluster,
        show,
    )

    cmake_args = list(args.cmake_args or [])
    if cmake_args[:1] == ["--"]:
        cmake_args = cmake_args[1:]
    if args.source is not None and not args.source.is_dir():
        raise BadInput(
            f"--source {args.source} is not a directory",
            "pass the top directory of a CMake project",
        )
    project_name = getattr(args, "project", None)
    xpu = project_name == "vllm-xpu-kernels"
    if project_name not in (None, BUNDLED, "vllm-xpu-kernels"):
        raise BadInput(
            f"no kernel project named {project_name!r}",
            f"use {BUNDLED} or vllm-xpu-kernels, or build any CMake project with --source DIR",
        )
    layers = Layers.collect(args, project_dir=args.source, cmake_args=cmake_args or None)
    # The build dir first (the Ray cluster must see it), then the budget, once, then the
    # bundled project's split sized from that same budget.
    build_dir = layers.get(BuildSettings, "build_dir")
    if xpu and args.source is None:
        raise BadInput(
            "buildctl build --project vllm-xpu-kernels needs --source (a checkout)",
            "clone it (git clone --branch v0.1.13.1 https://github.com/vllm-project/"
            "vllm-xpu-kernels) and pass --source DIR, or use `buildctl wheel --torch ...`",
        )
    if args.source is None:
        source = KERNELS_DIR / BUNDLED
        preset = layers.get(BuildSettings, "preset")
        build_dir = build_dir or bundled_build_settings(preset, False, split=False)[2]
    elif xpu:  # the checkout is read-only: its build lives in the cache, next to its copy
        from buildctl.kernels.xpu import default_build_dir

        source = args.source.resolve()
        build_dir = build_dir or default_build_dir(args.cache_dir, source)
    else:
        source = args.source.resolve()
        build_dir = build_dir or (source / "build-buildctl")
    executor, capacity = join_cluster(layers.ray_address(), build_dir, [source], host.probe())
    try:
        settings = command_settings(BuildSettings, layers, govern_settings(layers, capacity))
        if args.show_settings or args.verbose:
            console.print(show(settings), highlight=False, markup=False)
        if args.show_settings:
            return 0
        govern = settings.govern
        extra: dict[str, str] = {}
        link_job_bytes = max_links = 0  # the device-link plan the governor enforces (XPU only)
        if xpu:
            from buildctl.kernels.xpu import xpu_build_settings

            project, extra, _ = xpu_build_settings(
                torch=args.torch, source=args.source, preset=None, low_ram=govern.low_ram,
                budget_bytes=govern.mem_budget, cache_dir=args.cache_dir.resolve(),
                oneapi_roots=args.oneapi_root or [], compiler=args.compiler, aot=args.aot,
                python=sys.executable,
            )
            source = project.source_dir
            link_job_bytes, max_links = project.device_link_job_bytes, project.max_device_links
            # cmake and ninja (and so every job) run with the pinned oneAPI compiler's env
            os.environ.update(project.build_env)
        elif settings.source is None:
            source, extra, _ = bundled_build_settings(
                settings.preset, govern.low_ram, govern.mem_budget, govern.jobs,
                split=not settings.no_split,
            )
        req = settings.build_request(source, build_dir, extra)
        opts = govern.session_options(
            req.build_dir, f"buildctl build {source.name}", str(source), executor=executor,
            project=source.name, console=console, device_link_job_bytes=link_job_bytes,
            max_device_links=max_links,
        )
        console.print(
            f"[bold]buildctl[/bold] {__version__}: budget {host.format_size(govern.mem_budget)}, "
            f"{govern.jobs} CPU slots, build dir {req.build_dir}",
            highlight=False,
        )
        rc, session = governed_build(req, opts)
    finally:
        if executor is not None:
            executor.close()
    return _summarize(console, session, rc, govern.report, bool(getattr(args, "json", False)))


def _summarize(
    console: Console, session, rc: int, report_path: Path | None, json_line: bool = False
) -> int:
    from buildctl.ui.summary import print_summary

    return print_summary(console, session, rc, report_path, json_line, failed_exit=1)
