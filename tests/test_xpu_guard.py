"""Wheels guard at import: another torch series or variant stops the import with one line
naming the torch the wheel was built for (the generated guard, against fake torch modules)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from buildctl.wheel.guard import GUARD_MODULE, IMPORT_LINE, add_import_guard, guarded_init
from buildctl.wheel.reproducible import write_entries
from buildctl.wheel.torchspec import parse_torch


@pytest.mark.parametrize(
    "text, first_code_line",
    [
        ('"""doc"""\nfrom __future__ import annotations\nimport os\n', 2),
        ("import os\n", 0),
        ("", 0),
        ('"""multi\nline"""\nX = 1', 2),
    ],
)
def test_guard_import_goes_after_docstring_and_future(text: str, first_code_line: int) -> None:
    out = guarded_init(text)
    lines = out.splitlines(keepends=True)
    assert lines[first_code_line] == IMPORT_LINE
    compile(out, "__init__.py", "exec")  # __future__ imports still first
    assert guarded_init(out) == out  # once


FAKE_TORCH = """__version__ = {version!r}
class version:
    xpu = {xpu!r}
    cuda = {cuda!r}
    hip = None
"""


def _wheel(tmp: Path, spec: str) -> Path:
    wheel = tmp / "kern-0.1.0+pt-cp311-abi3-linux_x86_64.whl"
    entries = {
        "kern/__init__.py": b'"""kern"""\nfrom __future__ import annotations\nLOADED = True\n',
        "kern-0.1.0+pt.dist-info/METADATA": b"Metadata-Version: 2.1\nName: kern\n",
        "kern-0.1.0+pt.dist-info/WHEEL": b"Wheel-Version: 1.0\n",
    }
    write_entries(wheel, entries, "kern-0.1.0+pt.dist-info", epoch=0)
    assert add_import_guard(wheel, parse_torch(spec)) == ["kern"]
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as zf:
        assert f"kern/{GUARD_MODULE}.py" in zf.namelist()
        zf.extractall(site)
    return site


def _import(site: Path, tmp: Path, version: str, xpu: str | None, cuda: str | None):
    fake = tmp / f"torch-{version}-{xpu}-{cuda}"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(
        FAKE_TORCH.format(version=version, xpu=xpu, cuda=cuda)
    )
    return subprocess.run(
        [sys.executable, "-c", "import kern; print(kern.LOADED)"],
        env={"PYTHONPATH": f"{fake}:{site}"},
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    "spec, version, xpu, cuda, loads",
    [
        ("2.12.0+xpu", "2.12.0+xpu", "20250301", None, True),
        ("2.12.0+xpu", "2.12.1+xpu", "20250301", None, True),  # same ABI series
        ("2.12.0+xpu", "2.13.0+xpu", "20260000", None, False),  # other series
        ("2.12.0+xpu", "2.12.0+cpu", None, None, False),  # other variant
        ("2.12.0+xpu", "2.12.0", None, "12.8", False),  # PyPI's CUDA build
        ("2.13.0+cpu", "2.13.0+cpu", None, None, True),
        ("2.13.0+cpu", "2.13.0+xpu", "20260000", None, False),
        ("2.13.0+cpu", "2.12.0+cpu", None, None, False),
    ],
)
def test_wheel_refuses_foreign_torch(
    tmp_path: Path, spec: str, version: str, xpu: str | None, cuda: str | None, loads: bool
) -> None:
    site = _wheel(tmp_path, spec)
    proc = _import(site, tmp_path, version, xpu, cuda)
    if loads:
        assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr
    else:
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError: kern was built for torch " + spec)
        assert version in last
