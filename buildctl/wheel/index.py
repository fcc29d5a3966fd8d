"""Publishing: a PEP 503 simple index and a flat find-links page per torch target, and a summary.

PyPI refuses local version labels, so per-torch wheels live on an own index, one directory per
torch target (PyTorch Geometric's layout):

    <out>/index.html                              list of torch targets
    <out>/<label>/index.html                      flat page for `pip install --find-links`
    <out>/<label>/simple/index.html               PEP 503 root (`--index-url .../<label>/simple`)
    <out>/<label>/simple/<project>/index.html     links with #sha256=, data-requires-python
    <out>/<label>/simple/<project>/<file>.whl     the wheel itself (relative links: relocatable)
    <out>/<label>/simple/<project>/<file>.whl.metadata   PEP 658 metadata (pip skips the download)

Pages are regenerated from the wheels present, so publishing accumulates across runs, and written
deterministically (sorted, no timestamps).
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from packaging.utils import canonicalize_name, parse_wheel_filename
from pydantic import BaseModel, Field
from rich.markup import escape
from rich.table import Table

from buildctl.errors import BadInput
from buildctl.host import format_size
from buildctl.report import write_text_atomic
from buildctl.wheel.wheelzip import dist_info_dir, open_wheel, read_member

_LABEL_RE = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)*$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _page(title: str, links: list[str]) -> str:
    body = "\n".join(f"    {link}<br/>" for link in links)
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        '    <meta name="pypi:repository-version" content="1.0">\n'
        f"    <title>{html.escape(title)}</title>\n  </head>\n  <body>\n"
        f"    <h1>{html.escape(title)}</h1>\n"
        f"{body}\n  </body>\n</html>\n"
    )


def _metadata(wheel: Path) -> bytes:
    with open_wheel(wheel) as zf:
        info = dist_info_dir(zf)
        return read_member(zf, f"{info}/METADATA", wheel)


def _requires_python(metadata: bytes) -> str | None:
    for line in metadata.decode("utf-8", "replace").splitlines():
        if not line.strip():
            break  # headers end at the first blank line
        if line.lower().startswith("requires-python:"):
            return line.split(":", 1)[1].strip()
    return None


def add_wheels(out: str | Path, torch_label: str, wheels: Iterable[str | Path]) -> list[Path]:
    """Copy wheels into `<out>/<label>/simple/<project>/` (validated) and regenerate all pages.

    A wheel whose version carries a different torch label than `torch_label` is refused: that is
    exactly the mix-up the per-torch index exists to prevent.
    """
    if not _LABEL_RE.match(torch_label):
        raise BadInput(
            f"torch label {torch_label!r} is not a local version label", "use e.g. pt213cpu"
        )
    root = Path(out)
    placed: list[Path] = []
    plan: list[tuple[Path, Path]] = []
    for item in wheels:
        wheel = Path(item)
        _metadata(wheel)  # validates the wheel (name, zip, paths) before anything is copied
        name, version, _build, _tags = parse_wheel_filename(wheel.name)
        if version.local is not None and version.local != torch_label:
            raise BadInput(
                f"{wheel.name} is labelled +{version.local}, not +{torch_label}",
                f"publish it under {version.local}, or rebuild for {torch_label}",
            )
        plan.append((wheel, root / torch_label / "simple" / canonicalize_name(name) / wheel.name))
    for wheel, dst in plan:  # copy only once every wheel passed validation
        dst.parent.mkdir(parents=True, exist_ok=True)
        if wheel.resolve() != dst.resolve():
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(wheel, tmp)
            os.replace(tmp, dst)
        placed.append(dst)
    write_pages(root)
    return placed


def write_pages(out: str | Path) -> None:
    """(Re)write every index page under `out` from the wheels that are there."""
    root = Path(out)
    labels = (
        sorted(p.name for p in root.iterdir() if (p / "simple").is_dir()) if root.is_dir() else []
    )
    for label in labels:
        simple = root / label / "simple"
        projects = sorted(p.name for p in simple.iterdir() if p.is_dir())
        flat_links: list[str] = []
        for project in projects:
            links: list[str] = []
            for wheel in sorted((simple / project).glob("*.whl")):
                meta = _metadata(wheel)
                meta_path = wheel.with_name(wheel.name + ".metadata")
                if not meta_path.is_file() or meta_path.read_bytes() != meta:
                    meta_path.write_bytes(meta)
                meta_sha = hashlib.sha256(meta).hexdigest()
                href = f"{wheel.name}#sha256={_sha256(wheel)}"
                attrs = f'href="{html.escape(href)}"'
                req = _requires_python(meta)
                if req:
                    attrs += f' data-requires-python="{html.escape(req)}"'
                attrs += f' data-dist-info-metadata="sha256={meta_sha}"'
                attrs += f' data-core-metadata="sha256={meta_sha}"'
                links.append(f"<a {attrs}>{html.escape(wheel.name)}</a>")
                flat_href = html.escape(f"simple/{project}/{href}")
                flat_links.append(f'<a href="{flat_href}">{html.escape(wheel.name)}</a>')
            write_text_atomic(simple / project / "index.html", _page(f"Links for {project}", links))
        root_links = [f'<a href="{html.escape(p)}/">{html.escape(p)}</a>' for p in projects]
        write_text_atomic(simple / "index.html", _page(f"Simple index ({label})", root_links))
        write_text_atomic(
            root / label / "index.html", _page(f"Wheels for torch {label}", flat_links)
        )
    if labels:
        top = [f'<a href="{html.escape(lb)}/">{html.escape(lb)}</a>' for lb in labels]
        write_text_atomic(root / "index.html", _page("buildctl wheelhouse", top))


# ------------------------------------------------------------------ summary table

VerifyState = Literal["pass", "fail", "unchecked", "skipped"]


class WheelSummary(BaseModel):
    wheel: str
    torch: str = ""
    size_bytes: int = 0
    peak_rss_bytes: int | None = None
    wall_s: float | None = None
    verify: VerifyState = "skipped"
    note: str = ""


class SummaryTable(BaseModel):
    rows: list[WheelSummary] = Field(default_factory=list)

    def _cells(self, row: WheelSummary) -> list[str]:
        return [
            row.wheel,
            row.torch,
            format_size(row.size_bytes),
            format_size(row.peak_rss_bytes) if row.peak_rss_bytes is not None else "-",
            f"{row.wall_s:.1f} s" if row.wall_s is not None else "-",
            row.verify + (f" ({row.note})" if row.note else ""),
        ]

    HEADERS: tuple[str, ...] = ("wheel", "torch", "size", "peak RSS", "wall", "verify")

    def to_markdown(self) -> str:
        def esc(cell: str) -> str:
            return cell.replace("|", "\\|")

        lines = [
            "| " + " | ".join(self.HEADERS) + " |",
            "|" + "|".join("---" for _ in self.HEADERS) + "|",
        ]
        lines += ["| " + " | ".join(esc(c) for c in self._cells(r)) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def to_rich(self) -> Table:
        table = Table(title="wheels")
        for header in self.HEADERS:
            table.add_column(
                header, justify="right" if header in ("size", "peak RSS", "wall") else "left"
            )
        colors = {"pass": "green", "fail": "red", "unchecked": "yellow", "skipped": "dim"}
        for row in self.rows:
            cells = [escape(c) for c in self._cells(row)]  # wheel names may contain [..]
            cells[-1] = f"[{colors[row.verify]}]{cells[-1]}[/]"
            table.add_row(*cells)
        return table
