// CUDA kernels of the SEDD/MDLM ops (dllm/sedd.h).
//
// sedd_step: one block of 256 threads per row, the grouped Gumbel-max of sample_categorical
// with SEDD's weights computed on load. Pass 1 streams the row once: each warp owns whole
// groups of 2048 and reduces their online (max, sum-exp) (for_warp_groups; through shared
// memory with DLLM_ASYNC_COPIES), skipping x, whose weight is computed separately from the row
// sum. Mixture rows then need nothing more than the group log-masses;
// clip rows (uniform analytic/denoise) make a second pass over the row for the clipped group
// sums, which a block issues right after its first pass; the launch bounds the rows in flight
// so that it is served from L2 (see sedd_step_cuda). The chosen group (4 KB) is read once more
// to pick a subgroup and a token. Absorbing-graph rows that are not masked are never read.
//
// Losses: one block per row. The forward reduces the row sums into double per-row losses; the
// backward reads the row and writes its gradient once, elementwise.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "cuda_rows.cuh"
#include "cuda_async_rows.cuh"
#include "dllm/sample_categorical.h"
#include "dllm/sedd.h"

namespace dllm {
namespace {

using namespace cuda;

__device__ void report(int64_t* first_error, int64_t row, SeddStatus status) {
  report_error(first_error, sedd_encode(row, status));
}

struct StepScratch {
  ArgMax argmax[kWarps];
  MaxSum maxsum[kWarps];
  double sum[kWarps];
  float subgroup_lw[kSubgroupsPerGroup];
  alignas(StepRow) unsigned char row[sizeof(StepRow)];  // the row's StepRow (bytes: shared memory takes no constructor)
  bool x_finite;  // x's own logit, which pass 1 leaves out, is below +inf (and not NaN)
};

// log-weight of a token inside its group, up to the group's constant: l - ref for mixture rows,
// log(max(0, exp(l - ref) - clip)) for clip rows; -inf at x. The exp is pass 2's
// exp_ftz, so that a token's weight is positive here exactly where it added to its group's sum:
// with expf a token whose exp lies within exp_ftz's few ulps of the clip could give its group
// mass while leaving every weight in it zero, and the draw would report kSeddNoMass.
__device__ float element_lw(float l, int64_t i, int64_t x, bool clip, float ref, float a) {
  if (i == x) return -kInf;
  if (!clip) return l - ref;
  const float w = exp_ftz(l - ref) - a;
  return w > 0.0f ? logf(w) : -kInf;
}

template <DType D, bool kAsync>
__device__ void step_row(const SeddStepParams& p, int64_t r, uint64_t seed, uint64_t offset, uint4* ring,
                         float* group_lw, StepScratch& scratch) {
  using T = typename IO<D>::T;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t K = p.vocab;
  const int64_t groups = (K + kCategoricalGroup - 1) / kCategoricalGroup;
  const int64_t b = r / p.seq_len;
  const int64_t x = p.x[r];
  const float sigma = p.sigma[b], d = p.dsig[b];
  auto finish = [&](int64_t token, SeddStatus status) {
    if (threadIdx.x != 0) return;
    p.x_next[r] = status == kSeddOk ? token : -1;
    if (status != kSeddOk) report(p.first_error, r, status);
  };
  if (x < 0 || x >= K) return finish(-1, kSeddBadToken);
  if (!(sigma > 0.0f && sigma < kInf && d >= 0.0f && d < kInf)) return finish(-1, kSeddBadSigma);
  if (p.graph == SeddGraph::kAbsorb && x != K - 1) return finish(x, kSeddOk);

  const T* row = static_cast<const T*>(p.logits) + r * p.row_stride;
  const RowView<D> view(row);
  // The row's constants, logs of expm1 in double, are some 400 instructions: thread 0 works them
  // out while the other warps stream, and the barrier after pass 1 hands them over, with the check
  // of x's own logit (whose load they hide), which pass 1 leaves out.
  if (threadIdx.x == 0) {
    const float l_x = view.at(x);
    const StepRow terms = step_row(p.graph, p.method, p.scale_by_sigma, sigma, d, K);
    memcpy(scratch.row, &terms, sizeof terms);
    scratch.x_finite = l_x < kInf;
  }

  // Pass 1: per-group (max, sum exp) of the logits other than x. A NaN or +inf makes its group's
  // sum NaN, and so the row's below, which is how they are found.
  MaxSum acc;
  auto begin = [&](int64_t g) {
    if (p.l2_prefetch_blocks > 0) prefetch_next_group(view, g, groups, K);
    acc = MaxSum{-kInf, 0.0f};
  };
  auto batch = [&](auto& v, const auto& where, int) {
    drop(v, where.find(x));
    add_batch_fma(acc, v, 1.0f, kLog2e, batch_max(v));
  };
  auto end = [&](int64_t g) {
    acc = warp_max_sum(acc);
    if (lane == 0) {
      group_lw[2 * g] = acc.m;
      group_lw[2 * g + 1] = acc.s;
    }
  };
  if constexpr (kAsync) {
    for_warp_groups_async<Order::kAny>(view, K, ring, begin, batch, end);
  } else {
    for_warp_groups<Order::kAny>(view, K, begin, batch, end);
  }
  if (p.l2_prefetch_blocks > 0 && lane == 0) {  // a later row that is read: absorbing rows only while masked
    const int64_t later = later_row(r, p.rows, p.l2_prefetch_blocks);
    if (later < p.rows && (p.graph != SeddGraph::kAbsorb || p.x[later] == K - 1))
      prefetch_first_group(RowView<D>(static_cast<const T*>(p.logits) + later * p.row_stride), groups, K);
  }
  __syncthreads();  // publishes group_lw, the row's constants and x's check
  StepRow s;
  memcpy(&s, scratch.row, sizeof s);
  MaxSum row_acc{-kInf, 0.0f};
  for (int64_t g = threadIdx.x; g < groups; g += kThreads) row_acc = merge(row_acc, MaxSum{group_lw[2 * g], group_lw[2 * g + 1]});
  row_acc = block_max_sum(row_acc, scratch.maxsum);  // its barriers also order group_lw's reuse below
  if (!scratch.x_finite || !(row_acc.s == row_acc.s)) return finish(-1, kSeddNonFinite);  // merge keeps a NaN sum

  // Every log-weight below is relative to ref (the largest logit but x's, for mixture rows): the
  // Gumbel noise added to a float32 log-weight of 1e7 would keep only its integer part.
  double log_w_x = 0.0;  // clip rows: from clip_level; mixture rows: in the one thread that needs it
  float ref = 0.0f, clip = 0.0f;
  if (!s.clip) {
    ref = row_acc.m == -kInf ? 0.0f : row_acc.m;
    // Group log-weights in place: log(sum exp l) + log c - shift, less ref.
    for (int64_t g = threadIdx.x; g < groups; g += kThreads) {
      const float m = group_lw[2 * g], sum = group_lw[2 * g + 1];
      group_lw[2 * g] = m == -kInf ? -kInf : float(double(m) - double(ref) + log(double(sum)) + s.log_c);
    }
  } else {
    ref = fmaxf(row_acc.m, float(s.shift));
    const double sum_others = row_acc.m == -kInf ? 0.0 : double(row_acc.s) * exp(double(row_acc.m) - double(ref));
    clip = float(clip_level(s, exp(s.shift - double(ref)), sum_others, K, log_w_x));
    // Pass 2 (from L2): the clipped group sums.
    for (int64_t g = warp; g < groups; g += kWarps) {
      const int64_t lo = g * kCategoricalGroup;
      const int64_t hi = lo + kCategoricalGroup < K ? lo + kCategoricalGroup : K;
      float acc = 0.0f;
      for_batches<32, Order::kAny>(view, lo, hi, lane, [&](auto& v, const auto& where, int) {
        drop(v, where.find(x));
        float part[2] = {0.0f, 0.0f};
#pragma unroll
        for (int e = 0; e < int(sizeof(v) / sizeof(v[0])); ++e) {
          const float w = exp_ftz(v[e] - ref) - clip;
          part[e % 2] += w > 0.0f ? w : 0.0f;
        }
        acc += part[0] + part[1];
      });
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
      if (lane == 0) group_lw[2 * g] = acc > 0.0f ? float(log(double(acc)) + s.log_c) : -kInf;
    }
  }
  __syncthreads();

  // The group (or x, candidate index `groups`): Gumbel-max over the log-weights.
  ArgMax pick{-kInf, INT64_MAX};
  for (int64_t g = threadIdx.x; g <= groups; g += kThreads) {
    if (g == groups && !s.clip) {
      const double lse_others = row_acc.m == -kInf ? -INFINITY : double(row_acc.m) + log(double(row_acc.s));
      log_w_x = mixture_log_w_x(s, lse_others) - double(ref);
    }
    const float lw = g < groups ? group_lw[2 * g] : float(log_w_x);
    if (lw != -kInf) pick = better(pick, ArgMax{lw + gumbel_at(seed, offset, r, g, RngStream::kGroup), g});
  }
  const int64_t group = block_argmax(pick, scratch.argmax).i;
  if (group == INT64_MAX) return finish(-1, kSeddNoMass);
  if (group == groups) return finish(x, kSeddOk);

  auto weight = [&](int64_t i, float l) { return element_lw(l, i, x, s.clip, ref, clip); };
  const int64_t token = draw_in_group(view, K, group * kCategoricalGroup, weight, seed, offset, r, scratch.argmax,
                                      scratch.subgroup_lw);
  finish(token, token == INT64_MAX ? kSeddNoMass : kSeddOk);
}

// At least 3 blocks per SM (80 registers, no spills): left free, ptxas takes 114 and the H200 ran
// the kernel at 2 blocks, 25% occupancy, too few warps to cover the latency of each row's draw.
// The ring's walk (kAsync, DLLM_ASYNC_COPIES) is a kernel apart, as in sample_categorical.cu, at 2
// blocks an SM: at 80 registers ptxas spilled the straddling element that each group loads ahead
// (right after its load, so the warp waited for it), and 16 warps through the ring keep 96 KB an
// SM in flight, twice what 24 keep through registers.
template <DType D, bool kAsync>
__global__ void __launch_bounds__(kThreads, kAsync ? 2 : 3) sedd_step_kernel(SeddStepParams p) {
  // pass 1's ring when kAsync (for_warp_groups_async), then group_lw: [groups][2], (max, sum) after
  // pass 1, then log-weights
  extern __shared__ uint4 dynamic_smem[];
  __shared__ StepScratch scratch;
  uint4* ring = kAsync ? dynamic_smem : nullptr;
  float* group_lw = reinterpret_cast<float*>(kAsync ? dynamic_smem + kAsyncRingChunks : dynamic_smem);
  uint64_t seed, offset;
  p.rng.unpack(seed, offset);
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    step_row<D, kAsync>(p, r, seed, offset, ring, group_lw, scratch);
    __syncthreads();  // group_lw and the scratch arrays are reused by the next row
  }
}

// ---- losses --------------------------------------------------------------------------------

template <DType D>
__global__ void __launch_bounds__(kThreads) loss_forward_kernel(LossParams p) {
  using T = typename IO<D>::T;
  extern __shared__ uint4 ring[];  // with DLLM_ASYNC_COPIES (cuda_async_rows.cuh)
  __shared__ MaxSum maxsum[kWarps];
  __shared__ double sums[kWarps];
  const int64_t K = p.vocab;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const int64_t b = r / p.seq_len;
    const int64_t xt = p.x_t[r], x0 = p.x0[r];
    const T* row = static_cast<const T*>(p.logits) + r * p.row_stride;
    const bool md = p.kind == LossKind::kMaskedDiffusion;
    const bool absorb = p.graph == SeddGraph::kAbsorb;
    SeddStatus status = kSeddOk;
    bool active = false;
    if (md) {
      if (!loss_tokens_ok(p, xt, x0)) status = kSeddBadToken;
      else if (xt == p.mask_id && x0 == p.mask_id) status = kSeddMaskTarget;
      else active = xt == p.mask_id;
    } else {
      if (!loss_tokens_ok(p, xt, x0)) status = kSeddBadToken;
      else if (bad_loss_sigma(p.sigma[b], p.dsigma[b])) status = kSeddBadSigma;
      else active = !absorb || xt == K - 1;
    }
    if (!active) {  // uniform over the block: every thread takes this branch together
      if (threadIdx.x == 0) {
        p.row_loss[r] = status == kSeddOk ? 0.0 : __longlong_as_double(0x7ff8000000000000ll);
        if (md) p.lse[r] = 0.0f;
        if (status != kSeddOk) report(p.first_error, r, status);
      }
      continue;
    }
    const int64_t skip = md ? p.mask_id : xt;
    MaxSum acc{-kInf, 0.0f};
    double sum_l = 0.0;
    // Warp w streams the w-th eighth of the row with 16-byte loads.
    const RowView<D> view(row);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t slice = ((K + kWarps - 1) / kWarps + 7) / 8 * 8;
    const int64_t lo = warp * slice, hi = lo + slice < K ? lo + slice : K;
    bool nan = false;  // a NaN among -inf only (float32; else the sum is NaN, as with any NaN or +inf)
    auto batch = [&](auto& v, const auto& where, int chunks) {
      constexpr int n = sizeof(v) / sizeof(v[0]), run = n / (n == 1 ? 1 : kUnroll);  // elements a chunk
      const int at = where.find(skip);
      if (!md && !absorb) {  // the -inf filling chunks past the range is no logit
#pragma unroll
        for (int e = 0; e < n; ++e)
          if (e != at && e / run < chunks) sum_l += double(v[e]);
      }
      drop(v, at);  // the skipped column is no logit of the loss (as on the CPU)
      const float bm = batch_max(v);
      if constexpr (D == DType::kFloat32) {  // half the elements a byte; with the FFMA ptxas spills here
        if (bm > -kInf) {
          add_batch(acc, v, 1.0f, bm);
        } else {
          nan |= any_nan(v);
        }
      } else {
        add_batch_fma(acc, v, 1.0f, kLog2e, bm);
      }
    };
    if (lo < hi) {
      if (p.async_copies) {
        for_range_batches<32, Order::kAny>(view, lo, hi, lane, ring, batch);
      } else {
        for_batches<32, Order::kAny>(view, lo, hi, lane, batch);
      }
    }
    nan = __syncthreads_or(nan || !(acc.s == acc.s));
    acc = block_max_sum(acc, maxsum);
    if (!md && !absorb) sum_l = block_sum(sum_l, sums);
    if (threadIdx.x == 0) {
      const double l_x0 = double(IO<D>::load(row, x0));
      const double lse = nan ? double(NAN) : acc.m == -kInf ? -INFINITY : double(acc.m) + log(double(acc.s));
      if (md) {
        p.lse[r] = float(lse);
        p.row_loss[r] = double(p.weight[b]) * (lse - l_x0);
      } else {
        const SeRow s = se_row(p.graph, p.scale_by_sigma, p.sigma[b], K, xt, x0);
        const double sum_exp = nan ? double(NAN) : acc.m == -kInf ? 0.0 : exp(lse - s.shift);
        p.row_loss[r] = double(p.dsigma[b]) * se_value(s, p.graph, K, sum_exp, sum_l, l_x0);
      }
    }
    __syncthreads();  // the shared scratch is reused by the next row
  }
}

