// Top-k / top-p (nucleus) filtering as one threshold on the logit value, shared by the CPU and
// CUDA kernels so that both apply one rule. They keep the same tokens wherever their exp agrees:
// always in the emulator; on a GPU, __expf's rounding may move a token that sits on the top-p
// boundary to within a float32 ulp.
//
// A token is kept when fewer than top_k tokens have a larger value AND the tempered probability
// mass of the tokens with a larger value is at most top_p: both conditions are monotone in the
// value, so the kept set is {value >= tau}. Ties at tau are all kept, where a sort-based filter
// would keep an arbitrary subset. tau is found by a 4-level radix select over the 32-bit
// ordered keys; masses are summed in 2^-48 fixed point, so the sums (and tau) do not depend on
// the order in which threads add them.
#pragma once
#include <cstdint>

#include "dllm/common.h"

namespace dllm {

constexpr double kMassScale = 281474976710656.0;  // 2^48

DLLM_HD uint64_t fixed_mass(float p) { return uint64_t(double(p) * kMassScale); }

struct RadixLevel {
  uint64_t above_count = 0;  // tokens above the current prefix
  uint64_t above_mass = 0;   // their fixed-point mass
  uint32_t prefix = 0;       // key bits fixed so far
};

// Given the histograms (count and mass per 8-bit digit at `shift`) of the tokens that share the
// prefix, fixes the next digit: the smallest present digit whose top token still passes.
DLLM_HD void radix_step(RadixLevel& level, const uint32_t* count, const uint64_t* mass, int shift,
                        int64_t top_k, uint64_t top_p_mass) {
  uint64_t c = level.above_count, m = level.above_mass;
  int digit = -1;
  uint64_t c_at = c, m_at = m;
  for (int d = 255; d >= 0; --d) {
    if (count[d] == 0) continue;
    const bool pass = (top_k <= 0 || c < uint64_t(top_k)) && m <= top_p_mass;
    if (!pass) break;
    digit = d, c_at = c, m_at = m;
    c += count[d];
    m += mass[d];
  }
  // digit >= 0 always: the prefix was chosen because its top token passes.
  level.prefix |= uint32_t(digit < 0 ? 0 : digit) << shift;
  level.above_count = c_at;
  level.above_mass = m_at;
}

}  // namespace dllm
