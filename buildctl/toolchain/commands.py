"""`buildctl doctor` and `buildctl env`: the command handlers of the toolchain checks (here, not in
doctor.py and oneapi.py, which are already long)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from buildctl.settings import from_flags
from buildctl.settings_base import Settings, flag_only


class DoctorSettings(Settings):
    """`buildctl doctor`'s settings: flags only (the database path falls back to
    $BUILDCTL_PROFILE_DB inside `ProfileDB`)."""

    torch: str | None = flag_only(None)
    python: str | None = flag_only(None)
    profiles: Path | None = flag_only(None)
    as_json: bool = flag_only(False, flag="--json")


class EnvSettings(Settings):
    """`buildctl env`'s settings: flags only."""

    compiler: str = flag_only()
    oneapi_root: tuple[str, ...] = flag_only((), flag="--oneapi-root")


def cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    settings = from_flags(DoctorSettings, args, as_json=args.json)
    from buildctl.data import PROFILES_DIR
    from buildctl.govern.profile_cmd import print_warnings
    from buildctl.govern.profiles import ProfileDB
    from buildctl.toolchain.compat import resolve
    from buildctl.toolchain.doctor import (
        load_shipped_entries,
        project_peak,
        render,
        run_doctor,
        shipped_profile_path,
    )

    ref = resolve(settings.torch).kernel_ref if settings.torch else None  # bad --torch: exit 2
    # The figures of the project being built: vllm-xpu-kernels for an XPU target, else the
    # bundled project; never the largest job of whatever else the database holds.
    project = "vllm-xpu-kernels" if settings.torch else "pagedattn"
    shipped_path = shipped_profile_path(project, ref, PROFILES_DIR)
    db = ProfileDB(settings.profiles)
    try:
        needed, needed_from = project_peak(
            project,
            db.latest(),
            load_shipped_entries(shipped_path),
            shipped_path.name if shipped_path else "",
        )
    finally:
        print_warnings(db.warnings)
        db.close()
    report = run_doctor(
        settings.torch,
        python=settings.python or sys.executable,
        needed_peak_bytes=needed,
        needed_from=needed_from,
    )
    if settings.as_json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        render(report, console)
    return report.exit_code


def cmd_env(args: argparse.Namespace, console: Console) -> int:
    settings = from_flags(EnvSettings, args)
    from buildctl.toolchain.oneapi import env_command

    sys.stdout.write(env_command(settings.compiler, settings.oneapi_root) + "\n")
    return 0