template <DType D>
__global__ void __launch_bounds__(kThreads) loss_backward_kernel(LossParams p) {
  using T = typename IO<D>::T;
  constexpr int kVec = Vec<D>::kSize;
  const int64_t K = p.vocab;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const T* row = static_cast<const T*>(p.logits) + r * p.row_stride;
    T* grad = static_cast<T*>(p.grad) + r * K;
    const GradRow gr = grad_row(p, r);
    const int64_t x0 = p.x0[r];
    const GradTerms t = grad_terms(gr);
    const float inactive = gr.tokens_ok ? 0.0f : NAN;
    auto value = [&](int64_t i, float l) {
      if (!gr.active) return inactive;
      if (i == gr.skip) return 0.0f;
      return i == x0 ? float(x0_grad(gr, l)) : t.sign * exp_ftz(l - t.exp_ref) - t.gb;
    };
    const RowView<D> view(row);
    const int64_t grad_head = int64_t(reinterpret_cast<uintptr_t>(grad) & 15) / RowView<D>::kElemBytes;
    if (grad_head != view.head) {  // rows of another alignment than the gradient's: one element a load
      for (int64_t i = threadIdx.x; i < K; i += kThreads)
        grad[i] = IO<D>::store(value(i, gr.active && i != gr.skip ? IO<D>::load(row, i) : 0.0f));
      continue;
    }
    // The gradient row has the logits row's alignment (contiguous logits): its 16-byte chunks are
    // the logits' chunks, loaded and stored whole, kUnroll in flight a thread; inactive rows
    // only store their fill.
    uint4* out = reinterpret_cast<uint4*>(reinterpret_cast<uintptr_t>(grad) & ~uintptr_t(15));
    uint4 inactive_chunk{};  // +0 in every dtype; NaN for rows of tokens out of range
    if (!gr.tokens_ok)
#pragma unroll
      for (int j = 0; j < kVec; ++j) Vec<D>::put(inactive_chunk, j, IO<D>::store(inactive));
    const auto split = view.split(0, K);
    auto edge = [&](int64_t i) { grad[i] = IO<D>::store(value(i, gr.active ? view.at(i) : 0.0f)); };
    for (int64_t i = threadIdx.x; i < split.inner_lo; i += kThreads) edge(i);
    for (int64_t i = split.inner_hi + threadIdx.x; i < K; i += kThreads) edge(i);
    for (int64_t c0 = split.begin + threadIdx.x; c0 < split.end; c0 += int64_t(kThreads) * kUnroll) {
      uint4 raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (gr.active && c0 + kThreads * u < split.end) raw[u] = __ldg(view.base + c0 + kThreads * u);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t c = c0 + kThreads * u;
        if (c >= split.end) break;
        uint4 packed = inactive_chunk;  // the active branches write every element
        const int64_t i0 = view.index(c, 0);
        if (gr.active && uint64_t(gr.skip - i0) >= kVec && uint64_t(x0 - i0) >= kVec) {
          // neither the skipped token nor x0 in this chunk: no per-element index tests
#pragma unroll
          for (int j = 0; j < kVec; ++j)
            Vec<D>::put(packed, j, IO<D>::store(t.sign * exp_ftz(Vec<D>::get(raw[u], j) - t.exp_ref) - t.gb));
        } else if (gr.active) {
#pragma unroll
          for (int j = 0; j < kVec; ++j) Vec<D>::put(packed, j, IO<D>::store(value(i0 + j, Vec<D>::get(raw[u], j))));
        }
        out[c] = packed;
      }
    }
  }
}

