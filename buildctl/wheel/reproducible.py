"""Deterministic wheels: same inputs -> byte-identical `.whl`.

A wheel's bytes depend on member order, timestamps, permissions, compression and the RECORD. Here
all of them are fixed: members sorted (the `.dist-info` last and RECORD very last, as the wheel
spec recommends for streaming installers), every timestamp = SOURCE_DATE_EPOCH (default
1980-01-01, the earliest a zip can store), modes 0755 for ELF files and scripts and 0644 for the
rest, deflate level 6 (zlib's default), no directory entries. The zip and its RECORD (hashes,
sizes, CSV quoting, in member order) are written by wheel's `WheelFile`; only the stamp and mode
of each member, RECORD included, are ours.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.tags import parse_tag
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from wheel.wheelfile import WheelError, WheelFile

import buildctl
from buildctl.errors import BadInput
from buildctl.report import shared_file_mode
from buildctl.wheel.elfsyms import is_elf
from buildctl.wheel.wheelzip import (
    check_member_name,
    dist_info_dir,
    open_wheel,
    read_member,
    record_hash,
)

ZIP_EPOCH_MIN = 315532800  # 1980-01-01T00:00:00Z
_SIGNATURES = ("RECORD.jws", "RECORD.p7s")


def source_date_epoch(value: int | None = None) -> int:
    """The timestamp for every member: `value`, else $SOURCE_DATE_EPOCH, else 1980-01-01."""
    if value is None:
        raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        if raw:
            try:
                value = int(raw)
            except ValueError:
                raise BadInput(
                    f"SOURCE_DATE_EPOCH={raw!r} is not an integer",
                    "set it to seconds since 1970, e.g. 1700000000",
                ) from None
    if value is None:
        return ZIP_EPOCH_MIN
    return max(int(value), ZIP_EPOCH_MIN)  # zip cannot store dates before 1980


def _mode(name: str, data: bytes) -> int:
    executable = is_elf(data[:4]) or "/scripts/" in name or data[:2] == b"#!"
    return 0o755 if executable else 0o644


def _order(names: list[str], dist_info: str) -> list[str]:
    record = f"{dist_info}/RECORD"
    body = sorted(n for n in names if not n.startswith(dist_info + "/"))
    meta = sorted(n for n in names if n.startswith(dist_info + "/") and n != record)
    return [*body, *meta, record]


def _member(name: str, data: bytes, stamp: tuple[int, ...]) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=stamp)  # type: ignore[arg-type]
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix, so external_attr carries the mode
    info.external_attr = (0o100000 | _mode(name, data)) << 16
    return info


class _StampedWheelFile(WheelFile):
    """wheel's WheelFile, with the RECORD it writes on close stamped like every other member
    (it would take the time from the environment) and kept in the archive's own dist-info."""

    def __init__(self, path: Path, dist_info: str, stamp: tuple[int, ...]) -> None:
        super().__init__(path, "w")
        self.dist_info_path = dist_info  # whatever case the file name spells it in
        self.record_path = f"{dist_info}/RECORD"
        self._stamp = stamp

    def writestr(self, zinfo_or_arcname: Any, data: Any, compress_type: int | None = None
                 ) -> None:
        if isinstance(zinfo_or_arcname, str):  # the RECORD, from close()
            raw = data.encode() if isinstance(data, str) else bytes(data)
            zinfo_or_arcname = _member(zinfo_or_arcname, raw, self._stamp)
        super().writestr(zinfo_or_arcname, data, compress_type)


