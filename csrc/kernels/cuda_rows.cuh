// Device-side row primitives shared by the CUDA sampling kernels: vector loads of rows of any
// alignment, (max, sum-exp) and (value, index) reductions. Internal to csrc/kernels.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "dllm/common.h"
#include "exp2_ftz.cuh"
#include "dllm/philox.h"
#include "dllm/sample_categorical.h"

namespace dllm::cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;  // 16-byte loads in flight per lane
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kMaxFloat = std::numeric_limits<float>::max();

template <DType D>
struct Vec;
// get: element j of a chunk as a float; put: stores element j's bits (j a compile-time constant).
template <>
struct Vec<DType::kFloat32> {
  static constexpr int kSize = 4;
  __device__ static float get(const uint4& v, int j) {
    return __uint_as_float(reinterpret_cast<const uint32_t*>(&v)[j]);
  }
  __device__ static void put(uint4& v, int j, float x) { reinterpret_cast<uint32_t*>(&v)[j] = __float_as_uint(x); }
};
__device__ inline void put_half_word(uint4& v, int j, unsigned short bits) {
  uint32_t& w = reinterpret_cast<uint32_t*>(&v)[j >> 1];
  w = (j & 1) ? (w & 0xffffu) | (uint32_t(bits) << 16) : (w & 0xffff0000u) | bits;
}
template <>
struct Vec<DType::kBFloat16> {
  static constexpr int kSize = 8;
  __device__ static float get(const uint4& v, int j) {
    const uint32_t w = reinterpret_cast<const uint32_t*>(&v)[j >> 1];
    return __uint_as_float((j & 1) ? (w & 0xffff0000u) : (w << 16));
  }
  __device__ static void put(uint4& v, int j, __nv_bfloat16 x) { put_half_word(v, j, __bfloat16_as_ushort(x)); }
};
template <>
struct Vec<DType::kFloat16> {
  static constexpr int kSize = 8;
  __device__ static float get(const uint4& v, int j) {
    const uint32_t w = reinterpret_cast<const uint32_t*>(&v)[j >> 1];
    return __half2float(__ushort_as_half(static_cast<unsigned short>((j & 1) ? (w >> 16) : w)));
  }
  __device__ static void put(uint4& v, int j, __half x) { put_half_word(v, j, __half_as_ushort(x)); }
};

