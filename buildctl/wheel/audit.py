"""`buildctl audit WHEEL`: which oneAPI runtimes and which torch releases a built wheel can load
against, read from its ELF sonames and undefined symbols, before anything is installed.

Candidates are real wheels read as zips, never installed: intel-sycl-rt (+ intel-cmplr-lib-ur,
intel-cmplr-lib-rt, which libsycl needs) per oneAPI release, and torch per release, each
downloaded once by pip into the cache. The ELF readers are verify's (`buildctl.wheel.verify`).

Pure: `wheel_needs` over parsed ELF indexes, `fit` (one candidate against the wheel's needs,
symbols attributed to an axis by the union of that axis's candidates), `render`. I/O: the pip
downloads and `audit` that ties them together.

What a fit means, and what it cannot mean: every soname of that family the wheel needs is in the
candidate, and every undefined symbol that some candidate of that axis defines is defined by this
one. A symbol none of the candidates defines (e.g. one from libtorch_xpu.so when only CPU/CUDA
torch builds could be downloaded) is counted as not checkable, and a family library the candidate
lacks entirely makes the answer "unknown", never "fits".
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from buildctl.errors import BadInput
from buildctl.wheel.elfsyms import ElfIndex
from buildctl.wheel.sonames import external_family, is_torch_lib, matches
from buildctl.wheel.verify import TorchLibs, _read_wheel_elves, is_torch_symbol

Status = Literal["fits", "no", "unknown"]
_XPU_NAME = re.compile(r"xpu|XPU")
RUNTIME_DISTS = ("intel-sycl-rt", "intel-cmplr-lib-ur", "intel-cmplr-lib-rt")
# Driver libraries come with the GPU driver, not with a runtime wheel.
DRIVER_GLOBS = ("libze_loader.so*", "libOpenCL.so*", "libze_intel*.so*", "libigc*.so*")


@dataclass(frozen=True)
class Candidate:
    axis: Literal["runtime", "torch"]
    label: str  # "intel-sycl-rt 2025.3.2", "torch 2.13.0+cpu"
    sonames: frozenset[str]
    exports: frozenset[str]


@dataclass(frozen=True)
class WheelNeeds:
    needed: frozenset[str]  # DT_NEEDED not satisfied inside the wheel
    undefined: frozenset[str]  # strong undefined symbol keys not defined inside the wheel


@dataclass
class Fit:
    axis: str
    label: str
    status: Status
    missing_sonames: list[str] = field(default_factory=list)
    missing_symbols: list[str] = field(default_factory=list)
    checked_symbols: int = 0
    unattributed_symbols: int = 0  # used by the wheel, defined by no candidate of this axis
    note: str = ""


def wheel_needs(elves: Iterable[ElfIndex]) -> WheelNeeds:
    elves = list(elves)
    inside_names = {e.soname for e in elves if e.soname}
    inside_defs: set[str] = set()
    for e in elves:
        inside_defs |= e.defined
    needed = {n for e in elves for n in e.needed if n not in inside_names}
    undefined = {u.key for e in elves for u in e.undefined if u.key not in inside_defs}
    return WheelNeeds(frozenset(needed), frozenset(undefined))


_SYSTEM_PREFIXES = ("_ZNSt", "_ZNKSt", "_ZSt", "_ZNSs", "_ZNKSs", "_ZdlPv", "_Znwm", "_Znam")
_SYSTEM_VERSIONS = ("@GLIBC", "@GLIBCXX", "@CXXABI", "@GCC")


def _is_system_symbol(key: str) -> bool:
    return key.startswith(_SYSTEM_PREFIXES) or any(v in key for v in _SYSTEM_VERSIONS)


def _runtime_family(soname: str) -> bool:
    return external_family(soname) == "sycl/oneapi" and not matches(soname, DRIVER_GLOBS)


def _torch_family(soname: str) -> bool:
    return is_torch_lib(soname) and not soname.startswith("libgomp")


def fit(needs: WheelNeeds, candidate: Candidate, universe: Sequence[Candidate]) -> Fit:
    """Whether `candidate` covers what the wheel needs from its axis."""
    family: Callable[[str], bool] = (
        _runtime_family if candidate.axis == "runtime" else _torch_family
    )
    peers = [c for c in universe if c.axis == candidate.axis]
    known = frozenset().union(*(c.exports for c in peers)) if peers else frozenset()
    wanted_sonames = sorted(n for n in needs.needed if family(n))
    missing_sonames = [n for n in wanted_sonames if n not in candidate.sonames]
    # The C/C++ runtime comes from the system whatever a candidate happens to re-export.
    attributed = {s for s in needs.undefined if s in known and not _is_system_symbol(s)}
    axis_symbols: set[str] = set()
    if candidate.axis == "torch":
        # torch is judged on torch's own symbols only (c10::, at::, torch::, caffe2::)
        axis_symbols = {s for s in needs.undefined if is_torch_symbol(s.split("@")[0])}
        attributed &= axis_symbols
        # c10::/at::/torch:: symbols belong to torch even when no candidate defines them (one
        # torch given); those of the XPU backend count only where the candidate ships its
        # libraries (a CPU/CUDA build cannot say anything about them).
        has_xpu = any(_XPU_NAME.search(n) for n in candidate.sonames)
        attributed |= {s for s in axis_symbols if has_xpu or not _XPU_NAME.search(s)}
        if not has_xpu:
            attributed = {s for s in attributed if not _XPU_NAME.search(s)}
    missing_symbols = sorted(attributed - candidate.exports)
    unattributed = len(axis_symbols - attributed)
    out = Fit(
        candidate.axis,
        candidate.label,
        "fits",
        missing_sonames,
        missing_symbols[:20],
        len(attributed),
        unattributed,
    )
    if missing_symbols:
        out.status = "no"
        out.note = f"{len(missing_symbols)} undefined symbols it does not define"
    if missing_sonames:
        # A soname the family ships under another version (libsycl.so.8 vs .9) is a clear no;
        # a library this build does not ship at all (libtorch_xpu.so in a CPU torch) is unknown.
        stems = {n.split(".so")[0] for n in candidate.sonames}
        other_version = [n for n in missing_sonames if n.split(".so")[0] in stems]
        if other_version:
            out.status = "no"
            out.note = f"needs {', '.join(other_version)}; it ships " + ", ".join(
                sorted(
                    n
                    for n in candidate.sonames
                    if n.split(".so")[0] in {m.split(".so")[0] for m in other_version}
                )
            )
        elif out.status != "no":
            out.status = "unknown"
            out.note = f"this build ships no {', '.join(missing_sonames)}: cannot tell"
    if out.status != "no" and unattributed:
        out.note = (out.note + "; " if out.note else "") + (
            f"{unattributed} XPU torch symbols not checked"
        )
    if out.status == "fits" and not wanted_sonames and not attributed:
        out.status = "unknown"
        out.note = "the wheel uses nothing of this axis that the candidates define"
    return out


# ----------------------------------------------------------------------------- I/O


def _pip_download(spec: str, dest: Path) -> Path:
    """One wheel (no deps) into the cache, once; pip's own configuration decides the index."""
    dest.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_")
    version = spec.split("==")[1] if "==" in spec else "*"
    hits = sorted(dest.glob(f"{name}-{version}-*.whl"))
    if hits:
        return hits[0]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            spec,
            "-d",
            str(dest),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    hits = sorted(dest.glob(f"{name}-{version}-*.whl"))
    if proc.returncode != 0 or not hits:
        raise BadInput(
            f"pip cannot download {spec}: "
            + (proc.stderr.strip().splitlines() or ["no detail"])[-1][:200],
            "check the index (pip config list) or give the wheel's path instead",
        )
    return hits[0]


