"""`buildctl build --project vllm-xpu-kernels` as a user runs it (issue 17, item 4), on CI too:
the CLI as a subprocess on our fixture checkout tagged v0.1.11.1 (tests/fixtures/
xpu_kernels_fixture; the real upstream tags are in test_xpu_upstream_configure, which needs a
clone CI does not have). The stand-in `icpx` hands compiles to g++, so the build runs to the
end: pinned oneAPI tree, offline pre-staged deps, the build-owned copy, the XPU hook, every
compile and link admitted by the governor, and the checkout byte-identical afterwards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from helpers import buildctl_cmd
from oneapi_trees import make_field_trap_tree
from test_xpu_upstream_configure import prestage_standins
from test_xpu_wheel import FIXTURE, ICPX_TO_GXX, ICX_TO_GCC, _git_repo_from
from upstream_checkouts import tree_state

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("ninja") is None or shutil.which("g++") is None,
    reason="needs cmake, ninja and g++",
)


def test_cli_build_of_the_xpu_project_leaves_the_checkout_alone(tmp_path: Path) -> None:
    root = make_field_trap_tree(tmp_path)
    bin_dir = root / "compiler" / "2025.3" / "bin"
    (bin_dir / "icpx").write_text(ICPX_TO_GXX)
    (bin_dir / "icx").write_text(ICX_TO_GCC)
    (bin_dir / "icx").chmod(0o755)
    source = tmp_path / "vllm-xpu-kernels"
    _git_repo_from(FIXTURE, source)
    subprocess.run(["git", "tag", "v0.1.11.1"], cwd=source, check=True)
    before = tree_state(source)
    cache = tmp_path / "cache"
    prestage_standins(cache, "v0.1.11.1")
    report = tmp_path / "report.json"
    proc = subprocess.run(
        buildctl_cmd(
            "build", "--project", "vllm-xpu-kernels", "--source", str(source),
            "--cache-dir", str(cache), "--oneapi-root", str(root), "--aot", "B70", "--low-ram",
            "--mem-budget", "16G", "--plain", "--report", str(report),
            "--profiles", str(tmp_path / "profiles.sqlite"),
        ),
        capture_output=True, text=True, timeout=600, check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    assert tree_state(source) == before and before[0] == ""  # the checkout: clean, unchanged
    data = json.loads(report.read_text())
    assert data["status"] == "ok"
    assert data["source_dir"].startswith(str(cache / "sources"))  # the copy, not the checkout
    jobs = {j["output"]: j for j in data["jobs"]}
    assert any(j["kind"] == "compile" for j in jobs.values())  # admitted by the governor
    assert any(j["kind"] == "link" for j in jobs.values())
    assert all(j["status"] == "ok" for j in jobs.values())
    # built from the build-owned copy under the cache, with the hook and the pinned compiler
    build_dirs = [p for p in (cache / "build").iterdir() if p.is_dir()]
    assert len(build_dirs) == 1
    cmake_cache = (build_dirs[0] / "CMakeCache.txt").read_text()
    assert str(source) + "/" not in cmake_cache and f"={source}\n" not in cmake_cache
    assert str(cache / "sources") in cmake_cache
    assert "/compiler/2025.3/bin/icpx" in cmake_cache
    hook = json.loads((build_dirs[0] / "buildctl" / "xpu_hook.json").read_text())
    assert hook["link_jobs"] >= 1
