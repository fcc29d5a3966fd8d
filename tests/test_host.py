from __future__ import annotations

from pathlib import Path

import pytest

from buildctl.errors import BadInput
from buildctl.host import (
    available_bytes,
    cgroup_headroom,
    default_budget,
    format_size,
    parse_size,
    probe,
)

G = 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("28G", 28 * G),
        ("512M", 512 * 1024**2),
        ("1.5GiB", int(1.5 * G)),
        ("300MB", 300_000_000),
        ("1048576", 1048576),
        ("2g", 2 * G),
        (" 4 GiB ", 4 * G),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "banana", "12X", "1.2.3G", "-5G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(BadInput) as err:
        parse_size(text)
    assert err.value.fix


def test_format_size() -> None:
    assert format_size(1536 * 1024**2) == "1.5 GiB"
    assert format_size(10) == "10 B"


def test_default_budget_respects_cgroup_and_low_ram() -> None:
    assert default_budget(32 * G, None) == 32 * G - int(3.2 * G)
    assert default_budget(32 * G, 16 * G) == 16 * G - int(1.6 * G)
    assert default_budget(32 * G, None, low_ram=True) < default_budget(32 * G, None)
    assert default_budget(8 * G, None) == 7 * G  # reserve floor of 1 GiB


def test_probe_reads_this_host() -> None:
    info = probe("/")
    assert info.total_ram_bytes > 0 and info.cores >= 1
    assert info.available_bytes <= info.total_ram_bytes
    assert info.disk_free_bytes and info.disk_free_bytes > 0


def _cgroup_files(where: Path, files: dict[str, str]) -> Path:
    where.mkdir(parents=True)
    for name, text in files.items():
        (where / name).write_text(text)
    return where


def test_cgroup_headroom_v2_counts_inactive_file_cache_as_free(tmp_path: Path) -> None:
    where = _cgroup_files(tmp_path / "v2", {
        "memory.max": f"{8 * G}\n", "memory.current": f"{6 * G}\n",
        "memory.stat": f"anon {4 * G}\nfile {2 * G}\ninactive_file {G}\nactive_file {G}\n",
    })
    assert cgroup_headroom(where, 2) == 8 * G - (6 * G - G)


def test_cgroup_headroom_v1_and_unlimited(tmp_path: Path) -> None:
    where = _cgroup_files(tmp_path / "v1", {
        "memory.limit_in_bytes": f"{4 * G}\n", "memory.usage_in_bytes": f"{3 * G}\n",
        "memory.stat": f"cache 100\ninactive_file 5\ntotal_inactive_file {G // 2}\n",
    })
    assert cgroup_headroom(where, 1) == 4 * G - (3 * G - G // 2)
    (where / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert cgroup_headroom(where, 1) is None
    over = _cgroup_files(tmp_path / "over", {"memory.max": "100\n", "memory.current": "200\n"})
    assert cgroup_headroom(over, 2) == 0  # never negative; no memory.stat: no cache counted
    unlimited = _cgroup_files(tmp_path / "max", {"memory.max": "max\n", "memory.current": "1\n"})
    assert cgroup_headroom(unlimited, 2) is None


def test_available_never_exceeds_the_hosts() -> None:
    import psutil

    assert 0 < available_bytes() <= psutil.virtual_memory().total