def _candidate(axis: Literal["runtime", "torch"], label: str, libs: Iterable) -> Candidate:
    sonames: set[str] = set()
    exports: set[str] = set()
    for lib in libs:
        for name in lib.names():
            index = lib.index(name)
            sonames.add(name)
            if index.soname:
                sonames.add(index.soname)
            exports |= index.defined
    return Candidate(axis, label, frozenset(sonames), frozenset(exports))


def runtime_candidate(version_or_wheels: str | Sequence[Path], cache: Path) -> Candidate:
    from buildctl.wheel.runtime_libs import RuntimeLibs

    if isinstance(version_or_wheels, str):
        wheels = [_pip_download(f"{d}=={version_or_wheels}", cache) for d in RUNTIME_DISTS]
        label = f"intel-sycl-rt {version_or_wheels}"
    else:
        wheels = list(version_or_wheels)
        label = ", ".join(w.name.split("-")[0] + " " + w.name.split("-")[1] for w in wheels)
    return _candidate("runtime", label, [RuntimeLibs.from_wheel(w) for w in wheels])


def torch_candidate(spec: str, cache: Path) -> Candidate:
    path = Path(spec)
    wheel = path if path.suffix == ".whl" else _pip_download(f"torch=={spec}", cache)
    libs = TorchLibs.from_wheel(wheel)
    return _candidate("torch", f"torch {libs.version}", [libs])


@dataclass
class AuditReport:
    wheel: str
    needed: list[str]
    fits: list[Fit]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"schema": "buildctl.audit/1", **asdict(self)}, indent=2, sort_keys=False)


