// Argument checks shared by the torch bindings: errors name the op and the offending argument.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cstdint>

#include "dllm/common.h"

namespace dllm::binding {

inline DType logits_dtype(const char* op, const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default:
      TORCH_CHECK_TYPE(false, op, ": ", name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

// A positive temperature as the float32 the kernels divide by, clamped into [floor, FLT_MAX]: a
// larger double would round to +inf (rejected, or NaN keys), a smaller one to 0 (argmax). The
// clamped value draws the same distribution to float32's precision: logits / FLT_MAX are all 0
// (uniform), and FLT_MIN still orders any two logits more than 1e-30 apart by a factor of e^(1e8).
inline float temperature_as_float(double t, double floor = FLT_MIN) {
  return t > 0.0 ? float(std::clamp(t, floor, double(FLT_MAX))) : float(t);
}

// Per-row temperatures as float32, float64 ones clamped as above (narrower dtypes already fit);
// NaN, infinite and negative values pass unchanged, for the kernels to reject.
inline at::Tensor temperatures_as_float(const at::Tensor& t) {
  if (t.scalar_type() != at::kDouble) return t.to(at::kFloat);
  return at::where(at::isfinite(t) & (t > 0), t.clamp(FLT_MIN, FLT_MAX), t).to(at::kFloat);
}

// A read-only [rows, V] view with unit column stride, copying only when no such view exists.
// Any row stride works, 0 included: a row broadcast over a batch is read in place.
inline at::Tensor as_rows(const at::Tensor& t) {
  at::Tensor rows = t.reshape({-1, t.size(-1)});
  if (rows.size(1) > 1 && rows.stride(1) != 1) rows = rows.contiguous();
  return rows;
}

// Runs fn(begin, end) -> encoded error over [0, n) on torch's intra-op threads and returns the
// smallest encoded error any block reported (the kernels encode the row in the high bits). Blocks
// of `grain` rows are dealt to the threads in turn rather than in one contiguous chunk each: the
// work is often bunched (the kernels skip unmasked positions, and a block sampler's masked ones
// are a suffix of the canvas), which would leave all but one thread idle.
template <typename Fn>
int64_t parallel_min_error(int64_t n, int64_t grain, const Fn& fn) {
  grain = std::max<int64_t>(1, grain);
  const int64_t blocks = (n + grain - 1) / grain;
  const int64_t tasks = std::min<int64_t>(blocks, at::get_num_threads());
  std::atomic<int64_t> first{INT64_MAX};
  at::parallel_for(0, tasks, 1, [&](int64_t task_begin, int64_t task_end) {
    int64_t err = INT64_MAX;
    for (int64_t task = task_begin; task < task_end; ++task) {
      for (int64_t b = task; b < blocks; b += tasks) err = std::min(err, fn(b * grain, std::min(n, (b + 1) * grain)));
    }
    int64_t seen = first.load();
    while (err < seen && !first.compare_exchange_weak(seen, err)) {
    }
  });
  return first.load();
}

// Rows a CPU task takes in a pass over rows of `row_elements` elements: about 16k elements, so that
// small tensors are not split across threads for nothing.
inline int64_t rows_per_task(int64_t row_elements) {
  return std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, row_elements));
}

// Counts, lengths and offsets: any integer type, but not bool (a mask passed by mistake) or float.
inline void check_integer(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), op, ": ", name,
                   " must be an integer tensor, got ", t.scalar_type());
}

// The CUDA bindings build their device guard only after these checks: dispatch picks the CUDA
// kernel when any argument is on CUDA, and a guard on a CPU tensor fails first, naming no argument.
inline void check_same_device(const char* op, const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                              const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
}

// The CUDA row kernels keep `floats_per_group` floats per group of 2048 vocabulary entries in the
// default 48 KB of dynamic shared memory, beside less than 4 KB of static scratch: 40,000 bytes
// of groups fit every one of them.
inline void check_cuda_vocab(const char* op, int64_t vocab, int64_t floats_per_group) {
  const int64_t max_vocab = int64_t(2048) * (40000 / (4 * floats_per_group));
  TORCH_CHECK_VALUE(vocab <= max_vocab, op, ": CUDA supports a vocabulary of up to ", max_vocab, " entries, got ", vocab);
}

}  // namespace dllm::binding
