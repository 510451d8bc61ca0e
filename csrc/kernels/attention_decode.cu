// CUDA attention forward for a decoding step: at most kDecodeQueries queries per sequence over
// many keys, with the keys split across CTAs (FlashDecoding).
//
// The tensor-core kernels give a CTA 128 query rows and walk every key of the sequence in it. For
// an autoregressive step's one query a layer at B 1 then launched one CTA per head (12 to 32 of
// them for 132 SMs), each walking up to 1024 keys in 16 dependent tiles with 127 of its 128 rows
// empty. Here each (key chunk of kChunk keys, head, sequence) is a CTA on CUDA cores: it
// computes its chunk's scores for every query of the sequence, their softmax relative to the
// chunk's maximum, and the weighted sum of the chunk's values, unnormalised; a second kernel
// merges the chunks of each (query, head) into the output and the log-sum-exp, which the backward
// reads as it reads the tensor-core forward's. The merge also serves the tensor-core forward's
// split launch (attention_forward_split_cuda), whose chunks hold a query block's partial results.
//
// Scores are in base 2 (the scale times log2 e folded into q). Keys past k_size are never read;
// CTAs whose chunk starts past k_size, and queries past q_size, write nothing, and the merge
// reads only chunks that hold keys. The merge writes the rows without work too (zeros, and a -inf
// log-sum-exp): a sequence's without keys, and a padded batch's past its queries, so that a
// padded batch's out and lse need nothing more (a varlen batch's rows in no sequence are stored
// by attention_padding.cu).
#include <cuda_runtime.h>

#include <cmath>

#include "attention_mma.cuh"
#include "cuda_rows.cuh"
#include "dllm/attention.h"

namespace dllm {
namespace {

constexpr int kThreads = 128;
constexpr int kChunk = 128;  // keys per CTA

// A key row is Dim / 8 lanes' 16-byte pieces (8 elements each); a warp takes 32 * 8 / Dim keys at
// a time and the CTA kThreads * 8 / Dim.
template <int Dim>
struct KeyLanes {
  static constexpr int kLanes = Dim / 8;                   // lanes per key row
  static constexpr int kKeysPerPass = kThreads / kLanes;  // keys the CTA reads at once
  static constexpr int kPasses = kChunk / kKeysPerPass;
};

// The sum over the kLanes lanes that share a key row (consecutive lanes, aligned groups).
template <int kLanes>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Workspace of the chunks: per (query token, head, chunk), Dim floats of unnormalised output and
// the chunk's (maximum, sum) in base 2.
struct Partials {
  float* out;          // [q_tokens * heads * chunks][Dim]
  float2* stats;       // [q_tokens * heads * chunks]
  int64_t chunks;      // chunks of the longest sequence
  int64_t chunk_keys;  // keys per chunk
};

Partials partials(const AttentionParams& p, float* workspace, int64_t chunks, int64_t chunk_keys) {
  return {workspace, reinterpret_cast<float2*>(workspace + p.q_tokens * p.heads * chunks * p.head_dim), chunks,
          chunk_keys};
}

template <DType DT, int Dim>
__global__ void __launch_bounds__(kThreads) attention_decode_chunk_kernel(const AttentionParams p, Partials w) {
  using L = KeyLanes<Dim>;
  constexpr int kVec = 8;
  __shared__ float s_scores[kDecodeQueries][kChunk];
  __shared__ float s_out[L::kKeysPerPass][kDecodeQueries][Dim];

  const int b = blockIdx.z, h = blockIdx.y, c = blockIdx.x;
  const int qn = int(p.q_size(b)), kn = int(p.k_size(b));
  const int first = c * kChunk;
  if (first >= kn || qn == 0) return;
  const int keys = kn - first < kChunk ? kn - first : kChunk;
  const int hk = int(h / (p.heads / p.kv_heads));
  const int slot = threadIdx.x / L::kLanes, piece = threadIdx.x % L::kLanes;  // key of a pass, 8 elements of it
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t q0 = p.q_begin(b), k0 = p.k_begin(b) + first;

  // This lane's 8 elements of every query, scaled into base 2.
  float q[kDecodeQueries][kVec];
  const float q_scale = p.scale * kLog2e;
#pragma unroll
  for (int i = 0; i < kDecodeQueries; ++i) {
    if (i < qn) {
      cuda::load_chunk<DT, kVec>(p.q, (q0 + i) * p.q_token_stride + h * p.q_head_stride + piece * kVec, q[i]);
#pragma unroll
      for (int e = 0; e < kVec; ++e) q[i][e] *= q_scale;
    }
  }

  // Scores: each group of kLanes lanes takes one key a pass.
#pragma unroll 4
  for (int pass = 0; pass < L::kPasses; ++pass) {
    const int j = pass * L::kKeysPerPass + slot;
    float k[kVec];
    if (j < keys) {
      cuda::load_chunk<DT, kVec>(p.k, (k0 + j) * p.k_token_stride + hk * p.k_head_stride + piece * kVec, k);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) k[e] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < kDecodeQueries; ++i) {
      if (i >= qn) break;
      float dot = 0.0f;
#pragma unroll
      for (int e = 0; e < kVec; ++e) dot = fmaf(q[i][e], k[e], dot);
      dot = group_sum<L::kLanes>(dot);
      if (piece == 0) s_scores[i][j] = j < keys ? dot : -INFINITY;
    }
  }
  __syncthreads();

  // The chunk's softmax relative to its maximum: warp i takes query i.
  if (warp < qn) {
    float m = -INFINITY;
    for (int j = lane; j < kChunk; j += 32) m = fmaxf(m, s_scores[warp][j]);
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
    float sum = 0.0f;
    for (int j = lane; j < kChunk; j += 32) {
      const float e = exp2f(s_scores[warp][j] - m);  // 0 past the keys (-inf scores)
      s_scores[warp][j] = e;
      sum += e;
    }
    sum = cuda::warp_sum(sum);
    if (lane == 0) w.stats[((q0 + warp) * p.heads + h) * w.chunks + c] = float2{m, sum};
  }
  __syncthreads();

