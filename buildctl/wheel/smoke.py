"""An isolated venv per torch target, and an import smoke test of a wheel inside it.

`ensure_torch_env(dir, target)` creates a venv (never `--system-site-packages`: the point is that
only the target torch is visible) and installs exactly that torch; a stamp file records what was
installed so the next call reuses the env in milliseconds. Indexes: by default pip's own
configuration decides (pip.conf, PIP_INDEX_URL, find-links), so offline mirrors and wheel caches
work without buildctl knowing about them; `index_url`/`extra_index_urls`/`find_links` override.

pip runs as `python -m pip --python <env python>` from buildctl's interpreter: the venv needs no
pip of its own (`venv --without-pip` takes 0.1 s instead of several for ensurepip).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from buildctl.errors import BadInput, BuildFailed
from buildctl.wheel.torchspec import TorchTarget
from buildctl.wheel.wheelzip import open_wheel

STAMP_NAME = "buildctl-torch-env.json"
_STAMP_SCHEMA = "buildctl.torchenv/1"
_VERSION_PY_RE = re.compile(r"""__version__\s*=\s*['"]([^'"]+)['"]""")


@dataclass(frozen=True)
class TorchEnv:
    path: Path
    python: Path
    torch_version: str
    reused: bool = False

    @property
    def torch_dir(self) -> Path | None:
        hits = sorted(self.path.glob("lib/python*/site-packages/torch"))
        return hits[0] if hits else None

    @property
    def torch_lib_dir(self) -> Path | None:
        d = self.torch_dir
        return d / "lib" if d else None


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    returncode: int
    stdout: str
    stderr: str

    def raise_for_failure(self, what: str) -> None:
        if not self.ok:
            tail = "\n".join(self.stderr.strip().splitlines()[-8:])
            raise BuildFailed(
                f"import smoke test of {what} failed (exit {self.returncode}):\n{tail}",
                "see the traceback; verify the wheel against the target torch",
            )


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE"):
        env.pop(var, None)
    env["PYTHONNOUSERSITE"] = "1"  # ~/.local must not leak another torch into the env
    return env


def _installed_torch_version(python: Path) -> str | None:
    """Read torch/version.py of the env without importing torch (which takes seconds)."""
    for site in sorted(python.parent.parent.glob("lib/python*/site-packages")):
        version_py = site / "torch" / "version.py"
        if version_py.is_file():
            match = _VERSION_PY_RE.search(version_py.read_text(errors="replace"))
            if match:
                return match.group(1)
    return None


def satisfies(installed: str, target: TorchTarget) -> bool:
    """2.13.0+cpu satisfies 2.13.0+cpu; with no variant asked (PyPI default) any build does."""
    try:
        have = Version(installed)
    except InvalidVersion:
        return False
    if have.public != Version(target.release).public:
        return False
    return target.variant is None or have.local == target.variant


@contextmanager
def _locked(env_dir: Path) -> Iterator[None]:
    # Two builds (or test workers) preparing the same env must not interleave pip runs.
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = env_dir.parent / f".{env_dir.name}.lock"
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pip(python: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pip", "--python", str(python), *args]
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=_clean_env(), check=False
        )
    except subprocess.TimeoutExpired:
        raise BuildFailed(
            f"pip {args[0]} did not finish in {timeout:.0f} s", "check the index / network"
        ) from None


def _index_args(
    index_url: str | None, extra: Sequence[str], find_links: Sequence[str]
) -> list[str]:
    args: list[str] = []
    if index_url:
        args += ["--index-url", index_url]
    for url in extra:
        args += ["--extra-index-url", url]
    for link in find_links:
        args += ["--find-links", str(link)]
    return args


def _describe_index(index_url: str | None, extra: Sequence[str], find_links: Sequence[str]) -> str:
    parts = (
        ([index_url] if index_url else ["pip's configured index"]) + list(extra) + list(find_links)
    )
    return ", ".join(parts)


def _not_available(pip_output: str) -> bool:
    """Did pip fail because no candidate exists (as opposed to a network or build error)?"""
    if "No matching distribution found" in pip_output or "Could not find a version" in pip_output:
        return True
    # With a constraints file pip reports a missing version as a conflict between the user's pin
    # and the constraint; only "user requested" lines in the conflict means nothing matched.
    block = re.search(r"The conflict is caused by:\n((?:[ \t]+\S.*\n)+)", pip_output)
    if block:
        lines = [ln.strip() for ln in block.group(1).splitlines() if ln.strip()]
        return bool(lines) and all(ln.startswith("The user requested") for ln in lines)
    return False


def ensure_torch_env(
    env_dir: str | Path,
    target: TorchTarget,
    *,
    index_url: str | None = None,
    extra_index_urls: Sequence[str] = (),
    find_links: Sequence[str] = (),
    timeout: float = 3600,
) -> TorchEnv:
    """Create (or reuse) a venv at `env_dir` holding exactly `target`'s torch.

    BadInput when the index has no such torch (exit 2: the user asked for something that does not
    exist there); BuildFailed when pip fails otherwise or installs a different build.
    """
    # Resolved: an env dir may be a link to a shared env not created yet (venv refuses to
    # create over a dangling link), and the lock must be the shared env's own.
    env_path = Path(env_dir).resolve()
    python = env_path / "bin" / "python"
    stamp_path = env_path / STAMP_NAME
    with _locked(env_path):
        if stamp_path.is_file() and python.exists():
            try:
                stamp = json.loads(stamp_path.read_text())
            except ValueError:
                stamp = {}
            installed = _installed_torch_version(python)
            if (
                stamp.get("schema") == _STAMP_SCHEMA
                and installed == stamp.get("torch_version")
                and (installed is not None and satisfies(installed, target))
            ):
                return TorchEnv(env_path, python, installed, reused=True)
        if (
            env_path.exists()
            and any(env_path.iterdir())
            and not (env_path / "pyvenv.cfg").is_file()
        ):
            raise BadInput(
                f"{env_path} exists and is not a venv", "give an empty or new directory for the env"
            )
        if not python.exists():
            proc = subprocess.run(
                [sys.executable, "-m", "venv", "--without-pip", str(env_path)],
                capture_output=True,
                text=True,
                env=_clean_env(),
                check=False,
            )
            if proc.returncode != 0:
                raise BuildFailed(
                    f"cannot create a venv at {env_path}: {proc.stderr.strip()}", "check the path"
                )
        stamp_path.unlink(missing_ok=True)  # a half-finished install must not look reusable
        args = ["install", "--disable-pip-version-check", target.pip_requirement]
        args += _index_args(index_url, extra_index_urls, find_links)
        proc = _pip(python, args, timeout)
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            where = _describe_index(index_url, extra_index_urls, find_links)
            if _not_available(out):
                offered = re.search(r"\(from versions: ([^)]*)\)", out)
                hint = f" (it offers: {offered.group(1)[-200:]})" if offered else ""
                constraints = re.findall(r"The user requested \(constraint\) (\S+)", out)
                if constraints:
                    hint += f" (pip constraints in force: {', '.join(constraints)})"
                raise BadInput(
                    f"torch {target.spec} is not available from {where}{hint}",
                    "pick a torch version that index has, or pass --index-url for the right one",
                )
            tail = "\n".join(out.strip().splitlines()[-8:])
            raise BuildFailed(
                f"pip could not install torch {target.spec}:\n{tail}", "see pip's output"
            )
        installed = _installed_torch_version(python)
        if installed is None or not satisfies(installed, target):
            raise BuildFailed(
                f"pip installed torch {installed} into {env_path}, not {target.spec}",
                "use an index that carries that exact build (e.g. --index-url for the variant)",
            )
        stamp = {
            "schema": _STAMP_SCHEMA,
            "requirement": target.pip_requirement,
            "torch_version": installed,
            "index_url": index_url,
            "extra_index_urls": list(extra_index_urls),
            "find_links": [str(f) for f in find_links],
        }
        stamp_path.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        return TorchEnv(env_path, python, installed, reused=False)


def install_wheel(env: TorchEnv, wheel: str | Path, *, timeout: float = 1800) -> None:
    """Install `wheel` into the env without touching its torch (`--no-deps --force-reinstall`)."""
    path = Path(wheel)
    open_wheel(path).close()
    proc = _pip(
        env.python,
        ["install", "--no-deps", "--force-reinstall", "--disable-pip-version-check", str(path)],
        timeout,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise BuildFailed(
            f"pip could not install {path.name} into {env.path}:\n{tail}", "see pip's output"
        )


def run_snippet(env: TorchEnv, snippet: str, *, timeout: float = 600) -> SmokeResult:
    """Run Python code in the env from an empty cwd (a source checkout must not shadow it)."""
    with tempfile.TemporaryDirectory(prefix="buildctl-smoke-") as cwd:
        try:
            proc = subprocess.run(
                [str(env.python), "-c", snippet],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=cwd,
                env=_clean_env(),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            return SmokeResult(False, -1, str(exc.stdout or ""), f"timed out after {timeout:.0f} s")
    return SmokeResult(proc.returncode == 0, proc.returncode, proc.stdout, proc.stderr)


def smoke_test(
    env: TorchEnv, wheel: str | Path, snippet: str, *, timeout: float = 600
) -> SmokeResult:
    """Install `wheel` into `env` and run `snippet` there (e.g. `import pkg; pkg.selftest()`)."""
    install_wheel(env, wheel)
    return run_snippet(env, snippet, timeout=timeout)
