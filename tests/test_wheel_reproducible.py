"""Deterministic wheels, RECORD validity, and BUILD-PROVENANCE.json."""

from __future__ import annotations

import csv
import io
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from buildctl.errors import BadInput
from buildctl.wheel.provenance import (
    PROVENANCE_NAME,
    BuildProvenance,
    SourceRef,
    TorchIdentity,
    add_provenance,
    compiler_identity,
    patch_records,
    read_provenance,
)
from buildctl.wheel.reproducible import (
    ZIP_EPOCH_MIN,
    normalize_wheel,
    source_date_epoch,
    write_wheel,
)
from buildctl.wheel.wheelzip import record_hash

ELF_BYTES = b"\x7fELF" + b"\0" * 60


def sample(tmp: Path, epoch: int | None = 1_700_000_000) -> Path:
    return write_wheel(
        tmp,
        name="Demo_Pkg",
        version="0.1.0+pt213cpu",
        tag="cp311-cp311-linux_x86_64",
        files={
            "demo_pkg/__init__.py": b"x = 1\n",
            "demo_pkg/_C.so": ELF_BYTES,
            "demo_pkg/data/b.txt": b"b",
            "demo_pkg/data/a.txt": b"a",
        },
        requires_dist=["torch==2.13.0"],
        epoch=epoch,
    )


