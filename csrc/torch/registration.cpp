// Every dllm op schema, in one place. Kernels register against these in the binding files.
#include <torch/library.h>

#include "deferred_errors.h"

TORCH_LIBRARY(dllm, m) {
  // logits [..., V] float32 | bfloat16 | float16; temperature: per-row float tensor of shape
  // [...] (or one element), else scalar_temperature. Returns tokens int64 [...] and the drawn
  // token's log-probability float32 [...]. Temperature 0 is argmax (lowest index on ties) and
  // its log-probability is taken under the untempered softmax.
  m.def(
      "sample_categorical(Tensor logits, Tensor? temperature, float scalar_temperature, *, "
      "Generator? generator=None) -> (Tensor tokens, Tensor logprob)",
      {at::Tag::nondeterministic_seeded});

  // logits [..., L, V]; x int64 [..., L]. For each x == mask_id: a proposal (argmax at
  // temperature 0, else an exact draw after top-k / top-p filtering; never mask_id) and its
  // confidence ("prob", "margin", "entropy", "random") under the model's distribution or, with
  // confidence_from="proposal", the proposal's. Elsewhere x0 = x and conf = -inf.
  // logits_shift = 1 reads position i's logits from row i - 1 (row 0 for position 0).
  m.def(
      "predict_masked(Tensor logits, Tensor x, int mask_id, float temperature=0., int top_k=0, float top_p=1., "
      "str confidence=\"prob\", int logits_shift=0, str confidence_from=\"model\", *, Generator? generator=None) -> "
      "(Tensor x0, Tensor conf)",
      {at::Tag::nondeterministic_seeded});

  // x int64 [B, L] updated in place: among x == mask_id inside window[b] = [start, end), commit
  // x0 at the num_tokens[b] most confident positions, or those with conf >= threshold (at least
  // the best one), or each with probability prob[b]. Returns the count per row, int64 [B].
  m.def(
      "commit_tokens(Tensor(a!) x, Tensor x0, Tensor conf, int mask_id, Tensor? num_tokens=None, "
      "float? threshold=None, Tensor? prob=None, Tensor? window=None, float position_temperature=0., *, "
      "Generator? generator=None) -> Tensor committed",
      {at::Tag::nondeterministic_seeded});

  // Non-causal attention. Padded: q [B, Sq, H, D], k and v [B, Sk, Hkv, D] (H a multiple of
  // Hkv), optional int q_len / kv_len [B] (right padding: keys past kv_len are never read,
  // output rows past q_len are zero). Varlen: q [Tq, H, D], k and v [Tk, Hkv, D] packed, with
  // cu_seqlens_q / cu_seqlens_k [B + 1] and the max lengths. Returns out (like q) and the
  // float32 log-sum-exp [H, Tq] (Tq = B * Sq when padded) that the backward needs.
  m.def(
      "attention_forward(Tensor q, Tensor k, Tensor v, Tensor? kv_len, Tensor? q_len, Tensor? cu_seqlens_q, "
      "Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, float scale) -> (Tensor out, Tensor lse)");
  m.def(
      "attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? kv_len, "
      "Tensor? q_len, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, float scale) "
      "-> (Tensor dq, Tensor dk, Tensor dv)");
  // RoPE, rotate-half (dllm/rotary.h): x [B, S, H, D] float32 | bfloat16 | float16, any strides
  // but a unit one in D; cos, sin float32 [S, D / 2] or [B, S, D / 2]. Returns a contiguous
  // [B, S, H, D] in x's dtype, float32 math rounded once; inverse rotates by the opposite angle.
  m.def("rotary(Tensor x, Tensor cos, Tensor sin, bool inverse=False) -> Tensor");
  // adaLN, the DiT's modulated LayerNorm (dllm/adaln.h): x [B, S, dim] float32 | bfloat16 |
  // float16; weight [dim]; shift, scale, gate [B, dim]. out = layer_norm(x) * weight * (1 + scale)
  // + shift in float32, in x's dtype; adaln_residual first takes x_next = x + gate * update
  // (update like x) and returns (x_next, layer_norm-modulated x_next).
  m.def("adaln(Tensor x, Tensor weight, Tensor shift, Tensor scale, float eps) -> Tensor");
  m.def("adaln_residual(Tensor x, Tensor update, Tensor gate, Tensor weight, Tensor shift, Tensor scale, "
        "float eps) -> (Tensor x_next, Tensor out)");
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
  // The errors that CUDA calls found in their inputs' values, raised once the host has waited
  // for them (deferred_errors.h); no tensors, so one kernel for every dispatch key.
  m.def("raise_pending_errors() -> ()", &dllm::binding::raise_pending_errors);
}
