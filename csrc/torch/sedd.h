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
// Score entropy (weight_or_dsigma = dsigma, sigma given) or masked diffusion (sigma undefined).
LossCall prepare_score_entropy(const char* op, const at::Tensor& logits, const at::Tensor& x_t, const at::Tensor& x0,
                               const at::Tensor& sigma, const at::Tensor& dsigma, c10::string_view graph,
                               bool scale_by_sigma);
LossCall prepare_masked_diffusion(const char* op, const at::Tensor& logits, const at::Tensor& x_t,
                                  const at::Tensor& x0, const at::Tensor& weight, int64_t mask_id);
// Backward set-up on a prepared call: checks grad_loss [B], allocates grad like logits.
void prepare_backward(const char* op, LossCall& call, const at::Tensor& grad_loss);
// The per-sequence loss [B] float32 from the per-position losses.
at::Tensor finish_loss(const LossCall& call);

// What kSeddBadSigma means, after "sigma[b] ": the steps and losses need sigma > 0 (they take
// log(expm1(sigma))), noising accepts sigma = 0 (the identity).
constexpr const char* kSigmaRuleStep =
    "must be finite and > 0, and the step/weight term at that index finite (and >= 0 for a step)";
constexpr const char* kSigmaRuleNoising = "must be finite and >= 0";

// Throws the error the kernels encoded as (row << 3) | status; no-op for kSeddNoError.
void raise_sedd_error(const char* op, int64_t encoded, int64_t seq_len, const char* token_names,
                      const char* sigma_rule = kSigmaRuleStep);

}  // namespace dllm::binding
