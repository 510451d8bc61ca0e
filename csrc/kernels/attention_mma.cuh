// Tensor-core building blocks of the CUDA attention kernels (sm_80+): cp.async tile loads into
// swizzled shared memory, ldmatrix fragment loads and mma.sync.m16n8k16 (bf16/fp16 in, fp32 out).
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane = 4 * g + t:
//   A 16x16 (row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B 16x8  (k x n):     b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C 16x8  (fp32):      c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
// so the C fragments of two adjacent 8-column blocks are, once rounded to 16 bits, exactly the
// A fragment of the 16-wide k-step that those columns form (FlashAttention-2's P-in-registers).
//
// ldmatrix.x4: lanes 8i..8i+7 give the row addresses of 8x8 matrix i, and register i returns
// matrix i with lane holding (row g, cols 2t..2t+1); with .trans it holds (rows 2t..2t+1, col g).
//
// Shared tiles are [rows][D] with 16-byte chunks swizzled: chunk c of row r lives at chunk
// c ^ (r % 8), so the 8 rows an ldmatrix phase reads at one column hit 8 different bank groups.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>

#include "dllm/attention.h"
#include "dllm/common.h"
#include "exp2_ftz.cuh"

namespace dllm::attn {

constexpr float kLn2 = 0.6931471805599453f;

template <DType D>
struct Elem;
template <>
struct Elem<DType::kBFloat16> {
  using T = __nv_bfloat16;
  __device__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low 16 bits) = lo
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ static float2 unpack(uint32_t bits) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&bits));
  }
};
template <>
struct Elem<DType::kFloat16> {
  using T = __half;
  __device__ static uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ static float2 unpack(uint32_t bits) { return __half22float2(*reinterpret_cast<__half2*>(&bits)); }
};

// Builds for architectures before sm_80 (no bf16 mma, no cp.async) compile, and the binding
// refuses such devices before any kernel runs.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define DLLM_ATTN_NEEDS_SM80 1
#endif

// c += a * b on one m16n8k16 tile.
template <DType D>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(DLLM_ATTN_NEEDS_SM80)
  __trap();
#elif defined(DLLM_CUDA_EMULATOR)  // tests/cuda_emulator runs these kernels on the CPU
  cuemu::mma_m16n8k16(c, a, b0, b1, D == DType::kBFloat16);
#else
  if constexpr (D == DType::kBFloat16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
#if defined(DLLM_CUDA_EMULATOR)
  cuemu::ldmatrix_x4(r, p, false);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
#if defined(DLLM_CUDA_EMULATOR)
  cuemu::ldmatrix_x4(r, p, true);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
#endif
}

// 16 bytes global -> shared, asynchronously; zero-filled (nothing read) when !valid.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
#if defined(DLLM_ATTN_NEEDS_SM80)
  __trap();
#elif defined(DLLM_CUDA_EMULATOR)
  cuemu::cp_async(dst, src, 16, valid);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
#endif
}
#if defined(DLLM_ATTN_NEEDS_SM80)
__device__ __forceinline__ void cp_async_commit() {}
__device__ __forceinline__ void cp_async_wait_all() {}
#elif defined(DLLM_CUDA_EMULATOR)
__device__ __forceinline__ void cp_async_commit() {}
__device__ __forceinline__ void cp_async_wait_all() { cuemu::cp_async_wait_all(); }
#else
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
#endif

// Element offset of (row, 8-column chunk) in a swizzled [rows][Dim] tile.
template <int Dim>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * Dim + ((chunk ^ (row & 7)) << 3);
}

