"""The command line edge: settings from flags, environment and config files as `buildctl`
shows them, bad flags as two-line errors with exit 2, options after the action word,
`python -m buildctl`, -q, and the XPU wheel path reaching the wheel pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FIXTURES, isolated_env

GiB = 1024**3


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = isolated_env(tmp)
    env["XDG_CONFIG_HOME"] = str(tmp / "xdg")  # never the developer's own config
    for name in ("MAX_JOBS", "CMAKE_BUILD_PARALLEL_LEVEL"):
        env.pop(name, None)
    for name in [k for k in env if k.startswith("BUILDCTL_") and k != "BUILDCTL_PROFILE_DB"]:
        env.pop(name)
    env.update(extra)
    return env


def buildctl(tmp: Path, *args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buildctl", *args], capture_output=True,
                          text=True, env=env or env_for(tmp), timeout=timeout, check=False)


def assert_bad_input(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and "fix: " in lines[1], lines
    assert needle in lines[0], lines
    assert "Traceback" not in result.stderr


def source_with(tmp: Path, pyproject: str) -> Path:
    src = tmp / "src"
    shutil.copytree(FIXTURES / "cxxproj", src)
    (src / "pyproject.toml").write_text(pyproject)
    return src


def test_show_settings_names_each_source(tmp_path: Path) -> None:
    src = source_with(tmp_path, "[tool.buildctl]\nhang-after = '2m'\nretries = 3\n")
    (tmp_path / "xdg" / "buildctl").mkdir(parents=True)
    (tmp_path / "xdg" / "buildctl" / "config.toml").write_text("retries = 5\nprior-rss = '1G'\n")
    env = env_for(tmp_path, BUILDCTL_JOBS="3", MAX_JOBS="7", BUILDCTL_LOW_WATER="900M")
    result = buildctl(tmp_path, "build", "--source", str(src), "--mem-budget", "2G",
                      "--show-settings", env=env)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert rows["mem-budget"].split()[1:] == ["2.0", "GiB", "--mem-budget"]
    assert rows["jobs"].split()[1:] == ["3", "BUILDCTL_JOBS"]
    assert rows["low-water"].split()[1:] == ["900.0", "MiB", "BUILDCTL_LOW_WATER"]
    assert rows["hang-after"].split()[1] == "120s" and "[tool.buildctl]" in rows["hang-after"]
    assert rows["retries"].split()[1] == "3"  # the project file beats the user's
    assert rows["prior-rss"].endswith("config.toml") and "1.0 GiB" in rows["prior-rss"]
    assert not (src / "build-buildctl").exists(), "--show-settings builds nothing"


def test_max_jobs_is_the_slot_count_when_nothing_else_says(tmp_path: Path) -> None:
    result = buildctl(tmp_path, "build", "--source", str(FIXTURES / "cxxproj"),
                      "--show-settings", env=env_for(tmp_path, CMAKE_BUILD_PARALLEL_LEVEL="5"))
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert rows["jobs"] == ["5", "CMAKE_BUILD_PARALLEL_LEVEL"]


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--jobs", "0"], {}, "--jobs 0 is not a number of CPU slots"),
        (["--mem-budget", "0"], {}, "--mem-budget 0 B is not a memory budget"),
        (["--mem-budget", "64T"], {}, "is more than this host's RAM + swap"),
        (["--low-water", "64T"], {}, "is not below the RAM"),
        (["--critical", "64T"], {}, "is not below the low-water mark"),
        (["--hang-after", "0"], {}, "is shorter than 1 s"),
        ([], {"BUILDCTL_JOBS": "0"}, "BUILDCTL_JOBS=0 is not a number of CPU slots"),
        ([], {"BUILDCTL_MEM_BUDGET": "lots"}, "BUILDCTL_MEM_BUDGET"),
        (["--executor", "ray"], {}, "--executor ray needs --ray-address"),
        (["--jobs", "99999999999999999999"], {}, "is more CPU slots than ninja can start"),
        (["--ninja-width", "99999999999999999"], {}, "is more jobs than ninja can start"),
        (["--hang-after", "nan"], {}, "cannot read duration 'nan'"),
        ([], {"BUILDCTL_HANG_AFTER": "nan"}, "BUILDCTL_HANG_AFTER"),
        # What argparse itself refuses: two lines too, not its whole usage block.
        (["--mem-budget", "banana"], {}, "argument --mem-budget: cannot read size 'banana'"),
        (["--jobs", "two"], {}, "argument -j/--jobs: invalid int value: 'two'"),
        (["--frobnicate"], {}, "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_governor_flags_exit_2_in_two_lines(tmp_path: Path, args: list[str],
                                                env: dict[str, str], needle: str) -> None:
    result = buildctl(tmp_path, "build", "--source", str(FIXTURES / "cxxproj"), "--build-dir",
                      str(tmp_path / "b"), *args, env=env_for(tmp_path, **env))
    assert_bad_input(result, needle)
    assert not (tmp_path / "b").exists(), "nothing built or created"


def test_force_accepts_a_budget_above_the_host(tmp_path: Path) -> None:
    result = buildctl(tmp_path, "build", "--source", str(FIXTURES / "cxxproj"), "--mem-budget",
                      "64T", "--force", "--show-settings")
    assert result.returncode == 0 and "64.0 TiB" in result.stdout


def test_plan_mem_0_is_rejected(tmp_path: Path) -> None:
    assert_bad_input(buildctl(tmp_path, "plan", "--mem", "0"), "--mem 0 B is not a memory size")


def test_options_after_the_action_word_and_quiet(tmp_path: Path) -> None:
    after = buildctl(tmp_path, "repro", "list", "--build-dir", str(tmp_path))
    before = buildctl(tmp_path, "repro", "--build-dir", str(tmp_path), "list")
    assert after.returncode == before.returncode == 0, after.stderr
    assert after.stdout == before.stdout and str(tmp_path) in after.stdout
    quiet = buildctl(tmp_path, "repro", "list", "--build-dir", str(tmp_path), "-q")
    assert quiet.returncode == 0 and quiet.stdout == ""
    db = tmp_path / "other.sqlite"
    shown = buildctl(tmp_path, "profile", "show", "--profiles", str(db))
    assert shown.returncode == 0 and str(db) in shown.stdout


def test_python_dash_m_buildctl(tmp_path: Path) -> None:
    result = buildctl(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.startswith("buildctl ")


def test_help_documents_the_settings_layers(tmp_path: Path) -> None:
    for command in ("build", "wheel"):
        text = buildctl(tmp_path, command, "--help").stdout
        for needle in ("BUILDCTL_MEM_BUDGET", "BUILDCTL_JOBS", "MAX_JOBS", "[tool.buildctl]",
                       "config.toml", "G = GiB"):
            assert needle in text, (command, needle)


def test_build_dir_naming_a_file_is_bad_input(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = buildctl(tmp_path, "build", "--source", str(FIXTURES / "cxxproj"), "--build-dir",
                      str(afile))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert str(afile) in result.stderr and len(result.stderr.strip().splitlines()) == 2


def test_report_naming_a_directory_is_bad_input(tmp_path: Path) -> None:
    result = buildctl(tmp_path, "build", "--source", str(FIXTURES / "cxxproj"), "--build-dir",
                      str(tmp_path / "b"), "--report", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 2


# --- the XPU wheel path through the CLI ------------------------------------------------------

ICPX_TO_GXX = """#!/bin/sh
if [ "$1" = "--version" ]; then
  echo "Intel(R) oneAPI DPC++/C++ Compiler 2025.3.1 (2025.3.1.20251023)"
  exit 0
