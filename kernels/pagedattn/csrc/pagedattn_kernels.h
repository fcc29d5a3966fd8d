// pagedattn: CPU paged attention kernels as templates over
// (q-group, head size, page size, causal, local, sink, dtype).
//
// No torch headers on purpose (see pagedattn_api.h): the generated instance TU includes this file
// once in its preamble and then only holds explicit instantiations, so a splitter can cut it into
// shards that each compile independently. All accumulation is in float.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#include "pagedattn_api.h"

namespace pagedattn {

// ---- 16-bit conversions (own, bit-exact round-to-nearest-even) -------------------------------

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float to_float(float v) { return v; }

inline float to_float(bf16_t v) { return bits_float(static_cast<std::uint32_t>(v.bits) << 16); }

inline float to_float(half_t v) {
  const std::uint32_t sign = static_cast<std::uint32_t>(v.bits & 0x8000u) << 16;
  const std::uint32_t exp = (v.bits >> 10) & 0x1fu;
  const std::uint32_t man = v.bits & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: man * 2^-24 is exact in float.
    const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

template <typename T>
T from_float(float f);

template <>
inline float from_float<float>(float f) {
  return f;
}

template <>
inline bf16_t from_float<bf16_t>(float f) {
  const std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return bf16_t{static_cast<std::uint16_t>((u >> 16) | 0x40u)};  // keep NaN a (quiet) NaN
  }
  const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // ties to even
  return bf16_t{static_cast<std::uint16_t>((u + rounding) >> 16)};
}

template <>
inline half_t from_float<half_t>(float f) {
  const std::uint32_t u = float_bits(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t x = u & 0x7fffffffu;
  if (x >= 0x7f800000u) {  // inf / nan
    return half_t{static_cast<std::uint16_t>(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u))};
  }
  if (x >= 0x477ff000u) {  // at or above the midpoint between 65504 and 65536: overflow to inf
    return half_t{static_cast<std::uint16_t>(sign | 0x7c00u)};
  }
  if (x < 0x38800000u) {  // below the smallest normal half: round to a subnormal (unit 2^-24)
    const std::uint32_t e = x >> 23;
    if (e < 102) return half_t{static_cast<std::uint16_t>(sign)};  // < 2^-25: rounds to zero
    const std::uint32_t man = (x & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - e;  // 14..24
    std::uint32_t r = man >> shift;
    const std::uint32_t rem = man & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    return half_t{static_cast<std::uint16_t>(sign | r)};
  }
  std::uint32_t h = ((x >> 23) - 112u) << 10 | ((x >> 13) & 0x3ffu);
  const std::uint32_t rem = x & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // carry into the exponent is correct
  return half_t{static_cast<std::uint16_t>(sign | h)};
}

namespace detail {

// Lane-split helpers. A float reduction in one accumulator cannot be vectorised without
// -ffast-math (it would reorder additions); kLanes independent partial sums can, and the fold
// expressions below spell the lanes out so every instantiation gets straight-line SIMD-able code.
constexpr int kLanes = 8;

struct Lanes {
  float v[kLanes];
};

template <std::size_t... I>
inline void lanes_zero(Lanes& a, std::index_sequence<I...>) {
  ((a.v[I] = 0.0f), ...);
}

template <std::size_t... I>
inline void lanes_fma(Lanes& a, const float* x, const float* y, std::index_sequence<I...>) {
  ((a.v[I] += x[I] * y[I]), ...);
}

template <std::size_t... I>
inline void lanes_axpy(float* y, float s, const float* x, std::index_sequence<I...>) {
  ((y[I] += s * x[I]), ...);
}

template <std::size_t... I>
inline void lanes_scale(float* y, float s, std::index_sequence<I...>) {
  ((y[I] *= s), ...);
}

template <typename T, std::size_t... I>
inline void lanes_load(float* dst, const T* src, float mul, std::index_sequence<I...>) {
  ((dst[I] = to_float(src[I]) * mul), ...);
}

template <typename T, std::size_t... I>
inline void lanes_store(T* dst, const float* src, float mul, std::index_sequence<I...>) {
  ((dst[I] = from_float<T>(src[I] * mul)), ...);
}

inline float lanes_sum(const Lanes& a) {
  // Pairwise, so the summation order is fixed and independent of the instantiation.
  float w[kLanes];
  for (int i = 0; i < kLanes; ++i) w[i] = a.v[i];
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int i = 0; i < width; ++i) w[i] += w[i + width];
  }
  return w[0];
}

using LaneSeq = std::make_index_sequence<kLanes>;

template <int HeadSize>
inline float dot(const float* x, const float* y) {
  static_assert(HeadSize % kLanes == 0, "head size must be a multiple of the lane count");
  Lanes a;
  lanes_zero(a, LaneSeq{});
  for (int c = 0; c < HeadSize; c += kLanes) lanes_fma(a, x + c, y + c, LaneSeq{});
  return lanes_sum(a);
}

template <int HeadSize>
inline void axpy(float* y, float s, const float* x) {
  for (int c = 0; c < HeadSize; c += kLanes) lanes_axpy(y + c, s, x + c, LaneSeq{});
}

// Key tiles: kKeyTile rows share every load of a query chunk (scores) or of an accumulator chunk
// (values), which cuts memory traffic on the running state by that factor.
constexpr int kKeyTile = 4;

template <std::size_t... I>
inline void lanes_axpy_tile(float* y, const float* p, const float* r0, const float* r1,
                            const float* r2, const float* r3, std::index_sequence<I...>) {
  ((y[I] += p[0] * r0[I] + p[1] * r1[I] + p[2] * r2[I] + p[3] * r3[I]), ...);
}

template <int HeadSize>
inline void dot_tile(const float* q, const float (*rows)[HeadSize], float* out) {
  Lanes a[kKeyTile];
  for (int k = 0; k < kKeyTile; ++k) lanes_zero(a[k], LaneSeq{});
  for (int c = 0; c < HeadSize; c += kLanes) {
    for (int k = 0; k < kKeyTile; ++k) lanes_fma(a[k], q + c, rows[k] + c, LaneSeq{});
  }
  for (int k = 0; k < kKeyTile; ++k) out[k] = lanes_sum(a[k]);
}

template <int HeadSize>
inline void axpy_tile(float* y, const float* p, const float (*rows)[HeadSize]) {
  static_assert(kKeyTile == 4, "lanes_axpy_tile is written for four rows");
  for (int c = 0; c < HeadSize; c += kLanes) {
    lanes_axpy_tile(y + c, p, rows[0] + c, rows[1] + c, rows[2] + c, rows[3] + c, LaneSeq{});
  }
}

template <int HeadSize>
inline void scale_row(float* y, float s) {
  for (int c = 0; c < HeadSize; c += kLanes) lanes_scale(y + c, s, LaneSeq{});
}

template <int HeadSize, typename T>
inline void load_row(float* dst, const T* src, float mul = 1.0f) {
  for (int c = 0; c < HeadSize; c += kLanes) lanes_load(dst + c, src + c, mul, LaneSeq{});
}

template <int HeadSize, typename T>
inline void store_row(T* dst, const float* src, float mul) {
  for (int c = 0; c < HeadSize; c += kLanes) lanes_store(dst + c, src + c, mul, LaneSeq{});
}

// Online-softmax state for the QGroup query heads that share one kv head.
template <int QGroup, int HeadSize>
struct GroupState {
  float q[QGroup][HeadSize];    // query rows, pre-multiplied by scale
  float acc[QGroup][HeadSize];  // sum_j p_j * v_j, in units of exp(-m)
  float m[QGroup];              // running max logit
  float l[QGroup];              // running sum of exp(logit - m)

