// Argument checks shared by the torch bindings: errors name the op and the offending argument.
#pragma once
#include <ATen/ATen.h>

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

// A read-only [rows, V] view with unit column stride, copying only when no such view exists.
// Any row stride works, 0 included: a row broadcast over a batch is read in place.
inline at::Tensor as_rows(const at::Tensor& t) {
  at::Tensor rows = t.reshape({-1, t.size(-1)});
  if (rows.size(1) > 1 && rows.stride(1) != 1) rows = rows.contiguous();
  return rows;
}

}  // namespace dllm::binding
