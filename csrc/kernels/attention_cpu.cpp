// CPU attention: FlashAttention's tiling on the CPU. Query tiles of 48 rows meet key tiles of 64
// in cache-resident float32 buffers; every product (S = Q K^T, O += P V, and the backward's dP,
// dV, dK, dQ) is a register-blocked small GEMM (cpu_gemm.h), and the softmax is online (running
// row max and sum). The backward recomputes the probabilities from the saved log-sum-exp.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_gemm.h"
#include "cpu_isa.h"
#include "cpu_rows.h"
#include "dllm/attention.h"

namespace dllm {
namespace {

using cpu::gemm;
using cpu::kGemmCols;
using cpu::kGemmRowMultiple;
using cpu::Loader;
using cpu::padded_stride;
using cpu::round_up;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kQueryTile = 48, kKeyTile = 64;
// Pairs with at most this many queries take them all in one pass over the keys (forward_pairs).
constexpr int64_t kOnePassQueries = 4 * kQueryTile;

// `rows` rows of `dim` values, `stride` elements apart from element `first`, times `scale` into
// out[row][0, ld), the columns past dim zeroed (so the GEMMs may run over them).
template <DType D>
void load_rows(const void* base, int64_t first, int64_t stride, int64_t rows, int64_t dim, float scale, float* out,
               int64_t ld) {
  const auto* src = static_cast<const typename Loader<D>::T*>(base) + first;
  for (int64_t r = 0; r < rows; ++r) {
    float* o = out + r * ld;
    for (int64_t d = 0; d < dim; ++d) o[d] = Loader<D>::load(src[r * stride + d]) * scale;
    std::fill(o + dim, o + ld, 0.0f);
  }
}

// 8 consecutive values as float32.
template <DType D>
cpu::Float8 load8_as_float(const typename Loader<D>::T* src) {
  if constexpr (D == DType::kFloat32) {
    return cpu::load8(src);
  } else {
    cpu::Float8 v;
    for (int k = 0; k < 8; ++k) v[k] = Loader<D>::load(src[k]);
    return v;
  }
}

// The same rows transposed, one key tile at a time: tile t holds rows [t * kKeyTile, (t + 1) *
// kKeyTile) as out[t * dim * kKeyTile + d * kKeyTile + r % kKeyTile], the columns past `rows` zeroed.
// A GEMM then walks one contiguous block per tile; transposing the whole sequence into one
// [dim][rows] matrix put every row of a tile on its own page (a TLB miss per row at 2048 keys).
// 8 x 8 blocks pass through registers: element by element, the stores (one per value, 256 bytes
// apart) took 45% of a short query block's forward.
template <DType D>
void load_key_tiles(const void* base, int64_t first, int64_t stride, int64_t rows, int64_t dim, float* out) {
  const int64_t dim8 = dim / 8 * 8;
  for (int64_t t0 = 0; t0 < rows; t0 += kKeyTile, out += dim * kKeyTile) {
    const auto* src = static_cast<const typename Loader<D>::T*>(base) + first + t0 * stride;
    const int64_t n = std::min(kKeyTile, rows - t0), n8 = n / 8 * 8;
    for (int64_t r0 = 0; r0 < n8; r0 += 8)
      for (int64_t d0 = 0; d0 < dim8; d0 += 8) {
        cpu::Float8 block[8];
        for (int k = 0; k < 8; ++k) block[k] = load8_as_float<D>(src + (r0 + k) * stride + d0);
        cpu::transpose8(block);
        for (int k = 0; k < 8; ++k) cpu::store8(out + (d0 + k) * kKeyTile + r0, block[k]);
      }
    for (int64_t d = 0; d < dim; ++d) {  // what the blocks left: the last rows, the last columns
      float* o = out + d * kKeyTile;
      for (int64_t r = d < dim8 ? n8 : 0; r < n; ++r) o[r] = Loader<D>::load(src[r * stride + d]);
      std::fill(o + n, o + kKeyTile, 0.0f);
    }
  }
}

// Asks for rows [0, rows) of `dim` values, `stride` elements apart from element `first`, to be
// brought into L2 (a key tile's, while the one before it is computed).
template <DType D>
void prefetch_rows(const void* base, int64_t first, int64_t stride, int64_t rows, int64_t dim) {
  using T = typename Loader<D>::T;
  const auto* src = static_cast<const T*>(base) + first;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < dim; d += 64 / int64_t(sizeof(T))) __builtin_prefetch(src + r * stride + d, 0, 2);
}

inline int64_t key_tiles_size(int64_t rows, int64_t dim) { return round_up(rows, kKeyTile) * dim; }

template <DType D>
void store_rows(void* base, int64_t first, int64_t stride, int64_t rows, int64_t dim, const float* in, int64_t ld) {
  auto* dst = static_cast<typename Loader<D>::T*>(base) + first;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < dim; ++d) dst[r * stride + d] = Loader<D>::store(in[r * ld + d]);
}

