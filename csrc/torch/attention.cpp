// Torch bindings of attention_forward / attention_backward: layouts, checks, CPU kernels.
#include "attention.h"

#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "checks.h"

namespace dllm::binding {
namespace {

constexpr const char* kOp = "attention";

// t as the kernels read it: int32 or int64 as given, other integer types as int64; contiguous.
at::Tensor int32_or_int64(const at::Tensor& t) {
  const bool kept = t.scalar_type() == at::kInt || t.scalar_type() == at::kLong;
  return (kept ? t : t.to(at::kLong)).contiguous();
}

// A padded batch's lengths as the kernels read them (AttentionParams::q_size / k_size, which clamp
// them to [0, S]).
at::Tensor lengths(const at::Tensor& t, int64_t batch, int64_t max_len, const char* name, bool cuda) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch, kOp, ": ", name, " must have shape [", batch, "], got ", t.sizes());
  check_integer(kOp, t, name);
  if (!cuda) {  // on CUDA a check would synchronise; the kernels clamp lengths to [0, S] instead
    TORCH_CHECK_VALUE(t.ge(0).all().item<bool>() && t.le(max_len).all().item<bool>(), kOp, ": ", name,
                      " must lie in [0, ", max_len, "]");
  }
  return int32_or_int64(t);
}

