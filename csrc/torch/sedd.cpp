// Torch bindings of the SEDD/MDLM ops: checks, the CPU kernels, and the shared error reporting.
#include "sedd.h"

#include <torch/library.h>

#include <numeric>

#include "checks.h"
#include "rng.h"

namespace dllm::binding {
namespace {

SeddGraph parse_graph(const char* op, c10::string_view graph) {
  if (graph == "absorb") return SeddGraph::kAbsorb;
  if (graph == "uniform") return SeddGraph::kUniform;
  TORCH_CHECK_VALUE(false, op, ": graph must be \"absorb\" or \"uniform\", got \"", std::string(graph), "\"");
}

SeddMethod parse_method(const char* op, c10::string_view method) {
  if (method == "analytic") return SeddMethod::kAnalytic;
  if (method == "euler") return SeddMethod::kEuler;
  if (method == "denoise") return SeddMethod::kDenoise;
  TORCH_CHECK_VALUE(false, op, ": method must be \"analytic\", \"euler\" or \"denoise\", got \"", std::string(method), "\"");
}

// logits [B, L, K]: returns the [B * L, K] row view.
at::Tensor check_logits(const char* op, const at::Tensor& logits, DType& dtype) {
  TORCH_CHECK(logits.dim() == 3, op, ": logits must have shape [B, L, K], got ", logits.sizes());
  dtype = logits_dtype(op, logits, "logits");
  TORCH_CHECK(logits.size(2) >= 2, op, ": logits needs K >= 2 classes, got K = ", logits.size(2));
  TORCH_CHECK(logits.size(2) < (int64_t(1) << 31), op, ": K of 2^31 or more is not supported");
  return as_rows(logits);
}

at::Tensor check_tokens(const char* op, const at::Tensor& t, const char* name, const at::Tensor& logits) {
  check_same_device(op, logits, "logits", t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == logits.size(0) && t.size(1) == logits.size(1), op, ": ", name,
              " must have shape [B, L] = ", logits.sizes().slice(0, 2), " (logits without K), got ", t.sizes());
  return t.contiguous();
}

at::Tensor check_per_batch(const char* op, const at::Tensor& t, const char* name, const at::Tensor& like,
                           const char* like_name, int64_t B) {
  check_same_device(op, like, like_name, t, name);
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating tensor, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == B, op, ": ", name, " must have shape [B] = [", B, "], got ", t.sizes());
  return t.to(at::kFloat).contiguous();
}

}  // namespace

StepCall prepare_step(const at::Tensor& logits, const at::Tensor& x, const at::Tensor& sigma, const at::Tensor& dsig,
                      c10::string_view graph, c10::string_view method, bool scale_by_sigma) {
  constexpr const char* op = "sedd_step";
  StepCall call;
  SeddStepParams& p = call.params;
  call.logits = check_logits(op, logits, p.dtype);
  call.x = check_tokens(op, x, "x", logits);
  const int64_t B = logits.size(0);
  call.sigma = check_per_batch(op, sigma, "sigma", logits, "logits", B);
  call.dsig = check_per_batch(op, dsig, "dsig", logits, "logits", B);
  p.graph = parse_graph(op, graph);
  p.method = parse_method(op, method);
  call.x_next = at::empty_like(call.x);
  p.logits = call.logits.data_ptr();
  p.rows = call.logits.size(0);
  p.seq_len = logits.size(1);
  p.vocab = logits.size(2);
  p.row_stride = call.logits.stride(0);
  p.x = call.x.data_ptr<int64_t>();
  p.sigma = call.sigma.data_ptr<float>();
  p.dsig = call.dsig.data_ptr<float>();
  p.scale_by_sigma = scale_by_sigma;
  p.x_next = call.x_next.data_ptr<int64_t>();
  return call;
}

