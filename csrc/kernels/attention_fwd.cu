// CUDA attention forward (dllm/attention.h), FlashAttention-2's design on mma.sync tensor cores.
//
// One CTA per (128-query tile, head, sequence), 8 warps of 16 query rows each. The CTA streams
// its sequence's K/V in 64-key tiles through double-buffered shared memory (cp.async: tile j+1
// loads while tile j is multiplied); each warp keeps its Q fragments, scores, probabilities and
// output accumulator in registers, with the online softmax in base 2 (the scale times log2 e
// entering each exponent's FMA). Keys past k_size are never read: the loop stops at the last
// tile holding a key, whose missing rows are zero-filled and whose columns past k_size get -inf
// (the only tile that is masked). Query rows past q_size are zero-filled, computed and not
// stored; rows left unstored (those, a sequence without keys, and a varlen batch's rows in no
// sequence) are zeros with a -inf lse, stored by attention_padding.cu.
//
// The same kernel serves a query block over many keys split into chunks (KeyChunks): then each
// CTA walks one chunk of its sequence's keys and leaves its partial result for
// attention_decode.cu's merge kernel.
//
// Here too: the one-thread-a-sequence kernels that make the int64 descriptor arrays this forward
// reads for a padded batch, and every kernel reads for a varlen one (from cu_seqlens).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "attention_mma.cuh"
#include "dllm/attention.h"

namespace dllm {
namespace {

using namespace attn;

constexpr int kWarps = 8, kThreads = kWarps * 32;
constexpr int kBlockM = 16 * kWarps;  // queries per CTA
constexpr int kBlockN = 64;           // keys per tile

template <int Dim>
constexpr int fwd_smem_bytes() {
  return (kBlockM + 4 * kBlockN) * Dim * 2;  // Q, then K[2], V[2]
}

// A split launch's chunks (attention_forward_split_cuda): blockIdx.x is (query tile, chunk), and
// the CTA walks keys [chunk * chunk_keys, + chunk_keys) only, leaving its unnormalised output and
// statistics in the workspace (attention_decode.cu's layout) for the merge. out == nullptr: one pass.
struct KeyChunks {
  float* out = nullptr;     // [q_tokens * heads * chunks][Dim]
  float2* stats = nullptr;  // [q_tokens * heads * chunks]: (maximum, sum), base 2
  int chunks = 1, chunk_keys = 0;
};

// One warp's 16 rows of a chunk: the output relative to the running maximum (whatever the
// conditional rescaling left it at: the merge only needs the sum taken against the same one).
template <int Dim>
__device__ __forceinline__ void store_chunk(const KeyChunks& w, const float (&o)[Dim / 8][4], const float (&row_max)[2],
                                            float (&row_sum)[2], float scale_log2, int64_t heads, int64_t h,
                                            int64_t q0, int m0, int qn, int row0, int chunk, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    row_sum[half] += __shfl_xor_sync(0xffffffffu, row_sum[half], 1);
    row_sum[half] += __shfl_xor_sync(0xffffffffu, row_sum[half], 2);
    const int row = row0 + g + 8 * half;
    if (m0 + row >= qn) continue;
    const int64_t slot = ((q0 + row) * heads + h) * w.chunks + chunk;
    if (t == 0) w.stats[slot] = float2{row_max[half] * scale_log2, row_sum[half]};
    auto* out = reinterpret_cast<float2*>(w.out + slot * Dim + 2 * t);
#pragma unroll
    for (int nb = 0; nb < Dim / 8; ++nb) out[nb * 4] = float2{o[nb][2 * half], o[nb][2 * half + 1]};
  }
}

// At D = 64 two CTAs share an SM (48 KB of shared memory and <= 128 registers each, no spills).
template <DType DT, int Dim>
__global__ void __launch_bounds__(kThreads, Dim == 64 ? 2 : 1) attention_fwd_kernel(const AttentionParams p,
                                                                                    const KeyChunks split) {
  using T = typename Elem<DT>::T;
  constexpr int kSteps = Dim / 16;        // k-steps of Q K^T
  constexpr int kScoreBlocks = kBlockN / 8;
  constexpr int kOutBlocks = Dim / 8;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + kBlockM * Dim;  // two buffers of kBlockN * Dim
  T* sV = sK + 2 * kBlockN * Dim;

  const int chunk = int(blockIdx.x % split.chunks), first = chunk * split.chunk_keys;
  const int b = blockIdx.z, h = blockIdx.y, m0 = int(blockIdx.x / split.chunks) * kBlockM;
  // The descriptor arrays (with_descriptors): the padded layout's arithmetic
  // (AttentionParams::q_begin) left this kernel, at its 128 registers, a spill.
  const int qn = int(p.q_count[b]), keys = int(p.k_count[b]);
  if (m0 >= qn || first >= keys) return;  // (one pass: first = 0, so a sequence without keys)
  const int kn = split.out != nullptr && keys - first > split.chunk_keys ? split.chunk_keys : keys - first;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int hk = int(h / (p.heads / p.kv_heads));
  const int64_t q0 = p.q_start[b] + m0, k0 = p.k_start[b] + first;
  const T* gq = static_cast<const T*>(p.q) + q0 * p.q_token_stride + h * p.q_head_stride;
  const T* gk = static_cast<const T*>(p.k) + k0 * p.k_token_stride + hk * p.k_head_stride;
  const T* gv = static_cast<const T*>(p.v) + k0 * p.v_token_stride + hk * p.v_head_stride;
  const int n_tiles = (kn + kBlockN - 1) / kBlockN;

  load_tile<kBlockM, Dim, kThreads>(sQ, gq, p.q_token_stride, qn - m0);
  load_tile<kBlockN, Dim, kThreads>(sK, gk, p.k_token_stride, kn);
  load_tile<kBlockN, Dim, kThreads>(sV, gv, p.v_token_stride, kn);
  cp_async_commit();

  const float scale_log2 = p.scale * kLog2e;
  uint32_t qf[kSteps][4];
  float o[kOutBlocks][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};  // raw scores; per-thread partial sums

  for (int j = 0; j < n_tiles; ++j) {
    cp_async_wait_all();
    __syncthreads();  // tile j is visible to all, and every warp is done with tile j - 1's buffers
    if (j == 0) {
#pragma unroll
      for (int ks = 0; ks < kSteps; ++ks) load_a<Dim>(qf[ks], sQ, warp * 16, 2 * ks, lane);
    }
    if (j + 1 < n_tiles) {
      const int next = (j + 1) * kBlockN, buf = ((j + 1) & 1) * kBlockN * Dim;
      load_tile<kBlockN, Dim, kThreads>(sK + buf, gk + next * p.k_token_stride, p.k_token_stride, kn - next);
      load_tile<kBlockN, Dim, kThreads>(sV + buf, gv + next * p.v_token_stride, p.v_token_stride, kn - next);
      cp_async_commit();
    }
    const T* k_tile = sK + (j & 1) * kBlockN * Dim;
    const T* v_tile = sV + (j & 1) * kBlockN * Dim;

    float s[kScoreBlocks][4] = {};
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
#pragma unroll
      for (int nb = 0; nb < kScoreBlocks; nb += 2) {
        uint32_t kb[4];
        load_b_nk<Dim>(kb, k_tile, nb * 8, 2 * ks, lane);
        mma<DT>(s[nb], qf[ks], kb[0], kb[1]);
        mma<DT>(s[nb + 1], qf[ks], kb[2], kb[3]);
      }
    }
    mask_keys(s, j * kBlockN, kn, lane, -INFINITY);
    online_softmax(s, o, row_max, row_sum, scale_log2);

    // O += P V, P rounded to the input type in registers.
    accumulate_times_tile<DT, Dim, kBlockN>(o, s, v_tile, lane);
  }

