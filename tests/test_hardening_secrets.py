"""Credentials never reach a crash repro or stall bundle (users attach those to bug reports), and
bundles are private to their owner whatever the umask: the masking table, a stall bundle written
directly, and a real compiler crash under `buildctl build`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fixtures.faults.kit import build_args, build_faultcc, env_for, make_project

from buildctl.govern.diagnostics import save_stall_bundle
from buildctl.govern.redact import is_secret_name, redact_env, redact_text

GH_PAT = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2"
FINE_PAT = "github_pat_11AAAAAAA0bbbbbbbbbbbb_ccccccccccccccccccccccccccccccccccc"
AWS_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

MASKING = [
    # (text, what it must become)
    ("https://user:password@pypi.example.org/simple", "https://***@pypi.example.org/simple"),
    ("https://__token__@pypi.example.org/", "https://***@pypi.example.org/"),
    ("https://u:p@ss@host/x", "https://***@host/x"),  # an unencoded '@' in the password
    ("postgres://app:s3cret@db.internal:5432/prod", "postgres://***@db.internal:5432/prod"),
    ("redis://:pw@cache:6379/0", "redis://***@cache:6379/0"),
    ("https://a:b@one.example https://c:d@two.example",
     "https://***@one.example https://***@two.example"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc", "Authorization: Bearer ***"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic ***"),
    (f"token {GH_PAT} here", "token *** here"),
    ("gho_" + "a" * 36, "***"),
    (FINE_PAT, "***"),
    ("glpat-" + "x" * 20, "***"),
    ("pypi-" + "A" * 50, "***"),
    (AWS_ID, "***"),
    ("key=ASIAY34FZKBOKMUTVV7A,", "key=***,"),
    ("https://h/api?access_token=abc123&page=2", "https://h/api?access_token=***&page=2"),
    ("host=db user=app password=hunter2 dbname=x", "host=db user=app password=*** dbname=x"),
    # What a compile looks like is left exactly as it is.
    ("/usr/bin/c++ -DNDEBUG -O2 -fPIC -c /src/a.cpp -o a.o",
     "/usr/bin/c++ -DNDEBUG -O2 -fPIC -c /src/a.cpp -o a.o"),
    ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
    ("https://github.com/org/repo", "https://github.com/org/repo"),
    ("-I/opt/AKIA/include -DKEY=1", "-I/opt/AKIA/include -DKEY=1"),
    ("ghp_short", "ghp_short"),
]


@pytest.mark.parametrize(("text", "expected"), MASKING)
def test_secret_values_are_masked_and_nothing_else(text: str, expected: str) -> None:
    assert redact_text(text) == expected


SECRET_NAMES = ["GH_PAT", "GITHUB_TOKEN", "NPM_TOKEN", "AWS_SECRET_ACCESS_KEY",
                "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "API_KEY", "OPENAI_API_KEY", "GPG_KEY",
                "DB_PASSWORD", "MYSQL_PWD", "PGPASSWORD", "GOOGLE_APPLICATION_CREDENTIALS",
                "CLIENT_SECRET", "npm_config__auth", "TWINE_PASSWORD"]
PLAIN_NAMES = ["PATH", "PWD", "OLDPWD", "HOME", "CXX", "CXXFLAGS", "PIP_INDEX_URL",
               "DATABASE_URL", "LD_LIBRARY_PATH", "KEYTIMEOUT", "MONKEY_PATCH", "SSH_AUTH_SOCK"]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_names_that_are_not_secrets(name: str) -> None:
    assert not is_secret_name(name)


def test_env_keeps_urls_with_their_userinfo_masked_and_leaves_out_secret_names() -> None:
    kept, left_out, masked = redact_env({
        "PIP_INDEX_URL": "https://user:password@pypi.example.org/simple",
        "DATABASE_URL": "postgres://app:s3cret@db/prod",
        "GH_PAT": GH_PAT,
        "AWS_ACCESS_KEY_ID": AWS_ID,
        "CI_NOTE": f"pushed with {GH_PAT}",
        "PATH": "/usr/bin:/bin",
    })
    assert kept == {
        "CI_NOTE": "pushed with ***",
        "DATABASE_URL": "postgres://***@db/prod",
        "PATH": "/usr/bin:/bin",
        "PIP_INDEX_URL": "https://***@pypi.example.org/simple",
    }
    assert left_out == ["AWS_ACCESS_KEY_ID", "GH_PAT"]
    assert masked == ["CI_NOTE", "DATABASE_URL", "PIP_INDEX_URL"]


SECRET_ENV = {
    "PIP_INDEX_URL": "https://user:password@pypi.example.org/simple",
    "GH_PAT": GH_PAT,
    "DATABASE_URL": "postgres://app:s3cretpw@db.internal:5432/prod",
    "AWS_ACCESS_KEY_ID": AWS_ID,
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    "BUILD_NOTE": f"fine-grained {FINE_PAT}",
}
LEAKS = ["password", GH_PAT, "s3cretpw", AWS_ID, AWS_SECRET, FINE_PAT, "hunter2"]


def _bundle_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path


def _assert_private_and_clean(bundle: Path) -> None:
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o700
    for path in bundle.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir() or path.name == "rerun.sh":
            assert mode == 0o700, path
        else:
            assert mode == 0o600, (path, oct(mode))
    for path in _bundle_files(bundle):
        if path.parent.name == "inputs" or path.name.startswith("preprocessed."):
            continue  # the user's own source, copied as it is
        data = path.read_bytes()
        for secret in LEAKS:
            assert secret.encode() not in data, (path.name, secret)


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_stall_bundle_masks_env_argv_process_lines_and_output(tmp_path: Path) -> None:
    with _umask(0):  # the most permissive umask: the bundle must still be private
        bundle = save_stall_bundle(
            tmp_path / "repro",
            output="a.o",
            argv=["c++", "-DMIRROR=https://bob:hunter2@mirror.example/x", "-c", "a.cpp"],
            cwd=str(tmp_path),
            env={**SECRET_ENV, "PATH": "/usr/bin:/bin"},
            evidence="no CPU and no output for 600 s",
            verdict_data={"verdict": "hung"},
            processes=[{"pid": 1, "ppid": 0, "wchan": "pipe_read", "status": "",
                        "stack": "", "syscall": "",
                        "cmdline": f"git clone https://x:{GH_PAT}@github.com/o/r"}],
            output_tail=f"fetching with AWS key {AWS_ID}\n",
            compiler="c++",
            attempt=1,
        )
    _assert_private_and_clean(bundle)
    manifest = json.loads((bundle / "stall.json").read_text())
    assert manifest["env"]["PIP_INDEX_URL"] == "https://***@pypi.example.org/simple"
    assert manifest["env"]["PATH"] == "/usr/bin:/bin"
    assert {"GH_PAT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(manifest["redacted_env"])
    assert manifest["argv"][1] == "-DMIRROR=https://***@mirror.example/x"
    assert "GH_PAT" in (bundle / "README.md").read_text()  # says what was left out


@pytest.mark.slow
def test_real_crash_repro_has_no_credentials_and_is_private(tmp_path: Path) -> None:
    faultcc = build_faultcc(tmp_path)
    src = make_project(tmp_path / "src", {
        "bad.cpp": f"// faultcc: say=token-{GH_PAT} crash=segv\nint bad() {{ return 1; }}\n",
    })
    build = tmp_path / "b"
    env = {**env_for(tmp_path), **SECRET_ENV}
    args = build_args(src, build, "--retries", "0", compiler=faultcc,
                      cmake=("-DCMAKE_CXX_FLAGS=-DMIRROR=https://bob:hunter2@mirror.example/x",))
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300,
                            check=False, preexec_fn=lambda: os.umask(0))
    assert result.returncode == 1, result.stdout + result.stderr
    (bundle,) = [p for p in (build / ".buildctl" / "repro").iterdir() if p.is_dir()]
    _assert_private_and_clean(bundle)
    manifest = json.loads((bundle / "crash.json").read_text())
    assert manifest["env"]["PIP_INDEX_URL"] == "https://***@pypi.example.org/simple"
    assert manifest["env"]["DATABASE_URL"] == "postgres://***@db.internal:5432/prod"
    assert manifest["env"]["BUILD_NOTE"] == "fine-grained ***"
    assert {"GH_PAT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(manifest["redacted_env"])
    assert "-DMIRROR=https://***@mirror.example/x" in manifest["argv"]
    assert "faultcc: token-***" in (bundle / "stderr.txt").read_text()
    # Still a working repro: the masked flag changes nothing the crash depends on.
    rerun = subprocess.run(["bash", str(bundle / "rerun.sh")], capture_output=True, text=True,
                           timeout=60, check=False)
    assert rerun.returncode == 139, rerun.stderr
