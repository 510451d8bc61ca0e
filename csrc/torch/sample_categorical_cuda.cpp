// CUDA binding of sample_categorical: Philox state from torch's CUDA generator, launch on the
// current stream, and the error check (skipped under graph capture, where it cannot sync).
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <mutex>

#include "sample_categorical.h"

namespace dllm::binding {
namespace {

RngState cuda_rng_state(std::optional<at::Generator> generator, uint64_t increment) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(generator, at::cuda::detail::getDefaultCUDAGenerator());
  at::PhiloxCudaState st;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    st = gen->philox_cuda_state(increment);
  }
  RngState rng;
  if (st.captured_) {
    rng.seed_ptr = st.seed_.ptr;
    rng.offset_ptr = st.offset_.ptr;
    rng.offset_intragraph = st.offset_intragraph_;
  } else {
    rng.seed = st.seed_.val;
    rng.offset = st.offset_.val;
  }
  return rng;
}

std::tuple<at::Tensor, at::Tensor> sample_categorical_cuda_op(const at::Tensor& logits,
                                                               const std::optional<at::Tensor>& temperature,
                                                               double scalar_temperature,
                                                               std::optional<at::Generator> generator) {
  const c10::cuda::CUDAGuard guard(logits.device());
  CategoricalCall call = prepare_categorical(logits, temperature, scalar_temperature);
  // Counters are keyed by (row, index) inside a call, so each call needs one fresh offset.
  call.params.rng = cuda_rng_state(generator, 4);
  at::Tensor first_error = at::full({1}, kNoError, logits.options().dtype(at::kLong));
  call.params.first_error = first_error.data_ptr<int64_t>();
  sample_categorical_cuda(call.params, at::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None)
    raise_categorical_error(first_error.item<int64_t>());
  return {call.tokens, call.logprob};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CUDA, m) { m.impl("sample_categorical", &sample_categorical_cuda_op); }

}  // namespace dllm::binding
