// CUDA attention forward for Hopper (sm_90a): the forward of attention_fwd.cu with its two
// products on wgmma, the warpgroup-wide asynchronous tensor-core instruction that mma.sync
// cannot reach the H100's peak without.
//
// One CTA per (128-query tile, head, sequence): two warpgroups of 64 query rows each. All 256
// threads stream K/V tiles with cp.async into shared memory. S = Q K^T reads both operands from
// shared memory, Q (loaded once) and K as K-major operands, as FlashAttention-3 does: Q in
// registers cost 32 of them at D = 128 and made the D = 64 kernel spill under its 128-register
// cap. O += P V takes P from registers and V as an MN-major operand, the same swizzled panel
// layout serving all three (wgmma.cuh).
//
// Each key tile j issues S_j = Q K_j^T and then the previous tile's O += P_{j-1} V_{j-1}, so the
// two products run together (V is loaded a tile behind K, into one of three buffers).
//
// Retired at once: both products are waited for right after they issue, before the next tile's
// loads and the softmax of S_j. FlashAttention-3 computes that softmax while P V runs, and so did
// this kernel, retiring P V only after the next block barrier; on the H200 (2026-11-30) every
// product but the last lost part or all of its sum. ptxas of CUDA 13.0 passes the P fragments to
// the wgmma in register quads (R88, R92, ...) that it treats as free once the instruction issues,
// and used them as scratch for the key masking while the product still read them (SASS); no
// operand fence in the source reaches those copies. The other warpgroup, and at D = 64 the other
// CTA, keep the tensor cores busy during a softmax. P_j still goes into registers of its own
// (p_next) that become the operand (pf) a tile later.
//
// Ping-pong: with `stagger`, warpgroup 1 runs the softmax of S_j only after the next block
// barrier, while warpgroup 0's products of tile j + 1 run, and issues its own products while
// warpgroup 0 runs its softmax, so that each warpgroup's products overlap the other's softmax as
// in FlashAttention-3 (which orders the two with named barriers; here the tile's block barrier
// is all the order needed). In lock step (stagger off) the tensor cores idle through every
// softmax at D = 128, where a CTA has its SM to itself. The products of both warpgroups read the
// same buffers between the same barriers either way. Warpgroup 0 alone copies the tiles ahead,
// once its products retire, so that the copies land during its softmax.
//
// The accumulators have the mma.sync fragment layout, so the masking, online softmax (base 2)
// and epilogue are those of attention_fwd.cu. Keys past k_size are never read; query rows past
// q_size are zero-filled, computed and not stored (attention_fwd.cu says who stores them).
#include <cuda_runtime.h>

#include <cmath>

#include "attention_mma.cuh"
#include "dllm/attention.h"
#include "wgmma.cuh"

