// The streaming kernels' first pass over a row, read into registers (for_batches, cuda_rows.cuh)
// or, with DLLM_ASYNC_COPIES, through shared memory by cp.async. Internal to csrc/kernels.
//
// Into registers a thread has one batch loading while it reduces the last: 2 KB a warp in flight,
// and none while a warp reduces a group's sums with shuffles and starts the next group. Through a
// ring each thread copies its own chunks into slots of its own and reads back only those, so no
// barrier is needed: kAsyncStages - 1 batches ahead (and across the ends of groups), 6 KB a warp,
// in no register. The H200's counters of predict_masked (8 x 1024 rows of 126464) gave 42% of the
// DRAM bandwidth at 25% occupancy (16 warps an SM, by registers): with at most 32 KB an SM in
// flight, about what the copy bandwidth takes at HBM's latency and no more, every pause of a
// warp's loads shows in the bandwidth.
//
// Two walks: for_warp_groups, the warp-per-group passes (sample_categorical's and sedd_step's
// pass 1, predict_masked's fused pass A: warp w reduces the groups w, w + kWarps, ... of
// kCategoricalGroup elements, alone), and for_range_batches, one range (predict_masked's unfused
// pass A, by the whole block: greedy, filtered; the losses' forward, a slice of the row a warp).
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "cuda_rows.cuh"

namespace dllm::cuda {

constexpr int kAsyncStages = 4;
// Shared memory that a block's rings take: kAsyncStages batches of kUnroll 16-byte chunks a thread.
constexpr int kAsyncRingChunks = kAsyncStages * kUnroll * kThreads;
constexpr size_t kAsyncRingBytes = size_t(kAsyncRingChunks) * 16;

// 16 bytes from global to shared memory, asynchronously (cp.async.cg: through L2 only, as a
// streamed row is read once); before sm_80, a plain copy.
__device__ __forceinline__ void async_copy_16(uint4* dst, const uint4* src) {
#if defined(DLLM_CUDA_EMULATOR)
  cuemu::cp_async(dst, src, 16, true);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(uint32_t(__cvta_generic_to_shared(dst))),
               "l"(src)
               : "memory");
#else
  *dst = __ldg(src);
#endif
}

__device__ __forceinline__ void async_commit() {
#if defined(DLLM_CUDA_EMULATOR)
  cuemu::cp_async_commit();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// This thread's copies of all its committed groups but the newest N have landed and are visible
// to it (not to other threads: that would take a barrier).
template <int N>
__device__ __forceinline__ void async_wait_own() {
#if defined(DLLM_CUDA_EMULATOR)
  cuemu::cp_async_wait_own(N);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// A batch read back from this thread's slots of stage `stage` (slot u at slots[(stage * kUnroll +
// u) * kThreads]): its chunks at c0 + kLanes * u below c_end, -inf past them; f(v, where, chunks)
// as for_batches calls it. head: the row's RowView::head, as 32 bits that the walks keep live.
template <int kLanes, DType D, typename F>
__device__ __forceinline__ void reduce_slots(const uint4* slots, int stage, int c0, int c_end, int head, F&& f) {
  constexpr int kVec = Vec<D>::kSize, N = kUnroll * kVec;
  float v[N];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const uint4 raw = c0 + kLanes * u < c_end ? slots[(stage * kUnroll + u) * kThreads] : minus_inf_chunk<D>();
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[u * kVec + j] = Vec<D>::get(raw, j);
  }
  const int left = (c_end - c0 + kLanes - 1) / kLanes;
  f(v, BatchIndex<N, kVec, kLanes * kVec>{int64_t(c0) * kVec - head}, left < kUnroll ? left : kUnroll);
}

// Copies the chunks c0 + kLanes * u below c_end into this thread's slots of stage `into`, as one
// commit group (empty when c0 >= c_end, so that every wait counts the same groups).
template <int kLanes, DType D>
__device__ __forceinline__ void copy_slots(const RowView<D>& view, uint4* slots, int into, int c0, int c_end) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u)
    if (c0 + kLanes * u < c_end) async_copy_16(slots + (into * kUnroll + u) * kThreads, view.base + c0 + kLanes * u);
  async_commit();
}

