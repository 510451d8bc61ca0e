// CUDA bindings of dllm::adaln and dllm::adaln_residual: the launch on the current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "adaln.h"

namespace dllm::binding {
namespace {

void run_cuda(const AdaLNCall& call) {
  adaln_cuda(call.params, at::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor adaln_cuda_op(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& shift,
                         const at::Tensor& scale, double eps) {
  AdaLNCall call = prepare_adaln("adaln", x, std::nullopt, std::nullopt, weight, shift, scale, eps);
  const c10::cuda::CUDAGuard guard(x.device());
  run_cuda(call);
  return call.out;
}

std::tuple<at::Tensor, at::Tensor> adaln_residual_cuda_op(const at::Tensor& x, const at::Tensor& update,
                                                          const at::Tensor& gate, const at::Tensor& weight,
                                                          const at::Tensor& shift, const at::Tensor& scale,
                                                          double eps) {
  AdaLNCall call = prepare_adaln("adaln_residual", x, update, gate, weight, shift, scale, eps);
  const c10::cuda::CUDAGuard guard(x.device());
  run_cuda(call);
  return {call.x_next, call.out};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CUDA, m) {
  m.impl("adaln", &adaln_cuda_op);
  m.impl("adaln_residual", &adaln_residual_cuda_op);
}

}  // namespace dllm::binding
