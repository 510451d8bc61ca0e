// RoPE on the CPU: one position's heads at a time, float32 math, each output rounded once.
#include "cpu_isa.h"
#include "cpu_rows.h"
#include "dllm/rotary.h"

namespace dllm {
namespace {

template <DType D>
void rotate(const RotaryParams& p, int64_t begin, int64_t end) {
  using L = cpu::Loader<D>;
  using T = typename L::T;
  const int64_t half = p.half;
  const float sign = p.inverse ? -1.0f : 1.0f;
  for (int64_t pos = begin; pos < end; ++pos) {
    const int64_t b = pos / p.seq, s = pos % p.seq;
    const float* cos = p.cos + b * p.table_batch_stride + s * half;
    const float* sin = p.sin + b * p.table_batch_stride + s * half;
    for (int64_t h = 0; h < p.heads; ++h) {
      const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + s * p.x_seq_stride + h * p.x_head_stride;
      T* out = static_cast<T*>(p.out) + (pos * p.heads + h) * 2 * half;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = L::load(x[i]), x2 = L::load(x[i + half]), c = cos[i], sn = sign * sin[i];
        out[i] = L::store(x1 * c - x2 * sn);
        out[i + half] = L::store(x2 * c + x1 * sn);
      }
    }
  }
}

}  // namespace

void DLLM_ISA_NAME(rotary_cpu)(const RotaryParams& p, int64_t begin, int64_t end) {
  with_dtype(p.dtype, [&]<DType D>() { rotate<D>(p, begin, end); });
}

}  // namespace dllm