// The CUDA kernels copy rows in 16-byte chunks: a contiguous tensor at an odd offset gets a copy.
at::Tensor contiguous_for_kernels(const at::Tensor& t, bool cuda) {
  at::Tensor c = t.contiguous();
  if (cuda && reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

// The kernels address head h of token i of q, k or v ([B, S, H, D] flattened to [B * S, H, D], or
// varlen [T, H, D]) at i * token_stride + h * head_stride. A view that fits that and the 16-byte
// chunks (q, k, v sliced from a fused qkv projection) is read in place; anything else is copied.
struct Operand {
  at::Tensor t;
  int64_t token_stride, head_stride;
};

Operand operand(const at::Tensor& t, bool varlen, bool cuda) {
  const int64_t token_stride = varlen || t.size(1) == 1 ? t.stride(0) : t.stride(1);
  const bool flattens = varlen || t.size(0) == 1 || t.size(1) == 1 || t.stride(0) == t.size(1) * t.stride(1);
  const int64_t bytes = t.element_size();
  const bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && token_stride * bytes % 16 == 0 &&
                       t.stride(-2) * bytes % 16 == 0;
  if (flattens && t.stride(-1) == 1 && aligned) return {t, token_stride, t.stride(-2)};
  at::Tensor c = contiguous_for_kernels(t, cuda);
  return {c, c.size(-2) * c.size(-1), c.size(-1)};
}

}  // namespace

AttentionCall prepare_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const std::optional<at::Tensor>& kv_len, const std::optional<at::Tensor>& q_len,
                                const std::optional<at::Tensor>& cu_seqlens_q,
                                const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
                                int64_t max_seqlen_k, double scale, bool cuda, bool outputs) {
  const bool varlen = cu_seqlens_q.has_value();
  const char* op = attention_op(varlen);
  TORCH_CHECK(varlen == cu_seqlens_k.has_value(), op, ": give both cu_seqlens_q and cu_seqlens_k, or neither");
  const int64_t rank = varlen ? 3 : 4;
  TORCH_CHECK(q.dim() == rank && k.dim() == rank && v.dim() == rank, op, ": q, k, v must be ",
              varlen ? "[total, heads, D] (varlen)" : "[B, S, heads, D]", ", got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  const DType dtype = logits_dtype(op, q, "q");
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
                   ": q, k, v must share a dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  check_same_device(op, q, "q", k, "k");
  check_same_device(op, q, "q", v, "v");
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": k and v must have the same shape, got ", k.sizes(), " and ", v.sizes());
  const int64_t heads = q.size(-2), kv_heads = k.size(-2), dim = q.size(-1);
  TORCH_CHECK(k.size(-1) == dim, op, ": q and k must share the head dimension, got ", dim, " and ", k.size(-1));
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0, op, ": the number of q heads (", heads,
              ") must be a multiple of the number of k/v heads (", kv_heads, ")");
  TORCH_CHECK(dim > 0, op, ": head dimension must be positive");
  // The kernels take each row's maximum of the raw scores as that of the scaled ones.
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0, op, ": softmax_scale must be positive and finite, got ", scale);

  AttentionCall call;
  call.op = op;
  const Operand oq = operand(q, varlen, cuda), ok = operand(k, varlen, cuda), ov = operand(v, varlen, cuda);
  call.q = oq.t;
  call.k = ok.t;
  call.v = ov.t;
  int64_t batch, max_q, max_k;
  if (varlen) {
    TORCH_CHECK(!kv_len.has_value() && !q_len.has_value(), op, ": varlen inputs take lengths from cu_seqlens only");
    for (const at::Tensor* cu : {&*cu_seqlens_q, &*cu_seqlens_k}) {
      check_same_device(op, q, "q", *cu, "cu_seqlens");
      check_integer(op, *cu, "cu_seqlens");
      TORCH_CHECK(cu->dim() == 1 && cu->size(0) >= 1, op, ": cu_seqlens must be [B + 1]");
    }
    TORCH_CHECK(cu_seqlens_q->size(0) == cu_seqlens_k->size(0), op, ": cu_seqlens_q and cu_seqlens_k disagree on B");
    batch = cu_seqlens_q->size(0) - 1;
    TORCH_CHECK_VALUE(max_seqlen_q >= 0 && max_seqlen_k >= 0, op, ": max_seqlen_q and max_seqlen_k must be >= 0, got ",
                      max_seqlen_q, " and ", max_seqlen_k);
    if (cuda) {
      // No check (it would synchronise): attention_cuda.cpp's add_varlen_descriptors clamps them
      // in one kernel, where torch ops took fourteen launches.
      call.cu_q = int32_or_int64(*cu_seqlens_q);
      call.cu_k = int32_or_int64(*cu_seqlens_k);
      call.max_seqlen_q = max_seqlen_q;
      call.max_seqlen_k = max_seqlen_k;
    } else {
      const at::Tensor cq = cu_seqlens_q->to(at::kLong), ck = cu_seqlens_k->to(at::kLong);
      TORCH_CHECK_VALUE(cq[0].item<int64_t>() == 0 && ck[0].item<int64_t>() == 0 && cq.diff().ge(0).all().item<bool>() &&
                            ck.diff().ge(0).all().item<bool>() && cq[-1].item<int64_t>() <= q.size(0) &&
                            ck[-1].item<int64_t>() <= k.size(0),
                        op, ": cu_seqlens must start at 0, never decrease, and end within the packed tokens");
      TORCH_CHECK_VALUE(cq.diff().le(max_seqlen_q).all().item<bool>() && ck.diff().le(max_seqlen_k).all().item<bool>(),
                        op, ": a sequence is longer than max_seqlen_q / max_seqlen_k");
      call.q_start = cq.slice(0, 0, batch).contiguous();
      call.q_count = cq.diff().contiguous();
      call.k_start = ck.slice(0, 0, batch).contiguous();
      call.k_count = ck.diff().contiguous();
    }
    // max_seqlen_* only bound the lengths, which are clamped to the packed tokens anyway: a
    // generous bound (2^32 for "no limit") would otherwise size the CUDA grids and key chunks,
    // and overflow the kernels' 32-bit positions within a sequence (attention_fwd.cu's
    // chunk * chunk_keys read keys before k at max_seqlen_k = 2^32).
    max_q = std::min(max_seqlen_q, q.size(0));
    max_k = std::min(max_seqlen_k, k.size(0));
  } else {
    batch = q.size(0);
    TORCH_CHECK(k.size(0) == batch, op, ": q and k disagree on the batch size: ", batch, " and ", k.size(0));
    max_q = q.size(1);
    max_k = k.size(1);
    // No descriptors: the kernels work out starts and counts from the lengths as given.
    if (q_len) call.q_len = lengths(*q_len, batch, max_q, "q_len", cuda);
    if (kv_len) call.k_len = lengths(*kv_len, batch, max_k, "kv_len", cuda);
    if (q_len) check_same_device(op, q, "q", *q_len, "q_len");
    if (kv_len) check_same_device(op, q, "q", *kv_len, "kv_len");
  }
  if (cuda) {
    // The CUDA kernels count a sequence's queries and keys in 32 bits (tile offsets, masks, loop
    // bounds; their addresses are 64-bit), with up to 256 past the end for the last tile. Only
    // stride-0 (expanded) k and v reach this: 2^31 real keys take 256 GiB at D = 64.
    constexpr int64_t kMaxTokens = (int64_t(1) << 31) - 256;
    TORCH_CHECK_VALUE(max_q <= kMaxTokens && max_k <= kMaxTokens, op, ": CUDA supports sequences of at most ",
                      kMaxTokens, " queries and keys, got ", max_q, " and ", max_k);
  }
  const int64_t q_tokens = varlen ? q.size(0) : batch * max_q;
  const int64_t k_tokens = varlen ? k.size(0) : batch * max_k;
  // The CUDA kernels store every query row of a sequence with keys: without lengths (and with
  // keys) no row is left for attention_store_padding_cuda, whose launch is then skipped.
  call.every_row_written = cuda && !varlen && !q_len && !kv_len && heads > 0 && max_q > 0 && max_k > 0;
  call.unfilled_outputs = cuda;

  AttentionParams& p = call.params;
  p.q = call.q.data_ptr();
  p.k = call.k.data_ptr();
  p.v = call.v.data_ptr();
  p.dtype = dtype;
  p.batch = batch;
  p.heads = heads;
  p.kv_heads = kv_heads;
  p.head_dim = dim;
  p.q_tokens = q_tokens;
  p.k_tokens = k_tokens;
  p.max_q = max_q;
  p.max_k = max_k;
  p.q_token_stride = oq.token_stride;
  p.q_head_stride = oq.head_stride;
  p.k_token_stride = ok.token_stride;
  p.k_head_stride = ok.head_stride;
  p.v_token_stride = ov.token_stride;
  p.v_head_stride = ov.head_stride;
  p.o_token_stride = heads * dim;
  p.o_head_stride = dim;
  if (call.q_start.defined()) {  // varlen on the CPU (on CUDA, add_varlen_descriptors sets them)
    p.q_start = call.q_start.data_ptr<int64_t>();
    p.q_count = call.q_count.data_ptr<int64_t>();
    p.k_start = call.k_start.data_ptr<int64_t>();
    p.k_count = call.k_count.data_ptr<int64_t>();
  }
  if (call.q_len.defined()) {
    p.q_len = call.q_len.const_data_ptr();
    p.q_len_int32 = call.q_len.scalar_type() == at::kInt;
  }
  if (call.k_len.defined()) {
    p.k_len = call.k_len.const_data_ptr();
    p.k_len_int32 = call.k_len.scalar_type() == at::kInt;
  }
  p.scale = float(scale);
  if (outputs) allocate_outputs(call, q, call.unfilled_outputs);
  return call;
}

