// Row primitives shared by the CPU sampling kernels: loading, reductions, hierarchical Gumbel-max.
// Internal to csrc/kernels (framework-free like the rest of the kernels).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>

#include "cpu_simd.h"
#include "dllm/common.h"
#include "dllm/philox.h"
#include "dllm/sample_categorical.h"

namespace dllm::cpu {
// Internal linkage: each translation unit (and instruction-set variant) has its own copies.
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// float -> bfloat16, round to nearest even; NaN stays a (quiet) NaN. Branch-free, so store loops
// vectorise.
inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x40u;
  return uint16_t((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// float -> IEEE half, round to nearest even, without F16C (the baseline build has no -m flags).
inline uint16_t float_to_fp16(float f) {
  uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  uint32_t h;
  if (u >= 0x47800000u) {  // >= 65536 (after rounding: inf), inf or NaN
    h = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < 0x38800000u) {  // half subnormal or zero: let a float add do the rounding
    const float magic = bits_to_float(uint32_t((127 - 15 + 23 - 10 + 1) << 23));
    h = float_to_bits(bits_to_float(u) + magic) - float_to_bits(magic);
  } else {
    const uint32_t odd = (u >> 13) & 1u;
    u += (uint32_t(15 - 127) << 23) + 0xfffu + odd;
    h = u >> 13;  // a carry into the exponent rounds up to the next binade or to inf correctly
  }
  return uint16_t(h | sign);
}

// Element type of each DType, with conversions to and from float.
template <DType D>
struct Loader;
template <>
struct Loader<DType::kFloat32> {
  using T = float;
  static float load(T v) { return v; }
  static T store(float v) { return v; }
};
template <>
struct Loader<DType::kBFloat16> {
  using T = uint16_t;
  static float load(T v) { return bf16_to_float(v); }
  static T store(float v) { return float_to_bf16(v); }
};
template <>
struct Loader<DType::kFloat16> {
  using T = uint16_t;
  static float load(T v) { return fp16_to_float(v); }
  static T store(float v) { return float_to_fp16(v); }
};

// Converts a row to float32; returns false if any value is NaN or +inf.
template <DType D>
bool load_row(const void* row, int64_t n, float* out) {
  const auto* src = static_cast<const typename Loader<D>::T*>(row);
  for (int64_t i = 0; i < n; ++i) out[i] = Loader<D>::load(src[i]);
  int32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= !(out[i] < kInf);
  return bad == 0;
}

// Reductions with kLanes independent accumulators: a single running max or sum is one long
// dependency chain, and the compiler may not reorder float sums by itself.
constexpr int64_t kLanes = 16;

inline float max_of(const float* x, int64_t n) {
  Float8 a0 = Float8{} - kInf, a1 = a0;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    a0 = max8(a0, load8(x + i));
    a1 = max8(a1, load8(x + i + 8));
  }
  float m = hmax8(max8(a0, a1));
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

inline float sum_of(const float* x, int64_t n) {
  Float8 a0{}, a1{};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    a0 += load8(x + i);
    a1 += load8(x + i + 8);
  }
  float sum = hsum8(a0 + a1);
  for (; i < n; ++i) sum += x[i];
  return sum;
}

inline float sum_squares_of(const float* x, int64_t n) {
  Float8 a0{}, a1{};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Float8 v0 = load8(x + i), v1 = load8(x + i + 8);
    a0 += v0 * v0;
    a1 += v1 * v1;
  }
  float sum = hsum8(a0 + a1);
  for (; i < n; ++i) sum += x[i] * x[i];
  return sum;
}

// First index of the maximum m = max(x) (the lowest index wins ties); -1 if every entry is -inf.
inline int64_t argmax_of(const float* x, int64_t n, float m) {
  if (m == -kInf) return -1;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    if (any8((load8(x + i) == m) | (load8(x + i + 8) == m))) break;
  while (x[i] != m) ++i;
  return i;
}

// out[i] = (x[i] - m) * scale: the tempered log-weights of dllm/sample_categorical.h.
inline void temper(const float* x, int64_t n, float m, float scale, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] - m) * scale;
}

// log(sum(exp((x[0..n) - m) * scale))) given m = max(x): relative to the max, so that a row of
// large values keeps its precision; -inf when every entry is -inf.
inline float log_sum_exp_above(const float* x, int64_t n, float m, float scale = 1.0f) {
  if (m == -kInf) return -kInf;
  // Double accumulators: a float sum that holds the maximum's 1 rounds away most of each tiny
  // tail term added to it, and the tail's total mass is what rare-token probabilities hinge on.
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) acc[k] += exp_poly((x[i + k] - m) * scale);
  for (; i < n; ++i) acc[0] += exp_poly((x[i] - m) * scale);
  double sum = 0.0;
  for (int64_t k = 0; k < kLanes; ++k) sum += acc[k];
  return float(std::log(sum));
}

// log(sum(exp(x[0..n)))); -inf when every entry is -inf.
inline float log_sum_exp(const float* x, int64_t n) {
  const float m = max_of(x, n);
  return m + log_sum_exp_above(x, n, m);
}

// Gumbel noise of logical indices [2 pair0, 2 pair0 + 16) of `row` in `stream`: the values
// gumbel_at gives, from eight independent Philox calls and sixteen branch-free noise
// transforms, loops that GCC vectorises across the lanes.
constexpr int64_t kNoiseBlock = 16;

