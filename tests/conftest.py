"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pagedattn_build import PagedattnBuild, build_pagedattn


@pytest.fixture(scope="session", autouse=True)
def _session_profile_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The developer's own profile DB (~/.cache/buildctl) is never read or written, even by
    module and session fixtures that build before a test's own DB is set."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUILDCTL_PROFILE_DB", str(tmp_path_factory.mktemp("db") / "profiles.sqlite"))
        yield


@pytest.fixture(autouse=True)
def _test_profile_db(tmp_path_factory: pytest.TempPathFactory,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test predicts from its own empty DB: what one test measured must not change what
    another predicts, since tests run in random order. A test that sets its own keeps it."""
    db = tmp_path_factory.mktemp("db") / "profiles.sqlite"
    monkeypatch.setenv("BUILDCTL_PROFILE_DB", str(db))


@pytest.fixture(scope="session")
def pagedattn_tiny_build(tmp_path_factory: pytest.TempPathFactory) -> PagedattnBuild:
    """kernels/pagedattn built once per session with the `tiny` preset (plain CMake + Ninja).

    Set PAGEDATTN_TEST_BUILD_DIR to reuse a build tree across sessions (Ninja rebuilds only what
    changed); by default a fresh temporary directory is used.
    """
    reuse = os.environ.get("PAGEDATTN_TEST_BUILD_DIR")
    build_dir = Path(reuse) if reuse else tmp_path_factory.mktemp("pagedattn-tiny")
    return build_pagedattn("tiny", build_dir)
