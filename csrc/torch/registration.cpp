// Every dllm op schema, in one place. Kernels register against these in the binding files.
#include <torch/library.h>

TORCH_LIBRARY(dllm, m) {
  // logits [..., V] float32 | bfloat16 | float16; temperature: per-row float tensor of shape
  // [...] (or one element), else scalar_temperature. Returns tokens int64 [...] and the drawn
  // token's log-probability float32 [...]. Temperature 0 is argmax (lowest index on ties) and
  // its log-probability is taken under the untempered softmax.
  m.def(
      "sample_categorical(Tensor logits, Tensor? temperature, float scalar_temperature, *, "
      "Generator? generator=None) -> (Tensor tokens, Tensor logprob)",
      {at::Tag::nondeterministic_seeded});
}
