"""buildctl installed from its own wheel into a fresh venv, used from a directory outside the
clone: the bundled kernel project builds, and the vllm-xpu-kernels adapter finds its manifest,
CMake hook and patch series in the package data and patches an upstream-shaped tree.

The venv reaches torch and buildctl's dependencies through a .pth file pointing at this
environment's site-packages (no reinstall of torch), added only after buildctl itself is
installed, so pip never sees the clone's editable buildctl; buildctl must import from the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("cmake", "ninja", "g++", "git")),
        reason="needs cmake, ninja, g++ and git",
    ),
]


@dataclass(frozen=True)
class Installed:
    venv: Path
    workdir: Path  # an empty directory outside the clone, the cwd of every command
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *argv: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(a) for a in argv], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)


def working_tree_copy(dest: Path) -> Path:
    """What git would commit (tracked files and untracked ones it does not ignore), links kept:
    the wheel is built from the working tree without touching the clone (no build/ there)."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src, dst = ROOT / rel, dest / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree, not yet committed
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("outside")
    source = working_tree_copy(base / "src")
    # what a local build leaves in a clone (git ignores it): the wheel must not carry it
    stale = source / "kernels" / "pagedattn" / "build" / "stale"
    stale.mkdir(parents=True)
    (stale / "split-plan.json").write_text("{}\n")
    (stale / "x.o").write_bytes(b"\0")
    wheels = base / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(wheels), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    [wheel] = wheels.glob("buildctl-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
         "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    venv_site = Path(sysconfig.get_path("purelib", vars={"base": str(venv),
                                                        "platbase": str(venv)}))
    (venv_site / "zz-outer-env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    workdir = base / "work"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BUILDCTL_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["BUILDCTL_PROFILE_DB"] = str(base / "profiles.sqlite")
    return Installed(venv, workdir, env)


def test_buildctl_imports_from_the_install(installed: Installed) -> None:
    result = installed.run(installed.python, "-c",
                           "import buildctl, buildctl.data as d; print(buildctl.__file__); "
                           "print(d.KERNELS_DIR)")
    assert result.returncode == 0, result.stderr
    module, kernels = (Path(line) for line in result.stdout.split())
    assert module.is_relative_to(installed.venv), module
    assert kernels.is_relative_to(installed.venv) and not kernels.is_symlink(), kernels
    assert not kernels.resolve().is_relative_to(ROOT)
    assert (kernels / "pagedattn" / "CMakeLists.txt").is_file()
    assert not (kernels / "pagedattn" / "build").exists()  # the clone's build tree stayed out


def test_bundled_build_from_the_install(installed: Installed) -> None:
    result = installed.run("buildctl", "build", "--preset", "tiny", "--plain", timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    build = installed.workdir / "_build" / "pagedattn-tiny"
    assert (build / "_pagedattn_ops.so").is_file()
    cache = (build / "CMakeCache.txt").read_text()
    entries = {key.split(":")[0]: value for key, value in
               (line.split("=", 1) for line in cache.splitlines() if "=" in line)}
    home = Path(entries["CMAKE_HOME_DIRECTORY"])
    assert home.is_relative_to(installed.venv), home  # the sources from the package data
    # the launcher and the split hook came from the install as well, nothing from the clone
    launcher = entries["CMAKE_CXX_COMPILER_LAUNCHER"]
    assert f"{installed.venv}/" in launcher and "buildctl/govern/launcher.py" in launcher
    hook = Path(entries["CMAKE_PROJECT_INCLUDE"])
    assert hook.is_relative_to(installed.venv) and hook.name == "hook.cmake", hook
    assert str(ROOT / "buildctl") not in cache


DRY_RUN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from buildctl.toolchain import compat, xpu_adapter
    from buildctl.toolchain.patches import apply_patches, parse_unified_diff

    resolution = compat.resolve("2.11.0+xpu")
    manifest = xpu_adapter.load_manifest()
    patches = xpu_adapter.patches_for(resolution)
    defines = xpu_adapter.cmake_defines_for(
        resolution, 16 * 1024**3, xpu_adapter.aot_devices_for("B70", manifest), None, True, None)
    # an upstream-shaped tree: each patched file holds what its hunks expect to find
    tree = Path(sys.argv[1])
    for patch in patches:
        text = patch.read_text()
        for fp in parse_unified_diff(text):
            body, inside = [], False
            for line in text.splitlines():
                if line.startswith("+++ ") and line.endswith(fp.old_path):
                    inside = True
                elif line.startswith(("diff --git", "--- ")):
                    inside = False
                elif inside and line[:1] in (" ", "-"):
                    body.append(line[1:])
            target = tree / fp.old_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\\n".join(body) + "\\n")
    first = [r.status for r in apply_patches(tree, patches)]
    again = [r.status for r in apply_patches(tree, patches)]
    print(json.dumps({"ref": resolution.kernel_ref, "manifest": str(manifest.path),
                      "hook": str(xpu_adapter.HOOK_PATH), "patches": [str(p) for p in patches],
                      "defines": defines, "first": first, "again": again}))
""")


def test_xpu_adapter_dry_run_from_the_install(installed: Installed) -> None:
    tree = installed.workdir / "upstream"
    result = installed.run(installed.python, "-c", DRY_RUN, tree)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    for key in ("manifest", "hook"):
        assert Path(out[key]).is_relative_to(installed.venv) and Path(out[key]).is_file(), out
    assert out["patches"], "torch 2.11.0+xpu resolves to a patched ref"
    assert all(Path(p).is_relative_to(installed.venv) for p in out["patches"]), out["patches"]
    assert out["first"] == ["applied"] * len(out["patches"])
    assert out["again"] == ["already-applied"] * len(out["patches"])
    assert out["defines"]["BUILDCTL_XPU_AOT_DEVICES"] == "bmg-g31-a0"
    assert int(out["defines"]["BUILDCTL_SYCL_LINK_JOBS"]) >= 1
    patched = (tree / "csrc/xpu/attn/xe_2/paged_decode_utils.hpp").read_text()
    assert "multiple of 64" in patched