// The elements of [lo, hi) that the ring's walks read apart, outside its whole chunks (fewer
// than kVec at each end): in Order::kIncreasing the head one by one before the chunks (start) and
// the tail after them (finish), as for_batches; in Order::kAny both ends at once, one element a
// thread, loaded by start and reduced by finish, so that the chunks' batches hide the load. The
// offset from lo is 32-bit: it lives through the walk.
template <int kLanes, Order kOrder, DType D>
struct RangeEnds {
  float value = -kInf;
  int offset = -1;  // Order::kAny: this thread's element, or -1

  template <typename F>
  __device__ void start(const RowView<D>& view, int64_t lo, int64_t hi, int tid, F&& f) {
    const auto split = view.split(lo, hi);
    if constexpr (kOrder == Order::kAny) {
      static_assert(2 * Vec<D>::kSize <= kLanes, "the straddling elements of both ends, one a thread");
      const int head = int(split.inner_lo - lo), ends = head + int(hi - split.inner_hi);
      if (tid < ends) {
        offset = tid < head ? tid : int(split.inner_hi - lo) + (tid - head);
        value = view.at(lo + offset);
      }
    } else {
      reduce_one_by_one<kLanes>(view, lo, split.inner_lo, tid, f);
    }
  }
  template <typename F>
  __device__ void finish(const RowView<D>& view, int64_t lo, int64_t hi, int tid, F&& f) const {
    if constexpr (kOrder == Order::kAny) {
      if (offset >= 0) {
        float one[1] = {value};
        f(one, BatchIndex<1, 1, 1>{lo + offset}, 1);
      }
    } else {
      reduce_one_by_one<kLanes>(view, view.split(lo, hi).inner_hi, hi, tid, f);
    }
  }
};

// for_batches<kLanes, kOrder>(view, lo, hi, tid, f) through the ring: the same batches, in the same
// order, each thread copying its own kAsyncStages - 1 batches ahead into the slot it read a batch
// earlier, whose values that batch's reduction has used, so the copy cannot land before the read.
template <int kLanes, Order kOrder = Order::kIncreasing, DType D, typename F>
__device__ void for_range_batches(const RowView<D>& view, int64_t lo, int64_t hi, int tid, uint4* ring, F&& f) {
  constexpr int kStep = kLanes * kUnroll;
  const auto split = view.split(lo, hi);
  RangeEnds<kLanes, kOrder, D> ends;
  ends.start(view, lo, hi, tid, f);
  uint4* const slots = ring + threadIdx.x;
  const int c_end = int(split.end);
  int pc = int(split.begin) + tid;
#pragma unroll 1
  for (int s = 0; s < kAsyncStages - 1; ++s, pc += kStep) copy_slots<kLanes>(view, slots, s, pc, c_end);
  int stage = 0;
  for (int c0 = int(split.begin) + tid; c0 < c_end; c0 += kStep, pc += kStep) {
    copy_slots<kLanes>(view, slots, stage == 0 ? kAsyncStages - 1 : stage - 1, pc, c_end);
    async_wait_own<kAsyncStages - 1>();  // this batch's copies
    reduce_slots<kLanes, D>(slots, stage, c0, c_end, int(view.head), f);
    stage = stage + 1 == kAsyncStages ? 0 : stage + 1;
  }
  ends.finish(view, lo, hi, tid, f);
}

