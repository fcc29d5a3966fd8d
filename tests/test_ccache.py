"""Compiler caches: a user launcher (ccache) is chained after buildctl's, never instead of it,
and cache hits are told from compiles. Real CMake + ccache builds of a tiny project."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from helpers import FIXTURES, ROOT, isolated_env, read_report, run_buildctl

from buildctl.govern import launcher
from buildctl.govern.cache import (
    CacheEvidence,
    chain_launchers,
    compiler_argv,
    evidence_from_done,
    is_cache_hit,
    masquerading_cache,
    split_cache_wrapper,
    stats_log_says_hit,
    strip_launcher_defines,
    user_launchers,
)

MiB = 1024**2
OURS = {
    "CMAKE_CXX_COMPILER_LAUNCHER": "/py;-I;-S;/x/launcher.py;--socket;/s;--",
    "CMAKE_CXX_LINKER_LAUNCHER": "/py;-I;-S;/x/launcher.py;--socket;/s;--",
}
CCACHE = shutil.which("ccache")
needs_ccache = pytest.mark.skipif(
    CCACHE is None, reason="ccache is not installed (`apt-get install ccache`; ./bootstrap test "
    "installs it when run as root)"
)


# --- pure: chaining ------------------------------------------------------------------------------


def test_user_launcher_from_define_is_chained_after_buildctls() -> None:
    args = ["-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    theirs = user_launchers(args, {})
    chained = chain_launchers(OURS, theirs)
    assert chained["CMAKE_CXX_COMPILER_LAUNCHER"] == OURS["CMAKE_CXX_COMPILER_LAUNCHER"] + ";ccache"
    assert chained["CMAKE_CXX_LINKER_LAUNCHER"] == OURS["CMAKE_CXX_LINKER_LAUNCHER"]
    assert strip_launcher_defines(args) == ["-DCMAKE_BUILD_TYPE=Release"]


def test_typed_and_two_token_defines_are_recognised() -> None:
    args = [
        "-D", "CMAKE_C_COMPILER_LAUNCHER=sccache", "-DCMAKE_CXX_COMPILER_LAUNCHER:STRING=ccache"
    ]
    assert user_launchers(args, {}) == {
        "CMAKE_C_COMPILER_LAUNCHER": "sccache",
        "CMAKE_CXX_COMPILER_LAUNCHER": "ccache",
    }
    assert strip_launcher_defines(args) == []


def test_precedence_command_line_over_cmake_args_over_env() -> None:
    env = {
        "CMAKE_CXX_COMPILER_LAUNCHER": "from-env",
        "CMAKE_C_COMPILER_LAUNCHER": "c-from-env",
        "CMAKE_ARGS": "-DCMAKE_CXX_COMPILER_LAUNCHER=from-cmake-args -DFOO=1",
    }
    assert user_launchers([], env)["CMAKE_CXX_COMPILER_LAUNCHER"] == "from-env"
    found = user_launchers([], env, args_vars=("CMAKE_ARGS",))
    assert found == {
        "CMAKE_CXX_COMPILER_LAUNCHER": "from-cmake-args",
        "CMAKE_C_COMPILER_LAUNCHER": "c-from-env",
    }
    cli = ["-DCMAKE_CXX_COMPILER_LAUNCHER=from-cli"]
    assert user_launchers(cli, env, ("CMAKE_ARGS",))["CMAKE_CXX_COMPILER_LAUNCHER"] == "from-cli"


def test_skbuild_cmake_args_items_and_our_own_launcher_are_handled() -> None:
    env = {"SKBUILD_CMAKE_ARGS": "-DA=1;-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"}
    assert user_launchers([], env, ("SKBUILD_CMAKE_ARGS",)) == {
        "CMAKE_CXX_COMPILER_LAUNCHER": "ccache"
    }
    # buildctl's own launcher in the environment (a nested run) is not chained after itself.
    ours_in_env = {"CMAKE_CXX_COMPILER_LAUNCHER": "/py;/buildctl/govern/launcher.py;--"}
    assert user_launchers([], ours_in_env) == {}


def test_split_cache_wrapper() -> None:
    assert split_cache_wrapper(["/usr/bin/ccache", "g++", "-c", "a.cc"]) == (
        "ccache",
        ["g++", "-c", "a.cc"],
    )
    assert split_cache_wrapper(["ccache", "max_size=1G", "g++", "-c", "a.cc"])[1][0] == "g++"
    assert split_cache_wrapper(["g++", "-c", "a.cc"]) == (None, ["g++", "-c", "a.cc"])
    assert compiler_argv(["sccache", "clang++", "-c", "x.cc"]) == ["clang++", "-c", "x.cc"]


# --- pure: telling hits from compiles ----------------------------------------------------------

HIT_LOG = "# a.cc\ndirect_cache_hit\nlocal_storage_hit\n"
MISS_LOG = "# a.cc\ncache_miss\ndirect_cache_miss\nlocal_storage_write\n"
CCACHE_COMPILE = ["ccache", "g++", "-c", "a.cc", "-o", "a.o"]


def evidence(**kw: object) -> CacheEvidence:
    base: dict = {"argv": CCACHE_COMPILE, "kind": "compile", "cpu_s": 0.01,
                  "peak_rss_bytes": 5 * MiB}
    base.update(kw)
    return CacheEvidence(**base)


@pytest.mark.parametrize(
    ("kw", "hit"),
    [
        ({"stats_log": HIT_LOG}, True),
        ({"stats_log": MISS_LOG}, False),
        # The log decides even when the numbers look like a hit.
        ({"stats_log": MISS_LOG, "history_peak_bytes": 500 * MiB, "history_wall_s": 20.0}, False),
        # No log (sccache): far below the history in CPU time and RSS together.
        ({"history_peak_bytes": 500 * MiB, "history_wall_s": 20.0}, True),
        ({"history_peak_bytes": 500 * MiB, "history_wall_s": 20.0, "cpu_s": 15.0}, False),
        ({"history_peak_bytes": 500 * MiB, "history_wall_s": 20.0,
          "peak_rss_bytes": 400 * MiB}, False),
        # Too little history to tell a hit from a fast compile.
        ({"history_peak_bytes": 20 * MiB, "history_wall_s": 0.2}, False),
        ({}, False),
        # Not a cached command, or not a compile: never a hit.
        ({"argv": ["g++", "-c", "a.cc"], "history_peak_bytes": 500 * MiB,
          "history_wall_s": 20.0}, False),
        ({"kind": "link", "stats_log": HIT_LOG}, False),
    ],
)
def test_is_cache_hit(kw: dict, hit: bool) -> None:
    assert is_cache_hit(evidence(**kw)) is hit


def test_a_compiler_path_linking_to_ccache_is_a_cache(tmp_path: Path) -> None:
    # Debian's /usr/lib/ccache/g++ is a link to ccache: runs through it can be hits.
    (tmp_path / "ccache").write_text("")
    (tmp_path / "masq").mkdir()
    (tmp_path / "masq" / "g++").symlink_to(tmp_path / "ccache")
    masq = str(tmp_path / "masq" / "g++")
    assert masquerading_cache(masq) == "ccache"
    assert masquerading_cache("g++") is None and masquerading_cache("/usr/bin/ccache") is None
    assert is_cache_hit(evidence(argv=[masq, "-c", "a.cc"], stats_log=HIT_LOG)) is True
    assert is_cache_hit(evidence(argv=[masq, "-c", "a.cc"], stats_log=MISS_LOG)) is False
    assert is_cache_hit(evidence(argv=["/usr/bin/g++", "-c", "a.cc"], stats_log=HIT_LOG)) is False


def test_stats_log_that_names_neither_leaves_the_decision_to_the_numbers() -> None:
    assert stats_log_says_hit("# a.o\n") is None
    assert stats_log_says_hit("# a.o\ncalled_for_link\n") is False


def test_evidence_from_a_done_message_uses_only_the_jobs_own_history() -> None:
    done = {"rc": 0, "cpu_s": 0.02, "maxrss": 5 * MiB, "cache_log": None}
    own = evidence_from_done(CCACHE_COMPILE, "compile", done, 5 * MiB, 500 * MiB, 20.0, "exact")
    assert is_cache_hit(own) is True  # sccache-like: numbers far below its own history
    prior = evidence_from_done(CCACHE_COMPILE, "compile", done, 5 * MiB, 1024 * MiB, None, "prior")
    assert is_cache_hit(prior) is False  # a prior is no history
    family = evidence_from_done(CCACHE_COMPILE, "compile", done, 5 * MiB, 500 * MiB, 20.0,
                                "family")
    assert is_cache_hit(family) is False  # nor is a neighbour's
    logged = evidence_from_done(CCACHE_COMPILE, "compile", {**done, "cache_log": MISS_LOG},
                                5 * MiB, 500 * MiB, 20.0, "exact")
    assert is_cache_hit(logged) is False  # ccache's own word wins


# --- real ccache -------------------------------------------------------------------------------


class _Recorder:
    """Stands in for the governor channel: _run_once only sends `started` on it."""

    closed = False

    def __init__(self) -> None:
        self.on_eof: list = []
        self.sent: list[dict] = []

    def send(self, **msg: object) -> bool:
        self.sent.append(msg)
        return True


@needs_ccache
def test_launcher_reads_ccaches_own_verdict_per_job(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CCACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    source = tmp_path / "a.cc"
    source.write_text((FIXTURES / "tinycc" / "one.cc").read_text())
    argv = [str(CCACHE), "g++", "-c", str(source), "-o", str(tmp_path / "a.o")]
    verdicts = []
    for _ in range(2):
        rc, facts = launcher._run_once(argv, _Recorder())
        assert rc == 0
        ev = CacheEvidence(argv=argv, kind="compile", cpu_s=facts["cpu_s"],
                           peak_rss_bytes=facts["maxrss"], stats_log=facts["cache_log"])
        verdicts.append(is_cache_hit(ev))
    assert verdicts == [False, True]
    assert not list(tmp_path.glob("buildctl-ccache-*"))  # per-job logs are removed


def _ccache_counters(cache_dir: Path) -> dict[str, int]:
    out = subprocess.run(
        [str(CCACHE), "--print-stats"], env={**os.environ, "CCACHE_DIR": str(cache_dir)},
        capture_output=True, text=True, check=True,
    ).stdout
    counters = {}
    for line in out.splitlines():
        name, _, value = line.partition("\t")
        if value.strip().isdigit():
            counters[name] = int(value)
    return counters


def _build(tmp_path: Path, name: str, env: dict[str, str], *cmake_args: str):
    build = tmp_path / name
    report = tmp_path / f"{name}.json"
    proc = run_buildctl(
        "build", "--source", str(FIXTURES / "tinycc"), "--build-dir", str(build), "--plain",
        "-j", "2", "--report", str(report), "--", *cmake_args, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cache = (build / "CMakeCache.txt").read_text()
    launcher_line = next(
        line for line in cache.splitlines() if line.startswith("CMAKE_CXX_COMPILER_LAUNCHER")
    )
    return read_report(report), launcher_line


def _compile_runs(db: Path) -> list[tuple[str, int, int]]:
    """(output, peak, cache_hit) of every compile the profile DB holds, oldest first."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT output, peak_rss, cache_hit FROM runs WHERE kind='compile' ORDER BY id"
        ).fetchall()


