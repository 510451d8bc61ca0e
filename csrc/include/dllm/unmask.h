// Batched unmasking for masked-diffusion samplers (MDLM, LLaDA, Dream, Fast-dLLM): proposing a
// token and a confidence at every masked position, and committing the chosen positions.
#pragma once
#include <cstdint>

#include "dllm/common.h"
#include "dllm/philox.h"
#include "dllm/sample_categorical.h"

namespace dllm {

// How a proposal's confidence is scored. All but kRandom are functions of a distribution over the
// vocabulary without the mask token: the model's (untempered, unfiltered softmax of the logits;
// LLaDA, Fast-dLLM) or, with PredictParams::proposal_confidence, the proposal's (softmax of the
// logits over the temperature, 1 at temperature 0, after top-k / top-p; Dream's sample_tokens).
enum class Confidence : int { kProb = 0, kMargin = 1, kEntropy = 2, kRandom = 3 };

struct PredictParams {
  const void* logits = nullptr;  // [rows, V] with row stride `row_stride`; rows = batch * length
  DType dtype = DType::kFloat32;
  int64_t batch = 0;
  int64_t length = 0;  // positions per sequence; row (b, i) reads logits row (b, max(i - shift, 0))
  int64_t vocab = 0;
  int64_t row_stride = 0;
  int64_t logits_shift = 0;
  const int64_t* x = nullptr;  // [batch, length] current tokens
  int64_t mask_id = 0;
  float temperature = 0.0f;  // 0: argmax
  int64_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  Confidence confidence = Confidence::kProb;
  bool proposal_confidence = false;  // score under the proposal's distribution, not the model's
  RngState rng;
  int64_t* x0 = nullptr;   // [batch, length]
  float* conf = nullptr;   // [batch, length]
  int64_t* first_error = nullptr;  // CUDA only, as in CategoricalParams
  int64_t l2_prefetch_blocks = 0;  // CUDA only: DLLM_L2_PREFETCH (cuda_rows.cuh)
  bool async_copies = false;       // CUDA only: DLLM_ASYNC_COPIES (cuda_async_rows.cuh)
};

// predict_masked's errors: CategoricalStatus's kNonFinite and kAllMinusInf at a masked position, and
// this one at an unmasked position whose token lies outside the vocabulary (x0 would carry it on).
constexpr int64_t kTokenOutOfRange = 3;
static_assert(kTokenOutOfRange != kNonFinite && kTokenOutOfRange != kAllMinusInf && kTokenOutOfRange < 4);

// Positions [begin, end) of the flattened batch * length; returns the lowest encoded error
// ((position << 2) | status) or kNoError.
int64_t predict_masked_cpu(const PredictParams& p, int64_t begin, int64_t end);
void predict_masked_cuda(const PredictParams& p, void* stream);

enum class CommitRule : int { kNumTokens = 0, kThreshold = 1, kProb = 2 };

// Per-row input errors that commit_tokens reports (CPU: raised; CUDA: the row is left alone and
// committed[b] = -1, since the op never synchronises with the host).
enum CommitStatus : int64_t { kCommitOk = 0, kNegativeCount = 1, kBadWindow = 2, kBadProb = 3, kNaNConfidence = 4 };

struct CommitParams {
  int64_t* x = nullptr;           // [batch, length], updated in place
  const int64_t* x0 = nullptr;    // [batch, length]
  const float* conf = nullptr;    // [batch, length]
  int64_t batch = 0;
  int64_t length = 0;
  int64_t mask_id = 0;
  CommitRule rule = CommitRule::kNumTokens;
  const int64_t* num_tokens = nullptr;  // [batch]
  float threshold = 0.0f;
  const float* prob = nullptr;          // [batch]
  const int64_t* window = nullptr;      // [batch, 2] or nullptr (whole row)
  float position_temperature = 0.0f;    // > 0: Gumbel-top-k over conf / position_temperature
  RngState rng;
  int64_t* committed = nullptr;  // [batch]
};

// Rows [begin, end); returns (row << 3) | CommitStatus of the lowest bad row, or kNoError.
int64_t commit_tokens_cpu(const CommitParams& p, int64_t begin, int64_t end);
void commit_tokens_cuda(const CommitParams& p, void* stream);

// Order-preserving map from float to uint32 (larger float, larger key; -inf lowest). -0.0 takes
// +0.0's key: the two are equal, and a tie of zeros (a margin or an entropy of 0, a zero logit at
// the top-k boundary) must resolve as between equal values.
DLLM_HD uint32_t ordered_key(float f) {
  uint32_t bits = float_to_bits(f);
  if (bits == 0x80000000u) bits = 0u;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

}  // namespace dllm
