// CPU kernel of sample_categorical: the hierarchical Gumbel-max of dllm/sample_categorical.h.

#include "cpu_isa.h"
#include "cpu_rows.h"

namespace dllm {
namespace {

using namespace cpu;

template <DType D>
int64_t sample_rows(const CategoricalParams& p, int64_t row_begin, int64_t row_end) {
  const size_t elem = D == DType::kFloat32 ? 4 : 2;
  float* v = row_scratch<float, 0>(p.vocab);
  float* group_lse = row_scratch<float, 1>(num_groups(p.vocab));
  int64_t first_error = kNoError;
  for (int64_t r = row_begin; r < row_end; ++r) {
    p.tokens[r] = -1;
    p.logprob[r] = kNaN;
    const float temperature = p.temperature ? p.temperature[r] : p.scalar_temperature;
    if (!(temperature >= 0.0f) || temperature == kInf) {
      note_error(first_error, r, kBadTemperature);
      continue;
    }
    const bool greedy = temperature == 0.0f;
    if (!load_row<D>(static_cast<const char*>(p.logits) + r * p.row_stride * elem, p.vocab, v)) {
      note_error(first_error, r, kNonFinite);
      continue;
    }
    const float m = group_maxes(v, p.vocab, group_lse);
    if (m == -kInf) {
      note_error(first_error, r, kAllMinusInf);
      continue;
    }
    // Temperature 0 reports the log-probability under the untempered softmax.
    const float scale = greedy ? 1.0f : inverse_temperature(temperature);
    group_log_sums(v, p.vocab, m, scale, group_lse);
    const int64_t token = greedy ? argmax_of(v, p.vocab, m)
                                 : draw_hierarchical(v, p.vocab, group_lse, m, scale, p.rng.seed,
                                                     p.rng.offset, r);
    p.tokens[r] = token;
    p.logprob[r] = (v[token] - m) * scale - log_sum_exp(group_lse, num_groups(p.vocab));
  }
  return first_error;
}

}  // namespace

int64_t DLLM_ISA_NAME(sample_categorical_cpu)(const CategoricalParams& p, int64_t row_begin, int64_t row_end) {
  return with_dtype(p.dtype, [&]<DType D>() { return sample_rows<D>(p, row_begin, row_end); });
}

}  // namespace dllm
