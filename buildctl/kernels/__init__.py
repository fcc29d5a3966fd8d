"""Kernel projects buildctl knows (manifests under the shipped kernels/ folder, see
`buildctl.data`) and how a build of each is set up: sources, CMake defines, environment, smoke
test, patches."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from buildctl.data import KERNELS_DIR
from buildctl.errors import BadInput

PRESETS = ("tiny", "default", "full")
BUNDLED = "pagedattn"
KNOWN = (BUNDLED, "vllm-xpu-kernels")
# A define value that stands for the Python the build runs with (the per-torch env of a wheel
# build, sys.executable for `build`): only the driver knows it (`fill_build_python`).
BUILD_PYTHON = "@BUILDCTL_BUILD_PYTHON@"


@dataclass
class ProjectBuild:
    name: str
    source_dir: Path
    cmake_defines: dict[str, str] = field(default_factory=dict)
    build_env: dict[str, str] = field(default_factory=dict)
    smoke_snippet: str = ""
    source_ref: str = "working tree"
    patches: list[Path] = field(default_factory=list)
    dist_name: str | None = None
    base_version: str | None = None
    scikit_build: dict | None = None
    source_commit: str | None = None  # the user's checkout, when source_dir is a build-owned copy
    source_dirty: bool = False
    source_torch: str | None = None  # the torch the sources build with, when they decide it
    # The SYCL device-link plan the governor enforces (bytes per inner link job, links at
    # once); 0: not a device-link build (SessionOptions of the same names).
    device_link_job_bytes: int = 0
    max_device_links: int = 0


def fill_build_python(defines: dict[str, str], python: str) -> dict[str, str]:
    return {k: (python if v == BUILD_PYTHON else v) for k, v in defines.items()}


def merge_hooks(*define_sets: dict[str, str]) -> dict[str, str]:
    """CMAKE_PROJECT_INCLUDE takes one file; several hooks go into the list variable
    CMAKE_PROJECT_TOP_LEVEL_INCLUDES (CMake 3.24+) instead."""
    merged: dict[str, str] = {}
    hooks: list[str] = []
    for defines in define_sets:
        for key, value in defines.items():
            if key in ("CMAKE_PROJECT_INCLUDE", "CMAKE_PROJECT_TOP_LEVEL_INCLUDES"):
                hooks.extend(v for v in value.split(";") if v and v not in hooks)
            else:
                merged[key] = value
    if len(hooks) == 1:
        merged["CMAKE_PROJECT_INCLUDE"] = hooks[0]
    elif hooks:
        merged["CMAKE_PROJECT_TOP_LEVEL_INCLUDES"] = ";".join(hooks)
    return merged


def load_manifest(name: str) -> dict:
    path = KERNELS_DIR / name / "manifest.toml"
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(
            f"no kernel project named {name!r}",
            f"use one of {', '.join(KNOWN)}, or pass --source DIR",
        ) from None


def _preset_value(preset: str | None) -> str:
    preset = preset or "default"
    if preset in PRESETS:
        value, path = preset, KERNELS_DIR / BUNDLED / "configs" / f"{preset}.conf"
    elif Path(preset).is_file():
        value = str(Path(preset).resolve())
        path = Path(value)
    else:
        raise BadInput(
            f"unknown kernel config preset {preset!r}",
            f"use one of {', '.join(PRESETS)} or a path to a .conf file",
        )
    check_kernel_config(path)
    return value


def check_kernel_config(path: Path) -> None:
    """Parse a pagedattn kernel config before CMake does, so a bad line is bad input (exit 2)
    with file:line, not a failed configure."""
    import importlib.util

    tool = KERNELS_DIR / BUNDLED / "tools" / "kernel_config.py"
    spec = importlib.util.spec_from_file_location("_pagedattn_kernel_config", tool)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    try:
        module.load_config(path)
    except module.ConfigError as exc:
        first = exc.problems[0]
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        raise BadInput(f"{first.location}: {first.what}{more}", first.fix) from None


def split_defines(manifest: dict, budget_bytes: int, slots: int) -> dict[str, str]:
    from buildctl.split import cmake_defines

    patterns = manifest.get("split", {}).get("sources", [])
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        return {}
    return cmake_defines(patterns, budget_bytes=budget_bytes, slots=slots, python=sys.executable)


PAGEDATTN_SMOKE = """
import torch, pagedattn
from pagedattn import reference
result = reference.self_check(seed=0)
print("pagedattn smoke:", result)
"""


def bundled_project(
    preset: str | None, budget_bytes: int, slots: int, split: bool = True
) -> ProjectBuild:
    source = KERNELS_DIR / BUNDLED
    if not (source / "CMakeLists.txt").is_file():
        raise BadInput(
            f"the bundled kernel project is missing at {source}",
            "reinstall buildctl (pip install --force-reinstall buildctl), or pass --source DIR",
        )
    manifest = load_manifest(BUNDLED)
    defines = {"PAGEDATTN_CONFIG": _preset_value(preset)}
    if split:
        defines.update(split_defines(manifest, budget_bytes, slots))
    return ProjectBuild(
        name=manifest.get("python_package", BUNDLED),
        source_dir=source,
        cmake_defines=defines,
        smoke_snippet=PAGEDATTN_SMOKE,
    )


def bundled_build_settings(
    preset: str | None, low_ram: bool, budget_bytes: int = 0, slots: int = 1, split: bool = True
) -> tuple[Path, dict[str, str], Path]:
    """(source dir, CMake defines, default build dir) of the bundled project for `build`. The
    build dir is under the working directory: the sources may sit in a read-only install."""
    import importlib.util

    # The bundled project is a torch extension. find_spec, not `import torch`: the import costs
    # 2-3 s of CPU and is only needed for torch.utils.cmake_prefix_path, which is
    # <torch package dir>/share/cmake.
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(
            f"torch is not installed for {sys.executable}",
            "install torch into this environment (the bundled project is a torch extension)",
        )
    torch_cmake = Path(spec.submodule_search_locations[0]) / "share" / "cmake"
    project = bundled_project(preset, budget_bytes, slots, split=split)
    defines = {
        **project.cmake_defines,
        "CMAKE_PREFIX_PATH": str(torch_cmake),
        "Python_EXECUTABLE": sys.executable,
        "Python3_EXECUTABLE": sys.executable,
        "CMAKE_BUILD_TYPE": "Release",
    }
    name = Path(project.cmake_defines["PAGEDATTN_CONFIG"]).stem
    return project.source_dir, merge_hooks(defines), Path.cwd() / "_build" / f"pagedattn-{name}"


def resolve_project(
    *,
    name: str | None,
    source: Path | None,
    preset: str | None,
    low_ram: bool,
    budget_bytes: int,
    slots: int,
    torch: str,
    cache_dir: Path,
    oneapi_roots: list[str],
    compiler: str | None,
    aot: str | None,
) -> ProjectBuild:
    if name in (None, BUNDLED) and source is None:
        project = bundled_project(preset, budget_bytes, slots)
    elif name == "vllm-xpu-kernels":
        from buildctl.kernels.xpu import xpu_project

        project = xpu_project(
            torch=torch,
            source=source,
            preset=preset,
            low_ram=low_ram,
            budget_bytes=budget_bytes,
            cache_dir=cache_dir,
            oneapi_roots=oneapi_roots,
            compiler=compiler,
            aot=aot,
        )
    elif name is None and source is not None:
        src = source.resolve()
        if not src.is_dir():
            raise BadInput(
                f"--source {source} is not a directory",
                "pass the top directory of a scikit-build-core project",
            )
        project = ProjectBuild(name=src.name, source_dir=src)
    elif name == BUNDLED:
        project = bundled_project(preset, budget_bytes, slots)
        project.source_dir = source.resolve() if source else project.source_dir
    else:
        raise BadInput(
            f"no kernel project named {name!r}",
            f"use one of {', '.join(KNOWN)}, or pass --source DIR",
        )
    project.cmake_defines = merge_hooks(project.cmake_defines)
    return project
