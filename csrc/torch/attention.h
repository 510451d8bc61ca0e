// Shared between the CPU and CUDA bindings of the attention ops.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "dllm/attention.h"

namespace dllm::binding {

// The op a user called, which errors name: attention, or attention_varlen (cu_seqlens given).
inline const char* attention_op(bool varlen) { return varlen ? "attention_varlen" : "attention"; }

struct AttentionCall {
  const char* op = "attention";  // attention_op's
  at::Tensor q, k, v, out, lse;
  at::Tensor q_start, q_count, k_start, k_count;  // varlen: int64 [B] sequence descriptors
  // varlen on CUDA: cu_seqlens (int32 or int64) and the bounds given, from which the CUDA binding
  // makes the descriptors (add_varlen_descriptors), unchecked and clamped
  at::Tensor cu_q, cu_k;
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
  at::Tensor q_len, k_len;                         // padded: the lengths given (AttentionParams::q_len)
  bool every_row_written = false;  // the CUDA kernels store all of out, lse and the gradients
  // On CUDA: out, lse and the gradients are allocated unfilled, and the rows the kernels leave are
  // stored by attention_store_padding_cuda (the CPU's start as zeros and -inf).
  bool unfilled_outputs = false;
  AttentionParams params;
};

// Padded ([B, S, H, D] with optional q_len / kv_len) or varlen ([T, H, D] with cu_seqlens).
// outputs: allocate out and lse (the forward); the backward sets the forward's own instead.
AttentionCall prepare_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const std::optional<at::Tensor>& kv_len, const std::optional<at::Tensor>& q_len,
                                const std::optional<at::Tensor>& cu_seqlens_q,
                                const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
                                int64_t max_seqlen_k, double scale, bool cuda, bool outputs = true);

// out (q's shape) and lse ([heads, q_tokens] float32) for a prepared call: unfilled where the
// kernels that run store every row (written_whole), else zeros and -inf.
void allocate_outputs(AttentionCall& call, const at::Tensor& q, bool written_whole);

struct AttentionGradCall {
  AttentionCall fwd;
  at::Tensor dout, dq, dk, dv;
  AttentionGradParams params;
};

AttentionGradCall prepare_attention_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                             const std::optional<at::Tensor>& kv_len,
                                             const std::optional<at::Tensor>& q_len,
                                             const std::optional<at::Tensor>& cu_seqlens_q,
                                             const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
                                             int64_t max_seqlen_k, double scale, bool cuda,
                                             bool dq_written_whole = false);

}  // namespace dllm::binding
