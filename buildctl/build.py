"""`buildctl build`: configure any CMake project with Ninja and buildctl's launchers, then run
ninja wide under the governor."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from buildctl.errors import BadInput, BuildFailed
from buildctl.govern.session import GovernedSession, SessionOptions
from buildctl.govern.session import _set_pdeathsig as die_with_parent

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_PROJECT = REPO_ROOT / "kernels" / "pagedattn"


def find_tool(name: str) -> str:
    """PATH first (the ninja a user types later must read the same .ninja_log format), then the
    one installed beside this Python."""
    found = shutil.which(name)
    local = Path(sys.executable).parent / name
    if not found and local.exists():
        found = str(local)
    if not found:
        raise BadInput(
            f"{name} is not installed",
            f"install it (`pip install {name}` or your distribution's {name} package)",
        )
    return found


@dataclass
class BuildRequest:
    source_dir: Path
    build_dir: Path
    budget_bytes: int
    slots: int
    ninja_width: int
    cmake_args: list[str] = field(default_factory=list)
    extra_defines: dict[str, str] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)


def ninja_width(slots: int) -> int:
    """How many launchers ninja may start: enough waiting jobs for the packer to choose from."""
    return max(4 * slots, 16)


def _configure_stamp(defines: dict[str, str], cmake_args: list[str]) -> str:
    blob = json.dumps({"defines": defines, "args": cmake_args}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def configure(session: GovernedSession, req: BuildRequest) -> None:
    """Run CMake when the build dir is new or what we inject changed; ninja re-runs it otherwise."""
    if not (req.source_dir / "CMakeLists.txt").is_file():
        raise BadInput(
            f"{req.source_dir} has no CMakeLists.txt",
            "pass --source pointing at a CMake project's top directory",
        )
    defines = {**session.cmake_defines(), **req.extra_defines}
    stamp_file = req.build_dir / ".buildctl" / "configure.stamp"
    stamp = _configure_stamp(defines, req.cmake_args)
    if (
        (req.build_dir / "build.ninja").exists()
        and stamp_file.exists()
        and stamp_file.read_text() == stamp
    ):
        return
    cache = req.build_dir / "CMakeCache.txt"
    if cache.exists() and "CMAKE_GENERATOR:INTERNAL=Ninja" not in cache.read_text(errors="replace"):
        raise BadInput(
            f"{req.build_dir} was configured with another CMake generator",
            "pass a fresh --build-dir (buildctl drives Ninja builds)",
        )
    argv = [
        find_tool("cmake"),
        "-S",
        str(req.source_dir),
        "-B",
        str(req.build_dir),
        "-G",
        "Ninja",
        f"-DCMAKE_MAKE_PROGRAM={find_tool('ninja')}",
        *[f"-D{k}={v}" for k, v in defines.items()],
        *req.cmake_args,
    ]
    session.console.print(f"[bold]buildctl[/bold]: configuring {req.source_dir}", highlight=False)
    # Tied to our life like ninja: a killed buildctl leaves no cmake behind.
    proc = subprocess.run(
        argv, capture_output=True, text=True, check=False, preexec_fn=die_with_parent
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BuildFailed(
            f"CMake configure failed for {req.source_dir}:\n{tail}",
            f"fix the configure error above; the full log is in {req.build_dir}/CMakeFiles",
        )
    for line in proc.stdout.splitlines():
        if "buildctl" in line:
            session.console.print(line, highlight=False, markup=False)
    stamp_file.write_text(stamp)


def run_build(session: GovernedSession, req: BuildRequest) -> int:
    configure(session, req)
    argv = [find_tool("ninja"), "-C", str(req.build_dir), "-j", str(req.ninja_width), *req.targets]
    return session.run(argv, cwd=req.build_dir)


def governed_build(req: BuildRequest, opts: SessionOptions) -> tuple[int, GovernedSession]:
    with GovernedSession(opts) as session:
        rc = run_build(session, req)
    return rc, session
