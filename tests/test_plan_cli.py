"""`buildctl plan` on the command line: exit codes and output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import isolated_env, run_buildctl

from buildctl.data import PROFILES_DIR

XPU = PROFILES_DIR / "vllm-xpu-kernels"


def test_unpatched_xpu_build_does_not_fit_32g(tmp_path: Path) -> None:
    result = run_buildctl("plan", "--profiles-json", str(XPU / "v0.1.9-unpatched.json"),
                          "--cores", "16", "--mem", "32G", env=isolated_env(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "does not fit" in result.stdout and "paged_decode_xe2.cpp.o" in result.stdout


def test_json_output_and_fit(tmp_path: Path) -> None:
    result = run_buildctl("plan", "--profiles-json", str(XPU / "v0.1.9.json"), "--cores", "24",
                          "--mem", "96G", "--json", env=isolated_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "fits" and data["host"]["cores"] == 24


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mem", "banana"], "cannot read size"),
        (["--report", "/nonexistent/r.json"], "cannot read report"),
        (["--cores", "0"], "not a number of cores"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_buildctl("plan", *args, env=isolated_env(tmp_path))
    assert result.returncode == 2
    assert needle in result.stdout + result.stderr
