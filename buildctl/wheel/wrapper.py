"""The packaging wrapper: a generated pyproject.toml that points scikit-build-core at the
project's CMake sources and carries what buildctl decides — the version with its torch label and
the `Requires-Dist` pin on that torch release.

Why a wrapper: the label must come from the build's own metadata (pip rejects wheels whose file
name and METADATA disagree, so renaming files is out), upstream kernel projects have no
scikit-build-core pyproject at all (vllm-xpu-kernels uses setup.py), and the user's source tree is
never edited. Pure: dicts and text in, TOML text out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w
import tomllib
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from buildctl.errors import BadInput

_DEFAULT_VERSION_RE = r"""(?i)^(__version__|VERSION)(?::\s*str)?\s*=\s*['"](?P<value>[^'"]+)['"]"""


def read_pyproject(source_dir: Path) -> dict[str, Any]:
    path = source_dir / "pyproject.toml"
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(
            f"{path} is not valid TOML: {exc}", "fix the project's pyproject.toml"
        ) from None


def base_version(pyproject: Mapping[str, Any], source_dir: Path) -> str:
    """The project's own version: static, or from scikit-build-core's regex provider."""
    project = pyproject.get("project", {})
    if "version" in project:
        return str(project["version"])
    provider = (
        pyproject.get("tool", {}).get("scikit-build", {}).get("metadata", {}).get("version", {})
    )
    if provider.get("provider") == "scikit_build_core.metadata.regex" and provider.get("input"):
        path = source_dir / provider["input"]
        try:
            text = path.read_text()
        except OSError:
            raise BadInput(
                f"version file {path} is missing", "fix [tool.scikit-build.metadata.version]"
            ) from None
        match = re.search(provider.get("regex", _DEFAULT_VERSION_RE), text, re.MULTILINE)
        if match:
            return match.group("value")
        raise BadInput(
            f"no version found in {path}", "check the regex in [tool.scikit-build.metadata.version]"
        )
    raise BadInput(
        f"cannot tell the version of the project in {source_dir}",
        "give [project] a static version or use scikit-build-core's regex version provider",
    )


def labelled_version(base: str, label: str) -> str:
    try:
        version = Version(base)
    except InvalidVersion:
        raise BadInput(
            f"project version {base!r} is not PEP 440", "fix the project's version"
        ) from None
    if version.local:
        raise BadInput(
            f"project version {base!r} already has a local label",
            "remove the +label from the project's version; buildctl adds the torch label",
        )
    return f"{version}+{label}" if label else str(version)


def _absolute(source_dir: Path, value: str) -> str:
    path = Path(value)
    return str(path if path.is_absolute() else (source_dir / path).resolve())


def _pin_torch(deps: list[str], torch_requirement: str) -> list[str]:
    kept = []
    for dep in deps:
        try:
            name = Requirement(dep).name
        except InvalidRequirement:
            kept.append(dep)
            continue
        if name.lower() != "torch":
            kept.append(dep)
    return [*kept, torch_requirement]


def wrapper_pyproject(
    pyproject: Mapping[str, Any],
    source_dir: Path,
    label: str,
    torch_requirement: str,
    *,
    name: str | None = None,
    version: str | None = None,
    scikit_build: Mapping[str, Any] | None = None,
) -> str:
    """TOML text of the wrapper. `name`/`version`/`scikit_build` fill in for projects whose
    sources carry no pyproject (upstream vllm-xpu-kernels): they come from the kernel manifest."""
    project_in = dict(pyproject.get("project", {}))
    base = version or base_version(pyproject, source_dir)
    project: dict[str, Any] = {
        "name": name or project_in.get("name"),
        "version": labelled_version(base, label),
        # No requirement: an extension that does not use torch keeps the project's own list.
        "dependencies": _pin_torch(list(project_in.get("dependencies", [])), torch_requirement)
        if torch_requirement
        else list(project_in.get("dependencies", [])),
    }
    if not project["name"]:
        raise BadInput(f"the project in {source_dir} has no name", "set [project] name")
    for key in ("description", "requires-python", "authors", "classifiers", "urls", "keywords"):
        if key in project_in:
            project[key] = project_in[key]
    if "license" in project_in and isinstance(project_in["license"], str):
        project["license"] = project_in["license"]
    skb = dict(
        scikit_build
        if scikit_build is not None
        else pyproject.get("tool", {}).get("scikit-build", {})
    )
    skb.pop("metadata", None)
    skb.pop("sdist", None)
    skb.pop("build-dir", None)
    cmake = dict(skb.get("cmake", {}))
    cmake["source-dir"] = _absolute(source_dir, cmake.get("source-dir", "."))
    skb["cmake"] = cmake
    wheel = dict(skb.get("wheel", {}))
    if "packages" in wheel:
        packages = wheel["packages"]
        if isinstance(packages, dict):
            wheel["packages"] = {k: _absolute(source_dir, v) for k, v in packages.items()}
        else:
            wheel["packages"] = [_absolute(source_dir, p) for p in packages]
    skb["wheel"] = wheel
    doc = {
        "build-system": {
            "requires": ["scikit-build-core>=0.10"],
            "build-backend": "scikit_build_core.build",
        },
        "project": project,
        "tool": {"scikit-build": skb},
    }
    header = (
        "# Generated by buildctl for one torch target; do not edit. The sources are at\n"
        f"# {cmake['source-dir']}\n"
    )
    return header + tomli_w.dumps(doc)


def write_wrapper(dest: Path, text: str) -> Path:
    """Write the wrapper dir; rewrite only on change so scikit-build-core's build dir stays warm."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "pyproject.toml"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return dest