def write_entries(
    dst: Path, entries: Mapping[str, bytes], dist_info: str, *, epoch: int | None = None
) -> Path:
    """Write `entries` (arcname -> bytes, RECORD excluded) as a deterministic wheel at `dst`."""
    stamp = time.gmtime(source_date_epoch(epoch))[:6]
    record_name = f"{dist_info}/RECORD"
    files = {n: d for n, d in entries.items() if n != record_name and not n.endswith(_SIGNATURES)}
    for name in files:
        check_member_name(name, dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # WheelFile wants the wheel's own name: written in a private folder, then moved.
    tmp_dir = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    tmp = tmp_dir / dst.name
    try:
        try:
            with _StampedWheelFile(tmp, dist_info, stamp) as zf:
                for name in _order(list(files), dist_info)[:-1]:  # RECORD: WheelFile's own
                    zf.writestr(_member(name, files[name], stamp), files[name])
        except WheelError as exc:
            raise BadInput(f"cannot write {dst.name}: {exc}",
                           "name the wheel NAME-VERSION-PYTAG-ABITAG-PLATFORM.whl") from None
        os.chmod(tmp, shared_file_mode(dst))  # wheels are shared
        os.replace(tmp, dst)  # atomic: a crash never leaves half a wheel under the real name
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return dst


def read_entries(wheel: Path, *, check_record: bool = True) -> tuple[dict[str, bytes], str]:
    """All file members of a (validated) wheel and its dist-info dir name.

    With `check_record`, every RECORD hash must match: a wheel whose contents disagree with its
    RECORD is corrupt, and normalizing it would launder that.
    """
    with open_wheel(wheel) as zf:
        dist_info = dist_info_dir(zf)
        assert dist_info is not None  # open_wheel checked it
        entries = {
            i.filename: read_member(zf, i.filename, wheel) for i in zf.infolist() if not i.is_dir()
        }
    record = entries.get(f"{dist_info}/RECORD")
    if check_record and record is not None:
        for parts in csv.reader(io.StringIO(record.decode("utf-8", "replace"))):
            if len(parts) != 3 or not parts[1]:
                continue
            name, digest, _size = parts
            if (
                name in entries
                and digest.startswith("sha256=")
                and record_hash(entries[name]) != digest
            ):
                raise BadInput(
                    f"{wheel.name}: {name} does not match its RECORD hash", "rebuild the wheel"
                )
    return entries, dist_info


def normalize_wheel(
    src: str | Path, dst: str | Path | None = None, *, epoch: int | None = None
) -> Path:
    """Rewrite a wheel deterministically (in place when `dst` is None)."""
    source = Path(src)
    entries, dist_info = read_entries(source)
    return write_entries(Path(dst) if dst is not None else source, entries, dist_info, epoch=epoch)


def _escape(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def write_wheel(
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    tag: str,
    files: Mapping[str, bytes | Path],
    requires_dist: list[str] | None = None,
    metadata: Mapping[str, str] | None = None,
    epoch: int | None = None,
) -> Path:
    """Write a minimal valid wheel from `files` (arcname -> bytes or a path to read).

    For small projects (test fixtures, a prebuilt extension); real projects go through
    scikit-build-core and are then passed through `normalize_wheel`.
    """
    if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$", name):
        raise BadInput(f"project name {name!r} is not valid", "use letters, digits, '.', '-', '_'")
    try:
        ver = Version(version)
    except InvalidVersion:
        raise BadInput(f"version {version!r} is not PEP 440", "fix the version") from None
    try:
        parsed = parse_tag(tag)
    except ValueError:
        raise BadInput(
            f"wheel tag {tag!r} is not valid", "use e.g. cp311-cp311-linux_x86_64"
        ) from None
    dist_info = f"{_escape(name)}-{ver}.dist-info"
    entries: dict[str, bytes] = {}
    for arcname, content in files.items():
        entries[arcname] = content.read_bytes() if isinstance(content, Path) else content
    meta_lines = ["Metadata-Version: 2.1", f"Name: {canonicalize_name(name)}", f"Version: {ver}"]
    for key, value in (metadata or {}).items():
        meta_lines.append(f"{key}: {value}")
    meta_lines += [f"Requires-Dist: {req}" for req in requires_dist or []]
    entries[f"{dist_info}/METADATA"] = ("\n".join(meta_lines) + "\n").encode()
    purelib = all(t.abi == "none" and t.platform == "any" for t in parsed)
    wheel_lines = [
        "Wheel-Version: 1.0",
        f"Generator: buildctl {buildctl.__version__}",
        f"Root-Is-Purelib: {'true' if purelib else 'false'}",
        *(f"Tag: {t}" for t in sorted(str(t) for t in parsed)),
    ]
    entries[f"{dist_info}/WHEEL"] = ("\n".join(wheel_lines) + "\n").encode()
    filename = f"{_escape(name)}-{ver}-{tag}.whl"
    return write_entries(Path(out_dir) / filename, entries, dist_info, epoch=epoch)
