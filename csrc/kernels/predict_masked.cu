// CUDA kernel of predict_masked: one block per masked position (unmasked positions only copy x).
//
// Pass A streams the row once for the untempered statistics every confidence needs (max,
// sum-exp, sum p*logit for the entropy, the top two values). Greedy decoding (temperature 0,
// LLaDA's and Fast-dLLM's default) stops there. With a temperature and no filtering, pass A also
// reduces the tempered group masses; else pass B computes them, the optional top-k / top-p radix
// passes find the value threshold (and pass B repeats under it). The hierarchical Gumbel-max of
// sample_categorical then draws the token.
// Confidences under the proposal's distribution (Dream) take its log-sum-exp from the final
// pass B's group masses, and its entropy from statistics that pass keeps; at temperature 0 they
// run pass B untempered when filtering changes the distribution. Passes after A re-read the
// row: from L2 only while few rows are in flight (at 8 x 1024 rows of V = 126464 on the H200,
// pass B's read came from HBM).
#include "cuda_rows.cuh"
#include "cuda_async_rows.cuh"
#include "dllm/philox.h"
#include "dllm/unmask.h"
#include "filter_threshold.h"

namespace dllm {
namespace {

using namespace cuda;

// Running statistics of one thread's elements (untempered in pass A; the kept tempered ones in B).
struct RowStats {
  float m = -kInf;   // max
  float s = 0.0f;    // sum exp(v - m)
  float t = 0.0f;    // sum exp(v - m) * (v - m), for the entropy
  ArgMax best{-kInf, INT64_MAX};
  float second = -kInf;  // second largest value (equal to best.v on a tie)
  bool bad = false;

  // What a pass needs beyond the max and its lowest index: the second largest value (the
  // margin), the sums (m, s) and the entropy's t. Uniform over the grid, so their branches are
  // taken by every thread alike.
  struct Needs {
    bool second, sums, entropy;
  };

  // Adds a batch's values (indices increasing with e; -inf ones count for nothing) whose max is
  // b1 (fmaxf's: NaN and +inf only mark the row bad, which the caller tests; the row fails
  // whatever they do here). Only a batch that raises the thread's max (rare after its first few)
  // is searched for the index, and for the second largest only when the margin needs it. Then
  // one rescale and independent exponentials. These loops are issue-bound: each instruction an
  // element costs HBM time.
  template <int N, int kRun, int kStep>
  __device__ void add_batch(const float (&v)[N], const BatchIndex<N, kRun, kStep>& where, float b1,
                            const Needs& needs) {
    if (!(b1 > -kInf && b1 < kInf)) return;
    const bool raises = b1 > best.v;  // indices grow along a thread's batches: an equal value comes later
    if (raises || needs.second) {
      int at = 0;
#pragma unroll
      for (int e = N - 1; e >= 0; --e) at = v[e] == b1 ? e : at;
      if (needs.second) {
        float b2 = -kInf;  // the batch's second largest: b1 again on a tie
#pragma unroll
        for (int e = 0; e < N; ++e) b2 = fmaxf(b2, e == at ? -kInf : v[e]);
        second = fmaxf(fmaxf(second, raises ? best.v : b1), b2);
      }
      if (raises) best = ArgMax{b1, where(at)};
    }
    if (!needs.sums) return;
    if (b1 > m) {
      if (m == -kInf) {
        s = t = 0.0f;
      } else {
        // f (m - b1) first: at a tiny temperature m - b1 reaches -3.4e38, and times s it would
        // overflow to -inf, and 0 * -inf is NaN.
        const float f = exp_ftz(m - b1);
        t = f * t + (f * (m - b1)) * s;
        s *= f;
      }
      m = b1;
    }
    if (needs.entropy) {
      float ps[2] = {0.0f, 0.0f}, pt[2] = {0.0f, 0.0f};
#pragma unroll
      for (int e = 0; e < N; ++e) {
        // -inf (the padding, a -inf logit) adds e = 0 and, clamped, 0 * y = 0 rather than NaN
        const float y = fmaxf(v[e] - m, -kMaxFloat), x = exp_ftz(y);
        ps[e % 2] += x;
        pt[e % 2] += x * y;
      }
      t += pt[0] + pt[1];
      s += ps[0] + ps[1];
    } else {
      s += batch_sum_exp(v, m, kLog2e);
    }
  }

