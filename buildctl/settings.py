"""What a command runs with: the memory budget, CPU slots and session options, resolved once
from the command line at the CLI edge."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from buildctl import host
from buildctl.errors import BadInput


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
