"""Isolated torch env per target, reuse via the stamp, and the import smoke test of a real wheel.

The torch 2.13.0+cpu env is created once (pip install from pip's configured indexes, ~1 min) under
`<repo>/.buildctl-cache/torch-envs/` (or $BUILDCTL_TEST_CACHE) and reused by later sessions
through its stamp file.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

from buildctl.errors import BadInput, BuildFailed
from buildctl.wheel.smoke import (
    STAMP_NAME,
    TorchEnv,
    ensure_torch_env,
    run_snippet,
    satisfies,
    smoke_test,
)
from buildctl.wheel.torchspec import parse_torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "abi_probe"))
import probe_build

TARGET = parse_torch("2.13.0+cpu")
CHOLESKY_SNIPPET = (
    "import torch, abi_probe\n"
    "x = torch.eye(3) * 4\n"
    "y = torch.ops.abi_probe.probe_cholesky(x)\n"
    "assert torch.allclose(y, torch.eye(3) * 2), y\n"
    "print('cholesky-ok', torch.__version__)\n"
)


@pytest.fixture(scope="module")
def torch_env() -> TorchEnv:
    env_dir = probe_build.cache_root() / "envs" / TARGET.spec
    return ensure_torch_env(env_dir, TARGET, timeout=1800)


@pytest.fixture(scope="module")
def probe_so() -> Path:
    spec = importlib.util.find_spec("torch")
    assert spec is not None and spec.submodule_search_locations
    return probe_build.build_probe(Path(spec.submodule_search_locations[0]))


def test_satisfies() -> None:
    assert satisfies("2.13.0+cpu", TARGET)
    assert not satisfies("2.13.0+cu130", TARGET)
    assert not satisfies("2.13.1+cpu", TARGET)
    assert satisfies("2.14.1+cu130", parse_torch("2.14.1"))  # no variant asked: any build
    assert not satisfies("garbage", TARGET)


@pytest.mark.slow
def test_env_is_isolated_and_reused(torch_env: TorchEnv) -> None:
    assert torch_env.torch_version == "2.13.0+cpu"
    assert torch_env.torch_lib_dir is not None and (torch_env.torch_lib_dir / "libc10.so").is_file()
    cfg = (torch_env.path / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    stamp = json.loads((torch_env.path / STAMP_NAME).read_text())
    assert stamp["torch_version"] == "2.13.0+cpu" and stamp["requirement"] == "torch==2.13.0+cpu"
    started = time.monotonic()
    again = ensure_torch_env(torch_env.path, TARGET)
    assert again.reused and again.torch_version == torch_env.torch_version
    assert time.monotonic() - started < 2
    # buildctl's own deps (pydantic) are not visible inside: the env holds torch and its deps only.
    probe = run_snippet(torch_env, "import pydantic")
    assert not probe.ok and "ModuleNotFoundError" in probe.stderr


@pytest.mark.slow
def test_smoke_imports_the_probe_wheel(torch_env: TorchEnv, probe_so: Path, tmp_path: Path) -> None:
    wheel = probe_build.probe_wheel(tmp_path, probe_so, TARGET)
    result = smoke_test(torch_env, wheel, CHOLESKY_SNIPPET)
    assert result.ok, result.stderr
    assert "cholesky-ok 2.13.0+cpu" in result.stdout
    result.raise_for_failure("abi_probe")


@pytest.mark.slow
def test_import_guard_rejects_wrong_torch(
    torch_env: TorchEnv, probe_so: Path, tmp_path: Path
) -> None:
    # The same .so labelled for 2.14.1+cpu: the guard in __init__ stops the import, clearly.
    wheel = probe_build.probe_wheel(tmp_path, probe_so, parse_torch("2.14.1+cpu"))
    assert "+pt214cpu" in wheel.name
    result = smoke_test(torch_env, wheel, "import abi_probe")
    assert not result.ok
    assert (
        "abi_probe was built for torch 2.14.1+cpu, but torch 2.13.0+cpu is installed"
        in result.stderr
    )
    with pytest.raises(BuildFailed) as info:
        result.raise_for_failure("abi_probe")
    assert info.value.exit_code == 1


def test_unknown_torch_version_is_bad_input(tmp_path: Path) -> None:
    empty_index = tmp_path / "simple"
    (empty_index / "torch").mkdir(parents=True)
    (empty_index / "torch" / "index.html").write_text("<html><body></body></html>\n")
    with pytest.raises(BadInput) as info:
        ensure_torch_env(
            tmp_path / "env", parse_torch("2.0.99+cpu"), index_url=empty_index.as_uri(), timeout=300
        )
    assert "torch 2.0.99+cpu is not available from" in info.value.what
    assert empty_index.as_uri() in info.value.what
    assert info.value.exit_code == 2
    assert not (tmp_path / "env" / STAMP_NAME).exists()


def test_refuses_a_directory_that_is_not_a_venv(tmp_path: Path) -> None:
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "precious.txt").write_text("keep me")
    with pytest.raises(BadInput, match="not a venv"):
        ensure_torch_env(tmp_path / "env", TARGET)
    assert (tmp_path / "env" / "precious.txt").read_text() == "keep me"


def test_an_env_dir_linked_to_a_shared_env_not_yet_made_is_created_there(tmp_path: Path) -> None:
    # CI's first wheel test may link its env to the shared one before anything has created it.
    empty_index = tmp_path / "simple"
    (empty_index / "torch").mkdir(parents=True)
    (empty_index / "torch" / "index.html").write_text("<html><body></body></html>\n")
    shared = tmp_path / "shared" / "envs" / "2.0.99+cpu"
    shared.parent.mkdir(parents=True)
    link = tmp_path / "env"
    link.symlink_to(shared, target_is_directory=True)
    with pytest.raises(BadInput, match="is not available"):  # the venv came first, then pip
        ensure_torch_env(link, parse_torch("2.0.99+cpu"), index_url=empty_index.as_uri(),
                         timeout=300)
    assert (shared / "pyvenv.cfg").is_file() and link.is_symlink()
