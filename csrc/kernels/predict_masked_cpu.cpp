// CPU kernel of predict_masked: a proposal and a confidence at every masked position.
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_isa.h"
#include "cpu_rows.h"
#include "dllm/unmask.h"
#include "filter_threshold.h"

namespace dllm {
namespace {

using namespace cpu;

// apply_filter's per-token keys and masses and the tokens still in the running, kept per thread
// across rows and calls (grown on the first filtered row).
struct FilterScratch {
  std::vector<uint32_t> keys;
  std::vector<uint64_t> masses;
  std::vector<int64_t> running;
  void reserve(int64_t vocab) {
    if (int64_t(keys.size()) >= vocab) return;
    keys.resize(vocab), masses.resize(vocab), running.resize(vocab);
  }
};

// fixed_mass(p) for 0 <= p < 16. x86 before AVX-512 has no packed double -> int64 conversion:
// where SSE4.1 gives a packed floor (the AVX2 build), the floor of p 2^48, exact in a double, is
// put in the low bits of the significand by adding 2^52, which vectorises; the baseline build's
// scalar floor is a library call, so it converts one value at a time (one instruction as signed).
inline uint64_t fixed_mass_of_probability(float p) {
#if defined(__SSE4_1__)
  const double shifted = std::floor(double(p) * kMassScale) + 4503599627370496.0;  // + 2^52
  uint64_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  return bits - 0x4330000000000000ull;  // 2^52's bits
#else
  return uint64_t(int64_t(double(p) * kMassScale));
#endif
}

// Sets y[j] = -inf for the tokens that top-k / top-p filtering removes. `y` holds the tempered
// values and `lse` their log-sum-exp; `v` the untempered ones (same order as y). Each token's key
// and mass are computed once, in loops that vectorise; each radix level then histograms only the
// tokens under the prefix fixed so far (after the first level, a small share of the row).
void apply_filter(const float* v, float* y, int64_t vocab, float lse, int64_t top_k, float top_p,
                  FilterScratch& s) {
  const uint64_t top_p_mass = top_p >= 1.0f ? UINT64_MAX : fixed_mass(top_p);
  s.reserve(vocab);
  uint32_t* keys = s.keys.data();
  uint64_t* masses = s.masses.data();
  int64_t* running = s.running.data();
  for (int64_t j = 0; j < vocab; ++j) keys[j] = ordered_key(v[j]);
  for (int64_t j = 0; j < vocab; ++j) masses[j] = fixed_mass_of_probability(exp_poly(y[j] - lse));
  // Histograms by digit. Neighbouring tokens often share a digit: kCopies interleaved copies keep
  // their increments from waiting on one another.
  constexpr int kCopies = 4;
  uint32_t count[kCopies][256];
  uint64_t mass[kCopies][256];
  const auto histogram = [&](int64_t n, auto token_at, int shift, RadixLevel& level) {
    std::fill(&count[0][0], &count[0][0] + kCopies * 256, 0u);
    std::fill(&mass[0][0], &mass[0][0] + kCopies * 256, uint64_t(0));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = token_at(i);
      if (j < 0) continue;
      const int d = (keys[j] >> shift) & 255;
      count[i % kCopies][d] += 1;
      mass[i % kCopies][d] += masses[j];
    }
    for (int c = 1; c < kCopies; ++c)
      for (int d = 0; d < 256; ++d) count[0][d] += count[c][d], mass[0][d] += mass[c][d];
    radix_step(level, count[0], mass[0], shift, top_k, top_p_mass);
  };
  RadixLevel level;
  // Tokens removed before filtering (y = -inf: the mask token) never count.
  histogram(vocab, [&](int64_t j) { return y[j] == -kInf ? int64_t(-1) : j; }, 24, level);
  int64_t n = 0;
  for (int64_t j = 0; j < vocab; ++j) {
    running[n] = j;
    n += y[j] != -kInf && (keys[j] >> 24) == (level.prefix >> 24);
  }
  for (int shift = 16; shift >= 0; shift -= 8) {
    histogram(n, [&](int64_t i) { return running[i]; }, shift, level);
    const uint32_t fixed_bits = ~0u << shift;
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      running[kept] = running[i];
      kept += (keys[running[i]] & fixed_bits) == (level.prefix & fixed_bits);
    }
    n = kept;
  }
  for (int64_t j = 0; j < vocab; ++j)
    if (keys[j] < level.prefix) y[j] = -kInf;
}

