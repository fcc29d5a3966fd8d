"""What a command runs with: one frozen settings object per command, built once at the CLI edge.

Every value comes from the first layer that sets it:

1. a command-line flag;
2. an environment variable (`BUILDCTL_MEM_BUDGET`, `BUILDCTL_JOBS`, ...: `env_help()` lists them);
3. `[tool.buildctl]` in the project's pyproject.toml (the `--source` directory);
4. the user's `$XDG_CONFIG_HOME/buildctl/config.toml` (default `~/.config/buildctl/config.toml`);
5. for the CPU slots only: `MAX_JOBS`, then `CMAKE_BUILD_PARALLEL_LEVEL`;
6. the default, or what the host (or the Ray cluster) offers for the budget and the slots.

Each settings object remembers where each value came from (`origins`), so `--show-settings` and
error messages can name the flag, variable or file to change. The budget and the slots are
resolved here, once; `ProjectBuild`, `WheelRequest`, `SessionOptions` and, through the session,
`GovernorOptions` are derived from the same object, never filled field by field from argparse.

Sizes follow one rule (`buildctl.host.parse_size`): K/M/G/T are binary (G = GiB), KB/MB/GB/TB are
decimal, KiB/MiB/GiB/TiB binary. Durations are seconds, or a number with s/m/h.

The value types and the `Settings` base are in `settings_base.py`; the checks against the host
and between values in `settings_checks.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tomllib
from pydantic import TypeAdapter, ValidationError

from buildctl import host
from buildctl.errors import BadInput
from buildctl.report import check_output_path
from buildctl.settings_base import (
    DEFAULT,
    Seconds,
    Settings,
    SizeBytes,
    _extra,
    _has,
    _is_env,
    flag_name,
    flag_only,
    setting,
)
from buildctl.settings_base import parse_duration as parse_duration  # re-exported for the CLI
from buildctl.settings_checks import SAMPLE_INTERVAL_S, check_build, check_govern, check_plan

# --- the settings of each command ---------------------------------------------------------


class GovernSettings(Settings):
    """Memory budget, CPU slots and the governor's guards: `build`, `wheel`, `matrix`."""

    mem_budget: SizeBytes = setting(env="BUILDCTL_MEM_BUDGET", flag="--mem-budget",
                                    help="memory the build may use")
    jobs: int = setting(env="BUILDCTL_JOBS", help="CPU slots")
    low_ram: bool = setting(False, env="BUILDCTL_LOW_RAM", help="tighter budget (1/0)")
    prior_rss: SizeBytes | None = setting(None, env="BUILDCTL_PRIOR_RSS",
                                          help="predicted peak of never-measured jobs")
    share_priors: bool = setting(False, env="BUILDCTL_SHARE_PRIORS", help="1/0")
    whole_slots: bool = setting(False, env="BUILDCTL_WHOLE_SLOTS", help="1/0")
    profiles: Path | None = setting(None, env="BUILDCTL_PROFILE_DB", help="profile database")
    low_water: SizeBytes | None = setting(None, env="BUILDCTL_LOW_WATER",
                                          help="pause admission below this available memory")
    critical: SizeBytes | None = setting(None, env="BUILDCTL_CRITICAL",
                                         help="kill the job that loses least work below this")
    hang_after: Seconds = setting(600.0, env="BUILDCTL_HANG_AFTER",
                                  help="stalled after this long without progress")
    retries: int = setting(1, env="BUILDCTL_RETRIES", help="re-runs of a stalled/crashed job")
    sample_interval: Seconds = setting(SAMPLE_INTERVAL_S, env="BUILDCTL_SAMPLE_INTERVAL",
                                       help="how often every job's memory is read")
    executor: Literal["local", "ray"] = setting("local", env="BUILDCTL_EXECUTOR",
                                                help="local or ray")
    ray_address: str | None = setting(None, env="BUILDCTL_RAY_ADDRESS", help="HOST:PORT")
    plain: bool | None = setting(None, env="BUILDCTL_PLAIN", help="plain line log (1/0)")
    report: Path | None = flag_only(None)
    force: bool = flag_only(False)

    def session_options(self, build_dir: Path, title: str, source_dir: str, *,
                        executor: Any = None, project: str = "", report: Path | None = None,
                        console: Any = None, device_link_job_bytes: int = 0,
                        max_device_links: int = 0) -> Any:
        """The governed session's options: the one place budget and guards pass to it. The
        device-link figures come from the project's link plan (`ProjectBuild`), 0: off."""
        from buildctl.govern.session import SessionOptions

        return SessionOptions(
            build_dir=build_dir, budget_bytes=self.mem_budget, slots=self.jobs,
            report_path=report or self.report, profile_db=self.profiles,
            prior_bytes=self.prior_rss, share_priors=self.share_priors,
            cpu_shares=not self.whole_slots, plain=self.plain, title=title,
            low_water_bytes=self.low_water, critical_bytes=self.critical,
            hang_after_s=self.hang_after, retries=self.retries,
            sample_interval_s=self.sample_interval, command=list(sys.argv), source_dir=source_dir,
            executor=executor, project=project, console=console,
            device_link_job_bytes=device_link_job_bytes, max_device_links=max_device_links,
        )


