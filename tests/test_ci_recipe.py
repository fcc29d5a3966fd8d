"""The CI publishing recipe (examples/ci/wheels.yml): it validates against GitHub's workflow
schema (check-jsonschema's vendored copy, offline), and its steps run here for real: profile
import, matrix build (bundled project, tiny preset), the verify gate, profile export, then the
publish job's index, and `pip install --index-url file://...` into a fresh venv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT
from ruamel.yaml import YAML

WORKFLOW = ROOT / "examples" / "ci" / "wheels.yml"
CACHE = ROOT / ".buildctl-cache"  # shared with the other wheel tests: one torch env per session
CPU_ROW = "2.13.0+cpu"


def workflow() -> dict:
    return YAML(typ="safe").load(WORKFLOW.read_text())


def test_workflow_validates_against_the_github_schema() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema",
         "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflow_has_cpu_and_xpu_rows_a_verify_gate_and_kept_profiles() -> None:
    flow = workflow()
    build = flow["jobs"]["build"]
    rows = build["strategy"]["matrix"]["include"]
    assert {row["variant"] for row in rows} == {"cpu", "xpu"}
    assert len({row["label"] for row in rows}) == len(rows)
    steps = build["steps"]
    names = [step.get("id") or step.get("uses", "").split("@")[0] for step in steps]
    order = ["actions/cache/restore", "import-profiles", "build", "verify", "export-profiles",
             "actions/cache/save", "actions/upload-artifact"]
    assert [n for n in names if n in order] == order
    restore = steps[names.index("actions/cache/restore")]["with"]
    save = steps[names.index("actions/cache/save")]["with"]
    assert restore["path"] == save["path"] and save["key"].startswith(restore["restore-keys"])
    assert steps[names.index("export-profiles")]["if"] == "always()"  # measured even if failed
    publish = flow["jobs"]["publish"]
    assert publish["needs"] == "build"
    assert "actions/deploy-pages" in " ".join(s.get("uses", "") for s in publish["steps"])


def job_env(job: dict, row: dict, runner_temp: Path) -> dict[str, str]:
    """The job's `env:` with the matrix row and runner.temp filled in."""
    values = {**{f"matrix.{k}": str(v) for k, v in row.items()},
              "runner.temp": str(runner_temp)}
    env = {}
    for name, value in job.get("env", {}).items():
        env[name] = re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: values[m.group(1)], str(value))
    return env


def run_step(job: dict, step_id: str, cwd: Path, env: dict[str, str]) -> str:
    step = next(s for s in job["steps"] if s.get("id") == step_id)
    assert "${{" not in step["run"], f"{step_id}: a local run cannot fill in expressions"
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", step["run"]], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=900)
    assert proc.returncode == 0, (
        f"step {step_id} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )
    return proc.stdout


def fresh_venv_seeing_torch(path: Path, torch_env: Path, hide: str) -> Path:
    """A new venv that sees torch's env (through a .pth file) but not distribution `hide` (the
    pipeline's smoke test installed it there), so pip installs `hide` from the index into the
    venv and its torch pin is checked against that torch without downloading torch again."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    visible = path.parent / "torch-site"
    visible.mkdir()
    for entry in (torch_env / "lib" / version / "site-packages").iterdir():
        if not entry.name.lower().startswith(hide):
            (visible / entry.name).symlink_to(entry)
    Path(purelib, "torch-env.pth").write_text(f"{visible}\n")
    return python


@pytest.mark.slow
def test_recipe_steps_run_locally(tmp_path: Path) -> None:
    flow = workflow()
    build = flow["jobs"]["build"]
    row = next(r for r in build["strategy"]["matrix"]["include"] if r["torch"] == CPU_ROW)
    work = tmp_path / "checkout"
    work.mkdir()
    # Cold build dirs of its own, as on a CI machine (every job is measured and exported), and
    # the test session's torch env (one download per session).
    cache = tmp_path / "cache"
    (cache / "envs").mkdir(parents=True)
    (CACHE / "envs").mkdir(parents=True, exist_ok=True)
    (cache / "envs" / CPU_ROW).symlink_to(CACHE / "envs" / CPU_ROW, target_is_directory=True)
    env = {
        **os.environ,
        **job_env(build, row, tmp_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        # The bundled project's tiny preset, sharing the test session's torch env.
        "PROJECT_ARGS": "--preset tiny",
        "BUILDCTL_CACHE_DIR": str(cache),
        "PYTHONPATH": str(ROOT),
    }
    assert Path(sys.executable).parent.joinpath("buildctl").exists()

    out = run_step(build, "import-profiles", work, env)
    assert "no saved profiles yet" in out
    run_step(build, "build", work, env)
    run_step(build, "verify", work, env)
    run_step(build, "export-profiles", work, env)
    saved = work / f"profiles-{row['label']}.json"
    assert '"entries"' in saved.read_text()

    # The next run restores the export into a fresh profile DB.
    next_env = {**env, "BUILDCTL_PROFILE_DB": str(tmp_path / "next-run.sqlite")}
    out = run_step(build, "import-profiles", work, next_env)
    assert "no saved profiles yet" not in out
    shown = subprocess.run(["buildctl", "profile", "show", "--json"], env=next_env, cwd=work,
                           capture_output=True, text=True, check=True).stdout
    assert "pagedattn" in shown, (out, shown)

    # publish: artifacts arrive as downloads/wheels-<label>/wheelhouse/<label>/...
    publish = flow["jobs"]["publish"]
    site = tmp_path / "site"
    site.mkdir()
    uploaded = site / "downloads" / f"wheels-{row['label']}" / "wheelhouse" / row["label"]
    shutil.copytree(work / "wheelhouse" / row["label"], uploaded)
    run_step(publish, "index", site, {**env, **job_env(publish, row, tmp_path)})
    simple = site / "wheelhouse" / row["label"] / "simple"
    assert (simple / "pagedattn" / "index.html").is_file()

    python = fresh_venv_seeing_torch(tmp_path / "fresh", CACHE / "envs" / CPU_ROW, "pagedattn")
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--index-url", simple.as_uri(), "pagedattn"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout
    assert re.search(r"^pagedattn==0\.1\.0\+pt213cpu$", listed, re.M), listed
    where = subprocess.run([str(python), "-c", "import pagedattn; print(pagedattn.__file__)"],
                           capture_output=True, text=True, check=False, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(tmp_path / "fresh"))
