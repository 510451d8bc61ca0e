// CUDA attention backward for Hopper (sm_90a): the dQ and dK/dV kernels of attention_bwd.cu with
// their products on wgmma (delta = rowsum(dO * O) is attention_bwd.cu's kernel). Deterministic,
// no atomics: P and dP are recomputed in both kernels, as there. The dK/dV kernel can instead add
// dQ itself, with float32 atomics (AtomicDq, add_dq_atomically), and no dQ kernel runs.
//
//   dQ:    one CTA per (128-query tile, head, sequence), two warpgroups of 64 queries. Q and dO
//          stay in shared memory as the A operands of S = Q K^T and dP = dO V^T; the K/V tiles
//          of 64 keys stream; dQ += dS K takes dS from registers and K as an MN-major operand.
//   dK/dV: one CTA per (128-key tile, kv head, sequence), two warpgroups of 64 keys. K and V stay
//          in shared memory as the A operands of S^T = K Q^T and dP^T = V dO^T; the query tiles
//          (of every q head of the GQA group) stream; dV += P^T dO and dK += dS^T Q take P^T and
//          dS^T from registers, dO and Q as MN-major operands.
//
// Both pair products as the forward does (attention_fwd_wgmma.cu): tile j issues its score
// products and then tile j - 1's gradient products, and all of them are retired right after they
// issue: ptxas reuses the registers of an in-flight product's register operands (dS, P) as
// scratch, which the H200 showed in the forward (its "Retired at once" note). Tile j's dS lives
// in registers of its own (ds_next) until it becomes the operand a tile later.
//
// Ping-pong: with `stagger`, warpgroup 1 turns tile j's scores into dS (P^T, dS^T) only after the
// next block barrier, while warpgroup 0 runs the products of tile j + 1, and issues its own
// products while warpgroup 0 does that elementwise work, so each warpgroup's products overlap the
// other's exponentials as in FlashAttention-3's forward. In lock step (both at once, stagger off)
// the tensor cores idle through every softmax: these kernels need more than 128 registers a
// thread, so a CTA has its SM to itself. Both warpgroups still meet at every tile's barrier, and
// their products read the same buffers in the same tile, so the buffers outlive the same
// barriers either way; warpgroup 0 alone copies the streamed tiles, after its products retire,
// so that the copies land during its elementwise work.
//
// Every operand lives in the swizzled panel layout of wgmma.cuh. Query rows past q_size get
// P = 0 (their lse is treated as +inf) and key columns past k_size get dS = 0 in the dQ kernel;
// the dK/dV kernel never stores the rows of those keys.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "attention_mma.cuh"
#include "dllm/attention.h"
#include "wgmma.cuh"