// One element of each DType: its type, its value as a float, loads (read-only path) and stores
// as float (round to nearest even).
template <DType D>
struct IO;
template <>
struct IO<DType::kFloat32> {
  using T = float;
  __device__ static float to_float(T v) { return v; }
  __device__ static float load(const T* p, int64_t i) { return __ldg(p + i); }
  __device__ static T store(float v) { return v; }
};
template <>
struct IO<DType::kBFloat16> {
  using T = __nv_bfloat16;
  __device__ static float to_float(T v) { return __bfloat162float(v); }
  __device__ static float load(const T* p, int64_t i) { return to_float(__ldg(p + i)); }
  __device__ static T store(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct IO<DType::kFloat16> {
  using T = __half;
  __device__ static float to_float(T v) { return __half2float(v); }
  __device__ static float load(const T* p, int64_t i) { return to_float(__ldg(p + i)); }
  __device__ static T store(float v) { return __float2half_rn(v); }
};

// kVec consecutive elements of a D tensor from element i, as floats: one 16-byte access
// (kVec = Vec<D>::kSize, the address 16-byte aligned) or one element (kVec = 1).
template <DType D, int kVec>
__device__ void load_chunk(const void* base, int64_t i, float (&v)[kVec]) {
  const auto* at = static_cast<const typename IO<D>::T*>(base) + i;
  if constexpr (kVec == 1) {
    v[0] = IO<D>::load(at, 0);
  } else {
    static_assert(kVec == Vec<D>::kSize);
    const uint4 c = __ldg(reinterpret_cast<const uint4*>(at));
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[j] = Vec<D>::get(c, j);
  }
}
template <DType D, int kVec>
__device__ void store_chunk(void* base, int64_t i, const float (&v)[kVec]) {
  auto* at = static_cast<typename IO<D>::T*>(base) + i;
  if constexpr (kVec == 1) {
    *at = IO<D>::store(v[0]);
  } else {
    static_assert(kVec == Vec<D>::kSize);
    uint4 c;
#pragma unroll
    for (int j = 0; j < kVec; ++j) Vec<D>::put(c, j, IO<D>::store(v[j]));
    *reinterpret_cast<uint4*>(at) = c;
  }
}
// kVec floats from element i: 16-byte loads (kVec a multiple of 4, the address 16-byte aligned)
// or one float.
template <int kVec>
__device__ void load_floats(const float* base, int64_t i, float (&v)[kVec]) {
  if constexpr (kVec == 1) {
    v[0] = __ldg(base + i);
  } else {
    static_assert(kVec % 4 == 0);
#pragma unroll
    for (int j = 0; j < kVec; j += 4) {
      const float4 f = __ldg(reinterpret_cast<const float4*>(base + i + j));
      v[j] = f.x, v[j + 1] = f.y, v[j + 2] = f.z, v[j + 3] = f.w;
    }
  }
}

// Starts fetching [p, p + bytes) from HBM into L2 without holding a register or shared memory
// (Hopper's bulk prefetch; nothing before sm_90). p and bytes multiples of 16, bytes > 0, and the
// range inside one allocation. A hint: the loads that follow read the same values either way.
__device__ inline void prefetch_l2(const void* p, uint32_t bytes) {
#if defined(DLLM_CUDA_EMULATOR)
  cuemu::prefetch_l2(p, bytes);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// A row seen as 16-byte chunks starting at the aligned address at or below its first element, so
// rows of any alignment (V = 50258 bf16 rows start at 4-byte boundaries) take the vector path.
// Only chunks wholly inside a requested range (within the row) are loaded whole: the elements of
// chunks straddling its ends are read one by one, since an aligned 16-byte load past a tensor's
// end, harmless on the hardware, is an error to compute-sanitizer's memcheck and to ASan in the
// CPU emulator.
template <DType D>
struct RowView {
  static constexpr int kVec = Vec<D>::kSize;
  static constexpr int kElemBytes = D == DType::kFloat32 ? 4 : 2;
  const uint4* base;
  int64_t head;  // elements between the aligned base and the row's first element
  __device__ explicit RowView(const void* row) {
    const uintptr_t addr = reinterpret_cast<uintptr_t>(row);
    base = reinterpret_cast<const uint4*>(addr & ~uintptr_t(15));
    head = int64_t(addr & 15) / kElemBytes;
  }
  __device__ int64_t index(int64_t chunk, int j) const { return chunk * kVec - head + j; }

  // [lo, hi) as the chunks [begin, end) wholly inside it (so inside the row too), and the elements
  // they miss: [lo, inner_lo) and [inner_hi, hi), parts of straddling chunks, fewer than kVec on
  // each side. Loops then take every chunk whole, without per-element bounds checks: a range
  // whose ends straddle chunks (every group of a row that starts off a 16-byte boundary, as
  // V = 50258 bf16 rows do) would otherwise put one lane of a warp on a checked path in each
  // batch, and the whole warp through both paths (the H200's counters: 22 of 32 threads active).
  struct Split {
    int64_t begin, end, inner_lo, inner_hi;
  };
  __device__ Split split(int64_t lo, int64_t hi) const {
    const int64_t begin = (lo + head + kVec - 1) / kVec, end = (hi + head) / kVec;
    if (begin >= end) return {0, 0, hi, hi};
    return {begin, end, index(begin, 0), index(end, 0)};
  }
  // Asks L2 for the whole 16-byte chunks of elements [lo, hi) ahead of the loads (prefetch_l2).
  __device__ void prefetch(int64_t lo, int64_t hi) const {
    const Split s = split(lo, hi);
    if (s.begin < s.end) prefetch_l2(base + s.begin, uint32_t(s.end - s.begin) * 16u);
  }
  // One element by a load of its own width: picking it out of a 16-byte chunk at a run-time
  // index would put the chunk on the stack.
  __device__ float at(int64_t i) const {
    const char* element = reinterpret_cast<const char*>(base) + (i + head) * kElemBytes;
    if constexpr (D == DType::kFloat32) return __ldg(reinterpret_cast<const float*>(element));
    const unsigned short bits = __ldg(reinterpret_cast<const unsigned short*>(element));
    if constexpr (D == DType::kBFloat16) return __uint_as_float(uint32_t(bits) << 16);
    return __half2float(__ushort_as_half(bits));
  }
};

// DLLM_L2_PREFETCH (off by default until measured against no prefetch: the kernel benchmarks time
// both). In pass 1, where each warp reduces groups w, w + kWarps, ..., a warp asks L2 for the
// group it reads in the next round (prefetch_next_group), so that HBM streams even while warps
// reduce a group or the block reduces and draws; before those, it asks for its first group of a
// later row (later_row). A round is 32 KB of bf16 a block (8 warps of 2048-element groups), about
// 2 DRAM latencies of work; the next round and a later row's first hold 64 KB of L2 a block:
// 17 MB at 264 resident blocks (2 an SM), 25 MB at 396 (3 an SM), of the H100's 50 MB.
// params.l2_prefetch_blocks: 0 off, else the blocks resident at once.
template <DType D>
__device__ void prefetch_group(const RowView<D>& row, int64_t g, int64_t groups, int64_t vocab) {
  if ((threadIdx.x & 31) != 0 || g >= groups) return;
  const int64_t lo = g * kCategoricalGroup;
  row.prefetch(lo, lo + kCategoricalGroup < vocab ? lo + kCategoricalGroup : vocab);
}

// At the start of this warp's group g of pass 1: its group of the next round.
template <DType D>
__device__ void prefetch_next_group(const RowView<D>& row, int64_t g, int64_t groups, int64_t vocab) {
  prefetch_group(row, g + kWarps, groups, vocab);
}

// This warp's first group of a row that a block reads later.
template <DType D>
__device__ void prefetch_first_group(const RowView<D>& row, int64_t groups, int64_t vocab) {
  prefetch_group(row, threadIdx.x / 32, groups, vocab);
}

// The row after `row` of a kernel with a row a block: this block's next one in a grid-stride
// loop, else (one block a row) about the one that starts when the resident blocks finish, blocks
// starting about in the order of their index. rows when there is none.
__device__ inline int64_t later_row(int64_t row, int64_t rows, int64_t resident_blocks) {
  const int64_t next = row + (int64_t(gridDim.x) < rows ? int64_t(gridDim.x) : resident_blocks);
  return next < rows ? next : rows;
}

// The indices of a batch of N values: runs of kRun consecutive elements, run r starting at
// first + r * kStep (a thread's kUnroll chunks, or one element).
template <int N, int kRun, int kStep>
struct BatchIndex {
  int64_t first;
  __device__ int64_t operator()(int e) const { return first + (e / kRun) * kStep + e % kRun; }
  // The position of index i in the batch, or -1: one 64-bit test, then constant divisions.
  __device__ int find(int64_t i) const {
    const int64_t d = i - first;
    if (d < 0 || d >= int64_t(N / kRun - 1) * kStep + kRun) return -1;
    const int run = int(d) / kStep, offset = int(d) % kStep;
    return offset < kRun ? run * kRun + offset : -1;
  }
};

// v[e] = -inf (e from BatchIndex::find; nothing for -1). Unrolled so that v stays in registers.
template <int N>
__device__ void drop(float (&v)[N], int e) {
  if (e < 0) return;
#pragma unroll
  for (int k = 0; k < N; ++k)
    if (k == e) v[k] = -kInf;
}

// The bits of a 16-byte chunk of -inf values.
template <DType D>
__device__ uint4 minus_inf_chunk() {
  const uint32_t w = D == DType::kFloat32 ? 0xff800000u : D == DType::kBFloat16 ? 0xff80ff80u : 0xfc00fc00u;
  return uint4{w, w, w, w};
}

// f(one, where, 1) on each element of [from, to) that thread tid of kLanes owns: a range's
// straddling ends, fewer than kVec elements on each side, so at most one a thread; kept rolled,
// which keeps these loops from costing the main loops registers.
template <int kLanes, DType D, typename F>
__device__ void reduce_one_by_one(const RowView<D>& view, int64_t from, int64_t to, int tid, F&& f) {
#pragma unroll 1
  for (int64_t i = from + tid; i < to; i += kLanes) {
    float one[1] = {view.at(i)};
    f(one, BatchIndex<1, 1, 1>{i}, 1);
  }
}

// The order in which for_batches gives a thread its elements: increasing index (for reductions
// that break ties by meeting the lower index first), or any (sums, and argmaxes that compare
// indices), which lets the straddling elements of both ends of the range come in one call.
enum class Order { kIncreasing, kAny };

// Calls f(v, where, chunks) for the elements of [lo, hi) that thread `tid` of kLanes owns (a warp:
// tid = lane, kLanes = 32; a block: threadIdx.x, kThreads): v a batch of values (float[N]), where
// its BatchIndex. A batch is the kUnroll 16-byte chunks a thread loads at once, of which the first
// `chunks` are the row's; the rest, past the range's last whole chunk, hold -inf. The elements of
// the range's straddling end chunks come one a batch (chunks = 1): in Order::kIncreasing before
// and after the whole chunks, so that a thread meets its elements in increasing index order; in
// Order::kAny both ends first, in one call of f (a thread holding one element of either end), where
// two calls and their loops took about 140 SASS instructions a group of the warp-per-group passes
// (a row that starts off a 16-byte boundary splits every group so). The next batch's loads
// are issued before f runs on this one. f sees a whole batch so that it can reduce it without a
// branch an element: per-element online updates left these loops issue-bound at 35 to 120
// instructions an element (SASS), 3 to 8 times the HBM time, on the H200.
template <int kLanes, Order kOrder = Order::kIncreasing, DType D, typename F>
__device__ void for_batches(const RowView<D>& view, int64_t lo, int64_t hi, int tid, F&& f) {
  constexpr int kVec = Vec<D>::kSize, N = kUnroll * kVec;
  constexpr int64_t kStep = int64_t(kLanes) * kUnroll;  // chunks a loop iteration advances
  const auto split = view.split(lo, hi);
  if constexpr (kOrder == Order::kAny) {
    static_assert(2 * kVec <= kLanes, "the straddling elements of both ends, one a thread");
    const int64_t head = split.inner_lo - lo, ends = head + (hi - split.inner_hi);
    if (tid < ends) {
      const int64_t i = tid < head ? lo + tid : split.inner_hi + (tid - head);
      float one[1] = {view.at(i)};
      f(one, BatchIndex<1, 1, 1>{i}, 1);
    }
  } else {
    reduce_one_by_one<kLanes>(view, lo, split.inner_lo, tid, f);
  }
  const int64_t c_end = split.end;
  auto load = [&](uint4 (&raw)[kUnroll], int64_t c0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      raw[u] = c0 + int64_t(kLanes) * u < c_end ? __ldg(view.base + c0 + int64_t(kLanes) * u) : minus_inf_chunk<D>();
  };
  int64_t c0 = split.begin + tid;
  uint4 raw[kUnroll];
  if (c0 < c_end) load(raw, c0);
  for (; c0 < c_end; c0 += kStep) {
    uint4 next[kUnroll];
    if (c0 + kStep < c_end) load(next, c0 + kStep);
    float v[N];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[u * kVec + j] = Vec<D>::get(raw[u], j);
    const int64_t left = (c_end - c0 + kLanes - 1) / kLanes;
    f(v, BatchIndex<N, kVec, kLanes * kVec>{view.index(c0, 0)}, left < kUnroll ? int(left) : kUnroll);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) raw[u] = next[u];
  }
  if constexpr (kOrder == Order::kIncreasing) reduce_one_by_one<kLanes>(view, split.inner_hi, hi, tid, f);
}

// Whether any value is NaN or +inf (-inf, the batches' padding, is not).
template <int N>
__device__ bool any_not_below_inf(const float (&v)[N]) {
  bool bad = false;
#pragma unroll
  for (int e = 0; e < N; ++e) bad |= !(v[e] < kInf);
  return bad;
}

// e^(d * scale) as ex2.approx.ftz(d * scale_log2), scale_log2 = scale * log2(e) taken once by
// the caller: one FMUL and one MUFU.EX2. __expf, without -ftz, wraps that instruction in a
// rescaling for results below 2^-126 (three more instructions an exponential), which the
// streaming loops, issue-bound in SASS, would pay for every element. Taken where such a result
// is negligible: in sums with a term of 1 (the max they are relative to), 10^30 below their
// float32 rounding, and in the losses' gradients (a zero for a gradient below 1e-38); a value
// read on its own (a confidence, a probability) keeps __expf. The emulator keeps __expf's libm
// exp of d * scale, so that emulated results stay exact (but for add_batch_fma's sums, whose
// exp2f of an FFMA differs from it by ulps).
__device__ __forceinline__ float exp_ftz(float d, float scale = 1.0f, float scale_log2 = kLog2e) {
#if defined(DLLM_CUDA_EMULATOR)
  // libm's exp of d * scale, but the NaN that the hardware's d * scale_log2 makes (0 times an
  // infinite scale_log2) shows through
  const float y = d * scale_log2;
  return y != y ? y : __expf(d * scale);
#else
  (void)scale;
  return exp2_ftz(d * scale_log2);
#endif
}

// exp_ftz's scale_log2 for a scale: scale * log2(e), capped at float's largest value as
// inverse_temperature caps the scale, since an infinite one makes 0 * inf = NaN at the max.
__device__ __forceinline__ float log2e_times(float scale) { return fminf(scale * kLog2e, kMaxFloat); }

// The max of a batch (fmaxf: NaN ignored, -inf when all are -inf or NaN).
template <int N>
__device__ float batch_max(const float (&v)[N]) {
  float bm = -kInf;
#pragma unroll
  for (int e = 0; e < N; ++e) bm = fmaxf(bm, v[e]);
  return bm;
}

struct MaxSum {
  float m, s;
};

// s is a sum of exp((v - m) * scale) over values v of max m; scale is 1 but for the tempered sums
// of sample_categorical, which keep the raw max.
// Without a branch (warp_max_sum runs it in five dependent rounds a group, where branches cost
// half its instructions in SASS and kept each round's max behind the previous round's sum): an
// empty side (max -inf, sum 0) adds 0 * exp(-inf) = 0, and with both sides empty a stand-in max
// of 0 keeps -inf - -inf (NaN) out.
__device__ inline MaxSum merge(MaxSum a, MaxSum b, float scale = 1.0f) {
  const float m = fmaxf(a.m, b.m), at = m == -kInf ? 0.0f : m, scale_log2 = log2e_times(scale);
  return {m, a.s * exp_ftz(a.m - at, scale, scale_log2) + b.s * exp_ftz(b.m - at, scale, scale_log2)};
}

// A group's tempered log-mass relative to the row's maximum, from its raw maximum and its sum of
// exp((v - group_max) * scale): a pass that reduces groups before the row's maximum is known.
__device__ inline float tempered_log_mass(float group_max, float sum, float row_max, float scale) {
  return group_max == -kInf ? -kInf : (group_max - row_max) * scale + __logf(sum);
}

// Adds a batch of max bm to a running (max m, sum of exp((v - m) * scale)); -inf values add
// nothing. At most one rescale a batch, then independent exponentials into four partial sums, so
// that no element waits on another. A NaN or +inf makes the sum NaN; callers test them apart.
template <int N>
__device__ void add_batch(MaxSum& acc, const float (&v)[N], float scale, float bm) {
  if (bm == -kInf) return;
  const float scale_log2 = log2e_times(scale);
  if (bm > acc.m) {
    acc.s = acc.m == -kInf ? 0.0f : acc.s * exp_ftz(acc.m - bm, scale, scale_log2);
    acc.m = bm;
  }
  float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int e = 0; e < N; ++e) part[e % 4] += exp_ftz(v[e] - acc.m, scale, scale_log2);
  acc.s += (part[0] + part[1]) + (part[2] + part[3]);
}
template <int N>
__device__ void add_batch(MaxSum& acc, const float (&v)[N], float scale = 1.0f) {
  add_batch(acc, v, scale, batch_max(v));
}

// The exponential exp((v - m) * scale) of a batch's values v below its lane's max m, in base 2 as
// one FFMA, 2^(v * a + b), and a factor corr for the batch's sum: a = scale_log2 and
// b = -ms, with ms = m * scale_log2 rounded to float, make 2^(v * a + b) off by 2^(ms - m *
// scale_log2), whose exponent (the product's rounding error) an FMA gives exactly, and corr
// undoes. Past |ms| = 2^31 that error could leave float32's range of exponents; there every value
// below m lies more than 64 below it in the exponent (m's neighbours are >= |m| * 2^-25 away), so
// the sum is the count of values at m within 2^-52, and a power of two a (exact products) of the
// order of 2^31 / m makes v * a + b exactly 0 at m and below -128 elsewhere. NaN and +inf values
// still make the sum NaN.
struct ExpArgs {
  float a, b, corr;
};
__device__ __forceinline__ ExpArgs exp_args(float m, float scale_log2) {
  const float ms = m * scale_log2;
  if (fabsf(ms) < 0x1p31f) return {scale_log2, -ms, exp2_ftz(-fmaf(m, scale_log2, -ms))};
  const int biased = 285 - int((__float_as_uint(m) >> 23) & 0xffu);  // 2^(31 - m's exponent)
  const float a = __uint_as_float(uint32_t(biased < 254 ? biased : 254) << 23);
  return {a, -m * a, 1.0f};
}

// The sum of exp((v - m) * scale) over a batch, by exp_args's FFMA an element in place of an FADD
// and an FMUL (these loops are issue-bound), its arguments taken again each batch rather than
// kept, which would cost the loops registers.
template <int N>
__device__ float batch_sum_exp(const float (&v)[N], float m, float scale_log2) {
  const ExpArgs x = exp_args(m, scale_log2);
  float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int e = 0; e < N; ++e) part[e % 4] += exp2_ftz(fmaf(v[e], x.a, x.b));
  return ((part[0] + part[1]) + (part[2] + part[3])) * x.corr;
}

