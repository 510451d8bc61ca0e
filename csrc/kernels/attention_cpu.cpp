// CPU attention: per query row, an online softmax over key tiles (FlashAttention's recurrence),
// float32 accumulation; the backward recomputes probabilities from the saved log-sum-exp.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_isa.h"
#include "cpu_rows.h"
#include "dllm/attention.h"

namespace dllm {
namespace {

using cpu::Loader;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kKeyTile = 64;

template <DType D>
void load_vec(const void* base, int64_t offset, int64_t n, float* out) {
  const auto* src = static_cast<const typename Loader<D>::T*>(base) + offset;
  for (int64_t i = 0; i < n; ++i) out[i] = Loader<D>::load(src[i]);
}

template <DType D>
void store_vec(void* base, int64_t offset, int64_t n, const float* in) {
  auto* dst = static_cast<typename Loader<D>::T*>(base) + offset;
  for (int64_t i = 0; i < n; ++i) dst[i] = Loader<D>::store(in[i]);
}

inline float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  for (; i < n; ++i) acc[0] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

inline void axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// One (sequence, head) pair: query rows in tiles of kQueryTile, so each key/value tile is
// converted to float once per query tile rather than once per query row.
constexpr int64_t kQueryTile = 32;

template <DType D>
void forward_pairs(const AttentionParams& p, int64_t begin, int64_t end) {
  const int64_t dim = p.head_dim, group = p.heads / p.kv_heads;
  std::vector<float> q(kQueryTile * dim), acc(kQueryTile * dim), keys(kKeyTile * dim), keys_t(dim * kKeyTile);
  std::vector<float> values(kKeyTile * dim);
  std::vector<float> s(kQueryTile * kKeyTile), m(kQueryTile), l(kQueryTile);
  for (int64_t pair = begin; pair < end; ++pair) {
    const int64_t b = pair / p.heads, h = pair % p.heads, hk = h / group;
    const int64_t q0 = p.q_start[b], qn = p.q_count[b], k0 = p.k_start[b], kn = p.k_count[b];
    for (int64_t i0 = 0; i0 < qn; i0 += kQueryTile) {
      const int64_t ni = std::min(kQueryTile, qn - i0);
      for (int64_t i = 0; i < ni; ++i) {
        load_vec<D>(p.q, (q0 + i0 + i) * p.q_token_stride + h * p.q_head_stride, dim, q.data() + i * dim);
        for (int64_t d = 0; d < dim; ++d) q[i * dim + d] *= p.scale;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(m.begin(), m.end(), -kInf);
      std::fill(l.begin(), l.end(), 0.0f);
      for (int64_t j0 = 0; j0 < kn; j0 += kKeyTile) {
        const int64_t nj = std::min(kKeyTile, kn - j0);
        for (int64_t j = 0; j < nj; ++j) {
          load_vec<D>(p.k, (k0 + j0 + j) * p.k_token_stride + hk * p.k_head_stride, dim, keys.data() + j * dim);
          load_vec<D>(p.v, (k0 + j0 + j) * p.v_token_stride + hk * p.v_head_stride, dim, values.data() + j * dim);
        }
        // K^T, so that the score loop runs along keys: broadcast one q entry, vector over keys.
        for (int64_t j = 0; j < kKeyTile; ++j)
          for (int64_t d = 0; d < dim; ++d) keys_t[d * kKeyTile + j] = j < nj ? keys[j * dim + d] : 0.0f;
        for (int64_t i = 0; i < ni; ++i) {
          float* si = s.data() + i * kKeyTile;
          std::fill(si, si + kKeyTile, 0.0f);
          const float* qi = q.data() + i * dim;
          for (int64_t d = 0; d < dim; ++d) {
            const float qd = qi[d];
            const float* kd = keys_t.data() + d * kKeyTile;
            for (int64_t j = 0; j < kKeyTile; ++j) si[j] += qd * kd[j];
          }
          float tile_max = -kInf;
          for (int64_t j = 0; j < nj; ++j) tile_max = std::max(tile_max, si[j]);
          // Online softmax (FlashAttention's recurrence): rescale what was accumulated so far.
          const float m_new = std::max(m[i], tile_max);
          const float correction = m[i] == -kInf ? 0.0f : std::exp(m[i] - m_new);
          float* ai = acc.data() + i * dim;
          l[i] *= correction;
          for (int64_t d = 0; d < dim; ++d) ai[d] *= correction;
          for (int64_t j = 0; j < nj; ++j) si[j] = exp_poly(si[j] - m_new);
          for (int64_t j = 0; j < nj; ++j) {
            l[i] += si[j];
            axpy(si[j], values.data() + j * dim, ai, dim);
          }
          m[i] = m_new;
        }
      }
      for (int64_t i = 0; i < ni; ++i) {
        const int64_t tok = q0 + i0 + i;
        float* ai = acc.data() + i * dim;
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        for (int64_t d = 0; d < dim; ++d) ai[d] *= inv;
        store_vec<D>(p.out, tok * p.o_token_stride + h * p.o_head_stride, dim, ai);
        p.lse[h * p.q_tokens + tok] = l[i] > 0.0f ? m[i] + std::log(l[i]) : -kInf;
      }
    }
  }
}

template <DType D>
void backward_pairs(const AttentionGradParams& g, int64_t begin, int64_t end) {
  const AttentionParams& p = g.fwd;
  const int64_t dim = p.head_dim, group = p.heads / p.kv_heads;
  std::vector<float> q(dim), dout(dim), out(dim), dq(dim), kv_row(dim), v_row(dim);
  std::vector<float> dk, dv;
  for (int64_t pair = begin; pair < end; ++pair) {
    const int64_t b = pair / p.kv_heads, hk = pair % p.kv_heads;
    const int64_t q0 = p.q_start[b], qn = p.q_count[b], k0 = p.k_start[b], kn = p.k_count[b];
    dk.assign(kn * dim, 0.0f);
    dv.assign(kn * dim, 0.0f);
    // keys and values of this (sequence, kv head), converted once
    std::vector<float> keys(kn * dim), values(kn * dim);
    for (int64_t j = 0; j < kn; ++j) {
      load_vec<D>(p.k, (k0 + j) * p.k_token_stride + hk * p.k_head_stride, dim, keys.data() + j * dim);
      load_vec<D>(p.v, (k0 + j) * p.v_token_stride + hk * p.v_head_stride, dim, values.data() + j * dim);
    }
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      for (int64_t i = 0; i < qn; ++i) {
        const int64_t tok = q0 + i;
        std::fill(dq.begin(), dq.end(), 0.0f);
        const float lse = p.lse[h * p.q_tokens + tok];
        if (lse != -kInf) {
          load_vec<D>(p.q, tok * p.q_token_stride + h * p.q_head_stride, dim, q.data());
          load_vec<D>(g.dout, tok * g.do_token_stride + h * g.do_head_stride, dim, dout.data());
          load_vec<D>(p.out, tok * p.o_token_stride + h * p.o_head_stride, dim, out.data());
          const float delta = dot(dout.data(), out.data(), dim);  // rowsum(dO * O)
          for (int64_t j = 0; j < kn; ++j) {
            const float* kj = keys.data() + j * dim;
            const float pij = std::exp(p.scale * dot(q.data(), kj, dim) - lse);
            const float dp = dot(dout.data(), values.data() + j * dim, dim);
            const float ds = pij * (dp - delta) * p.scale;
            axpy(pij, dout.data(), dv.data() + j * dim, dim);
            axpy(ds, q.data(), dk.data() + j * dim, dim);
            axpy(ds, kj, dq.data(), dim);
          }
        }
        store_vec<D>(g.dq, (tok * p.heads + h) * dim, dim, dq.data());
      }
    }
    for (int64_t j = 0; j < kn; ++j) {
      store_vec<D>(g.dk, ((k0 + j) * p.kv_heads + hk) * dim, dim, dk.data() + j * dim);
      store_vec<D>(g.dv, ((k0 + j) * p.kv_heads + hk) * dim, dim, dv.data() + j * dim);
    }
  }
}

}  // namespace

void DLLM_ISA_NAME(attention_forward_cpu)(const AttentionParams& p, int64_t begin, int64_t end) {
  switch (p.dtype) {
    case DType::kFloat32: return forward_pairs<DType::kFloat32>(p, begin, end);
    case DType::kBFloat16: return forward_pairs<DType::kBFloat16>(p, begin, end);
    case DType::kFloat16: return forward_pairs<DType::kFloat16>(p, begin, end);
  }
}

void DLLM_ISA_NAME(attention_backward_cpu)(const AttentionGradParams& g, int64_t begin, int64_t end) {
  switch (g.fwd.dtype) {
    case DType::kFloat32: return backward_pairs<DType::kFloat32>(g, begin, end);
    case DType::kBFloat16: return backward_pairs<DType::kBFloat16>(g, begin, end);
    case DType::kFloat16: return backward_pairs<DType::kFloat16>(g, begin, end);
  }
}

}  // namespace dllm
