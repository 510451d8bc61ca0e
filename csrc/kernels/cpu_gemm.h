// Small float GEMMs on cache-resident tiles, the inner loop of the CPU attention: a 6 x 16 block
// of C stays in twelve 8-lane vector registers while k runs, so each k costs two vector loads of
// B, six broadcasts of A and twelve multiply-adds (the register blocking of BLIS's Haswell
// micro-kernel; 12 independent accumulators cover the FMA latency of two pipes). 4 x 16 blocks
// ran 15-25% slower (measured on the 2-core EPYC, AVX2).
#pragma once
#include <cstdint>

#include "cpu_simd.h"

namespace dllm::cpu {
namespace {

// M must be even (6-row blocks, then a 4- or 2-row remainder) and N a multiple of kGemmCols:
// callers pad with zeros.
constexpr int64_t kGemmRowMultiple = 2, kGemmCols = 16;

inline int64_t round_up(int64_t x, int64_t multiple) { return (x + multiple - 1) / multiple * multiple; }

// Row stride (in floats) for rows of `cols` floats, cols a multiple of kGemmCols: an odd multiple
// of 64 bytes. At a stride of a large power of two the rows a GEMM walks down all fall into the
// same few cache sets and evict each other (measured: 2.3x slower at 2048 keys).
inline int64_t padded_stride(int64_t cols) { return cols % (2 * kGemmCols) == 0 ? cols + kGemmCols : cols; }

// Rows [m0, m0 + Rows) of C, all N columns.
template <int Rows, bool TransA>
inline void gemm_rows(int64_t m0, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                      float* C, int64_t ldc, bool accumulate) {
  for (int64_t n0 = 0; n0 < N; n0 += kGemmCols) {
    Float8 c[Rows][2];
    for (int r = 0; r < Rows; ++r) {
      float* cr = C + (m0 + r) * ldc + n0;
      c[r][0] = accumulate ? load8(cr) : Float8{};
      c[r][1] = accumulate ? load8(cr + 8) : Float8{};
    }
    for (int64_t k = 0; k < K; ++k) {
      const Float8 b0 = load8(B + k * ldb + n0), b1 = load8(B + k * ldb + n0 + 8);
      for (int r = 0; r < Rows; ++r) {
        const float a = TransA ? A[k * lda + m0 + r] : A[(m0 + r) * lda + k];
        c[r][0] += a * b0;
        c[r][1] += a * b1;
      }
    }
    for (int r = 0; r < Rows; ++r) {
      float* cr = C + (m0 + r) * ldc + n0;
      store8(cr, c[r][0]);
      store8(cr + 8, c[r][1]);
    }
  }
}

// C[M][N] = (accumulate ? C : 0) + op(A) B, with op(A) [M][K] either A stored [M][K] or, with
// TransA, the transpose of A stored [K][M]; B [K][N]; rows lda / ldb / ldc floats apart.
template <bool TransA>
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
          int64_t ldc, bool accumulate) {
  int64_t m0 = 0;
  for (; m0 + 6 <= M; m0 += 6) gemm_rows<6, TransA>(m0, N, K, A, lda, B, ldb, C, ldc, accumulate);
  if (M - m0 == 4) gemm_rows<4, TransA>(m0, N, K, A, lda, B, ldb, C, ldc, accumulate);
  if (M - m0 == 2) gemm_rows<2, TransA>(m0, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

}  // namespace
}  // namespace dllm::cpu