__global__ void sample_transition_kernel(SampleTransitionParams p) {
  uint64_t seed, offset;
  p.rng.unpack(seed, offset);
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < p.rows; r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x0 = p.x0[r];
    const float sigma = p.sigma[r / p.seq_len];
    if (x0 < 0 || x0 >= p.num_classes) {
      p.x_t[r] = -1;
      report(p.first_error, r, kSeddBadToken);
    } else if (!(sigma >= 0.0f && sigma < kInf)) {
      p.x_t[r] = -1;
      report(p.first_error, r, kSeddBadSigma);
    } else {
      const U32x4 bits = philox_pair(seed, offset, uint64_t(r), 0, RngStream::kGroup);
      p.x_t[r] = transition_token(p.graph, x0, p.num_classes, double(sigma), bits);
    }
  }
}

unsigned grid_for(int64_t rows) {
  // Enough blocks to fill the device many times over; rows beyond are grid-strided.
  return unsigned(rows < (int64_t(1) << 20) ? rows : (int64_t(1) << 20));
}

}  // namespace

void sedd_step_cuda(const SeddStepParams& p, void* stream) {
  if (p.rows == 0) return;
  const int64_t groups = (p.vocab + kCategoricalGroup - 1) / kCategoricalGroup;
  const size_t smem = size_t(groups) * 2 * sizeof(float) + (p.async_copies ? kAsyncRingBytes : 0);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  unsigned grid = grid_for(p.rows);
  if (p.graph == SeddGraph::kUniform && p.method != SeddMethod::kEuler) {
    // Clip rows read their row a second time right after the first pass. Bounding the rows in
    // flight (one per resident block, grid-strided) to about 24 MB keeps that second read in
    // L2 (50 MB on an H100) instead of HBM; at least one block per SM keeps every SM busy.
    int device = 0, sms = 1;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    const int64_t row_bytes = p.vocab * (p.dtype == DType::kFloat32 ? 4 : 2);
    const int64_t in_flight = std::max<int64_t>(sms, (int64_t(24) << 20) / row_bytes);
    grid = unsigned(std::min<int64_t>(grid, in_flight));
  }
  with_dtype(p.dtype, [&]<DType D>() {
    if (p.async_copies) {
      allow_dynamic_smem<sedd_step_kernel<D, true>>(smem);
      sedd_step_kernel<D, true><<<grid, kThreads, smem, s>>>(p);
    } else {
      sedd_step_kernel<D, false><<<grid, kThreads, smem, s>>>(p);
    }
  });
}

void loss_forward_cuda(const LossParams& p, void* stream) {
  if (p.rows == 0) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t smem = p.async_copies ? kAsyncRingBytes : 0;
  with_dtype(p.dtype, [&]<DType D>() {
    allow_dynamic_smem<loss_forward_kernel<D>>(smem);
    loss_forward_kernel<D><<<grid_for(p.rows), kThreads, smem, s>>>(p);
  });
}

void loss_backward_cuda(const LossParams& p, void* stream) {
  if (p.rows == 0) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  with_dtype(p.dtype, [&]<DType D>() { loss_backward_kernel<D><<<grid_for(p.rows), kThreads, 0, s>>>(p); });
}

void sample_transition_cuda(const SampleTransitionParams& p, void* stream) {
  if (p.rows == 0) return;
  const int64_t blocks = (p.rows + kThreads - 1) / kThreads;
  sample_transition_kernel<<<grid_for(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
}

}  // namespace dllm
