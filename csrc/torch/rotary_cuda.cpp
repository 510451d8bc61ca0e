// CUDA binding of dllm::rotary: the launch on the current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "rotary.h"

namespace dllm::binding {
namespace {

at::Tensor rotary_cuda_op(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool inverse) {
  RotaryCall call = prepare_rotary(x, cos, sin, inverse);
  const c10::cuda::CUDAGuard guard(x.device());
  rotary_cuda(call.params, at::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CUDA, m) { m.impl("rotary", &rotary_cuda_op); }

}  // namespace dllm::binding