// Rows [0, Rows) of a [Rows][Dim] tile from global rows `row_stride` elements apart, in the
// layout `offset(row, chunk)` (element offset of an 8-column chunk); rows at or past `valid_rows`
// are zero-filled, so they contribute nothing to any product.
// Thread i copies chunk i % (Dim / 8) of rows i / (Dim / 8) + kPassRows * pass: the loop has a
// trip count known at compile time (ptxas unrolls it fully) and, kPassRows being a multiple of 8,
// every pass's shared offset (swizzle included) is the first pass's plus PassStride and its global
// address the previous one's plus a stride, about 4 instructions a copy instead of the ~30 of a
// loop over i = threadIdx.x.
template <int Rows, int Dim, int Threads, int PassStride, typename T, typename Offset>
__device__ __forceinline__ void load_rows(T* tile, const T* src, int64_t row_stride, int valid_rows, Offset offset) {
  constexpr int kChunks = Dim / 8, kPassRows = Threads / kChunks;
  static_assert(Threads % kChunks == 0 && Rows % kPassRows == 0, "every thread loads the same number of chunks");
  static_assert(kPassRows % 8 == 0, "each pass moves whole swizzle periods");
  const int r0 = int(threadIdx.x) / kChunks, c = int(threadIdx.x) % kChunks;
  // Pass p copies a real row iff p * kPassRows < rows_left: a compare with a constant, where a
  // per-pass row index would be a loop invariant that the compiler keeps in a register.
  const int rows_left = valid_rows - r0;
  T* to = tile + offset(r0, c);
  const T* from = src + r0 * row_stride + c * 8;
  const int64_t pass_stride = kPassRows * row_stride;
#pragma unroll
  for (int pass = 0; pass < Rows / kPassRows; ++pass, from += pass_stride) {
    const bool valid = pass * kPassRows < rows_left;
    cp_async_16(to + pass * PassStride, valid ? from : src, valid);
  }
}

// A row-major [Rows][Dim] tile, chunks swizzled within each row (swz).
template <int Rows, int Dim, int Threads, typename T>
__device__ __forceinline__ void load_tile(T* tile, const T* src, int64_t row_stride, int valid_rows) {
  load_rows<Rows, Dim, Threads, Threads / (Dim / 8) * Dim>(tile, src, row_stride, valid_rows,
                                                           [](int row, int chunk) { return swz<Dim>(row, chunk); });
}

// Fragment loads: each lane gives the address of row (lane % 8) of matrix (lane / 8); chunk0 is
// the fragment's first column / 8.
// A 16x16 from a row-major [m][k] tile: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7),
// (rows 0-7, k 8-15), (rows 8-15, k 8-15) -> a0, a1, a2, a3.
template <int Dim, typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int row0, int chunk0, int lane) {
  ldmatrix_x4(a, tile + swz<Dim>(row0 + (lane & 15), chunk0 + (lane >> 4)));
}

// B operands (k 16 x n 8) of two adjacent n-blocks from an [n][k] tile (k contiguous): matrices
// (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) -> b[0], b[1] for n-block
// n0 and b[2], b[3] for n-block n0 + 8.
template <int Dim, typename T>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const T* tile, int n0, int chunk0, int lane) {
  ldmatrix_x4(b, tile + swz<Dim>(n0 + (lane & 7) + ((lane >> 4) << 3), chunk0 + ((lane >> 3) & 1)));
}

// B operands (k 16 x n 8) of two adjacent n-blocks from a [k][n] tile (n contiguous, e.g. V in
// P V), transposed by ldmatrix: matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15),
// (k 8-15, n 8-15) -> b[0], b[1] for the n-block at chunk0 and b[2], b[3] for the one at chunk0 + 1.
template <int Dim, typename T>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const T* tile, int k0, int chunk0, int lane) {
  ldmatrix_x4_trans(b, tile + swz<Dim>(k0 + (lane & 7) + (((lane >> 3) & 1) << 3), chunk0 + (lane >> 4)));
}

