// Shared between the CPU and CUDA bindings of sample_categorical.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "dllm/sample_categorical.h"

namespace dllm::binding {

struct CategoricalCall {
  at::Tensor logits;       // [rows, V] view
  at::Tensor temperature;  // [rows] float32, or undefined
  at::Tensor tokens;       // output, shaped like logits.shape[:-1]
  at::Tensor logprob;      // output, shaped like logits.shape[:-1]
  bool random = false;     // whether the call draws (a float temperature of 0 does not)
  CategoricalParams params;
};

// Validates the arguments, allocates the outputs and fills everything but params.rng.
CategoricalCall prepare_categorical(const at::Tensor& logits, const std::optional<at::Tensor>& temperature,
                                    double scalar_temperature);

// Throws the error that the kernels encoded as (row << 2) | status; no-op for kNoError.
void raise_categorical_error(int64_t encoded);

}  // namespace dllm::binding