  void reset() {
    for (int g = 0; g < QGroup; ++g) {
      m[g] = -std::numeric_limits<float>::infinity();
      l[g] = 0.0f;
      for (int d = 0; d < HeadSize; ++d) acc[g][d] = 0.0f;
    }
  }
};

// Load the QGroup query heads of kv head `kvh` (heads kvh*QGroup .. +QGroup-1, vLLM's GQA order).
template <int QGroup, int HeadSize, typename T>
inline void load_queries(GroupState<QGroup, HeadSize>& st, const T* q_row, std::int64_t head_stride,
                         std::int64_t kvh, float scale) {
  for (int g = 0; g < QGroup; ++g) {
    const T* src = q_row + (kvh * QGroup + g) * head_stride;
    load_row<HeadSize>(st.q[g], src, scale);
  }
}

// Attend to context positions [lo, hi) of one sequence. The masks of every variant (causal,
// sliding window) reduce to one contiguous range per query token, so no per-key mask is needed.
// Each key/value row is converted once and reused by all QGroup heads: that reuse is why the
// q-group is a template axis.
// noinline: one body per (q-group, head, page, dtype), shared by decode, prefill and all mask/sink
// variants, instead of a copy in each of them (less code, faster builds). It is also what makes
// the generated TU's memory scale with the number of such shapes (see README.md).
template <int QGroup, int HeadSize, int BlockSize, typename T>
[[gnu::noinline]] void attend_range(GroupState<QGroup, HeadSize>& st, const PagedKV& kv,
                         const std::int32_t* table, std::int64_t kvh, std::int64_t lo,
                         std::int64_t hi) {
  const T* kc = static_cast<const T*>(kv.key_cache);
  const T* vc = static_cast<const T*>(kv.value_cache);
  float rows[kKeyTile][HeadSize];
  float s[QGroup][BlockSize];
  for (std::int64_t blk = lo / BlockSize; blk * BlockSize < hi; ++blk) {
    const std::int64_t phys = table[blk];
    const std::int64_t base = blk * BlockSize;
    const int t0 = static_cast<int>(std::max<std::int64_t>(lo - base, 0));
    const int t1 = static_cast<int>(std::min<std::int64_t>(hi - base, BlockSize));
    const T* kb = kc + phys * kv.k_block_stride + kvh * kv.k_head_stride;
    const T* vb = vc + phys * kv.v_block_stride + kvh * kv.v_head_stride;

    int t = t0;
    for (; t + kKeyTile <= t1; t += kKeyTile) {
      for (int k = 0; k < kKeyTile; ++k) load_row<HeadSize>(rows[k], kb + (t + k) * kv.k_token_stride);
      for (int g = 0; g < QGroup; ++g) dot_tile<HeadSize>(st.q[g], rows, &s[g][t]);
    }
    for (; t < t1; ++t) {  // tail of the block
      load_row<HeadSize>(rows[0], kb + t * kv.k_token_stride);
      for (int g = 0; g < QGroup; ++g) s[g][t] = dot<HeadSize>(st.q[g], rows[0]);
    }
    // Rescale once per block rather than once per key: fewer exp() calls on the running state.
    for (int g = 0; g < QGroup; ++g) {
      float bm = st.m[g];
      for (int t = t0; t < t1; ++t) bm = std::max(bm, s[g][t]);
      const float corr = st.m[g] == -std::numeric_limits<float>::infinity()
                             ? 0.0f
                             : std::exp(st.m[g] - bm);
      st.m[g] = bm;
      st.l[g] *= corr;
      scale_row<HeadSize>(st.acc[g], corr);
      for (int t = t0; t < t1; ++t) s[g][t] = std::exp(s[g][t] - bm);
    }
    for (int g = 0; g < QGroup; ++g) {
      for (int u = t0; u < t1; ++u) st.l[g] += s[g][u];
    }
    t = t0;
    for (; t + kKeyTile <= t1; t += kKeyTile) {
      for (int k = 0; k < kKeyTile; ++k) load_row<HeadSize>(rows[k], vb + (t + k) * kv.v_token_stride);
      for (int g = 0; g < QGroup; ++g) axpy_tile<HeadSize>(st.acc[g], &s[g][t], rows);
    }
    for (; t < t1; ++t) {
      load_row<HeadSize>(rows[0], vb + t * kv.v_token_stride);
      for (int g = 0; g < QGroup; ++g) axpy<HeadSize>(st.acc[g], s[g][t], rows[0]);
    }
  }
}

// Normalise and store. A sink adds exp(sink) to the softmax denominator only (gpt-oss style):
// it absorbs probability mass without contributing a value row.
template <int QGroup, int HeadSize, bool Sink, typename T>
inline void finish(GroupState<QGroup, HeadSize>& st, const PagedKV& kv, T* o_row,
                   std::int64_t head_stride, std::int64_t kvh) {
  for (int g = 0; g < QGroup; ++g) {
    const std::int64_t head = kvh * QGroup + g;
    float denom = st.l[g];
    float mul = 1.0f;
    if constexpr (Sink) {
      const float sink = kv.sinks[head];
      if (st.l[g] > 0.0f) {
        const float m = std::max(st.m[g], sink);
        mul = std::exp(st.m[g] - m);
        denom = st.l[g] * mul + std::exp(sink - m);
      }
    }
    // No visible keys: emit zeros rather than NaN (matches the reference).
    const float scale_out = denom > 0.0f ? mul / denom : 0.0f;
    store_row<HeadSize>(o_row + head * head_stride, st.acc[g], scale_out);
  }
}

// Range of context positions visible to a query at position qpos in a context of seq_len tokens.
// Local: the last `window` positions up to and including qpos (and, without Causal, also up to
// window-1 positions after it). window <= 0 at run time disables the window.
template <bool Causal, bool Local>
inline void visible_range(std::int64_t qpos, std::int64_t seq_len, std::int32_t window,
                          std::int64_t& lo, std::int64_t& hi) {
  lo = 0;
  hi = Causal ? qpos + 1 : seq_len;
  if constexpr (Local) {
    if (window > 0) {
      lo = std::max<std::int64_t>(0, qpos - window + 1);
      if constexpr (!Causal) hi = std::min<std::int64_t>(seq_len, qpos + window);
    }
  }
  hi = std::min(hi, seq_len);
}

}  // namespace detail

