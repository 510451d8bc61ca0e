// Shared between the CPU and CUDA bindings of dllm::adaln and dllm::adaln_residual: argument
// checks, the per-sequence float32 tables and the outputs.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "dllm/adaln.h"

namespace dllm::binding {

struct AdaLNCall {
  at::Tensor x, update, gate, w, shift, out, x_next;
  AdaLNParams params;
};
AdaLNCall prepare_adaln(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& update,
                        const std::optional<at::Tensor>& gate, const at::Tensor& weight, const at::Tensor& shift,
                        const at::Tensor& scale, double eps);

}  // namespace dllm::binding