def check_record(wheel: Path) -> list[str]:
    """Assert RECORD lists every member with the right hash and size; return member order."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        record_name = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = list(csv.reader(io.StringIO(zf.read(record_name).decode())))
        listed = {r[0]: r for r in rows}
        assert set(listed) == set(names)
        for name in names:
            if name == record_name:
                assert listed[name][1:] == ["", ""]
                continue
            data = zf.read(name)
            assert listed[name][1] == record_hash(data) and listed[name][2] == str(len(data))
    return names


def test_write_wheel_layout(tmp_path: Path) -> None:
    wheel = sample(tmp_path)
    assert wheel.name == "demo_pkg-0.1.0+pt213cpu-cp311-cp311-linux_x86_64.whl"
    names = check_record(wheel)
    assert names[-1] == "demo_pkg-0.1.0+pt213cpu.dist-info/RECORD"
    assert names[:4] == sorted(names[:4])  # payload sorted, dist-info last
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read("demo_pkg-0.1.0+pt213cpu.dist-info/METADATA").decode()
        assert "Name: demo-pkg" in meta and "Requires-Dist: torch==2.13.0" in meta
        wheel_file = zf.read("demo_pkg-0.1.0+pt213cpu.dist-info/WHEEL").decode()
        assert "Root-Is-Purelib: false" in wheel_file
        assert "Tag: cp311-cp311-linux_x86_64" in wheel_file
        modes = {i.filename: stat.S_IMODE(i.external_attr >> 16) for i in zf.infolist()}
        assert modes["demo_pkg/_C.so"] == 0o755 and modes["demo_pkg/__init__.py"] == 0o644
        assert {i.date_time for i in zf.infolist()} == {(2023, 11, 14, 22, 13, 20)}


def test_record_is_written_by_wheelfile_and_reads_back_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wheel.wheelfile import WheelFile

    # A member name with a comma must be quoted in RECORD (CSV), or installers misread it.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")  # `epoch=` wins for every member
    wheel = write_wheel(tmp_path, name="demo", version="1.0", tag="py3-none-any",
                        files={"demo/a,b.txt": b"ab", "demo/__init__.py": b""},
                        epoch=1_700_000_000)
    assert check_record(wheel)[-1] == "demo-1.0.dist-info/RECORD"
    with WheelFile(wheel) as wf:  # checks every member against its RECORD hash
        assert wf.read("demo/a,b.txt") == b"ab"
        assert {i.date_time for i in wf.infolist()} == {(2023, 11, 14, 22, 13, 20)}
        record = wf.getinfo("demo-1.0.dist-info/RECORD")
        assert stat.S_IMODE(record.external_attr >> 16) == 0o644
    # Its RECORD is read back as CSV too: a changed member under a quoted name is refused.
    tampered = tmp_path / "t" / wheel.name
    tampered.parent.mkdir()
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, b"XX" if info.filename == "demo/a,b.txt" else src.read(info))
    with pytest.raises(BadInput, match="RECORD hash"):
        normalize_wheel(tampered, tmp_path / "n" / wheel.name)


def test_same_inputs_byte_identical(tmp_path: Path) -> None:
    a = sample(tmp_path / "a")
    b = sample(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()


def test_normalize_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    # A messy wheel: random order, directory entries, current timestamps, odd modes, stale RECORD.
    messy = tmp_path / "in" / "demo-1.0-py3-none-any.whl"
    messy.parent.mkdir()
    with zipfile.ZipFile(messy, "w") as zf:
        for name, data in [
            ("demo-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"),
            ("demo/", b""),
            ("demo/z.py", b"z"),
            ("demo-1.0.dist-info/RECORD", b"demo/z.py,,\n"),
            ("demo/a.py", b"a"),
            ("demo-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\nTag: py3-none-any\n"),
        ]:
            info = zipfile.ZipInfo(name, date_time=(2024, 5, 6, 7, 8, 9))
            info.external_attr = 0o600 << 16
            zf.writestr(info, data)
    one = normalize_wheel(messy, tmp_path / "one" / messy.name, epoch=1_600_000_000)
    two = normalize_wheel(messy, tmp_path / "two" / messy.name, epoch=1_600_000_000)
    assert one.read_bytes() == two.read_bytes()
    again = normalize_wheel(one, tmp_path / "three" / messy.name, epoch=1_600_000_000)
    assert again.read_bytes() == one.read_bytes()
    names = check_record(one)
    assert "demo/" not in names and names[:2] == ["demo/a.py", "demo/z.py"]
    other_epoch = normalize_wheel(messy, tmp_path / "four" / messy.name, epoch=1_700_000_000)
    assert other_epoch.read_bytes() != one.read_bytes()


def test_normalized_wheel_installs(tmp_path: Path) -> None:
    wheel = normalize_wheel(sample(tmp_path / "w"))
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
         str(target), "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (target / "demo_pkg" / "__init__.py").read_text() == "x = 1\n"


def test_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert source_date_epoch() == ZIP_EPOCH_MIN
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert source_date_epoch() == 1_700_000_000
    assert source_date_epoch(5) == ZIP_EPOCH_MIN  # zip cannot hold 1970
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(BadInput):
        source_date_epoch()


def test_normalize_rejects_tampered_record_and_bad_paths(tmp_path: Path) -> None:
    wheel = sample(tmp_path / "w")
    tampered = tmp_path / "t" / wheel.name
    tampered.parent.mkdir()
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "demo_pkg/__init__.py":
                data = b"x = 2\n"
            dst.writestr(info, data)
    with pytest.raises(BadInput, match="RECORD hash"):
        normalize_wheel(tampered, tmp_path / "out" / wheel.name)
    evil = tmp_path / "e" / "evil-1.0-py3-none-any.whl"
    evil.parent.mkdir()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.py", b"")
        zf.writestr("evil-1.0.dist-info/METADATA", b"")
    with pytest.raises(BadInput, match="unsafe"):
        normalize_wheel(evil, tmp_path / "out2" / evil.name)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
    with pytest.raises(BadInput):
        write_wheel(tmp_path, name="bad name", version="1.0", tag="py3-none-any", files={})
    with pytest.raises(BadInput):
        write_wheel(tmp_path, name="ok", version="1.0", tag="nonsense", files={})


def _provenance(tmp_path: Path) -> BuildProvenance:
    patch = tmp_path / "0001-guard-h576.patch"
    patch.write_text("--- a/x\n+++ b/x\n")
    return BuildProvenance(
        source=SourceRef(project="pagedattn", url="bundled", ref="v0.1.0", commit="abc123"),
        patches=patch_records([patch]),
        compilers={"CXX": compiler_identity("g++")},
        torch=TorchIdentity(version="2.13.0+cpu", cxx11_abi=True, variant="cpu"),
        cmake_defines={"CMAKE_BUILD_TYPE": "Release", "PAGEDATTN_CONFIG": "small"},
        source_date_epoch=1_700_000_000,
    )


def test_add_provenance_keeps_record_valid_and_reproducible(tmp_path: Path) -> None:
    prov = _provenance(tmp_path)
    assert "g++" in prov.compilers["CXX"].version or "c++" in prov.compilers["CXX"].version
    assert (
        Path(prov.compilers["CXX"].path).is_absolute() and len(prov.compilers["CXX"].sha256) == 64
    )
    wheel = sample(tmp_path / "w")
    out_a = add_provenance(wheel, prov, tmp_path / "a" / wheel.name)
    out_b = add_provenance(sample(tmp_path / "w2"), prov, tmp_path / "b" / wheel.name)
    assert out_a.read_bytes() == out_b.read_bytes()
    names = check_record(out_a)
    assert f"demo_pkg-0.1.0+pt213cpu.dist-info/{PROVENANCE_NAME}" in names
    back = read_provenance(out_a)
    assert back == prov
    assert back.patches[0].name == "0001-guard-h576.patch" and len(back.patches[0].sha256) == 64
    raw = zipfile.ZipFile(out_a).read(f"demo_pkg-0.1.0+pt213cpu.dist-info/{PROVENANCE_NAME}")
    assert b'"schema": "buildctl.provenance/1"' in raw
    # Adding again replaces (not duplicates) and stays byte-identical.
    twice = add_provenance(out_a, prov, tmp_path / "c" / wheel.name)
    assert twice.read_bytes() == out_a.read_bytes()
    assert read_provenance(sample(tmp_path / "plain")) is None


def test_add_provenance_in_place_records_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1650000000")
    prov = _provenance(tmp_path).model_copy(update={"source_date_epoch": None})
    wheel = sample(tmp_path / "w")
    copy = tmp_path / "copy.whl"
    shutil.copy(wheel, copy)
    assert add_provenance(wheel, prov) == wheel
    back = read_provenance(wheel)
    assert back is not None and back.source_date_epoch == 1_650_000_000
    assert wheel.read_bytes() != copy.read_bytes()
    assert not [p for p in wheel.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_provenance_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput):
        patch_records([tmp_path / "missing.patch"])
    with pytest.raises(BadInput):
        compiler_identity("no-such-compiler-xyz")
    assert os.path.exists(compiler_identity("gcc").path)
