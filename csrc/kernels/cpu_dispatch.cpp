// Run-time choice between the baseline and the AVX2 + FMA builds of the CPU kernels.
#include <cstdlib>

#include "dllm/adaln.h"
#include "dllm/attention.h"
#include "dllm/rotary.h"
#include "dllm/sample_categorical.h"
#include "dllm/sedd.h"
#include "dllm/unmask.h"

namespace dllm {

#define DLLM_ISA_VARIANTS(ret, fn, params)  \
  ret fn##_base params;                     \
  ret fn##_avx2 params;

DLLM_ISA_VARIANTS(int64_t, sample_categorical_cpu, (const CategoricalParams&, int64_t, int64_t))
DLLM_ISA_VARIANTS(int64_t, predict_masked_cpu, (const PredictParams&, int64_t, int64_t))
DLLM_ISA_VARIANTS(void, attention_forward_cpu, (const AttentionParams&, int64_t, int64_t))
DLLM_ISA_VARIANTS(void, attention_backward_cpu, (const AttentionGradParams&, int64_t, int64_t))
DLLM_ISA_VARIANTS(int64_t, sedd_step_cpu, (const SeddStepParams&, int64_t, int64_t))
DLLM_ISA_VARIANTS(int64_t, loss_forward_cpu, (const LossParams&, int64_t, int64_t))
DLLM_ISA_VARIANTS(int64_t, loss_backward_cpu, (const LossParams&, int64_t, int64_t))
DLLM_ISA_VARIANTS(int64_t, sample_transition_cpu, (const SampleTransitionParams&, int64_t, int64_t))
DLLM_ISA_VARIANTS(void, rotary_cpu, (const RotaryParams&, int64_t, int64_t))
DLLM_ISA_VARIANTS(void, adaln_cpu, (const AdaLNParams&, int64_t, int64_t))

namespace {

// DLLM_CPU_BASELINE=1 forces the baseline build (the tests use it to check both builds).
bool use_avx2() {
#if defined(DLLM_CPU_AVX2)
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c") && std::getenv("DLLM_CPU_BASELINE") == nullptr;
  return yes;
#else
  return false;
#endif
}

}  // namespace

#if defined(DLLM_CPU_AVX2)
#define DLLM_PICK(fn) (use_avx2() ? fn##_avx2 : fn##_base)
#else
#define DLLM_PICK(fn) fn##_base
#endif

int64_t sample_categorical_cpu(const CategoricalParams& p, int64_t b, int64_t e) {
  return DLLM_PICK(sample_categorical_cpu)(p, b, e);
}
int64_t predict_masked_cpu(const PredictParams& p, int64_t b, int64_t e) { return DLLM_PICK(predict_masked_cpu)(p, b, e); }
void attention_forward_cpu(const AttentionParams& p, int64_t b, int64_t e) { DLLM_PICK(attention_forward_cpu)(p, b, e); }
void attention_backward_cpu(const AttentionGradParams& p, int64_t b, int64_t e) {
  DLLM_PICK(attention_backward_cpu)(p, b, e);
}
int64_t sedd_step_cpu(const SeddStepParams& p, int64_t b, int64_t e) { return DLLM_PICK(sedd_step_cpu)(p, b, e); }
int64_t loss_forward_cpu(const LossParams& p, int64_t b, int64_t e) { return DLLM_PICK(loss_forward_cpu)(p, b, e); }
int64_t loss_backward_cpu(const LossParams& p, int64_t b, int64_t e) { return DLLM_PICK(loss_backward_cpu)(p, b, e); }
int64_t sample_transition_cpu(const SampleTransitionParams& p, int64_t b, int64_t e) {
  return DLLM_PICK(sample_transition_cpu)(p, b, e);
}
void rotary_cpu(const RotaryParams& p, int64_t b, int64_t e) { DLLM_PICK(rotary_cpu)(p, b, e); }
void adaln_cpu(const AdaLNParams& p, int64_t b, int64_t e) { DLLM_PICK(adaln_cpu)(p, b, e); }

}  // namespace dllm
