"""A bad profile DB never stops a command: corrupt files are moved aside and replaced, a DB that
cannot be written is read (into memory) while nothing is recorded, and a DB overwritten or
replaced during a build makes no call raise. Each case ends in one warning line, never a
traceback.

Read-only and full disks are real here, not mocked: tests run as root, for whom chmod blocks
nothing, so the chmod case runs its child without the capabilities that override permissions
(setpriv), the read-only filesystem is a tmpfs remounted read-only and the full disk a tiny
tmpfs, each in a private mount namespace (`unshare -m`). They are skipped where that is not
allowed."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import tiny_cmake_project

from buildctl.errors import BadInput, BuildctlError
from buildctl.govern.profiles import JobKey, ProfileDB, ProfileEntry

M = 1024**2
KEY = JobKey("CMakeFiles/t.dir/a.cpp.o", "compile", "cc")


def _entry(output: str = KEY.output, mb: int = 100) -> ProfileEntry:
    return ProfileEntry(output=output, kind="compile", compiler="cc", peak_rss_bytes=mb * M)


def _good_db(path: Path, rows: int = 1) -> bytes:
    db = ProfileDB(path)
    db.record_many([_entry(f"CMakeFiles/t.dir/f{i}.cpp.o", 10 + i) for i in range(rows - 1)])
    db.record(_entry())
    db.close()
    return path.read_bytes()


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(20_000))


def _truncated(path: Path) -> None:
    data = _good_db(path, rows=3000)
    path.write_bytes(data[: len(data) // 2])


def _header_only(path: Path) -> None:
    data = _good_db(path)
    path.write_bytes(data[:100])


def _foreign_runs_table(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "random bytes": _random_bytes,
    "truncated to half": _truncated,
    "only the header": _header_only,
    "a runs table that is not ours": _foreign_runs_table,
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_db_is_moved_aside_and_replaced(
    tmp_path: Path, corrupt: Callable[[Path], None]
) -> None:
    path = tmp_path / "profiles.sqlite"
    corrupt(path)
    bad = path.read_bytes()
    db = ProfileDB(path)
    assert len(db.warnings) == 1, db.warnings
    assert "was corrupt" in db.warnings[0] and "moved it aside" in db.warnings[0]
    aside = sorted(tmp_path.glob("profiles.sqlite.corrupt-*"))
    assert [p.name for p in aside if not p.name.endswith(("-wal", "-shm"))] == [
        aside[0].name
    ]
    assert aside[0].name[len("profiles.sqlite.corrupt-"):].count("-") == 1  # YYYYmmdd-HHMMSS
    assert aside[0].read_bytes() == bad  # kept for a bug report, not deleted
    assert db.predict(KEY).source == "prior"
    assert db.record(_entry()) and db.writable
    assert db.predict(KEY).bytes == 100 * M
    db.close()
    assert not ProfileDB(path).warnings  # the next command finds a healthy DB


def test_an_empty_file_is_a_fresh_db_not_a_corrupt_one(tmp_path: Path) -> None:
    path = tmp_path / "profiles.sqlite"
    path.write_bytes(b"")
    db = ProfileDB(path)
    assert not db.warnings and db.record(_entry())
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_builds_opening_a_corrupt_db_at_once_move_it_aside_once(tmp_path: Path) -> None:
    path = tmp_path / "profiles.sqlite"
    _random_bytes(path)
    with ThreadPoolExecutor(4) as pool:
        dbs = list(pool.map(lambda _: ProfileDB(path), range(4)))
    warnings = [line for db in dbs for line in db.warnings]
    aside = sorted(p.name for p in tmp_path.glob("*.corrupt-*"))
    assert len(warnings) == 1, (warnings, aside)
    assert len([name for name in aside if not name.endswith(("-wal", "-shm", "-journal"))]) \
        == 1, aside
    for n, db in enumerate(dbs):
        assert db.record(_entry(f"o{n}.o"))
    assert len(dbs[0].latest()) == 4  # all on the same fresh file


def test_a_db_overwritten_with_garbage_mid_build(tmp_path: Path) -> None:
    """Another process (or a bad disk) overwrites the file while a build holds it open: no call
    raises, and the next command starts from a usable DB."""
    path = tmp_path / "profiles.sqlite"
    db = ProfileDB(path)
    assert db.record(_entry())
    with open(path, "r+b") as f:
        f.write(os.urandom(path.stat().st_size))
    for n in range(5):
        db.record(_entry(f"later{n}.o"))  # True or False: never raises
        db.predict(JobKey(f"later{n}.o", "compile", "cc"))
        db.latest()
    db.close()
    after = ProfileDB(path)
    assert after.record(_entry("next.o"))
    assert after.predict(JobKey("next.o", "compile", "cc")).bytes == 100 * M
    assert len(after.warnings) <= 1


@pytest.mark.parametrize("replacement", [b"", b"garbage" * 1000], ids=["empty", "garbage"])
def test_a_db_replaced_mid_build_is_followed(tmp_path: Path, replacement: bytes) -> None:
    """The file is replaced by a new one (a CI cache restore, `mv`): records go to the file that
    is there now, not to the unlinked one."""
    path = tmp_path / "profiles.sqlite"
    db = ProfileDB(path)
    assert db.record(_entry("before.o"))
    new = tmp_path / "incoming"
    new.write_bytes(replacement)
    os.replace(new, path)
    for side in ("-wal", "-shm"):
        Path(f"{path}{side}").unlink(missing_ok=True)
    assert db.record(_entry("after.o"))
    db.close()
    outputs = {e.output for e in ProfileDB(path).latest()}
    assert outputs == {"after.o"}


def test_a_deleted_db_is_recreated_on_the_next_record(tmp_path: Path) -> None:
    path = tmp_path / "profiles.sqlite"
    db = ProfileDB(path)
    db.record(_entry("before.o"))
    for side in ("", "-wal", "-shm"):
        Path(f"{path}{side}").unlink(missing_ok=True)
    assert db.record(_entry("after.o"))
    assert path.exists() and not db.warnings


def test_a_directory_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as err:
        ProfileDB(tmp_path)
    assert "is a directory" in err.value.what and "--profiles" in err.value.fix


def test_a_device_or_a_pipe_is_bad_input_and_left_alone(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (Path("/dev/null"), fifo):
        with pytest.raises(BadInput) as err:
            ProfileDB(path)
        assert "not a regular file" in err.value.what
    assert Path("/dev/null").exists() and not list(Path("/dev").glob("null.corrupt-*"))


def test_a_db_whose_directory_cannot_be_created_predicts_without_recording(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    db = ProfileDB(blocker / "sub" / "profiles.sqlite")
    assert db.predict(KEY).source == "prior"
    assert db.record(_entry()) is False
    assert db.record(_entry()) is False
    assert len(db.warnings) == 1 and db.warnings[0].startswith("not recording profiles: ")
    assert "fix:" in db.warnings[0] and "\n" not in db.warnings[0]


def test_an_import_into_a_db_that_cannot_be_written_fails_with_the_reason(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    db = ProfileDB(blocker / "profiles.sqlite")
    export = '{"schema": "buildctl.profiles/2", "entries": [{"output": "a.o", "kind": "compile",' \
        ' "compiler": "cc", "peak_rss_bytes": 5}]}'
    with pytest.raises(BuildctlError) as err:
        db.import_json(export, "x.json")
    assert err.value.exit_code == 1 and not isinstance(err.value, BadInput)
    assert "cannot create" in err.value.what and "writable" in err.value.fix


# -- real read-only and full filesystems, in a private mount namespace ---------------------------

# Runs in the child: open a DB that was written before the filesystem turned read-only or full,
# and report what a build would see.
_CHILD = textwrap.dedent("""
    import json, os, subprocess, sys
    from pathlib import Path
    from buildctl.govern.profiles import JobKey, ProfileDB, ProfileEntry
    M = 1024**2
    where, mode = Path(sys.argv[1]), sys.argv[2]
    def entry(output, mb=100, pad=""):
        return ProfileEntry(output=output + pad, kind="compile", compiler="cc",
                            peak_rss_bytes=mb * M, curve=[(t, t * M) for t in range(64)])
    db = ProfileDB(where / "p.sqlite")
    assert db.record(entry("a.o"))
    if mode == "ro":
        db.close()
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        db = ProfileDB(where / "p.sqlite")
    elif mode in ("full", "full-before-open"):
        if mode == "full-before-open":  # the next build opens a DB on a disk that filled up
            db.close()
        fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError:
            pass
        os.close(fd)
        if mode == "full-before-open":
            db = ProfileDB(where / "p.sqlite")
    recorded = [db.record(entry("b.o", 7, pad="x" * 2000 * n)) for n in range(1, 30)]
    print(json.dumps({
        "old": db.predict(JobKey("a.o", "compile", "cc")).bytes,
        "recorded": recorded,
        "this_build": db.predict(JobKey("b.o" + "x" * 2000, "compile", "cc")).bytes,
        "warnings": db.warnings,
    }))
