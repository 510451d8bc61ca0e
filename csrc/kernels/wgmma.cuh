// Hopper warpgroup tensor-core building blocks (sm_90a): wgmma.mma_async m64n64k16 and m64n32k16
// with A in registers or shared memory and B in shared memory, its fences, and the shared-memory
// layout and descriptors the operands are read through.
//
// A warpgroup is 4 consecutive warps (128 threads). Its m64nNk16 product D[64][N] += A[64][16]
// B[16][N] spreads A and D over the warps as mma.sync.m16n8k16 does over one warp: warp w of the
// warpgroup holds rows 16w..16w+15 in exactly the m16n8k16 A and C fragment layouts (see
// attention_mma.cuh), D being N / 8 such 16x8 blocks, so d[4j + i] is block j's c[i]. The softmax
// and fragment helpers of the mma.sync kernels therefore apply unchanged.
//
// Shared operands live in "panels": a [rows][Dim] tile is Dim / 64 panels of [rows][64], each row
// 128 bytes whose 16-byte chunk c lives at chunk c ^ (row % 8) (the 128-byte swizzle, applied by
// the hardware to address bits 4-6 from bits 7-9, so panels must start 1024-byte aligned). Read
// through a descriptor, that one layout serves every operand of attention:
//   "K-major" (rows x Dim, Dim the contiguous k dimension): the A and B of S = Q K^T and of the
//     backward's dP = dO V^T, S^T = K Q^T, dP^T = V dO^T. Start = the 16-column step's first
//     chunk in the operand's first row; stride between 8-row groups (SBO) 1024 bytes.
//   "MN-major" (rows x Dim with the rows as k, Dim = N contiguous), selected by the instruction's
//     transpose bit: the B of O = P V, dQ = dS K, dV = P^T dO, dK = dS^T Q (and the A, Dim = M,
//     of the atomic backward's dQ^T = K^T dS^T). Start = the first row
//     of the 16-row step in the panel of the 64 output columns; SBO 1024 bytes between its two
//     8-row halves.
// (PTX ISA "Shared Memory Matrix Layout" and "Matrix Descriptor Format"; CUTLASS's canonical GMMA
// layouts SW128 K-major ((8,n),2):((8,SBO),1) and MN-major ((8,n),(8,k)):((1,LBO),(8,SBO)) in
// 16-byte units.)
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "attention_mma.cuh"

