"""Opening wheels safely: every wheel buildctl reads goes through `open_wheel` first.

A wheel is user input (`buildctl verify some.whl`, a torch wheel given by path), so it is checked
before anything is extracted or written: the file name must parse as a wheel name, the zip must be
readable, and no member may escape the extraction root (`../x`, `/etc/x`, `C:\\x`).
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from buildctl.errors import BadInput


def check_member_name(name: str, wheel: Path) -> None:
    """Reject absolute paths, `..` components, backslashes and drive letters."""
    bad = (
        not name
        or name.startswith("/")
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")
        or ".." in PurePosixPath(name).parts
        or "\0" in name
    )
    if bad:
        raise BadInput(
            f"{wheel.name} has an unsafe member path {name!r} (absolute or with '..')",
            "rebuild the wheel; buildctl never extracts members outside their root",
        )


def open_wheel(path: str | Path, *, require_dist_info: bool = True) -> zipfile.ZipFile:
    """Open a wheel for reading after validating name, zip structure and member paths."""
    wheel = Path(path)
    if not wheel.is_file():
        raise BadInput(f"wheel {wheel} does not exist", "give the path of a .whl file")
    try:
        parse_wheel_filename(wheel.name)
    except InvalidWheelFilename as exc:
        raise BadInput(
            f"{wheel.name} is not a wheel file name ({exc})",
            "give a .whl named name-version-pytag-abitag-platform.whl",
        ) from None
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadInput(
            f"{wheel} is not a readable zip ({exc})", "rebuild or re-download the wheel"
        ) from None
    try:
        names = zf.namelist()
        for name in names:
            check_member_name(name, wheel)
        if require_dist_info and dist_info_dir(zf) is None:
            raise BadInput(f"{wheel.name} has no .dist-info directory", "rebuild the wheel")
    except BaseException:
        zf.close()
        raise
    return zf


def dist_info_dir(zf: zipfile.ZipFile) -> str | None:
    """The `name-version.dist-info` top-level directory, or None."""
    tops = {n.split("/", 1)[0] for n in zf.namelist() if "/" in n}
    infos = sorted(t for t in tops if t.endswith(".dist-info"))
    return infos[0] if len(infos) == 1 else None


def read_member(zf: zipfile.ZipFile, name: str, wheel: Path | str) -> bytes:
    """Read a member; a CRC or inflate error means a corrupt wheel (bad input)."""
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise BadInput(
            f"{Path(wheel).name}: member {name} is corrupt ({exc})", "rebuild the wheel"
        ) from None


def record_hash(data: bytes) -> str:
    """`sha256=<urlsafe b64, no padding>` as the wheel RECORD wants it."""
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
