// Torch bindings of predict_masked and commit_tokens: checks, CPU kernels, error reporting.
#include "unmask.h"

#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <vector>

#include "checks.h"
#include "rng.h"

namespace dllm::binding {

PredictCall prepare_predict(const at::Tensor& logits, const at::Tensor& x, int64_t mask_id, double temperature,
                            int64_t top_k, double top_p, const std::string& confidence, int64_t logits_shift,
                            const std::string& confidence_from) {
  constexpr const char* op = "predict_masked";
  TORCH_CHECK(logits.dim() >= 2, op, ": logits must be [..., L, V], got ", logits.sizes());
  const DType dtype = logits_dtype(op, logits, "logits");
  const int64_t vocab = logits.size(-1);
  const at::IntArrayRef lead = logits.sizes().slice(0, logits.dim() - 1);
  TORCH_CHECK(vocab > 0, op, ": logits has an empty vocabulary dimension (V = 0)");
  TORCH_CHECK(vocab < (int64_t(1) << 31), op, ": vocabularies of 2^31 or more entries are not supported");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kLong, op, ": x must be int64, got ", x.scalar_type());
  TORCH_CHECK(x.sizes() == lead, op, ": x must have the shape ", lead, " of logits without its last dimension, got ",
              x.sizes());
  check_same_device(op, logits, "logits", x, "x");
  TORCH_CHECK_VALUE(mask_id >= 0 && mask_id < vocab, op, ": mask_id ", mask_id, " is outside the vocabulary [0, ",
                    vocab, ")");
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature >= 0.0, op,
                    ": temperature must be finite and >= 0, got ", temperature);
  TORCH_CHECK_VALUE(top_k >= 0, op, ": top_k must be >= 0 (0 turns it off), got ", top_k);
  TORCH_CHECK_VALUE(top_p > 0.0 && top_p <= 1.0, op, ": top_p must be in (0, 1], got ", top_p);
  const int64_t length = logits.size(-2);
  // Position i reads row max(i - shift, 0): a shift of 1 is Dream's head at any length, one token included
  TORCH_CHECK_VALUE(logits_shift >= 0 && (logits_shift < length || logits_shift <= 1), op,
                    ": logits_shift must be in [0, max(L, 2)) with L = ", length, ", got ", logits_shift);
  Confidence kind;
  if (confidence == "prob") kind = Confidence::kProb;
  else if (confidence == "margin") kind = Confidence::kMargin;
  else if (confidence == "entropy") kind = Confidence::kEntropy;
  else if (confidence == "random") kind = Confidence::kRandom;
  else TORCH_CHECK_VALUE(false, op, ": confidence must be 'prob', 'margin', 'entropy' or 'random', got '", confidence, "'");
  TORCH_CHECK_VALUE(confidence_from == "model" || confidence_from == "proposal", op,
                    ": confidence_from must be 'model' or 'proposal', got '", confidence_from, "'");

  PredictCall call;
  call.logits = as_rows(logits);
  call.x = x.contiguous();
  call.x0 = at::empty(lead, x.options());
  call.conf = at::empty(lead, logits.options().dtype(at::kFloat));
  call.random = temperature > 0.0 || kind == Confidence::kRandom;
  PredictParams& p = call.params;
  p.logits = call.logits.data_ptr();
  p.dtype = dtype;
  p.length = length;
  p.batch = length == 0 ? 0 : call.logits.size(0) / length;
  p.vocab = vocab;
  p.row_stride = call.logits.stride(0);
  p.logits_shift = logits_shift;
  p.x = call.x.data_ptr<int64_t>();
  p.mask_id = mask_id;
  p.temperature = temperature_as_float(temperature);
  p.top_k = top_k;
  p.top_p = float(top_p);
  p.confidence = kind;
  p.proposal_confidence = confidence_from == "proposal";
  p.x0 = call.x0.data_ptr<int64_t>();
  p.conf = call.conf.data_ptr<float>();
  return call;
}

namespace {

// "sequence s" of x [B, L]; "sequence [i, j]" of x [I, J, L], whose sequences the kernels number flat
std::string sequence_name(const at::Tensor& x, int64_t sequence) {
  const at::IntArrayRef lead = x.sizes().slice(0, std::max<int64_t>(x.dim() - 1, 0));
  if (lead.size() <= 1) return "sequence " + std::to_string(sequence);
  std::vector<int64_t> index(lead.size());
  for (size_t d = lead.size(); d-- > 0;) index[d] = sequence % lead[d], sequence /= lead[d];
  return c10::str("sequence ", at::IntArrayRef(index));
}

}  // namespace

