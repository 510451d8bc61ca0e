// adaLN, the DiT's modulated LayerNorm, in one pass over the residual stream, optionally with the
// gated residual update before it. Framework-free: raw pointers and sizes.
//
// Row r of x [rows, dim] (rows = B * S; b = r / S):
//   x_next = x + gate[b] * update           (only with update; rounded to x's dtype)
//   out    = (x_next - mean) * rsqrt(var + eps) * w[b] + shift[b]
// mean and the biased var over the row, in float32; w = weight * (1 + scale) per sequence,
// computed by the binding. out and x_next are in x's dtype.
#pragma once
#include <cstdint>

#include "dllm/common.h"

namespace dllm {

struct AdaLNParams {
  const void* x = nullptr;       // [rows, dim] contiguous
  const void* update = nullptr;  // [rows, dim] contiguous, x's dtype; nullptr: no residual update
  const float* gate = nullptr;   // [B, dim] (with update)
  const float* w = nullptr;      // [B, dim]
  const float* shift = nullptr;  // [B, dim]
  void* out = nullptr;           // [rows, dim]
  void* x_next = nullptr;        // [rows, dim] (with update)
  DType dtype = DType::kFloat32;
  int64_t rows = 0, seq = 1, dim = 0;
  float eps = 1e-5f;
};

void adaln_cpu(const AdaLNParams& p, int64_t begin, int64_t end);
void adaln_cuda(const AdaLNParams& p, void* stream);

}  // namespace dllm
