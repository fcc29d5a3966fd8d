"""PEP 503 simple index + flat find-links page per torch label, and the summary table."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from buildctl.errors import BadInput
from buildctl.wheel.index import SummaryTable, WheelSummary, add_wheels, write_pages
from buildctl.wheel.reproducible import write_wheel

TAG = "py3-none-any"


def make(tmp: Path, name: str, version: str) -> Path:
    return write_wheel(
        tmp,
        name=name,
        version=version,
        tag=TAG,
        files={f"{name.replace('-', '_').lower()}/__init__.py": f"V = {version!r}\n".encode()},
        metadata={"Requires-Python": ">=3.10"},
    )


def test_index_layout_and_hashes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    a = make(src, "Paged_Attn", "0.1.0+pt213cpu")
    b = make(src, "paged-attn", "0.2.0+pt213cpu")
    c = make(src, "other", "1.0+pt213cpu")
    out = tmp_path / "wheelhouse"
    placed = add_wheels(out, "pt213cpu", [a, b])
    assert [p.parent.name for p in placed] == ["paged-attn", "paged-attn"]
    add_wheels(out, "pt213cpu", [c])  # accumulates
    simple = out / "pt213cpu" / "simple"
    root = (simple / "index.html").read_text()
    assert '<a href="other/">other</a>' in root and '<a href="paged-attn/">paged-attn</a>' in root
    page = (simple / "paged-attn" / "index.html").read_text()
    for wheel in (a, b):
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert f'href="{wheel.name}#sha256={digest}"' in page
        meta = (simple / "paged-attn" / (wheel.name + ".metadata")).read_bytes()
        assert b"Requires-Python: >=3.10" in meta
        assert f'data-core-metadata="sha256={hashlib.sha256(meta).hexdigest()}"' in page
    assert 'data-requires-python="&gt;=3.10"' in page
    flat = (out / "pt213cpu" / "index.html").read_text()
    assert len(re.findall(r"<a href=", flat)) == 3 and "simple/paged-attn/" in flat
    assert '<a href="pt213cpu/">pt213cpu</a>' in (out / "index.html").read_text()
    # Deterministic: regenerating changes nothing.
    before = {p: p.read_bytes() for p in out.rglob("*.html")}
    write_pages(out)
    assert {p: p.read_bytes() for p in out.rglob("*.html")} == before


def test_pip_resolves_from_simple_index_and_find_links(tmp_path: Path) -> None:
    wheel = make(tmp_path / "src", "buildctl-idx-probe", "0.3.0+pt213cpu")
    out = tmp_path / "wh"
    add_wheels(out, "pt213cpu", [wheel])
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    simple = (out / "pt213cpu" / "simple").as_uri()
    proc = subprocess.run(
        [*base, "--index-url", simple, "-d", str(tmp_path / "d1"), "buildctl-idx-probe==0.3.0"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "d1" / wheel.name).is_file()
    proc = subprocess.run(
        [*base, "--no-index", "--find-links", str(out / "pt213cpu" / "index.html"),
         "-d", str(tmp_path / "d2"), "buildctl-idx-probe"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "d2" / wheel.name).is_file()


def test_index_rejects_mislabelled_and_bad_wheels(tmp_path: Path) -> None:
    wrong = make(tmp_path / "src", "pkg", "1.0+pt214cu130")
    with pytest.raises(BadInput, match="labelled"):
        add_wheels(tmp_path / "out", "pt213cpu", [wrong])
    with pytest.raises(BadInput, match="label"):
        add_wheels(tmp_path / "out", "PT 213", [wrong])
    bogus = tmp_path / "src" / "pkg-1.0-py3-none-any.whl"
    bogus.write_bytes(b"not a zip")
    good = make(tmp_path / "src2", "pkg", "1.0+pt213cpu")
    with pytest.raises(BadInput):
        add_wheels(tmp_path / "out", "pt213cpu", [good, bogus])
    assert not (tmp_path / "out").exists()  # validated before anything is copied


def test_summary_table_markdown_and_rich() -> None:
    table = SummaryTable(
        rows=[
            WheelSummary(
                wheel="pagedattn-0.1.0+pt213cpu-cp311-cp311-manylinux_2_34_x86_64.whl",
                torch="2.13.0+cpu",
                size_bytes=3 * 1024**2,
                peak_rss_bytes=1536 * 1024**2,
                wall_s=123.4,
                verify="pass",
            ),
            WheelSummary(
                wheel="x|y.whl", torch="2.14.1", size_bytes=10, verify="fail", note="1 sym"
            ),
        ]
    )
    md = table.to_markdown()
    lines = md.strip().splitlines()
    assert lines[0] == "| wheel | torch | size | peak RSS | wall | verify |"
    assert "| 3.0 MiB | 1.5 GiB | 123.4 s | pass |" in lines[2]
    assert "x\\|y.whl" in lines[3] and "fail (1 sym)" in lines[3] and "| - | - |" in lines[3]
    console = Console(width=200, record=True, color_system=None)
    console.print(table.to_rich())
    text = console.export_text()
    assert "pagedattn-0.1.0+pt213cpu" in text and "1.5 GiB" in text and "fail (1 sym)" in text