class BuildSettings(Settings):
    govern: GovernSettings
    source: Path | None = flag_only(None)
    build_dir: Path | None = setting(None, env="BUILDCTL_BUILD_DIR", flag="--build-dir",
                                     help="build directory")
    preset: str = setting("default", env="BUILDCTL_PRESET",
                          help="kernel config preset of the bundled project")
    no_split: bool = flag_only(False)
    target: tuple[str, ...] = flag_only(())
    ninja_width: int | None = setting(None, env="BUILDCTL_NINJA_WIDTH", flag="--ninja-width",
                                      help="jobs ninja may start at once")
    cmake_args: tuple[str, ...] = flag_only(())

    def build_request(self, source_dir: Path, build_dir: Path,
                      extra_defines: Mapping[str, str]) -> Any:
        from buildctl.build import BuildRequest, ninja_width

        return BuildRequest(
            source_dir=source_dir, build_dir=build_dir.resolve(),
            budget_bytes=self.govern.mem_budget, slots=self.govern.jobs,
            ninja_width=self.ninja_width or ninja_width(self.govern.jobs),
            cmake_args=list(self.cmake_args), extra_defines=dict(extra_defines),
            targets=list(self.target),
        )


class WheelSettings(Settings):
    govern: GovernSettings
    torch: tuple[str, ...] = flag_only()
    project: str | None = flag_only(None)
    source: Path | None = flag_only(None)
    preset: str | None = setting(None, env="BUILDCTL_PRESET",
                                 help="kernel config preset of the bundled project")
    out: Path = setting(Path("wheelhouse"), env="BUILDCTL_WHEELHOUSE", help="the wheelhouse")
    cache_dir: Path = setting(Path(".buildctl-cache"), env="BUILDCTL_CACHE_DIR",
                              flag="--cache-dir", help="torch envs and wheel build dirs")
    torch_index: str | None = setting(None, env="BUILDCTL_TORCH_INDEX", flag="--torch-index",
                                      help="pip index for torch")
    extra_index_url: tuple[str, ...] = setting((), flag="--extra-index-url")
    find_links: tuple[str, ...] = setting((), flag="--find-links")
    allow_prerelease: bool = setting(False, flag="--allow-prerelease")
    compiler: str | None = setting(None)
    oneapi_root: tuple[str, ...] = setting((), flag="--oneapi-root")
    aot: str | None = setting(None)
    config_settings: tuple[str, ...] = flag_only((), flag="--config-settings")
    define: tuple[str, ...] = flag_only((), flag="-D")

    def project_build(self, torch: str) -> Any:
        """The kernel project for one torch version, sized from this budget."""
        from buildctl.kernels import resolve_project

        return resolve_project(
            name=self.project, source=self.source, preset=self.preset,
            low_ram=self.govern.low_ram, budget_bytes=self.govern.mem_budget,
            slots=self.govern.jobs, torch=torch, cache_dir=self.cache_dir,
            oneapi_roots=list(self.oneapi_root), compiler=self.compiler, aot=self.aot,
        )

    def wheel_request(self, torch: str, project: Any) -> Any:
        """What the wheel pipeline builds: everything the project resolved (by field name, so a
        field the project gains reaches the request without anyone copying it) plus the torch
        index settings."""
        from buildctl.wheel.pipeline import WheelRequest

        wanted = {f.name for f in dataclasses.fields(WheelRequest)}
        carried = {f.name: getattr(project, f.name) for f in dataclasses.fields(project)
                   if f.name in wanted}
        if self.define:
            from buildctl.wheel.pipeline import parse_defines

            carried["cmake_defines"] = {**carried.get("cmake_defines", {}),
                                        **parse_defines(self.define)}
        return WheelRequest(
            **carried, torch=torch, project=project.name, out_dir=self.out,
            cache_dir=self.cache_dir, index_url=self.torch_index,
            extra_index_urls=list(self.extra_index_url), find_links=list(self.find_links),
            allow_prerelease=self.allow_prerelease,
            config_settings=list(self.config_settings),
        )

    def for_one_torch(self, torch: str, report: Path | None) -> WheelSettings:
        """The settings a matrix entry runs `buildctl wheel` with on a Ray node: this budget,
        built locally there, with its own report."""
        govern = self.govern.model_copy(update={"executor": "local", "plain": True,
                                                "report": report})
        return self.model_copy(update={"torch": (torch,), "govern": govern})


