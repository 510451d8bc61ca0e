// 8-lane float vectors for the CPU kernels, as plain GCC/Clang vector types: the AVX2 + FMA build
// gets ymm instructions, the baseline pairs of SSE ones. Loops written with them are vectorised
// whatever the auto-vectoriser would make of the scalar form (it left the row max scalar).
#pragma once
#include <cstdint>
#include <cstring>

namespace dllm::cpu {
namespace {

typedef float Float8 __attribute__((vector_size(32)));
typedef int32_t Int8 __attribute__((vector_size(32)));

inline Float8 load8(const float* p) {
  Float8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store8(float* p, Float8 v) { std::memcpy(p, &v, sizeof v); }

// The running max of `acc` and `v`; NaN lanes of v are skipped, as in the scalar `v > acc ? v : acc`.
inline Float8 max8(Float8 acc, Float8 v) { return v > acc ? v : acc; }

inline float hmax8(Float8 v) {
  float m = v[0];
  for (int k = 1; k < 8; ++k) m = v[k] > m ? v[k] : m;
  return m;
}

inline float hsum8(Float8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

// Whether any lane of a comparison result is set.
inline bool any8(Int8 mask) {
  uint64_t w[4];
  std::memcpy(w, &mask, sizeof w);
  return (w[0] | w[1] | w[2] | w[3]) != 0;
}

}  // namespace
}  // namespace dllm::cpu
