"""Every command and subcommand explains itself: examples, a help text for every option, the
default of every option that takes a value, and units for sizes and durations. Walks the
argparse tree, so a new command or option is checked without editing this test."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from buildctl.cli import build_parser

UNIT_EXAMPLE = re.compile(r"\b\d+(\.\d+)?\s?(G|M|K|GiB|MiB|KiB|GB|MB|s|m|h)\b")
NO_HELP_NEEDED = {"-h", "--help", "--version"}


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


COMMANDS = list(walk(build_parser()))
IDS = [" ".join(path) or "buildctl" for path, _ in COMMANDS]


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a for a in parser._actions
        if not isinstance(a, argparse._SubParsersAction)
        and not set(a.option_strings) & NO_HELP_NEEDED
        and a.help != argparse.SUPPRESS  # internal (a matrix entry's settings on a Ray node)
    ]


def test_the_tree_is_walked() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"build", "run", "wheel", "matrix", "verify", "plan", "doctor", "env",
            "profile show", "profile export", "profile import", "repro list",
            "repro show"} <= names


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=IDS)
def test_every_command_has_examples(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    has_subcommands = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    if not path or has_subcommands:
        return  # the top level and groups list their commands; each command has examples
    epilog = parser.epilog or ""
    assert "examples:" in epilog, f"`buildctl {' '.join(path)} --help` has no examples"
    assert f"buildctl {' '.join(path)}" in epilog


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=IDS)
def test_every_option_has_help_and_a_default(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    where = f"buildctl {' '.join(path)}"
    for action in options(parser):
        name = "/".join(action.option_strings) or action.dest
        text = action.help or ""
        assert text, f"{where} {name} has no help"
        takes_value = action.option_strings and action.nargs != 0
        if takes_value and not action.required:
            assert "default" in text, f"{where} {name}: help does not say its default"


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=IDS)
def test_sizes_and_durations_show_their_units(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    for action in options(parser):
        if action.metavar in ("SIZE", "DURATION"):
            assert UNIT_EXAMPLE.search(action.help or ""), (
                f"buildctl {' '.join(path)} {'/'.join(action.option_strings)}: "
                "give an example with a unit"
            )


def test_torch_index_help_does_not_refer_to_itself() -> None:
    wheel = dict(COMMANDS)[("wheel",)]
    action = next(a for a in wheel._actions if "--torch-index" in a.option_strings)
    assert "--help" not in (action.help or "")


def test_help_runs_through_python_m_buildctl() -> None:
    proc = subprocess.run([sys.executable, "-m", "buildctl", "run", "--help"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "usage: buildctl run" in proc.stdout and "examples:" in proc.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_completion_names_commands_and_options(shell: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "buildctl", "completion", shell],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    for word in ("build", "wheel", "repro", "--mem-budget", "--config-settings"):
        assert word in proc.stdout, word
    if shell == "bash":
        syntax = subprocess.run(["bash", "-n"], input=proc.stdout, capture_output=True,
                                text=True, check=False)
        assert syntax.returncode == 0, syntax.stderr