  if (split.out != nullptr) {
    store_chunk<Dim>(split, o, row_max, row_sum, scale_log2, p.heads, h, q0, m0, qn, warp * 16, chunk, lane);
  } else {
    finish_forward<DT, Dim>(p, o, row_max, row_sum, scale_log2, h, q0, m0, qn, warp * 16, lane);
  }
}

// A padded batch's starts and counts, one thread a sequence, as AttentionParams works them out.
__global__ void padded_descriptors_kernel(const AttentionParams p, int64_t* d) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.batch) return;
  d[b] = p.q_begin(b);
  d[p.batch + b] = p.q_size(b);
  d[2 * p.batch + b] = p.k_begin(b);
  d[3 * p.batch + b] = p.k_size(b);
}

__device__ int64_t cu_at(const CuSeqlens& c, int64_t i) {
  return c.int32 ? int64_t(static_cast<const int32_t*>(c.cu)[i]) : static_cast<const int64_t*>(c.cu)[i];
}

__device__ void varlen_range(const CuSeqlens& c, int64_t b, int64_t& start, int64_t& count) {
  const int64_t lo = cu_at(c, b), hi = cu_at(c, b + 1);
  start = lo < 0 ? 0 : lo > c.tokens ? c.tokens : lo;
  // as torch's int64 diff: wrapping, not undefined, for a malformed pair far apart
  const int64_t n = int64_t(uint64_t(hi) - uint64_t(lo));
  count = n < 0 ? 0 : n > c.max_seqlen ? c.max_seqlen : n;
  if (count > c.tokens - start) count = c.tokens - start;
}