inline void gumbel_block(uint64_t seed, uint64_t offset, uint64_t row, uint32_t pair0, RngStream stream,
                         float* noise) {
  constexpr int kPairs = kNoiseBlock / 2;
  uint32_t c0[kPairs], c1[kPairs], c2[kPairs], c3[kPairs];
  for (int k = 0; k < kPairs; ++k) {
    const U32x4 r = philox_pair(seed, offset, row, pair0 + uint32_t(k), stream);
    c0[k] = r.x, c1[k] = r.y, c2[k] = r.z, c3[k] = r.w;
  }
  float even[kPairs], odd[kPairs];
  for (int k = 0; k < kPairs; ++k) even[k] = gumbel_from_bits(c0[k], c1[k]), odd[k] = gumbel_from_bits(c2[k], c3[k]);
  for (int k = 0; k < kPairs; ++k) noise[2 * k] = even[k], noise[2 * k + 1] = odd[k];
}

// A row buffer of at least n elements, one per thread and Slot, grown as needed and left
// uninitialised (each use writes it before reading it): parallel_min_error calls a kernel once per
// small block of rows, and allocating V floats per call costs about as much as reading a row (more
// when malloc hands large blocks back to the system in between).
template <typename T, int Slot>
T* row_scratch(int64_t n) {
  thread_local std::unique_ptr<T[]> buf;
  thread_local int64_t capacity = 0;
  if (capacity < n) buf = std::make_unique_for_overwrite<T[]>(size_t(n)), capacity = n;
  return buf.get();
}

// argmax_i (log_weight(i) + Gumbel noise of logical index first + i); -inf log-weights never
// win, ties go to the lowest i. Returns -1 only if every entry is -inf.
template <typename LogWeight>
int64_t gumbel_argmax_by(int64_t n, LogWeight log_weight, uint64_t seed, uint64_t offset, int64_t row,
                         int64_t first, RngStream stream) {
  if (n == 1) return log_weight(0) == -kInf ? -1 : 0;  // a lone candidate wins whatever its noise
  int64_t best = -1;
  float best_key = -kInf;
  float noise[kNoiseBlock];
  const int64_t skip = first & 1;  // blocks start at an even logical index: one Philox call per pair
  for (int64_t base = -skip; base < n; base += kNoiseBlock) {
    gumbel_block(seed, offset, uint64_t(row), uint32_t(uint64_t(first + base) >> 1), stream, noise);
    for (int64_t i = std::max<int64_t>(base, 0); i < std::min(base + kNoiseBlock, n); ++i) {
      const float lw = log_weight(i);
      if (lw == -kInf) continue;
      const float key = lw + noise[i - base];
      if (best < 0 || key > best_key) best = i, best_key = key;
    }
  }
  return best;
}

inline int64_t gumbel_argmax(const float* logw, int64_t n, uint64_t seed, uint64_t offset, int64_t row,
                             int64_t first, RngStream stream) {
  return gumbel_argmax_by(n, [logw](int64_t i) { return logw[i]; }, seed, offset, row, first, stream);
}

inline int64_t num_groups(int64_t vocab) { return (vocab + kCategoricalGroup - 1) / kCategoricalGroup; }

// The row's max, leaving every group's max in group_lse for group_log_sums.
inline float group_maxes(const float* v, int64_t vocab, float* group_lse) {
  float m = -kInf;
  for (int64_t g = 0; g < num_groups(vocab); ++g) {
    const int64_t lo = g * kCategoricalGroup;
    group_lse[g] = max_of(v + lo, std::min(kCategoricalGroup, vocab - lo));
    m = std::max(m, group_lse[g]);
  }
  return m;
}

// Turns the groups' maxes in group_lse (group_maxes) into the log-mass of every group of the
// tempered row (v - m) * scale (m: the row's max), read from v: the tempered row is never written out.
inline void group_log_sums(const float* v, int64_t vocab, float m, float scale, float* group_lse) {
  for (int64_t g = 0; g < num_groups(vocab); ++g) {
    const int64_t lo = g * kCategoricalGroup, n = std::min(kCategoricalGroup, vocab - lo);
    const float group_max = group_lse[g];
    group_lse[g] =
        group_max == -kInf ? -kInf : (group_max - m) * scale + log_sum_exp_above(v + lo, n, group_max, scale);
  }
}

// One exact draw from softmax((v - m) * scale) by the hierarchical Gumbel-max of
// dllm/sample_categorical.h, given the group log-masses; the caller guarantees a finite entry.
inline int64_t draw_hierarchical(const float* v, int64_t vocab, const float* group_lse, float m, float scale,
                                 uint64_t seed, uint64_t offset, int64_t row) {
  const int64_t group = gumbel_argmax(group_lse, num_groups(vocab), seed, offset, row, 0, RngStream::kGroup);
  const int64_t lo = group * kCategoricalGroup;
  const int64_t n = std::min(kCategoricalGroup, vocab - lo);
  float y[kCategoricalGroup];  // the chosen group, tempered
  temper(v + lo, n, m, scale, y);
  float sub_lse[kSubgroupsPerGroup];
  const int64_t subgroups = (n + kCategoricalSubgroup - 1) / kCategoricalSubgroup;
  for (int64_t s = 0; s < subgroups; ++s)
    sub_lse[s] =
        log_sum_exp(y + s * kCategoricalSubgroup, std::min(kCategoricalSubgroup, n - s * kCategoricalSubgroup));
  const int64_t sub = gumbel_argmax(sub_lse, subgroups, seed, offset, row, group * kSubgroupsPerGroup,
                                    RngStream::kSubgroup);
  const int64_t first = sub * kCategoricalSubgroup;
  return lo + first + gumbel_argmax(y + first, std::min(kCategoricalSubgroup, n - first), seed, offset, row,
                                    lo + first, RngStream::kElement);
}

// Keeps the lowest encoded error, (row << 2) | status, across calls.
inline void note_error(int64_t& first_error, int64_t row, int64_t status) {
  first_error = std::min(first_error, (row << 2) | status);
}

}  // namespace
}  // namespace dllm::cpu
