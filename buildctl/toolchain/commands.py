"""`buildctl doctor` and `buildctl env`: the command handlers of the toolchain checks (here, not in
doctor.py and oneapi.py, which are already long)."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console


def cmd_doctor(args: argparse.Namespace, console: Console) -> int:
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

    ref = resolve(args.torch).kernel_ref if args.torch else None  # bad --torch: exit 2
    # The figures of the project being built: vllm-xpu-kernels for an XPU target, else the
    # bundled project; never the largest job of whatever else the database holds.
    project = "vllm-xpu-kernels" if args.torch else "pagedattn"
    shipped_path = shipped_profile_path(project, ref, PROFILES_DIR)
    db = ProfileDB(args.profiles)
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
        args.torch,
        python=args.python or sys.executable,
        needed_peak_bytes=needed,
        needed_from=needed_from,
    )
    if args.json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        render(report, console)
    return report.exit_code


def cmd_env(args: argparse.Namespace, console: Console) -> int:
    from buildctl.toolchain.oneapi import env_command

    sys.stdout.write(env_command(args.compiler, args.oneapi_root or ()) + "\n")
    return 0
