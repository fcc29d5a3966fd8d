"""Pure split policy: recognise a generated source, plan the shard count, slice and render shards.

No I/O here (the include rewrite takes an `exists` predicate), so every rule can be tested
exhaustively. The shape accepted (see docs in `buildctl/split/__init__.py`):

    <preamble>          everything before the first entry (includes, macros, `namespace x {`)
    [// buildctl:split-list]
    <entry>             one per line: `template void ns::f<...>(...);` / `template class X<...>;`
    <entry>             ... or X-macro calls `INST(float, 4)` of a function-like macro
    <epilogue>          everything after the last entry (`}  // namespace x`, `#undef INST`)

Anything that does not have this shape is reported with file:line, never guessed at: a wrong
split either fails to link or, worse, silently changes what the library exports.

Why one module of about 620 lines: recognising, planning, slicing and rendering are one
contract, since the shards must reproduce exactly the preamble, entries and epilogue that the
recogniser accepted, and the tests check them together. Half of it is the small C++ lexer that
keeps comments, strings and raw strings from being taken for entries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from buildctl.errors import BadInput
from buildctl.host import format_size

MARKER_RE = re.compile(r"^\s*//\s*buildctl:split-list\b")
# An explicit instantiation *definition*: `template` not followed by `<` (that would be a
# template or a specialisation), one statement, no braces, on one line.
_INSTANTIATION_RE = re.compile(r"^\s*template\s+(?!<)[^;{}]*;\s*$")
_CALL_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*;?\s*$")
_DEFINE_FN_RE = re.compile(r"^\s*#\s*define\s+([A-Za-z_]\w*)\(")
_INCLUDE_QUOTED_RE = re.compile(r'^(\s*#\s*include\s*")([^"]+)(".*)$', re.DOTALL)
_LINE_DIRECTIVE_RE = re.compile(r"^\s*#\s*(line\s+)?\d")
_COND_OPEN_RE = re.compile(r"^\s*#\s*if(n?def)?\b")
_COND_CLOSE_RE = re.compile(r"^\s*#\s*endif\b")
_NAMESPACE_PREFIX_RE = re.compile(r'(\bnamespace\b[^;{}()]*|\bextern\s*""\s*)$')
# Registrations run once per translation unit: duplicating them into every shard changes
# behaviour at load time (TORCH_LIBRARY twice is an error at import), so they may not sit in
# the preamble.
_REGISTRATION_RE = re.compile(
    r"^\s*(TORCH_LIBRARY(_FRAGMENT|_IMPL)?|PYBIND11_MODULE|NB_MODULE|TORCH_EXTENSION_NAME)\s*\("
)

Form = Literal["instantiation", "xmacro"]


@dataclass(frozen=True)
class Entry:
    """One list entry: its line (1-based), the line text and the blank/comment lines before it."""

    line: int
    text: str
    leading: tuple[str, ...] = ()

    @property
    def first_line(self) -> int:
        """Line where this entry's block (leading comments included) starts."""
        return self.line - len(self.leading)


@dataclass(frozen=True)
class GeneratedSource:
    name: str
    form: Form
    preamble: str
    entries: tuple[Entry, ...]
    epilogue: str
    epilogue_line: int
    macro: str | None = None
    # False when the file carries its own #line markers: ours would then mislabel lines.
    line_directives: bool = True


@dataclass(frozen=True)
class ShardPlan:
    n: int
    per_shard_entries: tuple[int, ...]
    predicted_shard_peak: int
    fits: bool
    reason: str
    predicted_cpu_ratio: float | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------------
# Lexing: per line, what state it starts in and its code with comments and literals removed.


@dataclass
class _LineInfo:
    clean_start: bool  # starts in plain code (not in a comment, literal or continued line)
    clean_end: bool  # ends in plain code, not continued
    directive: bool  # part of a preprocessor directive
    code: str  # text with comments and literal contents blanked
    blocks: tuple[tuple[int, str], ...]  # open braces at line start: (line, "namespace"|"other")
    conds: int  # #if nesting at line start