// The A fragment of k-step kk (columns 16kk..16kk+15) from fp32 accumulators of 8-column blocks.
template <DType D, int N>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&acc)[N][4], int kk) {
  a[0] = Elem<D>::pack(acc[2 * kk][0], acc[2 * kk][1]);
  a[1] = Elem<D>::pack(acc[2 * kk][2], acc[2 * kk][3]);
  a[2] = Elem<D>::pack(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
  a[3] = Elem<D>::pack(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
}

// The backward's paired score products for one warp's 16 rows: c1 += A1 B1^T and c2 += A2 B2^T,
// A from rows row0.. of the [rows][Dim] tiles a1, a2, B from the first N rows of the [N][Dim]
// tiles b1, b2 (S and dP in the dQ kernel, their transposes in the dK/dV kernel).
template <DType D, int Dim, int N, typename T>
__device__ __forceinline__ void paired_products(float (&c1)[N / 8][4], float (&c2)[N / 8][4], const T* a1, const T* a2,
                                                const T* b1, const T* b2, int row0, int lane) {
#pragma unroll
  for (int ks = 0; ks < Dim / 16; ++ks) {
    uint32_t x1[4], x2[4];
    load_a<Dim>(x1, a1, row0, 2 * ks, lane);
    load_a<Dim>(x2, a2, row0, 2 * ks, lane);
#pragma unroll
    for (int nb = 0; nb < N / 8; nb += 2) {
      uint32_t y1[4], y2[4];
      load_b_nk<Dim>(y1, b1, nb * 8, 2 * ks, lane);
      load_b_nk<Dim>(y2, b2, nb * 8, 2 * ks, lane);
      mma<D>(c1[nb], x1, y1[0], y1[1]);
      mma<D>(c1[nb + 1], x1, y1[2], y1[3]);
      mma<D>(c2[nb], x2, y2[0], y2[1]);
      mma<D>(c2[nb + 1], x2, y2[2], y2[3]);
    }
  }
}

// out += P B for one warp's 16 rows: P is the fp32 accumulator of a 16 x N product (rounded to
// the input type in registers, FlashAttention-2's P-in-registers), B the first N rows of the
// [N][Dim] tile b read transposed (V in O += P V; K, dO, Q in the backward).
template <DType D, int Dim, int N, typename T>
__device__ __forceinline__ void accumulate_times_tile(float (&out)[Dim / 8][4], const float (&p)[N / 8][4], const T* b,
                                                      int lane) {
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    uint32_t a[4];
    acc_to_a<D>(a, p, kk);
#pragma unroll
    for (int db = 0; db < Dim / 8; db += 2) {
      uint32_t y[4];
      load_b_kn<Dim>(y, b, kk * 16, db, lane);
      mma<D>(out[db], a, y[0], y[1]);
      mma<D>(out[db + 1], a, y[2], y[3]);
    }
  }
}

// Stores the 16 x Dim fp32 accumulator of one warp (rows row0 + g, row0 + g + 8) times `mul`,
// skipping rows at or past `valid_rows`.
template <DType D, int Dim>
__device__ __forceinline__ void store_rows(typename Elem<D>::T* dst, int64_t row_stride, const float (&acc)[Dim / 8][4],
                                           int row0, int valid_rows, float mul0, float mul1, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + g + 8 * half;
    if (row >= valid_rows) continue;
    const float mul = half ? mul1 : mul0;
    auto* out = reinterpret_cast<uint32_t*>(dst + row * row_stride + 2 * t);
#pragma unroll
    for (int nb = 0; nb < Dim / 8; ++nb)
      out[nb * 4] = Elem<D>::pack(acc[nb][2 * half] * mul, acc[nb][2 * half + 1] * mul);
  }
}

// ---- the elementwise parts of the kernels, shared by the mma.sync and wgmma versions ----------
// Score accumulators s[nb][e] have the m16n8k16 C layout: this thread's rows g (e < 2) and g + 8
// (e >= 2) of its warp's 16, columns 8 nb + 2t + (e & 1) of the tile.

// Keys at or past kn of the key tile starting at key0 get `value` (-inf for scores, 0 for dS).
// Only a sequence's last tile can hold such keys: every full tile returns at once (a branch the
// whole warp takes), sparing it a compare and a select per score.
template <int Blocks>
__device__ __forceinline__ void mask_keys(float (&s)[Blocks][4], int key0, int kn, int lane, float value) {
  if (key0 + Blocks * 8 <= kn) return;
#pragma unroll
  for (int nb = 0; nb < Blocks; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (key0 + nb * 8 + 2 * (lane & 3) + (e & 1) >= kn) s[nb][e] = value;
}

// How far (in log2 units) a tile's row maximum may exceed the running one before the running one
// moves: FlashAttention-4's conditional rescaling. Until then P reaches at most 2^8, which every
// type it is rounded to holds with its full precision, and the output accumulator needs no
// rescaling; after a row's first tiles its maximum rarely jumps that far.
constexpr float kRescaleThreshold = 8.0f;

// One tile of the forward's online softmax: s (raw scores Q K^T) becomes P (unnormalised, base 2)
// and the per-thread partial row sums move on. The running row maximum (of raw scores) moves only
// when some row of the warp exceeds it by more than kRescaleThreshold; then the function returns
// true and `correction` holds the factors by which the output accumulator must be rescaled
// (rescale_rows). The softmax scale (times log2 e, > 0, so the maximum of the raw scores is that
// of the scaled ones) enters only the exponent, P = exp2(s c - max c): one FFMA per score. A
// row's scores of the tile live in the 4 lanes of its quad. Every tile holds at least one key, so
// a new maximum is finite and exp2(-inf) = 0 is exact.
template <int ScoreBlocks>
__device__ __forceinline__ bool softmax_tile(float (&s)[ScoreBlocks][4], float (&row_max)[2], float (&row_sum)[2],
                                             float (&correction)[2], float scale_log2) {
  float mx[2];
  bool grows = false;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    mx[half] = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < ScoreBlocks; ++nb) mx[half] = fmaxf(mx[half], fmaxf(s[nb][2 * half], s[nb][2 * half + 1]));
    mx[half] = fmaxf(mx[half], __shfl_xor_sync(0xffffffffu, mx[half], 1));
    mx[half] = fmaxf(mx[half], __shfl_xor_sync(0xffffffffu, mx[half], 2));
    grows |= (mx[half] - row_max[half]) * scale_log2 > kRescaleThreshold;  // always on the first tile
  }
  const bool rescale = __ballot_sync(0xffffffffu, grows) != 0;  // one decision per warp
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (rescale) {
      const float new_max = fmaxf(row_max[half], mx[half]);
      correction[half] = exp2_ftz((row_max[half] - new_max) * scale_log2);  // exactly 1 where it stands
      row_max[half] = new_max;
      row_sum[half] *= correction[half];
    }
    const float max_scaled = row_max[half] * scale_log2;
    float sum = 0.0f;