namespace dllm {
namespace {

using namespace attn;

constexpr int kThreads = 256;     // two warpgroups
constexpr int kLoaders = 128;     // warpgroup 0 copies the streamed tiles
constexpr int kRowsPerCta = 128;  // queries per dQ CTA, keys per dK/dV CTA
constexpr int kDqKeys = 64;       // keys per streamed dQ tile

// Queries per streamed dK/dV tile: the N of S^T and dP^T; 32 at D = 128 keeps dK, dV, S^T and
// dP^T within the register file.
template <int Dim>
constexpr int dkdv_queries() {
  return Dim == 128 ? 32 : 64;
}

// Buffers of the streamed tiles. Tile j's products read K_j (or Q_j and dO_j) and K_{j-1} between
// barriers j and j + 1, while K_{j+1} loads: three buffers. V only feeds the dQ kernel's scores:
// two.
constexpr int kDqKBuffers = 3;
constexpr int kQueryBuffers = 3;

template <int Dim>
constexpr int dq_smem_bytes() {
  return (2 * kRowsPerCta + (kDqKBuffers + 2) * kDqKeys) * Dim * 2 + wg::kSwizzleAtomBytes;  // Q, dO, K[3], V[2]
}

// With AtomicDq each warpgroup also keeps its dS, transposed, as a [queries][64 keys] panel tile.
template <int Dim, bool AtomicDq>
constexpr int dkdv_smem_bytes() {
  constexpr int ds_rows = AtomicDq ? 2 * dkdv_queries<Dim>() : 0;
  return (2 * kRowsPerCta + 2 * kQueryBuffers * dkdv_queries<Dim>()) * Dim * 2 + ds_rows * 64 * 2 +
         wg::kSwizzleAtomBytes;  // K, V, Q[3], dO[3], dS[2]
}

// c1 = A1 B1^T and c2 = A2 B2^T for one warpgroup, A from its 64 rows of the [kRowsPerCta][Dim]
// tiles a1, a2 and B the first N rows of the [N][Dim] tiles b1, b2, all K-major; one group, in
// flight on return.
template <DType DT, int Dim, int N, typename T>
__device__ __forceinline__ void issue_paired_products(float (&c1)[N / 8][4], float (&c2)[N / 8][4], const T* a1,
                                                      const T* a2, const T* b1, const T* b2, int row0) {
  wg::fence();
#pragma unroll
  for (int ks = 0; ks < Dim / 16; ++ks) {
    wg::mma_async<DT, N, false>(wg::columns<N>(c1, 0), wg::k_major<kRowsPerCta>(a1, row0, ks), wg::k_major<N>(b1, 0, ks),
                                ks > 0);
    wg::mma_async<DT, N, false>(wg::columns<N>(c2, 0), wg::k_major<kRowsPerCta>(a2, row0, ks), wg::k_major<N>(b2, 0, ks),
                                ks > 0);
  }
  wg::commit_group();
}

template <DType DT, int Dim>
__global__ void __launch_bounds__(kThreads) attention_dq_wgmma_kernel(const AttentionGradParams g, const float* delta,
                                                                      bool stagger) {
  using T = typename Elem<DT>::T;
  constexpr int kScoreBlocks = kDqKeys / 8, kOutBlocks = Dim / 8, kKeySteps = kDqKeys / 16;
  const AttentionParams& p = g.fwd;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(wg::aligned_smem(smem_raw));
  T* sdO = sQ + kRowsPerCta * Dim;
  T* sK = sdO + kRowsPerCta * Dim;  // kDqKBuffers of kDqKeys * Dim
  T* sV = sK + kDqKBuffers * kDqKeys * Dim;  // two of them

  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * kRowsPerCta;
  const int qn = int(p.q_size(b)), kn = int(p.k_size(b));
  if (m0 >= qn || kn == 0) return;  // rows without work: stored by attention_padding.cu
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row0 = 64 * (warp / 4);  // this warpgroup's first query row in the tile
  const bool loads = warp < 4, lags = stagger && !loads;
  const int hk = int(h / (p.heads / p.kv_heads));
  const int64_t q0 = p.q_begin(b) + m0, k0 = p.k_begin(b);
  const T* gq = static_cast<const T*>(p.q) + q0 * p.q_token_stride + h * p.q_head_stride;
  const T* gdo = static_cast<const T*>(g.dout) + q0 * g.do_token_stride + h * g.do_head_stride;
  const T* gk = static_cast<const T*>(p.k) + k0 * p.k_token_stride + hk * p.k_head_stride;
  const T* gv = static_cast<const T*>(p.v) + k0 * p.v_token_stride + hk * p.v_head_stride;
  const int n_tiles = (kn + kDqKeys - 1) / kDqKeys;
  auto k_tile = [&](int j) { return sK + (j % kDqKBuffers) * kDqKeys * Dim; };
  auto v_tile = [&](int j) { return sV + (j & 1) * kDqKeys * Dim; };
  auto load_keys = [&](int j) {
    const int first = j * kDqKeys;
    wg::load_panels<kDqKeys, Dim, kLoaders>(k_tile(j), gk + first * p.k_token_stride, p.k_token_stride, kn - first);
    wg::load_panels<kDqKeys, Dim, kLoaders>(v_tile(j), gv + first * p.v_token_stride, p.v_token_stride, kn - first);
  };

  wg::load_panels<kRowsPerCta, Dim, kThreads>(sQ, gq, p.q_token_stride, qn - m0);
  wg::load_panels<kRowsPerCta, Dim, kThreads>(sdO, gdo, g.do_token_stride, qn - m0);
  if (loads) load_keys(0);
  cp_async_commit();

  const float scale_log2 = p.scale * kLog2e;
  float lse2[2], row_delta[2];
  row_stats(lse2, row_delta, p, delta, h, q0, m0, qn, warp * 16, lane);
  float dq[kOutBlocks][4] = {};
  float s[kScoreBlocks][4], dp[kScoreBlocks][4];
  uint32_t dsf[kKeySteps][4];      // dS of the tile whose dQ product is issued next, its A operand
  uint32_t ds_next[kKeySteps][4];  // dS of the latest tile, until the product reading dsf retires

  // Starts loading K_{j+1}, V_{j+1} into the buffers of K_{j-2} and V_{j-1}, which every warpgroup
  // was done with at tile j's block barrier. Issued by warpgroup 0 once its tile j products retired.
  auto load_ahead = [&](int j) {
    if (loads && j + 1 < n_tiles) {
      load_keys(j + 1);
      cp_async_commit();
    }
  };
  // S_j = Q K_j^T and dP_j = dO V_j^T, in flight on return.
  auto issue_scores = [&](int j) {
    issue_paired_products<DT, Dim, kDqKeys>(s, dp, sQ, sdO, k_tile(j), v_tile(j), row0);
  };
  // From the retired S_j, dP_j: dS_j rounded into ds_next.
  auto scores_to_fragments = [&](int j) {
    wg::fence_accumulators(s);
    wg::fence_accumulators(dp);
    scores_to_ds(s, dp, scale_log2, lse2, row_delta);
    mask_keys(s, j * kDqKeys, kn, lane, 0.0f);
    wg::to_fragments<DT, kDqKeys>(ds_next, s);
  };
  // After the wait that retired the product of tile j - 2: dS_{j-1} becomes the A operand.
  auto next_fragments = [&] {
    wg::fence_accumulators(dq);
    wg::fence_fragments(dsf);
    wg::copy_fragments(dsf, ds_next);
  };

  // Tile 0: no product of an earlier tile to overlap with.
  wg::arrive();  // Q, dO, K_0, V_0
  issue_scores(0);
  load_ahead(0);
  wg::wait_group<0>();
  if (lags) wg::arrive();
  scores_to_fragments(0);

  for (int j = 1; j < n_tiles; ++j) {
    // K_j, V_j have landed, and every warpgroup is done with tile j - 1's products
    if (!lags) wg::arrive();
    next_fragments();
    // S_j and dP_j, then dQ += dS_{j-1} K_{j-1} (K as the [k = key][n = d] operand).
    issue_scores(j);
    wg::issue_times_fragments<DT, Dim, kDqKeys>(dq, dsf, k_tile(j - 1));
    wg::wait_group<0>();  // all three, before any other instruction (see the note above)
    load_ahead(j);
    if (lags) wg::arrive();
    scores_to_fragments(j);
  }

  // dQ += dS K of the last tile.
  if (!lags) wg::arrive();
  next_fragments();
  wg::issue_times_fragments<DT, Dim, kDqKeys>(dq, dsf, k_tile(n_tiles - 1));
  wg::wait_group<0>();
  wg::fence_accumulators(dq);
  wg::fence_fragments(dsf);

  T* gdq = static_cast<T*>(g.dq) + q0 * p.q_token_stride + h * p.q_head_stride;
  store_rows<DT, Dim>(gdq, p.q_token_stride, dq, warp * 16, qn - m0, p.scale, p.scale, lane);
}

// dq_accum[token][head][d] += dS K over this warpgroup's 64 keys (row0..) for the query tile
// `rows` of head h starting at token0. dS^T (the A fragments ds, rows = keys) is stored
// transposed into the warpgroup's own [Queries][64 keys] panel tile sds (keys past the sequence's
// end as 0: their zero-filled K row would turn an inf dS into NaN). At D = 64 that tile is the
// K-major A of dQ = dS K (M = the 64 queries, K read MN-major); at D = 128, with 32 queries a
// tile, it is the K-major B of dQ^T = K^T dS^T (M = 64 of the 128 d a product, K^T read through
// the transpose bit). Each warpgroup syncs alone, so the other may be half a tile away
// (ping-pong); sds is written again only a tile later, after this product retired.
template <DType DT, int Dim, int Queries, typename T>
__device__ __forceinline__ void add_dq_atomically(float* dq_accum, const AttentionParams& p,
                                                  const uint32_t (&ds)[Queries / 16][4], T* sds, const T* sK,
                                                  int row0, int key0, int kn, int64_t token0, int rows, int h, int lane) {
  static_assert(Queries == (Dim == 64 ? 64 : 32));
  const int w = (threadIdx.x >> 5) & 3, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int key = 16 * w + g + 8 * (e & 1);
    const bool real = key0 + row0 + key < kn;
#pragma unroll
    for (int kk = 0; kk < Queries / 16; ++kk) {
      const uint32_t pair = real ? ds[kk][e] : 0u;
      const int query = 16 * kk + 8 * (e >> 1) + 2 * t;
      wg::store_operand_bits(sds + wg::panel_offset<Queries>(query, key >> 3) + (key & 7), uint16_t(pair));
      wg::store_operand_bits(sds + wg::panel_offset<Queries>(query + 1, key >> 3) + (key & 7), uint16_t(pair >> 16));
    }
  }
  wg::fence_proxy_async();
  wg::warpgroup_sync();
  float* accum = dq_accum + (token0 * p.heads + h) * Dim;
  const int64_t token_stride = p.heads * Dim;
  if constexpr (Dim == 64) {
    float dq[8][4];  // rows: queries 16 w + g (+ 8); columns: d
    wg::fence();
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
      wg::mma_async<DT, 64, true>(wg::columns<64>(dq, 0), wg::k_major<Queries>(sds, 0, ks),
                                  wg::mn_major<kRowsPerCta>(sK, row0 / 16 + ks, 0), ks > 0);
    wg::commit_group();
    wg::wait_group<0>();
    wg::fence_accumulators(dq);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = 16 * w + g + 8 * half;
      if (row >= rows) continue;
#pragma unroll
      for (int nb = 0; nb < 8; ++nb)
        atomicAdd(reinterpret_cast<float2*>(accum + row * token_stride + 8 * nb + 2 * t),
                  make_float2(dq[nb][2 * half], dq[nb][2 * half + 1]));
    }
  } else {
    float dqt[2][4][4];  // [d half]: rows d = 64 half + 16 w + g (+ 8); columns: queries
    wg::fence();
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        wg::mma_async<DT, 32, false, true>(wg::columns<32>(dqt[half], 0),
                                           wg::mn_major<kRowsPerCta>(sK, row0 / 16 + ks, half),
                                           wg::k_major<Queries>(sds, 0, ks), ks > 0);
    wg::commit_group();
    wg::wait_group<0>();
    wg::fence_accumulators(dqt[0]);
    wg::fence_accumulators(dqt[1]);
#pragma unroll
    for (int nb = 0; nb < 4; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int query = 8 * nb + 2 * t + (e & 1);
        if (query >= rows) continue;
#pragma unroll
        for (int half = 0; half < 2; ++half)
          atomicAdd(accum + query * token_stride + 64 * half + 16 * w + g + 8 * (e >> 1), dqt[half][nb][e]);
      }
  }
}