void allocate_outputs(AttentionCall& call, const at::Tensor& q, bool written_whole) {
  AttentionParams& p = call.params;
  const auto lse_options = q.options().dtype(at::kFloat);
  call.out = written_whole ? at::empty(q.sizes(), q.options()) : at::zeros(q.sizes(), q.options());
  call.lse = written_whole ? at::empty({p.heads, p.q_tokens}, lse_options)
                           : at::full({p.heads, p.q_tokens}, -std::numeric_limits<float>::infinity(), lse_options);
  p.out = call.out.data_ptr();
  p.lse = call.lse.data_ptr<float>();
}

AttentionGradCall prepare_attention_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                             const std::optional<at::Tensor>& kv_len,
                                             const std::optional<at::Tensor>& q_len,
                                             const std::optional<at::Tensor>& cu_seqlens_q,
                                             const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
                                             int64_t max_seqlen_k, double scale, bool cuda,
                                             bool dq_written_whole) {
  AttentionGradCall call;
  // dq, dk, dv are written at q's, k's and v's strides: the backward takes them contiguous.
  call.fwd = prepare_attention(q.contiguous(), k.contiguous(), v.contiguous(), kv_len, q_len, cu_seqlens_q,
                               cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, cuda, /*outputs=*/false);
  check_same_device(call.fwd.op, q, "q", dout, "grad_out");
  check_same_device(call.fwd.op, q, "q", out, "out");
  check_same_device(call.fwd.op, q, "q", lse, "lse");
  TORCH_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes(), call.fwd.op, ": grad_out and out must have q's shape");
  const std::vector<int64_t> lse_shape{call.fwd.params.heads, call.fwd.params.q_tokens};
  TORCH_CHECK(lse.sizes() == lse_shape && lse.scalar_type() == at::kFloat, call.fwd.op, ": lse must be float32 ",
              at::IntArrayRef(lse_shape));
  call.fwd.out = contiguous_for_kernels(out.to(q.scalar_type()), cuda);
  call.fwd.lse = lse.contiguous();
  call.fwd.params.out = call.fwd.out.data_ptr();
  call.fwd.params.lse = call.fwd.lse.data_ptr<float>();
  call.dout = contiguous_for_kernels(dout.to(q.scalar_type()), cuda);
  // The CUDA backward stores each gradient row of a sequence with queries and keys once (the
  // binding the rest); a dq rounded from a float32 copy
  // (dq_written_whole) is stored whole, its empty rows as zeros.
  const auto gradient = [&](const at::Tensor& t) {
    return call.fwd.unfilled_outputs ? at::empty_like(t) : at::zeros_like(t);
  };
  call.dq = dq_written_whole ? at::empty_like(call.fwd.q) : gradient(call.fwd.q);
  call.dk = gradient(call.fwd.k);
  call.dv = gradient(call.fwd.v);
  AttentionGradParams& g = call.params;
  g.fwd = call.fwd.params;
  g.dout = call.dout.data_ptr();
  g.do_token_stride = g.fwd.o_token_stride;
  g.do_head_stride = g.fwd.o_head_stride;
  g.dq = call.dq.data_ptr();
  g.dk = call.dk.data_ptr();
  g.dv = call.dv.data_ptr();
  return call;
}

