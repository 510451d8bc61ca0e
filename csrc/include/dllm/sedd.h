// Score-entropy discrete diffusion (SEDD) and masked diffusion (MDLM): fused sampler steps,
// losses and forward noising. Framework-free: raw pointers and sizes.
//
// Notation (see docs/api.md, "SEDD and MDLM ops"): K = logits.size(-1). Graph "absorb": the mask is K - 1 and
// tokens are [0, K - 1); graph "uniform": tokens are [0, K). The log-score at a position is the
// network output shifted by `shift` = log(expm1(sigma)) + log(K - 1) (scale_by_sigma) or 0,
// with the entry of the input token set to 0.
#pragma once
#include <cmath>
#include <cstdint>

#include "dllm/common.h"
#include "dllm/philox.h"

namespace dllm {

enum class SeddGraph : int { kAbsorb = 0, kUniform = 1 };
enum class SeddMethod : int { kAnalytic = 0, kEuler = 1, kDenoise = 2 };

// Per-row outcome, reported as (row << 3) | status; the smallest encoding names the lowest bad
// row (rows are flattened [B, L] positions). kSeddNoError is larger than any encoding.
enum SeddStatus : int64_t {
  kSeddOk = 0,
  kSeddNonFinite = 1,     // NaN or +inf logits in a row the op reads
  kSeddNoMass = 2,        // no token has positive probability (e.g. denoise on an all -inf row)
  kSeddBadToken = 3,      // x (or x_t / x0) outside the vocabulary
  kSeddBadSigma = 4,      // sigma <= 0 or non-finite (or dsig < 0, non-finite)
  kSeddMaskTarget = 5,    // x0 is the mask at a position the loss counts
};
constexpr int64_t kSeddNoError = INT64_MAX;

DLLM_HD int64_t sedd_encode(int64_t row, SeddStatus s) { return (row << 3) | int64_t(s); }

// Per-row noise terms shared by all kernels, computed in double: log(expm1(sigma)) without
// overflow for large sigma or cancellation for small sigma. expm1 overflows from 709.78 and a
// float sigma or dsig reaches 3.4e38, so the terms below take expm1 of them only through its log.
DLLM_HD double log_expm1(double s) { return s > 30.0 ? s + log1p(-exp(-s)) : log(expm1(s)); }

struct SeddStepParams {
  const void* logits = nullptr;  // [rows, K], row stride `row_stride`, unit column stride
  DType dtype = DType::kFloat32;
  int64_t rows = 0;       // B * L
  int64_t seq_len = 0;    // L: row r belongs to sequence r / L
  int64_t vocab = 0;      // K
  int64_t row_stride = 0;
  const int64_t* x = nullptr;      // [rows]
  const float* sigma = nullptr;    // [B]
  const float* dsig = nullptr;     // [B]
  SeddGraph graph = SeddGraph::kAbsorb;
  SeddMethod method = SeddMethod::kAnalytic;
  bool scale_by_sigma = true;
  RngState rng;
  int64_t* x_next = nullptr;       // [rows]; -1 on a bad row
  int64_t* first_error = nullptr;  // CUDA only: preset to kSeddNoError, atomically lowered
  int64_t l2_prefetch_blocks = 0;  // CUDA only: DLLM_L2_PREFETCH (cuda_rows.cuh)
  bool async_copies = false;       // CUDA only: DLLM_ASYNC_COPIES (cuda_async_rows.cuh)
};

struct SampleTransitionParams {
  const int64_t* x0 = nullptr;  // [rows]
  int64_t rows = 0;
  int64_t seq_len = 0;
  int64_t num_classes = 0;       // K
  const float* sigma = nullptr;  // [B]
  SeddGraph graph = SeddGraph::kAbsorb;
  RngState rng;
  int64_t* x_t = nullptr;
  int64_t* first_error = nullptr;
};

// score_entropy_loss (SEDD) and masked_diffusion_loss (MDLM) share one parameter block.
enum class LossKind : int { kScoreEntropy = 0, kMaskedDiffusion = 1 };

struct LossParams {
  LossKind kind = LossKind::kScoreEntropy;
  const void* logits = nullptr;  // [rows, K]
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t seq_len = 0;
  int64_t vocab = 0;
  int64_t row_stride = 0;
  const int64_t* x_t = nullptr;  // [rows]
  const int64_t* x0 = nullptr;   // [rows]
  // score entropy: sigma [B], dsigma [B] (the per-sequence weight), graph, scale_by_sigma.
  const float* sigma = nullptr;
  const float* dsigma = nullptr;
  SeddGraph graph = SeddGraph::kAbsorb;
  bool scale_by_sigma = true;
  // masked diffusion: weight [B], mask_id; `lse` [rows] is written by the forward (log-sum-exp
  // of the row without the mask logit) and read by the backward.
  const float* weight = nullptr;
  int64_t mask_id = 0;
  float* lse = nullptr;
  // forward: row_loss [rows] (double, already weighted; summed per sequence by the binding).
  double* row_loss = nullptr;
  // backward: grad_loss [B] in, grad [rows, K] out (contiguous, logits' dtype).
  const float* grad_loss = nullptr;
  void* grad = nullptr;
  int64_t* first_error = nullptr;
  bool async_copies = false;  // CUDA only, the forward: DLLM_ASYNC_COPIES (cuda_async_rows.cuh)
};

// CPU: rows [begin, end); returns the lowest encoded error or kSeddNoError.
int64_t sedd_step_cpu(const SeddStepParams& p, int64_t begin, int64_t end);
int64_t sample_transition_cpu(const SampleTransitionParams& p, int64_t begin, int64_t end);
int64_t loss_forward_cpu(const LossParams& p, int64_t begin, int64_t end);
int64_t loss_backward_cpu(const LossParams& p, int64_t begin, int64_t end);

// CUDA: all rows, asynchronously on `stream` (a cudaStream_t).
void sedd_step_cuda(const SeddStepParams& p, void* stream);
void sample_transition_cuda(const SampleTransitionParams& p, void* stream);
void loss_forward_cuda(const LossParams& p, void* stream);
void loss_backward_cuda(const LossParams& p, void* stream);

// Per-row constants of a sampler step, shared by the CPU and CUDA kernels (double math on a
// handful of scalars). With l the raw logits, shift the score shift and S = sum_{y != x} s_y,
// s_y = exp(l_y - shift), the next token is drawn from unnormalised weights:
//  - "mixture" rows (absorb, every method; uniform euler): w_y = c s_y for y != x and
//    w_x = max(0, 1 - c S) (0 for absorb denoise, which drops the mask column). A single pass
//    gives S, so the draw is a Gumbel-max over group log-masses l + log c - shift plus one
//    extra candidate, x.
//  - "clip" rows (uniform analytic and denoise): staggered score times the transition,
//    w_y proportional to max(0, s_y - A) (1 - e) / K for y != x and max(0, 1 - A) T_x for x,
//    with e = exp(-d), A = (1 - e) (S + 1) / K, T_x = 1 - (K - 1)(1 - e) / K. The clip needs A,
//    i.e. the row sum, before any weight is known: the kernels make a second pass over the row
//    (from the per-thread buffer on CPU, from L2 on CUDA).
struct StepRow {
  bool clip = false;
  bool x_can_stay = true;  // mixture rows: false for absorb denoise
  double shift = 0.0;      // clip rows
  double log_c = 0.0;      // mixture: log c - shift, so w_y = exp(l_y + log_c); clip: log((1 - e) / K)
  double em = 0.0;         // clip: 1 - e
  double log_tx = 0.0;     // clip: log T_x
};

DLLM_HD StepRow step_row(SeddGraph graph, SeddMethod method, bool scale_by_sigma, double sigma, double d,
                         int64_t vocab) {
  StepRow s;
  // Mixture rows fold the shift into log c, its terms one at a time: absorb analytic's
  // log c = log(expm1(d)) cancels log(expm1(sigma)) first, where d and sigma may both be so large
  // that the shift as one number has already rounded log(K - 1) away.
  const double log_em1 = scale_by_sigma ? log_expm1(sigma) : 0.0;
  const double log_k1 = scale_by_sigma ? log(double(vocab - 1)) : 0.0;
  if (graph == SeddGraph::kAbsorb) {
    s.x_can_stay = method != SeddMethod::kDenoise;
    // Denoise leaves x out, so a factor common to the other weights draws alike: c = e^shift keeps
    // the group log-masses those of the raw logits, where a huge shift would leave the Gumbel noise
    // added to them below their rounding.
    s.log_c = !s.x_can_stay ? 0.0 : (method == SeddMethod::kAnalytic ? log_expm1(d) : log(d)) - log_em1 - log_k1;
  } else if (method == SeddMethod::kEuler) {
    s.log_c = log(d) - log(double(vocab)) - log_em1 - log_k1;
  } else {
    s.clip = true;
    s.shift = log_em1 + log_k1;
    s.em = -expm1(-d);
    s.log_c = log(s.em) - log(double(vocab));
    s.log_tx = log1p(-double(vocab - 1) * s.em / double(vocab));
  }
  return s;
}

// Mixture rows: log-weight of staying at x given log(sum_{y != x} exp(l_y)) over raw logits.
DLLM_HD double mixture_log_w_x(const StepRow& s, double lse_others) {
  if (!s.x_can_stay) return -INFINITY;
  const double t = lse_others + s.log_c;  // log(c S)
  return t < 0.0 ? log1p(-exp(t)) : -INFINITY;
}

// Clip rows: with R the reference the weights are measured against (R >= shift, R >= every
// l_y), u_x = exp(shift - R) and sum_others = sum_{y != x} exp(l_y - R), returns A in units of
// exp(R - shift) (the `clip` subtracted from exp(l_y - R)) and sets log_w_x in the units where
// the others' weights are exp(log_c) * max(0, exp(l_y - R) - clip).
DLLM_HD double clip_level(const StepRow& s, double u_x, double sum_others, int64_t vocab, double& log_w_x) {
  const double a = s.em * (sum_others + u_x) / double(vocab);
  log_w_x = u_x > a ? log(u_x - a) + s.log_tx : -INFINITY;
  return a;
}

// Per-row constants of the score-entropy loss (see python/dllm/sedd/reference.py).
struct SeRow {
  double shift, ratio, const_term, neg_scale, x0_coef;
};

DLLM_HD SeRow se_row(SeddGraph graph, bool scale_by_sigma, double sigma, int64_t vocab, int64_t xt, int64_t x0) {
  const double K = double(vocab);
  SeRow s{};
  const double log_em1 = log_expm1(sigma);
  const double inv = exp(-log_em1);  // 1 / expm1(sigma): 0 from sigma = 745 on, log_em1 stays finite
  s.shift = scale_by_sigma ? log_em1 + log(K - 1.0) : 0.0;
  if (graph == SeddGraph::kAbsorb) {
    s.ratio = inv;  // the true ratio p_t(x0) / p_t(mask)
    s.const_term = inv * (-log_em1 - 1.0);  // ratio (log(ratio) - 1), 0 at ratio = 0
    s.x0_coef = inv;
  } else {
    const double q = 1.0 / (1.0 + K * inv), log_q = -log1p(K * inv);  // q = expm1 / (expm1 + K) -> 1
    const bool same = xt == x0;
    s.ratio = q;
    s.neg_scale = same ? q : 1.0;
    s.x0_coef = same ? 0.0 : inv;
    s.const_term = same ? (K - 1.0) / K * q * (log_q - 1.0) : ((-log_q - 1.0) / q - (K - 2.0)) / K;
  }
  return s;
}

// Score entropy of one position from its row sums over y != x_t: sum_exp = sum exp(l_y - shift)
// (absorb: the mask is x_t, so that is the positive term), sum_l = sum l_y (uniform only), and
// the raw logit at x0.
DLLM_HD double se_value(const SeRow& s, SeddGraph graph, int64_t vocab, double sum_exp, double sum_l, double l_x0) {
  if (graph == SeddGraph::kAbsorb) return sum_exp - s.ratio * (l_x0 - s.shift) + s.const_term;
  const double K = double(vocab);
  const double mean_log = (sum_l - (K - 1.0) * s.shift) / K;  // the 0 at x_t counts in the mean
  // x0 == x_t: the log-score there is the 0 put at x_t (x0_coef == 0), so the raw logit, which
  // may be +-inf or NaN, must not reach the sum
  const double neg = s.neg_scale * mean_log + (s.x0_coef != 0.0 ? s.x0_coef * (l_x0 - s.shift) : 0.0);
  return sum_exp / K - neg + s.const_term;
}

DLLM_HD bool bad_loss_sigma(float sigma, float dsigma) {
  return !(sigma > 0.0f && sigma < INFINITY && dsigma < INFINITY && dsigma > -INFINITY);
}

// Both losses take x_t in [0, K) and clean data x0 in [0, K), but for the mask K - 1 under score
// entropy's absorbing graph. The forwards report other tokens; the backwards never index with them.
DLLM_HD bool loss_tokens_ok(const LossParams& p, int64_t xt, int64_t x0) {
  const bool mask_is_last = p.kind == LossKind::kScoreEntropy && p.graph == SeddGraph::kAbsorb;
  return xt >= 0 && xt < p.vocab && x0 >= 0 && x0 < (mask_is_last ? p.vocab - 1 : p.vocab);
}

// The loss gradient of one row is d/dl_y = ga * exp(l_y - ref) - gb for y != skip, minus g_x0
// more at x0, and 0 at skip; rows outside the loss (not active) are all 0. A row whose tokens
// are out of range (the backward op called directly, on tokens no forward accepted) is not
// `tokens_ok`: the kernels fill it with NaN instead of indexing with its tokens. The x0 entry,
// where two large terms may cancel, is computed in double by x0_grad.
struct GradRow {
  bool tokens_ok = false, active = false;
  int64_t skip = 0;
  double ga = 0.0, gb = 0.0, ref = 0.0, g_x0 = 0.0;
};

DLLM_HD double x0_grad(const GradRow& gr, float l_x0) { return gr.ga * exp(double(l_x0) - gr.ref) - gr.gb - gr.g_x0; }

// The float32 form of the other entries' ga * exp(l - ref) - gb: sign(ga) * exp(l - exp_ref) - gb,
// with log|ga| folded into exp_ref. A product of a small ga (the uniform graph's g / K) and an
// exp past float32's range (l - ref > 88.72) is finite; taken apart, exp overflowed to inf first.
struct GradTerms {
  float sign, exp_ref, gb;
};
DLLM_HD GradTerms grad_terms(const GradRow& gr) {
  return {gr.ga < 0.0 ? -1.0f : 1.0f, float(gr.ref - log(fabs(gr.ga))), float(gr.gb)};
}

DLLM_HD GradRow grad_row(const LossParams& p, int64_t r) {
  const int64_t b = r / p.seq_len;
  const int64_t xt = p.x_t[r], x0 = p.x0[r];
  const bool md = p.kind == LossKind::kMaskedDiffusion, absorb = p.graph == SeddGraph::kAbsorb;
  GradRow gr;
  gr.tokens_ok = loss_tokens_ok(p, xt, x0);
  if (!gr.tokens_ok) return gr;
  if (md) {
    gr.active = xt == p.mask_id && x0 != p.mask_id;
    const double g = double(p.grad_loss[b]) * double(p.weight[b]);
    gr.skip = p.mask_id;
    gr.ga = g;
    gr.ref = gr.active ? double(p.lse[r]) : 0.0;
    gr.g_x0 = g;
    return gr;
  }
  gr.active = !absorb || xt == p.vocab - 1;
  gr.skip = xt;
  if (!gr.active) return gr;
  const double g = double(p.grad_loss[b]) * double(p.dsigma[b]);
  const SeRow s = se_row(p.graph, p.scale_by_sigma, p.sigma[b], p.vocab, xt, x0);
  gr.ref = s.shift;
  gr.ga = absorb ? g : g / double(p.vocab);
  gr.gb = absorb ? 0.0 : g * s.neg_scale / double(p.vocab);
  gr.g_x0 = g * s.x0_coef;
  return gr;
}

DLLM_HD uint64_t mulhi64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return uint64_t((unsigned __int128)a * b >> 64);
#endif
}

// The forward process at one position from 128 random bits: with probability 1 - exp(-sigma)
// the token moves, to the mask (absorb) or to a uniform token that may equal x0 (uniform).
// The move test compares a 53-bit uniform in double, so small move probabilities are exact;
// the replacement token is floor(v * K / 2^64) of a 64-bit v (bias below K / 2^64).
DLLM_HD int64_t transition_token(SeddGraph graph, int64_t x0, int64_t vocab, double sigma, U32x4 bits) {
  if (!(uniform53_from_bits(bits.x, bits.y) < -expm1(-sigma))) return x0;
  if (graph == SeddGraph::kAbsorb) return vocab - 1;
  return int64_t(mulhi64((uint64_t(bits.w) << 32) | bits.z, uint64_t(vocab)));
}

}  // namespace dllm
