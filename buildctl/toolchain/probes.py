"""Probes that run code we do not trust in a child process: torch of the target Python, the
Intel runtime wheels installed next to it, the Level Zero loader.

A broken torch (missing libsycl, ABI mismatch) or a crashing GPU driver must not take buildctl
down, so each probe runs a small script with a timeout and reports what it could read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field

from buildctl.toolchain.runtime_wheels import COMPILER_RUNTIME_DISTS

# Extra wheels worth showing next to the compiler runtime (not version-coupled to the compiler).
OTHER_RUNTIME_DISTS = ("intel-pti", "oneccl", "oneccl-devel", "impi-rt", "tcmlib", "umf")

_TORCH_SCRIPT = r"""
import json, sys
out = {"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable}
try:
    from importlib import metadata
    dists = {}
    for name in NAMES:
        try:
            dists[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out["dists"] = dists
except Exception as exc:  # noqa: BLE001
    out["dists_error"] = repr(exc)
if WANT_TORCH:
    try:
        import torch
        out["torch"] = torch.__version__
        out["xpu_version"] = getattr(torch.version, "xpu", None)
        out["cxx11_abi"] = bool(torch.compiled_with_cxx11_abi())
        xpu = getattr(torch, "xpu", None)
        try:
            out["xpu_available"] = bool(xpu is not None and xpu.is_available())
            out["xpu_devices"] = [
                xpu.get_device_name(i) for i in range(xpu.device_count())
            ] if out["xpu_available"] else []
        except Exception as exc:  # noqa: BLE001
            out["xpu_error"] = repr(exc)
    except Exception as exc:  # noqa: BLE001
        out["torch_error"] = "%s: %s" % (type(exc).__name__, exc)
print("BUILDCTL_PROBE " + json.dumps(out))
"""


@dataclass
class TorchProbe:
    python: str  # the interpreter asked
    python_version: str | None = None
    torch: str | None = None
    xpu_version: str | None = None  # torch.version.xpu, e.g. "20250301"
    cxx11_abi: bool | None = None
    xpu_available: bool | None = None
    xpu_devices: list[str] = field(default_factory=list)
    dists: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # the interpreter or torch could not be probed


def _script(want_torch: bool) -> str:
    names = list(COMPILER_RUNTIME_DISTS) + list(OTHER_RUNTIME_DISTS)
    return f"NAMES = {names!r}\nWANT_TORCH = {want_torch!r}\n" + _TORCH_SCRIPT


def _run(python: str, want_torch: bool, timeout: float) -> tuple[dict[str, object] | None, str]:
    try:
        proc = subprocess.run(
            [python, "-c", _script(want_torch)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except FileNotFoundError:
        return None, f"python {python} not found"
    except subprocess.TimeoutExpired:
        return None, f"{python} did not answer within {timeout:.0f}s (importing torch hung?)"
    except OSError as exc:
        return None, f"cannot run {python}: {exc}"
    for line in proc.stdout.splitlines():
        if line.startswith("BUILDCTL_PROBE "):
            return json.loads(line[len("BUILDCTL_PROBE ") :]), ""
    tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return None, f"{python} crashed while probing ({tail})"


def probe_torch(python: str = sys.executable, timeout: float = 120.0) -> TorchProbe:
    """torch version, torch.version.xpu, C++ ABI flag, XPU devices and runtime wheels."""
    data, error = _run(python, True, timeout)
    probe = TorchProbe(python=python)
    if data is None:
        probe.error = error
        return probe
    probe.python_version = str(data.get("python") or "") or None
    probe.torch = _str_or_none(data.get("torch"))
    probe.xpu_version = _str_or_none(data.get("xpu_version"))
    abi = data.get("cxx11_abi")
    probe.cxx11_abi = bool(abi) if abi is not None else None
    avail = data.get("xpu_available")
    probe.xpu_available = bool(avail) if avail is not None else None
    devices = data.get("xpu_devices")
    probe.xpu_devices = [str(d) for d in devices] if isinstance(devices, list) else []
    dists = data.get("dists")
    probe.dists = {str(k): str(v) for k, v in dists.items()} if isinstance(dists, dict) else {}
    probe.error = _str_or_none(data.get("torch_error"))
    return probe


def read_runtime_wheels(python: str | None = None, timeout: float = 60.0) -> dict[str, str]:
    """Installed Intel runtime wheels {dist: version} of `python` (None: this interpreter)."""
    if python is None or python == sys.executable:
        from importlib import metadata

        found: dict[str, str] = {}
        for name in (*COMPILER_RUNTIME_DISTS, *OTHER_RUNTIME_DISTS):
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return found
    data, _ = _run(python, False, timeout)
    dists = (data or {}).get("dists")
    return {str(k): str(v) for k, v in dists.items()} if isinstance(dists, dict) else {}


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


# ----------------------------------------------------------------------------- Level Zero

_ZE_SCRIPT = r"""
import ctypes, json
out = {}
try:
    lib = ctypes.CDLL("libze_loader.so.1")
except OSError as exc:
    out["error"] = "libze_loader.so.1 not loadable: %s" % exc
    print("BUILDCTL_ZE " + json.dumps(out)); raise SystemExit(0)
out["loader"] = True
lib.zeInit.argtypes = [ctypes.c_uint32]
lib.zeInit.restype = ctypes.c_uint32
rc = lib.zeInit(0)
out["init_rc"] = rc
drivers = ctypes.c_uint32(0)
lib.zeDriverGet.argtypes = [ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]
lib.zeDriverGet.restype = ctypes.c_uint32
out["driver_rc"] = lib.zeDriverGet(ctypes.byref(drivers), None)
out["drivers"] = drivers.value if out["driver_rc"] == 0 else 0
devices = 0
if out["drivers"]:
    handles = (ctypes.c_void_p * drivers.value)()
    lib.zeDriverGet(ctypes.byref(drivers), handles)
    lib.zeDeviceGet.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]
    lib.zeDeviceGet.restype = ctypes.c_uint32
    for h in handles:
        n = ctypes.c_uint32(0)
        if lib.zeDeviceGet(h, ctypes.byref(n), None) == 0:
            devices += n.value
out["devices"] = devices
print("BUILDCTL_ZE " + json.dumps(out))
"""

ZE_RESULT_ERROR_UNINITIALIZED = 0x78000001  # zeInit with no driver installed


@dataclass
class LevelZeroProbe:
    loader: bool = False
    drivers: int = 0
    devices: int = 0
    init_rc: int | None = None
    error: str | None = None


def probe_level_zero(timeout: float = 30.0) -> LevelZeroProbe:
    """Load libze_loader.so.1 in a child process, zeInit, count drivers and devices."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _ZE_SCRIPT], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return LevelZeroProbe(error=f"zeInit did not return within {timeout:.0f}s")
    for line in proc.stdout.splitlines():
        if line.startswith("BUILDCTL_ZE "):
            data = json.loads(line[len("BUILDCTL_ZE ") :])
            return LevelZeroProbe(
                loader=bool(data.get("loader")),
                drivers=int(data.get("drivers") or 0),
                devices=int(data.get("devices") or 0),
                init_rc=data.get("init_rc"),
                error=data.get("error"),
            )
    tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return LevelZeroProbe(error=f"Level Zero probe crashed ({tail})")