namespace dllm::wg {

// sm_90a: the "a" features, which wgmma needs, exist only in code built for exactly sm_90a.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DLLM_WGMMA_UNAVAILABLE 1
#endif

constexpr int kPanel = 64;            // columns per panel
constexpr int kPanelRowBytes = 128;   // one panel row: 64 16-bit values
constexpr int kSwizzleAtomBytes = 1024;

// Element offset of (row, 8-column chunk) in a [rows][Dim] tile stored as panels.
template <int Rows>
__device__ __forceinline__ int panel_offset(int row, int chunk) {
  return (chunk >> 3) * Rows * kPanel + row * kPanel + (((chunk & 7) ^ (row & 7)) << 3);
}

// Rows [0, Rows) of a [Rows][Dim] tile stored as panels (see attn::load_rows).
template <int Rows, int Dim, int Threads, typename T>
__device__ __forceinline__ void load_panels(T* tile, const T* src, int64_t row_stride, int valid_rows) {
  attn::load_rows<Rows, Dim, Threads, Threads / (Dim / 8) * kPanel>(
      tile, src, row_stride, valid_rows, [](int row, int chunk) { return panel_offset<Rows>(row, chunk); });
}

// Descriptor of a 128-byte-swizzled operand at `start` (bits 0-13: address >> 4; 16-29: LBO >> 4;
// 32-45: SBO >> 4; 62-63: swizzle mode, 1 = 128 bytes). SBO, the stride between 8-row groups, is
// one swizzle atom for both operands. LBO is unused by both (K-major: a step's 16 columns lie in
// one 128-byte row; MN-major: N = 64 fills exactly one panel): K-major gets 16 bytes as in
// CUTLASS; MN-major gets the 8-row stride too, which is also right under the reading of the PTX
// ISA in which LBO and SBO swap roles for MN-major operands.
template <bool MnMajor>
__device__ __forceinline__ uint64_t sw128_descriptor(const void* start) {
  const uint32_t address = attn::smem_addr(start);
  constexpr uint64_t kLeading = MnMajor ? kSwizzleAtomBytes >> 4 : 1, kStride = kSwizzleAtomBytes >> 4;
  return uint64_t((address & 0x3ffff) >> 4) | kLeading << 16 | kStride << 32 | uint64_t(1) << 62;
}

// The descriptor of the operand `bytes` (a multiple of 16) past `base`: base's descriptor with
// bytes / 16 added to its start-address field, which cannot carry out of its 14 bits (shared
// memory ends below 2^18 bytes), so only the low word changes. The compiler then builds one
// descriptor per tile and adds a constant per wgmma, instead of redoing the address arithmetic
// (about 9 instructions) for each.
template <bool MnMajor>
__device__ __forceinline__ uint64_t sw128_descriptor(const void* base, uint32_t bytes) {
  const uint64_t d = sw128_descriptor<MnMajor>(base);
  return (d >> 32) << 32 | uint32_t(uint32_t(d) + (bytes >> 4));
}

// Registers (or accumulators) that an in-flight wgmma reads or writes: the empty asm keeps the
// compiler from moving other accesses to them across the wgmma's issue and wait.
__device__ __forceinline__ void operand_fence(float& r) {
#if !defined(DLLM_CUDA_EMULATOR)
  asm volatile("" : "+f"(r)::"memory");
#endif
}
__device__ __forceinline__ void operand_fence(uint32_t& r) {
#if !defined(DLLM_CUDA_EMULATOR)
  asm volatile("" : "+r"(r)::"memory");
#endif
}

// Orders this thread's register writes before the wgmmas that read them (wgmma.fence).
__device__ __forceinline__ void fence() {
#if defined(DLLM_WGMMA_UNAVAILABLE)
  __trap();
#elif !defined(DLLM_CUDA_EMULATOR)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void commit_group() {
#if defined(DLLM_WGMMA_UNAVAILABLE)
  __trap();
#elif defined(DLLM_CUDA_EMULATOR)
  cuemu::wgmma_commit_group();
#else
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Waits until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void wait_group() {
#if defined(DLLM_WGMMA_UNAVAILABLE)
  __trap();
#elif defined(DLLM_CUDA_EMULATOR)
  cuemu::wgmma_wait_group(N);
#else
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Makes this thread's generic-proxy shared-memory writes (cp.async included) visible to the async
// proxy through which wgmma reads its shared operands; a block barrier then publishes them.
__device__ __forceinline__ void fence_proxy_async() {
#if defined(DLLM_WGMMA_UNAVAILABLE)
  __trap();
#elif defined(DLLM_CUDA_EMULATOR)
  cuemu::fence_proxy_async();
#else
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// The accumulator operands of an m64nNk16 wgmma (N / 2 fp32 registers a thread) and the list
// of their asm operand numbers.
#define DLLM_WG_D16                                                                                          \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define DLLM_WG_D32                                                                                          \
  DLLM_WG_D16, "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),   \
      "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), \
      "+f"(d[31])
#define DLLM_WG_R16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define DLLM_WG_R32                                                                                          \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}"

// d (+)= A B on one m64nNk16 step (N = 32 or 64), asynchronously: complete after wait_group.
// a: this thread's A fragment (rows 16 w.. of warp w, the m16n8k16 A layout); b: B's
// descriptor; TransB: B is MN-major (V, dO, Q in the products with a transposed tile) rather
// than K-major.
template <DType D, int N, bool TransB>
__device__ __forceinline__ void mma_async(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b, bool accumulate) {
  static_assert(N == 32 || N == 64);
#if defined(DLLM_WGMMA_UNAVAILABLE)
  __trap();
#elif defined(DLLM_CUDA_EMULATOR)
  cuemu::wgmma(d, N, a, 0, b, accumulate, false, TransB, D == DType::kBFloat16);
#else
#define DLLM_WG_RS(SHAPE, TYPES, REGS, OUTS, A0, A1, A2, A3, B, SCALE, TRANS)                              \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" SCALE ", 0;\nwgmma.mma_async.sync.aligned." SHAPE ".f32." TYPES \
               " " REGS ", {%" A0 ", %" A1 ", %" A2 ", %" A3 "}, %" B ", p, 1, 1, %" TRANS ";\n}\n"             \
               : OUTS                                                                                       \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(int(accumulate)), "n"(int(TransB)))
  if constexpr (N == 64 && D == DType::kBFloat16)
    DLLM_WG_RS("m64n64k16", "bf16.bf16", DLLM_WG_R32, DLLM_WG_D32, "32", "33", "34", "35", "36", "37", "38");
  else if constexpr (N == 64)
    DLLM_WG_RS("m64n64k16", "f16.f16", DLLM_WG_R32, DLLM_WG_D32, "32", "33", "34", "35", "36", "37", "38");
  else if constexpr (D == DType::kBFloat16)
    DLLM_WG_RS("m64n32k16", "bf16.bf16", DLLM_WG_R16, DLLM_WG_D16, "16", "17", "18", "19", "20", "21", "22");
  else
    DLLM_WG_RS("m64n32k16", "f16.f16", DLLM_WG_R16, DLLM_WG_D16, "16", "17", "18", "19", "20", "21", "22");
#undef DLLM_WG_RS
#endif
}

// The same with A read from shared memory too, through the descriptor a: K-major, or MN-major
// with TransA (K^T in the atomic dQ^T = K^T dS^T, from K's [keys][Dim] tile).
template <DType D, int N, bool TransB, bool TransA = false>
__device__ __forceinline__ void mma_async(float (&d)[N / 2], uint64_t a, uint64_t b, bool accumulate) {
  static_assert(N == 32 || N == 64);
#if defined(DLLM_WGMMA_UNAVAILABLE)
  __trap();
#elif defined(DLLM_CUDA_EMULATOR)
  cuemu::wgmma(d, N, nullptr, a, b, accumulate, TransA, TransB, D == DType::kBFloat16);
#else
#define DLLM_WG_SS(SHAPE, TYPES, REGS, OUTS, A, B, SCALE, TRANS_A, TRANS_B)                                  \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" SCALE ", 0;\nwgmma.mma_async.sync.aligned." SHAPE ".f32." TYPES \
               " " REGS ", %" A ", %" B ", p, 1, 1, %" TRANS_A ", %" TRANS_B ";\n}\n"                          \
               : OUTS                                                                                       \
               : "l"(a), "l"(b), "r"(int(accumulate)), "n"(int(TransA)), "n"(int(TransB)))
  if constexpr (N == 64 && D == DType::kBFloat16)
    DLLM_WG_SS("m64n64k16", "bf16.bf16", DLLM_WG_R32, DLLM_WG_D32, "32", "33", "34", "35", "36");
  else if constexpr (N == 64)
    DLLM_WG_SS("m64n64k16", "f16.f16", DLLM_WG_R32, DLLM_WG_D32, "32", "33", "34", "35", "36");
  else if constexpr (D == DType::kBFloat16)
    DLLM_WG_SS("m64n32k16", "bf16.bf16", DLLM_WG_R16, DLLM_WG_D16, "16", "17", "18", "19", "20");
  else
    DLLM_WG_SS("m64n32k16", "f16.f16", DLLM_WG_R16, DLLM_WG_D16, "16", "17", "18", "19", "20");
#undef DLLM_WG_SS
#endif
}

#undef DLLM_WG_D16
#undef DLLM_WG_D32
#undef DLLM_WG_R16
#undef DLLM_WG_R32

// An N-column slice of an accumulator array in the mma.sync layout ([8-column block][4]), as the
// d operand of mma_async: blocks first_block .. first_block + N / 8 - 1.
template <int N, int Blocks>
__device__ __forceinline__ float (&columns(float (&acc)[Blocks][4], int first_block))[N / 2] {
  return *reinterpret_cast<float(*)[N / 2]>(&acc[first_block][0]);
}

// The dynamic shared memory, aligned to the swizzle atom (the swizzle works on address bits).
__device__ __forceinline__ unsigned char* aligned_smem(unsigned char* raw) {
  constexpr uint32_t kAtom = kSwizzleAtomBytes;
  return raw + (kAtom - attn::smem_addr(raw) % kAtom) % kAtom;
}

// Descriptor of the K-major operand rows [row0, row0 + 64 or N) x columns [16 ks, 16 ks + 16) of a
// [Rows][Dim] panel tile, and of the MN-major operand rows [16 kk, 16 kk + 16) x columns
// [64 panel, 64 panel + 64).
template <int Rows, typename T>
__device__ __forceinline__ uint64_t k_major(const T* tile, int row0, int ks) {
  return sw128_descriptor<false>(tile, uint32_t((ks / 4) * Rows * kPanelRowBytes + row0 * kPanelRowBytes + (ks % 4) * 32));
}
template <int Rows, typename T>
__device__ __forceinline__ uint64_t mn_major(const T* tile, int kk, int panel) {
  return sw128_descriptor<true>(tile, uint32_t(panel * Rows * kPanelRowBytes + kk * 16 * kPanelRowBytes));
}

// operand_fence over accumulators and A fragments, after the wait_group that retired their wgmmas.
template <int Blocks>
__device__ __forceinline__ void fence_accumulators(float (&acc)[Blocks][4]) {
#pragma unroll
  for (int b = 0; b < Blocks; ++b)
#pragma unroll
    for (int e = 0; e < 4; ++e) operand_fence(acc[b][e]);
}
template <int Steps>
__device__ __forceinline__ void fence_fragments(uint32_t (&frag)[Steps][4]) {
#pragma unroll
  for (int s = 0; s < Steps; ++s)
#pragma unroll
    for (int e = 0; e < 4; ++e) operand_fence(frag[s][e]);
}

// This thread's cp.async copies have landed and are visible to wgmma's reads, and every thread of
// the block is here. The ping-pong kernels' two warpgroups reach it at different places in the
// code, each warp whole, as CUTLASS's warp-specialised kernels reach their named barriers
// (bar.sync, the aligned form; its unaligned barrier.sync is for warps that may diverge, and made
// ptxas guard the warp-collective instructions after each barrier with WARPSYNC.COLLECTIVE
// sequences here: 28 in the forward's SASS).
__device__ __forceinline__ void arrive() {
  attn::cp_async_wait_all();
  fence_proxy_async();
  __syncthreads();
}

// Every thread of this thread's warpgroup (of the two of a CTA) is here: a named barrier of its
// 128 threads (ids 1 and 2; __syncthreads is 0), while the other warpgroup runs on.
__device__ __forceinline__ void warpgroup_sync() {
#if defined(DLLM_CUDA_EMULATOR)
  cuemu::sync_warpgroup();
#else
  // immediate ids: a register id makes ptxas reserve all 16 barriers
  if (threadIdx.x < 128)
    asm volatile("bar.sync 1, 128;\n" ::: "memory");
  else
    asm volatile("bar.sync 2, 128;\n" ::: "memory");
#endif
}

// A plain shared-memory store of 16 bits that a wgmma of this warpgroup will read as an operand:
// the wgmma sees it after this thread's fence_proxy_async and then a barrier (the CUDA emulator
// models exactly that).
__device__ __forceinline__ void store_operand_bits(void* smem, uint16_t bits) {
  *static_cast<uint16_t*>(smem) = bits;
#if defined(DLLM_CUDA_EMULATOR)
  cuemu::generic_shared_store(smem, 2);
#endif
}

// The A fragments of the next issued product take the registers computed a tile earlier (a copy
// that the compiler renames away).
template <int Steps>
__device__ __forceinline__ void copy_fragments(uint32_t (&to)[Steps][4], const uint32_t (&from)[Steps][4]) {
#pragma unroll
  for (int s = 0; s < Steps; ++s)
#pragma unroll
    for (int e = 0; e < 4; ++e) to[s][e] = from[s][e];
}

// P, the fp32 accumulator of a 64 x N product, rounded into the A fragments of P B.
template <DType DT, int N>
__device__ __forceinline__ void to_fragments(uint32_t (&frag)[N / 16][4], const float (&p)[N / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) attn::acc_to_a<DT>(frag[kk], p, kk);
}

// out += P B, asynchronously (retired by the caller's wait_group): P given as its A fragments
// `frag`, B the [N][Dim] tile b as an MN-major operand.
template <DType DT, int Dim, int N, typename T>
__device__ __forceinline__ void issue_times_fragments(float (&out)[Dim / 8][4], const uint32_t (&frag)[N / 16][4],
                                                      const T* b) {
  fence();
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk)
#pragma unroll
    for (int panel = 0; panel < Dim / 64; ++panel)
      mma_async<DT, 64, true>(columns<64>(out, 8 * panel), frag[kk], mn_major<N>(b, kk, panel), true);
  commit_group();
}

}  // namespace dllm::wg