// AtomicDq: dQ is summed here too, into the float32 dq_accum, and no dQ kernel runs.
template <DType DT, int Dim, bool AtomicDq>
__global__ void __launch_bounds__(kThreads) attention_dkdv_wgmma_kernel(const AttentionGradParams g,
                                                                        const float* delta, bool stagger,
                                                                        float* dq_accum) {
  using T = typename Elem<DT>::T;
  constexpr int kQueries = dkdv_queries<Dim>();
  constexpr int kScoreBlocks = kQueries / 8, kOutBlocks = Dim / 8, kQuerySteps = kQueries / 16;
  const AttentionParams& p = g.fwd;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(wg::aligned_smem(smem_raw));
  T* sV = sK + kRowsPerCta * Dim;
  T* sQ = sV + kRowsPerCta * Dim;  // kQueryBuffers of kQueries * Dim
  T* sdO = sQ + kQueryBuffers * kQueries * Dim;
  T* sdS = sdO + kQueryBuffers * kQueries * Dim + (threadIdx.x >> 7) * kQueries * 64;  // this warpgroup's

  const int b = blockIdx.z, hk = blockIdx.y, n0 = blockIdx.x * kRowsPerCta;
  const int qn = int(p.q_size(b)), kn = int(p.k_size(b));
  if (n0 >= kn || qn == 0) return;  // rows without work: stored by attention_padding.cu
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row0 = 64 * (warp / 4);  // this warpgroup's first key row in the tile
  const bool loads = warp < 4, lags = stagger && !loads;
  const int group = int(p.heads / p.kv_heads);
  const int64_t q0 = p.q_begin(b), k0 = p.k_begin(b) + n0;
  const T* gk = static_cast<const T*>(p.k) + k0 * p.k_token_stride + hk * p.k_head_stride;
  const T* gv = static_cast<const T*>(p.v) + k0 * p.v_token_stride + hk * p.v_head_stride;
  // Query tile `it` of the walk over (head of the group, tile): its first row in q and dO.
  const int q_tiles = (qn + kQueries - 1) / kQueries, steps = group * q_tiles;
  // With AtomicDq the CTA of key tile x starts its walk at tile x (mod steps): the CTAs of one
  // sequence and head, which run side by side, then add into different rows of dQ at any moment
  // instead of all contending for the same.
  const int first = AtomicDq ? int(blockIdx.x) % steps : 0;
  auto walked = [&](int it) {
    if constexpr (!AtomicDq) return it;
    return it + first < steps ? it + first : it + first - steps;
  };
  auto head_of = [&](int it) { return hk * group + walked(it) / q_tiles; };
  auto row_of = [&](int it) { return (walked(it) % q_tiles) * kQueries; };
  auto q_tile = [&](int it) { return sQ + (it % kQueryBuffers) * kQueries * Dim; };
  auto do_tile = [&](int it) { return sdO + (it % kQueryBuffers) * kQueries * Dim; };
  auto load_queries = [&](int it) {
    const int h = head_of(it), r = row_of(it);
    const T* gq = static_cast<const T*>(p.q) + (q0 + r) * p.q_token_stride + h * p.q_head_stride;
    const T* gdo = static_cast<const T*>(g.dout) + (q0 + r) * g.do_token_stride + h * g.do_head_stride;
    wg::load_panels<kQueries, Dim, kLoaders>(q_tile(it), gq, p.q_token_stride, qn - r);
    wg::load_panels<kQueries, Dim, kLoaders>(do_tile(it), gdo, g.do_token_stride, qn - r);
  };

  wg::load_panels<kRowsPerCta, Dim, kThreads>(sK, gk, p.k_token_stride, kn - n0);
  wg::load_panels<kRowsPerCta, Dim, kThreads>(sV, gv, p.v_token_stride, kn - n0);
  if (loads) load_queries(0);
  cp_async_commit();

  const float scale_log2 = p.scale * kLog2e;
  float dk[kOutBlocks][4] = {}, dv[kOutBlocks][4] = {};
  float s[kScoreBlocks][4], dp[kScoreBlocks][4];
  float col_lse[kScoreBlocks][2], col_delta[kScoreBlocks][2];
  uint32_t pf[kQuerySteps][4], dsf[kQuerySteps][4];  // P^T, dS^T of the tile whose products are issued next
  uint32_t p_next[kQuerySteps][4], ds_next[kQuerySteps][4];  // those of the latest tile, until then

  // Starts loading query tile it + 1 into the buffers of tile it - 2, which every warpgroup was
  // done with at tile it's block barrier. Issued by warpgroup 0 once its tile it products retired.
  auto load_ahead = [&](int it) {
    if (loads && it + 1 < steps) {
      load_queries(it + 1);
      cp_async_commit();
    }
  };
  // The statistics of tile it's queries (read before its products are issued, so that the loads
  // are in flight meanwhile), then S^T = K Q^T and dP^T = V dO^T for this warpgroup's 64 keys.
  auto issue_scores = [&](int it) {
    column_stats(col_lse, col_delta, p, delta, head_of(it), q0, row_of(it), qn, lane);
    issue_paired_products<DT, Dim, kQueries>(s, dp, sK, sV, q_tile(it), do_tile(it), row0);
  };
  // From the retired S^T, dP^T of tile it: P^T and dS^T rounded into p_next, ds_next.
  auto scores_to_fragments = [&](int it) {
    wg::fence_accumulators(s);
    wg::fence_accumulators(dp);
    scores_to_probs_t(s, scale_log2, col_lse);
    wg::to_fragments<DT, kQueries>(p_next, s);
    probs_to_ds_t(s, dp, col_delta);
    wg::to_fragments<DT, kQueries>(ds_next, s);
    if constexpr (AtomicDq)
      add_dq_atomically<DT, Dim, kQueries>(dq_accum, p, ds_next, sdS, sK, row0, n0, kn, q0 + row_of(it),
                                      qn - row_of(it), int(head_of(it)), lane);
  };
  // After the wait that retired tile it - 2's products: tile it - 1's P^T, dS^T become operands.
  auto next_fragments = [&] {
    wg::fence_accumulators(dk);
    wg::fence_accumulators(dv);
    wg::fence_fragments(pf);
    wg::fence_fragments(dsf);
    wg::copy_fragments(pf, p_next);
    wg::copy_fragments(dsf, ds_next);
  };
  // dV += P^T dO and dK += dS^T Q of tile it (dO and Q as the [k = query][n = d] operands): two groups.
  auto issue_gradients = [&](int it) {
    wg::issue_times_fragments<DT, Dim, kQueries>(dv, pf, do_tile(it));
    wg::issue_times_fragments<DT, Dim, kQueries>(dk, dsf, q_tile(it));
  };

  // Tile 0: no products of an earlier tile to overlap with.
  wg::arrive();  // K, V and query tile 0
  issue_scores(0);
  load_ahead(0);
  wg::wait_group<0>();
  if (lags) wg::arrive();
  scores_to_fragments(0);

  for (int it = 1; it < steps; ++it) {
    // query tile it has landed, and every warpgroup is done with tile it - 1's products
    if (!lags) wg::arrive();
    next_fragments();
    // S^T, dP^T of tile it, then tile it - 1's dV and dK products.
    issue_scores(it);
    issue_gradients(it - 1);
    wg::wait_group<0>();  // all four, before any other instruction (see the note above)
    load_ahead(it);
    if (lags) wg::arrive();
    scores_to_fragments(it);
  }

  // The last tile's products.
  if (!lags) wg::arrive();
  next_fragments();
  issue_gradients(steps - 1);
  wg::wait_group<0>();
  wg::fence_accumulators(dk);
  wg::fence_accumulators(dv);
  wg::fence_fragments(pf);
  wg::fence_fragments(dsf);

  // dk, dv are contiguous [k_tokens, kv_heads, D]: same strides as k.
  T* gdk = static_cast<T*>(g.dk) + k0 * p.k_token_stride + hk * p.k_head_stride;
  T* gdv = static_cast<T*>(g.dv) + k0 * p.k_token_stride + hk * p.k_head_stride;
  store_rows<DT, Dim>(gdk, p.k_token_stride, dk, warp * 16, kn - n0, p.scale, p.scale, lane);
  store_rows<DT, Dim>(gdv, p.k_token_stride, dv, warp * 16, kn - n0, 1.0f, 1.0f, lane);
}

