// RoPE on CUDA. A thread takes one position and one 16-byte chunk of the first half of a head, and
// walks the heads: the chunk's cos and sin are loaded once for all of them, and the index
// arithmetic once per kVec x heads pairs (a bandwidth-bound pass must not be issue-bound).
#include <algorithm>

#include "cuda_rows.cuh"
#include "dllm/rotary.h"

namespace dllm {
namespace {

using namespace cuda;

// Vector: kVec pairs a thread a head, 16-byte loads and stores. Scalar: one pair (any half, any
// alignment).
template <DType D, bool kVector>
__global__ void __launch_bounds__(kThreads) rotary_kernel(RotaryParams p) {
  constexpr int kElem = D == DType::kFloat32 ? 4 : 2;
  constexpr int kVec = kVector ? 16 / kElem : 1;
  const int64_t per_position = p.half / kVec;
  const int64_t items = p.batch * p.seq * per_position;
  const float sign = p.inverse ? -1.0f : 1.0f;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pos = item / per_position, first = (item - pos * per_position) * kVec;
    const int64_t b = pos / p.seq, s = pos - b * p.seq;
    const int64_t table = b * p.table_batch_stride + s * p.half + first;
    float c[kVec], sn[kVec];
    if constexpr (kVector) {  // 16-byte aligned: kVec is a multiple of 4, as are half and the strides
#pragma unroll
      for (int j = 0; j < kVec; j += 4) {
        const float4 cj = __ldg(reinterpret_cast<const float4*>(p.cos + table + j));
        const float4 sj = __ldg(reinterpret_cast<const float4*>(p.sin + table + j));
        c[j] = cj.x, c[j + 1] = cj.y, c[j + 2] = cj.z, c[j + 3] = cj.w;
        sn[j] = sign * sj.x, sn[j + 1] = sign * sj.y, sn[j + 2] = sign * sj.z, sn[j + 3] = sign * sj.w;
      }
    } else {
      c[0] = __ldg(p.cos + table);
      sn[0] = sign * __ldg(p.sin + table);
    }
    const char* x = static_cast<const char*>(p.x) + (b * p.x_batch_stride + s * p.x_seq_stride + first) * kElem;
    char* out = static_cast<char*>(p.out) + (pos * p.heads * 2 * p.half + first) * kElem;
    for (int64_t h = 0; h < p.heads; ++h) {
      const char* xh = x + h * p.x_head_stride * kElem;
      char* oh = out + h * 2 * p.half * kElem;
      if constexpr (kVector) {
        const uint4 a = __ldg(reinterpret_cast<const uint4*>(xh));
        const uint4 z = __ldg(reinterpret_cast<const uint4*>(xh + p.half * kElem));
        uint4 lo, hi;
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          const float x1 = Vec<D>::get(a, j), x2 = Vec<D>::get(z, j);
          Vec<D>::put(lo, j, Elem<D>::from_float(x1 * c[j] - x2 * sn[j]));
          Vec<D>::put(hi, j, Elem<D>::from_float(x2 * c[j] + x1 * sn[j]));
        }
        *reinterpret_cast<uint4*>(oh) = lo;
        *reinterpret_cast<uint4*>(oh + p.half * kElem) = hi;
      } else {
        using E = Elem<D>;
        const auto* xt = reinterpret_cast<const typename E::T*>(xh);
        auto* ot = reinterpret_cast<typename E::T*>(oh);
        const float x1 = E::to_float(__ldg(xt)), x2 = E::to_float(__ldg(xt + p.half));
        ot[0] = E::from_float(x1 * c[0] - x2 * sn[0]);
        ot[p.half] = E::from_float(x2 * c[0] + x1 * sn[0]);
      }
    }
  }
}

template <DType D>
void launch(const RotaryParams& p, cudaStream_t stream) {
  constexpr int kElem = D == DType::kFloat32 ? 4 : 2, kVec = 16 / kElem;
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool vector = p.half % kVec == 0 && aligned(p.x) && aligned(p.out) && aligned(p.cos) && aligned(p.sin) &&
                      p.x_batch_stride % kVec == 0 && p.x_seq_stride % kVec == 0 && p.x_head_stride % kVec == 0 &&
                      p.table_batch_stride % 4 == 0;
  const int64_t items = p.batch * p.seq * (vector ? p.half / kVec : p.half);
  const unsigned grid = unsigned(std::min<int64_t>((items + kThreads - 1) / kThreads, int64_t(1) << 20));
  if (vector) rotary_kernel<D, true><<<grid, kThreads, 0, stream>>>(p);
  else rotary_kernel<D, false><<<grid, kThreads, 0, stream>>>(p);
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
