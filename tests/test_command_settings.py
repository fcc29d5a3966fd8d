"""The flag-only commands (profile, repro, doctor, env, verify, and the split hook) turn their
Namespace into one frozen settings object first thing: every option their parser defines reaches
that object with its value (none dropped on the way), and the object cannot be changed later."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from buildctl.cli import build_parser
from buildctl.errors import BadInput
from buildctl.govern.profile_cmd import ProfileSettings
from buildctl.govern.repro import ReproSettings
from buildctl.settings import from_flags
from buildctl.settings_base import Settings
from buildctl.split.__main__ import SplitSettings, _parser
from buildctl.toolchain.commands import DoctorSettings, EnvSettings
from buildctl.wheel.commands import VerifySettings

# Set by the top-level parser for every command, not settings of one.
EVERYWHERE = {"cmd", "func", "quiet", "verbose"}
# argparse dest -> settings field, where they differ.
RENAMED = {"json": "as_json", "profile_cmd": "action", "repro_cmd": "action"}

CASES: list[tuple[list[str], type[Settings]]] = [
    (["profile", "--profiles", "p.sqlite", "show", "--project", "fmt", "--jobs", "--filter", "g",
      "--json"], ProfileSettings),
    (["profile", "export", "out.json", "--project", "fmt"], ProfileSettings),
    (["profile", "import", "in.json", "--project", "fmt"], ProfileSettings),
    (["repro", "list", "--build-dir", "b", "--json"], ReproSettings),
    (["repro", "show", "-1", "--build-dir", "b"], ReproSettings),
    (["doctor", "--torch", "2.11.0+xpu", "--python", "py", "--profiles", "p.sqlite", "--json"],
     DoctorSettings),
    (["env", "--compiler", "2025.3", "--oneapi-root", "/opt/a", "--oneapi-root", "/opt/b"],
     EnvSettings),
    (["verify", "w.whl", "--torch", "2.13.0+cpu", "--runtime", "r.whl", "--cache-dir", "c"],
     VerifySettings),
]


def _as_given(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize(("argv", "model"), CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_every_option_reaches_the_frozen_settings(argv: list[str], model: type[Settings]) -> None:
    args = build_parser().parse_args(argv)
    given = {RENAMED.get(k, k): v for k, v in vars(args).items() if k not in EVERYWHERE}
    settings = from_flags(model, args, **{new: getattr(args, old)
                                          for old, new in RENAMED.items() if hasattr(args, old)})
    for name, value in given.items():
        assert name in model.model_fields, f"--{name} is not in {model.__name__}"
        assert getattr(settings, name) == _as_given(value), name
    with pytest.raises(ValidationError):
        setattr(settings, next(iter(given)), None)


def test_a_bad_flag_value_is_bad_input_naming_the_flag() -> None:
    args = build_parser().parse_args(["repro", "list"])
    args.build_dir = 3  # not a path: what a caller bypassing argparse could pass
    with pytest.raises(BadInput) as exc:
        from_flags(ReproSettings, args, action="list")
    assert exc.value.what.startswith("--build-dir:") and exc.value.fix


def test_the_split_hook_takes_every_option_of_its_parser() -> None:
    argv = ["--source", "g.cpp", "--out-dir", "o", "--budget", "8G", "--slots", "2",
            "--compiler", "g++", "--compiler-id", "GNU", "--flags-file", "f", "--shards", "3",
            "--whole-peak", "1G", "--hints", "h.json", "--max-shards", "9",
            "--probe-entries", "4", "--safety", "0.5", "--no-line-directives",
            "--no-probe-cache", "--no-gcc-gc", "--format", "cmake"]
    args = _parser().parse_args(argv)
    settings = SplitSettings.from_args(args)
    assert {f.name for f in dataclasses.fields(SplitSettings)} == set(vars(args))
    assert dataclasses.asdict(settings) == vars(args)
    assert settings.out_dir == Path("o") and settings.format == "cmake"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.shards = 1  # type: ignore[misc]
