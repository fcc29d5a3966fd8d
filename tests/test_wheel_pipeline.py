"""`buildctl wheel` end to end on the bundled kernel project (tiny preset), for real: an isolated
torch 2.13.0+cpu env, a governed scikit-build-core build, repair, verify, smoke test, index."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT, read_report, run_buildctl

CACHE = ROOT / ".buildctl-cache"  # shared with the other wheel tests: one torch env per session
pytestmark = pytest.mark.slow


def remove_build_dirs() -> None:
    for build_dir in (CACHE / "build").glob("pagedattn-pt213cpu-*"):
        shutil.rmtree(build_dir, ignore_errors=True)


def build_tiny_wheel(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_buildctl("wheel", "--torch", "2.13.0+cpu", "--preset", "tiny", "--plain",
                        "--out", str(out), "--cache-dir", str(CACHE), *extra, timeout=1800)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("wheelhouse")
    report = out.parent / "wheel-report.json"
    remove_build_dirs()  # start cold: the report must show governed compiles and links
    result = build_tiny_wheel(out, "--report", str(report))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    wheels = list((out / "pt213cpu").rglob("*.whl"))
    assert len(wheels) == 1
    return {"out": out, "wheel": wheels[0], "report": report, "stdout": result.stdout}


def _read(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(suffix))
        return zf.read(name).decode()


def test_wheel_is_labelled_pinned_and_carries_provenance(built: dict) -> None:
    wheel: Path = built["wheel"]
    assert wheel.name.startswith("pagedattn-0.1.0+pt213cpu-py3-none-manylinux_")
    metadata = _read(wheel, ".dist-info/METADATA")
    assert "Version: 0.1.0+pt213cpu" in metadata
    assert "Requires-Dist: torch==2.13.0" in metadata
    prov = json.loads(_read(wheel, "BUILD-PROVENANCE.json"))
    assert prov["torch"]["version"] == "2.13.0+cpu"
    assert prov["torch"]["cxx11_abi"] is True
    assert "g++" in json.dumps(prov["compilers"]) or "c++" in json.dumps(prov["compilers"])
    assert prov["cmake_defines"]["PAGEDATTN_CONFIG"] == "tiny"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert not [n for n in names if ".libs/" in n and ("torch" in n or "c10" in n)]


def test_index_pages_point_at_the_wheel(built: dict) -> None:
    out: Path = built["out"]
    page = (out / "pt213cpu" / "simple" / "pagedattn" / "index.html").read_text()
    digest = hashlib.sha256(built["wheel"].read_bytes()).hexdigest()
    assert f"sha256={digest}" in page
    assert "pagedattn" in (out / "pt213cpu" / "simple" / "index.html").read_text()


def test_report_has_governed_jobs(built: dict) -> None:
    report = read_report(built["report"])
    kinds = [j["kind"] for j in report["jobs"]]
    assert report["schema"] == "buildctl.report/1" and report["status"] == "ok"
    assert kinds.count("compile") >= 3 and kinds.count("link") == 1, kinds
    assert all(j["status"] == "ok" and j["peak_rss_bytes"] > 0 for j in report["jobs"])
    assert 0 < report["peak_total_rss_bytes"] <= report["budget_bytes"]


def test_pip_installs_from_the_index_and_ops_match_reference(built: dict) -> None:
    from buildctl.wheel.smoke import ensure_torch_env
    from buildctl.wheel.torchspec import parse_torch

    env = ensure_torch_env(CACHE / "envs" / "2.13.0+cpu", parse_torch("2.13.0+cpu"))
    pip = [sys.executable, "-m", "pip", "--python", str(env.python)]
    subprocess.run([*pip, "uninstall", "-y", "-q", "pagedattn"], capture_output=True, check=False)
    install = subprocess.run(
        [
            *pip,
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(built["out"] / "pt213cpu"),
            "pagedattn==0.1.0+pt213cpu",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    check = subprocess.run(
        [str(env.python), "-c", "import pagedattn.reference as r; print(r.self_check(seed=3))"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok: 12 kernels match the reference"), check.stdout


def test_rebuild_from_clean_is_byte_identical(built: dict, tmp_path: Path) -> None:
    first = built["wheel"].read_bytes()
    remove_build_dirs()
    out = tmp_path / "wh2"
    result = build_tiny_wheel(out)
    assert result.returncode == 0, result.stdout[-3000:]
    second = next((out / "pt213cpu").rglob("*.whl")).read_bytes()
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()


@pytest.mark.parametrize(
    ("torch", "needle"),
    [("2.11", "incomplete"), ("banana", "not a torch version"), ("2.13.7+cpu", "2.13.7")],
)
def test_bad_torch_versions_exit_2_and_write_nothing(
    tmp_path: Path, torch: str, needle: str
) -> None:
    out = tmp_path / "wh"
    result = run_buildctl(
        "wheel",
        "--torch",
        torch,
        "--preset",
        "tiny",
        "--plain",
        "--out",
        str(out),
        "--cache-dir",
        str(CACHE),
        timeout=900,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stdout + result.stderr
    assert not out.exists() or not any(out.rglob("*.whl"))


def test_verify_rejects_files_that_are_not_safe_wheels(tmp_path: Path) -> None:
    fake = tmp_path / "pagedattn-0.1.0-py3-none-any.whl"
    fake.write_text("not a zip")
    result = run_buildctl("verify", str(fake), "--against", sys.executable)
    assert result.returncode == 2 and "error:" in result.stderr
    evil = tmp_path / "evil-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.so", b"\x7fELF")
        zf.writestr("evil-0.1.0.dist-info/METADATA", "Name: evil\nVersion: 0.1.0\n")
    result = run_buildctl("verify", str(evil), "--against", sys.executable)
    assert result.returncode == 2, result.stdout + result.stderr
    assert not (tmp_path.parent / "escape.so").exists()


def test_matrix_builds_each_torch_and_summarises_failures(built: dict, tmp_path: Path) -> None:
    out = tmp_path / "wh"
    result = run_buildctl(
        "matrix",
        "--torch",
        "2.13.0+cpu",
        "--torch",
        "2.13.7+cpu",
        "--preset",
        "tiny",
        "--plain",
        "--out",
        str(out),
        "--cache-dir",
        str(CACHE),
        timeout=1800,
    )
    assert result.returncode == 1, result.stdout[-3000:]  # one of two failed
    summary = (out / "SUMMARY.md").read_text()
    assert "2.13.0+cpu" in summary and "pass" in summary
    assert "2.13.7+cpu" in summary and "fail" in summary
    assert list((out / "pt213cpu").rglob("*.whl"))
    assert (out / "pt213cpu" / "simple" / "index.html").exists()
