"""One corpus of bad input, run against every command.

Each command gets each bad flag it accepts (--jobs 0, budgets and watermarks that cannot work,
--hang-after 0, --build-dir naming a file, --report naming a directory, --profiles naming a
directory, plan --mem 0), files that are not UTF-8, profile imports of impossible data, and
random bytes in every file it reads. Every case must end with exit 2 or 1 (0 where buildctl
recovers on its own, e.g. a corrupt profile DB moved aside), at most 6 lines on stderr, no
traceback, and nothing lost: the profile DB's entries and the build dir's previous report are
still there. Most cases call `buildctl.cli.main` in this process; a few run `python -m buildctl`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from buildctl.cli import build_parser, main
from buildctl.govern.profiles import ProfileDB, ProfileEntry
from buildctl.report import BuildReport

MiB = 1024**2
RNG_SEED = 20261202
BAD_EXIT = (1, 2)
RECOVERS = (0, 1, 2)  # random bytes in a file buildctl can rebuild or skip


@dataclass
class World:
    """A user's state before the bad command: a profile DB, a build dir with a previous report,
    a small CMake project, a settings dir, and some files and directories to misuse."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "profiles.sqlite"

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def report(self) -> Path:
        return self.build / ".buildctl" / "report.json"

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def config(self) -> Path:
        return self.root / "config" / "buildctl" / "config.toml"

    @property
    def a_file(self) -> Path:
        return self.root / "notes.txt"

    @property
    def a_dir(self) -> Path:
        return self.root / "somedir"

    @property
    def repro(self) -> Path:
        return self.build / ".buildctl" / "repro" / "20260101-000000-crash-a.o"

    def write(self, name: str, data: bytes) -> Path:
        path = self.root / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


def _random_bytes(label: str, size: int = 4096) -> bytes:
    rng = random.Random(f"{RNG_SEED}-{label}")
    return bytes(rng.randrange(256) for _ in range(size))


NOT_UTF8 = b'{"schema": "buildctl.profiles/2", "entries": [{"output": "\xff\xfe\xc3(x"}]}\n'
ENTRY = {"output": "CMakeFiles/p.dir/a.cpp.o", "kind": "compile", "compiler": "g++ 12",
         "peak_rss_bytes": 300 * MiB, "wall_s": 2.0, "cpu_s": 1.5, "project": "p"}


def _export(**change: object) -> bytes:
    return json.dumps({"schema": "buildctl.profiles/2",
                       "entries": [{**ENTRY, **change}]}).encode()


TORCH_DIR = str(Path(importlib.util.find_spec("torch").origin).parent)  # type: ignore[union-attr]


def _make_world(root: Path) -> World:
    world = World(root)
    db = ProfileDB(world.db)
    for index, (output, mb) in enumerate(
        (("CMakeFiles/p.dir/a.cpp.o", 300), ("CMakeFiles/p.dir/b.cpp.o", 500), ("libp.so", 800))
    ):
        db.record(ProfileEntry(output=output, kind="link" if output.endswith(".so") else "compile",
                               compiler="g++ 12", peak_rss_bytes=mb * MiB, wall_s=2.0 + index,
                               cpu_s=1.5, project="p", recorded_at=1000.0 + index))
    db.close()
    world.src.mkdir()
    (world.src / "a.cpp").write_text("int a() { return 1; }\n")
    (world.src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.21)\nproject(p CXX)\nadd_library(p SHARED a.cpp)\n")
    world.report.parent.mkdir(parents=True)
    BuildReport(budget_bytes=4096 * MiB, slots=2, status="ok", exit_code=0).write(world.report)
    world.repro.mkdir(parents=True)
    (world.repro / "crash.json").write_text(json.dumps(
        {"kind": "crash", "output": "a.o", "reason": "SIGSEGV", "attempt": 1}))
    (world.repro / "README.md").write_text("# crash\n")
    world.config.parent.mkdir(parents=True)
    world.a_file.write_text("my notes\n")
    world.a_dir.mkdir()
    return world


# --- the commands, each with arguments that are fine but for what a case breaks ---------------

Args = Callable[[World], list[str]]

