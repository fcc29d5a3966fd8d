"""What the host offers: RAM, swap, cgroup memory limit, cores, disk, memory pressure.

Everything here reads the live system (psutil, /proc, /sys/fs/cgroup); the pure helpers
(`parse_size`, `format_size`, `default_budget`) take numbers only.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from buildctl.errors import BadInput

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}
# Build tools (make, docker, MAX_JOBS guides) use "28G" to mean GiB; so do we for bare letters.
_BINARY_SHORT = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse `28G`, `512M`, `1.5GiB`, `300MB`, `1048576` into bytes.

    Single letters (K/M/G/T) are binary, as in `make`/`docker`; `MB`/`GB` are decimal.
    """
    match = _SIZE_RE.match(str(text))
    if not match:
        raise BadInput(
            f"cannot read size {text!r}",
            "write a number with an optional unit, e.g. 28G, 512M, 1.5GiB or 300MB",
        )
    number, unit = match.groups()
    unit_key = unit.lower()
    factor = _BINARY_SHORT.get(unit_key) or _UNITS.get(unit_key)
    if factor is None:
        raise BadInput(
            f"unknown size unit {unit!r} in {text!r}",
            "use one of K, M, G, T (binary), KiB/MiB/GiB/TiB, or KB/MB/GB/TB",
        )
    return int(float(number) * factor)


def format_size(num_bytes: float) -> str:
    """Human-readable binary size: 1.5 GiB, 300 MiB."""
    value = float(num_bytes)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class HostInfo:
    total_ram_bytes: int
    available_bytes: int
    swap_total_bytes: int
    swap_free_bytes: int
    cgroup_limit_bytes: int | None
    cores: int
    disk_free_bytes: int | None = None


def default_reserve(limit_bytes: int) -> int:
    """Memory kept for the OS, the desktop and buildctl itself: 10%, within 1 to 4 GiB."""
    return int(min(max(limit_bytes * 0.10, 1024**3), 4 * 1024**3))


def default_budget(total_ram: int, cgroup_limit: int | None, low_ram: bool = False) -> int:
    """min(physical RAM, cgroup limit) minus a reserve; `low_ram` keeps a further 25% back."""
    limit = min(total_ram, cgroup_limit) if cgroup_limit else total_ram
    budget = limit - default_reserve(limit)
    if low_ram:
        budget = int(budget * 0.75)
    return max(budget, 256 * 1024**2)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    # cgroup v1 reports "unlimited" as a huge page-aligned number.
    return None if value >= 1 << 60 else value


def _memory_cgroup_dir(root: Path) -> tuple[Path, int] | None:
    """This process's memory cgroup directory and its version (2 or 1), where it has one."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hierarchy, controllers, rel = [*line.split(":", 2), "", "", ""][:3]
        rel = rel.lstrip("/")
        if hierarchy == "0" and controllers == "" and (root / rel / "memory.max").exists():
            return root / rel, 2
        if "memory" in controllers.split(","):
            for base in (root / "memory" / rel, root / "memory"):
                if (base / "memory.limit_in_bytes").exists():
                    return base, 1
    return None


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit of this process's cgroup (v2 memory.max, else v1 limit_in_bytes)."""
    found = _memory_cgroup_dir(root)
    if found is None:
        return None
    where, version = found
    return _read_int(where / ("memory.max" if version == 2 else "memory.limit_in_bytes"))


def cgroup_headroom(where: Path, version: int) -> int | None:
    """What this cgroup can still take before its limit: the limit minus what it uses, less the
    inactive file cache the kernel reclaims first (as `docker stats` counts it). None when the
    cgroup has no limit."""
    limit = _read_int(where / ("memory.max" if version == 2 else "memory.limit_in_bytes"))
    used = _read_int(where / ("memory.current" if version == 2 else "memory.usage_in_bytes"))
    if limit is None or used is None:
        return None
    inactive_key = "inactive_file" if version == 2 else "total_inactive_file"
    inactive = 0
    try:
        for line in (where / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
                break
    except (OSError, ValueError):
        pass
    return max(0, limit - max(0, used - inactive))


_CGROUP: list[tuple[Path, int] | None] = []  # looked up once: a process does not change cgroup


def available_bytes() -> int:
    """Memory a new job can still get: the host's available memory, or less where this process's
    cgroup (a container, a CI job, a systemd slice) runs out first."""
    host_available = int(psutil.virtual_memory().available)
    if not _CGROUP:
        _CGROUP.append(_memory_cgroup_dir(Path("/sys/fs/cgroup")))
    found = _CGROUP[0]
    if found is None:
        return host_available
    headroom = cgroup_headroom(*found)
    return host_available if headroom is None else min(host_available, headroom)


def probe(disk_path: str | os.PathLike[str] | None = None) -> HostInfo:
    vm = psutil.virtual_memory()
    sw = psutil.swap_memory()
    disk_free = shutil.disk_usage(disk_path).free if disk_path else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return HostInfo(
        total_ram_bytes=vm.total,
        available_bytes=available_bytes(),
        swap_total_bytes=sw.total,
        swap_free_bytes=sw.free,
        cgroup_limit_bytes=cgroup_memory_limit(),
        cores=cores or 1,
        disk_free_bytes=disk_free,
    )


def memory_pressure(path: Path = Path("/proc/pressure/memory")) -> tuple[float, float] | None:
    """(some avg10, full avg10) from PSI, or None where the kernel has no PSI."""
    try:
        text = path.read_text()
    except OSError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        for field in fields:
            key, _, val = field.partition("=")
            if key == "avg10":
                values[kind] = float(val)
    return values.get("some", 0.0), values.get("full", 0.0)
