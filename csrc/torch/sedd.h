// Shared between the CPU and CUDA bindings of the SEDD/MDLM ops: argument checks, output
// allocation and error messages. The device-specific files only add RNG state and the launch.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "dllm/sedd.h"

namespace dllm::binding {

struct StepCall {
  at::Tensor logits, x, sigma, dsig, x_next;
  SeddStepParams params;
};
StepCall prepare_step(const at::Tensor& logits, const at::Tensor& x, const at::Tensor& sigma, const at::Tensor& dsig,
                      c10::string_view graph, c10::string_view method, bool scale_by_sigma);

struct TransitionCall {
  at::Tensor x0, sigma, x_t;
  SampleTransitionParams params;
};
TransitionCall prepare_transition(const at::Tensor& x0, const at::Tensor& sigma, c10::string_view graph,
                                  int64_t num_classes);

struct LossCall {
  at::Tensor logits, x_t, x0, sigma, dsigma, weight, lse, row_loss, grad_loss, grad;
  LossParams params;
};
// Argument checks and outputs of score_entropy_loss and masked_diffusion_loss (forward; the backward
// adds prepare_backward).
LossCall prepare_score_entropy(const char* op, const at::Tensor& logits, const at::Tensor& x_t, const at::Tensor& x0,
                               const at::Tensor& sigma, const at::Tensor& dsigma, c10::string_view graph,
                               bool scale_by_sigma);
LossCall prepare_masked_diffusion(const char* op, const at::Tensor& logits, const at::Tensor& x_t,
                                  const at::Tensor& x0, const at::Tensor& weight, int64_t mask_id);
// Backward set-up on a prepared call: checks grad_loss [B], allocates grad like logits.
void prepare_backward(const char* op, LossCall& call, const at::Tensor& grad_loss);
// masked_diffusion_loss_backward's input beside the forward's: the log-sum-exp [B, L] it returned.
void use_saved_lse(const char* op, LossCall& call, const at::Tensor& lse);
// The per-sequence loss [B] float32 from the per-position losses.
at::Tensor finish_loss(const LossCall& call);

// How an op's errors name its inputs. kSeddBadSigma reads "sigma[b] <sigma_rule>", then ", and
// <step_name>[b] <step_rule>" when the op has a step or weight term: the steps and losses need
// sigma > 0 (they take log(expm1(sigma))), noising accepts sigma = 0 (the identity).
struct SeddErrorText {
  const char* tokens;       // the token inputs, for kSeddBadToken
  const char* token_range;  // their valid range
  const char* sigma_rule;
  const char* step_name;  // nullptr: no step or weight term
  const char* step_rule;
};
constexpr const char* kGraphTokenRange = "absorb: tokens [0, K - 1) plus the mask K - 1; uniform: [0, K)";
constexpr SeddErrorText kStepErrors{"x", kGraphTokenRange, "must be finite and > 0", "dsig", "finite and >= 0"};
constexpr SeddErrorText kNoisingErrors{"x0", kGraphTokenRange, "must be finite and >= 0", nullptr, nullptr};
constexpr SeddErrorText kScoreEntropyErrors{
    "x_t or x0",
    "x_t: [0, K), the mask K - 1 included on the absorbing graph; x0, the clean data, never the mask: absorb "
    "[0, K - 1), uniform [0, K)",
    "must be finite and > 0", "dsigma", "finite"};
constexpr SeddErrorText kMaskedDiffusionErrors{"x_t or x0", "[0, K), K = logits.size(-1)", nullptr, nullptr, nullptr};

// Throws the error the kernels encoded as (row << 3) | status; no-op for kSeddNoError.
void raise_sedd_error(const char* op, int64_t encoded, int64_t seq_len, const SeddErrorText& text);

}  // namespace dllm::binding