""")


def _in_mount_namespace(tmp_path: Path, size: str, mode: str) -> dict:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a private tmpfs")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m not allowed here: {probe.stderr.decode().strip()}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f'mount -t tmpfs -o size={size} tmpfs "$1" && exec "$2" "$3" "$1" "$4"',
         "sh", str(mnt), sys.executable, str(script), mode],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if result.returncode != 0 and "mount" in result.stderr and "Traceback" not in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_a_read_only_filesystem_predicts_from_what_is_there(tmp_path: Path) -> None:
    seen = _in_mount_namespace(tmp_path, "4m", "ro")
    assert seen["old"] == 100 * M
    assert not any(seen["recorded"])
    assert len(seen["warnings"]) == 1 and seen["warnings"][0].startswith("not recording")
    assert "writable" in seen["warnings"][0]
    assert seen["this_build"] == 7 * M  # this build's own runs still help it (in memory)


def test_a_full_disk_stops_recording_not_the_build(tmp_path: Path) -> None:
    seen = _in_mount_namespace(tmp_path, "256k", "full")
    assert seen["old"] == 100 * M
    assert seen["recorded"][-1] is False  # the disk filled up at some record
    assert len(seen["warnings"]) == 1 and "free space" in seen["warnings"][0]


def test_a_disk_full_before_the_db_is_opened_says_to_free_space(tmp_path: Path) -> None:
    """sqlite calls this a "disk I/O error" (it cannot size its WAL index): the warning must
    still name the full disk and say to free space, not to make the file writable."""
    seen = _in_mount_namespace(tmp_path, "256k", "full-before-open")
    assert seen["old"] == 100 * M  # what was recorded before is still read
    assert not any(seen["recorded"])
    (warning,) = seen["warnings"]
    assert warning.startswith("not recording profiles") and "disk is full" in warning, warning
    assert "free space" in warning and "writable" not in warning, warning


def test_a_read_only_file_and_directory_as_chmod_makes_them(tmp_path: Path) -> None:
    """chmod 0444 on the file and 0555 on its directory, as production meets them. Root ignores
    permissions, so the child runs without the capabilities that let it (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH), as any other user would."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to drop the permission-override capabilities")
    where = tmp_path / "cache"
    where.mkdir()
    before = _good_db(where / "p.sqlite")
    (where / "p.sqlite").chmod(0o444)
    where.chmod(0o555)
    code = (
        "import json; from pathlib import Path;"
        "from buildctl.govern.profiles import JobKey, ProfileDB, ProfileEntry;"
        f"db = ProfileDB(Path({str(where / 'p.sqlite')!r}));"
        "ok = db.record(ProfileEntry(output='n.o', kind='compile', compiler='cc',"
        " peak_rss_bytes=5));"
        f"print(json.dumps([db.predict(JobKey({KEY.output!r}, 'compile', 'cc')).bytes,"
        " ok, db.warnings]))"
    )
    caps = "-dac_override,-dac_read_search"
    try:
        result = subprocess.run(
            [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", sys.executable, "-c", code],
            capture_output=True, text=True, timeout=60, check=False,
        )
    finally:
        where.chmod(0o755)
    if result.returncode != 0 and "setpriv" in result.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    old, recorded, warnings = json.loads(result.stdout)
    assert old == 100 * M and recorded is False
    assert len(warnings) == 1 and warnings[0].startswith("not recording profiles")
    assert (where / "p.sqlite").read_bytes() == before


# -- the same through `buildctl build`: the build goes on, and says so once ----------------------


def _fill_disk_then(mnt: Path, argv: list[str]) -> list[str]:
    """argv run in a private mount namespace with a tiny tmpfs at `mnt` that is already full
    but for a profile DB written before it filled up."""
    fill = (f"{sys.executable} -c \"from buildctl.govern.profiles import ProfileDB; "
            f"ProfileDB(__import__('pathlib').Path('{mnt}/p.sqlite')).close()\" && "
            f"(dd if=/dev/zero of={mnt}/filler bs=4k 2>/dev/null; true)")
    return ["unshare", "-m", "sh", "-c",
            f'mount -t tmpfs -o size=256k tmpfs "{mnt}" && {fill} && exec "$@"', "sh", *argv]


@pytest.mark.parametrize("state", ["corrupt", "cannot be created", "disk full"])
def test_a_build_with_a_bad_profile_db_succeeds_and_says_so_once(
    tmp_path: Path, state: str
) -> None:
    src = tiny_cmake_project(tmp_path)
    mnt = tmp_path / "mnt"
    db_path = {"corrupt": tmp_path / "profiles.sqlite",
               "cannot be created": tmp_path / "a-file" / "profiles.sqlite",
               "disk full": mnt / "p.sqlite"}[state]
    argv = [sys.executable, "-m", "buildctl", "build", "--source", str(src), "--build-dir",
            str(tmp_path / "b"), "--plain", "--profiles", str(db_path)]
    if state == "corrupt":
        db_path.write_bytes(os.urandom(8192))
    elif state == "cannot be created":
        (tmp_path / "a-file").write_text("x")
    else:
        if os.geteuid() != 0 or not shutil.which("unshare"):
            pytest.skip("needs root and unshare for a private tmpfs")
        if subprocess.run(["unshare", "-m", "true"], capture_output=True,
                          check=False).returncode != 0:
            pytest.skip("unshare -m not allowed here")
        mnt.mkdir()
        argv = _fill_disk_then(mnt, argv)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                            env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Traceback" not in out
    said = [line for line in out.splitlines() if "profile" in line.lower()
            and ("corrupt" in line or "not recording" in line)]
    expected = {"corrupt": "moved it aside", "cannot be created": "not recording profiles",
                "disk full": "free space"}[state]
    assert len(said) == 1 and expected in said[0], out
    report = json.loads((tmp_path / "b" / ".buildctl" / "report.json").read_text())
    assert report["status"] == "ok"
    assert [e["detail"] for e in report["events"] if e["kind"] == "info"] == [
        said[0].split(": ", 1)[1]]
    if state == "corrupt":
        assert len(list(tmp_path.glob("profiles.sqlite.corrupt-*"))) == 1
        assert ProfileDB(db_path).latest()  # this build's jobs were recorded in the fresh DB
