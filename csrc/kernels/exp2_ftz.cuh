// exp2_ftz, shared by the attention and the streaming kernels.
#pragma once
#include <cuda_runtime.h>

#include <cmath>

namespace dllm {

// 2^x by the MUFU.EX2 instruction alone, results below 2^-126 flushed to zero. exp2f adds a
// rescaling around it for such results (three more instructions on the FMA pipe, which the
// softmax keeps as busy as the MUFU one); no probability, row sum or rescaling factor of
// attention is changed by them beyond float32 rounding, since each row's maximum contributes 1
// (nor any streaming sum, for the same reason). The emulator: exp2f.
__device__ __forceinline__ float exp2_ftz(float x) {
#if defined(DLLM_CUDA_EMULATOR)
  return exp2f(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

}  // namespace dllm