void raise_predict_error(int64_t encoded, const at::Tensor& x, int64_t vocab, bool x_changed) {
  if (encoded == kNoError) return;
  const int64_t pos = encoded >> 2, length = x.size(-1);
  const std::string sequence = sequence_name(x, pos / length);
  if ((encoded & 3) == kTokenOutOfRange) {
    // an error's path only, so reading the token back (a device sync on CUDA) costs nothing otherwise
    const std::string token =
        x_changed ? "held a token" : c10::str("holds token ", x.reshape(-1)[pos].item<int64_t>());
    TORCH_CHECK_VALUE(false, "predict_masked: x ", token, " at position ", pos % length, " of ", sequence,
                      ", outside the vocabulary [0, ", vocab, ") of the logits");
  }
  const char* why = (encoded & 3) == kNonFinite ? "has NaN or +inf logits (or overflows float32 after division by the temperature)"
                                                : "has only -inf logits besides the mask token, so nothing can be proposed";
  TORCH_CHECK_VALUE(false, "predict_masked: masked position ", pos % length, " of ", sequence, " ", why);
}

CommitCall prepare_commit(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& conf, int64_t mask_id,
                          const std::optional<at::Tensor>& num_tokens, std::optional<double> threshold,
                          const std::optional<at::Tensor>& prob, const std::optional<at::Tensor>& window,
                          double position_temperature) {
  constexpr const char* op = "commit_tokens";
  TORCH_CHECK(x.dim() == 2, op, ": x must be [B, L], got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kLong && x0.scalar_type() == at::kLong, op, ": x and x0 must be int64");
  TORCH_CHECK_TYPE(conf.scalar_type() == at::kFloat, op, ": conf must be float32, got ", conf.scalar_type());
  TORCH_CHECK(x.is_contiguous(), op, ": x is updated in place and must be contiguous");
  TORCH_CHECK(x0.sizes() == x.sizes() && conf.sizes() == x.sizes(), op, ": x, x0 and conf must share one shape [B, L], got ",
              x.sizes(), ", ", x0.sizes(), ", ", conf.sizes());
  check_same_device(op, x, "x", x0, "x0");
  check_same_device(op, x, "x", conf, "conf");
  TORCH_CHECK_VALUE(mask_id >= 0, op, ": mask_id must be >= 0, got ", mask_id);
  const int rules = int(num_tokens.has_value()) + int(threshold.has_value()) + int(prob.has_value());
  TORCH_CHECK_VALUE(rules == 1, op, ": give exactly one of num_tokens, threshold or prob (got ", rules, ")");
  TORCH_CHECK_VALUE(std::isfinite(position_temperature) && position_temperature >= 0.0, op,
                    ": position_temperature must be finite and >= 0, got ", position_temperature);
  TORCH_CHECK_VALUE(position_temperature == 0.0 || num_tokens.has_value(), op,
                    ": position_temperature applies only to num_tokens (choosing k positions)");
  const int64_t batch = x.size(0);
  auto per_row = [&](const at::Tensor& t, const char* name, at::ScalarType dtype) {
    check_same_device(op, x, "x", t, name);
    TORCH_CHECK(t.dim() == 1 && t.size(0) == batch, op, ": ", name, " must have shape [", batch, "], got ", t.sizes());
    return t.to(dtype).contiguous();
  };

  CommitCall call;
  call.x0 = x0.contiguous();
  // x is written while x0 is read (by other threads on CUDA): one memory would race
  const at::MemOverlapStatus overlap = at::get_overlap_status(x, call.x0);
  TORCH_CHECK_VALUE(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial, op,
                    ": x0 shares memory with x, which is updated in place; pass a copy (x0.clone())");
  call.conf = conf.contiguous();
  call.committed = at::empty({batch}, x.options());
  CommitParams& p = call.params;
  p.x = x.data_ptr<int64_t>();
  p.x0 = call.x0.data_ptr<int64_t>();
  p.conf = call.conf.data_ptr<float>();
  p.batch = batch;
  p.length = x.size(1);
  p.mask_id = mask_id;
  // The floor keeps the keys conf / T finite for |conf| up to 340: every confidence predict_masked
  // makes (prob and margin in [0, 1], entropy down to -log V)
  p.position_temperature = temperature_as_float(position_temperature, 1e-36);
  p.committed = call.committed.data_ptr<int64_t>();
  if (num_tokens.has_value()) {
    check_integer(op, *num_tokens, "num_tokens");
    call.num_tokens = per_row(*num_tokens, "num_tokens", at::kLong);
    p.rule = CommitRule::kNumTokens;
    p.num_tokens = call.num_tokens.data_ptr<int64_t>();
  } else if (threshold.has_value()) {
    TORCH_CHECK_VALUE(!std::isnan(*threshold), op, ": threshold is NaN");
    p.rule = CommitRule::kThreshold;
    p.threshold = float(*threshold);
  } else {
    call.prob = per_row(*prob, "prob", at::kFloat);
    p.rule = CommitRule::kProb;
    p.prob = call.prob.data_ptr<float>();
  }
  if (window.has_value()) {
    check_same_device(op, x, "x", *window, "window");
    check_integer(op, *window, "window");
    TORCH_CHECK(window->dim() == 2 && window->size(0) == batch && window->size(1) == 2, op,
                ": window must have shape [", batch, ", 2] ([start, end) per row), got ", window->sizes());
    call.window = window->to(at::kLong).contiguous();
    p.window = call.window.data_ptr<int64_t>();
  }
  call.random = p.rule == CommitRule::kProb || position_temperature > 0.0;
  return call;
}

void raise_commit_error(int64_t encoded) {
  if (encoded == kNoError) return;
  const int64_t row = encoded >> 3;
  const char* why = "";
  switch (encoded & 7) {
    case kNegativeCount: why = "has a negative num_tokens"; break;
    case kBadWindow: why = "has a window outside [0, L] or with start > end"; break;
    case kBadProb: why = "has a prob outside [0, 1]"; break;
    case kNaNConfidence: why = "has a NaN confidence at a masked position"; break;
  }
  TORCH_CHECK_VALUE(false, "commit_tokens: row ", row, " ", why);
}

namespace {

std::tuple<at::Tensor, at::Tensor> predict_masked_cpu_op(const at::Tensor& logits, const at::Tensor& x, int64_t mask_id,
                                                          double temperature, int64_t top_k, double top_p,
                                                          c10::string_view confidence, int64_t logits_shift,
                                                          c10::string_view confidence_from, std::optional<at::Generator> generator) {
  PredictCall call = prepare_predict(logits, x, mask_id, temperature, top_k, top_p, std::string(confidence), logits_shift,
                                     std::string(confidence_from));
  call.params.rng = cpu_rng_state(generator, call.random);
  const PredictParams& p = call.params;
  raise_predict_error(parallel_min_error(p.batch * p.length, 1 + 65536 / p.vocab, [&](int64_t begin, int64_t end) {
                        return predict_masked_cpu(p, begin, end);
                      }),
                      x, p.vocab);
  return {call.x0, call.conf};
}

at::Tensor commit_tokens_cpu_op(at::Tensor& x, const at::Tensor& x0, const at::Tensor& conf, int64_t mask_id,
                                const std::optional<at::Tensor>& num_tokens, std::optional<double> threshold,
                                const std::optional<at::Tensor>& prob, const std::optional<at::Tensor>& window,
                                double position_temperature, std::optional<at::Generator> generator) {
  CommitCall call = prepare_commit(x, x0, conf, mask_id, num_tokens, threshold, prob, window, position_temperature);
  call.params.rng = cpu_rng_state(generator, call.random);
  const CommitParams& p = call.params;
  raise_commit_error(parallel_min_error(p.batch, 1 + 16384 / std::max<int64_t>(p.length, 1),
                                        [&](int64_t begin, int64_t end) { return commit_tokens_cpu(p, begin, end); }));
  return call.committed;
}

// commit_tokens writes x in place: bump its version, as torch's own in-place ops do, so that autograd
// refuses a backward through a tensor it saved (an embedding's indices) that the op changed. Every
// device's call passes here; the kernels raise after committing the rows they could.
void commit_tokens_bump_version(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const at::Tensor x = (*stack)[0].toTensor();  // the call pops its arguments
  try {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.callBoxed(stack);
  } catch (...) {
    x.unsafeGetTensorImpl()->bump_version();
    throw;
  }
  x.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CPU, m) {
  m.impl("predict_masked", &predict_masked_cpu_op);
  m.impl("commit_tokens", &commit_tokens_cpu_op);
}

TORCH_LIBRARY_IMPL(dllm, ADInplaceOrView, m) {
  m.impl("commit_tokens", torch::CppFunction::makeFromBoxedFunction<&commit_tokens_bump_version>());
}

}  // namespace dllm::binding
