"""The bundled pagedattn ops, built with the `tiny` preset, against the plain-PyTorch reference."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pagedattn_build import PAGEDATTN_SRC, PagedattnBuild

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow


def _tiny_keys() -> list[str]:
    # Parsed at collection time (pure Python) so each built kernel is its own test case.
    spec = importlib.util.spec_from_file_location(
        "pagedattn_kernel_config_ops", PAGEDATTN_SRC / "tools" / "kernel_config.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return [k.spec() for k in module.load_config(PAGEDATTN_SRC / "configs" / "tiny.conf").keys]


TINY_KEYS = _tiny_keys()


@pytest.fixture(scope="module")
def pa(pagedattn_tiny_build: PagedattnBuild) -> ModuleType:
    site = str(pagedattn_tiny_build.site_dir)
    if site not in sys.path:
        sys.path.insert(0, site)
    module = importlib.import_module("pagedattn")
    assert Path(module.__file__).parent == pagedattn_tiny_build.package_dir
    return module


def _call(pa: ModuleType, case: dict) -> torch.Tensor:
    args = {k: v for k, v in case.items() if k != "kind"}
    fn = pa.paged_decode if case["kind"] == "decode" else pa.chunked_prefill
    return fn(**args)


def _assert_close(pa: ModuleType, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    atol, rtol = pa.reference.TOLERANCES[want.dtype]
    assert got.dtype == want.dtype and got.shape == want.shape, what
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol, msg=what)


def test_built_kernels_are_the_tiny_config(pa: ModuleType) -> None:
    assert pa.config_name() == "tiny"
    assert pa.built_configs() == TINY_KEYS
    # The installed JSON and the compiled dispatch table agree.
    assert list(torch.ops.pagedattn.built_kernels()) == TINY_KEYS
    assert torch.ops.pagedattn.config_name() == "tiny"


@pytest.mark.parametrize("key", TINY_KEYS)
@pytest.mark.parametrize(("num_kv_heads", "seed"), [(1, 0), (3, 1)])
def test_kernel_matches_reference(pa: ModuleType, key: str, num_kv_heads: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    case = pa.reference.random_case(key, num_seqs=4, num_kv_heads=num_kv_heads, generator=gen)
    got = _call(pa, case)
    want = pa.reference.run_reference(case)
    _assert_close(pa, got, want, key)
    if case["kind"] == "decode":
        # Context 0 (last sequence): zeros, never NaN.
        assert torch.count_nonzero(got[-1]) == 0


def test_window_and_sinks_change_the_result(pa: ModuleType) -> None:
    # Guards against a reference and kernel that both ignore an axis.
    key = "decode qgroup=4 head=64 page=16 causal=1 local=1 sink=1 dtype=float"
    case = pa.reference.random_case(key, max_context=60, window=5)
    base = _call(pa, case)
    no_window = _call(pa, {**case, "window": 0})
    assert (base - no_window).abs().max() > 1e-3
    plain_key = "decode qgroup=4 head=64 page=16 causal=1 local=0 sink=1 dtype=float"
    case2 = pa.reference.random_case(plain_key)
    sinks_big = _call(pa, {**case2, "sinks": case2["sinks"] + 5.0})
    assert (sinks_big - _call(pa, case2)).abs().max() > 1e-3


def test_prefill_last_token_equals_decode(pa: ModuleType) -> None:
    key = "prefill qgroup=4 head=64 page=16 causal=1 local=1 sink=1 dtype=float"
    case = pa.reference.random_case(key, window=7)
    out = _call(pa, case)
    ends = case["query_start_loc"][1:].long() - 1
    decode = pa.paged_decode(
        case["query"][ends].contiguous(), case["key_cache"], case["value_cache"],
        case["block_tables"], case["seq_lens"], case["scale"], window=7, sinks=case["sinks"],
    )  # fmt: skip
    torch.testing.assert_close(decode, out[ends], atol=2e-5, rtol=2e-5)


def test_strided_query_and_cache_views(pa: ModuleType) -> None:
    key = "decode qgroup=4 head=64 page=16 causal=1 local=0 sink=1 dtype=float"
    case = pa.reference.random_case(key, num_kv_heads=2)
    # The caches as views into a wider tensor (a kv-head slice), the query with a padded stride.
    wide_k = torch.randn(*case["key_cache"].shape[:2], 5, 64)
    wide_v = torch.randn_like(wide_k)
    wide_k[:, :, 1:3] = case["key_cache"]
    wide_v[:, :, 1:3] = case["value_cache"]
    q_wide = torch.randn(case["query"].shape[0], case["query"].shape[1], 96)
    q_wide[..., :64] = case["query"]
    view = {
        **case,
        "key_cache": wide_k[:, :, 1:3],
        "value_cache": wide_v[:, :, 1:3],
        "query": q_wide[..., :64],
    }
    assert not view["key_cache"].is_contiguous() and not view["query"].is_contiguous()
    _assert_close(pa, _call(pa, view), pa.reference.run_reference(case), key)


def test_kernel_not_built_names_key_and_preset(pa: ModuleType) -> None:
    key = "decode qgroup=4 head=64 page=16 causal=1 local=0 sink=0 dtype=bf16"
    case = pa.reference.random_case(key)
    args = {k: v for k, v in case.items() if k != "kind"}
    with pytest.raises(pa.KernelNotBuiltError) as info:
        pa.paged_decode(**args)
    msg = str(info.value)
    assert key in msg and "config 'tiny'" in msg
    assert "default" in msg and "PAGEDATTN_CONFIG=default" in msg
    assert pa.presets_with(key) == ["default", "full"]
    # A key in no preset says how to add it.
    odd = "decode qgroup=3 head=80 page=128 causal=0 local=0 sink=0 dtype=half"
    assert pa.presets_with(odd) == []
    # The raw op (no Python wrapper) fails too, from the C++ dispatch table.
    with pytest.raises(RuntimeError, match="was not built into this library"):
        torch.ops.pagedattn.paged_decode(
            case["query"], case["key_cache"], case["value_cache"], case["block_tables"],
            case["seq_lens"], 0.125, True, 0, None,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"block_tables": "int64"}, "block_tables must be a 2-D int32 tensor"),
        ({"seq_lens": "too long"}, "needs"),
        ({"block_tables": "out of range"}, "is outside the cache"),
        ({"query": "wrong heads"}, "must be a multiple of num_kv_heads"),
        ({"value_cache": "other dtype"}, "must share one dtype"),
        ({"sinks": "wrong size"}, "sinks must be 1-D [num_heads]"),
    ],
)
def test_bad_arguments_are_clear_errors(pa: ModuleType, change: dict, needle: str) -> None:
    key = "decode qgroup=4 head=64 page=16 causal=1 local=0 sink=1 dtype=float"
    case = pa.reference.random_case(key)
    args = {k: v for k, v in case.items() if k != "kind"}
    what = next(iter(change.values()))
    if what == "int64":
        args["block_tables"] = args["block_tables"].long()
    elif what == "too long":
        args["seq_lens"] = args["seq_lens"].clone()
        args["seq_lens"][0] = 10_000
    elif what == "out of range":
        args["block_tables"] = args["block_tables"].clone()
        args["block_tables"][0, 0] = 99_999
    elif what == "wrong heads":
        args["query"] = args["query"][:, :3]
    elif what == "other dtype":
        args["value_cache"] = args["value_cache"].double()
    elif what == "wrong size":
        args["sinks"] = args["sinks"][:2]
    with pytest.raises(RuntimeError) as info:
        pa.paged_decode(**args)
    assert needle in str(info.value)


def test_prefill_argument_checks(pa: ModuleType) -> None:
    key = "prefill qgroup=4 head=64 page=16 causal=1 local=0 sink=1 dtype=float"
    case = pa.reference.random_case(key)
    args = {k: v for k, v in case.items() if k != "kind"}
    bad = args["query_start_loc"].clone()
    bad[-1] += 1
    with pytest.raises(RuntimeError, match="must equal the number of query tokens"):
        pa.chunked_prefill(**{**args, "query_start_loc": bad})
    short = args["seq_lens"].clone()
    short[0] = 0
    with pytest.raises(RuntimeError, match="query tokens but seq_lens"):
        pa.chunked_prefill(**{**args, "seq_lens": short})


def test_meta_tensors_give_shapes(pa: ModuleType) -> None:
    q = torch.empty(5, 8, 64, device="meta", dtype=torch.bfloat16)
    kc = torch.empty(10, 16, 2, 64, device="meta", dtype=torch.bfloat16)
    bt = torch.empty(5, 4, device="meta", dtype=torch.int32)
    sl = torch.empty(5, device="meta", dtype=torch.int32)
    out = torch.ops.pagedattn.paged_decode(q, kc, kc, bt, sl, 0.1, True, 0, None)
    assert out.shape == q.shape and out.device.type == "meta" and out.dtype == q.dtype


def test_self_check_passes(pa: ModuleType) -> None:
    assert pa.reference.self_check(seed=3).startswith("ok: 12 kernels")


def test_library_needs_no_python(pagedattn_tiny_build: PagedattnBuild) -> None:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not installed")
    dyn = subprocess.run([readelf, "-d", str(pagedattn_tiny_build.library)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    needed = [line.split("[")[1].rstrip("]") for line in dyn.splitlines() if "(NEEDED)" in line]
    assert "libtorch_cpu.so" in needed and "libc10.so" in needed
    assert not [n for n in needed if "python" in n], needed


def test_generated_heavy_tu_is_torch_free(pagedattn_tiny_build: PagedattnBuild) -> None:
    text = pagedattn_tiny_build.instances_source.read_text()
    head, marker, body = text.partition("// buildctl:split-list\n")
    assert marker and "torch" not in head.lower()
    assert len(body.splitlines()) == len(TINY_KEYS)


def test_torch_version_guard(pagedattn_tiny_build: PagedattnBuild, tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(pagedattn_tiny_build.package_dir, site / "pagedattn")
    info = site / "pagedattn" / "_build_info.py"
    info.write_text(
        info.read_text()
        .replace("TORCH_MAJOR_MINOR = (2, ", "TORCH_MAJOR_MINOR = (1, ")
        .replace("TORCH_VERSION = '2.", "TORCH_VERSION = '1.")
    )
    proc = subprocess.run(
        [sys.executable, "-c", "import pagedattn"],
        cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "was built against torch 1." in proc.stderr
    assert "fix:" in proc.stderr
