// pagedattn: the torch-facing side. Argument checks, the runtime kernel key, dispatch through the
// generated table, threading, and TORCH_LIBRARY registration. It never instantiates a kernel: the
// instantiations live in the generated pagedattn_instances.cpp, which includes no torch header.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/ScalarType.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pagedattn_api.h"

namespace pagedattn {
namespace {

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::Float;
    case at::kBFloat16:
      return DType::BFloat16;
    case at::kHalf:
      return DType::Half;
    default:
      TORCH_CHECK(false, "pagedattn: unsupported dtype ", t,
                  "; query and caches must be float32, bfloat16 or float16");
  }
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::Float:
      return "float";
    case DType::BFloat16:
      return "bf16";
    case DType::Half:
      return "half";
  }
  return "?";
}

// Same text as the Python side's KernelKey.spec(): a user can paste it into a .conf file.
std::string key_spec(const KernelKey& k) {
  return std::string(k.kind == Kind::Decode ? "decode" : "prefill") +
         " qgroup=" + std::to_string(k.qgroup) + " head=" + std::to_string(k.head_size) +
         " page=" + std::to_string(k.block_size) + " causal=" + (k.causal ? "1" : "0") +
         " local=" + (k.local ? "1" : "0") + " sink=" + (k.sink ? "1" : "0") +
         " dtype=" + dtype_name(k.dtype);
}

const KernelEntry& lookup(const KernelKey& key) {
  const KernelEntry* e = find_kernel(key);
  TORCH_CHECK(e != nullptr, "pagedattn: kernel '", key_spec(key),
              "' was not built into this library (built with config '", config_name(),
              "'). Rebuild with a config that includes it: -DPAGEDATTN_CONFIG=<preset or .conf> "
              "(see pagedattn.built_configs() and kernels/pagedattn/configs/).");
  return *e;
}

// Checks shared by both ops; fills the KV part of the kernel parameters and the key. Small index
// tensors are made contiguous copies (kept alive in `keep`); the caches are never copied.
struct Prepared {
  PagedKV kv{};
  KernelKey key{};
  std::int64_t num_seqs = 0;
  std::vector<at::Tensor> keep;
};

