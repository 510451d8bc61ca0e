// Torch binding of dllm::rotary: checks, and the CPU kernel over positions.
#include "rotary.h"

#include <torch/library.h>

#include "checks.h"

namespace dllm::binding {

RotaryCall prepare_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool inverse) {
  constexpr const char* op = "rotary";
  TORCH_CHECK(x.dim() == 4, op, ": x must be [B, S, H, D], got shape ", x.sizes());
  const DType dtype = logits_dtype(op, x, "x");
  const int64_t batch = x.size(0), seq = x.size(1), heads = x.size(2), dim = x.size(3);
  TORCH_CHECK_VALUE(dim % 2 == 0, op, ": the head dimension must be even (rotate-half pairs i and i + D / 2), got ", dim);
  const int64_t half = dim / 2;
  TORCH_CHECK(cos.sizes() == sin.sizes(), op, ": cos and sin must have one shape, got ", cos.sizes(), " and ",
              sin.sizes());
  const bool per_sequence = cos.dim() == 3;
  TORCH_CHECK((cos.dim() == 2 && cos.size(0) == seq && cos.size(1) == half) ||
                  (per_sequence && cos.size(0) == batch && cos.size(1) == seq && cos.size(2) == half),
              op, ": cos and sin must be [S, D / 2] = [", seq, ", ", half, "] or [B, S, D / 2] = [", batch, ", ", seq,
              ", ", half, "], got ", cos.sizes());
  TORCH_CHECK_TYPE(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat, op,
                   ": cos and sin must be float32, got ", cos.scalar_type(), " and ", sin.scalar_type());
  check_same_device(op, x, "x", cos, "cos");
  check_same_device(op, x, "x", sin, "sin");

  RotaryCall call;
  // Any strides but the last: the q and k of a fused qkv projection are read in place.
  call.x = x.size(3) > 1 && x.stride(3) != 1 ? x.contiguous() : x;
  call.cos = cos.contiguous();
  call.sin = sin.contiguous();
  call.out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  RotaryParams& p = call.params;
  p.x = call.x.data_ptr();
  p.out = call.out.data_ptr();
  p.cos = call.cos.data_ptr<float>();
  p.sin = call.sin.data_ptr<float>();
  p.dtype = dtype;
  p.batch = batch;
  p.seq = seq;
  p.heads = heads;
  p.half = half;
  p.x_batch_stride = call.x.stride(0);
  p.x_seq_stride = call.x.stride(1);
  p.x_head_stride = call.x.stride(2);
  p.table_batch_stride = per_sequence ? seq * half : 0;
  p.inverse = inverse;
  return call;
}

namespace {

at::Tensor rotary_cpu_op(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool inverse) {
  RotaryCall call = prepare_rotary(x, cos, sin, inverse);
  const RotaryParams& p = call.params;
  at::parallel_for(0, p.batch * p.seq, rows_per_task(p.heads * p.half), [&](int64_t begin, int64_t end) { rotary_cpu(p, begin, end); });
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CPU, m) { m.impl("rotary", &rotary_cpu_op); }

}  // namespace dllm::binding