COMMANDS: dict[str, Args] = {
    "build": lambda w: ["build", "--source", str(w.src), "--build-dir", str(w.build), "--plain"],
    "run": lambda w: ["run", "--build-dir", str(w.build), "--plain"],
    "wheel": lambda w: ["wheel", "--torch", "2.13.0", "--out", str(w.root / "out"), "--plain"],
    "matrix": lambda w: ["matrix", "--torch", "2.13.0", "--out", str(w.root / "out"), "--plain"],
    "verify": lambda w: ["verify", "--against", TORCH_DIR],
    "plan": lambda w: ["plan", "--profiles", str(w.db)],
    "profile show": lambda w: ["profile", "show", "--profiles", str(w.db)],
    "profile export": lambda w: ["profile", "export", "--profiles", str(w.db)],
    "profile import": lambda w: ["profile", "import", "--profiles", str(w.db)],
    "repro list": lambda w: ["repro", "list", "--build-dir", str(w.build)],
    "repro show": lambda w: ["repro", "show", "--build-dir", str(w.build)],
    "doctor": lambda w: ["doctor", "--profiles", str(w.db)],
    "env": lambda w: ["env", "--compiler", "2025.3"],
}
# What comes after the options (positional arguments, the build command of `run`).
TAILS: dict[str, Args] = {
    "run": lambda w: ["--", "true"],
    "verify": lambda w: [str(w.write("demo-1.0-py3-none-any.whl", b""))],
    "profile export": lambda w: [str(w.root / "export.json")],
    "profile import": lambda w: [str(w.write("good.json", _export()))],
    "repro show": lambda w: ["1"],
}


def _options(command: str) -> set[str]:
    """The option strings a command's parser takes (so a flag is only given where it exists)."""
    parser = build_parser()
    for word in command.split():
        actions = [a for a in parser._actions if a.choices and word in a.choices]
        parser = actions[0].choices[word]  # type: ignore[index]
    # Options that take a value only: `profile show --jobs` is a switch, not a slot count.
    return {s for action in parser._actions if action.nargs != 0 for s in action.option_strings}


# --- the bad inputs ------------------------------------------------------------------------------

HOST_TOTAL = psutil.virtual_memory().total + psutil.swap_memory().total
FLAGS: list[tuple[str, Callable[[World], list[str]]]] = [
    ("--jobs 0", lambda w: ["--jobs", "0"]),
    ("--jobs beyond what ninja can start", lambda w: ["--jobs", "99999999999999999999"]),
    ("--mem-budget 0", lambda w: ["--mem-budget", "0"]),
    ("--mem-budget above RAM+swap", lambda w: ["--mem-budget", "100G"]),
    ("--low-water above RAM", lambda w: ["--low-water", "100G"]),
    ("--critical above --low-water", lambda w: ["--low-water", "1G", "--critical", "2G"]),
    ("--hang-after 0", lambda w: ["--hang-after", "0"]),
    ("--mem 0", lambda w: ["--mem", "0"]),
    ("--build-dir naming a file", lambda w: ["--build-dir", str(w.a_file)]),
    ("--report naming a directory", lambda w: ["--report", str(w.a_dir)]),
    ("--profiles naming a directory", lambda w: ["--profiles", str(w.a_dir)]),
]


@dataclass(frozen=True)
class Case:
    command: str
    label: str
    args: Args  # the whole argv
    setup: Callable[[World], None] | None = None
    exits: tuple[int, ...] = BAD_EXIT

    @property
    def id(self) -> str:
        return f"{self.command}: {self.label}"


def _flag_cases() -> list[Case]:
    assert HOST_TOTAL < 100 * 1024**3, "the corpus assumes a host with less than 100 GiB"
    cases = []
    for command, base in COMMANDS.items():
        options = _options(command)
        tail = TAILS.get(command, lambda w: [])
        for label, flag in FLAGS:
            words = [word for word in flag(World(Path("/x"))) if word.startswith("--")]
            if not all(word in options for word in words):
                continue
            cases.append(Case(command, label,
                              lambda w, b=base, f=flag, t=tail: [*b(w), *f(w), *t(w)]))
    return cases


def _with_tail(command: str, tail: Args) -> Args:
    return lambda w: [*COMMANDS[command](w), *tail(w)]


def _corrupt(path_of: Callable[[World], Path], data: bytes) -> Callable[[World], None]:
    def setup(world: World) -> None:
        path = path_of(world)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return setup