// Whether any value is NaN.
template <int N>
__device__ bool any_nan(const float (&v)[N]) {
  bool nan = false;
#pragma unroll
  for (int e = 0; e < N; ++e) nan |= v[e] != v[e];
  return nan;
}

// add_batch for the streaming passes over a row, by batch_sum_exp. A NaN or +inf among the values
// makes the sum NaN, which is how these passes find them (acc.s != acc.s); a batch whose max is
// -inf (fmaxf passes NaN over) adds nothing, but a NaN in it makes the whole of acc NaN, which no
// later batch can rescale away (bm > NaN is false), so that the callers test one sum at the end
// rather than a flag every batch (kept live through their loops, it spilled at 80 registers).
template <int N>
__device__ void add_batch_fma(MaxSum& acc, const float (&v)[N], float scale, float scale_log2, float bm) {
  if (!(bm > -kInf)) {
    if (any_nan(v)) acc = MaxSum{kNaN, kNaN};
    return;
  }
  if (bm > acc.m) {
    acc.s = acc.m == -kInf ? 0.0f : acc.s * exp_ftz(acc.m - bm, scale, scale_log2);
    acc.m = bm;
  }
  acc.s += batch_sum_exp(v, acc.m, scale_log2);
}

struct ArgMax {
  float v;
  int64_t i;  // INT64_MAX when empty
};