fi
exec g++ "$@"
"""


def _fake_staged_deps(cache: Path, ref: str) -> None:
    """The deps as if staged earlier (no network here): the stand-ins at the matrix's revisions."""
    from buildctl.toolchain import xpu_adapter

    row = xpu_adapter.load_matrix().ref(ref)
    for key, dep in (("sycl-tla", row.sycl_tla), ("oneDNN", row.onednn)):
        checkout = cache / "deps" / "src" / f"{key}-{dep.revision[:12]}"
        shutil.copytree(FIXTURES / "xpu_kernels_fixture" / "standins" / key, checkout)
        checkout.with_name(checkout.name + ".stamp").write_text(dep.revision)


def test_xpu_wheel_through_the_cli_reaches_the_torch_env(tmp_path: Path) -> None:
    """An upstream-like checkout without a scikit-build-core pyproject: the adapter's name,
    version and scikit-build table must reach the wheel pipeline (without them the build stops
    with "no manifest"). Here it goes on to install the XPU torch, which this
    machine cannot (no network): that is as far as it can go."""
    sys.path.insert(0, str(FIXTURES))
    from oneapi_trees import make_field_trap_tree

    root = make_field_trap_tree(tmp_path)
    good = root / "compiler" / "2025.3" / "bin"
    (good / "icpx").write_text(ICPX_TO_GXX)
    (good / "icx").write_text('#!/bin/sh\nexec gcc "$@"\n')
    (good / "icx").chmod(0o755)
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "xpu_kernels_fixture", src, ignore=shutil.ignore_patterns(
        "standins", "pyproject.toml"))
    git = {"cwd": src, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **git)
    subprocess.run(["git", "add", "-A"], **git)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   **git)
    subprocess.run(["git", "tag", "v0.1.11.1"], **git)
    cache = tmp_path / "cache"
    _fake_staged_deps(cache, "v0.1.11.1")
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    env = env_for(tmp_path, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(empty))
    result = buildctl(tmp_path, "wheel", "--project", "vllm-xpu-kernels", "--torch",
                      "2.12.0+xpu", "--source", str(src), "--cache-dir", str(cache),
                      "--oneapi-root", str(root), "--aot", "B70", "--out",
                      str(tmp_path / "wh"), "--find-links", str(empty), "--mem-budget", "8G",
                      "--plain", env=env, timeout=300)
    out = result.stdout + result.stderr
    assert "Traceback" not in out
    assert "no manifest" not in out and "has no pyproject.toml" not in out, out[-2000:]
    assert result.returncode in (1, 2) and "torch" in result.stderr, out[-2000:]
    assert not (tmp_path / "wh").exists() or not list((tmp_path / "wh").rglob("*.whl"))
    assert os.listdir(cache / "envs"), "it went as far as the torch env"


