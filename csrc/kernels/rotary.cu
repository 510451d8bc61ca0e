// RoPE on CUDA. A thread takes one position, one 16-byte chunk of the first half of a head, and a
// group of kHeads heads: it loads the chunk's cos and sin once for the group, and all of the
// group's x chunks before it stores any, so that 2 x kHeads 16-byte loads are in flight (x and out
// may alias, so nothing would reorder a head's loads above the last head's stores). One head at a
// time kept ~16 KB in flight an SM at SEDD-small's shape, less than HBM's latency needs; walking
// every head in one thread left LLaDA-8B's B 1 at 32 blocks for 132 SMs.
#include <algorithm>

#include "cuda_rows.cuh"
#include "dllm/rotary.h"

namespace dllm {
namespace {

using namespace cuda;

constexpr int kHeads = 4;

// kVec pairs a thread a head: 16-byte loads and stores (kVec = Vec<D>::kSize), or one pair (any
// half, any alignment).
template <DType D, int kVec>
__global__ void __launch_bounds__(kThreads) rotary_kernel(RotaryParams p) {
  const int64_t per_head = p.half / kVec, groups = (p.heads + kHeads - 1) / kHeads;
  const int64_t items = p.batch * p.seq * groups * per_head;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pos_group = item / per_head, first = (item - pos_group * per_head) * kVec;
    const int64_t pos = pos_group / groups, h0 = (pos_group - pos * groups) * kHeads;
    const int64_t b = pos / p.seq, s = pos - b * p.seq;
    const int64_t table = b * p.table_batch_stride + s * p.half + first;
    float c[kVec], sn[kVec];
    load_floats<kVec>(p.cos, table, c);
    load_floats<kVec>(p.sin, table, sn);
    if (p.inverse) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) sn[j] = -sn[j];
    }
    const int64_t x0 = b * p.x_batch_stride + s * p.x_seq_stride + h0 * p.x_head_stride + first;
    const int64_t out0 = (pos * p.heads + h0) * 2 * p.half + first;
    const int64_t n = p.heads - h0 < kHeads ? p.heads - h0 : kHeads;
    float x1[kHeads][kVec], x2[kHeads][kVec];
#pragma unroll
    for (int k = 0; k < kHeads; ++k) {
      if (k < n) {
        load_chunk<D, kVec>(p.x, x0 + k * p.x_head_stride, x1[k]);
        load_chunk<D, kVec>(p.x, x0 + k * p.x_head_stride + p.half, x2[k]);
      }
    }
#pragma unroll
    for (int k = 0; k < kHeads; ++k) {
      if (k < n) {
        float lo[kVec], hi[kVec];
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          lo[j] = x1[k][j] * c[j] - x2[k][j] * sn[j];
          hi[j] = x2[k][j] * c[j] + x1[k][j] * sn[j];
        }
        store_chunk<D, kVec>(p.out, out0 + k * 2 * p.half, lo);
        store_chunk<D, kVec>(p.out, out0 + k * 2 * p.half + p.half, hi);
      }
    }
  }
}

template <DType D>
void launch(const RotaryParams& p, cudaStream_t stream) {
  constexpr int kVec = Vec<D>::kSize;
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool vector = p.half % kVec == 0 && aligned(p.x) && aligned(p.out) && aligned(p.cos) && aligned(p.sin) &&
                      p.x_batch_stride % kVec == 0 && p.x_seq_stride % kVec == 0 && p.x_head_stride % kVec == 0 &&
                      p.table_batch_stride % 4 == 0;
  const int64_t groups = (p.heads + kHeads - 1) / kHeads;
  const int64_t items = p.batch * p.seq * groups * (vector ? p.half / kVec : p.half);
  const unsigned grid = unsigned(std::min<int64_t>((items + kThreads - 1) / kThreads, int64_t(1) << 20));
  if (vector) rotary_kernel<D, kVec><<<grid, kThreads, 0, stream>>>(p);
  else rotary_kernel<D, 1><<<grid, kThreads, 0, stream>>>(p);
}

}  // namespace

void rotary_cuda(const RotaryParams& p, void* stream) {
  if (p.batch * p.seq * p.heads * p.half == 0) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  with_dtype(p.dtype, [&]<DType D>() { launch<D>(p, s); });
}

}  // namespace dllm