def _file_cases() -> list[Case]:
    noise = _random_bytes
    cases = [
        # Files named on the command line.
        Case("plan", "--report not UTF-8",
             lambda w: ["plan", "--report", str(w.write("r.json", NOT_UTF8))]),
        Case("plan", "--report random bytes",
             lambda w: ["plan", "--report", str(w.write("r.json", noise("plan-report")))]),
        Case("plan", "--report naming a directory", lambda w: ["plan", "--report", str(w.a_dir)]),
        Case("plan", "--profiles-json not UTF-8",
             lambda w: ["plan", "--profiles-json", str(w.write("e.json", NOT_UTF8))]),
        Case("plan", "--profiles-json random bytes",
             lambda w: ["plan", "--profiles-json", str(w.write("e.json", noise("plan-json")))]),
        Case("plan", "--profiles-json peak 1e35",
             lambda w: ["plan", "--profiles-json", str(w.write("e.json", b'{"schema": '
                        b'"buildctl.profiles/2", "entries": [{"output": "a.o", "kind": "compile",'
                        b' "compiler": "cc", "peak_rss_bytes": 1e35}]}'))]),
        Case("plan", "--profiles-json negative peak",
             lambda w: ["plan", "--profiles-json",
                        str(w.write("e.json", _export(peak_rss_bytes=-5)))]),
        Case("verify", "wheel of random bytes",
             lambda w: ["verify", "--against", TORCH_DIR,
                        str(w.write("demo-1.0-py3-none-any.whl", noise("wheel")))]),
        Case("verify", "wheel that is not UTF-8 text nor a zip",
             lambda w: ["verify", "--against", TORCH_DIR,
                        str(w.write("demo-1.0-py3-none-any.whl", NOT_UTF8))]),
        Case("verify", "a directory named as the wheel",
             lambda w: ["verify", "--against", TORCH_DIR, str(w.a_dir)]),
        Case("env", "--oneapi-root naming a file",
             lambda w: ["env", "--compiler", "2025.3", "--oneapi-root", str(w.a_file)]),
        # The profile DB itself: random bytes are moved aside and a fresh DB started.
        *[Case(command, "profile DB of random bytes", _with_tail(command, TAILS.get(
                   command, lambda w: [])), _corrupt(lambda w: w.db, noise("db")), RECOVERS)
          for command in ("plan", "profile show", "profile export", "profile import", "doctor",
                          "run", "build")],
        # Settings files every governed command reads.
        *[Case(command, "config.toml of random bytes",
               _with_tail(command, TAILS.get(command, lambda w: [])),
               _corrupt(lambda w: w.config, noise("config")))
          for command in ("build", "run", "wheel", "matrix")],
        *[Case(command, "config.toml not UTF-8",
               _with_tail(command, TAILS.get(command, lambda w: [])),
               _corrupt(lambda w: w.config, b'mem_budget = "\xff\xfe"\n'))
          for command in ("build", "run", "wheel", "matrix")],
        Case("build", "pyproject.toml of random bytes", COMMANDS["build"],
             _corrupt(lambda w: w.src / "pyproject.toml", noise("pyproject"))),
        # What a build dir holds from earlier runs.
        Case("build", "previous report of random bytes", COMMANDS["build"],
             _corrupt(lambda w: w.report, noise("prev-report")), RECOVERS),
        Case("run", "previous report of random bytes", _with_tail("run", TAILS["run"]),
             _corrupt(lambda w: w.report, noise("prev-report-run")), RECOVERS),
        Case("build", "configure stamp of random bytes", COMMANDS["build"],
             _corrupt(lambda w: w.build / ".buildctl" / "configure.stamp", noise("stamp")),
             RECOVERS),
        Case("build", "CMakeCache.txt of random bytes", COMMANDS["build"],
             _corrupt(lambda w: w.build / "CMakeCache.txt", noise("cache")), RECOVERS),
        Case("build", "CMakeLists.txt of random bytes", COMMANDS["build"],
             _corrupt(lambda w: w.src / "CMakeLists.txt", noise("cmakelists"))),
        # Crash repros and stall bundles.
        *[Case(command, f"{name} of random bytes",
               _with_tail(command, TAILS.get(command, lambda w: [])),
               _corrupt(lambda w, n=name: w.repro / n, noise(f"repro-{name}")), RECOVERS)
          for command in ("repro list", "repro show")
          for name in ("crash.json", "README.md", "attempts.log")],
        Case("repro show", "a manifest that is a JSON list", _with_tail("repro show", TAILS[
             "repro show"]), _corrupt(lambda w: w.repro / "crash.json", b"[1, 2]"), RECOVERS),
    ]
    imports = {
        "not UTF-8": NOT_UTF8,
        "random bytes": noise("import"),
        "peak 1e35": (b'{"schema": "buildctl.profiles/2", "entries": [{"output": "a.o", "kind": '
                      b'"compile", "compiler": "cc", "peak_rss_bytes": 1e35}]}'),
        "negative peak": _export(peak_rss_bytes=-300 * MiB),
        "negative wall time": _export(wall_s=-1.0),
        "output ../../etc/passwd": _export(output="../../etc/passwd"),
        "absolute output /etc/passwd": _export(output="/etc/passwd"),
        "entries not a list": b'{"schema": "buildctl.profiles/2", "entries": {"a": 1}}',
        "deeply nested": b"[" * 100_000,
    }
    cases += [
        Case("profile import", label, lambda w, d=data, lb=label: [
            *COMMANDS["profile import"](w), str(w.write(f"import-{len(lb)}.json", d))])
        for label, data in imports.items()
    ]
    return cases


