"""`buildctl profile show|export|import`: the command handler of the profile database."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from buildctl import host
from buildctl.errors import BadInput


def cmd_profile(args: argparse.Namespace, console: Console) -> int:
    from buildctl.govern.profiles import ProfileDB, summarize_by_target

    db = ProfileDB(args.profiles)
    try:
        if args.profile_cmd == "show":
            entries = db.latest()
            if args.filter:
                entries = [e for e in entries if args.filter in e.output]
            if not entries:
                console.print(f"no profiles in {db.path} yet; run `buildctl build` once")
                return 0
            table = Table(title=f"expected peak memory per target ({db.path})")
            for col in ("target", "jobs", "max peak", "link peak", "CPU s", "heaviest job"):
                table.add_column(
                    col,
                    justify="right"
                    if col in ("jobs", "max peak", "link peak", "CPU s")
                    else "left",
                )
            for s in summarize_by_target(entries):
                table.add_row(
                    s.target,
                    str(s.jobs),
                    host.format_size(s.max_peak_bytes),
                    host.format_size(s.link_peak_bytes) if s.link_peak_bytes else "-",
                    f"{s.total_cpu_s:.1f}",
                    s.heaviest_output,
                )
            console.print(table)
            if args.jobs_detail:
                from buildctl.govern.scheduler import cpu_share

                jt = Table(title="per job (latest run)")
                for col in ("output", "kind", "peak", "wall s", "CPU slot", "compiler"):
                    jt.add_column(col)
                for e in entries:
                    jt.add_row(
                        e.output,
                        e.kind,
                        host.format_size(e.peak_rss_bytes),
                        f"{e.wall_s:.1f}",
                        # The share this run alone gives (predictions take the max of 3 runs).
                        f"{cpu_share(e.cpu_s, e.wall_s, e.runq_wait_s):.2g}",
                        e.compiler,
                    )
                console.print(jt)
        elif args.profile_cmd == "export":
            text = db.export_json()
            if args.file is None or str(args.file) == "-":
                sys.stdout.write(text + "\n")
            else:
                from buildctl.report import write_text_atomic

                write_text_atomic(args.file, text + "\n")
                console.print(f"exported {len(db.latest())} job profiles to {args.file}")
        elif args.profile_cmd == "import":
            try:
                text = Path(args.file).read_text()
            except OSError as exc:
                raise BadInput(
                    f"cannot read {args.file}: {exc.strerror}",
                    "pass a file written by `buildctl profile export`",
                ) from None
            count = db.import_json(text, str(args.file))
            console.print(f"imported {count} job profiles into {db.path}")
    finally:
        db.close()
    return 0