def _lex(lines: Sequence[str], name: str) -> list[_LineInfo]:
    infos: list[_LineInfo] = []
    state = "code"  # code | block | raw
    raw_end = ""
    continued = False  # previous line ended with a backslash splice
    in_directive = False
    blocks: list[tuple[int, str]] = []
    conds = 0
    prefix = ""  # code since the last ; { } at this level, to classify the next `{`
    for number, line in enumerate(lines, start=1):
        body = line.rstrip("\r\n")
        clean_start = state == "code" and not continued
        if clean_start:
            in_directive = body.lstrip().startswith("#")
        directive = in_directive
        start_blocks, start_conds = tuple(blocks), conds
        code: list[str] = []
        i = 0
        while i < len(body):
            ch = body[i]
            if state == "block":
                if body.startswith("*/", i):
                    state = "code"
                    i += 2
                    code.append(" ")
                else:
                    i += 1
                continue
            if state == "raw":
                end = body.find(raw_end, i)
                if end < 0:
                    i = len(body)
                else:
                    state = "code"
                    i = end + len(raw_end)
                continue
            if body.startswith("//", i):
                break
            if body.startswith("/*", i):
                state = "block"
                i += 2
                continue
            if ch == '"' and re.search(r"(?<![\w])(u8|u|U|L)?R$", body[:i]):
                open_paren = body.find("(", i)
                delim = body[i + 1 : open_paren] if open_paren >= 0 else ""
                raw_end = ")" + delim + '"'
                state = "raw"
                code.append('""')
                i = open_paren + 1 if open_paren >= 0 else len(body)
                continue
            if ch == "'" and _digit_separator(body, i):
                code.append(ch)
                i += 1
                continue
            if ch in "\"'":
                if not directive:
                    prefix += ch + ch
                j = i + 1
                while j < len(body) and body[j] != ch:
                    j += 2 if body[j] == "\\" else 1
                code.append(ch + ch)
                i = j + 1
                continue
            if not directive:
                if ch == "{":
                    kind = "namespace" if _NAMESPACE_PREFIX_RE.search(prefix.strip()) else "other"
                    blocks.append((number, kind))
                    prefix = ""
                elif ch == "}":
                    if not blocks:
                        raise BadInput(
                            f"{name}:{number}: '}}' closes a block that was never opened",
                            "fix the generator so that the file's braces balance",
                        )
                    blocks.pop()
                    prefix = ""
                elif ch == ";":
                    prefix = ""
                else:
                    prefix += ch
            code.append(ch)
            i += 1
        text = "".join(code)
        if directive and clean_start:
            if _COND_OPEN_RE.match(text):
                conds += 1
            elif _COND_CLOSE_RE.match(text):
                conds -= 1
        elif not directive:
            prefix += " "
        continued = body.endswith("\\") and state == "code"
        if not continued:
            in_directive = False
        infos.append(
            _LineInfo(
                clean_start=clean_start,
                clean_end=state == "code" and not continued,
                directive=directive,
                code=text,
                blocks=start_blocks,
                conds=start_conds,
            )
        )
    if state == "block":
        raise BadInput(f"{name}:{len(lines)}: unterminated /* comment", "fix the generator")
    if blocks:
        line, _ = blocks[-1]
        raise BadInput(
            f"{name}:{line}: '{{' opened here is never closed",
            "fix the generator so that the file's braces balance",
        )
    return infos


def _digit_separator(body: str, i: int) -> bool:
    """C++14 `1'000'000`: a quote inside a number token is not a character literal."""
    j = i
    while j > 0 and (body[j - 1].isalnum() or body[j - 1] in "._'"):
        j -= 1
    return j < i and body[j].isdigit()


def _balanced_call(code: str) -> bool:
    """`NAME(...)` where the first `(` closes exactly at the last `)` (one call per line)."""
    depth = 0
    opened = False
    last = code.rstrip().rstrip(";").rstrip()
    for pos, ch in enumerate(last):
        if ch == "(":
            depth += 1
            opened = True
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
            if depth == 0 and opened and pos != len(last) - 1:
                return False
    return opened and depth == 0


def _is_instantiation(info: _LineInfo) -> bool:
    return (
        info.clean_start
        and info.clean_end
        and not info.directive
        and bool(_INSTANTIATION_RE.match(info.code))
        and info.code.count("(") == info.code.count(")")
    )


def _call_name(info: _LineInfo) -> str | None:
    if not (info.clean_start and info.clean_end and not info.directive):
        return None
    match = _CALL_RE.match(info.code)
    if match and _balanced_call(info.code.strip()):
        return match.group(1)
    return None


def _is_blank_or_comment(info: _LineInfo) -> bool:
    return not info.directive and not info.code.strip()


