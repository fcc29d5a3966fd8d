"""Compiler crashes with real processes: faultcc dies of SIGFPE/SIGSEGV or prints an internal
compiler error; buildctl keeps a repro whose rerun.sh crashes the same way, retries once, then
fails naming it. Kills by buildctl itself (OOM guard, Ctrl-C) are never crashes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.faults.kit import (
    build_args,
    build_faultcc,
    env_for,
    find_child,
    make_project,
    wait_gone,
)

from buildctl import host
from buildctl.govern.repro import failure_lines, list_repros, resolve_repro, show_repro
from buildctl.report import BuildReport

MiB = 1024**2
GiB = 1024**3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faultcc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_faultcc(tmp_path_factory.mktemp("faultcc"))


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env_for(tmp), capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.parametrize(
    ("directive", "status", "sig"),
    [("crash=fpe", 136, signal.SIGFPE), ("crash=segv", 139, signal.SIGSEGV), ("ice=1", 4, None)],
)
def test_crash_leaves_a_repro_that_reproduces_it_retried_once_then_fails(
    tmp_path: Path, faultcc: Path, directive: str, status: int, sig: int | None
) -> None:
    # The command line names a response file in a temp dir: the repro must carry it.
    rsp = tmp_path / "flags" / "extra.rsp"
    rsp.parent.mkdir()
    rsp.write_text("-DFROM_RSP=41\n")
    src = make_project(tmp_path / "src", {
        "bad.cpp": f"// faultcc: say=about-to-fail {directive}\nint bad() {{ return FROM_RSP; }}\n",
        "good.cpp": "int good() { return FROM_RSP; }\n",
    })
    build = tmp_path / "b"
    result = _run(build_args(src, build, "--report", str(tmp_path / "r.json"), compiler=faultcc,
                             cmake=(f"-DCMAKE_CXX_FLAGS=@{rsp}",)), tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out

    report = json.loads((tmp_path / "r.json").read_text())
    job = next(j for j in report["jobs"] if j["output"].endswith("bad.cpp.o"))
    assert job["status"] == "crashed" and job["attempts"] == 2
    assert job["exit_code"] == status and job["signal"] == sig
    crashes = [e for e in report["events"] if e["kind"] == "crash"]
    assert len(crashes) == 2 and all(e["data"]["repro"] == job["repro_dir"] for e in crashes)
    assert [e["kind"] for e in report["events"] if e["kind"] in ("stall", "hang")] == []

    repro = Path(job["repro_dir"])
    assert repro.parent == build / ".buildctl" / "repro"
    # The path is in ninja's output (the launcher's line) and in the summary lines.
    assert f"repro: {repro} (./rerun.sh reproduces it)" in out
    assert any(str(repro) in line for line in failure_lines(BuildReport.read(tmp_path / "r.json")))
    # Versions, preprocessed input (made with the exact flags), the response file.
    assert "g++" in (repro / "compiler-version.txt").read_text()
    readme = (repro / "README.md").read_text()
    assert "buildctl:" in readme and "kernel:" in readme and "--version" in readme
    assert "return 41;" in (repro / "preprocessed.ii").read_text()
    assert "about-to-fail" in (repro / "stderr.txt").read_text()
    assert "attempt 2:" in (repro / "attempts.log").read_text()
    manifest = json.loads((repro / "crash.json").read_text())
    assert manifest["argv"][0] == str(faultcc) and f"@{rsp}" in manifest["argv"]
    assert manifest["env"]["PATH"]
    # rerun.sh reproduces the crash, even after the build deleted its temporary input.
    rsp.unlink()
    rerun = subprocess.run(["bash", str(repro / "rerun.sh")], capture_output=True, text=True,
                           timeout=60, check=False)
    assert rerun.returncode == status, rerun.stderr
    assert "about-to-fail" in rerun.stderr
    assert rsp.read_text() == "-DFROM_RSP=41\n"
    # `buildctl repro list/show`.
    (summary,) = list_repros(build / ".buildctl" / "repro")
    assert summary.kind == "crash" and summary.output == job["output"]
    assert resolve_repro(build / ".buildctl" / "repro", "1") == repro
    assert "rerun.sh" in show_repro(repro)
    listed = _run([sys.executable, "-m", "buildctl", "repro", "list", "--build-dir", str(build),
                   "--json"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["kind"] == "crash" and entry["output"] == job["output"]
    assert entry["path"] == str(repro)


def test_crash_on_the_first_attempt_only_is_retried_and_the_build_succeeds(
    tmp_path: Path, faultcc: Path
) -> None:
    once = tmp_path / "crashed-once"
    src = make_project(tmp_path / "src", {
        "flaky.cpp": f"// faultcc: once={once} crash=segv\nint flaky() {{ return 5; }}\n",
        "fine.cpp": "int fine() { return 6; }\n",
    })
    result = _run(build_args(src, tmp_path / "b", "--report", str(tmp_path / "r.json"),
                             compiler=faultcc), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    job = next(j for j in report["jobs"] if j["output"].endswith("flaky.cpp.o"))
    assert job["status"] == "ok" and job["attempts"] == 2
    (crash,) = [e for e in report["events"] if e["kind"] == "crash"]
    assert crash["output"] == job["output"] and crash["data"]["signal"] == signal.SIGSEGV
    assert job["repro_dir"] == crash["data"]["repro"]
    assert "succeeded (the crash is flaky)" in (Path(job["repro_dir"]) / "attempts.log").read_text()
    assert (tmp_path / "b" / "libfaults.so").exists()


def test_guard_kills_are_retried_and_never_crashes(tmp_path: Path, faultcc: Path) -> None:
    # Two jobs of 1 GiB each take the host under a critical mark set 1 GiB below what it has
    # now; killing one lifts it back (the guard kills only where that can help), so the guard
    # kills one, and the other finishes alone. The killed compiler's death must not read as a
    # crash. Margins: ~0.7 GiB on each side for buildctl's own processes and a busy host.
    avail = host.available_bytes()
    if avail < 6 * GiB:
        pytest.skip("needs ~6 GiB of free memory for two 1 GiB jobs and the margins")
    src = make_project(tmp_path / "src", {
        "a.cpp": "// faultcc: alloc=1024 spin=2500\nint a() { return 1; }\n",
        "b.cpp": "// faultcc: alloc=1024 spin=2500\nint b() { return 2; }\n",
    })
    # --force: marks this near the host's free memory are refused otherwise
    result = _run(build_args(src, tmp_path / "b", "-j", "2",
                             "--low-water", str(avail - 768 * MiB),
                             "--critical", str(avail - 1024 * MiB), "--force",
                             "--report", str(tmp_path / "r.json"), compiler=faultcc), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    kinds = [e["kind"] for e in report["events"]]
    assert "oom-guard-kill" in kinds and "retry" in kinds
    assert "crash" not in kinds
    assert all(j["status"] == "ok" and j["repro_dir"] is None for j in report["jobs"])
    assert max(j["attempts"] for j in report["jobs"]) >= 2
    assert list_repros(tmp_path / "b" / ".buildctl" / "repro") == []


@pytest.mark.parametrize(
    ("target", "sig", "rc"),
    [("buildctl", signal.SIGINT, 130), ("buildctl", signal.SIGTERM, 130),
     ("ninja", signal.SIGTERM, 1), ("ninja", signal.SIGKILL, 1)],
)
def test_interrupt_never_leaves_a_repro(
    tmp_path: Path, faultcc: Path, target: str, sig: int, rc: int
) -> None:
    # Both compilers answer SIGTERM/SIGINT with an ICE message and a SIGSEGV death: the worst
    # case for telling an interrupt from a crash. Stopping ninja makes it SIGTERM the launchers,
    # which pass it on to those compilers.
    src = make_project(tmp_path / "src", {
        "long.cpp": "// faultcc: onterm=1 spin=60000\nint long_one() { return 1; }\n",
        "crashy.cpp": "// faultcc: onterm=1 spin=60000\nint crashy() { return 2; }\n",
    })
    proc = subprocess.Popen(
        build_args(src, tmp_path / "b", "-j", "2", "--report", str(tmp_path / "r.json"),
                   compiler=faultcc),
        env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    for name in ("crashy.cpp", "long.cpp"):
        find_child(proc.pid, lambda p, n=name: p.name() == "faultcc" and n in " ".join(p.cmdline()))
    if target == "ninja":
        find_child(proc.pid, lambda p: p.name() == "ninja").send_signal(sig)
    else:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == rc, out
    # Launchers still connected when the governor stops end quietly (Python 3.11 printed an
    # asyncio CancelledError traceback for each of them).
    assert "Traceback" not in out and "CancelledError" not in out, out
    if target == "ninja":  # killed from outside: no compiler output to read
        assert "from outside buildctl" in out and "rerun the same command" in out, out
        if sig == signal.SIGKILL:
            assert "killed by SIGKILL" in out, out
        assert "read the compiler output" not in out, out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == ("interrupted" if rc == 130 else "failed")
    assert not [e for e in report["events"] if e["kind"] in ("crash", "stall", "hang", "retry")]
    assert all(j["status"] == "interrupted" for j in report["jobs"])
    assert list_repros(tmp_path / "b" / ".buildctl" / "repro") == []
    assert not wait_gone(str(tmp_path))
