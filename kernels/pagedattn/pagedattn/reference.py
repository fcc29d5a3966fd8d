"""Plain-PyTorch reference implementations of the pagedattn ops (slow, obviously correct).

They define the semantics the C++ kernels must match:

- Layouts as in vLLM: query [tokens, num_heads, head_size]; key_cache/value_cache
  [num_blocks, block_size, num_kv_heads, head_size]; block_tables [num_seqs, max_blocks] int32;
  seq_lens [num_seqs] int32 = context length *including* the query tokens.
- GQA: query head h reads kv head h // (num_heads // num_kv_heads).
- Query token i of a q_len chunk sits at context position seq_len - q_len + i (decode: q_len 1).
- causal: key j is visible iff j <= qpos. Without causal, every context position is visible.
- window > 0: additionally j > qpos - window (the last `window` positions up to qpos); without
  causal also j < qpos + window.
- sinks [num_heads]: a per-head logit that joins the softmax denominator but has no value row
  (gpt-oss attention sinks). Scores are q·k * scale; the sink logit is not scaled.
- A query with no visible key yields zeros.
All math in float32; the result is cast back to the query dtype.
"""

from __future__ import annotations

import torch


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The first seq_len positions of one sequence: [seq_len, num_kv_heads, head_size]."""
    block_size = cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = cache[block_table[:num_blocks].long()]  # [n, block_size, kv_heads, head]
    return blocks.reshape(-1, *cache.shape[2:])[:seq_len]


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qpos: torch.Tensor,
    scale: float,
    causal: bool,
    window: int,
    sinks: torch.Tensor | None,
) -> torch.Tensor:
    """q [n, H, D] at positions qpos [n]; k, v [L, KV, D] -> [n, H, D] (all float32)."""
    num_heads, num_kv = q.shape[1], k.shape[1]
    group = num_heads // num_kv
    k = k.repeat_interleave(group, dim=1)  # [L, H, D]
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,lhd->hnl", q, k) * scale  # [H, n, L]
    pos = torch.arange(k.shape[0])
    visible = torch.ones(q.shape[0], k.shape[0], dtype=torch.bool)
    if causal:
        visible &= pos[None, :] <= qpos[:, None]
    if window > 0:
        visible &= pos[None, :] > qpos[:, None] - window
        if not causal:
            visible &= pos[None, :] < qpos[:, None] + window
    scores = scores.masked_fill(~visible[None], float("-inf"))
    if sinks is not None:
        sink_col = sinks.float()[:, None, None].expand(num_heads, q.shape[0], 1)
        scores = torch.cat([scores, sink_col], dim=-1)
    # Rows with nothing visible: softmax would be NaN (or all-sink); the kernels emit zeros.
    probs = torch.softmax(scores, dim=-1)
    if sinks is not None:
        probs = probs[..., :-1]
    probs = torch.where(visible[None], probs, torch.zeros((), dtype=probs.dtype))
    out = torch.einsum("hnl,lhd->nhd", probs, v)
    return out


def paged_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    causal: bool = True,
    window: int = 0,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query token per sequence at the end of its context."""
    starts = torch.arange(query.shape[0] + 1, dtype=torch.int32)
    return chunked_prefill(
        query, key_cache, value_cache, block_tables, starts, seq_lens, scale, causal, window, sinks
    )