// dq = scale * dq_accum rounded to T, both [q_tokens, heads, D] (every element: rows without work
// hold 0 in dq_accum), four elements a thread.
template <DType DT>
__global__ void __launch_bounds__(256) dq_from_accum_kernel(const float4* dq_accum, typename Elem<DT>::T* dq,
                                                            int64_t quads, float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < quads; i += int64_t(gridDim.x) * blockDim.x) {
    const float4 a = dq_accum[i];
    uint2 packed;
    packed.x = Elem<DT>::pack(a.x * scale, a.y * scale);
    packed.y = Elem<DT>::pack(a.z * scale, a.w * scale);
    reinterpret_cast<uint2*>(dq)[i] = packed;
  }
}

template <DType DT, int Dim, bool AtomicDq>
void launch_dkdv(const AttentionGradParams& g, const float* delta, bool stagger, float* dq_accum, cudaStream_t stream) {
  const AttentionParams& p = g.fwd;
  constexpr int smem = dkdv_smem_bytes<Dim, AtomicDq>();
  allow_dynamic_smem<attention_dkdv_wgmma_kernel<DT, Dim, AtomicDq>>(smem);
  const unsigned k_blocks = unsigned((p.max_k + kRowsPerCta - 1) / kRowsPerCta);
  attention_dkdv_wgmma_kernel<DT, Dim, AtomicDq>
      <<<dim3(k_blocks, unsigned(p.kv_heads), unsigned(p.batch)), kThreads, smem, stream>>>(g, delta, stagger, dq_accum);
}

