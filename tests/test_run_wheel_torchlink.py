"""`buildctl wheel` labels and pins torch only for extensions that use torch: read from real
shared objects (DT_NEEDED, or undefined symbols only torch defines)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import FIXTURES, ROOT, run_buildctl

from buildctl.wheel.elfsyms import parse_elf_file
from buildctl.wheel.torchlink import links_torch, needs_torch_library, wheel_links_torch

TORCH_LIB = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
TORCH_LIB = TORCH_LIB / "site-packages" / "torch" / "lib"


def shared_object(tmp_path: Path, name: str, code: str, *link: str) -> Path:
    source = tmp_path / f"{name}.cc"
    source.write_text(code)
    out = tmp_path / f"lib{name}.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-o", str(out), str(source), *link], check=True)
    return out


def test_torch_library_names() -> None:
    assert needs_torch_library("libc10.so") and needs_torch_library("libtorch_cpu.so")
    assert not needs_torch_library("libgomp.so.1")  # OpenMP is not torch
    assert not needs_torch_library("libstdc++.so.6")


def test_plain_extension_does_not_link_torch(tmp_path: Path) -> None:
    so = shared_object(tmp_path, "plain", "#include <string>\nint f(const std::string& s)"
                       " { return (int)s.size(); }\n")
    assert links_torch([parse_elf_file(so)]) is False


@pytest.mark.skipif(not (TORCH_LIB / "libc10.so").exists(), reason="torch is not installed here")
def test_extension_needing_libc10_links_torch(tmp_path: Path) -> None:
    so = shared_object(tmp_path, "needs", "int g() { return 1; }\n",
                       "-Wl,--no-as-needed", f"-L{TORCH_LIB}", "-lc10")
    index = parse_elf_file(so)
    assert "libc10.so" in index.needed
    assert links_torch([index]) is True


def test_undefined_torch_symbol_without_dt_needed_links_torch(tmp_path: Path) -> None:
    so = shared_object(tmp_path, "sym",
                       "namespace at { void touch(); }\nvoid h() { at::touch(); }\n")
    index = parse_elf_file(so)
    assert not [n for n in index.needed if "torch" in n or "c10" in n]
    assert links_torch([index]) is True


CACHE = ROOT / ".buildctl-cache"  # shared with the other wheel tests: one torch env per session


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return zf.read(name).decode()


@pytest.mark.slow
def test_wheel_of_a_plain_extension_has_no_torch_label_or_pin(tmp_path: Path) -> None:
    out = tmp_path / "wheelhouse"
    proc = run_buildctl(
        "wheel", "--torch", "2.13.0+cpu", "--source", str(FIXTURES / "run_skbuild"), "--plain",
        "--out", str(out), "--cache-dir", str(CACHE), "-C", "cmake.build-type=RelWithDebInfo",
        "-D", "RUN_SKB_MARK=from-buildctl", timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # -C reaches the build backend and -D reaches CMake (scikit-build-core's default is Release).
    assert 'Install configuration: "RelWithDebInfo"' in proc.stdout
    written = re.findall(r"Build files have been written to: (\S+)", proc.stdout)
    assert written and all(
        "RUN_SKB_MARK:UNINITIALIZED=from-buildctl" in (Path(d) / "CMakeCache.txt").read_text()
        for d in written
    ), written
    wheels = list(out.rglob("*.whl"))
    assert len(wheels) == 1
    wheel = wheels[0]
    assert wheel.name.startswith("run_skbuild-0.1.0-"), wheel.name  # no +pt213cpu
    assert not wheel_links_torch(wheel)
    metadata = _metadata(wheel)
    assert "Requires-Dist: torch" not in metadata
    assert "Version: 0.1.0\n" in metadata