def parse_generated_source(text: str, name: str) -> GeneratedSource:
    """Split `text` into preamble, entries and epilogue, or raise BadInput naming file:line."""
    lines = text.splitlines(keepends=True)
    infos = _lex(lines, name)
    fix_shape = (
        "generate one explicit instantiation (or one X-macro call) per line in one contiguous "
        "block, optionally preceded by a `// buildctl:split-list` line, or remove this file "
        "from BUILDCTL_SPLIT_SOURCES"
    )

    markers = [i for i, line in enumerate(lines) if infos[i].clean_start and MARKER_RE.match(line)]
    if len(markers) > 1:
        raise BadInput(
            f"{name}:{markers[1] + 1}: second `// buildctl:split-list` marker "
            f"(the first is at line {markers[0] + 1})",
            "keep one marker, directly before the list",
        )

    defined_macros: set[str] = set()
    form: Form | None = None
    macro: str | None = None
    start: int | None = None
    if markers:
        marker = markers[0]
        for i in range(marker + 1, len(lines)):
            info = infos[i]
            if _is_blank_or_comment(info):
                continue
            if _is_instantiation(info):
                form, start = "instantiation", i
            elif (call := _call_name(info)) is not None:
                form, start, macro = "xmacro", i, call
            break
        if start is None:
            where = next(
                (i for i in range(marker + 1, len(lines)) if not _is_blank_or_comment(infos[i])),
                marker,
            )
            raise BadInput(
                f"{name}:{where + 1}: expected an explicit instantiation or X-macro call after "
                f"the `// buildctl:split-list` marker at line {marker + 1}"
                + ("" if where != marker else " (the list is empty)"),
                fix_shape,
            )
    else:
        for i, info in enumerate(infos):
            if info.directive and info.clean_start:
                found = _DEFINE_FN_RE.match(info.code)
                if found:
                    defined_macros.add(found.group(1))
                continue
            if _is_instantiation(info):
                form, start = "instantiation", i
                break
            call = _call_name(info)
            if call is not None and call in defined_macros:
                form, start, macro = "xmacro", i, call
                break
        if start is None:
            raise BadInput(
                f"{name}:1: no list of explicit instantiations or X-macro calls found",
                fix_shape,
            )
    assert form is not None

    def is_entry(info: _LineInfo) -> bool:
        if form == "instantiation":
            return _is_instantiation(info)
        return _call_name(info) == macro

    # Collect the contiguous list; blank/comment lines inside it stay with the next entry.
    entries: list[Entry] = []
    pending: list[str] = []
    end = stop = len(lines)
    i = start
    while i < len(lines):
        info = infos[i]
        if is_entry(info):
            if info.blocks != infos[start].blocks or info.conds != infos[start].conds:
                raise BadInput(f"{name}:{i + 1}: entry sits in a different block", fix_shape)
            entries.append(Entry(line=i + 1, text=lines[i], leading=tuple(pending)))
            pending = []
        elif _is_blank_or_comment(info):
            # A comment between entries travels with the next entry, so it is never cut.
            pending.append(lines[i])
        else:
            end, stop = i - len(pending), i
            break
        i += 1
    else:
        end = len(lines) - len(pending)

    # Everything after the list must be entry-free: a second run of entries means the list is
    # interrupted (by #if, code, a different macro), and slicing it would lose the interruption.
    looks_like_entry = re.compile(
        r"^\s*(template\s+(?!<)" + (rf"|{re.escape(macro)}\s*\(" if macro else "") + ")"
    )
    for j in range(end, len(lines)):
        info = infos[j]
        if info.clean_start and not info.directive and looks_like_entry.match(info.code):
            raise BadInput(
                f"{name}:{j + 1}: entry after the end of the list (lines {entries[0].line}-"
                f"{entries[-1].line}), which is interrupted at line {stop + 1}: "
                f"{lines[stop].strip()!r}",
                fix_shape,
            )

    blocks = infos[start].blocks
    for line, kind in blocks:
        if kind != "namespace":
            raise BadInput(
                f"{name}:{start + 1}: the list is inside a non-namespace block opened at line "
                f"{line}",
                "explicit instantiations must be at namespace scope; " + fix_shape,
            )
    if infos[start].conds < 0:
        raise BadInput(f"{name}:{start + 1}: #endif without #if before the list", fix_shape)

    preamble_lines = lines[:start]
    for k, line in enumerate(preamble_lines):
        if infos[k].clean_start and _REGISTRATION_RE.match(infos[k].code):
            raise BadInput(
                f"{name}:{k + 1}: the preamble registers ops or a module "
                f"({line.strip().split('(')[0]}), which would run once per shard",
                "move the registration to another source file of the target",
            )
    line_directives = not any(
        infos[k].directive and _LINE_DIRECTIVE_RE.match(infos[k].code) for k in range(len(lines))
    )
    return GeneratedSource(
        name=name,
        form=form,
        preamble="".join(preamble_lines),
        entries=tuple(entries),
        epilogue="".join(lines[end:]),
        epilogue_line=end + 1,
        macro=macro,
        line_directives=line_directives,
    )