template <DType DT, int Dim>
void round_dq(const AttentionGradParams& g, const float* dq_accum, cudaStream_t stream) {
  const AttentionParams& p = g.fwd;
  const int64_t quads = p.q_tokens * p.heads * Dim / 4;
  if (quads == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>((quads + 255) / 256, 4096));
  dq_from_accum_kernel<DT><<<blocks, 256, 0, stream>>>(reinterpret_cast<const float4*>(dq_accum),
                                                       static_cast<typename Elem<DT>::T*>(g.dq), quads, p.scale);
}

template <DType DT, int Dim>
void launch_backward(const AttentionGradParams& g, const float* delta, bool stagger, float* dq_accum,
                     cudaStream_t stream) {
  const AttentionParams& p = g.fwd;
  if (dq_accum != nullptr) {
    launch_dkdv<DT, Dim, true>(g, delta, stagger, dq_accum, stream);
    round_dq<DT, Dim>(g, dq_accum, stream);
    return;
  }
  constexpr int dq_smem = dq_smem_bytes<Dim>();
  allow_dynamic_smem<attention_dq_wgmma_kernel<DT, Dim>>(dq_smem);
  const unsigned q_blocks = unsigned((p.max_q + kRowsPerCta - 1) / kRowsPerCta);
  attention_dq_wgmma_kernel<DT, Dim>
      <<<dim3(q_blocks, unsigned(p.heads), unsigned(p.batch)), kThreads, dq_smem, stream>>>(g, delta, stagger);
  launch_dkdv<DT, Dim, false>(g, delta, stagger, nullptr, stream);
}

}  // namespace

void attention_backward_wgmma_cuda(const AttentionGradParams& g, float* delta, bool stagger, float* dq_accum,
                                   void* stream) {
  const AttentionParams& p = g.fwd;
  auto s = static_cast<cudaStream_t>(stream);
  if (p.launches_nothing()) {
    // dq, not zero-filled for the atomic path, takes its zeros from the rounding pass
    if (dq_accum != nullptr)
      attn::with_kernel_types(p, [&]<DType DT, int Dim>() { round_dq<DT, Dim>(g, dq_accum, s); });
    return;
  }
  attention_delta_cuda(g, delta, s);
  attn::with_kernel_types(p, [&]<DType DT, int Dim>() { launch_backward<DT, Dim>(g, delta, stagger, dq_accum, s); });
}

}  // namespace dllm