// Larger value wins; equal values go to the lower index.
__device__ inline ArgMax better(ArgMax a, ArgMax b) {
  return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
}

// A batch's largest value at its lowest index (indices increase with e), or {-inf, INT64_MAX}.
template <int N, int kRun, int kStep>
__device__ ArgMax batch_argmax(const float (&v)[N], const BatchIndex<N, kRun, kStep>& where) {
  float top = -kInf;
  int at = 0;
#pragma unroll
  for (int e = 0; e < N; ++e) {
    const bool gt = v[e] > top;
    at = gt ? e : at;
    top = gt ? v[e] : top;
  }
  return top == -kInf ? ArgMax{-kInf, INT64_MAX} : ArgMax{top, where(at)};
}

__device__ inline ArgMax warp_argmax(ArgMax a) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    ArgMax b{__shfl_xor_sync(0xffffffffu, a.v, o), __shfl_xor_sync(0xffffffffu, a.i, o)};
    a = better(a, b);
  }
  return a;
}

__device__ inline ArgMax block_argmax(ArgMax a, ArgMax* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  a = warp_argmax(a);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = a;
  __syncthreads();
  a = lane < kWarps ? scratch[lane] : ArgMax{-kInf, INT64_MAX};
  return warp_argmax(a);
}

__device__ inline MaxSum warp_max_sum(MaxSum a, float scale = 1.0f) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    a = merge(a, MaxSum{__shfl_xor_sync(0xffffffffu, a.m, o), __shfl_xor_sync(0xffffffffu, a.s, o)}, scale);
  return a;
}

