"""Durable evidence for the two failures users could never debug: hangs and compiler crashes.

A stall bundle holds what the tree was doing when it stopped progressing; a crash repro holds
what it takes to run the failing command again (`rerun.sh`), outside buildctl. Both directories
are filled under a temporary name and renamed into place, so a directory that exists is complete
even if buildctl is killed while writing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from buildctl import __version__, process
from buildctl.govern.redact import redact_argv, redact_env, redact_text

MANIFESTS = {"crash": "crash.json", "stall": "stall.json"}

# Meaningless outside this build. Variables that may hold credentials are left out too, and
# secret-looking values masked (buildctl.govern.redact); everything else of the job's
# environment is kept, because "exact env" is what makes a compiler crash reproducible.
_DROP = re.compile(r"^(BUILDCTL_SOCKET|NINJA_STATUS)$")
# Intermediate files a command line may name that the build deletes afterwards.
_INTERMEDIATE = (".spv", ".bc", ".ll", ".rsp", ".ii", ".i", ".s", ".ptx", ".cubin", ".fatbin",
                 ".bin", ".cudafe1.cpp")
_MAX_INPUT_BYTES = 256 * 1024**2
_SOURCE_EXT = (".c", ".cc", ".cpp", ".cxx", ".c++", ".cu", ".C")


def _slug(output: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", output)[-80:] or "job"


@contextlib.contextmanager
def _staged_dir(root: Path, kind: str, output: str) -> Iterator[tuple[Path, list[Path]]]:
    """Yield a hidden staging dir and a one-item list that receives the final path."""
    root.mkdir(parents=True, exist_ok=True)
    stage = root / f".tmp-{kind}-{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir(mode=0o700)
    os.chmod(stage, 0o700)  # whatever the umask: nobody else may look in while it fills
    final: list[Path] = []
    try:
        yield stage, final
        _make_private(stage)
        base = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{_slug(output)}"
        n = 1
        while True:
            target = base if n == 1 else Path(f"{base}-{n}")
            if not target.exists():
                try:
                    os.rename(stage, target)  # atomic: the bundle appears complete or not at all
                    final.append(target)
                    break
                except OSError:
                    pass  # lost a race for the name: take the next one
            n += 1
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _make_private(stage: Path) -> None:
    """A bundle may hold source, environment and paths: 0700 dirs, 0600 files (rerun.sh 0700),
    whatever the umask, and whatever mode the files it copied (inputs/) or a helper wrote had."""
    for dirpath, _dirnames, filenames in os.walk(stage):  # symlinks are neither followed...
        os.chmod(dirpath, 0o700)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):  # ...nor changed
                os.chmod(path, 0o700 if name == "rerun.sh" else 0o600)


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a bundle file readable by its owner only, with secret-looking values masked (the
    last net: the environment and argv were masked already, output tails and versions were not)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(redact_text(text))


def split_env(env: dict[str, str] | None) -> tuple[dict[str, str], list[str], list[str]]:
    """(environment to record, names left out because they may hold secrets, names whose
    values had secret-looking parts masked)."""
    return redact_env(dict(os.environ if env is None else env), _DROP)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        return f"<unreadable: {exc.strerror}>"


class Cancelled(Exception):
    """buildctl is being interrupted: a repro started now would be of no use (and Ctrl-C must
    never leave one behind)."""


def _run_helper(
    argv: list[str],
    *,
    cwd: str | None,
    env: dict[str, str] | None,
    timeout: float,
    cancel: threading.Event | None,
) -> tuple[int, str]:
    """Run a helper command, polling `cancel`; (returncode, stdout+stderr)."""
    with tempfile.TemporaryFile("w+") as out:
        # A repro helper (`cc -E`) must not outlive a SIGKILLed buildctl.
        proc = process.spawn(argv, sig=signal.SIGKILL, cwd=cwd, env=env, stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if (cancel is not None and cancel.is_set()) or time.monotonic() > deadline:
                process.kill_tree(proc.pid)
                proc.wait()
                if cancel is not None and cancel.is_set():
                    raise Cancelled
                raise subprocess.TimeoutExpired(argv, timeout)
            time.sleep(0.05)
        out.seek(0)
        return proc.returncode, out.read()


def compiler_version(
    exe: str, env: dict[str, str] | None = None, cancel: threading.Event | None = None
) -> str:
    try:
        _rc, text = _run_helper([exe, "--version"], cwd=None, env=env, timeout=20, cancel=cancel)
        return text.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"<{exe} --version failed: {exc}>"


def host_versions() -> dict[str, str]:
    return {
        "buildctl": __version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "platform": platform.platform(),
    }


def collect_tree(pid: int | None) -> list[dict[str, object]]:
    """/proc facts of every process of the tree: read before the tree is killed."""
    sample = process.sample_tree(pid, 0.0) if pid else None
    if sample is None:
        return []
    facts: list[dict[str, object]] = []
    for proc in sample.procs:
        base = f"/proc/{proc.pid}"
        ppid = proc.ppid
        facts.append(
            {
                "pid": proc.pid,
                "ppid": ppid,
                "cmdline": _read(f"{base}/cmdline").replace("\0", " ").strip(),
                "wchan": _read(f"{base}/wchan").strip(),
                "status": _read(f"{base}/status"),
                "stack": _read(f"{base}/stack"),  # root only; says so when unreadable
                "syscall": _read(f"{base}/syscall").strip(),
            }
        )
    return facts


def _named_inputs(argv: list[str], cwd: str, output: str) -> list[Path]:
    """Files the command line names that may be gone later: anything in a temp dir, intermediate
    files (SPIR-V, bitcode, PTX...), response files and the files they name."""
    temp_roots = {os.path.realpath(p) for p in (tempfile.gettempdir(), "/tmp", "/var/tmp")}
    out_path = os.path.realpath(os.path.join(cwd, output)) if output else ""
    found: list[Path] = []
    seen: set[str] = set()

    def consider(text: str, depth: int = 0) -> None:
        if not text or (text.startswith("-") and "=" not in text):
            return
        if text.startswith("-"):
            text = text.split("=", 1)[1]
        response = text.startswith("@")
        candidate = text[1:] if response else text
        path = os.path.realpath(os.path.join(cwd, candidate))
        if path in seen or path == out_path or not os.path.isfile(path):
            return
        in_temp = any(path.startswith(r + os.sep) for r in temp_roots)
        if not (response or in_temp or candidate.endswith(_INTERMEDIATE)):
            return
        with contextlib.suppress(OSError):
            if os.path.getsize(path) > _MAX_INPUT_BYTES:
                return
        seen.add(path)
        found.append(Path(path))
        if response and depth < 2:
            with contextlib.suppress(OSError, ValueError):
                for arg in shlex.split(Path(path).read_text(errors="replace")):
                    consider(arg, depth + 1)

    for arg in argv[1:]:
        consider(arg)
    return found


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


def _rerun_script(
    argv: list[str], cwd: str, env: dict[str, str], restores: list[tuple[Path, str]], what: str
) -> str:
    lines = [
        "#!/usr/bin/env bash",
        f"# {what}",
        "# Exact argv, environment and directory; credentials left out or masked as ***",
        "# (see README.md).",
        "# Exit status is the command's: 128+N = died of signal N (136 SIGFPE, 139 SIGSEGV).",
        'here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
    ]
    for original, saved in restores:
        # Temporary inputs the build may have deleted come back from inputs/.
        q = shlex.quote(str(original))
        lines.append(
            f"[ -e {q} ] || {{ mkdir -p {shlex.quote(str(original.parent))} && "
            f'cp "$here/inputs/{saved}" {q}; }}'
        )
    lines.append(f"cd {shlex.quote(cwd)} || exit 1")
    env_args = " \\\n  ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    lines.append(f"env -i \\\n  {env_args} \\\n  {shlex.join(argv)}" if env else shlex.join(argv))
    lines += ["status=$?", 'echo "rerun.sh: exit status $status" >&2', "exit $status", ""]
    return "\n".join(lines)


def _copy_inputs(stage: Path, argv: list[str], cwd: str, output: str) -> list[tuple[Path, str]]:
    restores: list[tuple[Path, str]] = []
    for index, path in enumerate(_named_inputs(argv, cwd, output)):
        saved = f"{index}-{path.name}"
        (stage / "inputs").mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copy2(path, stage / "inputs" / saved)
            restores.append((path, saved))
    return restores


def _redacted_note(redacted: list[str], masked: list[str]) -> str:
    note = ""
    if redacted:
        note += f"\nLeft out of the recorded environment: {', '.join(redacted)}\n"
    if masked:
        note += f"\nRecorded with credentials masked as `***`: {', '.join(masked)}\n"
    return note


def _write_exec(path: Path, text: str) -> None:
    _write_private(path, text, 0o700)


def save_stall_bundle(
    root: Path,
    *,
    output: str,
    argv: list[str],
    cwd: str,
    env: dict[str, str] | None,
    evidence: str,
    verdict_data: dict[str, object],
    processes: list[dict[str, object]],
    output_tail: str,
    compiler: str,
    attempt: int,
) -> Path:
    """Command, env, cwd, versions, last output lines and /proc status/wchan/stack of the tree
    (collected by `collect_tree` before the kill)."""
    kept, redacted, masked = split_env(env)
    argv = redact_argv(argv)
    versions = {**host_versions(), "compiler": compiler}
    with _staged_dir(root, "stall", output) as (stage, final):
        _write_private(
            stage / "stall.json",
            json.dumps(
                {
                    "kind": "stall",
                    "output": output,
                    "argv": argv,
                    "cwd": cwd,
                    "attempt": attempt,
                    "evidence": evidence,
                    "verdict": verdict_data,
                    "versions": versions,
                    "env": kept,
                    "redacted_env": redacted,
                    "masked_env": masked,
                    "processes": processes,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
                indent=2,
            ),
        )
        _write_private(stage / "output-tail.txt", output_tail)
        _write_exec(
            stage / "rerun.sh",
            _rerun_script(argv, cwd, kept, [], f"Re-runs the command that stalled: {output}."),
        )
        tree = "\n".join(
            f"- `{p['pid']}` (parent {p['ppid']}) waits in `{p['wchan'] or '?'}`: `{p['cmdline']}`"
            for p in processes
        )
        _write_private(
            stage / "README.md",
            f"# Stalled job: `{output}` (attempt {attempt})\n\n"
            f"{evidence}\n\n## Process tree when it was killed\n\n{tree or '(gone)'}\n\n"
            "Full /proc status, wchan, syscall and kernel stack per process are in `stall.json`;"
            " the last output lines in `output-tail.txt`. `./rerun.sh` runs the command again.\n\n"
            "## Versions\n\n" + "".join(f"- {k}: {v}\n" for k, v in versions.items())
            + _redacted_note(redacted, masked),
        )
    return final[0]


def describe_exit(rc: int, sig: int) -> str:
    if sig:
        try:
            return f"signal {signal.Signals(sig).name} (exit status {128 + sig})"
        except ValueError:
            return f"signal {sig} (exit status {128 + sig})"
    return f"exit code {rc}"


def save_crash_repro(
    root: Path,
    *,
    output: str,
    argv: list[str],
    cwd: str,
    env: dict[str, str] | None,
    rc: int,
    sig: int,
    reason: str,
    stderr_tail: str,
    compiler: str,
    attempt: int,
    cancel: threading.Event | None = None,
) -> Path:
    """`rerun.sh` with the exact argv/env/cwd, compiler version, preprocessed input, temp inputs
    the command names, README. Runs the compiler (--version, -E): call it off the event loop.
    Raises Cancelled (and leaves nothing behind) once `cancel` is set."""
    kept, redacted, masked = split_env(env)
    run_env = dict(os.environ if env is None else env)
    run_env.pop("BUILDCTL_SOCKET", None)
    version = compiler_version(argv[0], run_env, cancel)
    versions = {**host_versions(), "compiler": compiler}
    recorded_argv = redact_argv(argv)  # what is written down; the real argv is what runs
    with _staged_dir(root, "crash", output) as (stage, final):
        _write_private(stage / "compiler-version.txt", version + "\n")
        _write_private(stage / "stderr.txt", stderr_tail)
        restores = _copy_inputs(stage, argv, cwd, output)
        source = next((a for a in reversed(argv) if a.endswith(_SOURCE_EXT)), "")
        pre_name = "preprocessed.i" if source.endswith(".c") else "preprocessed.ii"
        pre_argv = _preprocess_argv(argv, stage / pre_name)
        pre_note = "not applicable (no -c in the command)"
        if pre_argv:
            try:
                pre_rc, pre_out = _run_helper(pre_argv, cwd=cwd, env=run_env, timeout=300,
                                              cancel=cancel)
                pre_note = f"`{pre_name}`" if pre_rc == 0 else (
                    f"failed (exit {pre_rc}), see preprocess.log"
                )
                if pre_rc != 0:
                    (stage / pre_name).unlink(missing_ok=True)
                    _write_private(stage / "preprocess.log", pre_out)
            except (OSError, subprocess.TimeoutExpired) as exc:
                pre_note = f"failed: {exc}"
                (stage / pre_name).unlink(missing_ok=True)
        _write_exec(
            stage / "rerun.sh",
            _rerun_script(recorded_argv, cwd, kept, restores,
                          f"Re-runs the command that crashed building {output}."),
        )
        result = describe_exit(rc, sig)
        _write_private(
            stage / "README.md",
            f"# Compiler crash while building `{output}`\n\n"
            f"- result: {result}: {reason}\n- attempt: {attempt}\n"
            f"- working directory: `{cwd}`\n- preprocessed input: {pre_note}\n"
            + "".join(f"- {k}: {v}\n" for k, v in versions.items())
            + f"- `{recorded_argv[0]} --version`:\n\n```\n{version}\n```\n\n"
            "Reproduce with `./rerun.sh` (its exit status is the compiler's). Attach this directory"
            " (rerun.sh, compiler-version.txt, stderr.txt, the preprocessed input, inputs/) to the"
            " compiler bug report. Temporary inputs the command named are copied in `inputs/` and"
            " restored by rerun.sh when missing. Later attempts are logged in `attempts.log`.\n"
            + _redacted_note(redacted, masked),
        )
        _write_private(
            stage / "crash.json",
            json.dumps(
                {
                    "kind": "crash",
                    "output": output,
                    "argv": recorded_argv,
                    "cwd": cwd,
                    "rc": rc,
                    "signal": sig,
                    "reason": reason,
                    "attempt": attempt,
                    "versions": versions,
                    "env": kept,
                    "redacted_env": redacted,
                    "masked_env": masked,
                    "inputs": {saved: str(orig) for orig, saved in restores},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
                indent=2,
            ),
        )
        _write_private(stage / "attempts.log", f"attempt {attempt}: {result}: {reason}\n")
    return final[0]


def note_attempt(path: Path, attempt: int, text: str, stderr_tail: str = "") -> None:
    """Record what a later attempt of the same job did (crashed again, or passed: flaky)."""
    with contextlib.suppress(OSError):
        fd = os.open(path / "attempts.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(redact_text(f"attempt {attempt}: {text}\n"))
        if stderr_tail:
            _write_private(path / f"stderr-attempt-{attempt}.txt", stderr_tail)
