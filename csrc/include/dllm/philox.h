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

  DLLM_HD void unpack(uint64_t& s, uint64_t& o) const {
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
enum class RngStream : uint32_t { kGroup = 0, kSubgroup = 1, kElement = 2 };

// 128 random bits for the pair of logical indices (2j, 2j+1) of `row` in `stream`.
// The row takes 63 bits, the pair index 32 bits, and the call's offset 32 bits of counter plus
// the high offset bits folded into the key, so calls never reuse a counter.
DLLM_HD U32x4 philox_pair(uint64_t seed, uint64_t offset, uint64_t row, uint32_t pair,
                          RngStream stream) {
  const U32x4 ctr{pair, uint32_t(row), uint32_t(row >> 32) ^ (uint32_t(stream) << 30),
                  uint32_t(offset)};
  return philox4x32_10(ctr, uint32_t(seed), uint32_t(seed >> 32) ^ uint32_t(offset >> 32));
}

// Exp(1) variate from 64 random bits with float64-grade tails in float32 arithmetic.
// u is uniform on (0, 1) at 2^-64 resolution. For u < 1/2 we use -log1p(-u): u is tiny near 0
// and float32 represents tiny numbers exactly, so E resolves down to 2^-64 (a Gumbel noise up
// to 44, where 24-bit uniforms stop at 16.6 and cut off rare tokens, arXiv 2409.02908). For
// u >= 1/2, 1 - u is formed exactly in integers first, so the upper tail of E is exact too.
DLLM_HD float exponential_from_bits(uint32_t lo, uint32_t hi) {
  const uint64_t bits = (uint64_t(hi) << 32) | lo;
  constexpr float kTwoPowMinus64 = 5.421010862427522e-20f;
  if ((hi >> 31) == 0) {
    const float u = (float(bits) + 0.5f) * kTwoPowMinus64;
    return -log1pf(-u);
  }
  const float v = (float(~bits) + 0.5f) * kTwoPowMinus64;  // 1 - u, exact up to rounding of v
  return -logf(v);
}

// Gumbel(0, 1) = -log(E), E ~ Exp(1).
DLLM_HD float gumbel_from_bits(uint32_t lo, uint32_t hi) {
  return -logf(exponential_from_bits(lo, hi));
}

// The Gumbel noise of logical `index` of `row` in `stream`.
DLLM_HD float gumbel_at(uint64_t seed, uint64_t offset, uint64_t row, uint64_t index, RngStream stream) {
  const U32x4 r = philox_pair(seed, offset, row, uint32_t(index >> 1), stream);
  return (index & 1) ? gumbel_from_bits(r.z, r.w) : gumbel_from_bits(r.x, r.y);
}

}  // namespace dllm