__device__ inline MaxSum block_max_sum(MaxSum a, MaxSum* scratch, float scale = 1.0f) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  a = warp_max_sum(a, scale);
  __syncthreads();
  if (lane == 0) scratch[warp] = a;
  __syncthreads();
  return warp_max_sum(lane < kWarps ? scratch[lane] : MaxSum{-kInf, 0.0f}, scale);
}

template <typename T>
__device__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ inline double block_sum(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_sum(lane < kWarps ? scratch[lane] : 0.0);
}

// Lowers the device error word to `encoded` ((row << bits) | status) if that is smaller.
__device__ inline void report_error(int64_t* first_error, int64_t encoded) {
  atomicMin(reinterpret_cast<unsigned long long*>(first_error), static_cast<unsigned long long>(encoded));
}

// The token drawn inside the group starting at lo, by the lower levels of the hierarchical
// Gumbel-max of dllm/sample_categorical.h: a subgroup by its log-mass, then an element of it.
// weight(index, value) maps a logit to its log-weight (-inf: never drawn). INT64_MAX when the
// group holds no positive weight. The whole block calls it; the group is re-read, usually from L2.
template <DType D, typename Weight>
__device__ int64_t draw_in_group(const RowView<D>& view, int64_t vocab, int64_t lo, Weight weight, uint64_t seed,
                                 uint64_t offset, uint64_t row, ArgMax* argmax_scratch, float* subgroup_lse) {
  static_assert(kWarps == kSubgroupsPerGroup && kCategoricalSubgroup == 32 * 8);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // Subgroup log-masses: warp w owns subgroup w, 8 consecutive elements a lane.
  const int64_t first = lo + threadIdx.x * 8;
  float y[8];
  float m = -kInf;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    y[j] = first + j < vocab ? weight(first + j, view.at(first + j)) : -kInf;
    m = fmaxf(m, y[j]);
  }
  float s = 0.0f;
  if (m != -kInf) {
#pragma unroll
    for (int j = 0; j < 8; ++j) s += exp_ftz(y[j] - m);
  }
  const MaxSum sub = warp_max_sum(MaxSum{m, s});
  if (lane == 0) subgroup_lse[warp] = sub.m == -kInf ? -kInf : sub.m + __logf(sub.s);
  __syncthreads();
  ArgMax pick{-kInf, INT64_MAX};
  if (threadIdx.x < kSubgroupsPerGroup && subgroup_lse[threadIdx.x] != -kInf)
    pick = ArgMax{subgroup_lse[threadIdx.x] +
                      gumbel_at(seed, offset, row, lo / kCategoricalSubgroup + threadIdx.x, RngStream::kSubgroup),
                  int64_t(threadIdx.x)};
  const int64_t chosen = block_argmax(pick, argmax_scratch).i;  // the same in every thread
  if (chosen == INT64_MAX) return INT64_MAX;

  // The token: Gumbel-max inside the chosen subgroup, one element a thread.
  const int64_t idx = lo + chosen * kCategoricalSubgroup + threadIdx.x;
  ArgMax el{-kInf, INT64_MAX};
  const float yi = idx < vocab ? weight(idx, view.at(idx)) : -kInf;
  if (yi != -kInf) el = ArgMax{yi + gumbel_at(seed, offset, row, idx, RngStream::kElement), idx};
  return block_argmax(el, argmax_scratch).i;
}

