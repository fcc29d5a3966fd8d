"""Write the ESTIMATED vllm-xpu-kernels profiles shipped under profiles/vllm-xpu-kernels/.

    .venv/bin/python bench/make_xpu_profiles.py      # rewrites v0.1.9.json, v0.1.9-unpatched.json

Nothing here was measured: we have no Intel GPU build host. Peaks are derived from public facts
(../shared/DESIGN.md section 5, ../shared/reference) as written in profiles/vllm-xpu-kernels/
README.md; wall times are placeholders that only order the jobs. The job list (targets, sources,
generated files) is that of upstream tag v0.1.9 with its default options, re-derived from its
CMake logic: decode files = 52 (q-group, head, page) policies x causal x local x sink; prefill
files = 12 policies x paged x causal x local x sink, plus the LSE variant where paged, local and
sink are all false. Replace these files with `buildctl profile export` from a real build.
"""

from __future__ import annotations

import sys
from itertools import product
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from buildctl.govern.profiles import ProfileEntry, ProfileExport  # noqa: E402

GB = 1000**3  # the public figures are in GB ("120+ GB"); we keep their unit
OUT = ROOT / "profiles" / "vllm-xpu-kernels"
COMPILER = "icpx (oneAPI 2025.3) ESTIMATE, not measured"

# -- the one measured-in-the-field number and what follows from it -------------------------------
# paged_decode_xe2.cpp reached 120+ GB at v0.1.8.1-v0.1.9.1 because it instantiated 32 extra
# variants x 6 dtype pairs x 2 kernels = 384 kernel instantiations in one TU.
UNPATCHED_PAGED_DECODE = 120 * GB
PER_INSTANTIATION = UNPATCHED_PAGED_DECODE / (32 * 6 * 2)  # ~0.31 GB
DECODE_FILE = int(PER_INSTANTIATION * 6 * 2)  # a generated decode file: 6 dtype pairs x 2 kernels
PREFILL_FILE = int(PER_INSTANTIATION * 6 * 1)  # a generated prefill file: 6 x 1
HANDWRITTEN_TLA = DECODE_FILE  # "several GB" per CUTLASS-SYCL TU: one decode file's worth
# Device link: 16 inner link jobs (upstream -fsycl-max-parallel-link-jobs=16) x ~6 GB each
# (24-core/96 GB builders had to cap 4 libraries linking at once to 4 inner jobs each).
DEVICE_LINK = 16 * 6 * GB
SMALL_DEVICE_LINK = 6 * GB  # extension modules: little device code, assume one inner job's worth
PLAIN_SYCL = int(1.5 * GB)  # guess: torch + SYCL headers, no CUTLASS templates
JIT_TLA = 2 * GB  # guess: xe_default kernels are JIT (no AOT at compile or link time)

# Placeholders (no public timings): they order the jobs and make the makespan indicative only.
WALL = {"decode": 300.0, "prefill": 150.0, "tla": 300.0, "plain": 60.0, "device_link": 1800.0,
        "small_link": 120.0, "unpatched": 3 * 3600.0}

DECODE_POLICIES = [(q, h, p) for q in (8, 16) for p in (16, 32, 64, 128)
                   for h in (64, 96, 128, 192, 256, 512, 576) if h != 576 or p in (64, 128)]
PREFILL_POLICIES = [f"chunk_policy_head{h}{b}" for b in ("", "_b16")
                    for h in (64, 96, 128, 192, 256, 512)]
TF = {False: "f", True: "t"}


def entry(output: str, kind: str, peak: float, wall: float, target: str) -> ProfileEntry:
    return ProfileEntry(output=output, kind=kind, compiler=COMPILER, peak_rss_bytes=int(peak),
                        wall_s=wall, cpu_s=wall, target=target)


def attn_library(patched: bool) -> list[ProfileEntry]:
    target = "attn_kernels_xe_2"
    obj = f"csrc/xpu/attn/xe_2/CMakeFiles/{target}.dir/"
    out = []
    for (q, h, p), c, loc, s in product(DECODE_POLICIES, (False, True), (False, True),
                                        (False, True)):
        name = f"paged_decode_kernel_template_q{q}_h{h}_p{p}_{TF[c]}{TF[loc]}{TF[s]}.cpp.o"
        out.append(entry(obj + name, "compile", DECODE_FILE, WALL["decode"], target))
    for policy, paged, c, loc, s in product(PREFILL_POLICIES, *[(False, True)] * 4):
        lses = (False, True) if not (paged or loc or s) else (False,)
        for lse in lses:
            suffix = f"{TF[paged]}{TF[c]}{TF[s]}{TF[loc]}{TF[lse]}"
            name = f"chunk_prefill_kernel_template_{policy}_{suffix}.cpp.o"
            out.append(entry(obj + name, "compile", PREFILL_FILE, WALL["prefill"], target))
    if patched:
        out.append(entry(obj + "paged_decode_xe2.cpp.o", "compile", HANDWRITTEN_TLA, WALL["tla"],
                         target))
    else:
        out.append(entry(obj + "paged_decode_xe2.cpp.o", "compile", UNPATCHED_PAGED_DECODE,
                         WALL["unpatched"], target))
    out.append(entry(obj + "fmha_xe2.cpp.o", "compile", HANDWRITTEN_TLA, WALL["tla"], target))
    out.append(entry(f"lib{target}.so", "link", DEVICE_LINK, WALL["device_link"], target))
    return out


