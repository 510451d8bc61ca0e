// Small helpers shared by the CPU and CUDA kernels. Framework-free: no torch headers here.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DLLM_HD __host__ __device__ __forceinline__
#define DLLM_HD_MEMBER __host__ __device__ __forceinline__
#else
// static: every CPU translation unit keeps its own copy, so kernels compiled for different
// instruction sets (csrc/kernels/cpu_isa.h) never share one through the linker.
#define DLLM_HD static inline
#define DLLM_HD_MEMBER inline
#endif

namespace dllm {

constexpr float kLog2e = 1.4426950408889634f;

// Element types the kernels read; the torch bindings map at::ScalarType onto these.
enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// f.template operator()<D>() for the dtype's value: the kernels' one switch from a run-time dtype
// to their template argument, as in with_dtype(p.dtype, [&]<DType D>() { kernel<D>(p); }).
// Static, as DLLM_HD functions are, so each instruction-set build keeps its own.
template <typename F>
static decltype(auto) with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kBFloat16: return f.template operator()<DType::kBFloat16>();
    case DType::kFloat16: return f.template operator()<DType::kFloat16>();
    case DType::kFloat32: break;
  }
  return f.template operator()<DType::kFloat32>();
}

DLLM_HD float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

DLLM_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

DLLM_HD float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

// IEEE half -> float without F16C, so the CPU build needs no special -m flags.
DLLM_HD float fp16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
  // Subnormal half: man * 2^-24 is exact in float.
  const float mag = float(man) * 5.9604644775390625e-8f;
  return sign ? -mag : mag;
}

// exp(x) = p * 2^n: n = round(x log2(e)) is returned, p = 2^(x log2(e) - n) in [2^-1/2, 2^1/2]
// comes from a degree-6 polynomial. x is expected >= -87.3 (callers clamp).
DLLM_HD float exp_reduced(float x, int32_t& n) {
  const float t = x * kLog2e;
  const float r = (t + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
  const float f = t - r;
  float p = 1.5403530393381606e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  n = int32_t(r);
  return p * f + 1.0f;
}

// exp(x) for x <= ~0 (2^n is built as one float, inf from x = 88.38 on) by range reduction.
// Written as plain arithmetic so GCC vectorises it at -O3 (libm's expf does not vectorise
// without -ffast-math, which would also break our inf/NaN checks). Relative error < 2e-7 near 0,
// growing with |x| (x log2(e) is rounded to float first): about 7e-7 at |x| = 20, 4e-6 at 88.
// x below -87.3 (and -inf) returns 0, flushing the float32 normals' bottom binade: a gradient
// of a -inf logit is exactly 0.
DLLM_HD float exp_poly(float x) {
  const bool underflow = x < -87.3f;
  int32_t n;
  const float p = exp_reduced(underflow ? -87.3f : x, n);
  return underflow ? 0.0f : p * bits_to_float(uint32_t(n + 127) << 23);
}

}  // namespace dllm
