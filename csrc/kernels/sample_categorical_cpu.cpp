// CPU kernel of sample_categorical: the grouped Gumbel-max of dllm/sample_categorical.h.
#include <cmath>
#include <limits>
#include <vector>

#include "dllm/sample_categorical.h"

namespace dllm {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

template <DType D>
struct Loader;
template <>
struct Loader<DType::kFloat32> {
  using T = float;
  static float load(T v) { return v; }
};
template <>
struct Loader<DType::kBFloat16> {
  using T = uint16_t;
  static float load(T v) { return bf16_to_float(v); }
};
template <>
struct Loader<DType::kFloat16> {
  using T = uint16_t;
  static float load(T v) { return fp16_to_float(v); }
};

// Reductions over short float arrays with kLanes independent accumulators: a single running
// max or sum is one long dependency chain, and the compiler may not reorder float sums itself.
constexpr int64_t kLanes = 16;

float max_of(const float* x, int64_t n) {
  float acc[kLanes];
  for (int64_t k = 0; k < kLanes; ++k) acc[k] = -kInf;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) acc[k] = x[i + k] > acc[k] ? x[i + k] : acc[k];
  for (; i < n; ++i) acc[0] = x[i] > acc[0] ? x[i] : acc[0];
  float m = -kInf;
  for (int64_t k = 0; k < kLanes; ++k) m = acc[k] > m ? acc[k] : m;
  return m;
}

// log(sum(exp(x[0..n)))) given m = max(x); -inf when every entry is -inf.
float log_sum_exp(const float* x, int64_t n, float m) {
  if (m == -kInf) return -kInf;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) acc[k] += exp_poly(x[i + k] - m);
  for (; i < n; ++i) acc[0] += exp_poly(x[i] - m);
  float sum = 0.0f;
  for (int64_t k = 0; k < kLanes; ++k) sum += acc[k];
  return m + std::log(sum);
}

float log_sum_exp(const float* x, int64_t n) { return log_sum_exp(x, n, max_of(x, n)); }

// argmax_i (logw[i] + Gumbel noise of logical index first + i); -inf entries never win.
// The caller guarantees at least one finite entry.
int64_t gumbel_argmax(const float* logw, int64_t n, uint64_t seed, uint64_t offset, int64_t row,
                      int64_t first, RngStream stream) {
  int64_t best = -1;
  float best_key = -kInf;
  U32x4 bits{};
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t index = uint64_t(first + i);
    if (i == 0 || (index & 1) == 0) bits = philox_pair(seed, offset, uint64_t(row), uint32_t(index >> 1), stream);
    if (logw[i] == -kInf) continue;
    const float noise = (index & 1) ? gumbel_from_bits(bits.z, bits.w) : gumbel_from_bits(bits.x, bits.y);
    if (best < 0 || logw[i] + noise > best_key) best = i, best_key = logw[i] + noise;
  }
  return best;
}

template <DType D>
CategoricalStatus sample_row(const typename Loader<D>::T* row, int64_t vocab, float temperature,
                             uint64_t seed, uint64_t offset, int64_t r, std::vector<float>& buf,
                             std::vector<float>& group_lse, int64_t& token, float& logprob) {
  if (!(temperature >= 0.0f) || temperature == kInf) return kBadTemperature;
  const bool greedy = temperature == 0.0f;
  const float scale = greedy ? 1.0f : 1.0f / temperature;
  const int64_t groups = (vocab + kCategoricalGroup - 1) / kCategoricalGroup;

  float best = -kInf;  // greedy: the largest scaled logit and its first index
  int64_t best_index = -1;
  bool non_finite = false;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t lo = g * kCategoricalGroup;
    const int64_t n = std::min(kCategoricalGroup, vocab - lo);
    // Separate simple loops, so that each one vectorises.
    for (int64_t i = 0; i < n; ++i) buf[i] = Loader<D>::load(row[lo + i]) * scale;
    int32_t bad = 0;
    for (int64_t i = 0; i < n; ++i) bad |= !(buf[i] < kInf);  // NaN, +inf, or overflow by a tiny temperature
    non_finite |= bad != 0;
    const float m = max_of(buf.data(), n);
    if (greedy && m > best) {
      int64_t i = 0;
      while (buf[i] != m) ++i;
      best = m;
      best_index = lo + i;
    }
    group_lse[g] = log_sum_exp(buf.data(), n, m);
  }
  if (non_finite) return kNonFinite;

  const float row_lse = log_sum_exp(group_lse.data(), groups);
  if (row_lse == -kInf) return kAllMinusInf;

  if (!greedy) {
    const int64_t group = gumbel_argmax(group_lse.data(), groups, seed, offset, r, 0, RngStream::kGroup);
    // The chosen group's subgroup log-masses, then a subgroup, then the token inside it.
    const int64_t lo = group * kCategoricalGroup;
    const int64_t n = std::min(kCategoricalGroup, vocab - lo);
    for (int64_t i = 0; i < n; ++i) buf[i] = Loader<D>::load(row[lo + i]) * scale;
    float sub_lse[kSubgroupsPerGroup];
    const int64_t subgroups = (n + kCategoricalSubgroup - 1) / kCategoricalSubgroup;
    for (int64_t s = 0; s < subgroups; ++s)
      sub_lse[s] = log_sum_exp(buf.data() + s * kCategoricalSubgroup,
                               std::min(kCategoricalSubgroup, n - s * kCategoricalSubgroup));
    const int64_t sub = gumbel_argmax(sub_lse, subgroups, seed, offset, r,
                                      group * kSubgroupsPerGroup, RngStream::kSubgroup);
    const int64_t first = sub * kCategoricalSubgroup;
    best_index = lo + first + gumbel_argmax(buf.data() + first, std::min(kCategoricalSubgroup, n - first),
                                            seed, offset, r, lo + first, RngStream::kElement);
    best = buf[best_index - lo];
  }
  token = best_index;
  logprob = best - row_lse;
  return kCategoricalOk;
}

template <DType D>
int64_t sample_rows(const CategoricalParams& p, int64_t row_begin, int64_t row_end) {
  using T = typename Loader<D>::T;
  std::vector<float> buf(kCategoricalGroup);
  std::vector<float> group_lse((p.vocab + kCategoricalGroup - 1) / kCategoricalGroup);
  const T* logits = static_cast<const T*>(p.logits);
  int64_t first_error = kNoError;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const float temperature = p.temperature ? p.temperature[r] : p.scalar_temperature;
    int64_t token = -1;
    float logprob = std::numeric_limits<float>::quiet_NaN();
    const CategoricalStatus status = sample_row<D>(logits + r * p.row_stride, p.vocab, temperature,
                                                   p.rng.seed, p.rng.offset, r, buf, group_lse,
                                                   token, logprob);
    if (status != kCategoricalOk) {
      token = -1;
      logprob = std::numeric_limits<float>::quiet_NaN();
      first_error = std::min(first_error, (r << 2) | status);
    }
    p.tokens[r] = token;
    p.logprob[r] = logprob;
  }
  return first_error;
}

}  // namespace

int64_t sample_categorical_cpu(const CategoricalParams& p, int64_t row_begin, int64_t row_end) {
  switch (p.dtype) {
    case DType::kFloat32: return sample_rows<DType::kFloat32>(p, row_begin, row_end);
    case DType::kBFloat16: return sample_rows<DType::kBFloat16>(p, row_begin, row_end);
    case DType::kFloat16: return sample_rows<DType::kFloat16>(p, row_begin, row_end);
  }
  return kNoError;
}

}  // namespace dllm
