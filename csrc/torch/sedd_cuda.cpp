// CUDA bindings of the SEDD/MDLM ops: Philox state from torch's CUDA generator, launch on the
// current stream, and the error check (deferred_errors.h).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "deferred_errors.h"
#include "streaming_options_cuda.h"
#include "rng.h"
#include "sedd.h"

namespace dllm::binding {
namespace {

at::Tensor error_slot(const at::Tensor& like) { return at::full({1}, kSeddNoError, like.options().dtype(at::kLong)); }

void check_errors(const char* op, const at::Tensor& slot, int64_t seq_len, const SeddErrorText& text) {
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  check_later(copy_to_host_later(slot),
              [op, seq_len, text = &text](int64_t encoded) { raise_sedd_error(op, encoded, seq_len, *text); });
}

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream().stream(); }

at::Tensor sedd_step_cuda_op(const at::Tensor& logits, const at::Tensor& x, const at::Tensor& sigma,
                             const at::Tensor& dsig, c10::string_view graph, c10::string_view method,
                             bool scale_by_sigma, std::optional<at::Generator> generator) {
  StepCall call = prepare_step(logits, x, sigma, dsig, graph, method, scale_by_sigma);
  const c10::cuda::CUDAGuard guard(logits.device());
  check_cuda_vocab("sedd_step", call.params.vocab, 2);
  call.params.l2_prefetch_blocks = l2_prefetch_blocks(3);  // sedd_step_kernel's __launch_bounds__
  call.params.async_copies = async_copies();
  call.params.rng = cuda_rng_state(generator);
  at::Tensor slot = error_slot(logits);
  call.params.first_error = slot.data_ptr<int64_t>();
  sedd_step_cuda(call.params, stream());
  check_errors("sedd_step", slot, call.params.seq_len, kStepErrors);
  return call.x_next;
}

at::Tensor sample_transition_cuda_op(const at::Tensor& x0, const at::Tensor& sigma, c10::string_view graph,
                                     int64_t num_classes, std::optional<at::Generator> generator) {
  TransitionCall call = prepare_transition(x0, sigma, graph, num_classes);
  const c10::cuda::CUDAGuard guard(x0.device());
  call.params.rng = cuda_rng_state(generator);
  at::Tensor slot = error_slot(x0);
  call.params.first_error = slot.data_ptr<int64_t>();
  sample_transition_cuda(call.params, stream());
  check_errors("sample_transition", slot, call.params.seq_len, kNoisingErrors);
  return call.x_t;
}

at::Tensor score_entropy_loss_cuda_op(const at::Tensor& logits, const at::Tensor& x_t, const at::Tensor& x0,
                                      const at::Tensor& sigma, const at::Tensor& dsigma, c10::string_view graph,
                                      bool scale_by_sigma) {
  constexpr const char* op = "score_entropy_loss";
  LossCall call = prepare_score_entropy(op, logits, x_t, x0, sigma, dsigma, graph, scale_by_sigma);
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor slot = error_slot(logits);
  call.params.first_error = slot.data_ptr<int64_t>();
  call.params.async_copies = async_copies();
  loss_forward_cuda(call.params, stream());
  check_errors(op, slot, call.params.seq_len, kScoreEntropyErrors);
  return finish_loss(call);
}

at::Tensor score_entropy_loss_backward_cuda_op(const at::Tensor& grad_loss, const at::Tensor& logits,
                                               const at::Tensor& x_t, const at::Tensor& x0, const at::Tensor& sigma,
                                               const at::Tensor& dsigma, c10::string_view graph, bool scale_by_sigma) {
  constexpr const char* op = "score_entropy_loss_backward";
  LossCall call = prepare_score_entropy(op, logits, x_t, x0, sigma, dsigma, graph, scale_by_sigma);
  prepare_backward(op, call, grad_loss);
  const c10::cuda::CUDAGuard guard(logits.device());
  // Out-of-range tokens give NaN gradient rows rather than an error: autograd reaches the
  // backward only after the forward's check of the same tokens was queued (deferred_errors.h).
  loss_backward_cuda(call.params, stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return call.grad.view(logits.sizes());
}

std::tuple<at::Tensor, at::Tensor> masked_diffusion_loss_cuda_op(const at::Tensor& logits, const at::Tensor& x_t,
                                                                 const at::Tensor& x0, const at::Tensor& weight,
                                                                 int64_t mask_id) {
  constexpr const char* op = "masked_diffusion_loss";
  LossCall call = prepare_masked_diffusion(op, logits, x_t, x0, weight, mask_id);
  const c10::cuda::CUDAGuard guard(logits.device());
  call.lse = at::empty({x_t.size(0), x_t.size(1)}, logits.options().dtype(at::kFloat));
  call.params.lse = call.lse.data_ptr<float>();
  at::Tensor slot = error_slot(logits);
  call.params.first_error = slot.data_ptr<int64_t>();
  call.params.async_copies = async_copies();
  loss_forward_cuda(call.params, stream());
  check_errors(op, slot, call.params.seq_len, kMaskedDiffusionErrors);
  return {finish_loss(call), call.lse};
}

at::Tensor masked_diffusion_loss_backward_cuda_op(const at::Tensor& grad_loss, const at::Tensor& logits,
                                                  const at::Tensor& lse, const at::Tensor& x_t, const at::Tensor& x0,
                                                  const at::Tensor& weight, int64_t mask_id) {
  constexpr const char* op = "masked_diffusion_loss_backward";
  LossCall call = prepare_masked_diffusion(op, logits, x_t, x0, weight, mask_id);
  use_saved_lse(op, call, lse);
  prepare_backward(op, call, grad_loss);
  const c10::cuda::CUDAGuard guard(logits.device());
  loss_backward_cuda(call.params, stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return call.grad.view(logits.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CUDA, m) {
  m.impl("sedd_step", &sedd_step_cuda_op);
  m.impl("sample_transition", &sample_transition_cuda_op);
  m.impl("score_entropy_loss", &score_entropy_loss_cuda_op);
  m.impl("score_entropy_loss_backward", &score_entropy_loss_backward_cuda_op);
  m.impl("masked_diffusion_loss", &masked_diffusion_loss_cuda_op);
  m.impl("masked_diffusion_loss_backward", &masked_diffusion_loss_backward_cuda_op);
}

}  // namespace dllm::binding
