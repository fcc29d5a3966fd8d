"""`buildctl doctor` and `buildctl env`: the command handlers of the toolchain checks (here, not in
doctor.py and oneapi.py, which are already long)."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console


def cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    from buildctl.govern.profiles import ProfileDB
    from buildctl.toolchain.compat import resolve
    from buildctl.toolchain.doctor import render, run_doctor

    if args.torch:
        resolve(args.torch)  # an unknown or malformed version is bad input: exit 2
    needed = None
    db = ProfileDB(args.profiles)
    try:
        entries = db.latest()
        if entries:
            needed = max(e.peak_rss_bytes for e in entries)
    finally:
        db.close()
    report = run_doctor(args.torch, python=args.python or sys.executable, needed_peak_bytes=needed)
    if args.json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        render(report, console)
    return report.exit_code


def cmd_env(args: argparse.Namespace, console: Console) -> int:
    from buildctl.toolchain.oneapi import env_command

    sys.stdout.write(env_command(args.compiler, args.oneapi_root or ()) + "\n")
    return 0
