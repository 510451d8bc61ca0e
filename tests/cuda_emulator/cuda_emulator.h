// A CPU emulator of the slice of CUDA that dllm's kernels use, so that the CUDA kernels run (and
// are compared with the CPU ops) on machines without a GPU.
//
// Every CUDA thread of a block is a fiber; the fibers of a block run on the calling thread,
// switching only at block barriers and warp-synchronous operations (shuffles, ballots, mma,
// ldmatrix; wgmma waits synchronise a warpgroup), and blocks run one after another. The order in which fibers run between two
// synchronisation points is a setting (forward, reverse, one warp lagging behind the others),
// so a kernel whose result depends on it has a race. Shared memory is poisoned with 0xff bytes
// (NaN as float, bf16 and fp16) at the start of every block, automatic variables with 0xfe bytes
// (build.py's -ftrivial-auto-var-init=pattern); cp.async copies land as late as a
// correct kernel allows (at the first block barrier after the issuing thread's wait), or at
// issue. Reported as errors: a barrier that can never complete (deadlock), warp-synchronous
// operations after some lanes of the warp exited or with a partial mask, misaligned vector
// loads, cp.async and ldmatrix addresses, cp.async or ldmatrix outside the block's shared
// memory, and launches with more shared memory than the kernel may use (dynamic beyond its opt-in,
// or static plus dynamic beyond 48 KB without one).
//
// Kernel sources pass through translate.py first: it rewrites `kernel<<<grid, block, smem,
// stream>>>(args)` into cuemu::launch(...)(args) and registers __shared__ variables for
// poisoning. Results are exact in the emulator's own arithmetic: __expf and friends are the
// accurate libm functions, and mma accumulates exact products in double.
#pragma once
#define DLLM_CUDA_EMULATOR 1

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static  // translate.py rewrites declarations; this covers any it missed

#include "cuda_host_api.h"

// CUDA declares these in the global namespace.
using std::isfinite;
using std::isinf;
using std::isnan;

namespace cuemu {

// ---- scheduler (cuda_emulator.cpp) ----
struct ThreadIndex {
  dim3 thread_idx, block_idx;
};
const ThreadIndex& self();
const dim3& block_dim();
const dim3& grid_dim();
int lane_id();
void run_grid(const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem, void (*body)(void*), void* arg);
void* dynamic_shared();
void shared_region(void* p, size_t bytes);
int sync_block(int predicate, bool reduce_or);
// bar.sync of the calling thread's warpgroup (128 threads) alone.
void sync_warpgroup();
// A plain store of `bytes` at p into dynamic shared memory: wgmma's operand reads see it only
// after the storing thread's fence.proxy.async and then a barrier it passes (__syncthreads or
// its warpgroup's), which the other threads' wgmma needs before reading it.
void generic_shared_store(void* p, size_t bytes);
// Publishes `bytes` of this lane's data and copies all 32 lanes' data into `all` (lane-major).
void warp_exchange(const void* mine, void* all, size_t bytes, unsigned mask);
[[noreturn]] void fail(const char* what);
void cp_async(void* dst, const void* src, size_t bytes, bool valid);
void cp_async_wait_all();
// cp.async.commit_group, and cp.async.wait_group n for copies that only the issuing thread reads
// (a ring of its own): the copies of its committed groups but the newest n land now, as the
// hardware makes them visible to that thread, without a barrier.
void cp_async_commit();
void cp_async_wait_own(int newest_pending);
// cp.async.bulk.prefetch.L2: reads nothing, but checks what the hardware requires (16-byte
// alignment, a size a positive multiple of 16) and, under ASan, that the range is inside memory.
void prefetch_l2(const void* p, uint32_t bytes);

// cuemu::launch(kernel, grid, block, smem, stream)(args...) runs the grid to completion.
// launch_grid_stride is for kernels that stride over their work by gridDim.x: the grid may be
// cut to settings().grid_stride_blocks blocks, so that each block takes several rows.
size_t grid_stride_blocks();
template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  dim3 grid, block;
  size_t smem;
  template <typename... Args>
  void operator()(Args&&... args) const {
    struct Call {
      void (*kernel)(Params...);
      std::tuple<std::decay_t<Params>...> params;
    } call{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
    run_grid(reinterpret_cast<const void*>(kernel), grid, block, smem, [](void* c) {
      auto* call = static_cast<Call*>(c);
      std::apply(call->kernel, call->params);  // each thread gets its own copy, as on the GPU
    }, &call);
  }
};
template <typename... Params>
Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  return Launch<Params...>{kernel, grid, block, smem};
}
template <typename... Params>
Launch<Params...> launch_grid_stride(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem = 0,
                                     cudaStream_t = nullptr) {
  if (const size_t cap = grid_stride_blocks(); cap > 0 && grid.x > cap) grid.x = unsigned(cap);
  return Launch<Params...>{kernel, grid, block, smem};
}

template <typename T>
T shfl_xor(unsigned mask, T v, int lane_mask) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16);
  [[gnu::uninitialized]] T all[32];
  warp_exchange(&v, all, sizeof(T), mask);
  return all[lane_id() ^ lane_mask];
}
template <typename T>
T shfl_up(unsigned mask, T v, int delta) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16);
  [[gnu::uninitialized]] T all[32];
  warp_exchange(&v, all, sizeof(T), mask);
  return lane_id() >= delta ? all[lane_id() - delta] : v;
}
template <typename T>
T shfl_idx(unsigned mask, T v, int src) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16);
  [[gnu::uninitialized]] T all[32];
  warp_exchange(&v, all, sizeof(T), mask);
  return all[src & 31];
}

