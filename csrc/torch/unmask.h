// Shared between the CPU and CUDA bindings of predict_masked and commit_tokens.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "dllm/unmask.h"

namespace dllm::binding {

struct PredictCall {
  at::Tensor logits, x, x0, conf;
  PredictParams params;
  bool random = false;  // whether the call draws random numbers
};

PredictCall prepare_predict(const at::Tensor& logits, const at::Tensor& x, int64_t mask_id, double temperature,
                            int64_t top_k, double top_p, const std::string& confidence, int64_t logits_shift,
                            const std::string& confidence_from);
// x_changed: x was updated in place since the call (a CUDA call's error raised later), so the bad
// token it held is no longer read back for the message.
void raise_predict_error(int64_t encoded, const at::Tensor& x, int64_t vocab, bool x_changed = false);

struct CommitCall {
  at::Tensor x0, conf, num_tokens, prob, window, committed;
  CommitParams params;
  bool random = false;
};

CommitCall prepare_commit(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& conf, int64_t mask_id,
                          const std::optional<at::Tensor>& num_tokens, std::optional<double> threshold,
                          const std::optional<at::Tensor>& prob, const std::optional<at::Tensor>& window,
                          double position_temperature);
void raise_commit_error(int64_t encoded);

}  // namespace dllm::binding