__global__ void varlen_descriptors_kernel(const CuSeqlens q, const CuSeqlens k, int64_t batch, int64_t* d) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  varlen_range(q, b, d[b], d[batch + b]);
  varlen_range(k, b, d[2 * batch + b], d[3 * batch + b]);
}

constexpr int kDescriptorThreads = 128;

unsigned descriptor_blocks(int64_t batch) { return unsigned((batch + kDescriptorThreads - 1) / kDescriptorThreads); }

// p as the forward kernel reads it: a padded batch's arrays made into `descriptors` first.
AttentionParams with_descriptors(const AttentionParams& p, int64_t* descriptors, cudaStream_t stream) {
  if (p.q_start != nullptr) return p;
  padded_descriptors_kernel<<<descriptor_blocks(p.batch), kDescriptorThreads, 0, stream>>>(p, descriptors);
  AttentionParams a = p;
  a.q_start = descriptors;
  a.q_count = descriptors + p.batch;
  a.k_start = descriptors + 2 * p.batch;
  a.k_count = descriptors + 3 * p.batch;
  return a;
}

template <DType DT, int Dim>
void launch_forward(const AttentionParams& p, const KeyChunks& split, cudaStream_t stream) {
  constexpr int smem = fwd_smem_bytes<Dim>();
  allow_dynamic_smem<attention_fwd_kernel<DT, Dim>>(smem);
  const dim3 grid(unsigned((p.max_q + kBlockM - 1) / kBlockM * split.chunks), unsigned(p.heads), unsigned(p.batch));
  attention_fwd_kernel<DT, Dim><<<grid, kThreads, smem, stream>>>(p, split);
}

}  // namespace

int64_t attention_descriptor_count(const AttentionParams& p) { return p.q_start != nullptr ? 0 : 4 * p.batch; }

void attention_varlen_descriptors_cuda(CuSeqlens q, CuSeqlens k, int64_t batch, int64_t* descriptors, void* stream) {
  if (batch == 0) return;
  varlen_descriptors_kernel<<<descriptor_blocks(batch), kDescriptorThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      q, k, batch, descriptors);
}

void attention_forward_cuda(const AttentionParams& p, int64_t* descriptors, void* stream) {
  if (p.launches_nothing()) return;
  const auto s = static_cast<cudaStream_t>(stream);
  const AttentionParams a = with_descriptors(p, descriptors, s);
  attn::with_kernel_types(p, [&]<DType DT, int Dim>() { launch_forward<DT, Dim>(a, KeyChunks{}, s); });
}

KeySplit attention_key_split(const AttentionParams& p, int sms) {
  constexpr int64_t kMinChunkKeys = 2 * kBlockN;
  const int64_t ctas = (p.max_q + kBlockM - 1) / kBlockM * p.heads * p.batch;
  // Two CTAs an SM's worth of chunks, of at least two key tiles each: a query block of Fast-dLLM
  // (32 queries) over 1024 keys at B 1 and 12 heads becomes 96 CTAs of 128 keys, not 12 of 1024.
  if (p.max_q > kSplitQueries || 2 * ctas >= sms || p.max_k < 2 * kMinChunkKeys) return {};
  const int64_t chunks = std::min((2 * sms + ctas - 1) / ctas, p.max_k / kMinChunkKeys);
  const int64_t chunk_keys = ((p.max_k + chunks - 1) / chunks + kBlockN - 1) / kBlockN * kBlockN;
  const int64_t used = (p.max_k + chunk_keys - 1) / chunk_keys;
  return used > 1 ? KeySplit{used, chunk_keys} : KeySplit{};
}

void attention_forward_split_cuda(const AttentionParams& p, KeySplit split, float* workspace, int64_t* descriptors,
                                  void* stream) {
  if (p.launches_nothing()) return;
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t rows = p.q_tokens * p.heads * split.chunks;
  const KeyChunks chunks{workspace, reinterpret_cast<float2*>(workspace + rows * p.head_dim), int(split.chunks),
                         int(split.chunk_keys)};
  const AttentionParams a = with_descriptors(p, descriptors, s);
  attn::with_kernel_types(p, [&]<DType DT, int Dim>() { launch_forward<DT, Dim>(a, chunks, s); });
  // p, not a: a padded batch's merge stores every row, those of its padding too (no fill needed)
  attention_merge_chunks_cuda(p, workspace, split.chunks, split.chunk_keys, stream);
}

}  // namespace dllm
