"""Kernel config parsing and generation of the bundled pagedattn project (pure, no compiler)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNEL_DIR = ROOT / "kernels" / "pagedattn"
CONFIGS = KERNEL_DIR / "configs"
GENERATOR = KERNEL_DIR / "tools" / "generate_pagedattn.py"


def _load_kernel_config():
    spec = importlib.util.spec_from_file_location(
        "pagedattn_kernel_config", KERNEL_DIR / "tools" / "kernel_config.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


kc = _load_kernel_config()

GOOD = "decode qgroup=4 head=128 page=16 causal=1 local=0 sink=0 dtype=bf16\n"


def write(tmp_path: Path, text: str, name: str = "my.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list:
    with pytest.raises(kc.ConfigError) as info:
        kc.load_config(write(tmp_path, text))
    return info.value.problems


def test_single_line_and_spec_roundtrip(tmp_path: Path) -> None:
    cfg = kc.load_config(write(tmp_path, "# comment\n\n" + GOOD + "   # trailing\n"))
    assert [k.spec() for k in cfg.keys] == [GOOD.strip()]
    (key,) = cfg.keys
    assert cfg.origins[key] == "my.conf:3"
    # A spec is itself a valid config line.
    again = kc.load_config(write(tmp_path, key.spec() + "\n", "again.conf"))
    assert again.keys == cfg.keys


def test_lists_star_and_aliases_expand_to_products(tmp_path: Path) -> None:
    text = (
        "decode,prefill qgroup=1,8 head=64,128 page=16 causal=1 local=* sink=* "
        "dtype=fp16,bfloat16\n"
    )
    cfg = kc.load_config(write(tmp_path, text))
    assert len(cfg.keys) == 2 * 2 * 2 * 1 * 1 * 2 * 2 * 2
    assert {k.dtype for k in cfg.keys} == {"half", "bf16"}
    star = kc.load_config(
        write(tmp_path, "* qgroup=1 head=* page=8 causal=* local=0 sink=0 dtype=*\n", "s.conf")
    )
    assert len(star.keys) == 2 * 6 * 2 * 3
    assert star.count("decode") == star.count("prefill") == 36


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "decode qgroup=4 head=100 page=16 causal=1 local=0 sink=0 dtype=bf16",
            "unknown head size 100",
        ),
        (
            "decode qgroup=4 head=128 page=16 causal=1 local=0 sink=0 dtype=fp8",
            "unknown dtype 'fp8'",
        ),
        (
            "decode qgroup=4 head=128 page=12 causal=1 local=0 sink=0 dtype=bf16",
            "unknown page size 12",
        ),
        ("decode qgroup=4 head=128 page=16 causal=1 local=0 sink=0", "missing axis dtype"),
        (
            "decode qgroup=4 head=128 page=16 causal=1 local=0 sink=0 dtype=bf16 color=red",
            "unknown axis 'color'",
        ),
        (
            "decode qgroup=4 head=128 head=64 page=16 causal=1 local=0 sink=0 dtype=bf16",
            "axis 'head' given twice",
        ),
        (
            "decode qgroup=4 head 128 page=16 causal=1 local=0 sink=0 dtype=bf16",
            "malformed field 'head'",
        ),
        ("attend qgroup=4 head=128 page=16 causal=1 local=0 sink=0 dtype=bf16", "malformed line"),
        (
            "decode qgroup=four head=128 page=16 causal=1 local=0 sink=0 dtype=bf16",
            "must be an integer",
        ),
        (
            "decode qgroup=4 head=128,128 page=16 causal=1 local=0 sink=0 dtype=bf16",
            "lists a value twice",
        ),
    ],
)
def test_bad_lines_name_file_line_and_fix(tmp_path: Path, text: str, needle: str) -> None:
    found = problems(tmp_path, "# header\n" + text + "\n")
    assert found and all(p.location == "my.conf:2" for p in found)
    assert needle in found[0].what
    assert found[0].fix  # always says what to do
    rendered = str(kc.ConfigError(found))
    assert rendered.startswith("my.conf:2: ") and "fix:" in rendered


def test_duplicates_are_errors_naming_both_lines(tmp_path: Path) -> None:
    text = GOOD + "decode qgroup=4 head=64,128 page=16 causal=1 local=0 sink=0 dtype=bf16\n"
    (dup,) = problems(tmp_path, text)
    assert dup.location == "my.conf:2"
    assert "duplicate kernel 'decode qgroup=4 head=128" in dup.what
    assert "already listed at my.conf:1" in dup.what
    # The exact same line twice too.
    (same,) = problems(tmp_path, GOOD + GOOD)
    assert same.location == "my.conf:2"


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    text = "decode qgroup=4 head=100 page=16 causal=1 local=0 sink=0 dtype=bf16\n\nnonsense\n"
    found = problems(tmp_path, text)
    assert [p.location for p in found] == ["my.conf:1", "my.conf:3"]


def test_empty_config_is_an_error(tmp_path: Path) -> None:
    (p,) = problems(tmp_path, "# nothing here\n")
    assert "no kernels" in p.what


def test_resolve_preset_or_path(tmp_path: Path) -> None:
    assert kc.resolve_config("tiny", CONFIGS) == ("tiny", CONFIGS / "tiny.conf")
    custom = write(tmp_path, GOOD)
    assert kc.resolve_config(str(custom), CONFIGS) == ("my", custom.resolve())
    with pytest.raises(kc.ConfigError) as info:
        kc.resolve_config("huge", CONFIGS)
    assert "tiny" in str(info.value) and "default" in str(info.value)


def test_presets_counts_and_coverage() -> None:
    counts = {}
    for name in ("tiny", "default", "full"):
        cfg = kc.load_config(CONFIGS / f"{name}.conf", name)
        counts[name] = (cfg.count("decode"), cfg.count("prefill"))
    assert counts == {"tiny": (6, 6), "default": (450, 300), "full": (1440, 2880)}
    tiny = kc.load_config(CONFIGS / "tiny.conf")
    assert {k.dtype for k in tiny.keys} == {"float", "bf16", "half"}
    assert len({k.head for k in tiny.keys}) >= 2 and len({k.page for k in tiny.keys}) >= 2
    assert any(k.local for k in tiny.keys) and any(k.sink for k in tiny.keys)
    assert any(k.qgroup > 1 for k in tiny.keys) and any(not k.causal for k in tiny.keys)
    # default is a subset of full: "full" really is the larger build.
    default = set(kc.load_config(CONFIGS / "default.conf").keys)
    assert default <= set(kc.load_config(CONFIGS / "full.conf").keys)


def test_rendered_instances_have_the_splitter_shape() -> None:
    cfg = kc.load_config(CONFIGS / "tiny.conf", "tiny")
    text = kc.render_instances(cfg)
    head, _, body = text.partition(kc.SPLIT_MARKER + "\n")
    assert '#include "pagedattn_kernels.h"' in head and "torch" not in head.lower()
    lines = body.splitlines()
    assert len(lines) == len(cfg.keys)
    for line in lines:
        assert line.startswith("template void pagedattn::") and line.endswith(");")
    # Kernels sharing an attend_range body are adjacent (contiguous shards get disjoint shapes).
    shapes = [kc.shape_order(k)[:4] for k in sorted(cfg.keys, key=kc.shape_order)]
    assert shapes == sorted(shapes)
    dispatch = kc.render_dispatch(cfg)
    assert dispatch.count("extern template void pagedattn::") == len(cfg.keys)
    assert "pagedattn_kernels.h" not in dispatch  # declarations only: no instantiation there


def test_splitter_accepts_the_generated_source(tmp_path: Path) -> None:
    plan = pytest.importorskip("buildctl.split.plan")
    cfg = kc.load_config(CONFIGS / "tiny.conf", "tiny")
    src = write(tmp_path, kc.render_instances(cfg), "pagedattn_instances.cpp")
    parsed = plan.parse_generated_source(src.read_text(), src.name)
    assert len(parsed.entries) == len(cfg.keys)


def test_manifest_membership_matches_expansion() -> None:
    presets = {n: kc.load_config(CONFIGS / f"{n}.conf", n) for n in ("tiny", "default")}
    data = json.loads(kc.render_manifest(presets["tiny"], presets))
    assert data["config"] == "tiny" and len(data["kernels"]) == 12
    rules = [
        kc.Rule("x", tuple(r["kind"]), {a: tuple(r[a]) for a in kc.AXES})
        for r in data["presets"]["default"]
    ]
    for key in presets["default"].keys:
        assert any(r.contains(key) for r in rules)


def test_generator_cli_writes_files_and_exits_2_on_bad_config(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    cmd = [sys.executable, str(GENERATOR), "--configs-dir", str(CONFIGS), "--out-dir", str(out),
           "--torch-version", "2.13.0+cpu"]  # fmt: skip
    ok = subprocess.run([*cmd, "--config", "tiny"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "12 kernels" in ok.stdout
    names = {p.name for p in out.iterdir()}
    assert names == {
        "pagedattn_instances.cpp",
        "pagedattn_dispatch.cpp",
        "built_configs.json",
        "_build_info.py",
    }
    info = (out / "_build_info.py").read_text()
    assert "TORCH_MAJOR_MINOR = (2, 13)" in info
    # Unchanged content is not rewritten (a re-configure must not trigger a rebuild).
    before = (out / "pagedattn_instances.cpp").stat().st_mtime_ns
    subprocess.run([*cmd, "--config", "tiny"], check=True, capture_output=True)
    assert (out / "pagedattn_instances.cpp").stat().st_mtime_ns == before

    bad = write(
        tmp_path,
        "decode qgroup=4 head=100 page=16 causal=1 local=0 sink=0 dtype=bf16\n",
        "bad.conf",
    )
    proc = subprocess.run([*cmd, "--config", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "bad.conf:1: unknown head size 100" in proc.stderr and "fix:" in proc.stderr
    missing = subprocess.run([*cmd, "--config", "nosuch"], capture_output=True, text=True)
    assert missing.returncode == 2 and "nosuch" in missing.stderr


def test_buildctl_reports_a_bad_config_as_bad_input_before_configure(tmp_path: Path) -> None:

    bad = tmp_path / "mine.conf"
    bad.write_text(
        "decode qgroup=4 head=128 page=16 causal=0 local=0 sink=0 dtype=bf16\n"
        "decode qgroup=4 head=128 page=16 causal=0 local=0 sink=0 dtype=bf16\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "buildctl.cli", "build", "--preset", str(bad), "--build-dir",
         str(tmp_path / "b")], capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "mine.conf:2" in result.stderr and "fix:" in result.stderr
    assert not (tmp_path / "b" / "CMakeCache.txt").exists()