namespace dllm {
namespace {

using namespace attn;

constexpr int kWarpgroups = 2, kThreads = 128 * kWarpgroups;
constexpr int kLoaders = 128;  // warpgroup 0 copies the tiles ahead
constexpr int kBlockM = 64 * kWarpgroups;  // queries per CTA

// Keys per tile: 128 at D = 128 (one CTA per SM, up to 255 registers a thread); 64 at D = 64, so
// that two CTAs share an SM within 128 registers a thread.
template <int Dim>
constexpr int block_n() {
  return Dim == 64 ? 64 : 128;
}

constexpr int kVBuffers = 3;  // V_{j+1} loads while P_{j-1} V_{j-1} may still read its buffer

template <int Dim>
constexpr int wgmma_fwd_smem_bytes() {
  // Q, then K[2], V[3], plus slack to align the panels to the 1024-byte swizzle atom.
  return (kBlockM + (2 + kVBuffers) * block_n<Dim>()) * Dim * 2 + wg::kSwizzleAtomBytes;
}

template <DType DT, int Dim>
__global__ void __launch_bounds__(kThreads, Dim == 64 ? 2 : 1) attention_fwd_wgmma_kernel(const AttentionParams p,
                                                                                         bool stagger) {
  using T = typename Elem<DT>::T;
  constexpr int kBlockN = block_n<Dim>();
  constexpr int kSteps = Dim / 16;         // k-steps of Q K^T
  constexpr int kKeySteps = kBlockN / 16;  // k-steps of P V
  constexpr int kScoreBlocks = kBlockN / 8, kOutBlocks = Dim / 8;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(wg::aligned_smem(smem_raw));
  T* sK = sQ + kBlockM * Dim;  // two buffers of kBlockN * Dim
  T* sV = sK + 2 * kBlockN * Dim;  // kVBuffers of them
  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * kBlockM;
  const int qn = int(p.q_size(b)), kn = int(p.k_size(b));
  if (m0 >= qn || kn == 0) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int q_row0 = (warp / 4) * 64;  // this warpgroup's 64 query rows
  const bool loads = warp < 4, lags = stagger && !loads;
  const int hk = int(h / (p.heads / p.kv_heads));
  const int64_t q0 = p.q_begin(b) + m0, k0 = p.k_begin(b);
  const T* gq = static_cast<const T*>(p.q) + q0 * p.q_token_stride + h * p.q_head_stride;
  const T* gk = static_cast<const T*>(p.k) + k0 * p.k_token_stride + hk * p.k_head_stride;
  const T* gv = static_cast<const T*>(p.v) + k0 * p.v_token_stride + hk * p.v_head_stride;
  const int n_tiles = (kn + kBlockN - 1) / kBlockN;

  wg::load_panels<kBlockM, Dim, kThreads>(sQ, gq, p.q_token_stride, qn - m0);
  wg::load_panels<kBlockN, Dim, kThreads>(sK, gk, p.k_token_stride, kn);
  cp_async_commit();

  const float scale_log2 = p.scale * kLog2e;
  float o[kOutBlocks][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};  // raw scores; per-thread partial sums
  float s[kScoreBlocks][4], correction[2];
  bool rescale;  // whether the latest softmax moved the row maxima (softmax_tile)
  uint32_t pf[kKeySteps][4];      // P of the tile whose P V is issued next, its A operand
  uint32_t p_next[kKeySteps][4];  // P of the latest softmax, until the product reading pf retires
  auto v_tile = [&](int j) { return sV + (j % kVBuffers) * kBlockN * Dim; };

  // Starts loading K_{j+1} and V_j into the buffers of K_{j-1} and V_{j-3}, which every warpgroup
  // was done with at tile j's block barrier (warpgroup 0 only).
  auto load_ahead = [&](int j) {
    if (!loads) return;
    if (j + 1 < n_tiles) {
      const int next = (j + 1) * kBlockN;
      wg::load_panels<kBlockN, Dim, kLoaders>(sK + ((j + 1) & 1) * kBlockN * Dim, gk + next * p.k_token_stride,
                                              p.k_token_stride, kn - next);
    }
    wg::load_panels<kBlockN, Dim, kLoaders>(v_tile(j), gv + j * kBlockN * p.v_token_stride, p.v_token_stride,
                                            kn - j * kBlockN);
    cp_async_commit();
  };
  // S_j = Q K_j^T, 64 keys (K-major rows 64 nb..) per wgmma; in flight on return.
  auto issue_scores = [&](int j) {
    const T* k_tile = sK + (j & 1) * kBlockN * Dim;
    wg::fence();
#pragma unroll
    for (int nb = 0; nb < kBlockN / 64; ++nb)
#pragma unroll
      for (int ks = 0; ks < kSteps; ++ks)
        wg::mma_async<DT, 64, false>(wg::columns<64>(s, 8 * nb), wg::k_major<kBlockM>(sQ, q_row0, ks),
                                     wg::k_major<kBlockN>(k_tile, 64 * nb, ks), ks > 0);
    wg::commit_group();
  };
  // After the wait that retired P_{j-2} V_{j-2}: O moves on to S_{j-1}'s row maximum, and P_{j-1}
  // becomes the A operand.
  auto next_fragments = [&] {
    wg::fence_accumulators(o);
    wg::fence_fragments(pf);
    if (rescale) rescale_rows(o, correction);
    wg::copy_fragments(pf, p_next);
  };

  // The softmax of the latest S_j: P_j rounded to the input type, into p_next.
  auto softmax = [&](int j) {
    wg::fence_accumulators(s);
    mask_keys(s, j * kBlockN, kn, lane, -INFINITY);
    rescale = softmax_tile(s, row_max, row_sum, correction, scale_log2);
    wg::to_fragments<DT, kBlockN>(p_next, s);
  };

  // Tile 0: no product of an earlier tile to overlap with.
  wg::arrive();  // Q and K_0
  issue_scores(0);
  load_ahead(0);
  wg::wait_group<0>();
  if (lags) wg::arrive();
  softmax(0);

  for (int j = 1; j < n_tiles; ++j) {
    // K_j and V_{j-1} have landed, and every warpgroup is done with tile j - 1's products
    if (!lags) wg::arrive();
    next_fragments();
    // S_j, then O += P_{j-1} V_{j-1}.
    issue_scores(j);
    wg::issue_times_fragments<DT, Dim, kBlockN>(o, pf, v_tile(j - 1));
    wg::wait_group<0>();  // both, before any other instruction: see "Retired at once" above
    load_ahead(j);
    if (lags) wg::arrive();
    softmax(j);
  }

  // O += P V of the last tile.
  if (!lags) wg::arrive();
  next_fragments();
  wg::issue_times_fragments<DT, Dim, kBlockN>(o, pf, v_tile(n_tiles - 1));
  wg::wait_group<0>();
  wg::fence_accumulators(o);
  wg::fence_fragments(pf);

  finish_forward<DT, Dim>(p, o, row_max, row_sum, scale_log2, h, q0, m0, qn, warp * 16, lane);
}

template <DType DT, int Dim>
void launch_forward(const AttentionParams& p, bool stagger, cudaStream_t stream) {
  constexpr int smem = wgmma_fwd_smem_bytes<Dim>();
  allow_dynamic_smem<attention_fwd_wgmma_kernel<DT, Dim>>(smem);
  const dim3 grid(unsigned((p.max_q + kBlockM - 1) / kBlockM), unsigned(p.heads), unsigned(p.batch));
  attention_fwd_wgmma_kernel<DT, Dim><<<grid, kThreads, smem, stream>>>(p, stagger);
}

}  // namespace

void attention_forward_wgmma_cuda(const AttentionParams& p, bool stagger, void* stream) {
  if (p.launches_nothing()) return;
  const auto s = static_cast<cudaStream_t>(stream);
  attn::with_kernel_types(p, [&]<DType DT, int Dim>() { launch_forward<DT, Dim>(p, stagger, s); });
}

}  // namespace dllm