class PlanSettings(Settings):
    cores: int | None = flag_only(None)
    mem: SizeBytes | None = flag_only(None)
    swap: SizeBytes | None = flag_only(None)
    mem_budget: SizeBytes | None = flag_only(None, flag="--mem-budget")
    jobs: int | None = flag_only(None)
    whole_slots: bool = flag_only(False)
    device_links: int = flag_only(0, flag="--device-links")
    report_in: Path | None = flag_only(None, flag="--report")
    # The profile DB reads BUILDCTL_PROFILE_DB itself: plan takes one source of jobs, and only a
    # flag names one.
    profiles: Path | None = flag_only(None)
    profiles_json: Path | None = flag_only(None, flag="--profiles-json")
    filter: str | None = flag_only(None)
    as_json: bool = flag_only(False, flag="--json")

    def plan_kwargs(self) -> dict[str, Any]:
        return dict(cores=self.cores, mem=self.mem, swap=self.swap, mem_budget=self.mem_budget,
                    slots=self.jobs, report=self.report_in, profiles=self.profiles,
                    profiles_json=self.profiles_json, filter_text=self.filter,
                    whole_slots=self.whole_slots, device_links=self.device_links)


LAYERED_MODELS: tuple[type[Settings], ...] = (GovernSettings, BuildSettings, WheelSettings,
                                              PlanSettings)
S = TypeVar("S", bound=Settings)


def config_keys() -> set[str]:
    return {n for m in LAYERED_MODELS for n, f in m.option_fields().items()
            if _extra(f, "layered")}


def env_help() -> str:
    """The environment variables and config files, for --help epilogs and the README."""
    lines = ["settings (first that says wins): flag > environment > [tool.buildctl] in the",
             "project's pyproject.toml > ~/.config/buildctl/config.toml ($XDG_CONFIG_HOME) > "
             "default;", "the CPU slots also from MAX_JOBS, then CMAKE_BUILD_PARALLEL_LEVEL.",
             "sizes: K/M/G/T are binary (G = GiB), KB/MB/GB/TB decimal; durations: 90s, 10m, 1h.",
             "environment:"]
    seen: set[str] = set()
    for model in LAYERED_MODELS:
        for name, field in model.option_fields().items():
            env = _extra(field, "env")
            if env and env not in seen:
                seen.add(env)
                lines.append(f"  {env:24} {flag_name(name, field)}: {field.description or ''}"
                             .rstrip())
    return "\n".join(lines)


# --- layers ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConfigFile:
    label: str  # where a value came from, e.g. /src/pyproject.toml [tool.buildctl]
    base: Path  # relative paths in the file are relative to its folder
    values: dict[str, Any]


def user_config_path(env: Mapping[str, str]) -> Path:
    root = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(root) / "buildctl" / "config.toml"


