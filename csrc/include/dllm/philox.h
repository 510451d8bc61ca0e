// Counter-based randomness for the sampling kernels (Salmon et al. 2011, Philox4x32-10).
//
// Every random number is a pure function of (seed, offset, row, index, stream): nothing depends
// on thread or block ids, so results do not change with the launch configuration, and the CPU
// and CUDA kernels draw from the same construction.
#pragma once
#include <cmath>
#include <cstdint>

#include "dllm/common.h"

namespace dllm {

// Where a kernel gets its (seed, offset). Outside CUDA-graph capture the values are plain;
// during capture torch hands out device pointers that each graph replay refills, which is what
// keeps replays drawing fresh numbers (torch's Note [CUDA Graph-safe RNG states]).
struct RngState {
  uint64_t seed = 0;
  uint64_t offset = 0;
  const int64_t* seed_ptr = nullptr;    // non-null only under graph capture
  const int64_t* offset_ptr = nullptr;  // non-null only under graph capture
  uint64_t offset_intragraph = 0;

  DLLM_HD_MEMBER void unpack(uint64_t& s, uint64_t& o) const {
    if (seed_ptr != nullptr) {
      s = uint64_t(*seed_ptr);
      o = uint64_t(*offset_ptr) + offset_intragraph;
    } else {
      s = seed;
      o = offset;
    }
  }
};

struct U32x4 {
  uint32_t x, y, z, w;
};

DLLM_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const uint64_t p = uint64_t(a) * uint64_t(b);
  lo = uint32_t(p);
  hi = uint32_t(p >> 32);
#endif
}

DLLM_HD U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c.x, hi0, lo0);
    mulhilo32(0xCD9E8D57u, c.z, hi1, lo1);
    c = U32x4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// Independent streams drawn inside one op call.
enum class RngStream : uint32_t {
  kGroup = 0,     // hierarchical Gumbel-max: group choice
  kSubgroup = 1,  // hierarchical Gumbel-max: subgroup choice
  kElement = 2,   // hierarchical Gumbel-max: token choice
  kUniform = 3,   // plain uniforms (random confidence, Bernoulli commits)
  kPosition = 4,  // Gumbel keys over positions (sampling positions without replacement)
};

// Folded into the key's low word: torch's curand-based CUDA ops key Philox with the plain seed
// and count (offset / 4, 0, thread, 0), which is dllm's counter of row 0, stream 0 in a call at
// offset 0 (the first after manual_seed); with the key changed no (key, counter) is shared.
constexpr uint32_t kDllmKeyDomain = 0x6d6c6c64u;  // "dllm"

// 128 random bits for the pair of logical indices (2j, 2j+1) of `row` in `stream`.
// The row takes 61 bits, the stream 3, the pair index 32 bits, and the call's offset 32 bits of counter plus
// the high offset bits folded into the key, so calls never reuse a counter.
DLLM_HD U32x4 philox_pair(uint64_t seed, uint64_t offset, uint64_t row, uint32_t pair,
                          RngStream stream) {
  const U32x4 ctr{pair, uint32_t(row), uint32_t(row >> 32) ^ (uint32_t(stream) << 29),
                  uint32_t(offset)};
  return philox4x32_10(ctr, uint32_t(seed) ^ kDllmKeyDomain, uint32_t(seed >> 32) ^ uint32_t(offset >> 32));
}

// log(x) for positive normal finite x (Cephes' logf: the mantissa reduced to [sqrt(1/2), sqrt(2)),
// a degree-9 polynomial; about 1 ulp). Plain branch-free arithmetic, so the CPU kernels'
// noise loops vectorise (libm's logf does not), and the CPU and CUDA kernels compute the same
// noise from the same bits.
DLLM_HD float log_poly(float x) {
  const uint32_t bits = float_to_bits(x);
  const float m = bits_to_float((bits & 0x007fffffu) | 0x3f000000u);  // x = m 2^e, m in [1/2, 1)
  const bool low = m < 0.70710678f;
  const float e = float(int32_t(bits >> 23) - (low ? 127 : 126));
  const float f = low ? (m + m) - 1.0f : m - 1.0f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y += -2.12194440e-4f * e;  // log(2) split in two so that e log(2) adds without rounding
  y += -0.5f * z;
  return (f + y) + 0.693359375f * e;
}

// Exp(1) variate from 64 random bits with float64-grade tails in float32 arithmetic.
// The bits give u uniform on (0, 1) at 2^-64 resolution, and w = min(u, 1 - u) in (0, 1/2] is
// formed from the integers (the complement is exact), then converted: float represents tiny
// numbers exactly, so E = -log(1 - u) resolves u down to 2^-64, a Gumbel noise up to 44 (24-bit
// uniforms stop at 16.6 and cut off rare tokens, arXiv 2409.02908). For u < 1/2, E =
// -log1p(-w) by Goldberg's log1p (log(1 - w) times w / (1 - (1 - w)), exact near 0); for
// u >= 1/2, E = -log(w). Branch-free, so it vectorises.
DLLM_HD float exponential_from_bits(uint32_t lo, uint32_t hi) {
  const bool upper = (hi >> 31) != 0;
  const uint32_t wh = upper ? ~hi : hi, wl = upper ? ~lo : lo;  // wh < 2^31: a signed conversion
  const float wl_float = float(int32_t(wl >> 16)) * 65536.0f + float(int32_t(wl & 0xffffu));
  const float w = float(int32_t(wh)) * 2.3283064365386963e-10f + (wl_float + 0.5f) * 5.421010862427522e-20f;
  const float z = upper ? w : 1.0f - w;
  const float l = log_poly(z);
  return upper ? -l : (z == 1.0f ? w : -l * (w / (1.0f - z)));
}

// Gumbel(0, 1) = -log(E), E ~ Exp(1).
DLLM_HD float gumbel_from_bits(uint32_t lo, uint32_t hi) {
  return -log_poly(exponential_from_bits(lo, hi));
}

// Uniform on [0, 1) with 24 random bits, for choices that need no far tail.
DLLM_HD float uniform_at(uint64_t seed, uint64_t offset, uint64_t row, uint64_t index, RngStream stream) {
  const U32x4 r = philox_pair(seed, offset, row, uint32_t(index >> 1), stream);
  return float(((index & 1) ? r.z : r.x) >> 8) * 5.9604644775390625e-8f;
}

// Uniform on (0, 1) from 64 random bits: the midpoints of a 2^-53 grid, so that `u < p` holds
// with probability p to within 2^-53 however small p is (24 bits would round any p below 2^-24
// up to 2^-24).
DLLM_HD double uniform53_from_bits(uint32_t lo, uint32_t hi) {
  return (double(((uint64_t(hi) << 32) | lo) >> 11) + 0.5) * 1.1102230246251565e-16;
}

// The 53-bit uniform of logical `index` of `row` in `stream`.
DLLM_HD double uniform53_at(uint64_t seed, uint64_t offset, uint64_t row, uint64_t index, RngStream stream) {
  const U32x4 r = philox_pair(seed, offset, row, uint32_t(index >> 1), stream);
  return (index & 1) ? uniform53_from_bits(r.z, r.w) : uniform53_from_bits(r.x, r.y);
}

// The Gumbel noise of logical `index` of `row` in `stream`.
DLLM_HD float gumbel_at(uint64_t seed, uint64_t offset, uint64_t row, uint64_t index, RngStream stream) {
  const U32x4 r = philox_pair(seed, offset, row, uint32_t(index >> 1), stream);
  return (index & 1) ? gumbel_from_bits(r.z, r.w) : gumbel_from_bits(r.x, r.y);
}

}  // namespace dllm
