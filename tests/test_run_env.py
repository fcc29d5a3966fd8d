"""`buildctl run`: what the command's environment gets (pure parts) and the compiler wrappers
(real scripts, run without and inside a job)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from buildctl.run import launcher_environment, write_compiler_wrappers

LAUNCHER = ["/venv/bin/python", "-I", "-S", "/src/buildctl/govern/launcher.py", "--socket",
            "/b/.buildctl/governor.sock", "--"]
OURS = ";".join(LAUNCHER)


def test_launcher_exported_for_cmake_env_and_cmake_args() -> None:
    env = launcher_environment(LAUNCHER, {"CMAKE_ARGS": "-DCMAKE_BUILD_TYPE=Release"})
    assert env["CMAKE_CXX_COMPILER_LAUNCHER"] == OURS
    assert env["CMAKE_C_COMPILER_LAUNCHER"] == OURS
    assert env["CMAKE_CXX_LINKER_LAUNCHER"] == OURS
    args = shlex.split(env["CMAKE_ARGS"])
    assert args[0] == "-DCMAKE_BUILD_TYPE=Release"  # the user's arguments stay first
    assert f"-DCMAKE_CXX_COMPILER_LAUNCHER={OURS}" in args
    # Some setup.py files split CMAKE_ARGS on spaces: no quotes around `;` lists.
    assert f"-DCMAKE_CXX_COMPILER_LAUNCHER={OURS}" in env["CMAKE_ARGS"].split(" ")


def test_user_launchers_in_cmake_args_and_env_are_chained_not_replaced() -> None:
    env = launcher_environment(
        LAUNCHER,
        {
            "CMAKE_ARGS": "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DX=1",
            "CMAKE_C_COMPILER_LAUNCHER": "sccache",
            "SKBUILD_CMAKE_ARGS": "-DY=2;-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache",
        },
    )
    assert env["CMAKE_CXX_COMPILER_LAUNCHER"] == OURS + ";ccache"
    assert env["CMAKE_C_COMPILER_LAUNCHER"] == OURS + ";sccache"
    assert env["CMAKE_CUDA_COMPILER_LAUNCHER"] == OURS + ";ccache"
    args = shlex.split(env["CMAKE_ARGS"])
    assert "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache" not in args  # it would replace ours
    assert f"-DCMAKE_CXX_COMPILER_LAUNCHER={OURS};ccache" in args
    assert "-DX=1" in args
    assert env["SKBUILD_CMAKE_ARGS"] == "-DY=2"


def _fake_launcher(tmp_path: Path) -> list[str]:
    """A stand-in launcher that records it was used, then runs the command."""
    script = tmp_path / "launcher.sh"
    script.write_text('#!/bin/sh\necho launcher >> "$MARK"\nshift\nexec "$@"\n')
    script.chmod(0o755)
    return [str(script), "--"]


def test_wrapper_goes_through_the_launcher_except_inside_a_job_and_for_probes(
    tmp_path: Path,
) -> None:
    launcher = _fake_launcher(tmp_path)
    wrappers = write_compiler_wrappers(tmp_path, launcher, {"CXX": "g++"})
    cxx = wrappers["CXX"]
    assert Path(cxx).name == "g++"  # torch checks the compiler's name
    mark = tmp_path / "mark"
    source = tmp_path / "a.cc"
    source.write_text("int a() { return 1; }\n")
    env = {**os.environ, "MARK": str(mark)}
    env.pop("BUILDCTL_IN_JOB", None)
    subprocess.run([cxx, "-c", str(source), "-o", str(tmp_path / "a.o")], env=env, check=True)
    assert mark.read_text().splitlines() == ["launcher"]
    assert (tmp_path / "a.o").exists()
    # Inside a job (CMake's launcher ran first) and for --version: the compiler directly.
    subprocess.run([cxx, "-c", str(source), "-o", str(tmp_path / "b.o")],
                   env={**env, "BUILDCTL_IN_JOB": "1"}, check=True)
    out = subprocess.run([cxx, "--version"], env=env, check=True, capture_output=True, text=True)
    assert "g++" in out.stdout or "GCC" in out.stdout
    subprocess.run([cxx, "-dumpfullversion", "-dumpversion"], env=env, check=True,
                   capture_output=True)
    assert mark.read_text().splitlines() == ["launcher"]
    assert (tmp_path / "b.o").exists()


def test_a_nested_run_does_not_wrap_its_own_wrapper(tmp_path: Path) -> None:
    first = write_compiler_wrappers(tmp_path, LAUNCHER, {})
    before = Path(first["CXX"]).read_text()
    again = write_compiler_wrappers(tmp_path, LAUNCHER, first)  # CXX is our wrapper now
    assert Path(again["CXX"]).read_text() == before
    assert "cxx-wrap" not in before


def test_a_compiler_cache_runs_after_the_launcher(tmp_path: Path) -> None:
    launcher = _fake_launcher(tmp_path)
    cache = tmp_path / "fakecache"
    cache.write_text('#!/bin/sh\necho cache >> "$MARK"\nexec "$@"\n')
    cache.chmod(0o755)
    cxx = write_compiler_wrappers(tmp_path, launcher, {"CXX": "g++"}, [str(cache)])["CXX"]
    mark = tmp_path / "mark"
    source = tmp_path / "a.cc"
    source.write_text("int a() { return 1; }\n")
    env = {**os.environ, "MARK": str(mark)}
    env.pop("BUILDCTL_IN_JOB", None)
    subprocess.run([cxx, "-c", str(source), "-o", str(tmp_path / "a.o")], env=env, check=True)
    assert mark.read_text().splitlines() == ["launcher", "cache"]


def test_a_cache_in_cc_is_not_doubled(tmp_path: Path) -> None:
    wrappers = write_compiler_wrappers(tmp_path, LAUNCHER, {"CC": "ccache gcc"}, ["/x/ccache"])
    last = Path(wrappers["CC"]).read_text().strip().splitlines()[-1]
    assert last.count("ccache") == 1 and last.index("launcher.py") < last.index("ccache")
    assert Path(wrappers["CC"]).name == "gcc"