def read_config(path: Path, table: tuple[str, ...] = ()) -> ConfigFile | None:
    """A TOML file's settings (the `table`, e.g. ("tool", "buildctl"), of it); None if absent."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"cannot read settings from {path}: {exc}",
                       "fix the file (TOML) or move it away") from None
    for key in table:
        data = data.get(key, {})
        if not isinstance(data, dict):
            raise BadInput(f"{path}: [{'.'.join(table)}] is not a table",
                           "write it as a TOML table of settings")
    label = f"{path} [{'.'.join(table)}]" if table else str(path)
    known = config_keys()
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise BadInput(f"{label}: unknown setting {key!r}",
                           "use one of: " + ", ".join(sorted(k.replace("_", "-")
                                                             for k in known)))
        values[name] = value
    return ConfigFile(label=label, base=path.parent, values=values)


@dataclasses.dataclass(frozen=True)
class Layers:
    """The raw sources, highest first: flags, environment, config files."""

    flags: Mapping[str, Any]
    env: Mapping[str, str]
    files: tuple[ConfigFile, ...] = ()

    @classmethod
    def collect(cls, args: argparse.Namespace, project_dir: Path | None = None,
                env: Mapping[str, str] | None = None, **overrides: Any) -> Layers:
        env = os.environ if env is None else env
        files = []
        if project_dir is not None:
            project = read_config(project_dir / "pyproject.toml", ("tool", "buildctl"))
            if project:
                files.append(project)
        user = read_config(user_config_path(env))
        if user:
            files.append(user)
        flags = {k: v for k, v in {**vars(args), **overrides}.items() if v is not None}
        return cls(flags=flags, env=env, files=tuple(files))

    def lookup(self, name: str, field: Any) -> tuple[Any, str] | None:
        if name in self.flags:
            value = self.flags[name]
            return (tuple(value) if isinstance(value, list) else value), flag_name(name, field)
        if not _extra(field, "layered"):
            return None
        env_name = _extra(field, "env")
        if env_name and self.env.get(env_name, "") != "":
            return self.env[env_name], env_name
        for config in self.files:
            if name in config.values:
                value = config.values[name]
                if _has(field.annotation, Path) and isinstance(value, str):
                    value = config.base / Path(value).expanduser()
                if isinstance(value, list):
                    value = tuple(value)
                return value, config.label
        if name == "jobs":
            for env_name in ("MAX_JOBS", "CMAKE_BUILD_PARALLEL_LEVEL"):
                if self.env.get(env_name, "") != "":
                    return self.env[env_name], env_name
        return None

    def ray_address(self) -> str | None:
        """The Ray cluster to join before the budget is resolved, or None for a local build."""
        values, origins = self.gather(GovernSettings)
        if _coerce(GovernSettings, "executor", values, origins) != "ray":
            return None
        address = _coerce(GovernSettings, "ray_address", values, origins)
        if not address:
            raise BadInput("--executor ray needs --ray-address HOST:PORT",
                           "start a cluster with `ray start --head --port 6379` and pass its "
                           "address")
        return str(address)

    def get(self, model: type[Settings], name: str) -> Any:
        """One value, validated, before the whole settings object can be (None when unset)."""
        values, origins = self.gather(model)
        _absolute(values, model)
        value = _coerce(model, name, values, origins)
        return model.model_fields[name].default if value is None else value

    def gather(self, model: type[Settings]) -> tuple[dict[str, Any], dict[str, str]]:
        values: dict[str, Any] = {}
        origins: dict[str, str] = {}
        for name, field in model.option_fields().items():
            found = self.lookup(name, field)
            if found is not None:
                values[name], origins[name] = found
        return values, origins


def _validated(model: type[S], values: dict[str, Any], origins: dict[str, str]) -> S:
    """The model, or BadInput naming where the bad value came from."""
    try:
        return model.model_validate({**values, "origins": origins})
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        field = model.model_fields.get(name)
        origin = origins.get(name, DEFAULT)
        shown = origin if origin.startswith("--") or _is_env(origin) else f"{name} in {origin}"
        raise BadInput(
            f"{shown}: {error['msg']} (got {values.get(name)!r})",
            f"fix or remove it; {name.replace('_', '-')} is "
            + ((field.description or "a setting") if field else "a setting"),
        ) from None


def _coerce(model: type[Settings], name: str, values: dict[str, Any],
            origins: dict[str, str]) -> Any:
    """One raw value validated as its field would be (None when unset)."""
    if name not in values:
        return None
    field = model.model_fields[name]
    try:
        kind = field.annotation
        if field.metadata:
            kind = Annotated[(kind, *field.metadata)]
        return TypeAdapter(kind).validate_python(values[name])
    except ValidationError:
        _validated(model, {name: values[name]}, origins)  # raises with the origin
        raise


def _absolute(values: dict[str, Any], model: type[Settings]) -> None:
    """Paths made absolute now: a Ray node or a later chdir sees the same files."""
    for name, field in model.option_fields().items():
        value = values.get(name, field.default if isinstance(field.default, Path) else None)
        if isinstance(value, str | Path) and _has(field.annotation, Path):
            values[name] = Path(value).expanduser().absolute()


# --- resolution: the budget and the slots, once -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Capacity:
    """What the build may use at most: this host, or a Ray cluster (memory and CPUs)."""

    host: host.HostInfo
    cluster_memory: int | None = None
    cluster_cpus: int | None = None


def govern_settings(layers: Layers, capacity: Capacity) -> GovernSettings:
    values, origins = layers.gather(GovernSettings)
    _absolute(values, GovernSettings)
    info = capacity.host
    if "mem_budget" not in values:
        if capacity.cluster_memory is not None:
            values["mem_budget"], origins["mem_budget"] = capacity.cluster_memory, "Ray cluster"
        else:
            low = _coerce(GovernSettings, "low_ram", values, origins) or False
            values["mem_budget"] = host.default_budget(
                info.total_ram_bytes, info.cgroup_limit_bytes, low_ram=low)
            origins["mem_budget"] = "host: min(RAM, cgroup limit) minus a reserve" + (
                ", x0.75 for low-ram" if low else "")
    if "jobs" not in values:
        if capacity.cluster_cpus is not None:
            values["jobs"], origins["jobs"] = capacity.cluster_cpus, "Ray cluster"
        else:
            values["jobs"], origins["jobs"] = info.cores, "host: CPU cores"
    settings = _validated(GovernSettings, values, origins)
    check_govern(settings, capacity)
    if settings.report is not None:
        check_output_path(settings.report)  # refused now, not after an hour of building
    if settings.profiles is not None and settings.profiles.is_dir():
        raise BadInput(f"the profile database {settings.profiles} is a directory",
                       f"pass a file path, e.g. --profiles {settings.profiles / 'profiles.sqlite'}")
    return settings


def command_settings(model: type[S], layers: Layers, govern: GovernSettings | None) -> S:
    """A command's settings: its own layered values plus the resolved governor settings."""
    values, origins = layers.gather(model)
    _absolute(values, model)
    if govern is not None:
        values["govern"] = govern
    settings = _validated(model, values, origins)
    if isinstance(settings, BuildSettings):
        check_build(settings)
    return settings


