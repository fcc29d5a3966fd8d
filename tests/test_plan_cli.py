"""`buildctl plan` on the command line: exit codes and output (skipped until cli.py wires the
subcommand to buildctl.govern.plan)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from helpers import ROOT, isolated_env, run_buildctl

from buildctl.cli import build_parser

XPU = ROOT / "profiles" / "vllm-xpu-kernels"


def _has_plan() -> bool:
    parser = build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return any("plan" in s.choices for s in subs)


pytestmark = pytest.mark.skipif(not _has_plan(), reason="`buildctl plan` is not wired yet")


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