namespace {

std::tuple<at::Tensor, at::Tensor> attention_forward_cpu_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                             const std::optional<at::Tensor>& kv_len,
                                                             const std::optional<at::Tensor>& q_len,
                                                             const std::optional<at::Tensor>& cu_seqlens_q,
                                                             const std::optional<at::Tensor>& cu_seqlens_k,
                                                             int64_t max_seqlen_q, int64_t max_seqlen_k, double scale) {
  AttentionCall call = prepare_attention(q, k, v, kv_len, q_len, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                         max_seqlen_k, scale, false);
  const AttentionParams& p = call.params;
  at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t b, int64_t e) { attention_forward_cpu(p, b, e); });
  return {call.out, call.lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu_op(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& kv_len, const std::optional<at::Tensor>& q_len,
    const std::optional<at::Tensor>& cu_seqlens_q, const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k, double scale) {
  AttentionGradCall call = prepare_attention_backward(dout, q, k, v, out, lse, kv_len, q_len, cu_seqlens_q,
                                                      cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, false);
  const AttentionGradParams& g = call.params;
  at::parallel_for(0, g.fwd.batch * g.fwd.kv_heads, 1, [&](int64_t b, int64_t e) { attention_backward_cpu(g, b, e); });
  return {call.dq, call.dk, call.dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CPU, m) {
  m.impl("attention_forward", &attention_forward_cpu_op);
  m.impl("attention_backward", &attention_backward_cpu_op);
}

}  // namespace dllm::binding