def from_flags(model: type[S], args: argparse.Namespace, **renamed: Any) -> S:
    """The settings of a command whose every setting is a flag (`profile`, `repro`, `doctor`,
    `env`, `verify`): the Namespace's values as given, validated into `model`; no environment
    or config file is read (each reads none today). `renamed` maps a field to its value where
    the field's name differs from the argparse dest (`as_json=args.json`)."""
    flags = {k: v for k, v in {**vars(args), **renamed}.items() if v is not None}
    values, origins = Layers(flags=flags, env={}).gather(model)
    return _validated(model, values, origins)


def plan_settings(layers: Layers) -> PlanSettings:
    settings = command_settings(PlanSettings, layers, None)
    check_plan(settings)
    return settings


def join_cluster(address: str | None, build_dir: Path, check_paths: list[Path],
                 info: host.HostInfo) -> tuple[Any, Capacity]:
    """For --executor ray: join the cluster (the executor) and take its memory and CPUs as the
    capacity; otherwise (None, this host)."""
    if address is None:
        return None, Capacity(host=info)
    from buildctl.govern.ray_executor import make_ray_executor

    build_dir.mkdir(parents=True, exist_ok=True)
    executor, cluster = make_ray_executor(address, build_dir.resolve(), check_paths=check_paths)
    return executor, Capacity(host=info, cluster_memory=cluster.total_memory,
                              cluster_cpus=cluster.total_cpus)


def show(settings: Settings) -> str:
    """The --show-settings table: every value and where it came from."""
    rows = settings.rows()
    width = max(len(r[0]) for r in rows)
    vwidth = min(max(len(r[1]) for r in rows), 40)
    return "\n".join(f"{n:{width}}  {v:{vwidth}}  {o}" for n, v, o in rows)