  // A (max, sum exp(v - max)) of this thread's values, added to m and s (not t): the untempered
  // sums of a fused pass at temperature 1, whose group sums are the same exponentials.
  __device__ void add_sums(const MaxSum& g) {
    if (g.m == -kInf) return;
    const float top = fmaxf(m, g.m);
    s = (m == -kInf ? 0.0f : s * exp_ftz(m - top)) + g.s * exp_ftz(g.m - top);
    m = top;
  }

  __device__ static RowStats merge(const RowStats& a, const RowStats& b) {
    RowStats r;
    r.m = fmaxf(a.m, b.m);
    if (r.m != -kInf) {
      // Each side rescaled to the common max; f (m_x - m) first, as in add(). An empty side adds
      // nothing (its m - r.m is -inf, and 0 * -inf would be NaN).
      auto add_side = [&r](const RowStats& x) {
        if (x.m == -kInf) return;
        const float f = exp_ftz(x.m - r.m);
        r.s += x.s * f;
        r.t += f * x.t + (f * (x.m - r.m)) * x.s;
      };
      add_side(a);
      add_side(b);
    }
    r.best = better(a.best, b.best);
    const float loser = (r.best.i == a.best.i) ? b.best.v : a.best.v;
    r.second = fmaxf(fmaxf(a.second, b.second), loser);
    r.bad = a.bad || b.bad;
    return r;
  }

  __device__ RowStats shuffled(int o) const {
    RowStats r;
    r.m = __shfl_xor_sync(0xffffffffu, m, o);
    r.s = __shfl_xor_sync(0xffffffffu, s, o);
    r.t = __shfl_xor_sync(0xffffffffu, t, o);
    r.best.v = __shfl_xor_sync(0xffffffffu, best.v, o);
    r.best.i = __shfl_xor_sync(0xffffffffu, best.i, o);
    r.second = __shfl_xor_sync(0xffffffffu, second, o);
    r.bad = __shfl_xor_sync(0xffffffffu, int(bad), o) != 0;
    return r;
  }
};

__device__ RowStats block_stats(RowStats a, RowStats* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) a = RowStats::merge(a, a.shuffled(o));
  __syncthreads();
  if (lane == 0) scratch[warp] = a;
  __syncthreads();
  a = lane < kWarps ? scratch[lane] : RowStats{};
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) a = RowStats::merge(a, a.shuffled(o));
  return a;
}

struct Scratch {
  RowStats stats[kWarps];
  ArgMax argmax[kWarps];
  MaxSum maxsum[kWarps];
  float subgroup_lse[kSubgroupsPerGroup];
  uint32_t count[256];
  unsigned long long mass[256];
  RadixLevel level;
};

// The logits row that position pos reads: row (b, max(i - shift, 0)).
template <DType D>
__device__ RowView<D> logits_row(const PredictParams& p, int64_t pos) {
  const int64_t b = pos / p.length, i = pos % p.length;
  const int64_t src = b * p.length + (i - p.logits_shift > 0 ? i - p.logits_shift : 0);
  return RowView<D>(static_cast<const char*>(p.logits) + src * p.row_stride * RowView<D>::kElemBytes);
}