// A pair with a single query (a decoding step) reads K and V rows in place. In the tiles, whose 2-row
// GEMM blocks would hold it and a padding row, it took 1.4-1.6x this path's time (B 2, 4 heads of 64,
// 1024 keys; 0.8x in bfloat16 at B 16, 12 heads). From 2 queries on the tiles are faster, as this
// path reads every key and value row once per query: it took 1.0-2.4x the tiles' time at 2-4 queries
// (B 16, 12 heads of 64, 64-1024 keys).
constexpr int64_t kFewQueries = 1;

// Row `first` of a float32, bfloat16 or float16 tensor as float32: in place, or converted into `buffer`.
template <DType D>
const float* float_row(const void* base, int64_t first, int64_t dim, float* buffer) {
  const auto* src = static_cast<const typename Loader<D>::T*>(base) + first;
  if constexpr (D == DType::kFloat32) {
    return src;
  } else {
    for (int64_t d = 0; d < dim; ++d) buffer[d] = Loader<D>::load(src[d]);
    return buffer;
  }
}

// Keys taken together by the few-queries path: four independent dot products share each load
// of q, and four value rows each load of the accumulator.
constexpr int64_t kKeyGroup = 4;

// out[g] = q . k[g] for the group's n <= kKeyGroup rows.
inline void dots(const float* q, const float* const (&k)[kKeyGroup], int64_t n, int64_t dim, float* out) {
  cpu::Float8 acc[kKeyGroup] = {};
  int64_t d = 0;
  for (; d + 8 <= dim; d += 8) {
    const cpu::Float8 qv = cpu::load8(q + d);
    for (int64_t g = 0; g < kKeyGroup; ++g) acc[g] += qv * cpu::load8(k[g] + d);
  }
  for (int64_t g = 0; g < n; ++g) {
    float sum = cpu::hsum8(acc[g]);
    for (int64_t e = d; e < dim; ++e) sum += q[e] * k[g][e];
    out[g] = sum;
  }
}

// The queries of pair (b, h), one at a time: all of its scores, their softmax against the maximum
// (two passes over the scores, no rescaling), then the weighted sum of the value rows.
// `rows`: kKeyGroup * dim floats of scratch for converted rows.
template <DType D>
void forward_few_queries(const AttentionParams& p, int64_t b, int64_t h, std::vector<float>& scores, float* q,
                         float* acc, float* rows) {
  const int64_t dim = p.head_dim, hk = h / (p.heads / p.kv_heads);
  const int64_t q0 = p.q_begin(b), qn = p.q_size(b), k0 = p.k_begin(b), kn = p.k_size(b);
  const int64_t k_first = k0 * p.k_token_stride + hk * p.k_head_stride;
  const int64_t v_first = k0 * p.v_token_stride + hk * p.v_head_stride;
  scores.resize(kn);
  const float* group[kKeyGroup];
  for (int64_t i = 0; i < qn; ++i) {
    load_rows<D>(p.q, (q0 + i) * p.q_token_stride + h * p.q_head_stride, 0, 1, dim, p.scale, q, dim);
    for (int64_t j = 0; j < kn; j += kKeyGroup) {
      const int64_t n = std::min(kKeyGroup, kn - j);
      for (int64_t g = 0; g < kKeyGroup; ++g)  // past the keys: the group's first row again (unused)
        group[g] = float_row<D>(p.k, k_first + (j + (g < n ? g : 0)) * p.k_token_stride, dim, rows + g * dim);
      dots(q, group, n, dim, scores.data() + j);
    }
    const float m = cpu::max_of(scores.data(), kn);
    for (int64_t j = 0; j < kn; ++j) scores[j] = exp_poly(scores[j] - m);
    const float l = cpu::sum_of(scores.data(), kn);
    std::fill(acc, acc + dim, 0.0f);
    for (int64_t j = 0; j < kn; j += kKeyGroup) {
      const int64_t n = std::min(kKeyGroup, kn - j);
      float w[kKeyGroup] = {};
      for (int64_t g = 0; g < kKeyGroup; ++g) {
        group[g] = float_row<D>(p.v, v_first + (j + (g < n ? g : 0)) * p.v_token_stride, dim, rows + g * dim);
        if (g < n) w[g] = scores[j + g];
      }
      for (int64_t d = 0; d < dim; ++d)
        acc[d] += (w[0] * group[0][d] + w[1] * group[1][d]) + (w[2] * group[2][d] + w[3] * group[3][d]);
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int64_t d = 0; d < dim; ++d) acc[d] *= inv;
    p.lse[h * p.q_tokens + q0 + i] = l > 0.0f ? m + std::log(l) : -kInf;
    store_rows<D>(p.out, (q0 + i) * p.o_token_stride + h * p.o_head_stride, 0, 1, dim, acc, dim);
  }
}

