// CUDA bindings of attention_forward / attention_backward: what the tensor-core kernels support
// on top of prepare_attention's checks (which also align the operands), and the launch on the
// current stream. Nothing here synchronises (lengths are clamped on the device, never checked).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "attention.h"

namespace dllm::binding {
namespace {

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream().stream(); }

void check_supported(const char* op, const AttentionParams& p) {
  TORCH_CHECK_NOT_IMPLEMENTED(p.dtype != DType::kFloat32, op,
                              ": CUDA supports bfloat16 and float16 (float32 runs on the CPU only)");
  TORCH_CHECK_NOT_IMPLEMENTED(p.head_dim == 64 || p.head_dim == 128, op,
                              ": CUDA supports head dimension 64 or 128, got ", p.head_dim);
  TORCH_CHECK(p.batch <= 65535 && p.heads <= 65535, op, ": CUDA supports at most 65535 sequences and heads");
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK_NOT_IMPLEMENTED(prop->major >= 8, op, ": the CUDA kernels need compute capability 8.0 or newer, got ",
                              prop->major, ".", prop->minor);
}

// DLLM_ATTENTION_KERNEL picks the kernels: "wgmma" (Hopper's wgmma: compute capability 9.0, in
// builds for 9.0; the default where it runs, 1.3-1.6x mma.sync's forward on the H200) or "mma"
// (mma.sync, compute capability 8.0 and newer; the default elsewhere).
bool use_wgmma() {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const bool hopper = prop->major == 9 && prop->minor == 0;
  const char* choice = std::getenv("DLLM_ATTENTION_KERNEL");
  if (choice == nullptr || *choice == '\0') return DLLM_WITH_WGMMA && hopper;
  if (std::strcmp(choice, "mma") == 0) return false;
  TORCH_CHECK(std::strcmp(choice, "wgmma") == 0, "DLLM_ATTENTION_KERNEL must be \"mma\" or \"wgmma\", got \"",
              choice, "\"");
  TORCH_CHECK_NOT_IMPLEMENTED(DLLM_WITH_WGMMA, "DLLM_ATTENTION_KERNEL=wgmma: this build of dllm has no wgmma kernels "
                              "(they are built when TORCH_CUDA_ARCH_LIST includes 9.0)");
  TORCH_CHECK_NOT_IMPLEMENTED(hopper, "DLLM_ATTENTION_KERNEL=wgmma needs compute capability 9.0, got ", prop->major,
                              ".", prop->minor);
  return true;
}

// DLLM_ATTENTION_PINGPONG=0 runs the wgmma kernels' two warpgroups in lock step instead of half a
// tile apart (the default, "1"): kept to measure one against the other.
bool pingpong() {
  const char* choice = std::getenv("DLLM_ATTENTION_PINGPONG");
  if (choice == nullptr || *choice == '\0' || std::strcmp(choice, "1") == 0) return true;
  TORCH_CHECK(std::strcmp(choice, "0") == 0, "DLLM_ATTENTION_PINGPONG must be \"0\" or \"1\", got \"", choice, "\"");
  return false;
}

// DLLM_ATTENTION_DQ=atomic: the wgmma backward adds dQ inside its dK/dV kernel
// (float32 atomics, FlashAttention-2's and -3's way; summation order, so dQ's last bits, vary
// from run to run) instead of recomputing the scores in a dQ kernel of its own ("separate", the
// default until the two are measured against each other).
bool atomic_dq() {
  const char* choice = std::getenv("DLLM_ATTENTION_DQ");
  if (choice == nullptr || *choice == '\0' || std::strcmp(choice, "separate") == 0) return false;
  TORCH_CHECK(std::strcmp(choice, "atomic") == 0, "DLLM_ATTENTION_DQ must be \"separate\" or \"atomic\", got \"",
              choice, "\"");
  return true;
}

// A varlen call's descriptors, made on the device from its cu_seqlens (attention.cpp left them).
void add_varlen_descriptors(AttentionCall& call) {
  if (!call.cu_q.defined()) return;
  AttentionParams& p = call.params;
  const at::Tensor d = at::empty({4, p.batch}, call.cu_q.options().dtype(at::kLong));
  auto seqlens = [](const at::Tensor& cu, int64_t tokens, int64_t max_seqlen) {
    return CuSeqlens{cu.const_data_ptr(), cu.scalar_type() == at::kInt, tokens, max_seqlen};
  };
  attention_varlen_descriptors_cuda(seqlens(call.cu_q, p.q_tokens, call.max_seqlen_q),
                                    seqlens(call.cu_k, p.k_tokens, call.max_seqlen_k), p.batch, d.data_ptr<int64_t>(),
                                    stream());
  call.q_start = d[0];
  call.q_count = d[1];
  call.k_start = d[2];
  call.k_count = d[3];
  p.q_start = call.q_start.data_ptr<int64_t>();
  p.q_count = call.q_count.data_ptr<int64_t>();
  p.k_start = call.k_start.data_ptr<int64_t>();
  p.k_count = call.k_count.data_ptr<int64_t>();
}

std::tuple<at::Tensor, at::Tensor> attention_forward_cuda_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                              const std::optional<at::Tensor>& kv_len,
                                                              const std::optional<at::Tensor>& q_len,
                                                              const std::optional<at::Tensor>& cu_seqlens_q,
                                                              const std::optional<at::Tensor>& cu_seqlens_k,
                                                              int64_t max_seqlen_q, int64_t max_seqlen_k, double scale) {
  AttentionCall call = prepare_attention(q, k, v, kv_len, q_len, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                         max_seqlen_k, scale, true, /*outputs=*/false);
  const c10::cuda::CUDAGuard guard(q.device());
  check_supported(call.op, call.params);
  add_varlen_descriptors(call);
  const AttentionParams& p = call.params;
  const KeySplit split = attention_key_split(p, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const bool decoding = p.max_q <= kDecodeQueries, wgmma = !decoding && split.chunks == 0 && use_wgmma();
  // The rows without work: a padded batch's stored by the merge of the decoding and split
  // launches, else (a varlen batch's always: the merge leaves the rows no sequence holds) by a
  // kernel of their own ahead of the attention, which writes those rows only (with kv_len alone,
  // the sequences without keys) instead of filling out and lse whole first.
  const bool merged = (decoding || split.chunks > 0) && !p.launches_nothing() && p.q_start == nullptr;
  allocate_outputs(call, q, call.unfilled_outputs);
  if (call.unfilled_outputs && !call.every_row_written && !merged)
    attention_store_padding_cuda(p, AttentionPadding{call.out.data_ptr(), call.lse.data_ptr<float>()}, stream());
  auto workspace = [&](int64_t chunks) {
    return at::empty({attention_chunk_workspace_floats(p, chunks)}, q.options().dtype(at::kFloat));
  };
  // the mma.sync forward's copy of a padded batch's starts and counts (the split launch's too)
  at::Tensor descriptors;
  if (!decoding && !wgmma) descriptors = at::empty({attention_descriptor_count(p)}, q.options().dtype(at::kLong));
  if (decoding) {
    // A decoding step: the keys split across CTAs, which the tensor-core kernels' 128-query tiles cannot do
    attention_decode_cuda(p, workspace(attention_decode_chunks(p)).data_ptr<float>(), stream());
  } else if (split.chunks > 0) {
    attention_forward_split_cuda(p, split, workspace(split.chunks).data_ptr<float>(), descriptors.data_ptr<int64_t>(),
                                 stream());
  } else if (wgmma) {
#if DLLM_WITH_WGMMA
    attention_forward_wgmma_cuda(p, pingpong(), stream());
#endif
  } else {
    attention_forward_cuda(p, descriptors.data_ptr<int64_t>(), stream());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {call.out, call.lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda_op(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& kv_len, const std::optional<at::Tensor>& q_len,
    const std::optional<at::Tensor>& cu_seqlens_q, const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k, double scale) {
  // On q's device before the checks (which a CPU q fails): the kernels chosen there decide whether
  // dq needs a zero fill, which the atomic path, rounding all of dq from a float32 copy, does not.
  const c10::cuda::OptionalCUDAGuard guard(q.is_cuda() ? std::optional<c10::Device>(q.device()) : std::nullopt);
  const bool wgmma = use_wgmma(), atomic = wgmma && atomic_dq();
  AttentionGradCall call = prepare_attention_backward(dout, q, k, v, out, lse, kv_len, q_len, cu_seqlens_q,
                                                      cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, true, atomic);
  AttentionGradParams& g = call.params;
  check_supported(call.fwd.op, g.fwd);
  add_varlen_descriptors(call.fwd);
  g.fwd = call.fwd.params;  // copied before the descriptors were made (out and lse already set)
  at::Tensor delta = at::empty_like(call.fwd.lse);  // rowsum(dO * O), [heads, q_tokens] float32
  // ahead of the attention kernels, which write again what it stores of a malformed cu_seqlens's
  // overlapping sequences
  if (call.fwd.unfilled_outputs && !call.fwd.every_row_written)
    attention_store_padding_cuda(
        g.fwd, AttentionPadding{atomic ? nullptr : call.dq.data_ptr(), nullptr, {call.dk.data_ptr(), call.dv.data_ptr()}},
        stream());
  if (wgmma) {
#if DLLM_WITH_WGMMA
    at::Tensor dq_accum;
    if (atomic) dq_accum = at::zeros(call.dq.sizes(), q.options().dtype(at::kFloat));
    attention_backward_wgmma_cuda(g, delta.data_ptr<float>(), pingpong(),
                                  dq_accum.defined() ? dq_accum.data_ptr<float>() : nullptr, stream());
#endif
  } else {
    attention_backward_cuda(g, delta.data_ptr<float>(), stream());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {call.dq, call.dk, call.dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CUDA, m) {
  m.impl("attention_forward", &attention_forward_cuda_op);
  m.impl("attention_backward", &attention_backward_cuda_op);
}

}  // namespace dllm::binding
