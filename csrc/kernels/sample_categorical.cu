// CUDA kernel of sample_categorical: the grouped Gumbel-max of dllm/sample_categorical.h.
//
// One block of 256 threads per row. Pass 1 streams the row once: each warp owns whole groups
// and reduces their online log-sum-exp with shuffles, so the streaming loop has no block
// barriers. The chunks wholly inside a group are loaded as 16-byte vectors and the few elements
// of chunks straddling its ends one by one, so rows of any length and alignment (V = 50258 bf16
// rows start at 4-byte boundaries) take the vector path (cuda_rows.cuh's for_batches; through
// shared memory with DLLM_ASYNC_COPIES, cuda_async_rows.cuh). Pass 2
// re-reads only the chosen group (4 KB of bf16, usually still in L2) to pick a subgroup and a
// token inside it, or, greedy, the group's first element at the row's max.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "cuda_rows.cuh"
#include "cuda_async_rows.cuh"
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

// Row r of the logits (rows row_stride elements apart).
template <DType D>
__device__ RowView<D> logits_row(const CategoricalParams& p, int64_t r) {
  return RowView<D>(static_cast<const char*>(p.logits) + r * p.row_stride * RowView<D>::kElemBytes);
}

// One row by the whole block. Every early return is taken by all threads together.
// group_lw holds 2 x groups floats: the groups' tempered sums (turned into log-masses in place),
// then their raw maxima. ring: pass 1's when kAsync (for_warp_groups_async).
template <DType D, bool kAsync>
__device__ void sample_row(const CategoricalParams& p, int64_t r, uint64_t seed, uint64_t offset, uint4* ring,
                           float* group_lw, Scratch& scratch) {
  const int lane = threadIdx.x & 31;
  const int64_t vocab = p.vocab;
  const int64_t groups = (vocab + kCategoricalGroup - 1) / kCategoricalGroup;
  float* group_max = group_lw + groups;

  const float temperature = p.temperature ? p.temperature[r] : p.scalar_temperature;
  if (!(temperature >= 0.0f) || temperature == kInf) return write_row(p, r, -1, kNaN, kBadTemperature);
  const bool greedy = temperature == 0.0f;
  const float scale = greedy ? 1.0f : inverse_temperature(temperature);
  const RowView<D> view = logits_row<D>(p, r);

  // Pass 1, one warp per group: its raw max and sum of exp((v - max) * scale) (the row's max is
  // not known yet). A NaN or +inf makes its group's sum NaN, and so the row's below, which is how
  // they are found.
  const float scale_log2 = log2e_times(scale);
  MaxSum acc;
  auto begin = [&](int64_t g) {
    if (p.l2_prefetch_blocks > 0) prefetch_next_group(view, g, groups, vocab);
    acc = MaxSum{-kInf, 0.0f};
  };
  auto batch = [&](auto& v, const auto&, int) { add_batch_fma(acc, v, scale, scale_log2, batch_max(v)); };
  auto end = [&](int64_t g) {
    acc = warp_max_sum(acc, scale);
    if (lane == 0) group_max[g] = acc.m, group_lw[g] = acc.s;
  };
  if constexpr (kAsync) {
    for_warp_groups_async<Order::kAny>(view, vocab, ring, begin, batch, end);
  } else {
    for_warp_groups<Order::kAny>(view, vocab, begin, batch, end);
  }
  if (p.l2_prefetch_blocks > 0 && lane == 0) {
    const int64_t later = later_row(r, p.rows, p.l2_prefetch_blocks);
    if (later < p.rows) prefetch_first_group(logits_row<D>(p, later), groups, vocab);
  }
  __syncthreads();  // publishes group_lw and group_max

  // One reduction of the groups gives the row's max and its tempered mass relative to it; then
  // every group's log-mass relative to that max (the tempered log-weights of
  // dllm/sample_categorical.h), each by the thread that read its sum.
  MaxSum row{-kInf, 0.0f};
  for (int64_t g = threadIdx.x; g < groups; g += kThreads) row = merge(row, MaxSum{group_max[g], group_lw[g]}, scale);
  row = block_max_sum(row, scratch.maxsum, scale);
  if (!(row.s == row.s)) return write_row(p, r, -1, kNaN, kNonFinite);  // a NaN group sum stays NaN in merge
  if (row.m == -kInf) return write_row(p, r, -1, kNaN, kAllMinusInf);
  const float row_max = row.m, row_lse = __logf(row.s);
  for (int64_t g = threadIdx.x; g < groups; g += kThreads)
    group_lw[g] = tempered_log_mass(group_max[g], group_lw[g], row_max, scale);
  __syncthreads();  // publishes group_lw to draw_hierarchical

  auto log_weight = [row_max, scale](int64_t, float v) { return (v - row_max) * scale; };
  const int64_t token = greedy ? argmax_by_groups(view, vocab, group_max, scratch.argmax)
                               : draw_hierarchical(view, vocab, group_lw, log_weight, seed, offset, uint64_t(r),
                                                   scratch.argmax, scratch.subgroup_lse);
  write_row(p, r, token, log_weight(token, view.at(token)) - row_lse, kCategoricalOk);
}

// At least 3 blocks per SM (80 registers, no spills): left free, ptxas spills the float32 kernel.
// The ring's walk (kAsync, DLLM_ASYNC_COPIES) is a kernel apart: beside the register path in one
// kernel, ptxas spilled at 80 registers (the ring's walk alone took 72).
template <DType D, bool kAsync>
__global__ void __launch_bounds__(kThreads, 3) sample_categorical_kernel(CategoricalParams p) {
  extern __shared__ uint4 dynamic_smem[];  // pass 1's ring when kAsync, then group_lw
  __shared__ Scratch scratch;
  uint4* ring = kAsync ? dynamic_smem : nullptr;
  float* group_lw = reinterpret_cast<float*>(kAsync ? dynamic_smem + kAsyncRingChunks : dynamic_smem);
  uint64_t seed, offset;
  p.rng.unpack(seed, offset);
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    sample_row<D, kAsync>(p, r, seed, offset, ring, group_lw, scratch);
    __syncthreads();  // group_lw and the scratch arrays are reused by the next row
  }
}

}  // namespace

void sample_categorical_cuda(const CategoricalParams& p, void* stream) {
  if (p.rows == 0) return;
  const int64_t groups = (p.vocab + kCategoricalGroup - 1) / kCategoricalGroup;
  const size_t smem = 2 * size_t(groups) * sizeof(float) + (p.async_copies ? kAsyncRingBytes : 0);
  const unsigned grid = unsigned(p.rows < 2147483647 ? p.rows : 2147483647);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  with_dtype(p.dtype, [&]<DType D>() {
    if (p.async_copies) {
      allow_dynamic_smem<sample_categorical_kernel<D, true>>(smem);
      sample_categorical_kernel<D, true><<<grid, kThreads, smem, s>>>(p);
    } else {
      sample_categorical_kernel<D, false><<<grid, kThreads, smem, s>>>(p);
    }
  });
}

}  // namespace dllm
