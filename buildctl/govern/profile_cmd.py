"""`buildctl profile show|export|import`: the parser and handler of the profile database."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from buildctl import host
from buildctl.settings import from_flags
from buildctl.settings_base import Settings, flag_only

DESCRIPTION = """\
Every governed build records each job's measured peak memory, CPU time and RSS curve in a
profile database (SQLite); the next build predicts from it. `show` prints the expected peak per
project and target; `export` and `import` move profiles as JSON (CI caches, the shipped
profiles/). A corrupt database is moved aside and replaced, and a read-only one is read but not
written: both are warnings, never failures."""
EPILOG = """examples:
  buildctl profile show                           expected peak per project and target
  buildctl profile show --project fmt --jobs      every job of one project, with its CPU slot share
  buildctl profile show --json                    the same table as a JSON list
  buildctl profile export ci-profiles.json        write the latest run of every job (schema 2)
  buildctl profile import ci-profiles.json        merge an export (schema 1 or 2) into the DB
  buildctl profile --profiles /tmp/p.sqlite show  another database file

The database is ~/.cache/buildctl/profiles.sqlite unless $BUILDCTL_PROFILE_DB or --profiles
names another file."""

_PROFILES_HELP = (
    "profile database file (default: $BUILDCTL_PROFILE_DB, else "
    "~/.cache/buildctl/profiles.sqlite)"
)


def add_profile_parser(sub: Any) -> argparse.ArgumentParser:
    """The `profile` command and its actions, on the top-level subparsers `sub`."""
    p = sub.add_parser(
        "profile",
        help="show, export or import measured peak-RSS profiles",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--profiles", type=Path, metavar="DB", help=_PROFILES_HELP)
    psub = p.add_subparsers(dest="profile_cmd", metavar="ACTION", required=True)

    def action(name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
        a = psub.add_parser(
            name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
            epilog="examples:\n" + examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # Also accepted after the action word; SUPPRESS keeps a value given before it.
        a.add_argument("--profiles", type=Path, metavar="DB", default=argparse.SUPPRESS,
                       help=_PROFILES_HELP)
        return a

    show = action(
        "show", "expected peak memory per project and target, from the latest run of each job",
        "  buildctl profile show\n  buildctl profile show --project fmt --jobs\n"
        "  buildctl profile show --filter gemm --json",
    )
    show.add_argument("--project", metavar="NAME",
                      help="only this project's jobs (default: every project)")
    show.add_argument("--jobs", dest="jobs_detail", action="store_true",
                      help="also list every job (peak, wall seconds, CPU slot share, compiler)")
    show.add_argument("--filter", metavar="TEXT",
                      help="only jobs whose output contains TEXT (default: all)")
    show.add_argument("--json", action="store_true",
                      help="print a JSON list instead of tables: one object per target, or per "
                      "job with --jobs (sizes in bytes, times in seconds)")
    exp = action(
        "export", "write the latest run of every job as JSON (schema buildctl.profiles/2)",
        "  buildctl profile export profiles.json\n"
        "  buildctl profile export --project fmt > fmt.json",
    )
    exp.add_argument("file", nargs="?", type=Path, help="output file (default: stdout)")
    exp.add_argument("--project", metavar="NAME",
                     help="only this project's jobs (default: every project)")
    imp = action(
        "import", "merge a JSON export (schema 1 or 2) into the database",
        "  buildctl profile import profiles.json\n"
        "  buildctl profile import --project vllm-xpu-kernels \\\n"
        "      profiles/vllm-xpu-kernels/v0.1.9.json",
    )
    imp.add_argument("file", type=Path, help="a file written by `buildctl profile export`")
    imp.add_argument("--project", metavar="NAME",
                     help="the project of entries that name none (schema-1 files; default: "
                     "none, they stay unassigned)")
    p.set_defaults(func=cmd_profile)
    return p


def print_warnings(warnings: list[str]) -> None:
    """The profile DB's warnings (moved aside, not recording), one line each on stderr."""
    err = Console(stderr=True)
    for line in warnings:
        err.print(f"warning: {line}", highlight=False, markup=False, soft_wrap=True)