def test_a_matrix_entry_runs_with_the_settings_the_matrix_resolved(tmp_path: Path) -> None:
    """The Ray matrix hands each entry its settings as JSON: the entry takes them as they are
    (budget included, with where each came from), not from its own host or environment."""
    import argparse

    from buildctl.host import HostInfo
    from buildctl.settings import Capacity, Layers, WheelSettings, command_settings, govern_settings

    flags = argparse.Namespace(torch=("2.13.0+cpu", "2.14.1"), mem_budget=3 * GiB, jobs=3,
                               out=tmp_path / "wh", hang_after=45.0)
    layers = Layers.collect(flags, env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    shape = HostInfo(total_ram_bytes=64 * GiB, available_bytes=60 * GiB, swap_total_bytes=0,
                     swap_free_bytes=0, cgroup_limit_bytes=None, cores=32)
    settings = command_settings(WheelSettings, layers, govern_settings(layers, Capacity(shape)))
    entry = settings.for_one_torch("2.14.1", tmp_path / "r-2.14.1.json")
    result = buildctl(tmp_path, "wheel", "--torch", "2.14.1", "--settings-json",
                      entry.model_dump_json(), "--show-settings",
                      env=env_for(tmp_path, BUILDCTL_JOBS="7", BUILDCTL_HANG_AFTER="5m"))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert rows["mem-budget"] == ["3.0", "GiB", "--mem-budget"]
    assert rows["jobs"] == ["3", "--jobs"] and rows["hang-after"] == ["45s", "--hang-after"]
    assert rows["torch"] == ["2.14.1", "--torch"] and rows["executor"][0] == "local"
    assert rows["out"][0] == str(tmp_path / "wh")
    bad = buildctl(tmp_path, "wheel", "--torch", "2.14.1", "--settings-json", "{", "-q")
    assert_bad_input(bad, "--settings-json")


def test_quiet_leaves_out_buildctls_lines_and_verbose_shows_settings(tmp_path: Path) -> None:
    quiet = buildctl(tmp_path, "build", "--source", str(FIXTURES / "cxxproj"), "--build-dir",
                     str(tmp_path / "b"), "-q", "--plain", timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    # buildctl's own lines are left out; the build's output (compiler errors) never is
    assert "budget" not in quiet.stdout and "buildctl: ok" not in quiet.stdout
    assert "Linking CXX shared library" in quiet.stdout
    assert (tmp_path / "b" / ".buildctl" / "report.json").is_file()
    verbose = buildctl(tmp_path, "build", "--source", str(FIXTURES / "cxxproj"), "--build-dir",
                       str(tmp_path / "b"), "-v", "--plain", "-j", "2", timeout=300)
    assert verbose.returncode == 0, verbose.stderr
    assert any(line.split()[:3] == ["jobs", "2", "--jobs"] for line in
               verbose.stdout.splitlines())