TransitionCall prepare_transition(const at::Tensor& x0, const at::Tensor& sigma, c10::string_view graph,
                                  int64_t num_classes) {
  constexpr const char* op = "sample_transition";
  TransitionCall call;
  SampleTransitionParams& p = call.params;
  p.graph = parse_graph(op, graph);
  TORCH_CHECK(num_classes >= 2 && num_classes < (int64_t(1) << 31), op,
              ": num_classes must be in [2, 2^31) (absorb: vocabulary + 1 for the mask), got ", num_classes);
  TORCH_CHECK_TYPE(x0.scalar_type() == at::kLong, op, ": x0 must be int64, got ", x0.scalar_type());
  TORCH_CHECK(x0.dim() == 2, op, ": x0 must have shape [B, L], got ", x0.sizes());
  call.x0 = x0.contiguous();
  call.sigma = check_per_batch(op, sigma, "sigma", x0, "x0", x0.size(0));
  call.x_t = at::empty_like(call.x0);
  p.x0 = call.x0.data_ptr<int64_t>();
  p.rows = x0.numel();
  p.seq_len = x0.size(1);
  p.num_classes = num_classes;
  p.sigma = call.sigma.data_ptr<float>();
  p.x_t = call.x_t.data_ptr<int64_t>();
  return call;
}

namespace {
LossCall prepare_loss_common(const char* op, const at::Tensor& logits, const at::Tensor& x_t, const at::Tensor& x0) {
  LossCall call;
  LossParams& p = call.params;
  call.logits = check_logits(op, logits, p.dtype);
  call.x_t = check_tokens(op, x_t, "x_t", logits);
  call.x0 = check_tokens(op, x0, "x0", logits);
  p.logits = call.logits.data_ptr();
  p.rows = call.logits.size(0);
  p.seq_len = logits.size(1);
  p.vocab = logits.size(2);
  p.row_stride = call.logits.stride(0);
  p.x_t = call.x_t.data_ptr<int64_t>();
  p.x0 = call.x0.data_ptr<int64_t>();
  call.row_loss = at::empty({p.rows}, logits.options().dtype(at::kDouble));
  p.row_loss = call.row_loss.data_ptr<double>();
  return call;
}
}  // namespace

LossCall prepare_score_entropy(const char* op, const at::Tensor& logits, const at::Tensor& x_t, const at::Tensor& x0,
                               const at::Tensor& sigma, const at::Tensor& dsigma, c10::string_view graph,
                               bool scale_by_sigma) {
  LossCall call = prepare_loss_common(op, logits, x_t, x0);
  LossParams& p = call.params;
  p.kind = LossKind::kScoreEntropy;
  p.graph = parse_graph(op, graph);
  p.scale_by_sigma = scale_by_sigma;
  call.sigma = check_per_batch(op, sigma, "sigma", logits, "logits", logits.size(0));
  call.dsigma = check_per_batch(op, dsigma, "dsigma", logits, "logits", logits.size(0));
  p.sigma = call.sigma.data_ptr<float>();
  p.dsigma = call.dsigma.data_ptr<float>();
  return call;
}

LossCall prepare_masked_diffusion(const char* op, const at::Tensor& logits, const at::Tensor& x_t,
                                  const at::Tensor& x0, const at::Tensor& weight, int64_t mask_id) {
  LossCall call = prepare_loss_common(op, logits, x_t, x0);
  LossParams& p = call.params;
  p.kind = LossKind::kMaskedDiffusion;
  TORCH_CHECK_VALUE(mask_id >= 0 && mask_id < p.vocab, op, ": mask_id must be in [0, K) = [0, ", p.vocab, "), got ",
                    mask_id);
  p.mask_id = mask_id;
  call.weight = check_per_batch(op, weight, "weight", logits, "logits", logits.size(0));
  p.weight = call.weight.data_ptr<float>();
  return call;
}

void prepare_backward(const char* op, LossCall& call, const at::Tensor& grad_loss) {
  const int64_t B = call.x_t.size(0);
  call.grad_loss = check_per_batch(op, grad_loss, "grad_loss", call.logits, "logits", B);
  call.params.grad_loss = call.grad_loss.data_ptr<float>();
  call.grad = at::empty({call.params.rows, call.params.vocab}, call.logits.options());
  call.params.grad = call.grad.data_ptr();
}