template <int QGroup, int HeadSize, int BlockSize, bool Causal, bool Local, bool Sink, typename T>
void paged_decode(const DecodeParams& p, std::int64_t begin, std::int64_t end) {
  static_assert(QGroup > 0 && HeadSize > 0 && BlockSize > 0, "bad kernel shape");
  const T* query = static_cast<const T*>(p.query);
  T* out = static_cast<T*>(p.out);
  detail::GroupState<QGroup, HeadSize> st;
  for (std::int64_t item = begin; item < end; ++item) {
    const std::int64_t seq = item / p.kv.num_kv_heads;
    const std::int64_t kvh = item % p.kv.num_kv_heads;
    const std::int64_t seq_len = p.kv.seq_lens[seq];
    st.reset();
    // The single decode token is the last context position, so causal masking hides nothing.
    std::int64_t lo = 0, hi = 0;
    detail::visible_range<Causal, Local>(seq_len - 1, seq_len, p.kv.window, lo, hi);
    if (hi > lo) {
      detail::load_queries<QGroup, HeadSize>(st, query + seq * p.q_seq_stride, p.q_head_stride, kvh,
                                             p.kv.scale);
      detail::attend_range<QGroup, HeadSize, BlockSize, T>(
          st, p.kv, p.kv.block_tables + seq * p.kv.block_table_stride, kvh, lo, hi);
    }
    detail::finish<QGroup, HeadSize, Sink>(st, p.kv, out + seq * p.o_seq_stride, p.o_head_stride,
                                           kvh);
  }
}

