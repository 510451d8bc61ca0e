// CPU kernel of commit_tokens: choose masked positions per row and write their proposals.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_rows.h"
#include "dllm/unmask.h"

namespace dllm {
namespace {

using namespace cpu;

struct Candidate {
  float key;
  int64_t index;
};

// More confident first; equal keys go to the lower index, so the choice is deterministic.
bool before(const Candidate& a, const Candidate& b) { return a.key > b.key || (a.key == b.key && a.index < b.index); }

CommitStatus commit_row(const CommitParams& p, int64_t b, std::vector<Candidate>& eligible, int64_t& committed) {
  const int64_t L = p.length;
  int64_t start = 0, end = L;
  if (p.window) {
    start = p.window[2 * b];
    end = p.window[2 * b + 1];
    if (start < 0 || start > end || end > L) return kBadWindow;
  }
  int64_t* x = p.x + b * L;
  const int64_t* x0 = p.x0 + b * L;
  const float* conf = p.conf + b * L;
  eligible.clear();
  for (int64_t i = start; i < end; ++i) {
    if (x[i] != p.mask_id) continue;
    if (std::isnan(conf[i])) return kNaNConfidence;
    eligible.push_back({conf[i], i});
  }
  committed = 0;
  switch (p.rule) {
    case CommitRule::kNumTokens: {
      const int64_t k = p.num_tokens[b];
      if (k < 0) return kNegativeCount;
      if (p.position_temperature > 0.0f) {
        // Gumbel-top-k: the first k of conf / T + Gumbel are a draw without replacement from
        // softmax(conf / T), as torch.multinomial(..., replacement=False) makes (Dream's alg_temp).
        for (Candidate& c : eligible)
          c.key = c.key / p.position_temperature +
                  gumbel_at(p.rng.seed, p.rng.offset, uint64_t(b), uint64_t(c.index), RngStream::kPosition);
      }
      const int64_t take = std::min<int64_t>(k, int64_t(eligible.size()));
      std::nth_element(eligible.begin(), eligible.begin() + take, eligible.end(), before);
      for (int64_t j = 0; j < take; ++j) x[eligible[j].index] = x0[eligible[j].index];
      committed = take;
      break;
    }
    case CommitRule::kThreshold: {
      if (eligible.empty()) break;
      const Candidate best = *std::min_element(eligible.begin(), eligible.end(), before);
      for (const Candidate& c : eligible)
        if (c.key >= p.threshold || c.index == best.index) x[c.index] = x0[c.index], ++committed;
      break;
    }
    case CommitRule::kProb: {
      const double prob = p.prob[b];
      if (!(prob >= 0.0 && prob <= 1.0)) return kBadProb;
      for (const Candidate& c : eligible)
        if (uniform53_at(p.rng.seed, p.rng.offset, uint64_t(b), uint64_t(c.index), RngStream::kUniform) < prob)
          x[c.index] = x0[c.index], ++committed;
      break;
    }
  }
  return kCommitOk;
}

}  // namespace

int64_t commit_tokens_cpu(const CommitParams& p, int64_t begin, int64_t end) {
  std::vector<Candidate> eligible;
  eligible.reserve(p.length);
  int64_t first_error = kNoError;
  for (int64_t b = begin; b < end; ++b) {
    int64_t committed = 0;
    const CommitStatus status = commit_row(p, b, eligible, committed);
    p.committed[b] = status == kCommitOk ? committed : -1;
    if (status != kCommitOk) first_error = std::min(first_error, (b << 3) | status);
  }
  return first_error;
}

}  // namespace dllm