# ---------------------------------------------------------------------------------------------
# Planning


def shard_target_from_budget(budget_bytes: int, slots: int, safety: float = 0.8) -> int:
    """Peak RSS one shard may reach: its share of the budget when all slots run shards at once.

    The safety factor leaves room for the linear model's error and for links and drivers that
    run beside the shards.
    """
    if budget_bytes <= 0:
        raise BadInput(f"split budget must be positive, got {budget_bytes}", "pass --budget 8G")
    if slots < 1:
        raise BadInput(f"split slots must be at least 1, got {slots}", "pass --slots 2")
    if not 0 < safety <= 1:
        raise BadInput(f"split safety factor must be in (0, 1], got {safety}", "use e.g. 0.8")
    return int(budget_bytes * safety / slots)


def balanced_sizes(n_entries: int, n: int) -> tuple[int, ...]:
    """Sizes of `n` contiguous slices of `n_entries`, differing by at most one (larger first)."""
    if n < 1 or n > max(n_entries, 1):
        raise ValueError(f"cannot cut {n_entries} entries into {n} slices")
    base, extra = divmod(n_entries, n)
    return tuple(base + 1 if i < extra else base for i in range(n))


def balanced_slices(n_entries: int, n: int) -> list[range]:
    """Contiguous index ranges: instantiation order stays the order of the original file."""
    slices: list[range] = []
    begin = 0
    for size in balanced_sizes(n_entries, n):
        slices.append(range(begin, begin + size))
        begin += size
    return slices


def predict_peak(base_peak: int, per_entry: float, k: int) -> int:
    """The linear model: peak(k entries) = peak(preamble only) + k * per-entry growth."""
    return int(base_peak + k * per_entry)


def plan_shards(
    whole_peak_bytes: int,
    base_peak_bytes: int,
    n_entries: int,
    shard_target_bytes: int,
    min_shards: int = 1,
    max_shards: int | None = None,
    *,
    base_cpu_s: float | None = None,
    whole_cpu_s: float | None = None,
    cpu_ratio_limit: float = 1.3,
) -> ShardPlan:
    """Fewest balanced shards whose predicted peak fits `shard_target_bytes`.

    The fewest, because every shard pays the preamble again (CPU and memory); memory wins over
    CPU when both cannot be met, since running out of memory kills the build.
    """
    if n_entries < 1:
        raise BadInput("cannot plan shards for a list with no entries", "check the source")
    if shard_target_bytes <= 0:
        raise BadInput(f"shard target must be positive, got {shard_target_bytes}", "")
    if min_shards < 1:
        raise BadInput(f"min_shards must be at least 1, got {min_shards}", "")
    upper = n_entries if max_shards is None else min(max_shards, n_entries)
    if upper < 1:
        raise BadInput(f"max_shards must be at least 1, got {max_shards}", "")
    lower = min(min_shards, upper)

    base = max(0, base_peak_bytes)
    whole = max(base, whole_peak_bytes)
    per_entry = (whole - base) / n_entries
    warnings: list[str] = []

    if base + (whole - base) // n_entries > shard_target_bytes:
        n = upper
        reason = "even one entry per shard exceeds the target"
        warnings.append(
            f"a shard of one entry is predicted at {format_size(predict_peak(base, per_entry, 1))}"
            f", above the per-shard target {format_size(shard_target_bytes)}: the governor runs "
            "such shards with fewer neighbours"
        )
    elif per_entry == 0:
        n = lower
        reason = "entries add no measurable memory"
    else:
        # Integer arithmetic: a float per-entry cost would misjudge exact fits by one entry.
        fit_entries = (shard_target_bytes - base) * n_entries // (whole - base)
        n = math.ceil(n_entries / max(1, fit_entries))
        reason = f"at most {fit_entries} entries fit the target"
        if n > upper:
            warnings.append(f"{n} shards needed to fit the target, capped at {upper}")
            reason += f"; capped at {upper} shards"
        n = max(lower, min(n, upper))

    sizes = balanced_sizes(n_entries, n)
    shard_peak = base + sizes[0] * (whole - base) // n_entries
    ratio: float | None = None
    if base_cpu_s is not None and whole_cpu_s is not None and whole_cpu_s > 0:
        per_entry_cpu = max(0.0, whole_cpu_s - base_cpu_s) / n_entries
        ratio = (n * base_cpu_s + n_entries * per_entry_cpu) / max(whole_cpu_s, base_cpu_s)
        if ratio > cpu_ratio_limit:
            warnings.append(
                f"{n} shards are predicted to cost {ratio:.2f}x the CPU time of the whole file "
                f"(the preamble is compiled {n} times): make the preamble lighter"
            )
    return ShardPlan(
        n=n,
        per_shard_entries=sizes,
        predicted_shard_peak=shard_peak,
        fits=shard_peak <= shard_target_bytes,
        reason=reason,
        predicted_cpu_ratio=ratio,
        warnings=tuple(warnings),
    )