// One (sequence, head) pair at a time. Buffers are [rows][dcols], dcols = dim rounded up to the
// GEMM's 16 columns (padding rows and columns hold zeros), with rows ld apart; K^T (and, in the
// backward, V^T) are stored as key tiles (load_key_tiles).
// Up to kOnePassQueries queries take one pass over the keys, all their query tiles meeting each key
// tile, which is converted just before (into L1-sized buffers; float32 value rows that need no
// padding are read in place) while the next one is fetched: converting all of the keys first took
// 65% of the time of 8 queries over 4096 keys, whose buffers then fell out of L2. More queries take
// one pass per query tile over K^T and V converted once for all of them.
template <DType D>
void forward_pairs(const AttentionParams& p, int64_t begin, int64_t end) {
  const int64_t dim = p.head_dim, dcols = round_up(dim, kGemmCols), ld = padded_stride(dcols);
  const int64_t group = p.heads / p.kv_heads;
  std::vector<float> q(kQueryTile * ld), acc(kQueryTile * ld), keys_t, values;
  std::vector<float> s(kQueryTile * kKeyTile), m(kOnePassQueries), l(kOnePassQueries), scores, rows(kKeyGroup * dim);
  for (int64_t pair = begin; pair < end; ++pair) {
    const int64_t b = pair / p.heads, h = pair % p.heads, hk = h / group;
    const int64_t q0 = p.q_begin(b), qn = p.q_size(b), k0 = p.k_begin(b), kn = p.k_size(b);
    if (qn <= kFewQueries) {
      forward_few_queries<D>(p, b, h, scores, q.data(), acc.data(), rows.data());
      continue;
    }
    const int64_t k_first = k0 * p.k_token_stride + hk * p.k_head_stride;
    const int64_t v_first = k0 * p.v_token_stride + hk * p.v_head_stride;
    const bool one_pass = qn <= kOnePassQueries;
    const bool values_in_place = one_pass && D == DType::kFloat32 && dim == dcols;
    const int64_t pass = one_pass ? qn : kQueryTile;  // queries per pass over the keys
    q.resize(round_up(pass, kGemmRowMultiple) * ld);
    acc.resize(q.size());
    keys_t.resize(key_tiles_size(one_pass ? kKeyTile : kn, dim));
    values.resize((one_pass ? kKeyTile : kn) * ld);
    if (!one_pass) {
      load_key_tiles<D>(p.k, k_first, p.k_token_stride, kn, dim, keys_t.data());
      load_rows<D>(p.v, v_first, p.v_token_stride, kn, dim, 1.0f, values.data(), ld);
    }
    for (int64_t c0 = 0; c0 < qn; c0 += pass) {
      const int64_t cn = std::min(pass, qn - c0), crows = round_up(cn, kGemmRowMultiple);
      load_rows<D>(p.q, (q0 + c0) * p.q_token_stride + h * p.q_head_stride, p.q_token_stride, cn, dim, p.scale,
                   q.data(), ld);
      std::fill(q.begin() + cn * ld, q.begin() + crows * ld, 0.0f);
      std::fill(acc.begin(), acc.begin() + crows * ld, 0.0f);
      std::fill(m.begin(), m.end(), -kInf);
      std::fill(l.begin(), l.end(), 0.0f);
      for (int64_t j0 = 0; j0 < kn; j0 += kKeyTile) {
        const int64_t nj = std::min(kKeyTile, kn - j0), cols = round_up(nj, kGemmCols);
        const float* keys = keys_t.data() + (one_pass ? 0 : j0 * dim);
        const float* vals = values.data() + (one_pass ? 0 : j0 * ld);
        int64_t v_ld = ld;
        if (one_pass) {
          if (const int64_t next = std::min(kKeyTile, kn - j0 - kKeyTile); next > 0) {
            prefetch_rows<D>(p.k, k_first + (j0 + kKeyTile) * p.k_token_stride, p.k_token_stride, next, dim);
            prefetch_rows<D>(p.v, v_first + (j0 + kKeyTile) * p.v_token_stride, p.v_token_stride, next, dim);
          }
          load_key_tiles<D>(p.k, k_first + j0 * p.k_token_stride, p.k_token_stride, nj, dim, keys_t.data());
          if (values_in_place) {
            vals = static_cast<const float*>(p.v) + v_first + j0 * p.v_token_stride;
            v_ld = p.v_token_stride;
          } else {
            load_rows<D>(p.v, v_first + j0 * p.v_token_stride, p.v_token_stride, nj, dim, 1.0f, values.data(), ld);
          }
        }
        for (int64_t i0 = 0; i0 < cn; i0 += kQueryTile) {
          const int64_t mi = std::min(kQueryTile, crows - i0);
          float *const qi = q.data() + i0 * ld, *const ai = acc.data() + i0 * ld, *const mr = m.data() + i0,
                       *const lr = l.data() + i0;
          gemm<false>(mi, cols, dim, qi, ld, keys, kKeyTile, s.data(), kKeyTile, false);
          for (int64_t i = 0; i < mi; ++i) {
            float* si = s.data() + i * kKeyTile;
            // FlashAttention's recurrence: rescale what was accumulated under the old maximum, only
            // when the maximum grew (after the first few tiles it rarely does).
            const float m_tile = cpu::max_of(si, nj);
            if (m_tile > mr[i]) {
              if (mr[i] != -kInf) {
                const float correction = exp_poly(mr[i] - m_tile);
                for (int64_t d = 0; d < dcols; ++d) ai[i * ld + d] *= correction;
                lr[i] *= correction;
              }
              mr[i] = m_tile;
            }
            for (int64_t j = 0; j < nj; ++j) si[j] = exp_poly(si[j] - mr[i]);
            lr[i] += cpu::sum_of(si, nj);
          }
          gemm<false>(mi, dcols, nj, s.data(), kKeyTile, vals, v_ld, ai, ld, true);
        }
      }
      for (int64_t i = 0; i < cn; ++i) {
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        for (int64_t d = 0; d < dim; ++d) acc[i * ld + d] *= inv;
        p.lse[h * p.q_tokens + q0 + c0 + i] = l[i] > 0.0f ? m[i] + std::log(l[i]) : -kInf;
      }
      store_rows<D>(p.out, (q0 + c0) * p.o_token_stride + h * p.o_head_stride, p.o_token_stride, cn, dim,
                    acc.data(), ld);
    }
  }
}

