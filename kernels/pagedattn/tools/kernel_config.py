"""Kernel configs of the bundled pagedattn project: parsing, expansion and code generation.

Pure Python (no torch, no CMake), so the tests import it directly and the configure-time
generator (`generate_pagedattn.py`) is a thin CLI around it.

Config format, one rule per line, `#` starts a comment:

    decode  qgroup=1,4,8 head=64,128 page=16 causal=1 local=0,1 sink=* dtype=float,bf16
    prefill qgroup=8     head=64     page=16 causal=1 local=1   sink=1 dtype=bf16

The first word is the kernel kind (`decode`, `prefill`, a comma list or `*`); every axis must
be given, as one value, a comma list or `*` (all allowed values). A rule expands to the product
of its lists. Producing the same kernel twice is an error, so every config line is meaningful.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

KINDS: tuple[str, ...] = ("decode", "prefill")
AXES: tuple[str, ...] = ("qgroup", "head", "page", "causal", "local", "sink", "dtype")
ALLOWED: dict[str, tuple[int | str, ...]] = {
    "qgroup": (1, 2, 3, 4, 5, 6, 7, 8, 16),
    "head": (64, 80, 96, 128, 192, 256),
    "page": (8, 16, 32, 64, 128),
    "causal": (0, 1),
    "local": (0, 1),
    "sink": (0, 1),
    "dtype": ("float", "bf16", "half"),
}
DTYPE_ALIASES: dict[str, str] = {
    "float": "float",
    "fp32": "float",
    "float32": "float",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "half": "half",
    "fp16": "half",
    "float16": "half",
}
# C++ spellings used by the generated sources (types from pagedattn_api.h).
CPP_TYPE: dict[str, str] = {
    "float": "float",
    "bf16": "pagedattn::bf16_t",
    "half": "pagedattn::half_t",
}
CPP_DTYPE_ENUM: dict[str, str] = {
    "float": "pagedattn::DType::Float",
    "bf16": "pagedattn::DType::BFloat16",
    "half": "pagedattn::DType::Half",
}
CPP_FUNC: dict[str, tuple[str, str]] = {
    "decode": ("pagedattn::paged_decode", "pagedattn::DecodeParams"),
    "prefill": ("pagedattn::chunked_prefill", "pagedattn::PrefillParams"),
}
SPLIT_MARKER = "// buildctl:split-list"
PRESETS_SUFFIX = ".conf"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where, what, and what to do about it."""

    location: str
    what: str
    fix: str

    def render(self) -> str:
        return f"{self.location}: {self.what}\n  fix: {self.fix}"


