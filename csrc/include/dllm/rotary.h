// Rotary position embedding (RoPE, rotate-half layout) in one pass: reads x once, writes a
// contiguous result once, float32 math rounded once. Framework-free: raw pointers and sizes.
//
// For each position (b, s), head h and pair i < half = D / 2 of x [B, S, H, D]:
//   out[i]        = x[i] cos[i] - x[i + half] sin[i]
//   out[i + half] = x[i + half] cos[i] + x[i] sin[i]
// with cos, sin the tables' entries at (b, s, i); `inverse` rotates by the opposite angle (sin
// negated), which is the gradient of the rotation.
#pragma once
#include <cstdint>

#include "dllm/common.h"

namespace dllm {

struct RotaryParams {
  const void* x = nullptr;  // [B, S, H, D] at the strides below (elements), unit stride in D
  void* out = nullptr;      // [B, S, H, D] contiguous, x's dtype
  const float* cos = nullptr;  // [S, half] contiguous, or [B, S, half] (table_batch_stride = S * half)
  const float* sin = nullptr;
  DType dtype = DType::kFloat32;
  int64_t batch = 0, seq = 0, heads = 0, half = 0;
  int64_t x_batch_stride = 0, x_seq_stride = 0, x_head_stride = 0;
  int64_t table_batch_stride = 0;  // 0: one table for every sequence
  bool inverse = false;
};

// Positions [begin, end) of the B * S flattened (b, s) positions.
void rotary_cpu(const RotaryParams& p, int64_t begin, int64_t end);
void rotary_cuda(const RotaryParams& p, void* stream);

}  // namespace dllm
