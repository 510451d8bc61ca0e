// Shared between the CPU and CUDA bindings of dllm::rotary: argument checks and the output.
#pragma once
#include <ATen/ATen.h>

#include "dllm/rotary.h"

namespace dllm::binding {

struct RotaryCall {
  at::Tensor x, cos, sin, out;
  RotaryParams params;
};
RotaryCall prepare_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool inverse);

}  // namespace dllm::binding