class ConfigError(ValueError):
    """A config file (or its name) is bad. Carries every problem found, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(p.render() for p in self.problems))


@dataclass(frozen=True, order=True)
class KernelKey:
    """One instantiation; `spec()` is both its display name and a valid config line."""

    kind: str
    qgroup: int
    head: int
    page: int
    causal: bool
    local: bool
    sink: bool
    dtype: str

    def spec(self) -> str:
        return (
            f"{self.kind} qgroup={self.qgroup} head={self.head} page={self.page} "
            f"causal={int(self.causal)} local={int(self.local)} sink={int(self.sink)} "
            f"dtype={self.dtype}"
        )

    def template_args(self) -> str:
        flags = ", ".join("true" if f else "false" for f in (self.causal, self.local, self.sink))
        return f"{self.qgroup}, {self.head}, {self.page}, {flags}, {CPP_TYPE[self.dtype]}"

    def function(self) -> str:
        """The fully qualified template-id, e.g. `pagedattn::paged_decode<4, 128, ...>`."""
        return f"{CPP_FUNC[self.kind][0]}<{self.template_args()}>"

    def signature(self) -> str:
        return f"(const {CPP_FUNC[self.kind][1]}&, std::int64_t, std::int64_t)"

    def instantiation(self) -> str:
        """The single-line explicit instantiation (the splitter's unit of work)."""
        return f"template void {self.function()}{self.signature()};"

    def extern_declaration(self) -> str:
        return f"extern template void {self.function()}{self.signature()};"


@dataclass(frozen=True)
class Rule:
    """One config line before expansion: a product of value lists (kept for membership tests)."""

    location: str
    kinds: tuple[str, ...]
    values: dict[str, tuple[int | str, ...]]

    def expand(self) -> list[KernelKey]:
        axes = [self.values[a] for a in AXES]
        out = []
        for kind in self.kinds:
            for q, h, p, c, lo, s, d in itertools.product(*axes):
                out.append(
                    KernelKey(kind, int(q), int(h), int(p), bool(c), bool(lo), bool(s), str(d))
                )
        return out

    def contains(self, key: KernelKey) -> bool:
        return key.kind in self.kinds and all(_axis_value(key, a) in self.values[a] for a in AXES)

    def to_json(self) -> dict[str, list[int | str]]:
        data: dict[str, list[int | str]] = {"kind": list(self.kinds)}
        data.update({a: list(self.values[a]) for a in AXES})
        return data


def _axis_value(key: KernelKey, axis: str) -> int | str:
    value = getattr(key, axis)
    return int(value) if isinstance(value, bool) else value


@dataclass(frozen=True)
class KernelConfig:
    """A parsed config: its kernels in file order and where each came from."""

    name: str
    path: Path
    rules: tuple[Rule, ...]
    keys: tuple[KernelKey, ...]
    origins: dict[KernelKey, str]

    def count(self, kind: str | None = None) -> int:
        return sum(1 for k in self.keys if kind is None or k.kind == kind)


def _allowed_text(axis: str) -> str:
    return ", ".join(str(v) for v in ALLOWED[axis])


def _parse_value(axis: str, text: str) -> int | str:
    if axis == "dtype":
        if text.lower() in DTYPE_ALIASES:
            return DTYPE_ALIASES[text.lower()]
        raise ValueError(f"unknown dtype '{text}'")
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{axis} must be an integer, got '{text}'") from None
    if value not in ALLOWED[axis]:
        noun = {"head": "head size", "page": "page size", "qgroup": "q-group"}.get(axis, axis)
        raise ValueError(f"unknown {noun} {value}")
    return value


def _parse_list(axis: str, text: str) -> tuple[int | str, ...]:
    if text == "*":
        return ALLOWED[axis]
    items = [t.strip() for t in text.split(",")]
    if any(not t for t in items):
        raise ValueError(f"empty item in {axis}='{text}'")
    values = [_parse_value(axis, t) for t in items]
    if len(set(values)) != len(values):
        raise ValueError(f"{axis}='{text}' lists a value twice")
    return tuple(values)


def parse_text(text: str, source: str = "<config>") -> tuple[list[Rule], list[Problem]]:
    """Parse config text into rules; problems are returned (not raised) so all can be shown."""
    rules: list[Rule] = []
    problems: list[Problem] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        loc = f"{source}:{lineno}"
        words = line.split()
        kind_text, fields = words[0], words[1:]
        if kind_text == "*":
            kinds: tuple[str, ...] = KINDS
        else:
            kinds = tuple(k.strip() for k in kind_text.split(","))
            bad = [k for k in kinds if k not in KINDS]
            if bad or len(set(kinds)) != len(kinds):
                problems.append(
                    Problem(
                        loc,
                        f"malformed line: '{line}' does not start with a kernel kind",
                        "start each line with decode, prefill, a comma list of them or *, "
                        "e.g. 'decode qgroup=4 head=128 page=16 causal=1 local=0 sink=0 "
                        "dtype=bf16'",
                    )
                )
                continue
        values: dict[str, tuple[int | str, ...]] = {}
        line_ok = True
        for field in fields:
            axis, eq, val = field.partition("=")
            if not eq or not axis or not val:
                problems.append(
                    Problem(
                        loc,
                        f"malformed field '{field}' (expected axis=value)",
                        "write fields as axis=value with no spaces around '=', "
                        "values as one value, a comma list or *",
                    )
                )
                line_ok = False
                continue
            if axis not in AXES:
                problems.append(
                    Problem(loc, f"unknown axis '{axis}'", f"use only: {', '.join(AXES)}")
                )
                line_ok = False
                continue
            if axis in values:
                problems.append(
                    Problem(loc, f"axis '{axis}' given twice", "give each axis once per line")
                )
                line_ok = False
                continue
            try:
                values[axis] = _parse_list(axis, val)
            except ValueError as exc:
                problems.append(
                    Problem(loc, str(exc), f"allowed {axis} values: {_allowed_text(axis)} (or *)")
                )
                line_ok = False
        missing = [a for a in AXES if a not in values]
        if line_ok and missing:
            problems.append(
                Problem(
                    loc,
                    f"missing axis {', '.join(missing)}",
                    "every line must give all of: "
                    + " ".join(f"{a}=..." for a in AXES)
                    + " (use * for all values)",
                )
            )
            line_ok = False
        if line_ok:
            rules.append(Rule(loc, kinds, values))
    return rules, problems


def build_config(
    name: str, path: Path, rules: Iterable[Rule]
) -> tuple[KernelConfig, list[Problem]]:
    """Expand rules into kernels, reporting kernels that two rules (or one line twice) produce."""
    rules = tuple(rules)
    keys: list[KernelKey] = []
    origins: dict[KernelKey, str] = {}
    problems: list[Problem] = []
    for rule in rules:
        for key in rule.expand():
            if key in origins:
                problems.append(
                    Problem(
                        rule.location,
                        f"duplicate kernel '{key.spec()}' (already listed at {origins[key]})",
                        "remove one of the two lines or narrow their value lists so they "
                        "do not overlap",
                    )
                )
                continue
            origins[key] = rule.location
            keys.append(key)
    return KernelConfig(name, path, rules, tuple(keys), origins), problems


def load_config(path: Path, name: str | None = None) -> KernelConfig:
    """Parse and expand one config file; raises ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [Problem(str(path), f"cannot read config: {exc.strerror}", "check the path")]
        ) from None
    rules, problems = parse_text(text, source=path.name)
    config, more = build_config(name or path.stem, path, rules)
    problems += more
    if not problems and not config.keys:
        problems.append(
            Problem(f"{path.name}:1", "config selects no kernels", "add at least one kernel line")
        )
    if problems:
        raise ConfigError(problems)
    return config


def list_presets(configs_dir: Path) -> list[str]:
    return sorted(p.stem for p in configs_dir.glob(f"*{PRESETS_SUFFIX}"))


def resolve_config(spec: str, configs_dir: Path) -> tuple[str, Path]:
    """`spec` is a preset name (file in configs_dir) or a path to a .conf file."""
    candidate = Path(spec)
    preset = configs_dir / f"{spec}{PRESETS_SUFFIX}"
    if "/" not in spec and preset.is_file():
        return spec, preset
    if candidate.is_file():
        return candidate.stem, candidate.resolve()
    presets = ", ".join(list_presets(configs_dir)) or "(none found)"
    raise ConfigError(
        [
            Problem(
                "PAGEDATTN_CONFIG",
                f"no preset or config file named '{spec}'",
                f"use one of the presets ({presets}) or a path to a .conf file, "
                "e.g. -DPAGEDATTN_CONFIG=tiny",
            )
        ]
    )


# ---- code generation -----------------------------------------------------------------------

_HEADER = "// Generated by kernels/pagedattn/tools/generate_pagedattn.py from {src}. Do not edit."


def render_instances(config: KernelConfig) -> str:
    """The heavy TU: a shared preamble, the split marker, then one instantiation per line.

    This shape is a contract with buildctl's splitter: everything above the marker is copied into
    every shard, and each line below it is an independent unit of work.
    """
    lines = [
        _HEADER.format(src=config.path.name),
        f"// config '{config.name}': {len(config.keys)} kernels",
        '#include "pagedattn_kernels.h"',
        "",
        SPLIT_MARKER,
    ]
    lines += [k.instantiation() for k in sorted(config.keys, key=shape_order)]
    return "\n".join(lines) + "\n"


def shape_order(key: KernelKey) -> tuple[int, int, int, str, KernelKey]:
    """Sort key that keeps kernels sharing one attend_range body (same q-group, head, page,
    dtype) adjacent, so a contiguous split of the list gives shards with disjoint shapes."""
    return (key.qgroup, key.head, key.page, key.dtype, key)


def render_dispatch(config: KernelConfig) -> str:
    """The dispatch TU: extern declarations (no instantiation here) and the lookup table."""
    lines = [
        _HEADER.format(src=config.path.name),
        "// Maps a runtime KernelKey to the instantiation compiled in pagedattn_instances.cpp.",
        '#include "pagedattn_api.h"',
        "",
    ]
    lines += [k.extern_declaration() for k in config.keys]
    lines += ["", "namespace {", "", "const pagedattn::KernelEntry kEntries[] = {"]
    for k in config.keys:
        flags = ", ".join("true" if f else "false" for f in (k.causal, k.local, k.sink))
        kind = "pagedattn::Kind::Decode" if k.kind == "decode" else "pagedattn::Kind::Prefill"
        key = f"{{{kind}, {k.qgroup}, {k.head}, {k.page}, {flags}, {CPP_DTYPE_ENUM[k.dtype]}}}"
        fn = f"&{k.function()}"
        pair = f"{fn}, nullptr" if k.kind == "decode" else f"nullptr, {fn}"
        lines.append(f"    {{{key}, {pair}}},")
    lines += [
        "};",
        "",
        "bool same_key(const pagedattn::KernelKey& a, const pagedattn::KernelKey& b) {",
        "  return a.kind == b.kind && a.qgroup == b.qgroup && a.head_size == b.head_size &&",
        "         a.block_size == b.block_size && a.causal == b.causal && a.local == b.local &&",
        "         a.sink == b.sink && a.dtype == b.dtype;",
        "}",
        "",
        "}  // namespace",
        "",
        "namespace pagedattn {",
        "",
        "const KernelEntry* find_kernel(const KernelKey& key) {",
        "  for (const KernelEntry& e : kEntries) {",
        "    if (same_key(e.key, key)) return &e;",
        "  }",
        "  return nullptr;",
        "}",
        "",
        "const KernelEntry* kernel_table(std::int64_t* count) {",
        "  *count = static_cast<std::int64_t>(sizeof(kEntries) / sizeof(kEntries[0]));",
        "  return kEntries;",
        "}",
        "",
        f'const char* config_name() {{ return "{config.name}"; }}',
        "",
        "}  // namespace pagedattn",
    ]
    return "\n".join(lines) + "\n"


def render_manifest(config: KernelConfig, presets: dict[str, KernelConfig]) -> str:
    """built_configs.json for the Python package: what was built, and what each preset holds.

    Presets are stored as their rules (value lists), not expanded, to keep the file small;
    membership is "some rule lists every axis value of the kernel".
    """
    data = {
        "schema": "pagedattn.built/1",
        "config": config.name,
        "kernels": [k.spec() for k in config.keys],
        "presets": {
            name: [r.to_json() for r in cfg.rules] for name, cfg in sorted(presets.items())
        },
    }
    return json.dumps(data, indent=1) + "\n"


def render_build_info(config: KernelConfig, torch_version: str) -> str:
    base = torch_version.split("+", 1)[0]
    parts = base.split(".")
    major_minor = (int(parts[0]), int(parts[1]))
    return (
        '"""Generated at configure time by generate_pagedattn.py. Do not edit."""\n\n'
        f"TORCH_VERSION = {torch_version!r}\n"
        f"TORCH_MAJOR_MINOR = {major_minor!r}\n"
        f"CONFIG = {config.name!r}\n"
        f"KERNEL_COUNT = {len(config.keys)}\n"
    )
