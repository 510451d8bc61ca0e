// CUDA attention backward (dllm/attention.h): three kernels, no atomics, deterministic.
//
//   delta = rowsum(dO * O) (fp32, one warp per (token, head));
//   dQ:     one CTA per (128-query tile, head, sequence), streaming the sequence's K/V tiles like
//           the forward; recomputes P = exp(S - lse), dP = dO V^T, dS = P (dP - delta), dQ += dS K;
//   dK, dV: one CTA per (128-key tile, kv head, sequence), streaming the query tiles of every q
//           head of the GQA group; recomputes P^T and dP^T, dV += P^T dO, dK += dS^T Q.
// P and dP are recomputed in both kernels (7 tile GEMMs instead of FlashAttention-2's 5), which
// buys a result that does not depend on scheduling and needs no fp32 dQ buffer or atomics.
// Query rows past q_size get P = 0 (their lse is treated as +inf) and key columns past k_size
// get dS = 0 in the dQ kernel; the dK/dV kernel never stores the rows of those keys.
#include <cuda_runtime.h>

#include <cmath>

#include "attention_mma.cuh"
#include "dllm/attention.h"

namespace dllm {
namespace {

using namespace attn;

constexpr int kWarps = 8, kThreads = kWarps * 32;
constexpr int kRowsPerCta = 16 * kWarps;  // queries per dQ CTA, keys per dK/dV CTA

// The streamed tiles are 32 rows at D = 128: registers (dK, dV, S^T, dP^T per warp) and shared
// memory stay within what sm_80 - sm_90 have (dQ needs 96 KB, which sm_86 / sm_89 allow too).
template <int Dim>
constexpr int dq_keys() {
  return Dim == 128 ? 32 : 64;
}
template <int Dim>
constexpr int dkdv_queries() {
  return Dim == 128 ? 32 : 64;
}

template <int Dim>
constexpr int dq_smem_bytes() {
  return (2 * kRowsPerCta + 4 * dq_keys<Dim>()) * Dim * 2;  // Q, dO, then K[2], V[2]
}

template <int Dim>
constexpr int dkdv_smem_bytes() {
  return (2 * kRowsPerCta + 4 * dkdv_queries<Dim>()) * Dim * 2;  // K, V, then Q[2], dO[2]
}

template <DType DT>
__global__ void __launch_bounds__(256) attention_delta_kernel(const AttentionGradParams g, float* delta) {
  using T = typename Elem<DT>::T;
  const AttentionParams& p = g.fwd;
  const int64_t row = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (row >= p.q_tokens * p.heads) return;
  const int64_t tok = row / p.heads, h = row % p.heads;
  const int lane = threadIdx.x & 31;
  const T* o = static_cast<const T*>(p.out) + tok * p.o_token_stride + h * p.o_head_stride;
  const T* d = static_cast<const T*>(g.dout) + tok * g.do_token_stride + h * g.do_head_stride;
  float acc = 0.0f;
  for (int i = 2 * lane; i < p.head_dim; i += 64) {
    const float2 a = Elem<DT>::unpack(*reinterpret_cast<const uint32_t*>(o + i));
    const float2 b = Elem<DT>::unpack(*reinterpret_cast<const uint32_t*>(d + i));
    acc += a.x * b.x + a.y * b.y;
  }
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) delta[h * p.q_tokens + tok] = acc;
}

template <DType DT, int Dim>
__global__ void __launch_bounds__(kThreads) attention_dq_kernel(const AttentionGradParams g, const float* delta) {
  using T = typename Elem<DT>::T;
  constexpr int kDqKeys = dq_keys<Dim>();
  constexpr int kScoreBlocks = kDqKeys / 8, kOutBlocks = Dim / 8;
  const AttentionParams& p = g.fwd;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sdO = sQ + kRowsPerCta * Dim;
  T* sK = sdO + kRowsPerCta * Dim;  // two buffers of kDqKeys * Dim
  T* sV = sK + 2 * kDqKeys * Dim;

  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * kRowsPerCta;
  const int qn = int(p.q_size(b)), kn = int(p.k_size(b));
  if (m0 >= qn || kn == 0) return;  // rows without work: stored by attention_padding.cu
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int hk = int(h / (p.heads / p.kv_heads));
  const int64_t q0 = p.q_begin(b) + m0, k0 = p.k_begin(b);
  const T* gq = static_cast<const T*>(p.q) + q0 * p.q_token_stride + h * p.q_head_stride;
  const T* gdo = static_cast<const T*>(g.dout) + q0 * g.do_token_stride + h * g.do_head_stride;
  const T* gk = static_cast<const T*>(p.k) + k0 * p.k_token_stride + hk * p.k_head_stride;
  const T* gv = static_cast<const T*>(p.v) + k0 * p.v_token_stride + hk * p.v_head_stride;
  const int n_tiles = (kn + kDqKeys - 1) / kDqKeys;

  load_tile<kRowsPerCta, Dim, kThreads>(sQ, gq, p.q_token_stride, qn - m0);
  load_tile<kRowsPerCta, Dim, kThreads>(sdO, gdo, g.do_token_stride, qn - m0);
  load_tile<kDqKeys, Dim, kThreads>(sK, gk, p.k_token_stride, kn);
  load_tile<kDqKeys, Dim, kThreads>(sV, gv, p.v_token_stride, kn);
  cp_async_commit();

  const float scale_log2 = p.scale * kLog2e;
  float lse2[2], row_delta[2];
  row_stats(lse2, row_delta, p, delta, h, q0, m0, qn, warp * 16, lane);
  float dq[kOutBlocks][4] = {};

  for (int j = 0; j < n_tiles; ++j) {
    cp_async_wait_all();
    __syncthreads();
    if (j + 1 < n_tiles) {
      const int next = (j + 1) * kDqKeys, buf = ((j + 1) & 1) * kDqKeys * Dim;
      load_tile<kDqKeys, Dim, kThreads>(sK + buf, gk + next * p.k_token_stride, p.k_token_stride, kn - next);
      load_tile<kDqKeys, Dim, kThreads>(sV + buf, gv + next * p.v_token_stride, p.v_token_stride, kn - next);
      cp_async_commit();
    }
    const T* k_tile = sK + (j & 1) * kDqKeys * Dim;
    const T* v_tile = sV + (j & 1) * kDqKeys * Dim;

    float s[kScoreBlocks][4] = {}, dp[kScoreBlocks][4] = {};
    paired_products<DT, Dim, kDqKeys>(s, dp, sQ, sdO, k_tile, v_tile, warp * 16, lane);  // S = Q K^T, dP = dO V^T
    scores_to_ds(s, dp, scale_log2, lse2, row_delta);
    mask_keys(s, j * kDqKeys, kn, lane, 0.0f);
    // dQ += dS K: K is the [k = key][n = d] operand, read transposed.
    accumulate_times_tile<DT, Dim, kDqKeys>(dq, s, k_tile, lane);
  }
  T* gdq = static_cast<T*>(g.dq) + q0 * p.q_token_stride + h * p.q_head_stride;
  store_rows<DT, Dim>(gdq, p.q_token_stride, dq, warp * 16, qn - m0, p.scale, p.scale, lane);
}

template <DType DT, int Dim>
__global__ void __launch_bounds__(kThreads) attention_dkdv_kernel(const AttentionGradParams g, const float* delta) {
  using T = typename Elem<DT>::T;
  constexpr int kQueries = dkdv_queries<Dim>();
  constexpr int kScoreBlocks = kQueries / 8, kOutBlocks = Dim / 8;
  const AttentionParams& p = g.fwd;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + kRowsPerCta * Dim;
  T* sQ = sV + kRowsPerCta * Dim;  // two buffers of kQueries * Dim
  T* sdO = sQ + 2 * kQueries * Dim;

  const int b = blockIdx.z, hk = blockIdx.y, n0 = blockIdx.x * kRowsPerCta;
  const int qn = int(p.q_size(b)), kn = int(p.k_size(b));
  if (n0 >= kn || qn == 0) return;  // rows without work: stored by attention_padding.cu
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int group = int(p.heads / p.kv_heads);
  const int64_t q0 = p.q_begin(b), k0 = p.k_begin(b) + n0;
  const T* gk = static_cast<const T*>(p.k) + k0 * p.k_token_stride + hk * p.k_head_stride;
  const T* gv = static_cast<const T*>(p.v) + k0 * p.v_token_stride + hk * p.v_head_stride;
  // Query tile `it` of the walk over (head of the group, tile): its first row in q and dO.
  const int q_tiles = (qn + kQueries - 1) / kQueries, steps = group * q_tiles;
  auto head_of = [&](int it) { return hk * group + it / q_tiles; };
  auto row_of = [&](int it) { return (it % q_tiles) * kQueries; };
  auto load_queries = [&](int it, int buf) {
    const int h = head_of(it), r = row_of(it);
    const T* gq = static_cast<const T*>(p.q) + (q0 + r) * p.q_token_stride + h * p.q_head_stride;
    const T* gdo = static_cast<const T*>(g.dout) + (q0 + r) * g.do_token_stride + h * g.do_head_stride;
    load_tile<kQueries, Dim, kThreads>(sQ + buf * kQueries * Dim, gq, p.q_token_stride, qn - r);
    load_tile<kQueries, Dim, kThreads>(sdO + buf * kQueries * Dim, gdo, g.do_token_stride, qn - r);
  };

  load_tile<kRowsPerCta, Dim, kThreads>(sK, gk, p.k_token_stride, kn - n0);
  load_tile<kRowsPerCta, Dim, kThreads>(sV, gv, p.v_token_stride, kn - n0);
  load_queries(0, 0);
  cp_async_commit();

  const float scale_log2 = p.scale * kLog2e;
  float dk[kOutBlocks][4] = {}, dv[kOutBlocks][4] = {};

  for (int it = 0; it < steps; ++it) {
    cp_async_wait_all();
    __syncthreads();
    if (it + 1 < steps) {
      load_queries(it + 1, (it + 1) & 1);
      cp_async_commit();
    }
    const T* q_tile = sQ + (it & 1) * kQueries * Dim;
    const T* do_tile = sdO + (it & 1) * kQueries * Dim;
    const int h = head_of(it), r0 = row_of(it);

    float col_lse[kScoreBlocks][2], col_delta[kScoreBlocks][2];
    column_stats(col_lse, col_delta, p, delta, h, q0, r0, qn, lane);

    // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys.
    float s[kScoreBlocks][4] = {}, dp[kScoreBlocks][4] = {};
    paired_products<DT, Dim, kQueries>(s, dp, sK, sV, q_tile, do_tile, warp * 16, lane);
    scores_to_probs_t(s, scale_log2, col_lse);

    // dV += P^T dO (dO is the [k = query][n = d] operand, read transposed).
    accumulate_times_tile<DT, Dim, kQueries>(dv, s, do_tile, lane);
    probs_to_ds_t(s, dp, col_delta);
    // dK += dS^T Q.
    accumulate_times_tile<DT, Dim, kQueries>(dk, s, q_tile, lane);
  }
  // dk, dv are contiguous [k_tokens, kv_heads, D]: same strides as k.
  T* gdk = static_cast<T*>(g.dk) + k0 * p.k_token_stride + hk * p.k_head_stride;
  T* gdv = static_cast<T*>(g.dv) + k0 * p.k_token_stride + hk * p.k_head_stride;
  store_rows<DT, Dim>(gdk, p.k_token_stride, dk, warp * 16, kn - n0, p.scale, p.scale, lane);
  store_rows<DT, Dim>(gdv, p.k_token_stride, dv, warp * 16, kn - n0, 1.0f, 1.0f, lane);
}

template <DType DT, int Dim>
void launch_backward(const AttentionGradParams& g, const float* delta, cudaStream_t stream) {
  const AttentionParams& p = g.fwd;
  constexpr int dq_smem = dq_smem_bytes<Dim>(), dkdv_smem = dkdv_smem_bytes<Dim>();
  allow_dynamic_smem<attention_dq_kernel<DT, Dim>>(dq_smem);
  allow_dynamic_smem<attention_dkdv_kernel<DT, Dim>>(dkdv_smem);
  const unsigned q_blocks = unsigned((p.max_q + kRowsPerCta - 1) / kRowsPerCta);
  const unsigned k_blocks = unsigned((p.max_k + kRowsPerCta - 1) / kRowsPerCta);
  attention_dq_kernel<DT, Dim><<<dim3(q_blocks, unsigned(p.heads), unsigned(p.batch)), kThreads, dq_smem, stream>>>(
      g, delta);
  attention_dkdv_kernel<DT, Dim>
      <<<dim3(k_blocks, unsigned(p.kv_heads), unsigned(p.batch)), kThreads, dkdv_smem, stream>>>(g, delta);
}

}  // namespace

void attention_delta_cuda(const AttentionGradParams& g, float* delta, void* stream) {
  const AttentionParams& p = g.fwd;
  const int64_t rows = p.q_tokens * p.heads;
  if (rows == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned blocks = unsigned((rows + 7) / 8);
  if (p.dtype == DType::kBFloat16)
    attention_delta_kernel<DType::kBFloat16><<<blocks, 256, 0, s>>>(g, delta);
  else
    attention_delta_kernel<DType::kFloat16><<<blocks, 256, 0, s>>>(g, delta);
}

void attention_backward_cuda(const AttentionGradParams& g, float* delta, void* stream) {
  const AttentionParams& p = g.fwd;
  if (p.launches_nothing()) return;
  auto s = static_cast<cudaStream_t>(stream);
  attention_delta_cuda(g, delta, s);
  attn::with_kernel_types(p, [&]<DType DT, int Dim>() { launch_backward<DT, Dim>(g, delta, s); });
}

}  // namespace dllm