template <DType D>
__device__ void predict_position(const PredictParams& p, int64_t pos, uint64_t seed, uint64_t offset, uint4* ring,
                                 float* group_lse, Scratch& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t token_in = p.x[pos];
  if (token_in != p.mask_id) {
    if (threadIdx.x == 0) {
      p.x0[pos] = token_in, p.conf[pos] = -kInf;
      if (token_in < 0 || token_in >= p.vocab) report_error(p.first_error, (pos << 2) | kTokenOutOfRange);
    }
    return;
  }
  const int64_t vocab = p.vocab, mask = p.mask_id;
  const RowView<D> view = logits_row<D>(p, pos);
  auto fail = [&](CategoricalStatus status) {
    if (threadIdx.x == 0) {
      p.x0[pos] = token_in, p.conf[pos] = kNaN;
      report_error(p.first_error, (pos << 2) | status);
    }
  };

  const bool filtered = p.top_k > 0 || p.top_p < 1.0f;
  const bool proposal_scored = p.proposal_confidence && p.confidence != Confidence::kRandom;
  const bool proposal_entropy = proposal_scored && p.confidence == Confidence::kEntropy;
  const int64_t groups = (vocab + kCategoricalGroup - 1) / kCategoricalGroup;
  const float scale = p.temperature > 0.0f ? inverse_temperature(p.temperature) : 1.0f;
  // A draw that nothing reshapes takes its group masses from pass A, which then also reduces each
  // group's tempered (max, sum) (as sample_categorical's pass 1), so that pass B need not read the
  // row again: at 2 rows of 253 KB a block the re-read missed L2 and doubled the HBM traffic.
  const bool fused = p.temperature > 0.0f && !filtered && !proposal_entropy;
  float* group_max = group_lse + groups;

  // Pass A: untempered statistics over the vocabulary without the mask token; one warp per group
  // when fused, else the block strides the whole row (one stream a thread, no per-group
  // restarts); with DLLM_ASYNC_COPIES, through shared memory either way (cuda_async_rows.cuh).
  // At temperature 1 the fused pass's group sums are the untempered exponentials: the row's sums
  // are taken from them (add_sums) instead of a second exponential an element.
  const bool entropy = p.confidence == Confidence::kEntropy;
  const bool group_sums = fused && scale == 1.0f && !entropy;
  const RowStats::Needs needs{p.confidence == Confidence::kMargin, !group_sums, entropy};
  RowStats mine;
  // A NaN or +inf is found without a compare an element: +inf is a batch's max, a NaN makes the
  // sums NaN (the unfused pass always keeps them), a NaN among -inf values only is looked for in
  // such a batch; but the entropy's sums clamp a NaN away, so with them every element is tested.
  // The mask's own logit, dropped from all of these, is read apart (the CPU kernel rejects a NaN
  // mask logit too).
  if (threadIdx.x == 0 && mask < vocab) mine.bad |= !(view.at(mask) < kInf);
  auto take = [&](auto& v, const auto& where) {
    if (entropy) mine.bad |= any_not_below_inf(v);
    drop(v, where.find(mask));
    const float b1 = batch_max(v);
    if (!(b1 > -kInf)) mine.bad |= any_nan(v);
    mine.bad |= b1 == kInf;
    mine.add_batch(v, where, b1, needs);
    return b1;
  };
  if (fused) {
    const float scale_log2 = log2e_times(scale);
    MaxSum acc;
    auto begin = [&](int64_t g) {
      if (p.l2_prefetch_blocks > 0) prefetch_next_group(view, g, groups, vocab);
      acc = MaxSum{-kInf, 0.0f};
    };
    auto batch = [&](auto& v, const auto& where, int) {
      drop(v, where.find(mask));
      const float b1 = batch_max(v);
      mine.add_batch(v, where, b1, needs);
      add_batch_fma(acc, v, scale, scale_log2, b1);
    };
    auto end = [&](int64_t g) {
      if (group_sums) mine.add_sums(acc);
      acc = warp_max_sum(acc, scale);
      mine.bad |= !(acc.s == acc.s);
      if (lane == 0) group_max[g] = acc.m, group_lse[g] = acc.s;
    };
    if (ring != nullptr) {
      for_warp_groups_async(view, vocab, ring, begin, batch, end);
    } else {
      for_warp_groups(view, vocab, begin, batch, end);
    }
  } else {
    // DLLM_L2_PREFETCH (cuda_rows.cuh) by the block's loop iterations of kIteration elements
    // (16 KB, about one DRAM latency of work): thread 0 asks for the one kAhead ahead.
    constexpr int64_t kIteration = int64_t(kThreads) * kUnroll * RowView<D>::kVec;
    constexpr int kAhead = 2;
    const bool ask = p.l2_prefetch_blocks > 0 && threadIdx.x == 0;
    auto prefetch_iteration = [&](int64_t lo) {
      if (lo < vocab) view.prefetch(lo, lo + kIteration < vocab ? lo + kIteration : vocab);
    };
    if (ask)
      for (int r = 1; r < kAhead; ++r) prefetch_iteration(r * kIteration);
    auto batch = [&](auto& v, const auto& where, int) {
      if (ask) prefetch_iteration(where(0) + kAhead * kIteration);
      take(v, where);
    };
    if (ring != nullptr) {
      for_range_batches<kThreads>(view, 0, vocab, threadIdx.x, ring, batch);
    } else {
      for_batches<kThreads>(view, 0, vocab, threadIdx.x, batch);
    }
  }
  if (p.l2_prefetch_blocks > 0 && lane == 0) {
    const int64_t later = later_row(pos, p.batch * p.length, p.l2_prefetch_blocks);
    if (later < p.batch * p.length && p.x[later] == mask) prefetch_first_group(logits_row<D>(p, later), groups, vocab);
  }
  const RowStats st = block_stats(mine, sm.stats);  // its barriers publish group_max and the sums
  if (st.bad || !(st.s == st.s)) return fail(kNonFinite);
  if (st.m == -kInf) return fail(kAllMinusInf);
  int64_t token = st.best.i;

  uint32_t tau = 0;  // filtering keeps values whose ordered key is >= tau
  // The confidence's distribution: softmax((v - st.m) * conf_scale), whose log-sum-exp is conf_lse.
  float conf_scale = 1.0f, conf_lse = __logf(st.s);
  RowStats kept;                           // proposal_entropy: the kept tempered values
  bool kept_stats = false;                 // kept holds them: pass B ran (else st's are the proposal's)
  if (p.temperature > 0.0f || (proposal_scored && filtered)) {
    // The tempered log-weights of dllm/sample_categorical.h (relative to the row's max).
    const float row_max = st.m;
    auto weight = [&](int64_t idx, float v) {
      return (idx == mask || ordered_key(v) < tau) ? -kInf : (v - row_max) * scale;
    };
    // Pass B: tempered group log-masses, one warp per group; its last barrier publishes them.
    auto group_pass = [&](bool track_kept) {
      for (int64_t g = warp; g < groups; g += kWarps) {
        const int64_t lo = g * kCategoricalGroup, hi = lo + kCategoricalGroup < vocab ? lo + kCategoricalGroup : vocab;
        MaxSum acc{-kInf, 0.0f};
        for_batches<32>(view, lo, hi, lane, [&](auto& v, const auto& where, int) {
          drop(v, where.find(mask));
#pragma unroll
          for (int e = 0; e < int(sizeof(v) / sizeof(v[0])); ++e)
            v[e] = ordered_key(v[e]) < tau ? -kInf : (v[e] - row_max) * scale;  // weight()
          const float bm = batch_max(v);
          add_batch(acc, v, 1.0f, bm);
          if (track_kept) kept.add_batch(v, where, bm, RowStats::Needs{false, true, true});
        });
        acc = warp_max_sum(acc);
        if (lane == 0) group_lse[g] = acc.m == -kInf ? -kInf : acc.m + __logf(acc.s);
      }
      __syncthreads();
    };
    if (fused) {  // pass A's sums, relative to each group's max, as log-masses relative to the row's
      for (int64_t g = threadIdx.x; g < groups; g += kThreads)
        group_lse[g] = tempered_log_mass(group_max[g], group_lse[g], row_max, scale);
      __syncthreads();
    } else {
      group_pass(proposal_entropy && !filtered);
    }
    if (filtered) {
      MaxSum tot{-kInf, 0.0f};
      for (int64_t g = threadIdx.x; g < groups; g += kThreads) tot = merge(tot, MaxSum{group_lse[g], 1.0f});
      tot = block_max_sum(tot, sm.maxsum);
      const float lse_t = tot.m + __logf(tot.s);
      const uint64_t top_p_mass = p.top_p >= 1.0f ? UINT64_MAX : fixed_mass(p.top_p);
      if (threadIdx.x == 0) sm.level = RadixLevel{};
      for (int shift = 24; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += kThreads) sm.count[d] = 0, sm.mass[d] = 0;
        __syncthreads();
        const uint32_t prefix = sm.level.prefix;
        const uint32_t high = shift == 24 ? 0u : ~0u << (shift + 8);
        for_batches<kThreads>(view, 0, vocab, threadIdx.x, [&](auto& v, const auto& where, int) {
          drop(v, where.find(mask));
#pragma unroll
          for (int e = 0; e < int(sizeof(v) / sizeof(v[0])); ++e) {
            if (v[e] == -kInf) continue;
            const uint32_t key = ordered_key(v[e]);
            if ((key & high) != (prefix & high)) continue;
            const int d = (key >> shift) & 255;
            atomicAdd(&sm.count[d], 1u);
            atomicAdd(&sm.mass[d],
                      static_cast<unsigned long long>(fixed_mass(__expf((v[e] - row_max) * scale - lse_t))));
          }
        });
        __syncthreads();
        if (threadIdx.x == 0) {
          RadixLevel level = sm.level;
          radix_step(level, sm.count, reinterpret_cast<const uint64_t*>(sm.mass), shift, p.top_k, top_p_mass);
          sm.level = level;
        }
        __syncthreads();
      }
      tau = sm.level.prefix;
      group_pass(proposal_entropy);
    }
    if (p.temperature > 0.0f)
      token = draw_hierarchical(view, vocab, group_lse, weight, seed, offset, uint64_t(pos), sm.argmax, sm.subgroup_lse);
    if (proposal_scored) {
      MaxSum tot{-kInf, 0.0f};
      for (int64_t g = threadIdx.x; g < groups; g += kThreads) tot = merge(tot, MaxSum{group_lse[g], 1.0f});
      tot = block_max_sum(tot, sm.maxsum);
      conf_scale = scale;
      conf_lse = tot.m + __logf(tot.s);
      if (proposal_entropy) kept = block_stats(kept, sm.stats), kept_stats = true;
    }
  }

  if (threadIdx.x == 0) {
    // Filtering keeps the top value always, the second one only above the threshold.
    const bool second_kept = st.second != -kInf && !(proposal_scored && ordered_key(st.second) < tau);
    float conf = 0.0f;
    switch (p.confidence) {
      case Confidence::kProb: conf = __expf((view.at(token) - st.m) * conf_scale - conf_lse); break;
      case Confidence::kMargin:
        conf = __expf(-conf_lse) - (second_kept ? __expf((st.second - st.m) * conf_scale - conf_lse) : 0.0f);
        break;
      case Confidence::kEntropy:
        conf = kept_stats ? kept.t / kept.s - __logf(kept.s) : st.t / st.s - __logf(st.s);
        break;
      case Confidence::kRandom: conf = uniform_at(seed, offset, uint64_t(pos), 0, RngStream::kUniform); break;
    }
    p.x0[pos] = token;
    p.conf[pos] = conf;
  }
}