Prepared prepare(const char* op, Kind kind, const at::Tensor& query, const at::Tensor& key_cache,
                 const at::Tensor& value_cache, const at::Tensor& block_tables,
                 const at::Tensor& seq_lens, double scale, bool causal, std::int64_t window,
                 const std::optional<at::Tensor>& sinks) {
  TORCH_CHECK(query.dim() == 3, op, ": query must be 3-D [tokens, num_heads, head_size], got ",
              query.sizes());
  TORCH_CHECK(key_cache.dim() == 4, op,
              ": key_cache must be 4-D [num_blocks, block_size, num_kv_heads, head_size], got ",
              key_cache.sizes());
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes(), op,
              ": value_cache must have the shape of key_cache ", key_cache.sizes(), ", got ",
              value_cache.sizes());
  TORCH_CHECK(query.scalar_type() == key_cache.scalar_type() &&
                  query.scalar_type() == value_cache.scalar_type(),
              op, ": query, key_cache and value_cache must share one dtype, got ",
              query.scalar_type(), ", ", key_cache.scalar_type(), ", ", value_cache.scalar_type());
  for (const at::Tensor* t : {&query, &key_cache, &value_cache, &block_tables, &seq_lens}) {
    TORCH_CHECK(t->device().is_cpu(), op, ": all tensors must be on the CPU, got ", t->device());
  }
  TORCH_CHECK(key_cache.stride(3) == 1 && value_cache.stride(3) == 1, op,
              ": the head_size dimension of key_cache and value_cache must be contiguous "
              "(stride 1); call .contiguous() on the cache");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.scalar_type() == at::kInt, op,
              ": block_tables must be a 2-D int32 tensor [num_seqs, max_blocks_per_seq], got ",
              block_tables.scalar_type(), " ", block_tables.sizes());
  TORCH_CHECK(seq_lens.dim() == 1 && seq_lens.scalar_type() == at::kInt, op,
              ": seq_lens must be a 1-D int32 tensor [num_seqs], got ", seq_lens.scalar_type(),
              " ", seq_lens.sizes());
  TORCH_CHECK(seq_lens.size(0) == block_tables.size(0), op, ": seq_lens has ", seq_lens.size(0),
              " entries but block_tables has ", block_tables.size(0), " rows");
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);

  const std::int64_t num_heads = query.size(1);
  const std::int64_t head_size = query.size(2);
  const std::int64_t num_blocks = key_cache.size(0);
  const std::int64_t block_size = key_cache.size(1);
  const std::int64_t num_kv_heads = key_cache.size(2);
  TORCH_CHECK(key_cache.size(3) == head_size, op, ": query head_size ", head_size,
              " differs from the cache head_size ", key_cache.size(3));
  TORCH_CHECK(num_kv_heads > 0 && num_heads % num_kv_heads == 0, op, ": num_heads ", num_heads,
              " must be a multiple of num_kv_heads ", num_kv_heads);

  Prepared p;
  p.num_seqs = seq_lens.size(0);
  const bool has_sinks = sinks.has_value() && sinks->defined();
  p.key = KernelKey{kind,
                    static_cast<int>(num_heads / num_kv_heads),
                    static_cast<int>(head_size),
                    static_cast<int>(block_size),
                    causal,
                    window > 0,
                    has_sinks,
                    to_dtype(query.scalar_type())};

  const at::Tensor tables = block_tables.contiguous();
  const at::Tensor lens = seq_lens.contiguous();
  p.keep = {tables, lens};
  // Validate every block id a kernel will read, so a bad table is an error and not a wild read.
  const std::int32_t* tp = tables.data_ptr<std::int32_t>();
  const std::int32_t* lp = lens.data_ptr<std::int32_t>();
  const std::int64_t max_blocks = tables.size(1);
  for (std::int64_t s = 0; s < p.num_seqs; ++s) {
    TORCH_CHECK(lp[s] >= 0, op, ": seq_lens[", s, "] = ", lp[s], " is negative");
    const std::int64_t needed = (lp[s] + block_size - 1) / block_size;
    TORCH_CHECK(needed <= max_blocks, op, ": seq_lens[", s, "] = ", lp[s], " needs ", needed,
                " blocks of ", block_size, " but block_tables has ", max_blocks, " columns");
    for (std::int64_t b = 0; b < needed; ++b) {
      const std::int32_t id = tp[s * max_blocks + b];
      TORCH_CHECK(id >= 0 && id < num_blocks, op, ": block_tables[", s, ", ", b, "] = ", id,
                  " is outside the cache (num_blocks = ", num_blocks, ")");
    }
  }

  const float* sink_ptr = nullptr;
  if (has_sinks) {
    TORCH_CHECK(sinks->dim() == 1 && sinks->size(0) == num_heads, op,
                ": sinks must be 1-D [num_heads] = [", num_heads, "], got ", sinks->sizes());
    TORCH_CHECK(sinks->device().is_cpu(), op, ": sinks must be on the CPU");
    TORCH_CHECK(at::isFloatingType(sinks->scalar_type()), op,
                ": sinks must be a floating tensor, got ", sinks->scalar_type());
    const at::Tensor s = sinks->to(at::kFloat).contiguous();  // tiny; the kernel reads float
    p.keep.push_back(s);
    sink_ptr = s.data_ptr<float>();
  }

  p.kv.key_cache = key_cache.data_ptr();
  p.kv.value_cache = value_cache.data_ptr();
  p.kv.k_block_stride = key_cache.stride(0);
  p.kv.k_token_stride = key_cache.stride(1);
  p.kv.k_head_stride = key_cache.stride(2);
  p.kv.v_block_stride = value_cache.stride(0);
  p.kv.v_token_stride = value_cache.stride(1);
  p.kv.v_head_stride = value_cache.stride(2);
  p.kv.block_tables = tp;
  p.kv.block_table_stride = max_blocks;
  p.kv.seq_lens = lp;
  p.kv.num_kv_heads = num_kv_heads;
  p.kv.scale = static_cast<float>(scale);
  p.kv.window = static_cast<std::int32_t>(window > 0 ? window : 0);
  p.kv.sinks = sink_ptr;
  return p;
}

at::Tensor paged_decode_cpu(const at::Tensor& query, const at::Tensor& key_cache,
                        const at::Tensor& value_cache, const at::Tensor& block_tables,
                        const at::Tensor& seq_lens, double scale, bool causal, std::int64_t window,
                        const std::optional<at::Tensor>& sinks) {
  const char* op = "pagedattn.paged_decode";
  Prepared p = prepare(op, Kind::Decode, query, key_cache, value_cache, block_tables, seq_lens,
                       scale, causal, window, sinks);
  TORCH_CHECK(query.size(0) == p.num_seqs, op, ": query has ", query.size(0),
              " rows but there are ", p.num_seqs, " sequences (decode takes one token each)");
  const KernelEntry& entry = lookup(p.key);
  const at::Tensor q = query.stride(2) == 1 ? query : query.contiguous();
  at::Tensor out = at::empty_like(q, at::MemoryFormat::Contiguous);

  DecodeParams params{};
  params.kv = p.kv;
  params.query = q.data_ptr();
  params.out = out.data_ptr();
  params.q_seq_stride = q.stride(0);
  params.q_head_stride = q.stride(1);
  params.o_seq_stride = out.stride(0);
  params.o_head_stride = out.stride(1);
  // One work item = one (sequence, kv head) pair; the kernel walks that head's whole context.
  at::parallel_for(0, p.num_seqs * p.kv.num_kv_heads, 1, [&](std::int64_t b, std::int64_t e) {
    entry.decode(params, b, e);
  });
  return out;
}

