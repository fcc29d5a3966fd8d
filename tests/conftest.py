"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pagedattn_build import PagedattnBuild, build_pagedattn


@pytest.fixture(scope="session")
def pagedattn_tiny_build(tmp_path_factory: pytest.TempPathFactory) -> PagedattnBuild:
    """kernels/pagedattn built once per session with the `tiny` preset (plain CMake + Ninja).

    Set PAGEDATTN_TEST_BUILD_DIR to reuse a build tree across sessions (Ninja rebuilds only what
    changed); by default a fresh temporary directory is used.
    """
    reuse = os.environ.get("PAGEDATTN_TEST_BUILD_DIR")
    build_dir = Path(reuse) if reuse else tmp_path_factory.mktemp("pagedattn-tiny")
    return build_pagedattn("tiny", build_dir)