// At least 2 blocks per SM: a budget of 128 registers, which holds a batch being reduced and the
// next one loading without spills (at 3 blocks, 80 registers, it spilled 150-380 bytes). Left
// free, ptxas settles on 64 (4 blocks per SM) and spills to the stack.
template <DType D>
__global__ void __launch_bounds__(kThreads, 2) predict_masked_kernel(PredictParams p) {
  // pass A's ring with DLLM_ASYNC_COPIES, then group_lse: [groups] log-masses (sums, when fused),
  // then [groups] maxima
  extern __shared__ uint4 dynamic_smem[];
  __shared__ Scratch scratch;
  uint4* ring = p.async_copies ? dynamic_smem : nullptr;
  float* group_lse = reinterpret_cast<float*>(p.async_copies ? dynamic_smem + kAsyncRingChunks : dynamic_smem);
  uint64_t seed, offset;
  p.rng.unpack(seed, offset);
  const int64_t positions = p.batch * p.length;
  for (int64_t pos = blockIdx.x; pos < positions; pos += gridDim.x) {
    predict_position<D>(p, pos, seed, offset, ring, group_lse, scratch);
    __syncthreads();  // shared memory is reused by the next position
  }
}

}  // namespace

void predict_masked_cuda(const PredictParams& p, void* stream) {
  const int64_t positions = p.batch * p.length;
  if (positions == 0) return;
  const size_t smem = 2 * size_t((p.vocab + kCategoricalGroup - 1) / kCategoricalGroup) * sizeof(float) +
                      (p.async_copies ? kAsyncRingBytes : 0);
  const unsigned grid = unsigned(positions < 2147483647 ? positions : 2147483647);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  with_dtype(p.dtype, [&]<DType D>() {
    allow_dynamic_smem<predict_masked_kernel<D>>(smem);
    predict_masked_kernel<D><<<grid, kThreads, smem, s>>>(p);
  });
}

}  // namespace dllm