# ---------------------------------------------------------------------------------------------
# Rendering


def _c_string(path: str) -> str:
    return path.replace("\\", "\\\\").replace('"', '\\"')


def rewrite_quoted_includes(text: str, base_dir: str, exists: Callable[[str], bool]) -> str:
    """Make `#include "x.h"` that resolve next to the original file absolute.

    A shard lives in another directory, so the compiler's first lookup for quoted includes
    (the including file's own directory) would miss; an absolute path finds the same file.
    """
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        match = _INCLUDE_QUOTED_RE.match(line)
        if match and not match.group(2).startswith("/"):
            candidate = base_dir.rstrip("/") + "/" + match.group(2)
            if exists(candidate):
                line = match.group(1) + candidate + match.group(3)
        out.append(line)
    return "".join(out)


def render_shard(
    source: GeneratedSource,
    indices: range,
    origin: str | None = None,
    *,
    preamble: str | None = None,
    epilogue: str | None = None,
) -> str:
    """Preamble + a contiguous slice of entries + epilogue.

    With `origin` (the original file's path) `#line` markers make every line report the
    original file and line, so diagnostics, `__FILE__` and `__LINE__` read as in the unsplit
    build.
    """
    if not indices or indices.start < 0 or indices.stop > len(source.entries):
        raise ValueError(f"bad slice {indices} of {len(source.entries)} entries")
    pre = source.preamble if preamble is None else preamble
    epi = source.epilogue if epilogue is None else epilogue
    marks = origin is not None and source.line_directives
    quoted = _c_string(origin) if origin is not None else ""
    parts: list[str] = []
    if marks:
        parts.append(f'#line 1 "{quoted}"\n')
    parts.append(pre)
    if pre and not pre.endswith("\n"):
        parts.append("\n")
    picked = source.entries[indices.start : indices.stop]
    if marks:
        parts.append(f'#line {picked[0].first_line} "{quoted}"\n')
    for entry in picked:
        parts.extend(entry.leading)
        parts.append(entry.text if entry.text.endswith("\n") else entry.text + "\n")
    if epi:
        if marks:
            parts.append(f'#line {source.epilogue_line} "{quoted}"\n')
        parts.append(epi)
    return "".join(parts)


def render_probe(
    source: GeneratedSource,
    picks: Sequence[int],
    *,
    preamble: str | None = None,
    epilogue: str | None = None,
) -> str:
    """Preamble + the chosen (not necessarily contiguous) entries + epilogue, for probing."""
    pre = source.preamble if preamble is None else preamble
    epi = source.epilogue if epilogue is None else epilogue
    body = "".join(
        source.entries[i].text
        if source.entries[i].text.endswith("\n")
        else source.entries[i].text + "\n"
        for i in picks
    )
    return pre + ("" if not pre or pre.endswith("\n") else "\n") + body + epi


def probe_picks(n_entries: int, k: int) -> list[int]:
    """`k` indices spread evenly over the list, so costly and cheap variants both get sampled."""
    k = max(0, min(k, n_entries))
    return sorted({min(n_entries - 1, int((i + 0.5) * n_entries / k)) for i in range(k)})


def shard_name(stem: str, suffix: str, index: int, n: int) -> str:
    width = max(3, len(str(n)))
    return f"{stem}.shard-{index:0{width}d}-of-{n:0{width}d}{suffix}"
