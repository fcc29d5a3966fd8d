"""The generated packaging wrapper: version label, torch pin, absolute paths (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from buildctl.errors import BadInput
from buildctl.kernels import merge_hooks
from buildctl.wheel.wrapper import base_version, labelled_version, wrapper_pyproject


def test_wrapper_sets_label_pin_and_absolute_paths(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "_version.py").write_text('__version__ = "0.2.0"\n')
    pyproject = {
        "project": {
            "name": "pkg",
            "dynamic": ["version"],
            "dependencies": ["torch", "numpy>=1"],
            "requires-python": ">=3.10",
        },
        "tool": {
            "scikit-build": {
                "wheel": {"packages": ["pkg"], "py-api": "py3"},
                "metadata": {
                    "version": {
                        "provider": "scikit_build_core.metadata.regex",
                        "input": "pkg/_version.py",
                    }
                },
                "build-dir": "build/x",
            }
        },
    }
    text = wrapper_pyproject(pyproject, tmp_path, "pt213cpu", "torch==2.13.0")
    doc = tomllib.loads(text)
    assert doc["project"]["version"] == "0.2.0+pt213cpu"
    assert doc["project"]["dependencies"] == ["numpy>=1", "torch==2.13.0"]
    assert "dynamic" not in doc["project"]
    skb = doc["tool"]["scikit-build"]
    assert skb["cmake"]["source-dir"] == str(tmp_path.resolve())
    assert skb["wheel"]["packages"] == [str((tmp_path / "pkg").resolve())]
    assert "metadata" not in skb and "build-dir" not in skb


def test_manifest_fills_in_for_sources_without_pyproject(tmp_path: Path) -> None:
    text = wrapper_pyproject(
        {},
        tmp_path,
        "pt211xpu",
        "torch==2.11.0",
        name="vllm-xpu-kernels",
        version="0.1.9",
        scikit_build={"wheel": {"py-api": "cp38"}},
    )
    doc = tomllib.loads(text)
    assert doc["project"]["name"] == "vllm-xpu-kernels"
    assert doc["project"]["version"] == "0.1.9+pt211xpu"
    assert doc["tool"]["scikit-build"]["wheel"]["py-api"] == "cp38"


@pytest.mark.parametrize("bad", ["1.0+local", "banana"])
def test_labelled_version_rejects(bad: str) -> None:
    with pytest.raises(BadInput):
        labelled_version(bad, "pt213cpu")


def test_base_version_needs_a_source(tmp_path: Path) -> None:
    assert base_version({"project": {"version": "1.2.3"}}, tmp_path) == "1.2.3"
    with pytest.raises(BadInput):
        base_version({"project": {"name": "x", "dynamic": ["version"]}}, tmp_path)


def test_merge_hooks_uses_the_list_variable_for_several() -> None:
    one = merge_hooks({"CMAKE_PROJECT_INCLUDE": "/a.cmake", "X": "1"})
    assert one == {"CMAKE_PROJECT_INCLUDE": "/a.cmake", "X": "1"}
    two = merge_hooks({"CMAKE_PROJECT_INCLUDE": "/a.cmake"}, {"CMAKE_PROJECT_INCLUDE": "/b.cmake"})
    assert two == {"CMAKE_PROJECT_TOP_LEVEL_INCLUDES": "/a.cmake;/b.cmake"}
