// Torch binding of sample_categorical: checks, the CPU kernel, and the shared error reporting.
#include "sample_categorical.h"

#include <torch/library.h>

#include <cmath>

#include "checks.h"
#include "rng.h"

namespace dllm::binding {

CategoricalCall prepare_categorical(const at::Tensor& logits, const std::optional<at::Tensor>& temperature,
                                    double scalar_temperature) {
  constexpr const char* op = "sample_categorical";
  TORCH_CHECK(logits.dim() >= 1, op, ": logits must have at least one dimension (the vocabulary)");
  const DType dtype = logits_dtype(op, logits, "logits");
  const int64_t vocab = logits.size(-1);
  TORCH_CHECK(vocab > 0, op, ": logits has an empty vocabulary dimension (V = 0)");
  TORCH_CHECK(vocab < (int64_t(1) << 31), op, ": vocabularies of 2^31 or more entries are not supported");
  const at::IntArrayRef lead = logits.sizes().slice(0, logits.dim() - 1);

  CategoricalCall call;
  call.logits = as_rows(logits);
  const int64_t rows = call.logits.size(0);
  if (temperature.has_value()) {
    const at::Tensor& t = *temperature;
    check_same_device(op, logits, "logits", t, "temperature");
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": temperature must be a floating tensor, got ",
                     t.scalar_type());
    TORCH_CHECK(t.numel() == 1 || t.sizes() == lead, op, ": temperature must have one element or the shape ",
                lead, " of logits without its last dimension, got ", t.sizes());
    call.temperature = temperatures_as_float(t).reshape({-1}).expand({rows}).contiguous();
  } else {
    TORCH_CHECK_VALUE(std::isfinite(scalar_temperature) && scalar_temperature >= 0.0, op,
                      ": temperature must be finite and >= 0 (0 means argmax), got ", scalar_temperature);
  }
  call.random = temperature.has_value() || scalar_temperature != 0.0;
  call.tokens = at::empty(lead, logits.options().dtype(at::kLong));
  call.logprob = at::empty(lead, logits.options().dtype(at::kFloat));

  CategoricalParams& p = call.params;
  p.logits = call.logits.data_ptr();
  p.dtype = dtype;
  p.rows = rows;
  p.vocab = vocab;
  p.row_stride = call.logits.stride(0);
  p.temperature = call.temperature.defined() ? call.temperature.data_ptr<float>() : nullptr;
  p.scalar_temperature = temperature_as_float(scalar_temperature);
  p.tokens = call.tokens.data_ptr<int64_t>();
  p.logprob = call.logprob.data_ptr<float>();
  return call;
}

void raise_categorical_error(int64_t encoded) {
  if (encoded == kNoError) return;
  const int64_t row = encoded >> 2;
  const char* why = "";
  switch (encoded & 3) {
    case kNonFinite: why = "contains NaN or +inf (or overflows float32 after division by the temperature)"; break;
    case kAllMinusInf: why = "is all -inf, so no token can be drawn"; break;
    case kBadTemperature: why = "has a negative, NaN or infinite temperature"; break;
  }
  TORCH_CHECK_VALUE(false, "sample_categorical: row ", row, " of logits (rows counted over the flattened leading dimensions) ", why);
}

namespace {

std::tuple<at::Tensor, at::Tensor> sample_categorical_cpu_op(const at::Tensor& logits,
                                                              const std::optional<at::Tensor>& temperature,
                                                              double scalar_temperature,
                                                              std::optional<at::Generator> generator) {
  CategoricalCall call = prepare_categorical(logits, temperature, scalar_temperature);
  call.params.rng = cpu_rng_state(generator, call.random);
  const CategoricalParams& p = call.params;
  raise_categorical_error(parallel_min_error(p.rows, 65536 / p.vocab, [&](int64_t begin, int64_t end) {
    return sample_categorical_cpu(p, begin, end);
  }));
  return {call.tokens, call.logprob};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CPU, m) { m.impl("sample_categorical", &sample_categorical_cpu_op); }

}  // namespace dllm::binding