CASES = _flag_cases() + _file_cases()


# --- checks --------------------------------------------------------------------------------------


def _entries(db: Path) -> set[tuple[str, int]]:
    """The measurements a DB holds, read from a copy (reading must change nothing)."""
    if not db.is_file() or not db.read_bytes().startswith(b"SQLite format 3\0"):
        return set()
    copy = db.parent / "copies" / f"{len(list(db.parent.glob('copies/*')))}.sqlite"
    copy.parent.mkdir(exist_ok=True)
    copy.write_bytes(db.read_bytes())
    profiles = ProfileDB(copy)
    try:
        return {(e.output, e.peak_rss_bytes) for e in profiles.latest()}
    finally:
        profiles.close()


def _nothing_lost(world: World, case: Case, rc: int, db_before: bytes, entries: set,
                  report_before: bytes) -> None:
    """The profile DB's measurements and the build dir's previous report survive."""
    after = _entries(world.db)
    assert entries <= after, f"profile DB entries lost: {entries - after}"
    corrupt_db = case.setup is not None and "profile DB" in case.label
    if corrupt_db:  # moved aside, never deleted
        kept = [p for p in world.root.glob("profiles.sqlite*") if p.read_bytes() == db_before]
        assert kept, "the corrupt profile DB was deleted instead of moved aside"
    if rc == 2 and report_before:
        assert world.report.read_bytes() == report_before, "bad input replaced the last report"


def _check(world: World, case: Case, rc: int, out: str, err: str) -> None:
    assert rc in case.exits, f"exit {rc}\n{out}\n{err}"
    assert "Traceback" not in out + err, err
    lines = err.strip().splitlines()
    assert len(lines) <= 6, err
    if rc != 0:
        assert (out + err).strip(), "failed without a word"


def _prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: Case) -> World:
    world = _make_world(tmp_path)
    if case.setup is not None:
        case.setup(world)
    for name in list(os.environ):
        if name.startswith("BUILDCTL_") or name in ("MAX_JOBS", "CMAKE_BUILD_PARALLEL_LEVEL"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BUILDCTL_PROFILE_DB", str(world.db))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(world.root / "config"))
    monkeypatch.chdir(world.root)
    return world


def _snapshot(world: World) -> tuple[bytes, set, bytes]:
    db_before = world.db.read_bytes()
    entries = _entries(world.db)
    report_before = world.report.read_bytes() if world.report.is_file() else b""
    return db_before, entries, report_before


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    world = _prepare(tmp_path, monkeypatch, case)
    db_before, entries, report_before = _snapshot(world)
    caplog.set_level(logging.ERROR)
    rc = main(case.args(world))
    out, err = capsys.readouterr()
    _check(world, case, rc, out, err)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    _nothing_lost(world, case, rc, db_before, entries, report_before)


SUBPROCESS = ["build: --jobs 0", "profile import: peak 1e35", "plan: --report not UTF-8",
              "build: config.toml of random bytes", "verify: wheel of random bytes",
              "run: --report naming a directory"]


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_bad_input_in_a_real_process(case_id: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (case,) = [c for c in CASES if c.id == case_id]
    world = _prepare(tmp_path, monkeypatch, case)
    db_before, entries, report_before = _snapshot(world)
    result = subprocess.run([sys.executable, "-m", "buildctl", *case.args(world)],
                            capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    _check(world, case, result.returncode, result.stdout, result.stderr)
    _nothing_lost(world, case, result.returncode, db_before, entries, report_before)


def test_the_corpus_covers_every_command_and_every_bad_flag() -> None:
    commands = {c.command for c in CASES}
    assert commands == set(COMMANDS)
    flags = {c.label for c in CASES}
    assert {label for label, _ in FLAGS} <= flags
    # Every command that takes a flag got it.
    for label, flag in FLAGS:
        words = [w for w in flag(World(Path("/x"))) if w.startswith("--")]
        takers = {c for c in COMMANDS if all(w in _options(c) for w in words)}
        assert takers == {c.command for c in CASES if c.label == label}, label
