"""The governor settings checked against the host (or the Ray cluster) and against each other:
pure, numbers in and `BadInput` out, so every rule is tested as a table (tests/test_settings.py).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from buildctl import host
from buildctl.errors import BadInput

if TYPE_CHECKING:
    from buildctl.settings import BuildSettings, Capacity, GovernSettings, PlanSettings

MIN_BUDGET = 64 * 1024**2  # a C++ compile needs ~100 MB and up
SAMPLE_INTERVAL_S = 0.25  # the governor's default sampling period
# One sampling round reads /proc for every process of every running job: under 20 ms it would
# take a core of its own on a 16-job build; past 5 s a compile's allocation burst is unseen.
SAMPLE_INTERVAL_RANGE = (0.02, 5.0)
# ninja reads -j into a C int and starts max(4 x slots, 16) launchers (build.ninja_width): far
# more slots than any host or cluster has, and ninja still takes the width.
MAX_JOBS = 65536
NINJA_MAX_WIDTH = 4 * MAX_JOBS


def check_govern(s: GovernSettings, capacity: Capacity) -> None:
    """Flags checked against the host and each other (pure: numbers in, BadInput out)."""
    info = capacity.host
    if s.jobs < 1:
        raise BadInput(f"{s.where('jobs')} is not a number of CPU slots", "pass --jobs 1 or more")
    if s.jobs > MAX_JOBS:
        raise BadInput(f"{s.where('jobs')} is more CPU slots than ninja can start",
                       f"pass --jobs of at most {MAX_JOBS} (this host has {info.cores} cores)")
    if s.mem_budget <= 0:
        raise BadInput(f"{s.where('mem_budget')} is not a memory budget",
                       "pass a size above 0, e.g. --mem-budget 28G (G = GiB)")
    if s.mem_budget < MIN_BUDGET:
        raise BadInput(
            f"memory budget {host.format_size(s.mem_budget)} is too small to run a compiler",
            "pass --mem-budget of at least 64M (a C++ compile needs ~100 MB and up)")
    if not s.force:
        if capacity.cluster_memory is not None:
            limits = [(capacity.cluster_memory, "the Ray cluster's memory")]
        else:
            ram_swap = info.total_ram_bytes + info.swap_total_bytes
            limits = [(ram_swap, f"this host's RAM + swap ({host.format_size(ram_swap)})")]
            if info.cgroup_limit_bytes:
                limits.append((info.cgroup_limit_bytes, "the cgroup memory limit ("
                               f"{host.format_size(info.cgroup_limit_bytes)})"))
        for limit, what in limits:
            if s.mem_budget > limit:
                raise BadInput(f"{s.where('mem_budget')} is more than {what}",
                               "pass a smaller --mem-budget, or add --force to use it anyway")
    ram = min(info.total_ram_bytes, info.cgroup_limit_bytes or info.total_ram_bytes)
    if s.low_water is not None and s.low_water >= ram and not s.force:
        raise BadInput(
            f"{s.where('low_water')} is not below the RAM ({host.format_size(ram)}): admission "
            "would wait forever",
            "pass a smaller --low-water, leave it out (5% of RAM), or add --force")
    if s.critical is not None and not s.force:
        low_water = s.low_water if s.low_water is not None else _default_low_water(ram)
        if s.critical >= low_water:
            raise BadInput(
                f"{s.where('critical')} is not below the low-water mark "
                f"({host.format_size(low_water)}): jobs would be killed before admission pauses",
                "pass --critical below --low-water, leave it out (half the low-water mark), "
                "or add --force")
    low, high = SAMPLE_INTERVAL_RANGE
    if not math.isfinite(s.sample_interval) or not low <= s.sample_interval <= high:
        raise BadInput(f"{s.where('sample_interval')} is not a sampling period from "
                       f"{low:g} s to {high:g} s",
                       f"pass e.g. --sample-interval 0.1s (default {SAMPLE_INTERVAL_S:g}s)")
    floor = max(1.0, 3 * s.sample_interval)
    if not math.isfinite(s.hang_after):  # a config file's nan/inf: nan never ends a wait
        raise BadInput(f"{s.where('hang_after')} is not a duration",
                       "pass seconds or a unit, e.g. --hang-after 10m (default 10m)")
    if s.hang_after < floor:
        raise BadInput(
            f"{s.where('hang_after')} s is shorter than {floor:g} s (and 3 sampling periods of "
            f"{s.sample_interval:g} s): a busy job would be killed as stalled",
            "pass --hang-after 1s or more (default 10m)")
    if s.retries < 0:
        raise BadInput(f"{s.where('retries')} is not a number of re-runs",
                       "pass --retries 0 or more")
    if s.prior_rss is not None and s.prior_rss <= 0:
        raise BadInput(f"{s.where('prior_rss')} is not a predicted peak",
                       "pass a size above 0, e.g. --prior-rss 1G")
    if s.executor == "ray" and not s.ray_address:
        raise BadInput("--executor ray needs --ray-address HOST:PORT",
                       "start a cluster with `ray start --head --port 6379` and pass its address")


def check_build(s: BuildSettings) -> None:
    if s.ninja_width is not None and s.ninja_width < 1:
        raise BadInput(f"{s.where('ninja_width')} is not a number of jobs",
                       "pass --ninja-width 1 or more")
    if s.ninja_width is not None and s.ninja_width > NINJA_MAX_WIDTH:
        raise BadInput(f"{s.where('ninja_width')} is more jobs than ninja can start",
                       f"pass --ninja-width of at most {NINJA_MAX_WIDTH}")


def check_plan(s: PlanSettings) -> None:
    """`buildctl plan`'s host shape: positive counts and sizes, and a budget that fits it."""
    for name, what, flag in (("cores", "number of cores", "--cores"),
                             ("jobs", "number of CPU slots", "--jobs")):
        if getattr(s, name) is not None and getattr(s, name) < 1:
            raise BadInput(f"{s.where(name)} is not a {what}", f"pass {flag} 1 or more")
        if getattr(s, name) is not None and getattr(s, name) > MAX_JOBS:
            raise BadInput(f"{s.where(name)} is more than a build can use",
                           f"pass {flag} of at most {MAX_JOBS}")
    for name in ("mem", "mem_budget"):
        if getattr(s, name) is not None and getattr(s, name) <= 0:
            raise BadInput(f"{s.where(name)} is not a memory size",
                           "pass a size above 0, e.g. 32G (G = GiB)")
    if s.mem_budget is not None:
        import psutil

        host_mem = s.mem or (psutil.virtual_memory().total + psutil.swap_memory().total)
        if s.mem_budget > host_mem:
            raise BadInput(
                f"{s.where('mem_budget')} is above the planned host's memory "
                f"({host.format_size(host_mem)})",
                "pass a smaller --mem-budget, or plan for a bigger host with --mem",
            )


def _default_low_water(ram: int) -> int:
    from buildctl.govern.governor import default_watermarks

    return default_watermarks(ram)[0]