class ProfileSettings(Settings):
    """`buildctl profile`'s settings: flags only (the database path falls back to
    $BUILDCTL_PROFILE_DB inside `ProfileDB`, as for every command)."""

    profiles: Path | None = flag_only(None)
    action: Literal["show", "export", "import"] = flag_only(flag="ACTION")
    project: str | None = flag_only(None)
    jobs_detail: bool = flag_only(False, flag="--jobs")
    filter: str | None = flag_only(None)
    as_json: bool = flag_only(False, flag="--json")
    file: Path | None = flag_only(None)


def cmd_profile(args: argparse.Namespace, console: Console) -> int:
    settings = from_flags(ProfileSettings, args, action=args.profile_cmd,
                          as_json=getattr(args, "json", None))
    from buildctl.govern.profiles import ProfileDB

    db = ProfileDB(settings.profiles)
    try:
        if settings.action == "show":
            _show(db, settings, console)
        elif settings.action == "export":
            text = db.export_json(settings.project)
            if settings.file is None or str(settings.file) == "-":
                sys.stdout.write(text + "\n")
            else:
                from buildctl.report import write_text_atomic

                write_text_atomic(settings.file, text + "\n")
                count = len(db.latest(settings.project))
                console.print(f"exported {count} job profiles to {settings.file}",
                              highlight=False)
        else:
            from buildctl.govern.profiles import read_export_text

            assert settings.file is not None  # argparse requires it for import
            text = read_export_text(settings.file)
            count = db.import_json(text, str(settings.file), project=settings.project)
            console.print(f"imported {count} job profiles into {db.path}", highlight=False)
    finally:
        print_warnings(db.warnings)
        db.close()
    return 0


def _show(db: Any, settings: ProfileSettings, console: Console) -> None:
    from buildctl.govern.profiles import summarize_by_target
    from buildctl.govern.scheduler import cpu_share

    project = settings.project
    entries = db.latest(project)
    if settings.filter:
        entries = [e for e in entries if settings.filter in e.output]
    if settings.as_json:
        if settings.jobs_detail:
            rows: list[dict[str, Any]] = [
                {**e.model_dump(exclude={"curve"}),
                 "cpu_slot_share": cpu_share(e.cpu_s, e.wall_s, e.runq_wait_s),
                 "curve_points": len(e.curve)}
                for e in entries
            ]
        else:
            rows = [
                {"project": s.project, "target": s.target, "jobs": s.jobs,
                 "max_peak_bytes": s.max_peak_bytes, "link_peak_bytes": s.link_peak_bytes,
                 "total_cpu_s": round(s.total_cpu_s, 3), "heaviest_output": s.heaviest_output}
                for s in summarize_by_target(entries)
            ]
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    if not entries:
        known = [name or "(none)" for name in db.projects()]
        if project is not None and known:
            console.print(f"no profiles for project {project!r} in {db.path}; it has: "
                          f"{', '.join(known)}", highlight=False)
        else:
            console.print(f"no profiles in {db.path} yet; run `buildctl build` once",
                          highlight=False)
        return
    table = Table(title=f"expected peak memory per target ({db.path})")
    numeric = ("jobs", "max peak", "link peak", "CPU s")
    for col in ("project", "target", *numeric, "heaviest job"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for s in summarize_by_target(entries):
        table.add_row(
            s.project or "-",
            s.target,
            str(s.jobs),
            host.format_size(s.max_peak_bytes),
            host.format_size(s.link_peak_bytes) if s.link_peak_bytes else "-",
            f"{s.total_cpu_s:.1f}",
            s.heaviest_output,
        )
    console.print(table)
    if settings.jobs_detail:
        jt = Table(title="per job (latest complete run)")
        for col in ("project", "output", "kind", "peak", "wall s", "CPU slot", "compiler"):
            jt.add_column(col)
        for e in entries:
            jt.add_row(
                e.project or "-",
                e.output,
                e.kind,
                # ">=": only a lower bound is known (the run was cut short).
                (">=" if e.censored else "") + host.format_size(e.peak_rss_bytes),
                f"{e.wall_s:.1f}",
                # The share this run alone gives (predictions take the max of 3 runs).
                f"{cpu_share(e.cpu_s, e.wall_s, e.runq_wait_s):.2g}",
                e.compiler,
            )
        console.print(jt)
