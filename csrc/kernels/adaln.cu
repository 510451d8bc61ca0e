// adaLN on CUDA: a warp a row, read from memory once. A lane holds up to kChunks 16-byte chunks of
// its row in registers, so rows of up to 32 * kChunks chunks (1024 bf16 elements; SEDD-small's 768)
// are loaded with all of a lane's loads in flight together and never re-read. Longer rows take
// three passes (mean, variance, output) that re-read the row from L1 / L2, recomputing the updated
// stream x + gate * update, which is rounded the same way each time.
#include <algorithm>

#include "cuda_rows.cuh"
#include "dllm/adaln.h"

namespace dllm {
namespace {

using namespace cuda;

constexpr int kChunks = 4;

template <DType D, int kVec, bool kUpdate>
__global__ void __launch_bounds__(kThreads) adaln_kernel(AdaLNParams p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t dim = p.dim;
  const float inv_dim = 1.0f / float(dim);
  for (int64_t r = int64_t(blockIdx.x) * kWarps + warp; r < p.rows; r += int64_t(gridDim.x) * kWarps) {
    const int64_t b = r / p.seq, first = r * dim;
    // The row's elements i .. i + kVec: x, or x + gate * update rounded as it is stored.
    const auto row = [&](int64_t i, float (&v)[kVec]) {
      load_chunk<D, kVec>(p.x, first + i, v);
      if constexpr (kUpdate) {
        float u[kVec], g[kVec];
        load_chunk<D, kVec>(p.update, first + i, u);
        load_floats<kVec>(p.gate, b * dim + i, g);
#pragma unroll
        for (int j = 0; j < kVec; ++j) v[j] = IO<D>::to_float(IO<D>::store(v[j] + g[j] * u[j]));
      }
    };
    const auto finish = [&](int64_t i, const float (&v)[kVec], float mean, float rstd) {
      float w[kVec], sh[kVec], o[kVec];
      if constexpr (kUpdate) store_chunk<D, kVec>(p.x_next, first + i, v);
      load_floats<kVec>(p.w, b * dim + i, w);
      load_floats<kVec>(p.shift, b * dim + i, sh);
#pragma unroll
      for (int j = 0; j < kVec; ++j) o[j] = (v[j] - mean) * rstd * w[j] + sh[j];
      store_chunk<D, kVec>(p.out, first + i, o);
    };
    if (dim <= 32 * kChunks * kVec) {
      float v[kChunks][kVec];
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        if ((c * 32 + lane) * kVec < dim) row((c * 32 + lane) * kVec, v[c]);
      }
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        if ((c * 32 + lane) * kVec < dim) {
#pragma unroll
          for (int j = 0; j < kVec; ++j) sum += v[c][j];
        }
      }
      const float mean = warp_sum(sum) * inv_dim;
      float sq = 0.0f;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        if ((c * 32 + lane) * kVec < dim) {
#pragma unroll
          for (int j = 0; j < kVec; ++j) sq += (v[c][j] - mean) * (v[c][j] - mean);
        }
      }
      const float rstd = rsqrtf(warp_sum(sq) * inv_dim + p.eps);
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        if ((c * 32 + lane) * kVec < dim) finish((c * 32 + lane) * kVec, v[c], mean, rstd);
      }
      continue;
    }
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
      float v[kVec];
      row(i, v);
      finish(i, v, mean, rstd);
    }
  }
}

template <DType D, bool kUpdate>
void launch(const AdaLNParams& p, cudaStream_t stream) {
  constexpr int kVec = Vec<D>::kSize;
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
  with_dtype(p.dtype, [&]<DType D>() { launch<D>(p, s); });
}

}  // namespace dllm