template <int QGroup, int HeadSize, int BlockSize, bool Causal, bool Local, bool Sink, typename T>
void chunked_prefill(const PrefillParams& p, std::int64_t begin, std::int64_t end) {
  static_assert(QGroup > 0 && HeadSize > 0 && BlockSize > 0, "bad kernel shape");
  const T* query = static_cast<const T*>(p.query);
  T* out = static_cast<T*>(p.out);
  detail::GroupState<QGroup, HeadSize> st;
  for (std::int64_t item = begin; item < end; ++item) {
    const std::int64_t seq = item / p.kv.num_kv_heads;
    const std::int64_t kvh = item % p.kv.num_kv_heads;
    const std::int64_t seq_len = p.kv.seq_lens[seq];
    const std::int64_t q_begin = p.query_start_loc[seq];
    const std::int64_t q_len = p.query_start_loc[seq + 1] - q_begin;
    const std::int32_t* table = p.kv.block_tables + seq * p.kv.block_table_stride;
    for (std::int64_t i = 0; i < q_len; ++i) {
      const std::int64_t tok = q_begin + i;
      const std::int64_t qpos = seq_len - q_len + i;  // chunk = the last q_len context positions
      st.reset();
      std::int64_t lo = 0, hi = 0;
      detail::visible_range<Causal, Local>(qpos, seq_len, p.kv.window, lo, hi);
      if (hi > lo) {
        detail::load_queries<QGroup, HeadSize>(st, query + tok * p.q_token_stride, p.q_head_stride,
                                               kvh, p.kv.scale);
        detail::attend_range<QGroup, HeadSize, BlockSize, T>(st, p.kv, table, kvh, lo, hi);
      }
      detail::finish<QGroup, HeadSize, Sink>(st, p.kv, out + tok * p.o_token_stride,
                                             p.o_head_stride, kvh);
    }
  }
}

}  // namespace pagedattn