at::Tensor chunked_prefill_cpu(const at::Tensor& query, const at::Tensor& key_cache,
                           const at::Tensor& value_cache, const at::Tensor& block_tables,
                           const at::Tensor& query_start_loc, const at::Tensor& seq_lens,
                           double scale, bool causal, std::int64_t window,
                           const std::optional<at::Tensor>& sinks) {
  const char* op = "pagedattn.chunked_prefill";
  Prepared p = prepare(op, Kind::Prefill, query, key_cache, value_cache, block_tables, seq_lens,
                       scale, causal, window, sinks);
  TORCH_CHECK(query_start_loc.dim() == 1 && query_start_loc.scalar_type() == at::kInt &&
                  query_start_loc.device().is_cpu(),
              op, ": query_start_loc must be a 1-D int32 CPU tensor [num_seqs + 1], got ",
              query_start_loc.scalar_type(), " ", query_start_loc.sizes());
  TORCH_CHECK(query_start_loc.size(0) == p.num_seqs + 1, op, ": query_start_loc must have ",
              p.num_seqs + 1, " entries (num_seqs + 1), got ", query_start_loc.size(0));
  const at::Tensor qsl = query_start_loc.contiguous();
  const std::int32_t* qs = qsl.data_ptr<std::int32_t>();
  TORCH_CHECK(qs[0] == 0, op, ": query_start_loc[0] must be 0, got ", qs[0]);
  TORCH_CHECK(qs[p.num_seqs] == query.size(0), op, ": query_start_loc[-1] = ", qs[p.num_seqs],
              " must equal the number of query tokens ", query.size(0));
  for (std::int64_t s = 0; s < p.num_seqs; ++s) {
    const std::int64_t q_len = qs[s + 1] - qs[s];
    TORCH_CHECK(q_len >= 0, op, ": query_start_loc must be non-decreasing (at index ", s, ")");
    TORCH_CHECK(q_len <= p.kv.seq_lens[s], op, ": sequence ", s, " has ", q_len,
                " query tokens but seq_lens = ", p.kv.seq_lens[s],
                " (seq_lens counts the whole context including the new tokens)");
  }
  const KernelEntry& entry = lookup(p.key);
  const at::Tensor q = query.stride(2) == 1 ? query : query.contiguous();
  at::Tensor out = at::empty_like(q, at::MemoryFormat::Contiguous);

  PrefillParams params{};
  params.kv = p.kv;
  params.query = q.data_ptr();
  params.out = out.data_ptr();
  params.query_start_loc = qs;
  params.q_token_stride = q.stride(0);
  params.q_head_stride = q.stride(1);
  params.o_token_stride = out.stride(0);
  params.o_head_stride = out.stride(1);
  at::parallel_for(0, p.num_seqs * p.kv.num_kv_heads, 1, [&](std::int64_t b, std::int64_t e) {
    entry.prefill(params, b, e);
  });
  return out;
}

// Shape-only kernels so the ops work under FakeTensor / torch.compile tracing.
at::Tensor paged_decode_meta(const at::Tensor& query, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, double, bool, std::int64_t,
                             const std::optional<at::Tensor>&) {
  return at::empty_like(query, at::MemoryFormat::Contiguous);
}

at::Tensor chunked_prefill_meta(const at::Tensor& query, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                bool, std::int64_t, const std::optional<at::Tensor>&) {
  return at::empty_like(query, at::MemoryFormat::Contiguous);
}

std::vector<std::string> built_kernels() {
  std::int64_t n = 0;
  const KernelEntry* table = kernel_table(&n);
  std::vector<std::string> out;
  out.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) out.push_back(key_spec(table[i].key));
  return out;
}

std::string built_config_name() { return config_name(); }

}  // namespace
}  // namespace pagedattn

TORCH_LIBRARY(pagedattn, m) {
  m.def(
      "paged_decode(Tensor query, Tensor key_cache, Tensor value_cache, Tensor block_tables, "
      "Tensor seq_lens, float scale, bool causal=True, int window=0, Tensor? sinks=None) -> Tensor");
  m.def(
      "chunked_prefill(Tensor query, Tensor key_cache, Tensor value_cache, Tensor block_tables, "
      "Tensor query_start_loc, Tensor seq_lens, float scale, bool causal=True, int window=0, "
      "Tensor? sinks=None) -> Tensor");
  // No tensor arguments: these are catch-all kernels registered with the schema.
  m.def("built_kernels() -> str[]", &pagedattn::built_kernels);
  m.def("config_name() -> str", &pagedattn::built_config_name);
}

TORCH_LIBRARY_IMPL(pagedattn, CPU, m) {
  m.impl("paged_decode", &pagedattn::paged_decode_cpu);
  m.impl("chunked_prefill", &pagedattn::chunked_prefill_cpu);
}

TORCH_LIBRARY_IMPL(pagedattn, Meta, m) {
  m.impl("paged_decode", &pagedattn::paged_decode_meta);
  m.impl("chunked_prefill", &pagedattn::chunked_prefill_meta);
}
