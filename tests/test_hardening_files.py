"""Files the user shares (wheels, index pages, reports) get the umask's mode like any file they
write, and writing one fails with two lines, never a traceback: a directory named as the file, a
full disk (/dev/full, and ENOSPC at the write itself), the previous file left whole."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import tiny_cmake_project

from buildctl.cli import main
from buildctl.errors import BadInput, BuildctlError, BuildFailed
from buildctl.report import BuildReport, write_text_atomic
from buildctl.wheel.index import add_wheels
from buildctl.wheel.reproducible import write_wheel


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _wheel(dest: Path) -> Path:
    return write_wheel(dest, name="demo", version="1.0+pt213cpu", tag="py3-none-any",
                       files={"demo/__init__.py": b"X = 1\n"})


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_wheels_index_pages_and_reports_follow_the_umask(
    tmp_path: Path, mask: int, expected: int
) -> None:
    with umask(mask):
        wheel = _wheel(tmp_path / "dist")
        placed = add_wheels(tmp_path / "house", "pt213cpu", [wheel])
        report = tmp_path / "r.json"
        BuildReport(budget_bytes=1, slots=1).write(report)
    assert mode(wheel) == expected
    assert mode(placed[0]) == expected
    pages = sorted((tmp_path / "house").rglob("index.html"))
    assert len(pages) == 4
    assert all(mode(p) == expected for p in pages)
    assert mode(report) == expected


def test_a_rewritten_file_keeps_the_mode_its_owner_gave_it(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    report.write_text("{}")
    report.chmod(0o640)
    with umask(0o022):
        BuildReport(budget_bytes=1, slots=1).write(report)
    assert mode(report) == 0o640
    assert BuildReport.read(report).budget_bytes == 1


def test_a_directory_named_as_the_report_is_bad_input(tmp_path: Path) -> None:
    target = tmp_path / "reports"
    (target / "keep").mkdir(parents=True)
    with pytest.raises(BadInput) as caught:
        BuildReport(budget_bytes=1, slots=1).write(target)
    assert "is a directory" in caught.value.what and caught.value.fix
    assert (target / "keep").is_dir() and os.listdir(target) == ["keep"]


def test_a_full_device_is_a_failed_write_not_a_replaced_device(tmp_path: Path) -> None:
    # A /dev/full of our own: code that renames over its target would replace the device node.
    full = tmp_path / "full"
    try:
        os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    with pytest.raises(BuildFailed) as caught:
        write_text_atomic(full, "{}")
    assert "No space left on device" in caught.value.what
    assert stat.S_ISCHR(os.stat(full).st_mode)  # written into, never renamed over


def test_no_space_while_writing_keeps_the_previous_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "r.json"
    BuildReport(budget_bytes=7, slots=1).write(report)

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(BuildctlError) as caught:
        BuildReport(budget_bytes=9, slots=1).write(report)
    assert caught.value.exit_code == 1
    assert caught.value.render().count("\n") == 1  # what went wrong, what to do
    monkeypatch.undo()
    assert BuildReport.read(report).budget_bytes == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary left


# --- the same through `buildctl build` -----------------------------------------------------------


def _build(tmp_path: Path, *extra: str) -> list[str]:
    return ["build", "--source", str(tiny_cmake_project(tmp_path)), "--plain", *extra]


def _stderr_ok(err: str) -> None:
    assert "Traceback" not in err and 1 <= len(err.strip().splitlines()) <= 6, err


def test_report_naming_a_directory_is_refused_before_anything_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDCTL_PROFILE_DB", str(tmp_path / "profiles.sqlite"))
    reports = tmp_path / "reports"
    reports.mkdir()
    build = tmp_path / "b"
    rc = main(_build(tmp_path, "--build-dir", str(build), "--report", str(reports)))
    err = capsys.readouterr().err
    assert rc == 2, err
    _stderr_ok(err)
    assert "is a directory" in err
    assert not (build / "build.ninja").exists()  # refused up front, not after the build


def test_build_dir_naming_a_file_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDCTL_PROFILE_DB", str(tmp_path / "profiles.sqlite"))
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    rc = main(_build(tmp_path, "--build-dir", str(file)))
    err = capsys.readouterr().err
    assert rc == 2, err
    _stderr_ok(err)
    assert "not a directory" in err
    assert file.read_text() == "mine\n"


def test_no_space_for_the_lock_is_two_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDCTL_PROFILE_DB", str(tmp_path / "profiles.sqlite"))
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/.buildctl/lock"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    rc = main(_build(tmp_path, "--build-dir", str(tmp_path / "b")))
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 1, err
    _stderr_ok(err)
    assert "lock: No space left on device" in err


def test_a_full_disk_for_the_report_fails_the_run_and_keeps_the_build_dirs_report(
    tmp_path: Path,
) -> None:
    full = tmp_path / "full"
    try:
        os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    build = tmp_path / "b"
    env = {**os.environ, "BUILDCTL_PROFILE_DB": str(tmp_path / "profiles.sqlite")}
    result = subprocess.run(
        [sys.executable, "-m", "buildctl.cli", *_build(tmp_path, "--build-dir", str(build),
                                                       "--report", str(full))],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    _stderr_ok(result.stderr)
    assert "No space left on device" in result.stderr
    assert BuildReport.read(build / ".buildctl" / "report.json").status == "ok"
    assert stat.S_ISCHR(full.stat().st_mode)
