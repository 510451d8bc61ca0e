// CUDA kernel of sample_categorical: the grouped Gumbel-max of dllm/sample_categorical.h.
//
// One block of 256 threads per row. Pass 1 streams the row once: each warp owns whole groups
// and reduces their online log-sum-exp with shuffles, so the streaming loop has no block
// barriers. Loads are 16-byte vectors from the 16-byte-aligned address at or below the row
// start; elements outside the row or group are masked, which makes rows of any length and
// alignment (V = 50258 bf16 rows start at 4-byte boundaries) take the vector path. Pass 2
// re-reads only the chosen group (4 KB of bf16, usually still in L2) to pick a subgroup and a
// token inside it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "cuda_rows.cuh"
#include "dllm/sample_categorical.h"

namespace dllm {
namespace {

using namespace cuda;

__device__ void write_row(const CategoricalParams& p, int64_t r, int64_t token, float logprob,
                          CategoricalStatus status) {
  if (threadIdx.x != 0) return;
  p.tokens[r] = token;
  p.logprob[r] = logprob;
  if (status != kCategoricalOk) report_error(p.first_error, (r << 2) | status);
}

struct Scratch {
  ArgMax argmax[kWarps];
  MaxSum maxsum[kWarps];
  float subgroup_lse[kSubgroupsPerGroup];
};

// One row by the whole block. Every early return is taken by all threads together.
template <DType D>
__device__ void sample_row(const CategoricalParams& p, int64_t r, uint64_t seed, uint64_t offset,
                           float* group_lse, Scratch& scratch) {
  constexpr int kVec = Vec<D>::kSize;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t vocab = p.vocab;
  const int64_t groups = (vocab + kCategoricalGroup - 1) / kCategoricalGroup;

  const float temperature = p.temperature ? p.temperature[r] : p.scalar_temperature;
  if (!(temperature >= 0.0f) || temperature == kInf) return write_row(p, r, -1, kNaN, kBadTemperature);
  const bool greedy = temperature == 0.0f;
  const float scale = greedy ? 1.0f : 1.0f / temperature;
  const RowView<D> view(static_cast<const char*>(p.logits) + r * p.row_stride * RowView<D>::kElemBytes, vocab);

  // Pass 1: per-group log-sum-exp (and the argmax when greedy), one warp per group.
  ArgMax best{-kInf, INT64_MAX};
  bool bad = false;
  for (int64_t g = warp; g < groups; g += kWarps) {
    const int64_t lo = g * kCategoricalGroup;
    const int64_t hi = lo + kCategoricalGroup < vocab ? lo + kCategoricalGroup : vocab;
    const auto split = view.split(lo, hi);
    MaxSum acc{-kInf, 0.0f};
    auto element = [&](int64_t idx) {  // one outside the row's whole chunks
      const float y = view.at(idx) * scale;
      bad |= !(y < kInf);
      if (greedy && y > best.v) best = ArgMax{y, idx};
      acc = merge(acc, MaxSum{y, 1.0f});
    };
#pragma unroll 1
    for (int64_t idx = lo + lane; idx < split.inner_lo; idx += 32) element(idx);
    const int64_t c_end = split.end;
    for (int64_t c0 = split.begin + lane; c0 < c_end; c0 += 32 * kUnroll) {
      uint4 raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (c0 + 32 * u < c_end) raw[u] = __ldg(view.base + c0 + 32 * u);
      float y[kUnroll][kVec];
      float m = -kInf;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          const int64_t idx = view.index(c0 + 32 * u, j);
          const bool valid = c0 + 32 * u < c_end && idx >= lo && idx < hi;
          y[u][j] = valid ? Vec<D>::get(raw[u], j) * scale : -kInf;
          bad |= valid && !(y[u][j] < kInf);  // NaN, +inf, or overflow by a tiny temperature
          m = fmaxf(m, y[u][j]);
          if (greedy && y[u][j] > best.v) best = ArgMax{y[u][j], idx};
        }
      }
      if (m == -kInf) continue;
      float s = 0.0f;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
#pragma unroll
        for (int j = 0; j < kVec; ++j) s += __expf(y[u][j] - m);
      acc = merge(acc, MaxSum{m, s});
    }
#pragma unroll 1
    for (int64_t idx = split.inner_hi + lane; idx < hi; idx += 32) element(idx);
    acc = warp_max_sum(acc);
    if (lane == 0) group_lse[g] = acc.m == -kInf ? -kInf : acc.m + __logf(acc.s);
  }
  // Also the barrier that publishes group_lse.
  if (__syncthreads_or(bad)) return write_row(p, r, -1, kNaN, kNonFinite);
  if (greedy) best = block_argmax(best, scratch.argmax);

  MaxSum row{-kInf, 0.0f};
  for (int64_t g = threadIdx.x; g < groups; g += kThreads) row = merge(row, MaxSum{group_lse[g], 1.0f});
  row = block_max_sum(row, scratch.maxsum);
  if (row.m == -kInf) return write_row(p, r, -1, kNaN, kAllMinusInf);
  const float row_lse = row.m + __logf(row.s);

  if (!greedy) {
    best.i = draw_hierarchical(view, vocab, group_lse, [scale](int64_t, float v) { return v * scale; }, seed, offset,
                               uint64_t(r), scratch.argmax, scratch.subgroup_lse);
  }
  write_row(p, r, best.i, view.at(best.i) * scale - row_lse, kCategoricalOk);
}

template <DType D>
__global__ void __launch_bounds__(kThreads) sample_categorical_kernel(CategoricalParams p) {
  extern __shared__ float group_lse[];
  __shared__ Scratch scratch;
  uint64_t seed, offset;
  p.rng.unpack(seed, offset);
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    sample_row<D>(p, r, seed, offset, group_lse, scratch);
    __syncthreads();  // group_lse and the scratch arrays are reused by the next row
  }
}

}  // namespace

void sample_categorical_cuda(const CategoricalParams& p, void* stream) {
  if (p.rows == 0) return;
  const int64_t groups = (p.vocab + kCategoricalGroup - 1) / kCategoricalGroup;
  const size_t smem = size_t(groups) * sizeof(float);
  const unsigned grid = unsigned(p.rows < 2147483647 ? p.rows : 2147483647);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::kFloat32: sample_categorical_kernel<DType::kFloat32><<<grid, kThreads, smem, s>>>(p); break;
    case DType::kBFloat16: sample_categorical_kernel<DType::kBFloat16><<<grid, kThreads, smem, s>>>(p); break;
    case DType::kFloat16: sample_categorical_kernel<DType::kFloat16><<<grid, kThreads, smem, s>>>(p); break;
  }
}

}  // namespace dllm
