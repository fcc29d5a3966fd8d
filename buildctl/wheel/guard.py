"""The import-time torch guard every wheel buildctl builds carries.

`Requires-Dist: torch==X` cannot carry the variant (`+xpu`, `+cpu`), and pip happily keeps a
wheel when torch is upgraded later, so each top-level package of the wheel gets a small
`_buildctl_torch_guard.py` that its `__init__` imports first: another torch minor series or
another variant stops the import with one line naming the torch the wheel was built for.

Pure: `guarded_init` (text in, text out). I/O: `add_import_guard` rewrites a wheel in place
(RECORD recomputed, timestamps from SOURCE_DATE_EPOCH like every other rewrite).
"""

from __future__ import annotations

import ast
from pathlib import Path

from buildctl.wheel.reproducible import read_entries, source_date_epoch, write_entries
from buildctl.wheel.torchspec import TorchTarget, import_guard_source

GUARD_MODULE = "_buildctl_torch_guard"
IMPORT_LINE = f"from . import {GUARD_MODULE}  # noqa: F401  (buildctl: refuse a foreign torch)\n"


def guarded_init(text: str) -> str:
    """`__init__.py` text with the guard import as its first statement after the docstring and
    `from __future__` imports (which must stay first)."""
    if IMPORT_LINE in text:
        return text
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return IMPORT_LINE + text
    insert_after = 0
    for index, node in enumerate(tree.body):
        is_doc = (
            index == 0
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        )
        is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if is_doc or is_future:
            insert_after = node.end_lineno or node.lineno
        else:
            break
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n") and insert_after >= len(lines):
        lines[-1] += "\n"
    return "".join(lines[:insert_after]) + IMPORT_LINE + "".join(lines[insert_after:])


def guarded_packages(names: list[str], dist_info: str) -> list[str]:
    """Top-level packages of a wheel (folders with an `__init__.py`, outside .dist-info/.data)."""
    out = []
    for name in names:
        parts = name.split("/")
        if (
            len(parts) == 2
            and parts[1] == "__init__.py"
            and not parts[0].endswith((".dist-info", ".data"))
            and parts[0] != dist_info
        ):
            out.append(parts[0])
    return sorted(out)


def add_import_guard(wheel: Path, target: TorchTarget) -> list[str]:
    """Insert the guard into every top-level package of `wheel`; returns the packages guarded."""
    entries, dist_info = read_entries(wheel)
    packages = guarded_packages(list(entries), dist_info)
    for package in packages:
        entries[f"{package}/{GUARD_MODULE}.py"] = import_guard_source(target, package).encode()
        init = f"{package}/__init__.py"
        entries[init] = guarded_init(entries[init].decode()).encode()
    if packages:
        write_entries(wheel, entries, dist_info, epoch=source_date_epoch())
    return packages
