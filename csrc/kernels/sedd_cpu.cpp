// CPU kernels of the SEDD/MDLM ops (dllm/sedd.h). Each row is converted once into a
// float buffer (it stays in L2), so the logits are read from memory once even where the math
// needs two passes over the row.
#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu_isa.h"
#include "cpu_rows.h"
#include "dllm/sample_categorical.h"
#include "dllm/sedd.h"

namespace dllm {
namespace {

using namespace cpu;

// exp for any float input, inf above 88.72 where float32's exp overflows. exp_poly's 2^n overflows
// already from n = 128 (x = 127.5 ln 2 = 88.38); (p + p) * 2^(n - 1) is exp_poly's value bit for
// bit wherever that one is finite (both factors scale exactly), at one add more. Only where 2^(n - 1)
// would be subnormal (x < -86.98, exp < 2^-125.5) it gives 0, as exp_poly does below -87.3.
inline float exp_any(float v) {
  int32_t n;
  const float p = exp_reduced(v < -87.3f ? -87.3f : v, n);
  return v > 88.72f ? kInf : (p + p) * bits_to_float(uint32_t(n + 126) << 23);
}

// x[i] <- exp(x[i] - ref) (0 for -inf entries); returns the sum. ref >= every x[i].
double exp_inplace_sum(float* x, int64_t n, float ref) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) {
      const float v = x[i + k];
      const float e = v == -kInf ? 0.0f : exp_poly(v - ref);
      x[i + k] = e;
      acc[k] += e;
    }
  for (; i < n; ++i) {
    const float e = x[i] == -kInf ? 0.0f : exp_poly(x[i] - ref);
    x[i] = e;
    acc[0] += e;
  }
  double s = 0.0;
  for (int64_t k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}

// x[i] <- max(0, x[i] - a); returns the sum.
double clip_inplace_sum(float* x, int64_t n, float a) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) {
      const float v = x[i + k] - a;
      x[i + k] = v > 0.0f ? v : 0.0f;
      acc[k] += x[i + k];
    }
  for (; i < n; ++i) {
    const float v = x[i] - a;
    x[i] = v > 0.0f ? v : 0.0f;
    acc[0] += x[i];
  }
  double s = 0.0;
  for (int64_t k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}

// argmax_i (log(w[i]) + Gumbel noise of logical index first + i) over weights w >= 0; -1 when
// every weight is 0.
int64_t gumbel_argmax_linear(const float* w, int64_t n, uint64_t seed, uint64_t offset, int64_t row,
                             int64_t first, RngStream stream) {
  return gumbel_argmax_by(n, [w](int64_t i) { return w[i] > 0.0f ? std::log(w[i]) : -kInf; }, seed, offset, row,
                          first, stream);
}

// The hierarchical Gumbel-max of sample_categorical over linear weights buf[0..K), whose
// group-level log-masses are log(group_sum[g]) + log_factor, plus one extra candidate (token x)
// of log-weight log_w_x. Returns the token, or -1 when nothing has positive weight.
int64_t draw(const float* buf, const double* group_sum, int64_t vocab, double log_factor, double log_w_x,
             int64_t x, uint64_t seed, uint64_t offset, int64_t r) {
  const int64_t groups = (vocab + kCategoricalGroup - 1) / kCategoricalGroup;
  int64_t best_group = -1;
  double best_key = -INFINITY;
  for (int64_t g = 0; g <= groups; ++g) {
    const double lw = g < groups ? (group_sum[g] > 0.0 ? std::log(group_sum[g]) + log_factor : -INFINITY) : log_w_x;
    if (lw == -INFINITY) continue;
    const double key = lw + gumbel_at(seed, offset, uint64_t(r), uint64_t(g), RngStream::kGroup);
    if (best_group < 0 || key > best_key) best_group = g, best_key = key;
  }
  if (best_group < 0) return -1;
  if (best_group == groups) return x;
  const int64_t lo = best_group * kCategoricalGroup;
  const int64_t n = std::min(kCategoricalGroup, vocab - lo);
  float sub[kSubgroupsPerGroup];
  const int64_t subgroups = (n + kCategoricalSubgroup - 1) / kCategoricalSubgroup;
  for (int64_t s = 0; s < subgroups; ++s)
    sub[s] = sum_of(buf + lo + s * kCategoricalSubgroup, std::min(kCategoricalSubgroup, n - s * kCategoricalSubgroup));
  const int64_t s = gumbel_argmax_linear(sub, subgroups, seed, offset, r, best_group * kSubgroupsPerGroup, RngStream::kSubgroup);
  if (s < 0) return -1;  // unreachable when the group had positive mass
  const int64_t first = lo + s * kCategoricalSubgroup;
  const int64_t e = gumbel_argmax_linear(buf + first, std::min(kCategoricalSubgroup, vocab - first), seed, offset, r,
                                         first, RngStream::kElement);
  return e < 0 ? -1 : first + e;
}