// One (sequence, kv head) pair at a time, so that the heads sharing it add into one dK and dV.
template <DType D>
void backward_pairs(const AttentionGradParams& g, int64_t begin, int64_t end) {
  const AttentionParams& p = g.fwd;
  const int64_t dim = p.head_dim, dcols = round_up(dim, kGemmCols), ld = padded_stride(dcols);
  const int64_t group = p.heads / p.kv_heads;
  std::vector<float> keys, keys_t, values_t, dk, dv, q, dout, dq, out(ld), lse, delta;
  std::vector<float> s(kQueryTile * kKeyTile), dp(kQueryTile * kKeyTile);
  for (int64_t pair = begin; pair < end; ++pair) {
    const int64_t b = pair / p.kv_heads, hk = pair % p.kv_heads;
    const int64_t q0 = p.q_begin(b), qn = p.q_size(b), k0 = p.k_begin(b), kn = p.k_size(b);
    const int64_t kcols = round_up(kn, kGemmCols), qrows = round_up(qn, kGemmRowMultiple);
    const int64_t k_first = k0 * p.k_token_stride + hk * p.k_head_stride;
    keys.assign(kcols * ld, 0.0f);
    keys_t.resize(key_tiles_size(kn, dim));
    values_t.resize(key_tiles_size(kn, dim));
    load_rows<D>(p.k, k_first, p.k_token_stride, kn, dim, 1.0f, keys.data(), ld);
    load_key_tiles<D>(p.k, k_first, p.k_token_stride, kn, dim, keys_t.data());
    load_key_tiles<D>(p.v, k0 * p.v_token_stride + hk * p.v_head_stride, p.v_token_stride, kn, dim, values_t.data());
    dk.assign(kcols * ld, 0.0f);
    dv.assign(kcols * ld, 0.0f);
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      q.assign(qrows * ld, 0.0f);
      dout.assign(qrows * ld, 0.0f);
      dq.assign(qrows * ld, 0.0f);
      lse.assign(qrows, -kInf);
      delta.assign(qrows, 0.0f);
      // q scaled on loading, as in the forward, so that P is recomputed from the very scores the
      // saved log-sum-exp normalises: scaling the products instead rounds differently, and with a
      // sharp softmax and a scale that is not a power of two dV drifted to 15x PyTorch's error.
      load_rows<D>(p.q, q0 * p.q_token_stride + h * p.q_head_stride, p.q_token_stride, qn, dim, p.scale, q.data(),
                   ld);
      load_rows<D>(g.dout, q0 * g.do_token_stride + h * g.do_head_stride, g.do_token_stride, qn, dim, 1.0f,
                   dout.data(), ld);
      for (int64_t i = 0; i < qn; ++i) {
        lse[i] = p.lse[h * p.q_tokens + q0 + i];
        load_rows<D>(p.out, (q0 + i) * p.o_token_stride + h * p.o_head_stride, 0, 1, dim, 1.0f, out.data(), ld);
        float dot = 0.0f;  // delta = rowsum(dO * O)
        for (int64_t d = 0; d < dim; ++d) dot += dout[i * ld + d] * out[d];
        delta[i] = dot;
      }
      // Key tiles outside, as in FlashAttention-2's backward: a key tile's K, V, dK and dV stay in
      // cache while the query tiles stream past.
      for (int64_t j0 = 0; j0 < kn; j0 += kKeyTile) {
        const int64_t nj = std::min(kKeyTile, kn - j0), cols = round_up(nj, kGemmCols);
        for (int64_t i0 = 0; i0 < qn; i0 += kQueryTile) {
          const int64_t mi = std::min(kQueryTile, qrows - i0);
          const float* qi = q.data() + i0 * ld;
          const float* doi = dout.data() + i0 * ld;
          gemm<false>(mi, cols, dim, qi, ld, keys_t.data() + j0 * dim, kKeyTile, s.data(), kKeyTile, false);
          gemm<false>(mi, cols, dim, doi, ld, values_t.data() + j0 * dim, kKeyTile, dp.data(), kKeyTile, false);
          // s becomes P, dp becomes dS / scale = P (dP - delta); zero past the keys and on padding
          // or empty rows, so the transposed products below may run over them. dK = dS^T Q takes
          // the scale from the scaled q, dQ = dS K gets it once at the end.
          for (int64_t i = 0; i < mi; ++i) {
            const float row_lse = lse[i0 + i], row_delta = delta[i0 + i];
            float* si = s.data() + i * kKeyTile;
            float* dpi = dp.data() + i * kKeyTile;
            for (int64_t j = 0; j < cols; ++j) {
              const float pij = j < nj && row_lse != -kInf ? exp_poly(si[j] - row_lse) : 0.0f;
              si[j] = pij;
              dpi[j] = pij * (dpi[j] - row_delta);
            }
          }
          gemm<true>(cols, dcols, mi, s.data(), kKeyTile, doi, ld, dv.data() + j0 * ld, ld, true);   // dV += P^T dO
          gemm<true>(cols, dcols, mi, dp.data(), kKeyTile, qi, ld, dk.data() + j0 * ld, ld, true);  // dK += dS^T Q
          gemm<false>(mi, dcols, nj, dp.data(), kKeyTile, keys.data() + j0 * ld, ld, dq.data() + i0 * ld, ld, true);
        }
      }
      for (float& value : dq) value *= p.scale;
      store_rows<D>(g.dq, (q0 * p.heads + h) * dim, p.heads * dim, qn, dim, dq.data(), ld);
    }
    store_rows<D>(g.dk, (k0 * p.kv_heads + hk) * dim, p.kv_heads * dim, kn, dim, dk.data(), ld);
    store_rows<D>(g.dv, (k0 * p.kv_heads + hk) * dim, p.kv_heads * dim, kn, dim, dv.data(), ld);
  }
}

}  // namespace

void DLLM_ISA_NAME(attention_forward_cpu)(const AttentionParams& p, int64_t begin, int64_t end) {
  return with_dtype(p.dtype, [&]<DType D>() { return forward_pairs<D>(p, begin, end); });
}

void DLLM_ISA_NAME(attention_backward_cpu)(const AttentionGradParams& g, int64_t begin, int64_t end) {
  return with_dtype(g.fwd.dtype, [&]<DType D>() { return backward_pairs<D>(g, begin, end); });
}

}  // namespace dllm
