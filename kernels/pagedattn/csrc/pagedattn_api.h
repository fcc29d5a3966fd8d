// pagedattn: the kernel API shared by every translation unit.
//
// Deliberately free of torch headers: the generated instance TU (via pagedattn_kernels.h) and the
// generated dispatch TU (this file only) stay pure C++, cheap to compile and to split into shards.
#pragma once

#include <cstdint>

namespace pagedattn {

// 16-bit storage types. Only the bit pattern matters here; conversions live in pagedattn_kernels.h.
struct bf16_t {
  std::uint16_t bits;
};
struct half_t {
  std::uint16_t bits;
};

enum class Kind : std::uint8_t { Decode = 0, Prefill = 1 };
enum class DType : std::uint8_t { Float = 0, BFloat16 = 1, Half = 2 };

// Shared by both kernels. Element strides (not bytes); the last dimension is always contiguous.
struct PagedKV {
  const void* key_cache;    // [num_blocks, block_size, num_kv_heads, head_size]
  const void* value_cache;  // same shape as key_cache
  std::int64_t k_block_stride, k_token_stride, k_head_stride;
  std::int64_t v_block_stride, v_token_stride, v_head_stride;
  const std::int32_t* block_tables;  // [num_seqs, max_blocks_per_seq]
  std::int64_t block_table_stride;
  const std::int32_t* seq_lens;  // [num_seqs]: context length including the query tokens
  std::int64_t num_kv_heads;
  float scale;
  std::int32_t window;  // sliding window in tokens (only read by Local instantiations)
  const float* sinks;   // [num_heads] attention-sink logits (only read by Sink instantiations)
};

// Decode: one query token per sequence, sitting at position seq_len - 1.
struct DecodeParams {
  PagedKV kv;
  const void* query;  // [num_seqs, num_heads, head_size]
  void* out;          // same shape and dtype as query
  std::int64_t q_seq_stride, q_head_stride;
  std::int64_t o_seq_stride, o_head_stride;
};

// Chunked prefill: tokens query_start_loc[s] .. query_start_loc[s+1] belong to sequence s and are
// the last tokens of its context, so token i of a q_len chunk sits at seq_len - q_len + i.
struct PrefillParams {
  PagedKV kv;
  const void* query;  // [num_tokens, num_heads, head_size]
  void* out;
  const std::int32_t* query_start_loc;  // [num_seqs + 1]
  std::int64_t q_token_stride, q_head_stride;
  std::int64_t o_token_stride, o_head_stride;
};

// Both kernels process work items [begin, end) of the flattened (seq, kv_head) space, so the
// caller owns threading (at::parallel_for in the torch-facing TU) and this header stays plain C++.
template <int QGroup, int HeadSize, int BlockSize, bool Causal, bool Local, bool Sink, typename T>
void paged_decode(const DecodeParams& p, std::int64_t begin, std::int64_t end);

template <int QGroup, int HeadSize, int BlockSize, bool Causal, bool Local, bool Sink, typename T>
void chunked_prefill(const PrefillParams& p, std::int64_t begin, std::int64_t end);

using DecodeFn = void (*)(const DecodeParams&, std::int64_t, std::int64_t);
using PrefillFn = void (*)(const PrefillParams&, std::int64_t, std::int64_t);

// Runtime identity of one instantiation; the generated dispatch TU maps it to a function pointer.
struct KernelKey {
  Kind kind;
  int qgroup;
  int head_size;
  int block_size;
  bool causal;
  bool local;
  bool sink;
  DType dtype;
};

struct KernelEntry {
  KernelKey key;
  DecodeFn decode;    // set when key.kind == Kind::Decode
  PrefillFn prefill;  // set when key.kind == Kind::Prefill
};

// Defined in the generated pagedattn_dispatch.cpp.
const KernelEntry* find_kernel(const KernelKey& key);
const KernelEntry* kernel_table(std::int64_t* count);
const char* config_name();

}  // namespace pagedattn
