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

// Lanes I... of the 16 lanes of a and b (a's first): __builtin_shufflevector in Clang, __builtin_shuffle in GCC.
template <int... I>
inline Float8 shuffle8(Float8 a, Float8 b) {
#if defined(__clang__)
  return __builtin_shufflevector(a, b, I...);
#else
  return __builtin_shuffle(a, b, Int8{I...});
#endif
}

// An 8 x 8 block transposed in registers (AVX's unpack, shuffle and 128-bit permute steps).
inline void transpose8(Float8 (&r)[8]) {
  Float8 t[8], u[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = shuffle8<0, 8, 1, 9, 4, 12, 5, 13>(r[k], r[k + 1]);
    t[k + 1] = shuffle8<2, 10, 3, 11, 6, 14, 7, 15>(r[k], r[k + 1]);
  }
  for (int k = 0; k < 8; k += 4)
    for (int h = 0; h < 2; ++h) {
      u[k + 2 * h] = shuffle8<0, 1, 8, 9, 4, 5, 12, 13>(t[k + h], t[k + 2 + h]);
      u[k + 2 * h + 1] = shuffle8<2, 3, 10, 11, 6, 7, 14, 15>(t[k + h], t[k + 2 + h]);
    }
  for (int k = 0; k < 4; ++k) {
    r[k] = shuffle8<0, 1, 2, 3, 8, 9, 10, 11>(u[k], u[k + 4]);
    r[k + 4] = shuffle8<4, 5, 6, 7, 12, 13, 14, 15>(u[k], u[k + 4]);
  }
}

// Whether any lane of a comparison result is set.
inline bool any8(Int8 mask) {
  uint64_t w[4];
  std::memcpy(w, &mask, sizeof w);
  return (w[0] | w[1] | w[2] | w[3]) != 0;
}

}  // namespace
}  // namespace dllm::cpu
