// Torch bindings of dllm::adaln and dllm::adaln_residual: checks, and the CPU kernel over rows.
#include "adaln.h"

#include <torch/library.h>

#include <cmath>

#include "checks.h"

namespace dllm::binding {

AdaLNCall prepare_adaln(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& update,
                        const std::optional<at::Tensor>& gate, const at::Tensor& weight, const at::Tensor& shift,
                        const at::Tensor& scale, double eps) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be [B, S, dim], got shape ", x.sizes());
  const DType dtype = logits_dtype(op, x, "x");
  const int64_t batch = x.size(0), seq = x.size(1), dim = x.size(2);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == dim, op, ": weight must be [dim] = [", dim, "], got ",
              weight.sizes());
  for (const auto& [t, name] : {std::pair{&shift, "shift"}, std::pair{&scale, "scale"}}) {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == batch && t->size(1) == dim, op, ": ", name, " must be [B, dim] = [",
                batch, ", ", dim, "], got ", t->sizes());
  }
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0, op, ": eps must be positive and finite, got ", eps);
  for (const auto& [t, name] : {std::pair{&weight, "weight"}, std::pair{&shift, "shift"}, std::pair{&scale, "scale"}}) {
    TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()), op, ": ", name, " must be floating point, got ",
                     t->scalar_type());
    check_same_device(op, x, "x", *t, name);
  }

  AdaLNCall call;
  call.x = x.contiguous();
  // The per-sequence factors in float32: the norm's weight folded into the scale, w + w * scale
  // in one small kernel for a bfloat16 or float32 scale (a float64 one is rounded after).
  const at::Tensor weight_f = weight.to(at::kFloat);
  call.w = at::addcmul(weight_f, weight_f, scale).to(at::kFloat).contiguous();
  call.shift = shift.to(at::kFloat).contiguous();
  call.out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  AdaLNParams& p = call.params;
  if (update.has_value()) {
    TORCH_CHECK(gate.has_value(), op, ": a residual update needs its gate");
    TORCH_CHECK(update->sizes() == x.sizes(), op, ": update must have x's shape ", x.sizes(), ", got ",
                update->sizes());
    TORCH_CHECK_TYPE(update->scalar_type() == x.scalar_type(), op, ": update must have x's dtype ", x.scalar_type(),
                     ", got ", update->scalar_type());
    TORCH_CHECK(gate->sizes() == shift.sizes(), op, ": gate must be [B, dim] = [", batch, ", ", dim, "], got ",
                gate->sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(gate->scalar_type()), op, ": gate must be floating point, got ",
                     gate->scalar_type());
    check_same_device(op, x, "x", *update, "update");
    check_same_device(op, x, "x", *gate, "gate");
    call.update = update->contiguous();
    call.gate = gate->to(at::kFloat).contiguous();
    call.x_next = at::empty_like(call.out);
    p.update = call.update.data_ptr();
    p.gate = call.gate.data_ptr<float>();
    p.x_next = call.x_next.data_ptr();
  }
  p.x = call.x.data_ptr();
  p.w = call.w.data_ptr<float>();
  p.shift = call.shift.data_ptr<float>();
  p.out = call.out.data_ptr();
  p.dtype = dtype;
  p.rows = batch * seq;
  p.seq = std::max<int64_t>(seq, 1);
  p.dim = dim;
  p.eps = float(eps);
  return call;
}

namespace {

void run_cpu(const AdaLNCall& call) {
  const AdaLNParams& p = call.params;
  at::parallel_for(0, p.rows, rows_per_task(p.dim), [&](int64_t begin, int64_t end) { adaln_cpu(p, begin, end); });
}

at::Tensor adaln_cpu_op(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& shift, const at::Tensor& scale,
                        double eps) {
  AdaLNCall call = prepare_adaln("adaln", x, std::nullopt, std::nullopt, weight, shift, scale, eps);
  run_cpu(call);
  return call.out;
}

std::tuple<at::Tensor, at::Tensor> adaln_residual_cpu_op(const at::Tensor& x, const at::Tensor& update,
                                                         const at::Tensor& gate, const at::Tensor& weight,
                                                         const at::Tensor& shift, const at::Tensor& scale, double eps) {
  AdaLNCall call = prepare_adaln("adaln_residual", x, update, gate, weight, shift, scale, eps);
  run_cpu(call);
  return {call.x_next, call.out};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CPU, m) {
  m.impl("adaln", &adaln_cpu_op);
  m.impl("adaln_residual", &adaln_residual_cpu_op);
}

}  // namespace dllm::binding
