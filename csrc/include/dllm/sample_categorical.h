// Exact categorical sampling from logits: one pass over the row, hierarchical Gumbel-max.
//
// The row is split into fixed groups of kCategoricalGroup logical indices, and each group into
// subgroups of kCategoricalSubgroup. The streaming pass computes every group's log-sum-exp (one
// exp per element, which the log-probability needs anyway). A Gumbel-max over the group
// log-masses picks a group; the group is re-read (it is small and usually still cached) to get
// its subgroups' log-masses and pick a subgroup the same way; a Gumbel-max inside that subgroup
// picks the token. P(token) = P(group) P(subgroup | group) P(token | subgroup), so the draw is
// exact, while random numbers are spent on about V / 2048 + 8 + 256 entries instead of V.
// The sizes are constants of the algorithm, never derived from a launch configuration, so a
// seed gives the same token on any launch shape.
#pragma once
#include <cstdint>

#include "dllm/common.h"
#include "dllm/philox.h"

namespace dllm {

constexpr int64_t kCategoricalGroup = 2048;
constexpr int64_t kCategoricalSubgroup = 256;
constexpr int64_t kSubgroupsPerGroup = kCategoricalGroup / kCategoricalSubgroup;

// Per-row outcome. Kernels report the first bad row as (row << 2) | status, so the smallest
// encoded value names the lowest bad row; kNoError is larger than any encoding.
enum CategoricalStatus : int64_t { kCategoricalOk = 0, kNonFinite = 1, kAllMinusInf = 2, kBadTemperature = 3 };
constexpr int64_t kNoError = INT64_MAX;

struct CategoricalParams {
  const void* logits = nullptr;  // [rows, vocab], row stride `row_stride` elements, unit column stride
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t vocab = 0;
  int64_t row_stride = 0;
  const float* temperature = nullptr;  // [rows] per-row temperature, or nullptr for scalar_temperature
  float scalar_temperature = 1.0f;
  RngState rng;
  int64_t* tokens = nullptr;   // [rows]; -1 on a bad row
  float* logprob = nullptr;    // [rows]; NaN on a bad row
  int64_t* first_error = nullptr;  // CUDA only: one int64 preset to kNoError, atomically lowered
  int64_t l2_prefetch_blocks = 0;  // CUDA only: DLLM_L2_PREFETCH (cuda_rows.cuh)
  bool async_copies = false;       // CUDA only: DLLM_ASYNC_COPIES (cuda_async_rows.cuh)
};

// Every kernel tempers logits as (v - max) * inverse_temperature(T): log-weights relative to the
// row's max stay small numbers near it, so float32 resolves them (and the Gumbel noise added to
// them) however large the logits or 1/T are. 1/T is capped at float's largest value: past it (a
// subnormal T) every value below the max goes to -inf and ties at the max are drawn uniformly,
// the limit T -> 0 reaches.
DLLM_HD float inverse_temperature(float temperature) {
  const float s = 1.0f / temperature;
  return s < 3.4028234663852886e38f ? s : 3.4028234663852886e38f;
}

// Rows [row_begin, row_end) on the calling thread; returns the lowest encoded error or kNoError.
int64_t sample_categorical_cpu(const CategoricalParams& p, int64_t row_begin, int64_t row_end);

// All rows, asynchronously on `stream` (a cudaStream_t).
void sample_categorical_cuda(const CategoricalParams& p, void* stream);

}  // namespace dllm
