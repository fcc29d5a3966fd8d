"""Durable evidence for the two failures users could never debug: hangs and compiler crashes.

A stall bundle holds what the tree was doing when it stopped progressing; a crash repro holds
what it takes to run the failing command again (`rerun.sh`), outside buildctl.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import psutil

from buildctl import __version__

# Env vars worth keeping in a repro; the rest of the environment rarely matters to a compiler and
# may hold secrets.
_ENV_KEEP = re.compile(
    r"^(PATH|LD_LIBRARY_PATH|LIBRARY_PATH|CPATH|C_INCLUDE_PATH|CPLUS_INCLUDE_PATH|CC|CXX|"
    r"CFLAGS|CXXFLAGS|LDFLAGS|LANG|LC_ALL|TMPDIR|SOURCE_DATE_EPOCH|"
    r"(ONEAPI|CMPLR|SYCL|INTEL|OCL|ZE|IGC|UR|CUDA|NVCC|TORCH)[A-Z0-9_]*)$"
)


def _slug(output: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", output)[-80:] or "job"


def _new_dir(root: Path, kind: str, output: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / f"{stamp}-{kind}-{_slug(output)}"
    path = base
    n = 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    path.mkdir(parents=True)
    return path


def kept_env(env: dict[str, str] | None = None) -> dict[str, str]:
    source = os.environ if env is None else env
    return {k: v for k, v in sorted(source.items()) if _ENV_KEEP.match(k)}


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        return f"<unreadable: {exc.strerror}>"


def _compiler_version(exe: str) -> str:
    try:
        out = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=20, check=False
        )
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"<{exe} --version failed: {exc}>"


def save_stall_bundle(
    root: Path, output: str, argv: list[str], cwd: str, pid: int | None, evidence: str
) -> Path:
    """Command, env, cwd and /proc status/wchan/stack of every process of the tree."""
    bundle = _new_dir(root, "stall", output)
    procs: list[dict[str, object]] = []
    if pid:
        with contextlib.suppress(psutil.NoSuchProcess):
            root_proc = psutil.Process(pid)
            for proc in [root_proc, *root_proc.children(recursive=True)]:
                base = f"/proc/{proc.pid}"
                procs.append(
                    {
                        "pid": proc.pid,
                        "cmdline": _read(f"{base}/cmdline").replace("\0", " ").strip(),
                        "wchan": _read(f"{base}/wchan"),
                        "status": _read(f"{base}/status"),
                        "stack": _read(f"{base}/stack"),
                        "syscall": _read(f"{base}/syscall").strip(),
                    }
                )
    (bundle / "stall.json").write_text(
        json.dumps(
            {
                "output": output,
                "argv": argv,
                "cwd": cwd,
                "evidence": evidence,
                "env": kept_env(),
                "buildctl": __version__,
                "processes": procs,
            },
            indent=2,
        )
    )
    return bundle


def _preprocess_argv(argv: list[str], out: Path) -> list[str] | None:
    """The same command with `-E -o out` instead of `-c -o obj`, for compilers that take -E."""
    if "-c" not in argv:
        return None
    result: list[str] = []
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "-c":
            continue
        if arg == "-o":
            skip = True
            continue
        if arg.startswith("-o") and len(arg) > 2:
            continue
        if arg in ("-MD", "-MMD"):
            continue
        if arg in ("-MF", "-MT", "-MQ") and index + 1 < len(argv):
            skip = True
            continue
        result.append(arg)
    return [*result, "-E", "-o", str(out)]


def _named_inputs(argv: list[str], cwd: str) -> list[Path]:
    """Temporary inputs the command line names (SPIR-V, bitcode, response files)."""
    found = []
    for arg in argv[1:]:
        candidate = arg[1:] if arg.startswith("@") else arg
        if candidate.endswith((".spv", ".bc", ".rsp", ".ll")) or arg.startswith("@"):
            path = Path(cwd, candidate)
            if path.is_file():
                found.append(path)
    return found


def save_crash_repro(
    root: Path, output: str, argv: list[str], cwd: str, rc: int, stderr_tail: str
) -> Path:
    """`rerun.sh` with the exact argv/env/cwd, compiler version, preprocessed input, README."""
    repro = _new_dir(root, "crash", output)
    env = kept_env()
    version = _compiler_version(argv[0])
    (repro / "compiler-version.txt").write_text(version + "\n")
    (repro / "stderr.txt").write_text(stderr_tail)
    inputs_dir = repro / "inputs"
    for path in _named_inputs(argv, cwd):
        inputs_dir.mkdir(exist_ok=True)
        shutil.copy2(path, inputs_dir / path.name)
    pre_argv = _preprocess_argv(argv, repro / "preprocessed.ii")
    if pre_argv:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(pre_argv, cwd=cwd, capture_output=True, timeout=300, check=False)
    lines = ["#!/usr/bin/env bash", "# Re-runs the command that crashed, as buildctl ran it.",
             "set -u", f"cd {shlex.quote(cwd)}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines += [f"exec {shlex.join(argv)}", ""]
    rerun = repro / "rerun.sh"
    rerun.write_text("\n".join(lines))
    rerun.chmod(0o755)
    signal_note = f"signal {rc - 128}" if rc > 128 else f"exit code {rc}"
    (repro / "README.md").write_text(
        f"# Compiler crash while building `{output}`\n\n"
        f"- result: {signal_note}\n- buildctl: {__version__}\n- working directory: `{cwd}`\n"
        f"- compiler:\n\n```\n{version}\n```\n\n"
        "Reproduce with `./rerun.sh`. Attach this directory (rerun.sh, compiler-version.txt,"
        " stderr.txt, preprocessed.ii if present, inputs/) to the compiler bug report.\n"
    )
    (repro / "crash.json").write_text(
        json.dumps({"output": output, "argv": argv, "cwd": cwd, "rc": rc, "env": env}, indent=2)
    )
    return repro
