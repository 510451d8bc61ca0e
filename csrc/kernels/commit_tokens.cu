// CUDA kernel of commit_tokens: one block per row, no host synchronisation.
//
// The k most confident eligible positions are found by a 4-level radix select over the ordered
// 32-bit keys (8-bit digits, shared-memory histograms), which yields the k-th largest key and how
// many of the positions tied at it to take; a block-wide scan in index order then takes those
// ties from the lowest index up, so the result equals a stable sort's.
#include "cuda_rows.cuh"
#include "dllm/philox.h"
#include "dllm/unmask.h"

namespace dllm {
namespace {

using namespace cuda;

constexpr int kCommitThreads = 512;
constexpr int kCommitWarps = kCommitThreads / 32;

struct CommitScratch {
  uint32_t count[256];
  int64_t partial[kCommitWarps];
  ArgMax argmax[kCommitWarps];
  uint32_t prefix;
  int64_t remaining;
};

__device__ int64_t block_sum(int64_t v, int64_t* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < kCommitWarps ? scratch[lane] : 0;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ ArgMax block_argmax_commit(ArgMax a, ArgMax* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  a = warp_argmax(a);
  __syncthreads();
  if (lane == 0) scratch[warp] = a;
  __syncthreads();
  return warp_argmax(lane < kCommitWarps ? scratch[lane] : ArgMax{-kInf, INT64_MAX});
}

// One radix level's digit, by warp 0: the highest digit d whose count with those of the digits
// above reaches sm.remaining (0 if none does), and what remains of it past the digits above d.
// Each lane sums 8 digits and a shuffle scan finds the lane holding d, so no thread walks the 256
// counts serially (at B = 1 one block does the whole step, and that walk dominated each level).
__device__ void select_digit(CommitScratch& sm, int shift) {
  const int lane = threadIdx.x;
  const int top = 255 - 8 * lane;  // this lane's digits: top, top - 1, ..., top - 7
  uint32_t c[8];
  int64_t sum = 0;  // int64, as the remaining count it is compared with
#pragma unroll
  for (int j = 0; j < 8; ++j) c[j] = sm.count[top - j], sum += c[j];
  int64_t through = sum;  // counts of the digits above this lane's and of its own
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int64_t t = __shfl_up_sync(0xffffffffu, through, o);
    if (lane >= o) through += t;
  }
  const int64_t wanted = sm.remaining;
  // Digit 0 is taken when no digit above reaches `wanted`; it is lane 31's last.
  const unsigned reached = __ballot_sync(0xffffffffu, through >= wanted || lane == 31);
  if (lane != __ffs(int(reached)) - 1) return;
  int64_t remaining = wanted - (through - sum);
  int d = top - 7;
#pragma unroll
  for (int j = 0; j < 7; ++j) {
    if (remaining <= int64_t(c[j])) {
      d = top - j;
      break;
    }
    remaining -= c[j];
  }
  sm.prefix |= uint32_t(d) << shift;
  sm.remaining = remaining;
}

__global__ void __launch_bounds__(kCommitThreads) commit_tokens_kernel(CommitParams p) {
  __shared__ CommitScratch sm;
  uint64_t seed = 0, offset = 0;
  p.rng.unpack(seed, offset);
  const int64_t L = p.length;
  for (int64_t b = blockIdx.x; b < p.batch; b += gridDim.x) {
    int64_t* x = p.x + b * L;
    const int64_t* x0 = p.x0 + b * L;
    const float* conf = p.conf + b * L;
    int64_t start = 0, end = L;
    CommitStatus status = kCommitOk;
    if (p.window) {
      start = p.window[2 * b], end = p.window[2 * b + 1];
      if (start < 0 || start > end || end > L) status = kBadWindow;
    }
    if (p.rule == CommitRule::kNumTokens && p.num_tokens[b] < 0) status = kNegativeCount;
    if (p.rule == CommitRule::kProb && !(p.prob[b] >= 0.0f && p.prob[b] <= 1.0f)) status = kBadProb;
    // Every eligible position's key; -inf confidences sort last, NaN ones reject the row.
    auto key_of = [&](int64_t i) {
      float k = conf[i];
      if (p.position_temperature > 0.0f)
        k = k / p.position_temperature + gumbel_at(seed, offset, uint64_t(b), uint64_t(i), RngStream::kPosition);
      return k;
    };
    int64_t eligible = 0;
    bool nan = false;
    if (status == kCommitOk) {
      for (int64_t i = start + threadIdx.x; i < end; i += kCommitThreads) {
        if (x[i] != p.mask_id) continue;
        ++eligible;
        nan |= isnan(conf[i]);
      }
    }
    if (__syncthreads_or(nan)) status = kNaNConfidence;
    eligible = block_sum(eligible, sm.partial);
    if (status != kCommitOk) {
      if (threadIdx.x == 0) p.committed[b] = -1;
      __syncthreads();
      continue;
    }

    int64_t committed = 0;
    if (p.rule == CommitRule::kProb) {
      const double prob = p.prob[b];
      for (int64_t i = start + threadIdx.x; i < end; i += kCommitThreads)
        if (x[i] == p.mask_id && uniform53_at(seed, offset, uint64_t(b), uint64_t(i), RngStream::kUniform) < prob)
          x[i] = x0[i], ++committed;
    } else if (p.rule == CommitRule::kThreshold) {
      ArgMax mine{-kInf, INT64_MAX};
      for (int64_t i = start + threadIdx.x; i < end; i += kCommitThreads)
        if (x[i] == p.mask_id) mine = better(mine, ArgMax{conf[i], i});
      const int64_t best = block_argmax_commit(mine, sm.argmax).i;
      // An all -inf row still commits its lowest eligible index, as the CPU kernel does.
      const int64_t always = best != INT64_MAX ? best : -1;
      __syncthreads();
      for (int64_t i = start + threadIdx.x; i < end; i += kCommitThreads)
        if (x[i] == p.mask_id && (conf[i] >= p.threshold || i == always)) x[i] = x0[i], ++committed;
    } else {
      const int64_t k = p.num_tokens[b];
      uint32_t tau = 0;  // commit keys > tau, and the first `take_ties` keys == tau
      int64_t take_ties = 0;
      if (k >= eligible) {
        take_ties = INT64_MAX;  // everything: every key is >= 0 = tau
      } else if (k > 0) {
        if (threadIdx.x == 0) sm.prefix = 0, sm.remaining = k;
        for (int shift = 24; shift >= 0; shift -= 8) {
          for (int d = threadIdx.x; d < 256; d += kCommitThreads) sm.count[d] = 0;
          __syncthreads();
          const uint32_t prefix = sm.prefix;
          const uint32_t high = shift == 24 ? 0u : ~0u << (shift + 8);
          for (int64_t i = start + threadIdx.x; i < end; i += kCommitThreads) {
            if (x[i] != p.mask_id) continue;
            const uint32_t key = ordered_key(key_of(i));
            if ((key & high) == (prefix & high)) atomicAdd(&sm.count[(key >> shift) & 255], 1u);
          }
          __syncthreads();
          if (threadIdx.x < 32) select_digit(sm, shift);
          __syncthreads();
        }
        tau = sm.prefix;
        take_ties = sm.remaining;
      }
      if (k > 0) {
        // Ties at tau are taken in index order: a block-wide running count over chunks.
        int64_t ties_before = 0;
        for (int64_t base = start; base < end; base += kCommitThreads) {
          const int64_t i = base + threadIdx.x;
          const bool in = i < end && x[i] == p.mask_id;
          const uint32_t key = in ? ordered_key(key_of(i)) : 0u;
          const bool tie = in && key == tau;
          // exclusive prefix count of ties in this chunk
          const unsigned ballot = __ballot_sync(0xffffffffu, tie);
          const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
          __syncthreads();
          if (lane == 0) sm.partial[warp] = __popc(ballot);
          __syncthreads();
          // Every warp scans the 16 warp counts with shuffles rather than 16 dependent shared loads.
          int upto = lane < kCommitWarps ? int(sm.partial[lane]) : 0;
#pragma unroll
          for (int o = 1; o < kCommitWarps; o <<= 1) {
            const int t = __shfl_up_sync(0xffffffffu, upto, o);
            if (lane >= o) upto += t;
          }
          const int64_t before =
              ties_before + __shfl_sync(0xffffffffu, upto, warp) - __popc(ballot & (~0u << lane));
          ties_before += __shfl_sync(0xffffffffu, upto, kCommitWarps - 1);
          if (in && (key > tau || (tie && before < take_ties))) x[i] = x0[i], ++committed;
        }
      }
    }
    committed = block_sum(committed, sm.partial);
    if (threadIdx.x == 0) p.committed[b] = committed;
    __syncthreads();
  }
}

}  // namespace

void commit_tokens_cuda(const CommitParams& p, void* stream) {
  if (p.batch == 0) return;
  const unsigned grid = unsigned(p.batch < 65535 ? p.batch : 65535);
  commit_tokens_kernel<<<grid, kCommitThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
}

}  // namespace dllm
