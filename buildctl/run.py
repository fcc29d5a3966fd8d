"""`buildctl run -- <any build command>`: the governor for builds that buildctl does not drive
itself (`pip wheel .`, `python -m build`, `uv build`, `cmake --build`, setup.py-driven torch
extensions).

The command runs under a governed session with the launcher exported three ways, so that
every compile and link in its process tree asks for admission:

- `CMAKE_<LANG>_COMPILER_LAUNCHER` / `CMAKE_<LANG>_LINKER_LAUNCHER` environment variables, which
  CMake >= 3.17 (linker: >= 3.21) takes when it configures a build dir for the first time;
- `-D` defines of the same in `CMAKE_ARGS`, which scikit-build-core and setuptools CMake
  extensions pass to CMake on every configure (so a build dir configured earlier gets them);
- `CC`/`CXX` set to small wrapper scripts that run the real compiler through the launcher, for
  builds that call the compiler themselves (torch.utils.cpp_extension's ninja files, setuptools).

A compile reached through both (CMake with `CXX` set to a wrapper) is admitted once: the
launcher marks every job's environment and a wrapper inside a job runs the compiler directly.
A user launcher such as ccache stays, after buildctl's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rich.console import Console

from buildctl.errors import BadInput
from buildctl.govern.cache import (
    ARGS_VARS,
    chain_launchers,
    compiler_argv,
    strip_launcher_defines,
    user_launchers,
    wrapper_name,
)

COMPILER_LANGS = ("C", "CXX", "CUDA")
LINKER_LANGS = ("C", "CXX")
# Compiler probes that are not jobs: answered by the real compiler without admission (the
# governor itself asks `--version` to know a compiler).
PROBE_FLAGS = ("--version", "-v", "-dumpversion", "-dumpfullversion", "-dumpmachine")

EPILOG_RUN = """\
examples:
  buildctl run -- pip wheel . --no-build-isolation -w dist
  buildctl run --mem-budget 16G -- python -m build --wheel
  buildctl run -j 8 -- uv build
  buildctl run -- python setup.py build_ext --inplace      (torch.utils.cpp_extension)
  buildctl run -- cmake --build build
  CMAKE_CXX_COMPILER_LAUNCHER=ccache buildctl run -- pip wheel .   (buildctl, then ccache)

what it sets for the command:
  CMAKE_<LANG>_COMPILER_LAUNCHER, CMAKE_<LANG>_LINKER_LAUNCHER   buildctl's launcher (CMake)
  CMAKE_ARGS                   the same as -D defines (scikit-build-core, setuptools+CMake)
  CC, CXX                      wrappers that run the compiler through the launcher
                               (torch.utils.cpp_extension and other setuptools builds)
  TORCH_NO_COMPILER_WRAPPER=1  when torch would put ccache/sccache before the compiler: the
                               wrappers run it after the launcher instead
  MAX_JOBS, CMAKE_BUILD_PARALLEL_LEVEL   how many jobs ninja may start (default max(4 x slots,
                               16)); buildctl admits them, so at most --jobs run at once

The report of the last run is BUILD_DIR/.buildctl/report.json (--report copies it).
exit codes: the command's own; 2 bad input (for buildctl), 130 interrupted.
"""


def default_state_dir(cwd: Path) -> Path:
    """Where a run keeps its governor socket, lock, report and wrappers: per working directory,
    outside it (a user's source tree is read-only to us), stable between runs (a CMake build dir
    configured through the wrappers keeps finding them)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(cwd.resolve()).encode()).hexdigest()[:10]
    return cache / "buildctl" / "run" / f"{cwd.resolve().name or 'root'}-{digest}"