// for_warp_groups through the ring: the batches of each group in for_batches' order (kOrder), its
// straddling ends read apart (RangeEnds). The producer side issues the copies of the batch
// kAsyncStages - 1 ahead of the one reduced, walking the same groups and chunks as the reducing
// side; it copies into the slot that the reducing side read a batch earlier, whose values that
// batch's reduction has used, so the copy cannot land before the read.
template <Order kOrder = Order::kIncreasing, DType D, typename Begin, typename F, typename End>
__device__ void for_warp_groups_async(const RowView<D>& view, int64_t vocab, uint4* ring, Begin&& begin, F&& f,
                                      End&& end) {
  constexpr int kVec = Vec<D>::kSize;
  constexpr int kStep = 32 * kUnroll;                    // chunks a warp's batch advances
  constexpr int kGroupChunks = kCategoricalGroup / kVec;  // chunks a group spans
  // Group g's whole chunks are [g * kGroupChunks + skip, min((g + 1) * kGroupChunks, last)): the
  // chunk at a group's start straddles it unless the row is 16-byte aligned. So the producer's
  // place is one number, pc, and its group pc / kGroupChunks: the state of both sides lives
  // through the pass, and with more of it (64-bit, or group and end apart) the kernels spilled at
  // 80 registers. 32 bits suffice, as the bindings bound a vocabulary to 10.24 M entries.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int groups = int((vocab + kCategoricalGroup - 1) / kCategoricalGroup);
  const int head = int(view.head), skip = head > 0 ? 1 : 0, last = int((vocab + head) / kVec);
  auto chunk_end = [&](int g) { return (g + 1) * kGroupChunks < last ? (g + 1) * kGroupChunks : last; };
  uint4* const slots = ring + threadIdx.x;  // slot u of stage s: slots[(s * kUnroll + u) * kThreads]

  // The producer's next batch starts at this lane's chunk pc; pc >= last once it has copied all.
  // It copies into stage (the reducing side's) - 1, the slot read a batch earlier.
  int pc = warp * kGroupChunks + skip + lane, stage = kAsyncStages - 1;
  // A group's first chunk of this lane, skip + lane past a multiple of kStep, is the lane's place
  // in every batch: pc & (kStep - 1). Recovered so, it takes no register through the loops.
  static_assert(kGroupChunks % kStep == 0 && 32 < kStep);
  auto produce = [&] {
    if (pc >= last) return async_commit();  // an empty group: every wait counts the same groups
    const int g = pc / kGroupChunks, e = chunk_end(g);
    copy_slots<32>(view, slots, stage == 0 ? kAsyncStages - 1 : stage - 1, pc, e);
    pc += kStep;
    if (pc >= e) pc = (g + kWarps) * kGroupChunks + (pc & (kStep - 1));
  };
#pragma unroll 1
  for (int s = 0; s < kAsyncStages - 1; ++s) {
    stage = s + 1;  // the prologue fills stages 0 .. kAsyncStages - 2
    produce();
  }
  stage = 0;

  for (int first = warp * kGroupChunks + skip + lane; first / kGroupChunks < groups; first += kWarps * kGroupChunks) {
    const int g = first / kGroupChunks;
    begin(int64_t(g));
    const int64_t lo = int64_t(g) * kCategoricalGroup;
    const int64_t hi = lo + kCategoricalGroup < vocab ? lo + kCategoricalGroup : vocab;
    RangeEnds<32, kOrder, D> ends;
    ends.start(view, lo, hi, lane, f);
    const int c_end = chunk_end(g);
    for (int c0 = first; c0 < c_end; c0 += kStep) {
      produce();
      async_wait_own<kAsyncStages - 1>();  // this batch's copies
      reduce_slots<32, D>(slots, stage, c0, c_end, head, f);
      stage = stage + 1 == kAsyncStages ? 0 : stage + 1;
    }
    ends.finish(view, lo, hi, lane, f);
    end(int64_t(g));
  }
}

// For each of this warp's groups g: begin(g), then f(v, where, chunks) over its elements as
// for_batches<32, kOrder> gives them, then end(g) (where the warp may reduce with shuffles: all
// its lanes are there); for_warp_groups_async does the same through the block's ring of
// kAsyncRingChunks slots of shared memory (16-byte aligned). Kernels that hold both walks at 80
// registers take each in a kernel of its own: beside each other, ptxas spilled.
template <Order kOrder = Order::kIncreasing, DType D, typename Begin, typename F, typename End>
__device__ void for_warp_groups(const RowView<D>& view, int64_t vocab, Begin&& begin, F&& f, End&& end) {
  const int64_t groups = (vocab + kCategoricalGroup - 1) / kCategoricalGroup;
  const int lane = threadIdx.x & 31;
  for (int64_t g = threadIdx.x >> 5; g < groups; g += kWarps) {
    begin(g);
    const int64_t lo = g * kCategoricalGroup;
    for_batches<32, kOrder>(view, lo, lo + kCategoricalGroup < vocab ? lo + kCategoricalGroup : vocab, lane, f);
    end(g);
  }
}

// Lets `kernel` launch with `bytes` of dynamic shared memory on the current device (more than
// 48 KB needs the opt-in): asked once a device for the largest amount yet.
template <auto Kernel>
void allow_dynamic_smem(size_t bytes) {
  static std::atomic<size_t> granted[64];
  if (bytes <= 48 * 1024) return;
  int device = 0;
  cudaGetDevice(&device);
  std::atomic<size_t>& mine = granted[device & 63];
  if (mine.load(std::memory_order_relaxed) >= bytes) return;
  // A failed call is left to fail the launch, and its check; it is asked again next time.
  if (cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)) == cudaSuccess)
    mine.store(bytes, std::memory_order_relaxed);
}

}  // namespace dllm::cuda