// The row's lowest index holding its largest value, given every group's max (in shared memory,
// published by a barrier; at least one above -inf): the first group holding it, then that group's
// first element at it, the group re-read (usually from L2). The whole block calls it. Greedy rows
// so keep no argmax in their streaming pass, whose registers are tight.
template <DType D>
__device__ int64_t argmax_by_groups(const RowView<D>& view, int64_t vocab, const float* group_max,
                                    ArgMax* argmax_scratch) {
  static_assert(kThreads * 8 == kCategoricalGroup);
  const int64_t groups = (vocab + kCategoricalGroup - 1) / kCategoricalGroup;
  ArgMax pick{-kInf, INT64_MAX};
  for (int64_t g = threadIdx.x; g < groups; g += kThreads) pick = better(pick, ArgMax{group_max[g], g});
  const int64_t first = block_argmax(pick, argmax_scratch).i * kCategoricalGroup + threadIdx.x * 8;
  ArgMax top{-kInf, INT64_MAX};
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (first + j < vocab) top = better(top, ArgMax{view.at(first + j), first + j});
  return block_argmax(top, argmax_scratch).i;
}

// One exact draw from softmax(weight) (see draw_in_group), given the group log-masses (in shared
// memory, published by a barrier).
template <DType D, typename Weight>
__device__ int64_t draw_hierarchical(const RowView<D>& view, int64_t vocab, const float* group_lse, Weight weight,
                                     uint64_t seed, uint64_t offset, uint64_t row, ArgMax* argmax_scratch,
                                     float* subgroup_lse) {
  const int64_t groups = (vocab + kCategoricalGroup - 1) / kCategoricalGroup;
  ArgMax pick{-kInf, INT64_MAX};
  for (int64_t g = threadIdx.x; g < groups; g += kThreads)
    if (group_lse[g] != -kInf)
      pick = better(pick, ArgMax{group_lse[g] + gumbel_at(seed, offset, row, g, RngStream::kGroup), g});
  const int64_t lo = block_argmax(pick, argmax_scratch).i * kCategoricalGroup;
  return draw_in_group(view, vocab, lo, weight, seed, offset, row, argmax_scratch, subgroup_lse);
}

}  // namespace dllm::cuda