// The confidence under softmax((v - m) * scale), given m = max(v) and log_s = log(sum(exp((v - m)
// * scale))): relative to the max, so that logits of any size keep float32's precision.
float confidence_of(Confidence kind, const float* v, int64_t vocab, int64_t token, float m, float scale, float log_s,
                    int64_t greedy, uint64_t seed, uint64_t offset, int64_t position) {
  switch (kind) {
    case Confidence::kProb: return std::exp((v[token] - m) * scale - log_s);
    case Confidence::kMargin: {
      // the largest entry but the greedy one (a tie with it counts): two vectorised maxima
      const float second = std::max(max_of(v, greedy), max_of(v + greedy + 1, vocab - greedy - 1));
      return std::exp(-log_s) - (second == -kInf ? 0.0f : std::exp((second - m) * scale - log_s));
    }
    case Confidence::kEntropy: {
      // sum p log p, with log p = d - log S, d = (v - m) * scale and S = sum exp(d). Double sums
      // (cheap on a CPU, and this is a difference of sums) in kLanes independent chains, which
      // vectorise where one running pair of sums would be a dependency chain.
      double s[kLanes] = {}, t[kLanes] = {};
      const auto add = [&](int64_t k, float value) {
        const float d = std::max((value - m) * scale, -87.0f);  // -inf entries contribute ~0, not NaN
        const float e = exp_poly(d);
        s[k] += e;
        t[k] += double(e) * d;
      };
      int64_t j = 0;
      for (; j + kLanes <= vocab; j += kLanes)
        for (int64_t k = 0; k < kLanes; ++k) add(k, v[j + k]);
      for (; j < vocab; ++j) add(0, v[j]);
      double s_sum = 0.0, t_sum = 0.0;
      for (int64_t k = 0; k < kLanes; ++k) s_sum += s[k], t_sum += t[k];
      return float(t_sum / s_sum - std::log(s_sum));
    }
    case Confidence::kRandom: return uniform_at(seed, offset, uint64_t(position), 0, RngStream::kUniform);
  }
  return kNaN;
}

template <DType D>
int64_t predict_positions(const PredictParams& p, int64_t begin, int64_t end) {
  const size_t elem = D == DType::kFloat32 ? 4 : 2;
  const int64_t vocab = p.vocab;
  float* v = row_scratch<float, 0>(vocab);
  float* y = row_scratch<float, 1>(vocab);
  float* group_lse = row_scratch<float, 2>(num_groups(vocab));
  thread_local FilterScratch filter_scratch;  // grown once per thread, not per block of rows
  int64_t first_error = kNoError;
  for (int64_t pos = begin; pos < end; ++pos) {
    const int64_t token_in = p.x[pos];
    p.x0[pos] = token_in;
    p.conf[pos] = -kInf;
    if (token_in != p.mask_id) {
      if (token_in < 0 || token_in >= vocab) note_error(first_error, pos, kTokenOutOfRange);
      continue;
    }
    const int64_t b = pos / p.length, i = pos % p.length;
    const int64_t src = b * p.length + std::max<int64_t>(i - p.logits_shift, 0);
    if (!load_row<D>(static_cast<const char*>(p.logits) + src * p.row_stride * elem, vocab, v)) {
      note_error(first_error, pos, kNonFinite);
      continue;
    }
    v[p.mask_id] = -kInf;  // the mask token is never proposed (MDLM's SUBS rule)
    const float m = group_maxes(v, vocab, group_lse);
    if (m == -kInf) {
      note_error(first_error, pos, kAllMinusInf);
      continue;
    }
    const bool filtered = p.top_k > 0 || p.top_p < 1.0f;
    const bool proposal_scored = p.proposal_confidence && p.confidence != Confidence::kRandom;
    const bool greedy_needed = p.temperature == 0.0f || p.confidence == Confidence::kMargin;
    const int64_t greedy = greedy_needed ? argmax_of(v, vocab, m) : -1;
    int64_t token = greedy;
    // The confidence's distribution: softmax((scored - scored_max) * scored_scale), whose
    // log-sum-exp is scored_log_s.
    const float* scored = v;
    float scored_max = m, scored_scale = 1.0f, scored_log_s = kNaN;
    if (p.temperature > 0.0f || (proposal_scored && filtered)) {
      // The proposal's distribution: softmax((w - w_max) * w_scale), the tempered row (untempered
      // at temperature 0, for filtering alone), written out only when filtering edits it.
      const float* w = v;
      float w_max = m, w_scale = p.temperature > 0.0f ? inverse_temperature(p.temperature) : 1.0f;
      group_log_sums(v, vocab, m, w_scale, group_lse);
      const float tempered_lse = log_sum_exp(group_lse, num_groups(vocab));
      float w_lse = tempered_lse;
      if (filtered) {
        temper(v, vocab, m, w_scale, y);
        apply_filter(v, y, vocab, tempered_lse, p.top_k, p.top_p, filter_scratch);
        w = y, w_max = 0.0f, w_scale = 1.0f;
        group_maxes(w, vocab, group_lse);
        group_log_sums(w, vocab, w_max, w_scale, group_lse);
        w_lse = log_sum_exp(group_lse, num_groups(vocab));
      }
      if (p.temperature > 0.0f)
        token = draw_hierarchical(w, vocab, group_lse, w_max, w_scale, p.rng.seed, p.rng.offset, pos);
      if (proposal_scored) {
        scored = w, scored_max = w_max, scored_scale = w_scale, scored_log_s = w_lse;
      } else if (p.temperature == 1.0f && !filtered) {
        scored_log_s = tempered_lse;  // the untempered row's, already known
      }
    }
    if (std::isnan(scored_log_s)) scored_log_s = log_sum_exp_above(v, vocab, m);
    p.x0[pos] = token;
    p.conf[pos] = confidence_of(p.confidence, scored, vocab, token, scored_max, scored_scale, scored_log_s, greedy,
                                p.rng.seed, p.rng.offset, pos);
  }
  return first_error;
}

}  // namespace

int64_t DLLM_ISA_NAME(predict_masked_cpu)(const PredictParams& p, int64_t begin, int64_t end) {
  return with_dtype(p.dtype, [&]<DType D>() { return predict_positions<D>(p, begin, end); });
}

}  // namespace dllm
