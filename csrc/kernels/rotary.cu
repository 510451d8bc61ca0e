// RoPE on CUDA. A thread takes one position and one 16-byte chunk of the first half of a head, and
// walks the heads: the chunk's cos and sin are loaded once for all of them, and the index
// arithmetic once per kVec x heads pairs (a bandwidth-bound pass must not be issue-bound).
#include <algorithm>

#include "cuda_rows.cuh"
#include "dllm/rotary.h"

namespace dllm {
namespace {

using namespace cuda;

// kVec pairs a thread a head: 16-byte loads and stores (kVec = Vec<D>::kSize), or one pair (any
// half, any alignment).
template <DType D, int kVec>
__global__ void __launch_bounds__(kThreads) rotary_kernel(RotaryParams p) {
  const int64_t per_position = p.half / kVec;
  const int64_t items = p.batch * p.seq * per_position;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pos = item / per_position, first = (item - pos * per_position) * kVec;
    const int64_t b = pos / p.seq, s = pos - b * p.seq;
    const int64_t table = b * p.table_batch_stride + s * p.half + first;
    float c[kVec], sn[kVec];
    load_floats<kVec>(p.cos, table, c);
    load_floats<kVec>(p.sin, table, sn);
    if (p.inverse) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) sn[j] = -sn[j];
    }
    const int64_t x0 = b * p.x_batch_stride + s * p.x_seq_stride + first, out0 = pos * p.heads * 2 * p.half + first;
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t xh = x0 + h * p.x_head_stride, oh = out0 + h * 2 * p.half;
      float x1[kVec], x2[kVec], lo[kVec], hi[kVec];
      load_chunk<D, kVec>(p.x, xh, x1);
      load_chunk<D, kVec>(p.x, xh + p.half, x2);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        lo[j] = x1[j] * c[j] - x2[j] * sn[j];
        hi[j] = x2[j] * c[j] + x1[j] * sn[j];
      }
      store_chunk<D, kVec>(p.out, oh, lo);
      store_chunk<D, kVec>(p.out, oh + p.half, hi);
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
  const int64_t items = p.batch * p.seq * (vector ? p.half / kVec : p.half);
  const unsigned grid = unsigned(std::min<int64_t>((items + kThreads - 1) / kThreads, int64_t(1) << 20));
  if (vector) rotary_kernel<D, kVec><<<grid, kThreads, 0, stream>>>(p);
  else rotary_kernel<D, 1><<<grid, kThreads, 0, stream>>>(p);
}

}  // namespace

void rotary_cuda(const RotaryParams& p, void* stream) {
  if (p.batch * p.seq * p.heads * p.half == 0) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::kFloat32: launch<DType::kFloat32>(p, s); break;
    case DType::kBFloat16: launch<DType::kBFloat16>(p, s); break;
    case DType::kFloat16: launch<DType::kFloat16>(p, s); break;
  }
}

}  // namespace dllm
