"""`--torch` parsing, index URLs, local labels, Requires-Dist and the import guard (pure)."""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from buildctl.errors import BadInput
from buildctl.wheel.torchspec import (
    PYPI_SIMPLE,
    default_index_url,
    import_guard_source,
    local_label,
    local_version,
    parse_torch,
    requires_dist,
)


@pytest.mark.parametrize(
    ("spec", "release", "variant"),
    [
        ("2.13.0+cpu", "2.13.0", "cpu"),
        ("2.11.0+xpu", "2.11.0", "xpu"),
        ("2.14.1", "2.14.1", None),
        ("2.14.1+cu130", "2.14.1", "cu130"),
        ("2.9.1+rocm6.4", "2.9.1", "rocm6.4"),
        (" 2.13.0+CPU ", "2.13.0", "cpu"),  # PEP 440 normalizes case and spaces
    ],
)
def test_parse_valid(spec: str, release: str, variant: str | None) -> None:
    target = parse_torch(spec)
    assert target.release == release
    assert target.variant == variant
    assert target.spec == (f"{release}+{variant}" if variant else release)
    assert not target.prerelease


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("2.11", "incomplete"),
        ("2", "incomplete"),
        ("2.13.0.1", "incomplete"),
        ("banana", "not a torch version"),
        ("", "not a torch version"),
        ("2.13.0+banana", "unknown build variant"),
        ("2.13.0+cu", "unknown build variant"),
        ("1!2.13.0", "epochs"),
        ("2.13.0.post1", "post"),
        ("2.13.0.dev20260520+xpu", "pre-release"),
        ("2.14.0rc1", "pre-release"),
    ],
)
def test_parse_rejects(spec: str, words: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_torch(spec)
    assert words in info.value.what
    assert info.value.exit_code == 2
    assert info.value.fix


def test_prerelease_only_on_request() -> None:
    nightly = parse_torch("2.13.0.dev20260520+xpu", allow_prerelease=True)
    assert nightly.prerelease and nightly.variant == "xpu"
    assert nightly.release == "2.13.0.dev20260520"
    assert local_label(nightly) == "pt213xpudev20260520"
    rc = parse_torch("2.14.0rc1", allow_prerelease=True)
    assert rc.release == "2.14.0rc1" and local_label(rc) == "pt214pre"


def test_index_urls() -> None:
    assert default_index_url("cpu") == "https://download.pytorch.org/whl/cpu"
    assert default_index_url("xpu") == "https://download.pytorch.org/whl/xpu"
    assert default_index_url("cu130") == "https://download.pytorch.org/whl/cu130"
    assert default_index_url(None) == PYPI_SIMPLE
    assert default_index_url("xpu", nightly=True) == "https://download.pytorch.org/whl/nightly/xpu"
    with pytest.raises(BadInput):
        default_index_url("banana")
    with pytest.raises(BadInput):
        default_index_url(None, nightly=True)


@pytest.mark.parametrize(
    ("spec", "label"),
    [
        ("2.13.0+cpu", "pt213cpu"),
        ("2.11.0+xpu", "pt211xpu"),
        ("2.14.1", "pt214"),
        ("2.14.1+cu130", "pt214cu130"),
        ("2.1.2+cpu", "pt21cpu"),
        ("2.10.0+xpu", "pt210xpu"),
    ],
)
def test_local_label(spec: str, label: str) -> None:
    target = parse_torch(spec)
    assert local_label(target) == label
    full = local_version("0.1.0", target)
    assert full == f"0.1.0+{label}"
    assert Version(full).local == label  # a valid PEP 440 local label


def test_local_version_rejects() -> None:
    target = parse_torch("2.13.0+cpu")
    with pytest.raises(BadInput):
        local_version("0.1.0+already", target)
    with pytest.raises(BadInput):
        local_version("not a version", target)


def test_requires_dist_pins_release_without_variant() -> None:
    xpu = parse_torch("2.11.0+xpu")
    assert requires_dist(xpu) == "torch==2.11.0"
    assert "+" not in requires_dist(xpu)  # the uv pitfall (vllm#43087)
    minor = Requirement(requires_dist(parse_torch("2.13.0+cpu"), exact=False))
    assert minor.specifier.contains("2.13.1") and not minor.specifier.contains("2.14.0")
    assert Requirement(requires_dist(xpu)).specifier.contains("2.11.0+xpu")


@pytest.mark.parametrize(
    ("spec", "installed", "cuda", "xpu", "ok"),
    [
        ("2.13.0+cpu", "2.13.0+cpu", None, None, True),
        ("2.13.0+cpu", "2.13.1+cpu", None, None, True),  # same ABI series
        ("2.13.0+cpu", "2.14.1+cpu", None, None, False),
        ("2.13.0+cpu", "2.13.0+cu130", "13.0", None, False),
        ("2.11.0+xpu", "2.11.0+xpu", None, "20250301", True),
        ("2.11.0+xpu", "2.11.0", "12.8", None, False),  # PyPI's CUDA build satisfied the pin
        ("2.14.1", "2.14.1", "13.0", None, True),
    ],
)
def test_import_guard(
    spec: str, installed: str, cuda: str | None, xpu: str | None, ok: bool
) -> None:
    source = import_guard_source(parse_torch(spec), "mypkg")
    fake_torch = type("T", (), {})()
    fake_torch.__version__ = installed
    fake_torch.version = type("V", (), {"cuda": cuda, "xpu": xpu, "hip": None})()
    namespace: dict[str, object] = {}
    code = source.replace("import torch as _torch\n", "")
    namespace["_torch"] = fake_torch
    if ok:
        exec(code, namespace)
    else:
        with pytest.raises(ImportError, match="mypkg was built for torch"):
            exec(code, namespace)