bool bad_sigma(float sigma, float d) {
  return !(sigma > 0.0f && sigma < kInf && d >= 0.0f && d < kInf);
}

template <DType D>
int64_t step_rows(const SeddStepParams& p, int64_t begin, int64_t end) {
  using T = typename Loader<D>::T;
  const int64_t K = p.vocab;
  const int64_t groups = (K + kCategoricalGroup - 1) / kCategoricalGroup;
  float* buf = row_scratch<float, 0>(K);
  double* group_sum = row_scratch<double, 1>(groups);
  int64_t first_error = kSeddNoError;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / p.seq_len;
    const int64_t x = p.x[r];
    int64_t out = -1;
    SeddStatus status = kSeddOk;
    if (x < 0 || x >= K) {
      status = kSeddBadToken;
    } else if (bad_sigma(p.sigma[b], p.dsig[b])) {
      status = kSeddBadSigma;
    } else if (p.graph == SeddGraph::kAbsorb && x != K - 1) {
      out = x;  // an unmasked token is kept by every absorbing-graph predictor: no read needed
    } else {
      const StepRow s = step_row(p.graph, p.method, p.scale_by_sigma, p.sigma[b], p.dsig[b], K);
      const T* row = static_cast<const T*>(p.logits) + r * p.row_stride;
      if (!load_row<D>(row, K, buf)) {
        status = kSeddNonFinite;
      } else {
        buf[x] = -kInf;  // x's own log-score is fixed at 0: handled as the extra candidate
        float ref = max_of(buf, K);
        if (s.clip) ref = std::max(ref, float(s.shift));
        double total = 0.0;
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t lo = g * kCategoricalGroup;
          group_sum[g] = ref == -kInf ? 0.0 : exp_inplace_sum(buf + lo, std::min(kCategoricalGroup, K - lo), ref);
          total += group_sum[g];
        }
        double log_factor, log_w_x;
        if (!s.clip) {
          log_factor = double(ref) + s.log_c;
          log_w_x = mixture_log_w_x(s, total > 0.0 ? double(ref) + std::log(total) : -INFINITY);
        } else {
          const double a = clip_level(s, std::exp(s.shift - double(ref)), total, K, log_w_x);
          for (int64_t g = 0; g < groups; ++g) {
            const int64_t lo = g * kCategoricalGroup;
            group_sum[g] = clip_inplace_sum(buf + lo, std::min(kCategoricalGroup, K - lo), float(a));
          }
          log_factor = s.log_c;
        }
        out = draw(buf, group_sum, K, log_factor, log_w_x, x, p.rng.seed, p.rng.offset, r);
        if (out < 0) status = kSeddNoMass;
      }
    }
    if (status != kSeddOk) {
      out = -1;
      first_error = std::min(first_error, sedd_encode(r, status));
    }
    p.x_next[r] = out;
  }
  return first_error;
}

// ---- losses --------------------------------------------------------------------------------

template <DType D>
int64_t forward_rows(const LossParams& p, int64_t begin, int64_t end) {
  using T = typename Loader<D>::T;
  const int64_t K = p.vocab;
  float* buf = row_scratch<float, 0>(K);
  int64_t first_error = kSeddNoError;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / p.seq_len;
    const int64_t xt = p.x_t[r], x0 = p.x0[r];
    const T* row = static_cast<const T*>(p.logits) + r * p.row_stride;
    double loss = 0.0;
    SeddStatus status = kSeddOk;
    if (p.kind == LossKind::kMaskedDiffusion) {
      if (!loss_tokens_ok(p, xt, x0)) status = kSeddBadToken;
      else if (xt == p.mask_id && x0 == p.mask_id) status = kSeddMaskTarget;
      else if (xt == p.mask_id) {
        for (int64_t i = 0; i < K; ++i) buf[i] = Loader<D>::load(row[i]);
        buf[p.mask_id] = -kInf;  // SUBS: the mask is never predicted
        const float m = max_of(buf, K);
        const double lse = double(m) + std::log(exp_inplace_sum(buf, K, m));
        p.lse[r] = float(lse);
        loss = double(p.weight[b]) * (lse - double(Loader<D>::load(row[x0])));
      }
      if (xt != p.mask_id || status != kSeddOk) p.lse[r] = 0.0f;
    } else {
      const bool absorb = p.graph == SeddGraph::kAbsorb;
      if (!loss_tokens_ok(p, xt, x0)) status = kSeddBadToken;
      else if (bad_loss_sigma(p.sigma[b], p.dsigma[b])) status = kSeddBadSigma;
      else if (!absorb || xt == K - 1) {
        const SeRow s = se_row(p.graph, p.scale_by_sigma, p.sigma[b], K, xt, x0);
        for (int64_t i = 0; i < K; ++i) buf[i] = Loader<D>::load(row[i]);
        const double l_x0 = double(buf[x0]);
        double sum_l = 0.0;
        if (!absorb) {
          buf[xt] = 0.0f;
          sum_l = sum_of(buf, K);
        }
        buf[xt] = -kInf;  // absorb: xt is the mask, excluded from the positive term
        const float m = max_of(buf, K);
        const double sum_exp = m == -kInf ? 0.0 : std::exp(double(m) - s.shift) * exp_inplace_sum(buf, K, m);
        loss = double(p.dsigma[b]) * se_value(s, p.graph, K, sum_exp, sum_l, l_x0);
      }
    }
    if (status != kSeddOk) {
      loss = std::numeric_limits<double>::quiet_NaN();
      first_error = std::min(first_error, sedd_encode(r, status));
    }
    p.row_loss[r] = loss;
  }
  return first_error;
}