#pragma unroll
    for (int nb = 0; nb < ScoreBlocks; ++nb)
#pragma unroll
      for (int e = 2 * half; e < 2 * half + 2; ++e) {
        s[nb][e] = exp2_ftz(fmaf(s[nb][e], scale_log2, -max_scaled));
        sum += s[nb][e];
      }
    row_sum[half] += sum;
  }
  return rescale;
}

template <int OutBlocks>
__device__ __forceinline__ void rescale_rows(float (&o)[OutBlocks][4], const float (&correction)[2]) {
#pragma unroll
  for (int db = 0; db < OutBlocks; ++db)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[db][e] *= correction[e >> 1];
}

template <int ScoreBlocks, int OutBlocks>
__device__ __forceinline__ void online_softmax(float (&s)[ScoreBlocks][4], float (&o)[OutBlocks][4],
                                               float (&row_max)[2], float (&row_sum)[2], float scale_log2) {
  float correction[2];
  if (softmax_tile(s, row_max, row_sum, correction, scale_log2)) rescale_rows(o, correction);
}

// The forward's epilogue for one warp's 16 rows (row0.. of the CTA's tile, whose first query is
// token q0 of the layout and row m0 of its sequence): lse, then O normalised by the row sums.
// row_max holds raw scores (softmax_tile).
template <DType D, int Dim>
__device__ __forceinline__ void finish_forward(const AttentionParams& p, const float (&o)[Dim / 8][4],
                                               const float (&row_max)[2], float (&row_sum)[2], float scale_log2,
                                               int64_t h, int64_t q0, int m0, int qn, int row0, int lane) {
  float inv[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    row_sum[half] += __shfl_xor_sync(0xffffffffu, row_sum[half], 1);
    row_sum[half] += __shfl_xor_sync(0xffffffffu, row_sum[half], 2);
    inv[half] = 1.0f / row_sum[half];  // >= 1: the row maximum contributes exp2(0)
    const int row = row0 + (lane >> 2) + 8 * half;
    if ((lane & 3) == 0 && m0 + row < qn)
      p.lse[h * p.q_tokens + q0 + row] = (row_max[half] * scale_log2 + log2f(row_sum[half])) * kLn2;
  }
  auto* out = static_cast<typename Elem<D>::T*>(p.out) + q0 * p.o_token_stride + h * p.o_head_stride;
  store_rows<D, Dim>(out, p.o_token_stride, o, row0, qn - m0, inv[0], inv[1], lane);
}

// lse in base 2, +inf where the row takes no part (padding, or a row without keys), so that
// exp2(s - lse) = 0 there.
__device__ __forceinline__ float lse_log2(const float* lse, int64_t index, bool valid) {
  const float v = valid ? lse[index] : -INFINITY;
  return v == -INFINITY ? INFINITY : v * kLog2e;
}

