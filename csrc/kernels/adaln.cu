// adaLN on CUDA: a warp a row. The row is read from memory once; the mean, the variance and the
// output passes re-read it from L1 / L2 (a row of SEDD-small is 1.5 KB), recomputing the updated
// stream x + gate * update, which is rounded the same way each time.
#include <algorithm>

#include "cuda_rows.cuh"
#include "dllm/adaln.h"

namespace dllm {
namespace {

using namespace cuda;

// kVec consecutive elements from element i: one 16-byte access (kVec = Vec<D>::kSize) or one element.
template <DType D, int kVec>
__device__ void load(const void* base, int64_t i, float (&v)[kVec]) {
  using E = Elem<D>;
  if constexpr (kVec == 1) {
    v[0] = E::to_float(__ldg(static_cast<const typename E::T*>(base) + i));
  } else {
    const uint4 c = __ldg(reinterpret_cast<const uint4*>(static_cast<const typename E::T*>(base) + i));
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[j] = Vec<D>::get(c, j);
  }
}
template <DType D, int kVec>
__device__ void store(void* base, int64_t i, const float (&v)[kVec]) {
  using E = Elem<D>;
  auto* at = static_cast<typename E::T*>(base) + i;
  if constexpr (kVec == 1) {
    *at = E::from_float(v[0]);
  } else {
    uint4 c;
#pragma unroll
    for (int j = 0; j < kVec; ++j) Vec<D>::put(c, j, E::from_float(v[j]));
    *reinterpret_cast<uint4*>(at) = c;
  }
}
template <int kVec>
__device__ void load_floats(const float* base, int64_t i, float (&v)[kVec]) {
  if constexpr (kVec == 1) {
    v[0] = __ldg(base + i);
  } else {
#pragma unroll
    for (int j = 0; j < kVec; j += 4) {
      const float4 f = __ldg(reinterpret_cast<const float4*>(base + i + j));
      v[j] = f.x, v[j + 1] = f.y, v[j + 2] = f.z, v[j + 3] = f.w;
    }
  }
}

__device__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <DType D, int kVec, bool kUpdate>
__global__ void __launch_bounds__(kThreads) adaln_kernel(AdaLNParams p) {
  using E = Elem<D>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t dim = p.dim;
  const float inv_dim = 1.0f / float(dim);
  for (int64_t r = int64_t(blockIdx.x) * kWarps + warp; r < p.rows; r += int64_t(gridDim.x) * kWarps) {
    const int64_t b = r / p.seq, first = r * dim;
    // The row's elements i .. i + kVec: x, or x + gate * update rounded as it is stored.
    const auto row = [&](int64_t i, float (&v)[kVec]) {
      load<D, kVec>(p.x, first + i, v);
      if constexpr (kUpdate) {
        float u[kVec], g[kVec];
        load<D, kVec>(p.update, first + i, u);
        load_floats<kVec>(p.gate, b * dim + i, g);
#pragma unroll
        for (int j = 0; j < kVec; ++j) v[j] = E::to_float(E::from_float(v[j] + g[j] * u[j]));
      }
    };
    float sum = 0.0f;
    for (int64_t i = int64_t(lane) * kVec; i < dim; i += 32 * kVec) {
      float v[kVec];
      row(i, v);
#pragma unroll
      for (int j = 0; j < kVec; ++j) sum += v[j];
    }
    const float mean = warp_sum(sum) * inv_dim;
    float sq = 0.0f;
    for (int64_t i = int64_t(lane) * kVec; i < dim; i += 32 * kVec) {
      float v[kVec];
      row(i, v);
#pragma unroll
      for (int j = 0; j < kVec; ++j) sq += (v[j] - mean) * (v[j] - mean);
    }
    const float rstd = rsqrtf(warp_sum(sq) * inv_dim + p.eps);
    for (int64_t i = int64_t(lane) * kVec; i < dim; i += 32 * kVec) {
      float v[kVec], w[kVec], sh[kVec], o[kVec];
      row(i, v);
      if constexpr (kUpdate) store<D, kVec>(p.x_next, first + i, v);
      load_floats<kVec>(p.w, b * dim + i, w);
      load_floats<kVec>(p.shift, b * dim + i, sh);
#pragma unroll
      for (int j = 0; j < kVec; ++j) o[j] = (v[j] - mean) * rstd * w[j] + sh[j];
      store<D, kVec>(p.out, first + i, o);
    }
  }
}

template <DType D, bool kUpdate>
void launch(const AdaLNParams& p, cudaStream_t stream) {
  constexpr int kElem = D == DType::kFloat32 ? 4 : 2, kVec = 16 / kElem;
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  // Rows start on 16-byte boundaries when dim fills whole chunks; the float [B, dim] tables too.
  const bool vector = p.dim % kVec == 0 && aligned(p.x) && aligned(p.out) && aligned(p.w) && aligned(p.shift) &&
                      (!kUpdate || (aligned(p.update) && aligned(p.x_next) && aligned(p.gate)));
  const unsigned grid = unsigned(std::min<int64_t>((p.rows + kWarps - 1) / kWarps, int64_t(1) << 20));
  if (vector) adaln_kernel<D, kVec, kUpdate><<<grid, kThreads, 0, stream>>>(p);
  else adaln_kernel<D, 1, kUpdate><<<grid, kThreads, 0, stream>>>(p);
}

template <DType D>
void launch(const AdaLNParams& p, cudaStream_t stream) {
  if (p.update != nullptr) launch<D, true>(p, stream);
  else launch<D, false>(p, stream);
}

}  // namespace

void adaln_cuda(const AdaLNParams& p, void* stream) {
  if (p.rows == 0 || p.dim == 0) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::kFloat32: launch<DType::kFloat32>(p, s); break;
    case DType::kBFloat16: launch<DType::kBFloat16>(p, s); break;
    case DType::kFloat16: launch<DType::kFloat16>(p, s); break;
  }
}

}  // namespace dllm