  // The weighted sum of the values: each group sums its keys, then the groups are added.
  float acc[kDecodeQueries][kVec] = {};
#pragma unroll 4
  for (int pass = 0; pass < L::kPasses; ++pass) {
    const int j = pass * L::kKeysPerPass + slot;
    if (j >= keys) break;
    float v[kVec];
    cuda::load_chunk<DT, kVec>(p.v, (k0 + j) * p.v_token_stride + hk * p.v_head_stride + piece * kVec, v);
#pragma unroll
    for (int i = 0; i < kDecodeQueries; ++i) {
      if (i >= qn) break;
      const float weight = s_scores[i][j];
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[i][e] = fmaf(weight, v[e], acc[i][e]);
    }
  }
#pragma unroll
  for (int i = 0; i < kDecodeQueries; ++i)
#pragma unroll
    for (int e = 0; e < kVec; ++e) s_out[slot][i][piece * kVec + e] = acc[i][e];
  __syncthreads();
  for (int idx = threadIdx.x; idx < qn * Dim; idx += kThreads) {
    const int i = idx / Dim, d = idx % Dim;
    float sum = 0.0f;
#pragma unroll
    for (int g = 0; g < L::kKeysPerPass; ++g) sum += s_out[g][i][d];
    w.out[(((q0 + i) * p.heads + h) * w.chunks + c) * Dim + d] = sum;
  }
}

// One warp per (query, head): the chunks' outputs rescaled to their common maximum and summed.
template <DType DT, int Dim>
__global__ void __launch_bounds__(kThreads) attention_decode_merge_kernel(const AttentionParams p, Partials w) {
  constexpr int kPerLane = Dim / 32;
  const int b = blockIdx.z, h = blockIdx.y;
  const int i = blockIdx.x * (kThreads / 32) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  const int qn = int(p.q_size(b)), kn = int(p.k_size(b));
  if (i >= qn || kn == 0) {
    // (a varlen batch's rows past qn are the next sequence's)
    if (i < qn || (p.q_start == nullptr && i < p.max_q)) {
      auto* out = static_cast<typename cuda::IO<DT>::T*>(p.out) + (p.q_begin(b) + i) * p.o_token_stride +
                  h * p.o_head_stride;
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) out[lane + 32 * e] = cuda::IO<DT>::store(0.0f);
      if (lane == 0) p.lse[h * p.q_tokens + p.q_begin(b) + i] = -INFINITY;
    }
    return;
  }
  const int chunks = int((kn + w.chunk_keys - 1) / w.chunk_keys);
  const int64_t row = (p.q_begin(b) + i) * p.heads + h;
  const float2* stats = w.stats + row * w.chunks;
  float m = -INFINITY;
  for (int c = 0; c < chunks; ++c) m = fmaxf(m, stats[c].x);
  float sum = 0.0f, o[kPerLane] = {};
  for (int c = 0; c < chunks; ++c) {
    const float factor = exp2f(stats[c].x - m);
    sum = fmaf(stats[c].y, factor, sum);
    const float* part = w.out + (row * w.chunks + c) * Dim;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) o[e] = fmaf(part[lane + 32 * e], factor, o[e]);
  }
  const float inv = 1.0f / sum;  // >= 1: the maximum's own key contributes exp2(0)
  auto* out = static_cast<typename cuda::IO<DT>::T*>(p.out) + (p.q_begin(b) + i) * p.o_token_stride +
              h * p.o_head_stride;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) out[lane + 32 * e] = cuda::IO<DT>::store(o[e] * inv);
  if (lane == 0) p.lse[h * p.q_tokens + p.q_begin(b) + i] = (m + log2f(sum)) * attn::kLn2;
}

template <DType DT, int Dim>
void launch_merge(const AttentionParams& p, const Partials& w, cudaStream_t stream) {
  const unsigned row_blocks = unsigned((p.max_q + kThreads / 32 - 1) / (kThreads / 32));
  attention_decode_merge_kernel<DT, Dim>
      <<<dim3(row_blocks, unsigned(p.heads), unsigned(p.batch)), kThreads, 0, stream>>>(p, w);
}

}  // namespace

int64_t attention_chunk_workspace_floats(const AttentionParams& p, int64_t chunks) {
  return p.q_tokens * p.heads * chunks * (p.head_dim + 2);
}

void attention_merge_chunks_cuda(const AttentionParams& p, float* workspace, int64_t chunks, int64_t chunk_keys,
                                 void* stream) {
  if (p.launches_nothing()) return;
  const Partials w = partials(p, workspace, chunks, chunk_keys);
  attn::with_kernel_types(p, [&]<DType DT, int Dim>() { launch_merge<DT, Dim>(p, w, static_cast<cudaStream_t>(stream)); });
}

int64_t attention_decode_chunks(const AttentionParams& p) { return (p.max_k + kChunk - 1) / kChunk; }

void attention_decode_cuda(const AttentionParams& p, float* workspace, void* stream) {
  if (p.launches_nothing()) return;
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t chunks = attention_decode_chunks(p);
  const Partials w = partials(p, workspace, chunks, kChunk);
  attn::with_kernel_types(p, [&]<DType DT, int Dim>() {
    attention_decode_chunk_kernel<DT, Dim>
        <<<dim3(unsigned(chunks), unsigned(p.heads), unsigned(p.batch)), kThreads, 0, s>>>(p, w);
    launch_merge<DT, Dim>(p, w, s);
  });
}

}  // namespace dllm
