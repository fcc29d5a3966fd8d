"""`buildctl run -- <build command>` on three tiny real projects: a scikit-build-core project
(`pip wheel`, `python -m build`, `uv build`), a setuptools CMakeExtension project (`pip wheel`),
and a torch.utils.cpp_extension project (`setup.py build_ext`). Every compile and link of the
project is in the run's report."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers import FIXTURES, isolated_env, read_report, run_buildctl

pytestmark = pytest.mark.slow
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", ".", "--no-build-isolation", "--no-deps",
             "--no-index", "-q", "-w"]


def governed_run(tmp_path: Path, fixture: str, command: list[str], **env_extra: str):
    project = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, project)  # builds write into the tree they build
    state = tmp_path / "state"
    env = {**isolated_env(tmp_path), **env_extra}
    proc = run_buildctl(
        "run", "--plain", "--build-dir", str(state), "-j", "2", "--json", "--",
        *command, env=env, timeout=300, cwd=project,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    report = read_report(state / ".buildctl" / "report.json")
    return project, summary, report


def outputs(report: dict, kind: str) -> list[str]:
    return [j["output"] for j in report["jobs"] if j["kind"] == kind and j["status"] == "ok"]


def assert_governed(report: dict, sources: list[str], library: str) -> None:
    compiled = outputs(report, "compile")
    for source in sources:
        assert any(Path(o).name.startswith(source + ".") for o in compiled), (source, compiled)
    assert any(Path(o).name == library for o in outputs(report, "link")), report["jobs"]


def test_scikit_build_core_pip_wheel(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _, summary, report = governed_run(tmp_path, "run_skbuild", [*PIP_WHEEL, str(dist)])
    assert_governed(report, ["alpha.cc", "beta.cc"], "librunskb.so")
    assert summary["status"] == "ok" and summary["exit_code"] == 0
    assert summary["jobs"] == len(report["jobs"])
    assert [w.name for w in dist.glob("*.whl")] == [
        w.name for w in dist.glob("run_skbuild-0.1.0-*.whl")
    ] != []


@pytest.mark.parametrize(
    "frontend",
    [
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir"],
        # uv finds its binary beside this interpreter (the dev extra installs it there).
        [str(Path(sys.executable).parent / "uv"), "build", "--wheel", "--no-build-isolation",
         "--offline", "--python", sys.executable, "--out-dir"],
    ],
    ids=["python-m-build", "uv-build"],
)
def test_scikit_build_core_other_frontends(tmp_path: Path, frontend: list[str]) -> None:
    """`python -m build` and `uv build` drive the same PEP 517 backend as pip: every compile
    and link is still governed."""
    if not Path(frontend[0]).exists():
        pytest.skip(f"{frontend[0]} is not installed (the dev extra installs it)")
    dist = tmp_path / "dist"
    _, summary, report = governed_run(tmp_path, "run_skbuild", [*frontend, str(dist)])
    assert_governed(report, ["alpha.cc", "beta.cc"], "librunskb.so")
    assert summary["status"] == "ok" and summary["exit_code"] == 0
    assert list(dist.glob("run_skbuild-0.1.0-*.whl")), list(tmp_path.rglob("*.whl"))


def test_setuptools_cmake_extension_pip_wheel(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _, _, report = governed_run(tmp_path, "run_setuptools_cmake", [*PIP_WHEEL, str(dist)])
    assert_governed(report, ["alpha.cc", "beta.cc"], "librunstc.so")
    assert list(dist.glob("run_setuptools_cmake-0.1.0-*.whl"))


def test_torch_cpp_extension_setup_py(tmp_path: Path) -> None:
    project, _, report = governed_run(
        tmp_path, "run_cpp_extension", [sys.executable, "setup.py", "build_ext", "--inplace"]
    )
    compiled = outputs(report, "compile")
    # One job per compile (torch's ccache, if installed, runs inside the job, not around it).
    assert sorted(Path(o).name for o in compiled) == ["alpha.o", "beta.o"], compiled
    built = list(project.glob("run_cpp_ext*.so"))
    assert built, list(project.iterdir())
    assert any(Path(o).name == built[0].name for o in outputs(report, "link")), report["jobs"]


def test_exit_code_is_the_commands(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    proc = run_buildctl(
        "run", "--plain", "--build-dir", str(tmp_path / "s"), "--", sys.executable, "-c",
        "import sys; sys.exit(3)", env=env, timeout=120,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    proc = run_buildctl("run", "--plain", "--build-dir", str(tmp_path / "s"), "--",
                        "no-such-build-tool-xyz", env=env, timeout=120)
    assert proc.returncode == 2
    assert "no-such-build-tool-xyz" in proc.stderr