// ---- tensor-core and async-copy primitives of csrc/kernels/attention_mma.cuh ----
void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16);
void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans);

// ---- Hopper warpgroup primitives of csrc/kernels/wgmma.cuh ----
// wgmma runs when a wait_group retires its group, reading the A registers and the shared operands
// then (the latest a correct kernel allows), so a kernel that touches either before its wait gets
// a wrong result. Shared operands are read through the descriptor's address bits, 128-byte
// swizzle included, from the async proxy's view of shared memory, which cp.async writes reach
// only through a fence.proxy.async of the writing thread, or at once when copies land at issue
// (plain stores reach it only when the kernel reports them with generic_shared_store).
// m64nNk16 with d the thread's N / 2 accumulators and A either this thread's fragment `a` or,
// when a is null, the shared operand of `a_descriptor` (K-major, or MN-major with trans_a).
void wgmma(float* d, int n, const uint32_t* a, uint64_t a_descriptor, uint64_t b_descriptor, bool accumulate,
           bool trans_a, bool trans_b, bool bf16);
void wgmma_commit_group();
// fence.proxy.async.shared::cta: this thread's completed cp.async copies (landed, or waited for
// and landing at the next block barrier) become visible to wgmma's operand reads, and its plain
// operand stores (generic_shared_store) once it next passes a barrier.
void fence_proxy_async();
void wgmma_wait_group(int pending);
// The shared-window address of p, which must lie in the block's dynamic shared memory. The
// window starts 128 bytes short of a 1024-byte boundary, so kernels must align what the
// hardware's swizzle needs themselves.
uint32_t shared_window_address(const void* p);

}  // namespace cuemu

#define threadIdx (::cuemu::self().thread_idx)
#define blockIdx (::cuemu::self().block_idx)
#define blockDim (::cuemu::block_dim())
#define gridDim (::cuemu::grid_dim())

inline void __syncthreads() { cuemu::sync_block(0, false); }
inline int __syncthreads_or(int p) { return cuemu::sync_block(p, true); }
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int = 32) {
  return cuemu::shfl_xor(mask, v, lane_mask);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int = 32) {
  return cuemu::shfl_up(mask, v, int(delta));
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int = 32) {
  return cuemu::shfl_idx(mask, v, src_lane);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  [[gnu::uninitialized]] int all[32];
  const int mine = pred != 0;
  cuemu::warp_exchange(&mine, all, sizeof(int), mask);
  unsigned bits = 0;
  for (int i = 0; i < 32; ++i) bits |= unsigned(all[i]) << i;
  return bits;
}
[[noreturn]] inline void __trap() { cuemu::fail("__trap() executed"); }

// Fibers switch only at synchronisation points, so read-modify-writes are atomic as written.
template <typename T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
// float and sm_90's float2 atomicAdd (aligned to their size, as the hardware requires), counted
// in settings().
float atomicAdd(float* p, float v);
float2 atomicAdd(float2* p, float2 v);
inline float2 make_float2(float x, float y) { return {x, y}; }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  if (v < old) *p = v;
  return old;
}

template <typename T>
T __ldg(const T* p) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) cuemu::fail("misaligned address in __ldg");
  return *p;
}
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
// The GPU's rsqrtf is within 2 ulps of this.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline double __longlong_as_double(long long v) {
  double d;
  std::memcpy(&d, &v, 8);
  return d;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline size_t __cvta_generic_to_shared(const void* p) { return cuemu::shared_window_address(p); }

// ---- bfloat16 and float16: storage types with round-to-nearest-even conversions ----
struct __nv_bfloat16 {
  uint16_t x;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
struct __half {
  uint16_t x;
};
struct __half2 {
  __half x, y;
};
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float(unsigned(h.x) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const unsigned u = __float_as_uint(f);
  if (std::isnan(f)) return {uint16_t((u >> 16) | 0x40)};
  return {uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }
// Plain integer arithmetic rather than _Float16, which older compilers lack; checked against
// _Float16 on every float32 bit pattern.
inline float __half2float(__half h) {
  const unsigned sign = unsigned(h.x & 0x8000u) << 16, exp = (h.x >> 10) & 0x1fu, man = h.x & 0x3ffu;
  if (exp == 0x1f) return __uint_as_float(sign | 0x7f800000u | (man << 13));
  if (exp != 0) return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
  const float magnitude = float(man) * 5.9604644775390625e-8f;  // subnormal: man * 2^-24, exact
  return sign ? -magnitude : magnitude;
}
inline __half __float2half_rn(float f) {
  unsigned x = __float_as_uint(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return {uint16_t(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u))};  // NaN, inf
  if (x >= 0x477ff000u) return {uint16_t(sign | 0x7c00u)};  // rounds to 65536 or more: inf
  if (x < 0x38800000u) return {uint16_t(sign | uint16_t(std::nearbyint(__uint_as_float(x) * 16777216.0f)))};
  return {uint16_t(sign | ((x + 0xfffu + ((x >> 13) & 1u) - 0x38000000u) >> 13))};  // rebias, round to even
}
inline __half __ushort_as_half(unsigned short v) { return {v}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.x; }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half_rn(lo), __float2half_rn(hi)}; }
inline float2 __half22float2(__half2 v) { return {__half2float(v.x), __half2float(v.y)}; }

