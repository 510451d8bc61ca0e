#include <ATen/cuda/CUDAGeneratorImpl.h>

#include "rng.h"

namespace dllm::binding {

RngState cuda_rng_state(const std::optional<at::Generator>& generator, bool draws) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(generator, at::cuda::detail::getDefaultCUDAGenerator());
  if (!draws) return {};
  at::PhiloxCudaState st;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    // Counters are keyed by (row, index) inside a call, so a call needs one fresh offset; torch
    // requires increments that are multiples of 4.
    st = gen->philox_cuda_state(4);
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

}  // namespace dllm::binding
