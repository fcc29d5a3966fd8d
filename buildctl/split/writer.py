"""Write shard sources and the plan record; touch nothing whose content did not change.

Ninja rebuilds on mtime, so rewriting an identical shard would recompile it on every
re-configure; only changed shards are written, and shards of a previous N are removed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildctl.split.plan import (
    GeneratedSource,
    balanced_slices,
    render_shard,
    rewrite_quoted_includes,
    shard_name,
)

PLAN_FILE = "split-plan.json"
# Compile options the hook adds to what the target compiles (one per line; may be empty).
OPTIONS_FILE = "compile-options.txt"
PLAN_SCHEMA = "buildctl.split-plan/1"


@dataclass(frozen=True)
class WriteResult:
    paths: tuple[Path, ...]  # what the target should compile (the original when n == 1)
    written: tuple[Path, ...]  # shards whose content changed
    removed: tuple[Path, ...]  # stale shards of another N


def write_if_changed(path: Path, text: str) -> bool:
    """Atomically replace `path` with `text` unless it already holds exactly that."""
    data = text.encode()
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def localized_parts(source: GeneratedSource, origin: Path) -> tuple[str, str]:
    """Preamble and epilogue with `#include "x"` made absolute where `x` sits next to `origin`."""
    base = str(origin.parent)
    return (
        rewrite_quoted_includes(source.preamble, base, os.path.exists),
        rewrite_quoted_includes(source.epilogue, base, os.path.exists),
    )


def _shard_pattern(stem: str, suffix: str) -> re.Pattern[str]:
    return re.compile(re.escape(stem) + r"\.shard-\d+-of-\d+" + re.escape(suffix) + "$")


def write_shards(
    source: GeneratedSource,
    n: int,
    out_dir: Path,
    origin: Path,
    *,
    line_directives: bool = True,
) -> WriteResult:
    """Write `n` balanced shards of `source` into `out_dir`; with n == 1 keep the original."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem, suffix = origin.stem, origin.suffix
    keep: list[Path] = []
    written: list[Path] = []
    if n > 1:
        pre, epi = localized_parts(source, origin)
        for index, indices in enumerate(balanced_slices(len(source.entries), n)):
            path = out_dir / shard_name(stem, suffix, index, n)
            text = render_shard(
                source,
                indices,
                str(origin) if line_directives else None,
                preamble=pre,
                epilogue=epi,
            )
            if write_if_changed(path, text):
                written.append(path)
            keep.append(path)
    pattern = _shard_pattern(stem, suffix)
    removed: list[Path] = []
    for old in sorted(out_dir.iterdir()):
        if pattern.match(old.name) and old not in keep:
            old.unlink()
            removed.append(old)
    return WriteResult(
        paths=tuple(keep) if n > 1 else (origin,),
        written=tuple(written),
        removed=tuple(removed),
    )


def write_plan_record(out_dir: Path, record: dict[str, Any]) -> Path:
    path = out_dir / PLAN_FILE
    write_if_changed(path, json.dumps({"schema": PLAN_SCHEMA, **record}, indent=2) + "\n")
    return path


def write_compile_options(out_dir: Path, options: Sequence[str]) -> Path:
    """Always written (empty when there are none): the hook must not read a stale list."""
    path = out_dir / OPTIONS_FILE
    write_if_changed(path, "".join(f"{opt}\n" for opt in options))
    return path


def load_plans(build_dir: Path) -> list[dict[str, Any]]:
    """Every split plan recorded under a build dir (for the build report's `split` events)."""
    plans: list[dict[str, Any]] = []
    root = build_dir / "buildctl-split"
    if not root.is_dir():
        return plans
    for path in sorted(root.glob(f"*/{PLAN_FILE}")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("schema") == PLAN_SCHEMA:
            plans.append(data)
    return plans


def paths_for_cmake(paths: Sequence[Path]) -> str:
    return ";".join(str(p) for p in paths)
