// CUDA binding of sample_categorical: Philox state from torch's CUDA generator, launch on the
// current stream, and the error check (deferred_errors.h).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "deferred_errors.h"
#include "streaming_options_cuda.h"
#include "rng.h"
#include "sample_categorical.h"

namespace dllm::binding {
namespace {

std::tuple<at::Tensor, at::Tensor> sample_categorical_cuda_op(const at::Tensor& logits,
                                                               const std::optional<at::Tensor>& temperature,
                                                               double scalar_temperature,
                                                               std::optional<at::Generator> generator) {
  CategoricalCall call = prepare_categorical(logits, temperature, scalar_temperature);
  const c10::cuda::CUDAGuard guard(logits.device());
  check_cuda_vocab("sample_categorical", call.params.vocab, 2);
  call.params.l2_prefetch_blocks = l2_prefetch_blocks(3);  // sample_categorical_kernel's __launch_bounds__
  call.params.async_copies = async_copies();
  call.params.rng = cuda_rng_state(generator, call.random);
  at::Tensor first_error = at::full({1}, kNoError, logits.options().dtype(at::kLong));
  call.params.first_error = first_error.data_ptr<int64_t>();
  sample_categorical_cuda(call.params, at::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  check_later(copy_to_host_later(first_error), raise_categorical_error);
  return {call.tokens, call.logprob};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CUDA, m) { m.impl("sample_categorical", &sample_categorical_cuda_op); }

}  // namespace dllm::binding
