"""`buildctl repro list/show`: the crash repros and stall bundles a governed build left behind
(default root `<build-dir>/.buildctl/repro`), and the lines the build summary prints for them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console

from buildctl.errors import BadInput
from buildctl.govern.diagnostics import MANIFESTS
from buildctl.report import BuildReport
from buildctl.settings import from_flags
from buildctl.settings_base import Settings, flag_only

REPRO_SUBDIR = Path(".buildctl") / "repro"


def default_root(build_dir: Path) -> Path:
    return build_dir / REPRO_SUBDIR


@dataclass(frozen=True)
class ReproSummary:
    path: Path
    name: str
    kind: str  # crash | stall
    output: str  # the job's output file, relative to the build dir
    created: str
    reason: str  # the crash reason, or the stall evidence
    compiler: str
    attempt: int


def _manifest(path: Path) -> tuple[str, dict] | None:
    for kind, name in MANIFESTS.items():
        file = path / name
        if file.is_file():
            try:
                data = json.loads(file.read_text())
            except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8, not JSON
                return None
            return (kind, data) if isinstance(data, dict) else None
    return None


def _int(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return default


def _summary(path: Path) -> ReproSummary | None:
    found = _manifest(path)
    if found is None:
        return None
    kind, data = found
    versions = data.get("versions")
    versions = versions if isinstance(versions, dict) else {}
    reason = data.get("reason") if kind == "crash" else data.get("evidence")
    return ReproSummary(
        path=path,
        name=path.name,
        kind=kind,
        output=str(data.get("output", "")),
        created=str(data.get("created", "")),
        reason=str(reason or ""),
        compiler=str(versions.get("compiler", "")),
        attempt=_int(data.get("attempt"), 1) or 1,
    )


def list_repros(root: Path) -> list[ReproSummary]:
    """Complete repro dirs under `root`, oldest first. Half-written ones (a `.tmp-*` staging dir
    of a killed buildctl) are skipped: only finished dirs are ever renamed into place."""
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        summary = _summary(path)
        if summary is not None:
            found.append(summary)
    return found


def resolve_repro(root: Path, ref: str) -> Path:
    """A repro dir from a path, a directory name under `root`, or a number from `list_repros`
    (1 = oldest, -1 = newest)."""
    candidate = Path(ref)
    if candidate.is_dir() and _manifest(candidate):
        return candidate
    if (root / ref).is_dir() and _manifest(root / ref):
        return root / ref
    items = list_repros(root)
    try:
        index = int(ref)
    except ValueError:
        index = None
    if index is not None and items and -len(items) <= index <= len(items) and index != 0:
        return items[index - 1 if index > 0 else index].path
    raise BadInput(
        f"no crash repro or stall bundle {ref!r} in {root}",
        "run `buildctl repro list` to see the saved ones",
    )


def show_repro(path: Path) -> str:
    """What happened, how to re-run it, and what files there are (text for the terminal)."""
    summary = _summary(path)
    if summary is None:
        raise BadInput(
            f"{path} is not a buildctl crash repro or stall bundle",
            "pass a directory listed by `buildctl repro list`",
        )
    lines = [
        f"{summary.kind} of {summary.output} (attempt {summary.attempt}, {summary.created})",
        f"  {summary.reason}",
        *([f"  compiler: {summary.compiler}"] if summary.compiler else []),
        f"  directory: {path}",
        f"  re-run: {path / 'rerun.sh'}",
        "  files: " + ", ".join(sorted(p.name for p in path.iterdir())),
        "",
    ]
    readme = path / "README.md"
    if readme.is_file():
        lines.append(readme.read_text(errors="replace"))
    attempts = path / "attempts.log"
    if attempts.is_file():
        lines += ["attempts:", attempts.read_text(errors="replace")]
    return "\n".join(lines)


def failure_lines(report: BuildReport) -> list[str]:
    """For the end-of-build summary: every job that hung or crashed, with where its evidence is
    (crashes that a retry fixed are listed too: flaky compilers are worth knowing about)."""
    lines = []
    for job in report.jobs:
        if not job.repro_dir:
            continue
        if job.status == "hung":
            lines.append(f"  {job.output}: stalled ({job.verdict_evidence}); "
                         f"diagnostics: {job.repro_dir}")
        elif job.status == "crashed":
            lines.append(f"  {job.output}: compiler crash; repro: {job.repro_dir} "
                         "(rerun.sh reproduces it)")
        elif job.status == "ok":
            lines.append(f"  {job.output}: passed on attempt {job.attempts} after a failure; "
                         f"evidence: {job.repro_dir}")
    return lines


class ReproSettings(Settings):
    """`buildctl repro`'s settings: flags only."""

    build_dir: Path = flag_only(flag="--build-dir")  # argparse defaults it to the cwd
    action: Literal["list", "show"] = flag_only(flag="ACTION")
    as_json: bool = flag_only(False, flag="--json")
    ref: str | None = flag_only(None, flag="REF")


def cmd_repro(args: argparse.Namespace, console: Console) -> int:
    settings = from_flags(ReproSettings, args, action=args.repro_cmd,
                          as_json=getattr(args, "json", None))
    if settings.build_dir.exists() and not settings.build_dir.is_dir():
        raise BadInput(f"--build-dir {settings.build_dir} is not a directory",
                       "pass the build directory of a governed build")
    root = default_root(settings.build_dir.resolve())
    if settings.action == "list":
        items = list_repros(root)
        if settings.as_json:
            print(json.dumps([{**asdict(it), "path": str(it.path)} for it in items], indent=1))
            return 0
        if not items:
            console.print(f"no repros in {root}", highlight=False)
        for i, it in enumerate(items, 1):
            console.print(
                f"{i:3} {it.kind:5} {it.output}  {it.created}\n      {it.reason}\n      {it.path}",
                highlight=False,
                markup=False,
            )
    else:
        assert settings.ref is not None  # argparse requires it for show
        console.print(show_repro(resolve_repro(root, settings.ref)), highlight=False,
                      markup=False)
    return 0