void use_saved_lse(const char* op, LossCall& call, const at::Tensor& lse) {
  check_same_device(op, call.logits, "logits", lse, "lse");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.sizes() == call.x_t.sizes(), op,
              ": lse must be the float32 [B, L] tensor that masked_diffusion_loss returned");
  call.lse = lse.contiguous();
  call.params.lse = call.lse.data_ptr<float>();
}

at::Tensor finish_loss(const LossCall& call) {
  const int64_t batch = call.x_t.size(0), length = call.x_t.size(1);
  if (call.row_loss.is_cuda()) return call.row_loss.view({batch, length}).sum(1).to(at::kFloat);
  // torch's CPU sum splits a long sequence among threads, and the order of a double sum can tip
  // the float32 loss: one thread sums each sequence in position order.
  at::Tensor loss = at::empty({batch}, call.row_loss.options().dtype(at::kFloat));
  const double* rows = call.row_loss.data_ptr<double>();
  float* out = loss.data_ptr<float>();
  at::parallel_for(0, batch, rows_per_task(length), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) out[b] = float(std::accumulate(rows + b * length, rows + (b + 1) * length, 0.0));
  });
  return loss;
}

void raise_sedd_error(const char* op, int64_t encoded, int64_t seq_len, const SeddErrorText& text) {
  if (encoded == kSeddNoError) return;
  const int64_t row = encoded >> 3;
  const int64_t b = row / seq_len, l = row % seq_len;
  switch (SeddStatus(encoded & 7)) {
    case kSeddNonFinite:
      TORCH_CHECK_VALUE(false, op, ": logits[", b, ", ", l, "] contains NaN or +inf");
    case kSeddNoMass:
      TORCH_CHECK_VALUE(false, op, ": no token has positive probability at position [", b, ", ", l,
                        "] (are all its logits -inf?)");
    case kSeddBadToken:
      TORCH_CHECK_VALUE(false, op, ": ", text.tokens, " at position [", b, ", ", l, "] is outside the token range (",
                        text.token_range, ")");
    case kSeddBadSigma: {
      const std::string step =
          text.step_name ? c10::str(", and ", text.step_name, "[", b, "] ", text.step_rule) : std::string();
      TORCH_CHECK_VALUE(false, op, ": sigma[", b, "] ", text.sigma_rule, step);
    }
    case kSeddMaskTarget:
      TORCH_CHECK_VALUE(false, op, ": x0[", b, ", ", l, "] is the mask id at a masked position: the clean data must not contain the mask");
    default: break;
  }
  TORCH_CHECK(false, op, ": unknown error code ", encoded);
}

