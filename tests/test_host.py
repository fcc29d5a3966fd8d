from __future__ import annotations

import pytest

from buildctl.errors import BadInput
from buildctl.host import default_budget, format_size, parse_size, probe

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