def _hits_are_not_peaks(db: Path) -> None:
    """First build: 3 misses measured; second build: 3 hits, kept as hits, never as peaks."""
    runs = _compile_runs(db)
    assert [hit for _, _, hit in runs] == [0, 0, 0, 1, 1, 1], runs


@needs_ccache
@pytest.mark.slow
def test_ccache_after_dashdash_is_chained_and_jobs_stay_governed(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    env["CCACHE_DIR"] = str(tmp_path / "ccache")
    report, line = _build(tmp_path, "b1", env, "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
    # buildctl's launcher first, then ccache: buildctl → ccache → compiler.
    assert "launcher.py" in line and line.endswith(";ccache")
    assert line.index("launcher.py") < line.index(";ccache")
    compiles = [j for j in report["jobs"] if j["kind"] == "compile"]
    assert len(compiles) == 3 and all(j["status"] == "ok" for j in compiles)
    first = _ccache_counters(tmp_path / "ccache")
    assert first.get("cache_miss", 0) == 3
    # A second build dir compiles the same sources: ccache serves them, still governed.
    report, _ = _build(tmp_path, "b2", env, "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
    assert len([j for j in report["jobs"] if j["kind"] == "compile"]) == 3
    second = _ccache_counters(tmp_path / "ccache")
    hits = second.get("direct_cache_hit", 0) + second.get("preprocessed_cache_hit", 0)
    assert hits - first.get("direct_cache_hit", 0) - first.get("preprocessed_cache_hit", 0) == 3
    _hits_are_not_peaks(Path(env["BUILDCTL_PROFILE_DB"]))


MASQUERADE = Path("/usr/lib/ccache/g++")  # Debian's ccache package: a link to ccache per compiler


@needs_ccache
@pytest.mark.slow
@pytest.mark.skipif(not MASQUERADE.exists(), reason="no /usr/lib/ccache/g++ (Debian's ccache)")
def test_ccache_as_the_compiler_path_is_governed_and_hits_are_not_peaks(tmp_path: Path) -> None:
    # The other way round: ccache comes as the compiler (a link), not as a launcher; buildctl's
    # launcher is still first and a hit is still told from a compile.
    env = isolated_env(tmp_path)
    env["CCACHE_DIR"] = str(tmp_path / "ccache")
    compiler = f"-DCMAKE_CXX_COMPILER={MASQUERADE}"
    for name in ("b1", "b2"):
        report, line = _build(tmp_path, name, env, compiler)
        assert "launcher.py" in line and line.endswith(";--")  # no launcher after ours
        assert len([j for j in report["jobs"] if j["kind"] == "compile"]) == 3
    _hits_are_not_peaks(Path(env["BUILDCTL_PROFILE_DB"]))


@needs_ccache
@pytest.mark.slow
def test_ccache_from_environment_keeps_buildctls_launcher(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    env["CCACHE_DIR"] = str(tmp_path / "ccache")
    env["CMAKE_CXX_COMPILER_LAUNCHER"] = "ccache"
    report, line = _build(tmp_path, "b", env)
    assert "launcher.py" in line and line.endswith(";ccache")
    assert len([j for j in report["jobs"] if j["kind"] == "compile"]) == 3
    # CMake's compiler check also goes through the environment's launcher: at least 3 misses.
    assert _ccache_counters(tmp_path / "ccache").get("cache_miss", 0) >= 3


@needs_ccache
@pytest.mark.slow
def test_wheel_chains_a_ccache_define_after_buildctls_launcher(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    env["CCACHE_DIR"] = str(tmp_path / "ccache")
    report = tmp_path / "wheel.json"
    # A cold build dir of its own; the torch env shared with the other wheel tests.
    cache = tmp_path / "cache"
    (cache / "envs").mkdir(parents=True)
    shared_envs = ROOT / ".buildctl-cache" / "envs"
    shared_envs.mkdir(parents=True, exist_ok=True)
    (cache / "envs" / "2.13.0+cpu").symlink_to(shared_envs / "2.13.0+cpu", True)
    proc = run_buildctl(
        "wheel", "--torch", "2.13.0+cpu", "--source", str(FIXTURES / "run_skbuild"), "--plain",
        "--out", str(tmp_path / "out"), "--cache-dir", str(cache),
        "-D", "CMAKE_CXX_COMPILER_LAUNCHER=ccache", "--report", str(report), env=env,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    compiles = [j["output"] for j in read_report(report)["jobs"] if j["kind"] == "compile"]
    assert {Path(o).name for o in compiles} >= {"alpha.cc.o", "beta.cc.o"}  # governed
    assert _ccache_counters(tmp_path / "ccache").get("cache_miss", 0) >= 2  # and cached