def audit(wheel: Path, runtimes: Sequence[Candidate], torches: Sequence[Candidate]) -> AuditReport:
    indexes = [e.index for e in _read_wheel_elves(wheel)[0]]
    if not indexes:
        raise BadInput(f"{wheel.name} has no shared objects", "audit a wheel with extensions")
    needs = wheel_needs(indexes)
    universe = [*runtimes, *torches]
    report = AuditReport(
        wheel=str(wheel),
        needed=sorted(needs.needed),
        fits=[fit(needs, c, universe) for c in universe],
    )
    if torches and all(c.label.endswith(("+cpu", "+cu")) or "+xpu" not in c.label for c in torches):
        report.notes.append(
            "no XPU torch build among the candidates (pip reaches download.pytorch.org/whl/xpu "
            "only where configured): symbols of libtorch_xpu/libc10_xpu stay unchecked"
        )
    return report


def render(report: AuditReport) -> list[tuple[str, str, str, str]]:
    """Rows (axis, candidate, status, detail) for a table."""
    rows = []
    for f in report.fits:
        detail = f.note or f"{f.checked_symbols} symbols and every needed soname found"
        if f.missing_symbols and f.status == "no":
            detail += f" (e.g. {f.missing_symbols[0]})"
        rows.append((f.axis, f.label, f.status, detail))
    return rows


def default_runtimes() -> list[str]:
    """The intel-sycl-rt releases the torch XPU rows of the compat matrix pin."""
    from buildctl.toolchain.compat import load_matrix

    seen: list[str] = []
    for row in load_matrix().torch:
        version = row.runtime_wheels.get("intel-sycl-rt")
        if version and row.kernel_refs and version not in seen:
            seen.append(version)
    return seen


def default_torches() -> list[str]:
    """The torch releases that vllm-xpu-kernels tags build with (one per series)."""
    from buildctl.toolchain.compat import load_matrix

    return [row.releases[0] for row in load_matrix().torch if row.kernel_refs and row.releases]


def cmd_audit(args, console) -> int:
    from rich.table import Table

    wheel = Path(args.wheel)
    cache = Path(args.cache_dir).resolve() / "audit-wheels"
    runtime_specs = args.runtime or default_runtimes()
    torch_specs = args.torch or default_torches()
    runtimes = [
        runtime_candidate([Path(s)] if s.endswith(".whl") else s, cache) for s in runtime_specs
    ]
    torches = [torch_candidate(s, cache) for s in torch_specs]
    report = audit(wheel, runtimes, torches)
    if args.json:
        sys.stdout.write(report.to_json() + "\n")
        return 0
    table = Table(title=f"buildctl audit {wheel.name}")
    for col in ("axis", "candidate", "status", "detail"):
        table.add_column(col)
    style = {"fits": "green", "no": "bold red", "unknown": "yellow"}
    for axis, label, status, detail in render(report):
        table.add_row(axis, label, f"[{style[status]}]{status}[/]", detail)
    console.print(table)
    console.print("needs: " + ", ".join(report.needed), highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    return 0


def _run_audit(args, console) -> int:
    return cmd_audit(args, console)


def add_audit_parser(sub) -> None:
    a = sub.add_parser(
        "audit",
        help="which oneAPI runtimes and torch releases a built wheel can load against",
        description="Reads the wheel's ELF extensions (sonames and undefined symbols) and checks "
        "them against real intel-sycl-rt runtime wheels and torch wheels, downloaded by pip once "
        "and read as zips, never installed. Answers fits / no / unknown per candidate.",
        epilog="examples:\n"
        "  buildctl audit vllm_xpu_kernels-0.1.16.2-cp38-abi3-manylinux_2_28_x86_64.whl\n"
        "  buildctl audit dist/x.whl --runtime 2025.3.2 --runtime 2026.0.0 --torch 2.12.0 --json",
    )
    a.add_argument("wheel", type=Path, help="the wheel to audit")
    a.add_argument(
        "--runtime",
        action="append",
        metavar="VERSION|WHEEL",
        help="an intel-sycl-rt release (with its intel-cmplr-lib-ur/-rt) or a runtime wheel "
        "file; repeatable (default: the releases torch XPU 2.10-2.13 pin)",
    )
    a.add_argument(
        "--torch",
        action="append",
        metavar="VERSION|WHEEL",
        help="a torch release pip can download, or a torch wheel file; repeatable "
        "(default: one release per series vllm-xpu-kernels builds with)",
    )
    a.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".buildctl-cache"),
        metavar="DIR",
        help="downloaded wheels are kept in DIR/audit-wheels (default ./.buildctl-cache)",
    )
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=_run_audit)