// The backward's statistics (lse in base 2, delta) of this thread's two query rows in the dQ
// kernels: rows row0 + g and + 8 of the CTA's tile (query token q0, row m0 of its sequence).
__device__ __forceinline__ void row_stats(float (&lse2)[2], float (&row_delta)[2], const AttentionParams& p,
                                          const float* delta, int64_t h, int64_t q0, int m0, int qn, int row0,
                                          int lane) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + (lane >> 2) + 8 * half;
    const bool valid = m0 + row < qn;
    const int64_t index = h * p.q_tokens + q0 + row;
    lse2[half] = lse_log2(p.lse, index, valid);
    row_delta[half] = valid ? delta[index] : 0.0f;
  }
}

// The backward's per-query statistics (lse in base 2, delta) of the query rows this thread's
// score columns hold in the dK/dV kernels: rows r0 + 8 nb + 2t + {0, 1} of head h.
template <int Blocks>
__device__ __forceinline__ void column_stats(float (&col_lse)[Blocks][2], float (&col_delta)[Blocks][2],
                                             const AttentionParams& p, const float* delta, int64_t h, int64_t q0,
                                             int r0, int qn, int lane) {
#pragma unroll
  for (int nb = 0; nb < Blocks; ++nb)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int row = r0 + nb * 8 + 2 * (lane & 3) + e;
      const bool valid = row < qn;
      const int64_t index = h * p.q_tokens + q0 + row;
      col_lse[nb][e] = lse_log2(p.lse, index, valid);
      col_delta[nb][e] = valid ? delta[index] : 0.0f;
    }
}

// The dQ kernels' dS = P (dP - delta) in place of S, with P = exp2(S scaled - lse); lse2 /
// row_delta are this thread's two rows' statistics. Keys past the sequence's end (zero-filled, so
// S = 0 and P = 2^-lse, possibly inf) are the caller's to zero (mask_keys).
template <int Blocks>
__device__ __forceinline__ void scores_to_ds(float (&s)[Blocks][4], const float (&dp)[Blocks][4], float scale_log2,
                                             const float (&lse2)[2], const float (&row_delta)[2]) {
#pragma unroll
  for (int nb = 0; nb < Blocks; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      s[nb][e] = exp2_ftz(fmaf(s[nb][e], scale_log2, -lse2[e >> 1])) * (dp[nb][e] - row_delta[e >> 1]);
}

// The dK/dV kernels' P^T = exp2(S^T scaled - lse) in place of S^T; col_lse holds the statistics
// of this thread's query columns (column_stats).
template <int Blocks>
__device__ __forceinline__ void scores_to_probs_t(float (&s)[Blocks][4], float scale_log2,
                                                  const float (&col_lse)[Blocks][2]) {
#pragma unroll
  for (int nb = 0; nb < Blocks; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nb][e] = exp2_ftz(fmaf(s[nb][e], scale_log2, -col_lse[nb][e & 1]));
}

// Then dS^T = P^T (dP^T - delta) in place of P^T.
template <int Blocks>
__device__ __forceinline__ void probs_to_ds_t(float (&s)[Blocks][4], const float (&dp)[Blocks][4],
                                              const float (&col_delta)[Blocks][2]) {
#pragma unroll
  for (int nb = 0; nb < Blocks; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nb][e] *= dp[nb][e] - col_delta[nb][e & 1];
}

// f.template operator()<DT, Dim>() for p's dtype and head dimension, among those the CUDA kernels
// take (bfloat16 or float16; 64 or 128): the launches' one switch from run-time values to
// template arguments.
template <typename F>
void with_kernel_types(const AttentionParams& p, F&& f) {
  const bool bf16 = p.dtype == DType::kBFloat16;
  if (p.head_dim == 64)
    return bf16 ? f.template operator()<DType::kBFloat16, 64>() : f.template operator()<DType::kFloat16, 64>();
  return bf16 ? f.template operator()<DType::kBFloat16, 128>() : f.template operator()<DType::kFloat16, 128>();
}

// Opts Kernel into `bytes` of dynamic shared memory (past the default 48 KB) once per device:
// the attribute outlives the call, and setting it only on a first, eager call keeps it out of
// CUDA-graph captures.
template <auto Kernel>
void allow_dynamic_smem(int bytes) {
  static std::atomic<uint64_t> done{0};
  int device = 0;
  cudaGetDevice(&device);
  const uint64_t bit = uint64_t(1) << (device & 63);
  if (done.load(std::memory_order_relaxed) & bit) return;
  // A failed call is left to fail the launch (and the launch check) now, and is retried next time.
  if (cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) == cudaSuccess) done.fetch_or(bit);
}

}  // namespace dllm::attn
