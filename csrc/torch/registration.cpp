// Every dllm op schema, in one place. Kernels register against these in the binding files.
#include <torch/library.h>

TORCH_LIBRARY(dllm, m) {
  // logits [..., V] float32 | bfloat16 | float16; temperature: per-row float tensor of shape
  // [...] (or one element), else scalar_temperature. Returns tokens int64 [...] and the drawn
  // token's log-probability float32 [...]. Temperature 0 is argmax (lowest index on ties) and
  // its log-probability is taken under the untempered softmax.
  m.def(
      "sample_categorical(Tensor logits, Tensor? temperature, float scalar_temperature, *, "
      "Generator? generator=None) -> (Tensor tokens, Tensor logprob)",
      {at::Tag::nondeterministic_seeded});

  // SEDD / MDLM (dllm/sedd.h). logits [B, L, K] float32 | bfloat16 | float16; tokens int64
  // [B, L]; sigma, dsig, dsigma, weight: floating [B]. graph: "absorb" (mask = K - 1) or
  // "uniform"; method: "analytic", "euler" or "denoise". Losses are float32 [B], summed over
  // positions; the *_backward ops write d(logits) once and are what autograd calls.
  m.def(
      "sedd_step(Tensor logits, Tensor x, Tensor sigma, Tensor dsig, *, str graph, str method, "
      "bool scale_by_sigma=True, Generator? generator=None) -> Tensor",
      {at::Tag::nondeterministic_seeded});
  m.def(
      "sample_transition(Tensor x0, Tensor sigma, *, str graph, int num_classes, Generator? generator=None) -> Tensor",
      {at::Tag::nondeterministic_seeded});
  m.def(
      "score_entropy_loss(Tensor logits, Tensor x_t, Tensor x0, Tensor sigma, Tensor dsigma, *, str graph, "
      "bool scale_by_sigma=True) -> Tensor");
  m.def(
      "score_entropy_loss_backward(Tensor grad_loss, Tensor logits, Tensor x_t, Tensor x0, Tensor sigma, "
      "Tensor dsigma, *, str graph, bool scale_by_sigma) -> Tensor");
  // Returns the loss and the per-position log-sum-exp that the backward reuses.
  m.def(
      "masked_diffusion_loss(Tensor logits, Tensor x_t, Tensor x0, Tensor weight, *, int mask_id) "
      "-> (Tensor loss, Tensor lse)");
  m.def(
      "masked_diffusion_loss_backward(Tensor grad_loss, Tensor logits, Tensor lse, Tensor x_t, Tensor x0, "
      "Tensor weight, *, int mask_id) -> Tensor");
}
