// CUDA bindings of predict_masked and commit_tokens.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "deferred_errors.h"
#include "streaming_options_cuda.h"
#include "rng.h"
#include "unmask.h"

namespace dllm::binding {
namespace {

std::tuple<at::Tensor, at::Tensor> predict_masked_cuda_op(const at::Tensor& logits, const at::Tensor& x, int64_t mask_id,
                                                           double temperature, int64_t top_k, double top_p,
                                                           c10::string_view confidence, int64_t logits_shift,
                                                           c10::string_view confidence_from, std::optional<at::Generator> generator) {
  PredictCall call = prepare_predict(logits, x, mask_id, temperature, top_k, top_p, std::string(confidence), logits_shift,
                                     std::string(confidence_from));
  const c10::cuda::CUDAGuard guard(logits.device());
  // Two floats a group: the group log-masses and, for the fused pass A, the group maxima
  // (predict_masked_kernel's dynamic shared memory).
  check_cuda_vocab("predict_masked", call.params.vocab, 2);
  // before the generator advances: a refused value leaves the draws of later calls as they were
  call.params.l2_prefetch_blocks = l2_prefetch_blocks(2);  // predict_masked_kernel's __launch_bounds__
  call.params.async_copies = async_copies();
  call.params.rng = cuda_rng_state(generator, call.random);
  at::Tensor first_error = at::full({1}, kNoError, x.options());
  call.params.first_error = first_error.data_ptr<int64_t>();
  predict_masked_cuda(call.params, at::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  check_later(copy_to_host_later(first_error),
              [x, vocab = call.params.vocab, version = x._version()](int64_t encoded) {
                raise_predict_error(encoded, x, vocab, x._version() != version);
              });
  return {call.x0, call.conf};
}

at::Tensor commit_tokens_cuda_op(at::Tensor& x, const at::Tensor& x0, const at::Tensor& conf, int64_t mask_id,
                                 const std::optional<at::Tensor>& num_tokens, std::optional<double> threshold,
                                 const std::optional<at::Tensor>& prob, const std::optional<at::Tensor>& window,
                                 double position_temperature, std::optional<at::Generator> generator) {
  CommitCall call = prepare_commit(x, x0, conf, mask_id, num_tokens, threshold, prob, window, position_temperature);
  const c10::cuda::CUDAGuard guard(x.device());
  call.params.rng = cuda_rng_state(generator, call.random);
  commit_tokens_cuda(call.params, at::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  raise_arrived_errors();  // a sampler's step calls predict_masked, then this
  return call.committed;
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CUDA, m) {
  m.impl("predict_masked", &predict_masked_cuda_op);
  m.impl("commit_tokens", &commit_tokens_cuda_op);
}

}  // namespace dllm::binding