namespace {

// Runs `kernel(begin, end) -> encoded error` over rows on torch's CPU thread pool.
template <typename F>
int64_t parallel_rows(int64_t rows, int64_t row_len, F kernel) {
  return parallel_min_error(rows, 65536 / std::max<int64_t>(row_len, 1), kernel);
}

at::Tensor sedd_step_cpu_op(const at::Tensor& logits, const at::Tensor& x, const at::Tensor& sigma,
                            const at::Tensor& dsig, c10::string_view graph, c10::string_view method,
                            bool scale_by_sigma, std::optional<at::Generator> generator) {
  StepCall call = prepare_step(logits, x, sigma, dsig, graph, method, scale_by_sigma);
  call.params.rng = cpu_rng_state(generator);
  const SeddStepParams& p = call.params;
  raise_sedd_error("sedd_step", parallel_rows(p.rows, p.vocab, [&](int64_t b, int64_t e) { return sedd_step_cpu(p, b, e); }),
                   p.seq_len, kStepErrors);
  return call.x_next;
}

at::Tensor sample_transition_cpu_op(const at::Tensor& x0, const at::Tensor& sigma, c10::string_view graph,
                                    int64_t num_classes, std::optional<at::Generator> generator) {
  TransitionCall call = prepare_transition(x0, sigma, graph, num_classes);
  call.params.rng = cpu_rng_state(generator);
  const SampleTransitionParams& p = call.params;
  raise_sedd_error("sample_transition",
                   parallel_rows(p.rows, 64, [&](int64_t b, int64_t e) { return sample_transition_cpu(p, b, e); }),
                   p.seq_len, kNoisingErrors);
  return call.x_t;
}

at::Tensor score_entropy_loss_cpu_op(const at::Tensor& logits, const at::Tensor& x_t, const at::Tensor& x0,
                                     const at::Tensor& sigma, const at::Tensor& dsigma, c10::string_view graph,
                                     bool scale_by_sigma) {
  constexpr const char* op = "score_entropy_loss";
  LossCall call = prepare_score_entropy(op, logits, x_t, x0, sigma, dsigma, graph, scale_by_sigma);
  const LossParams& p = call.params;
  raise_sedd_error(op, parallel_rows(p.rows, p.vocab, [&](int64_t b, int64_t e) { return loss_forward_cpu(p, b, e); }),
                   p.seq_len, kScoreEntropyErrors);
  return finish_loss(call);
}

at::Tensor score_entropy_loss_backward_cpu_op(const at::Tensor& grad_loss, const at::Tensor& logits,
                                              const at::Tensor& x_t, const at::Tensor& x0, const at::Tensor& sigma,
                                              const at::Tensor& dsigma, c10::string_view graph, bool scale_by_sigma) {
  constexpr const char* op = "score_entropy_loss_backward";
  LossCall call = prepare_score_entropy(op, logits, x_t, x0, sigma, dsigma, graph, scale_by_sigma);
  prepare_backward(op, call, grad_loss);
  const LossParams& p = call.params;
  raise_sedd_error(op, parallel_rows(p.rows, p.vocab, [&](int64_t b, int64_t e) { return loss_backward_cpu(p, b, e); }),
                   p.seq_len, kScoreEntropyErrors);
  return call.grad.view(logits.sizes());
}

std::tuple<at::Tensor, at::Tensor> masked_diffusion_loss_cpu_op(const at::Tensor& logits, const at::Tensor& x_t,
                                                                const at::Tensor& x0, const at::Tensor& weight,
                                                                int64_t mask_id) {
  constexpr const char* op = "masked_diffusion_loss";
  LossCall call = prepare_masked_diffusion(op, logits, x_t, x0, weight, mask_id);
  call.lse = at::empty({x_t.size(0), x_t.size(1)}, logits.options().dtype(at::kFloat));
  call.params.lse = call.lse.data_ptr<float>();
  const LossParams& p = call.params;
  raise_sedd_error(op, parallel_rows(p.rows, p.vocab, [&](int64_t b, int64_t e) { return loss_forward_cpu(p, b, e); }),
                   p.seq_len, kMaskedDiffusionErrors);
  return {finish_loss(call), call.lse};
}

at::Tensor masked_diffusion_loss_backward_cpu_op(const at::Tensor& grad_loss, const at::Tensor& logits,
                                                 const at::Tensor& lse, const at::Tensor& x_t, const at::Tensor& x0,
                                                 const at::Tensor& weight, int64_t mask_id) {
  constexpr const char* op = "masked_diffusion_loss_backward";
  LossCall call = prepare_masked_diffusion(op, logits, x_t, x0, weight, mask_id);
  use_saved_lse(op, call, lse);
  prepare_backward(op, call, grad_loss);
  const LossParams& p = call.params;
  raise_sedd_error(op, parallel_rows(p.rows, p.vocab, [&](int64_t b, int64_t e) { return loss_backward_cpu(p, b, e); }),
                   p.seq_len, kMaskedDiffusionErrors);
  return call.grad.view(logits.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CPU, m) {
  m.impl("sedd_step", &sedd_step_cpu_op);
  m.impl("sample_transition", &sample_transition_cpu_op);
  m.impl("score_entropy_loss", &score_entropy_loss_cpu_op);
  m.impl("score_entropy_loss_backward", &score_entropy_loss_backward_cpu_op);
  m.impl("masked_diffusion_loss", &masked_diffusion_loss_cpu_op);
  m.impl("masked_diffusion_loss_backward", &masked_diffusion_loss_backward_cpu_op);
}

}  // namespace dllm::binding