def _cmake_args_tokens(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _join_args(tokens: Sequence[str]) -> str:
    """Space-separated, quoting only tokens with whitespace: some setup.py files split CMAKE_ARGS
    on spaces rather than with shlex, and `;` in a launcher list needs no quotes for shlex."""
    return " ".join(shlex.quote(t) if any(c.isspace() for c in t) else t for t in tokens)


def launcher_environment(launcher: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """The CMake variables a run sets (pure): buildctl's launcher, then any user launcher."""
    ours_list = ";".join(launcher)
    ours = {f"CMAKE_{lang}_COMPILER_LAUNCHER": ours_list for lang in COMPILER_LANGS}
    ours.update({f"CMAKE_{lang}_LINKER_LAUNCHER": ours_list for lang in LINKER_LANGS})
    chained = chain_launchers(ours, user_launchers([], env, ARGS_VARS))
    out = dict(chained)
    cmake_args = strip_launcher_defines(_cmake_args_tokens(env.get("CMAKE_ARGS", "")))
    cmake_args += [f"-D{name}={value}" for name, value in chained.items()
                   if name.startswith(("CMAKE_C_", "CMAKE_CXX_"))]
    out["CMAKE_ARGS"] = _join_args(cmake_args)
    skbuild = env.get("SKBUILD_CMAKE_ARGS")
    if skbuild:
        items = [item for item in skbuild.split(";") if item]
        kept = strip_launcher_defines(items)
        if kept != items:  # its launcher define is in CMAKE_ARGS now, chained after ours
            out["SKBUILD_CMAKE_ARGS"] = ";".join(kept)
    return out


def wrapper_script(
    real: Sequence[str], launcher: Sequence[str], cache: Sequence[str] = ()
) -> str:
    """A POSIX sh script that runs `real "$@"` through the launcher (pure); `cache` (ccache)
    goes between them: buildctl → ccache → compiler."""
    real_q = " ".join(shlex.quote(part) for part in real)
    chain_q = " ".join(shlex.quote(part) for part in (*launcher, *cache))
    probes = "|".join(PROBE_FLAGS)
    return (
        "#!/bin/sh\n"
        "# Written by `buildctl run`: this compiler's jobs ask buildctl for admission.\n"
        "# Inside a job (reached through a CMake launcher too) it runs the compiler directly.\n"
        f'[ "$BUILDCTL_IN_JOB" = 1 ] && exec {real_q} "$@"\n'
        "# Version probes (torch asks -dumpfullversion -dumpversion) are not jobs.\n"
        "probe=$#\n"
        f'for arg in "$@"; do case "$arg" in {probes}) ;; *) probe=0;; esac; done\n'
        f'[ "$probe" != 0 ] && exec {real_q} "$@"\n'
        f'exec {chain_q} {real_q} "$@"\n'
    )


def torch_compiler_cache(env: Mapping[str, str]) -> list[str]:
    """The cache torch.utils.cpp_extension would put before the compiler (ccache, then sccache
    on PATH, unless TORCH_NO_COMPILER_WRAPPER is set). A run turns torch's off and puts it
    after the launcher instead: otherwise ccache would run first and call the wrapper once to
    preprocess and once to compile, two jobs under made-up names."""
    if env.get("TORCH_NO_COMPILER_WRAPPER"):
        return []
    for name in ("ccache", "sccache"):
        found = shutil.which(name, path=env.get("PATH"))
        if found:
            return [found]
    return []


def _real_compiler(env: Mapping[str, str], var: str, default: str) -> list[str]:
    words = _cmake_args_tokens(env.get(var, "")) or [default]
    if any(f"/.buildctl/{folder}/" in words[0] for folder in ("cc-wrap", "cxx-wrap")):
        words = [default]  # a nested run: never wrap our own wrapper
    found = shutil.which(words[0])
    if found is None:
        return words
    return [found, *words[1:]]


def write_compiler_wrappers(
    state_dir: Path, launcher: Sequence[str], env: Mapping[str, str],
    cache: Sequence[str] = (),
) -> dict[str, str]:
    """`CC`/`CXX` wrappers named like the real compilers (torch checks the compiler's name)."""
    out = {}
    for var, default, folder in (("CC", "cc", "cc-wrap"), ("CXX", "c++", "cxx-wrap")):
        real = _real_compiler(env, var, default)
        named = compiler_argv(real) or real  # `ccache gcc` is named gcc
        path = state_dir / ".buildctl" / folder / os.path.basename(named[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        # CC="ccache gcc": the user's cache is already in front of the compiler.
        text = wrapper_script(real, launcher, () if wrapper_name(real[0]) else cache)
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o755)
            os.replace(tmp, path)
        out[var] = str(path)
    return out


def run_env(
    state_dir: Path, launcher: Sequence[str], env: Mapping[str, str], width: int
) -> dict[str, str]:
    """Everything the command's environment gets on top of `env`."""
    extra = launcher_environment(launcher, env)
    cache = torch_compiler_cache(env)
    if cache:
        extra["TORCH_NO_COMPILER_WRAPPER"] = "1"
    extra.update(write_compiler_wrappers(state_dir, launcher, env, cache))
    extra["MAX_JOBS"] = str(width)
    extra["CMAKE_BUILD_PARALLEL_LEVEL"] = str(width)
    return extra


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from buildctl import host
    from buildctl.build import ninja_width
    from buildctl.govern.session import GovernedSession
    from buildctl.settings import Layers, govern_settings, join_cluster, show
    from buildctl.ui.summary import print_summary

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    cwd = Path.cwd()
    state_dir = (args.build_dir or default_state_dir(cwd)).resolve()
    # The working directory is the project: its pyproject.toml [tool.buildctl] is a settings
    # layer, and its name keys the profiles (as --source's name does for `buildctl build`).
    layers = Layers.collect(args, project_dir=cwd)
    if not command and not args.show_settings:
        raise BadInput(
            "buildctl run needs a command to run",
            "pass it after --, e.g. buildctl run -- pip wheel . --no-build-isolation",
        )
    if command and shutil.which(command[0]) is None:
        raise BadInput(
            f"cannot run {command[0]!r}: not found on PATH",
            "check the command after --, or give its full path",
        )
    executor, capacity = join_cluster(layers.ray_address(), state_dir, [cwd], host.probe())
    try:
        govern = govern_settings(layers, capacity)
        if args.show_settings or args.verbose:
            console.print(show(govern), highlight=False, markup=False)
        if args.show_settings:
            return 0
        opts = govern.session_options(state_dir, f"buildctl run {Path(command[0]).name}",
                                      str(cwd), executor=executor, project=project_name(cwd))
        with GovernedSession(opts) as session:
            env = dict(os.environ)
            env.update(run_env(state_dir, session.launcher(), env, ninja_width(opts.slots)))
            rc = session.run(command, cwd=cwd, env=env)
    finally:
        if executor is not None:
            executor.close()
    return print_summary(console, session, rc, args.report, json_line_too=args.json)


def project_name(directory: Path) -> str:
    """The project a run's profiles belong to: its working directory's name, the same rule as
    `buildctl build --source DIR` (two projects never share a prediction by accident)."""
    return directory.resolve().name or "root"


def add_run_parser(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_governor_args: Callable[[argparse.ArgumentParser], None],
) -> argparse.ArgumentParser:
    r = sub.add_parser(
        "run",
        help="run any build command (pip wheel, python -m build, cmake --build) governed",
        description="Run a build command with every compile and link in its process tree "
        "admitted against the memory budget: CMake projects (scikit-build-core, setuptools "
        "CMake extensions, cmake --build) through the compiler launcher, torch.utils."
        "cpp_extension and other setuptools builds through CC/CXX wrappers.",
        epilog=EPILOG_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "--build-dir",
        type=Path,
        metavar="DIR",
        help="where the run keeps its socket, lock, wrappers and report "
        "(default ~/.cache/buildctl/run/<cwd name>-<hash>)",
    )
    r.add_argument("--json", action="store_true",
                   help="end with one JSON line: status, exit code, jobs, peak, report path")
    add_governor_args(r)
    r.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="after --: the build command and its arguments",
    )
    r.set_defaults(func=cmd_run)
    return r
