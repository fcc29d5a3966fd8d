"""pagedattn: CPU paged-attention custom ops for PyTorch (buildctl's bundled kernel project).

    import pagedattn
    out = pagedattn.paged_decode(query, key_cache, value_cache, block_tables, seq_lens)
    out = pagedattn.chunked_prefill(query, key_cache, value_cache, block_tables,
                                    query_start_loc, seq_lens)

The ops are also reachable as torch.ops.pagedattn.paged_decode / chunked_prefill. Only the kernel
variants of the config chosen at build time exist (`built_configs()`); `reference` holds the
plain-PyTorch definitions they are tested against.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

from ._version import __version__

try:
    from . import _build_info
except ImportError as exc:  # running from a source tree that was never built
    raise ImportError(
        "pagedattn: this package has not been built (no _build_info.py next to it). "
        "fix: build and install it, e.g. `pip install --no-build-isolation kernels/pagedattn`"
    ) from exc

import torch

_HERE = Path(__file__).resolve().parent
_LIBRARY_NAME = "_pagedattn_ops.so"


def _torch_major_minor(version: str) -> tuple[int, int]:
    parts = version.split("+", 1)[0].split(".")
    return int(parts[0]), int(parts[1])


def _check_torch() -> None:
    # The extension uses torch's C++ ABI, which changes between minor releases: fail at import
    # with the fix instead of an undefined-symbol error (or a crash) later.
    have = _torch_major_minor(torch.__version__)
    if have != tuple(_build_info.TORCH_MAJOR_MINOR):
        built = _build_info.TORCH_VERSION
        raise ImportError(
            f"pagedattn {__version__} was built against torch {built} but torch "
            f"{torch.__version__} is installed. fix: install torch "
            f"{'.'.join(map(str, _build_info.TORCH_MAJOR_MINOR))}.x, or rebuild pagedattn in "
            f"this environment (pip install --no-build-isolation --force-reinstall <pagedattn "
            f"source>, or `buildctl wheel --torch {torch.__version__}`)"
        )


_check_torch()
torch.ops.load_library(str(_HERE / _LIBRARY_NAME))

from . import reference  # noqa: E402  (after the guard, so a torch mismatch fails first)

DTYPE_NAMES = {torch.float32: "float", torch.bfloat16: "bf16", torch.float16: "half"}


class KernelNotBuiltError(RuntimeError):
    """The op was called with a kernel variant that the build config did not include."""


@lru_cache(maxsize=1)
def _manifest() -> dict:
    return json.loads((_HERE / "built_configs.json").read_text(encoding="utf-8"))


def built_configs() -> list[str]:
    """Kernel keys compiled into this build, as config lines (`decode qgroup=4 head=128 ...`)."""
    return list(_manifest()["kernels"])


def config_name() -> str:
    """Name of the kernel config this package was built with (tiny, default, full or a file)."""
    return str(_manifest()["config"])


def kernel_key(
    kind: str,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    causal: bool,
    window: int,
    sinks: torch.Tensor | None,
) -> str:
    """The key of the kernel an op call needs (same text as the entries of built_configs())."""
    qgroup = query.shape[1] // key_cache.shape[2]
    dtype = DTYPE_NAMES.get(query.dtype, str(query.dtype))
    return (
        f"{kind} qgroup={qgroup} head={query.shape[2]} page={key_cache.shape[1]} "
        f"causal={int(bool(causal))} local={int(window > 0)} sink={int(sinks is not None)} "
        f"dtype={dtype}"
    )


def presets_with(key: str) -> list[str]:
    """Names of the shipped presets whose config includes this kernel key."""
    fields = key.split()
    kind = fields[0]
    values: dict[str, str] = dict(f.split("=", 1) for f in fields[1:])
    found = []
    for name, rules in _manifest()["presets"].items():
        for rule in rules:
            if kind in rule["kind"] and all(
                values[axis] in {str(v) for v in rule[axis]} for axis in values
            ):
                found.append(name)
                break
    return found


def _require(key: str) -> None:
    if key in _built_set():
        return
    presets = presets_with(key)
    where = (
        f"it is in the preset(s) {', '.join(presets)}: rebuild with "
        f"-DPAGEDATTN_CONFIG={presets[0]} (pip: --config-settings=cmake.define.PAGEDATTN_CONFIG="
        f"{presets[0]})"
        if presets
        else "no shipped preset has it: add the line to a custom .conf file and rebuild with "
        "-DPAGEDATTN_CONFIG=/path/to/file.conf"
    )
    raise KernelNotBuiltError(
        f"pagedattn: kernel '{key}' was not built (this package was built with config "
        f"'{config_name()}', {len(built_configs())} kernels); {where}"
    )


@lru_cache(maxsize=1)
def _built_set() -> frozenset[str]:
    return frozenset(built_configs())


def _shapes_ok(query: torch.Tensor, key_cache: torch.Tensor) -> bool:
    # Leave malformed inputs to the op's own TORCH_CHECKs, which say exactly what is wrong.
    return (
        query.dtype in DTYPE_NAMES
        and query.dim() == 3
        and key_cache.dim() == 4
        and key_cache.shape[2] > 0
        and query.shape[1] % key_cache.shape[2] == 0
    )


def paged_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    *,
    causal: bool = True,
    window: int = 0,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode attention: one query token per sequence over its paged KV cache.

    query [num_seqs, num_heads, head_size]; key_cache/value_cache
    [num_blocks, block_size, num_kv_heads, head_size]; block_tables [num_seqs, max_blocks] int32;
    seq_lens [num_seqs] int32; scale defaults to 1/sqrt(head_size); window <= 0 means no
    sliding window; sinks [num_heads] optional per-head sink logits. See `reference` for the
    exact semantics.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    if _shapes_ok(query, key_cache):
        _require(kernel_key("decode", query, key_cache, causal, window, sinks))
    return torch.ops.pagedattn.paged_decode(
        query, key_cache, value_cache, block_tables, seq_lens, float(scale), causal, window, sinks
    )


def chunked_prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    *,
    causal: bool = True,
    window: int = 0,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Chunked prefill: several new query tokens per sequence over its paged KV cache.

    query [num_tokens, num_heads, head_size]; tokens query_start_loc[s]:query_start_loc[s+1]
    (int32, num_seqs + 1 entries) are the last tokens of sequence s, whose context is
    seq_lens[s] tokens long including them (already written into the cache). Causal masking is
    relative to the end of the context.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    if _shapes_ok(query, key_cache):
        _require(kernel_key("prefill", query, key_cache, causal, window, sinks))
    return torch.ops.pagedattn.chunked_prefill(
        query,
        key_cache,
        value_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        float(scale),
        causal,
        window,
        sinks,
    )


__all__ = [
    "KernelNotBuiltError",
    "__version__",
    "built_configs",
    "chunked_prefill",
    "config_name",
    "kernel_key",
    "paged_decode",
    "presets_with",
    "reference",
]