template <DType D>
int64_t backward_rows(const LossParams& p, int64_t begin, int64_t end) {
  using T = typename Loader<D>::T;
  const int64_t K = p.vocab;
  int64_t first_error = kSeddNoError;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t x0 = p.x0[r];
    const T* row = static_cast<const T*>(p.logits) + r * p.row_stride;
    T* grad = static_cast<T*>(p.grad) + r * K;
    const GradRow gr = grad_row(p, r);
    if (!gr.tokens_ok) first_error = std::min(first_error, sedd_encode(r, kSeddBadToken));
    if (!gr.active) {
      std::fill(grad, grad + K, Loader<D>::store(gr.tokens_ok ? 0.0f : std::numeric_limits<float>::quiet_NaN()));
      continue;
    }
    // One fused load-compute-store loop (it vectorises), then the two special entries.
    const GradTerms t = grad_terms(gr);
    for (int64_t i = 0; i < K; ++i) grad[i] = Loader<D>::store(t.sign * exp_any(Loader<D>::load(row[i]) - t.exp_ref) - t.gb);
    grad[x0] = Loader<D>::store(float(x0_grad(gr, Loader<D>::load(row[x0]))));
    grad[gr.skip] = Loader<D>::store(0.0f);
  }
  return first_error;
}

}  // namespace

int64_t DLLM_ISA_NAME(sedd_step_cpu)(const SeddStepParams& p, int64_t begin, int64_t end) {
  return with_dtype(p.dtype, [&]<DType D>() { return step_rows<D>(p, begin, end); });
}

int64_t DLLM_ISA_NAME(loss_forward_cpu)(const LossParams& p, int64_t begin, int64_t end) {
  return with_dtype(p.dtype, [&]<DType D>() { return forward_rows<D>(p, begin, end); });
}

int64_t DLLM_ISA_NAME(loss_backward_cpu)(const LossParams& p, int64_t begin, int64_t end) {
  return with_dtype(p.dtype, [&]<DType D>() { return backward_rows<D>(p, begin, end); });
}

// Forward noising: one Philox block per position, 64 bits for the move decision and 64 for the
// replacement token, so a position's outcome depends only on (seed, offset, position). Streams
// separate the draws inside one call; this op has only one kind of draw, so it takes kGroup.
int64_t DLLM_ISA_NAME(sample_transition_cpu)(const SampleTransitionParams& p, int64_t begin, int64_t end) {
  int64_t first_error = kSeddNoError;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / p.seq_len;
    const int64_t x0 = p.x0[r];
    const float sigma = p.sigma[b];
    if (x0 < 0 || x0 >= p.num_classes) {
      first_error = std::min(first_error, sedd_encode(r, kSeddBadToken));
      p.x_t[r] = -1;
      continue;
    }
    if (!(sigma >= 0.0f && sigma < kInf)) {
      first_error = std::min(first_error, sedd_encode(r, kSeddBadSigma));
      p.x_t[r] = -1;
      continue;
    }
    const U32x4 bits = philox_pair(p.rng.seed, p.rng.offset, uint64_t(r), 0, RngStream::kGroup);
    p.x_t[r] = transition_token(p.graph, x0, p.num_classes, double(sigma), bits);
  }
  return first_error;
}

}  // namespace dllm