def other_libraries() -> list[ProfileEntry]:
    out = []
    for target, folder, sources in (
        ("grouped_gemm_xe_2", "grouped_gemm/xe_2", ["grouped_gemm_xe2.cpp"]),
        ("gdn_attn_kernels_xe_2", "gdn_attn/xe_2", ["chunk_gated_delta_rule_xe2.cpp"]),
        ("mqa_logits_kernels_xe_2", "mqa_logits/xe_2", ["mqa_logits_xe2.cpp"]),
    ):
        for src in sources:
            out.append(entry(f"csrc/xpu/{folder}/CMakeFiles/{target}.dir/{src}.o", "compile",
                             HANDWRITTEN_TLA, WALL["tla"], target))
        out.append(entry(f"lib{target}.so", "link", DEVICE_LINK, WALL["device_link"], target))
    target = "grouped_gemm_xe_default"
    for src in ("grouped_gemm_kernel.cpp", "grouped_gemm_xe_default.cpp"):
        out.append(entry(f"csrc/xpu/grouped_gemm/xe_default/CMakeFiles/{target}.dir/{src}.o",
                         "compile", JIT_TLA, WALL["tla"], target))
    out.append(entry(f"lib{target}.so", "link", JIT_TLA, WALL["small_link"], target))
    return out


EXTENSIONS = {
    "_C": ["csrc/cache.cpp", "csrc/layernorm.cpp", "csrc/layernorm_quant.cpp",
           "csrc/activation.cpp", "csrc/pos_encoding_kernels.cpp", "csrc/fused_qknorm_rope.cpp",
           "csrc/torch_bindings.cpp", "csrc/quantization/fp8/fp8_quant.cpp",
           "csrc/quantization/fp4/mxfp4_quant.cpp", "csrc/xpu_view.cpp",
           "csrc/attention/merge_attn_states.cpp", "csrc/tensor_utils.cpp",
           "csrc/utils/mem_cpy.cpp", "csrc/topk_per_row.cpp"],
    "_vllm_fa2_C": ["csrc/flash_attn/flash_api.cpp", "csrc/xpu/attn/attn_interface.cpp"],
    "_xpu_C": ["csrc/xpu/torch_bindings.cpp", "csrc/xpu/lora/lora_shrink.cpp",
               "csrc/xpu/lora/lora_expand.cpp", "csrc/xpu/sampler/topk_topp_sampler.cpp",
               "csrc/xpu/sycl/deepseek_scaling_rope.cpp", "csrc/xpu/sycl/multimodal_rope.cpp",
               "csrc/xpu/rand/exponential.cpp", "csrc/xpu/utils.cpp",
               "csrc/xpu/grouped_gemm/grouped_gemm_interface.cpp",
               "csrc/xpu/gdn_attn/gdn_attn_interface.cpp",
               "csrc/xpu/mqa_logits/mqa_logits_interface.cpp",
               "csrc/xpu/onednn/onednn_matmul.cpp", "csrc/xpu/onednn/onednn_runtime.cpp"],
    "_moe_C": [f"csrc/moe/{n}.cpp" for n in (
        "fused_grouped_topk", "fused_moe_prologue", "grouped_topk", "init_expert_map",
        "moe_align_sum_kernels", "moe_gather", "remap_hidden_states", "topk", "torch_bindings")],
}


def extensions() -> list[ProfileEntry]:
    out = []
    for target, sources in EXTENSIONS.items():
        for src in sources:
            out.append(entry(f"CMakeFiles/{target}.dir/{src}.o", "compile", PLAIN_SYCL,
                             WALL["plain"], target))
        out.append(entry(f"{target}.abi3.so", "link", SMALL_DEVICE_LINK, WALL["small_link"],
                         target))
    out.append(entry("CMakeFiles/xpumem_allocator.dir/csrc/utils/mem_alloc.cpp.o", "compile",
                     0.5 * GB, 20.0, "xpumem_allocator"))
    out.append(entry("xpumem_allocator.abi3.so", "link", 0.3 * GB, 5.0, "xpumem_allocator"))
    return out


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, patched in (("v0.1.9.json", True), ("v0.1.9-unpatched.json", False)):
        entries = attn_library(patched) + other_libraries() + extensions()
        text = ProfileExport(entries=entries).model_dump_json(by_alias=True, indent=1)
        (OUT / name).write_text(text + "\n")
        print(f"{OUT / name}: {len(entries)} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
