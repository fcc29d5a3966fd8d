"""Settings: the layers (flag > env > project pyproject > user config > MAX_JOBS > host), the
origin each value remembers, the checks against the host, and what is derived from them. Pure:
no processes, host shapes given as numbers."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from buildctl.errors import BadInput
from buildctl.host import HostInfo
from buildctl.kernels import ProjectBuild
from buildctl.settings import (
    BuildSettings,
    Capacity,
    GovernSettings,
    Layers,
    WheelSettings,
    check_govern,
    command_settings,
    env_help,
    govern_settings,
)

GiB = 1024**3
HOST = HostInfo(total_ram_bytes=24 * GiB, available_bytes=20 * GiB, swap_total_bytes=2 * GiB,
                swap_free_bytes=2 * GiB, cgroup_limit_bytes=None, cores=8)
CGROUP_HOST = HostInfo(total_ram_bytes=64 * GiB, available_bytes=60 * GiB, swap_total_bytes=0,
                       swap_free_bytes=0, cgroup_limit_bytes=8 * GiB, cores=16)


def layers(tmp: Path, flags: dict | None = None, env: dict | None = None,
           project: str | None = None, user: str | None = None) -> Layers:
    """Layers as the CLI collects them, from a Namespace, an environment and files in tmp."""
    env = {"XDG_CONFIG_HOME": str(tmp / "xdg"), **(env or {})}
    if user is not None:
        (tmp / "xdg" / "buildctl").mkdir(parents=True)
        (tmp / "xdg" / "buildctl" / "config.toml").write_text(user)
    project_dir = None
    if project is not None:
        project_dir = tmp / "proj"
        project_dir.mkdir()
        (project_dir / "pyproject.toml").write_text(project)
    return Layers.collect(argparse.Namespace(**(flags or {})), project_dir=project_dir, env=env)


def govern(tmp: Path, **kw) -> GovernSettings:
    return govern_settings(layers(tmp, **kw), Capacity(host=HOST))


# --- layers and origins -------------------------------------------------------------------


def test_flag_beats_env_beats_project_beats_user(tmp_path: Path) -> None:
    s = govern(tmp_path, flags={"jobs": 3}, env={"BUILDCTL_JOBS": "4", "MAX_JOBS": "6"},
               project="[tool.buildctl]\njobs = 5\nhang-after = '2m'\nlow-ram = true\n",
               user="jobs = 7\nhang-after = '5m'\nretries = 4\nprior-rss = '700M'\n")
    assert (s.jobs, s.origins["jobs"]) == (3, "--jobs")
    assert s.hang_after == 120.0 and "proj/pyproject.toml [tool.buildctl]" in s.origins[
        "hang_after"]
    assert s.retries == 4 and s.origins["retries"].endswith("xdg/buildctl/config.toml")
    assert s.prior_rss == 700 * 1024**2  # M = MiB
    assert s.low_ram and s.where("share_priors") == "share-priors False (default)"


@pytest.mark.parametrize(
    ("env", "expected", "origin"),
    [
        ({"BUILDCTL_JOBS": "4", "MAX_JOBS": "6", "CMAKE_BUILD_PARALLEL_LEVEL": "9"}, 4,
         "BUILDCTL_JOBS"),
        ({"MAX_JOBS": "6", "CMAKE_BUILD_PARALLEL_LEVEL": "9"}, 6, "MAX_JOBS"),
        ({"CMAKE_BUILD_PARALLEL_LEVEL": "9"}, 9, "CMAKE_BUILD_PARALLEL_LEVEL"),
        ({"MAX_JOBS": ""}, 8, "host: CPU cores"),
    ],
)
def test_slot_count_sources(tmp_path: Path, env: dict, expected: int, origin: str) -> None:
    s = govern(tmp_path, env=env)
    assert (s.jobs, s.origins["jobs"]) == (expected, origin)


def test_max_jobs_only_when_no_config_file_says(tmp_path: Path) -> None:
    s = govern(tmp_path, env={"MAX_JOBS": "6"}, user="jobs = 2\n")
    assert s.jobs == 2


def test_default_budget_from_host_and_low_ram(tmp_path: Path) -> None:
    plain = govern(tmp_path)
    low = govern(tmp_path, env={"BUILDCTL_LOW_RAM": "1"})
    assert 0 < low.mem_budget < plain.mem_budget < HOST.total_ram_bytes
    assert plain.origins["mem_budget"].startswith("host:")
    assert "low-ram" in low.origins["mem_budget"]


def test_budget_and_slots_from_the_ray_cluster(tmp_path: Path) -> None:
    cluster = Capacity(host=HOST, cluster_memory=100 * GiB, cluster_cpus=48)
    s = govern_settings(layers(tmp_path), cluster)
    assert (s.mem_budget, s.jobs) == (100 * GiB, 48)
    assert s.origins["mem_budget"] == "Ray cluster"
    # Above this host's RAM, within the cluster's: no --force needed.
    s = govern_settings(layers(tmp_path, flags={"mem_budget": 64 * GiB}), cluster)
    assert s.mem_budget == 64 * GiB


def test_sizes_and_durations_in_env_and_files(tmp_path: Path) -> None:
    s = govern(tmp_path, env={"BUILDCTL_MEM_BUDGET": "2G", "BUILDCTL_HANG_AFTER": "90s"},
               user="low-water = '3GB'\n")
    assert s.mem_budget == 2 * GiB  # G = GiB
    assert s.low_water == 3 * 1000**3  # GB = 10^9
    assert s.hang_after == 90.0


def test_relative_paths_in_a_file_are_relative_to_it(tmp_path: Path) -> None:
    s = govern(tmp_path, project="[tool.buildctl]\nprofiles = 'db/p.sqlite'\n")
    assert s.profiles == tmp_path / "proj" / "db" / "p.sqlite"


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"env": {"BUILDCTL_JOBS": "many"}}, "BUILDCTL_JOBS"),
        ({"env": {"BUILDCTL_MEM_BUDGET": "12 parsecs"}}, "BUILDCTL_MEM_BUDGET"),
        ({"env": {"MAX_JOBS": "lots"}}, "MAX_JOBS: "),
        ({"user": "jobz = 3\n"}, "unknown setting 'jobz'"),
        ({"user": "jobs = [\n"}, "cannot read settings"),
        ({"project": "[tool.buildctl]\nexecutor = 'slurm'\n"}, "executor in"),
        ({"project": "[tool]\nbuildctl = 3\n"}, "is not a table"),
    ],
)
def test_bad_layer_values_name_their_source(tmp_path: Path, kw: dict, needle: str) -> None:
    with pytest.raises(BadInput) as info:
        govern(tmp_path, **kw)
    assert needle in info.value.what and info.value.fix


def test_env_help_lists_every_variable_once() -> None:
    text = env_help()
    for name in ("BUILDCTL_MEM_BUDGET", "BUILDCTL_JOBS", "BUILDCTL_LOW_RAM", "BUILDCTL_HANG_AFTER",
                 "BUILDCTL_PROFILE_DB", "MAX_JOBS", "CMAKE_BUILD_PARALLEL_LEVEL", "G = GiB"):
        assert name in text
    assert text.count("BUILDCTL_PRESET") == 1


# --- checks against the host and each other (pure) -----------------------------------------

CHECKS = [
    # (settings, host, None = accepted, else a piece of the message)
    ({}, HOST, None),
    ({"jobs": 0}, HOST, "--jobs 0 is not a number of CPU slots"),
    ({"mem_budget": 0}, HOST, "is not a memory budget"),
    ({"mem_budget": 32 * 1024**2}, HOST, "too small to run a compiler"),
    ({"mem_budget": 27 * GiB}, HOST, "more than this host's RAM + swap"),
    ({"mem_budget": 27 * GiB, "force": True}, HOST, None),
    ({"mem_budget": 25 * GiB}, HOST, None),  # within RAM + swap
    ({"mem_budget": 12 * GiB}, CGROUP_HOST, "more than the cgroup memory limit"),
    ({"mem_budget": 12 * GiB, "force": True}, CGROUP_HOST, None),
    ({"low_water": 24 * GiB}, HOST, "not below the RAM"),
    ({"low_water": 8 * GiB}, CGROUP_HOST, "not below the RAM"),  # the cgroup is the RAM
    ({"low_water": 2 * GiB}, HOST, None),
    ({"low_water": 2 * GiB, "critical": 2 * GiB}, HOST, "not below the low-water mark"),
    ({"low_water": 2 * GiB, "critical": 1 * GiB}, HOST, None),
    ({"low_water": 30 * GiB, "critical": 40 * GiB, "force": True}, HOST, None),
    ({"critical": 2 * GiB}, HOST, "not below the low-water mark"),  # default low water: 1 GiB
    ({"critical": 256 * 1024**2}, HOST, None),
    ({"hang_after": 0.0}, HOST, "shorter than 1 s"),
    ({"hang_after": 0.5}, HOST, "shorter than 1 s"),
    ({"hang_after": 1.0}, HOST, None),
    ({"hang_after": float("nan")}, HOST, "is not a duration"),  # a config file's `nan`
    ({"hang_after": float("inf")}, HOST, "is not a duration"),
    ({"sample_interval": 0.25}, HOST, None),
    ({"sample_interval": 0.02}, HOST, None),
    ({"sample_interval": 5.0}, HOST, None),
    ({"sample_interval": 0.01}, HOST, "not a sampling period from 0.02 s to 5 s"),
    ({"sample_interval": 6.0}, HOST, "not a sampling period"),
    ({"sample_interval": float("nan")}, HOST, "not a sampling period"),
    ({"sample_interval": 0.5, "hang_after": 1.0}, HOST, "shorter than 1.5 s"),
    ({"sample_interval": 0.5, "hang_after": 1.5}, HOST, None),
    ({"jobs": 65536}, HOST, None),
    ({"jobs": 10**20}, HOST, "more CPU slots than ninja can start"),
    ({"retries": -1}, HOST, "not a number of re-runs"),
    ({"prior_rss": 0}, HOST, "not a predicted peak"),
    ({"executor": "ray"}, HOST, "--executor ray needs --ray-address"),
]


@pytest.mark.parametrize(("values", "shape", "needle"), CHECKS)
def test_check_govern(values: dict, shape: HostInfo, needle: str | None) -> None:
    base = {"mem_budget": 8 * GiB, "jobs": 4}
    origins = {k: "--" + k.replace("_", "-") for k in values}
    settings = GovernSettings.model_validate({**base, **values, "origins": origins})
    if needle is None:
        check_govern(settings, Capacity(host=shape))
        return
    with pytest.raises(BadInput) as info:
        check_govern(settings, Capacity(host=shape))
    assert needle in info.value.what
    assert info.value.fix and "\n" not in info.value.what + info.value.fix


def test_a_bad_value_from_env_is_named_as_env(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as info:
        govern(tmp_path, env={"BUILDCTL_JOBS": "0"})
    assert "BUILDCTL_JOBS=0" in info.value.what


def test_zero_never_falls_back_to_a_default(tmp_path: Path) -> None:
    for flags in ({"jobs": 0}, {"mem_budget": 0}):
        with pytest.raises(BadInput):
            govern(tmp_path, flags=flags)


# --- what is derived from the settings -------------------------------------------------------


def test_session_and_governor_options_come_from_the_settings(tmp_path: Path) -> None:
    from buildctl.govern.session import governor_options

    s = govern(tmp_path, flags={"mem_budget": 3 * GiB, "jobs": 2, "hang_after": 30.0,
                                "share_priors": True, "whole_slots": True, "low_water": GiB},
               env={"BUILDCTL_SAMPLE_INTERVAL": "0.1s"})
    opts = s.session_options(tmp_path / "b", "t", "/src", project="proj")
    gov = governor_options(opts, tmp_path / "s.sock", tmp_path / "b")
    assert (gov.budget_bytes, gov.slots, gov.hang_after_s) == (3 * GiB, 2, 30.0)
    assert gov.sample_interval_s == 0.1 and s.origins["sample_interval"] == (
        "BUILDCTL_SAMPLE_INTERVAL")
    assert gov.cap_priors and not gov.cpu_shares and gov.low_water_bytes == GiB
    assert getattr(gov, "project", "proj") == "proj"


def test_wheel_request_keeps_everything_the_project_resolved(tmp_path: Path) -> None:
    """The XPU adapter's name, version and scikit-build table for sources without a
    scikit-build-core pyproject reach the wheel pipeline."""
    lay = layers(tmp_path, flags={"torch": ("2.12.0+xpu",), "out": tmp_path / "wh"})
    settings = command_settings(WheelSettings, lay, govern_settings(lay, Capacity(host=HOST)))
    project = ProjectBuild(
        name="vllm-xpu-kernels", source_dir=tmp_path, cmake_defines={"A": "1"},
        build_env={"CXX": "icpx"}, smoke_snippet="import x", source_ref="v0.1.11.1",
        dist_name="vllm-xpu-kernels", base_version="0.1.11.1",
        scikit_build={"wheel": {"py-api": "cp38"}},
    )
    req = settings.wheel_request("2.12.0+xpu", project)
    assert (req.dist_name, req.base_version) == ("vllm-xpu-kernels", "0.1.11.1")
    assert req.scikit_build == {"wheel": {"py-api": "cp38"}}
    assert req.project == "vllm-xpu-kernels" and req.build_env == {"CXX": "icpx"}
    assert req.out_dir == tmp_path / "wh" and req.cache_dir.is_absolute()


def test_matrix_entry_settings_survive_json(tmp_path: Path) -> None:
    lay = layers(tmp_path, flags={"torch": ("2.13.0+cpu", "2.14.1"), "executor": "ray",
                                  "ray_address": "h:1", "mem_budget": 4 * GiB})
    settings = command_settings(WheelSettings, lay, govern_settings(lay, Capacity(host=HOST)))
    entry = settings.for_one_torch("2.14.1", tmp_path / "r-2.14.1.json")
    back = WheelSettings.model_validate_json(entry.model_dump_json())
    assert back == entry and back.torch == ("2.14.1",)
    assert back.govern.executor == "local" and back.govern.mem_budget == 4 * GiB
    assert back.origins == settings.origins


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = govern(tmp_path)
    with pytest.raises(ValueError):
        s.jobs = 3  # type: ignore[misc]


def test_build_request_derives_ninja_width(tmp_path: Path) -> None:
    lay = layers(tmp_path, flags={"jobs": 5, "target": ["a", "b"]})
    s = command_settings(BuildSettings, lay, govern_settings(lay, Capacity(host=HOST)))
    req = s.build_request(tmp_path, tmp_path / "b", {"X": "1"})
    assert (req.slots, req.ninja_width, req.targets) == (5, 20, ["a", "b"])


def test_readme_documents_every_variable() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    names = [line.split()[0] for line in env_help().splitlines()
             if line.startswith("  BUILDCTL_")]
    assert len(names) >= 15
    missing = [name for name in names if f"`{name}`" not in readme]
    assert not missing