def chunked_prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    causal: bool = True,
    window: int = 0,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tokens query_start_loc[s]:query_start_loc[s+1] are the last tokens of sequence s."""
    out = torch.zeros(query.shape, dtype=torch.float32)
    for s in range(seq_lens.shape[0]):
        lo, hi = int(query_start_loc[s]), int(query_start_loc[s + 1])
        seq_len = int(seq_lens[s])
        q_len = hi - lo
        if q_len == 0:
            continue
        k = gather_kv(key_cache, block_tables[s], seq_len).float()
        v = gather_kv(value_cache, block_tables[s], seq_len).float()
        qpos = torch.arange(seq_len - q_len, seq_len)
        out[lo:hi] = _attend(query[lo:hi].float(), k, v, qpos, scale, causal, window, sinks)
    return out.to(query.dtype)


# ---- random cases and a self check (used by the tests and by buildctl's wheel smoke test) -----

DTYPES = {"float": torch.float32, "bf16": torch.bfloat16, "half": torch.float16}
# Inputs are identical for kernel and reference; differences come from float summation order and
# the final rounding to the output dtype (one ulp of values around 1).
TOLERANCES = {
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (1.6e-2, 1.6e-2),
    torch.float16: (2e-3, 2e-3),
}


def parse_key(key: str) -> dict[str, object]:
    """'decode qgroup=4 head=64 ...' -> {'kind': 'decode', 'qgroup': 4, ..., 'dtype': 'bf16'}."""
    kind, *fields = key.split()
    out: dict[str, object] = {"kind": kind}
    for field in fields:
        name, value = field.split("=", 1)
        out[name] = value if name == "dtype" else int(value)
    return out


def random_case(
    key: str,
    *,
    num_seqs: int = 3,
    num_kv_heads: int = 2,
    max_context: int = 70,
    window: int = 9,
    generator: torch.Generator | None = None,
) -> dict[str, object]:
    """Random op arguments for one kernel key: a paged KV cache with shuffled (non-contiguous,
    non-monotonic) block tables, ragged context lengths (including 0 and exact page multiples),
    and for prefill ragged query chunks. Returns keyword arguments of the op (plus `kind`)."""
    k = parse_key(key)
    g = generator or torch.Generator().manual_seed(0)
    dtype = DTYPES[str(k["dtype"])]
    page, head, qgroup = int(k["page"]), int(k["head"]), int(k["qgroup"])
    num_heads = num_kv_heads * qgroup

    lens = torch.randint(1, max_context + 1, (num_seqs,), generator=g)
    lens[0] = page  # an exact page multiple
    if k["kind"] == "decode" and num_seqs > 2:
        lens[-1] = 0  # an empty context: output must be zeros
    max_blocks = (int(lens.max()) + page - 1) // page + 1  # one spare column: tables are padded
    num_blocks = num_seqs * max_blocks + 3
    perm = torch.randperm(num_blocks, generator=g)[: num_seqs * max_blocks]
    block_tables = perm.reshape(num_seqs, max_blocks).to(torch.int32)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    case: dict[str, object] = {
        "kind": k["kind"],
        "key_cache": rnd(num_blocks, page, num_kv_heads, head),
        "value_cache": rnd(num_blocks, page, num_kv_heads, head),
        "block_tables": block_tables,
        "seq_lens": lens.to(torch.int32),
        "scale": head**-0.5,
        "causal": bool(k["causal"]),
        "window": window if k["local"] else 0,
        "sinks": torch.randn(num_heads, generator=g) if k["sink"] else None,
    }
    if k["kind"] == "decode":
        case["query"] = rnd(num_seqs, num_heads, head)
    else:
        q_lens = torch.stack([torch.randint(1, int(n) + 1, (1,), generator=g)[0] for n in lens])
        q_lens[0] = lens[0]  # a whole-context chunk (plain prefill)
        starts = torch.zeros(num_seqs + 1, dtype=torch.int32)
        starts[1:] = torch.cumsum(q_lens, 0).to(torch.int32)
        case["query_start_loc"] = starts
        case["query"] = rnd(int(starts[-1]), num_heads, head)
    return case


def run_reference(case: dict[str, object]) -> torch.Tensor:
    args = {k: v for k, v in case.items() if k != "kind"}
    fn = paged_decode if case["kind"] == "decode" else chunked_prefill
    return fn(**args)  # type: ignore[arg-type]


def self_check(seed: int = 0, keys: list[str] | None = None) -> str:
    """Run every built kernel (or `keys`) on a random case and compare with the reference.

    Raises AssertionError naming the kernel on a mismatch; returns a one-line summary.
    """
    import pagedattn  # late: this module is imported by pagedattn itself

    keys = keys if keys is not None else pagedattn.built_configs()
    worst = 0.0
    for i, key in enumerate(keys):
        case = random_case(key, generator=torch.Generator().manual_seed(seed + i))
        args = {k: v for k, v in case.items() if k != "kind"}
        fn = pagedattn.paged_decode if case["kind"] == "decode" else pagedattn.chunked_prefill
        got = fn(**args)  # type: ignore[operator]
        want = run_reference(case)
        atol, rtol = TOLERANCES[want.dtype]
        err = (got.float() - want.float()).abs()
        bad = err > atol + rtol * want.float().abs()
        if bool(bad.any()):
            raise AssertionError(
                f"pagedattn self check: kernel '{key}' differs from the reference "
                f"(max abs error {float(err.max()):.3g}, {int(bad.sum())} elements over tolerance)"
            )
        worst = max(worst, float(err.max()) if err.numel() else 0.0)
    return f"ok: {len(keys)} kernels match the reference (max abs error {worst:.3g})"
