// The rows of a batch's outputs that the attention kernels leave unwritten, stored as what they
// are (attention_store_padding_cuda in dllm/attention.h), instead of a fill of the whole outputs
// ahead of the attention. Sequence b's query rows are [start, end) = [q_begin(b), + q_size(b)):
// the kernels write them if it has keys, else nothing; the rows after them up to the next
// sequence's start (the packed tokens' end for the last) no sequence holds, nor those before the
// first. Whatever the starts (a malformed cu_seqlens may make them decrease or overlap), a row no
// sequence holds lies in one of those gaps (after the last sequence starting at or before it), so
// writing the gaps and the sequences without work misses no row; a gap's row that another
// sequence does hold is written again by the attention kernels, which run after this one. Key
// rows likewise, with queries (and query heads) in place of keys. For a padded batch each range is
// one contiguous stretch of a [B, S, heads, D] tensor (and of each head's lse row): with kv_len
// alone only the sequences without keys have one.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "dllm/attention.h"

namespace dllm {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunksPerBlock = 4 * kThreads;  // 16-byte stores a CTA makes, about, on a long range

// Rows [first, last) of one side, queries or keys (empty where last <= first).
struct Rows {
  int64_t first, last;
};

// Zeros `rows` of `dst` (row_chunks 16-byte chunks a row), striding over this sequence's CTAs.
__device__ void zero_rows(void* dst, int64_t row_chunks, Rows rows) {
  if (dst == nullptr) return;
  uint4* chunks = static_cast<uint4*>(dst);
  for (int64_t i = rows.first * row_chunks + int64_t(blockIdx.x) * kThreads + threadIdx.x; i < rows.last * row_chunks;
       i += int64_t(gridDim.x) * kThreads)
    chunks[i] = uint4{0u, 0u, 0u, 0u};
}

__device__ void minus_inf_rows(const AttentionParams& p, float* lse, Rows rows) {
  const int64_t n = rows.last - rows.first;
  if (lse == nullptr || n <= 0) return;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < p.heads * n; i += int64_t(gridDim.x) * kThreads)
    lse[(i / n) * p.q_tokens + rows.first + i % n] = -INFINITY;
}

// The rows of one side that a sequence [start, start + size) leaves to this kernel: the gap after
// it up to `next`, and itself where it has no work.
__device__ Rows unwritten(int64_t start, int64_t size, int64_t next, bool worked) {
  const int64_t end = start + size;
  return worked ? Rows{end, next} : Rows{start, end > next ? end : next};
}

// Sequence blockIdx.y's query rows without output (zeros in out or dq, -inf in lse) and key rows
// without gradient (zeros in dk and dv); sequence 0's also the rows before it (a varlen
// batch's cu_seqlens may start past 0).
__global__ void store_padding_kernel(const AttentionParams p, const AttentionPadding out) {
  const int64_t b = blockIdx.y;
  const bool last = b + 1 == p.batch;
  const int64_t qn = p.q_size(b), kn = p.k_size(b);
  const Rows queries[2] = {unwritten(p.q_begin(b), qn, last ? p.q_tokens : p.q_begin(b + 1), kn > 0),
                           Rows{0, b == 0 ? p.q_begin(0) : 0}};
  const Rows keys[2] = {unwritten(p.k_begin(b), kn, last ? p.k_tokens : p.k_begin(b + 1), qn > 0 && p.heads > 0),
                        Rows{0, b == 0 ? p.k_begin(0) : 0}};
  // rows of heads * D (kv_heads * D) 2-byte elements: D in {64, 128} makes them whole 16-byte chunks
  const int64_t q_row = p.heads * p.head_dim / 8, k_row = p.kv_heads * p.head_dim / 8;
  for (const Rows& rows : queries) {
    zero_rows(out.queries, q_row, rows);
    minus_inf_rows(p, out.lse, rows);
  }
  for (const Rows& rows : keys)
    for (void* gradient : out.keys) zero_rows(gradient, k_row, rows);
}

}  // namespace

void attention_store_padding_cuda(const AttentionParams& p, const AttentionPadding& out, void* stream) {
  if (p.batch == 0) return;
  // a padded sequence's share of the rows; a varlen batch's rows are as many, on average
  const int64_t chunks = std::max(p.q_tokens * p.heads, p.k_tokens * p.kv_heads) / p.batch * p.head_dim / 8;
  const int64_t blocks = std::min<int64_t>(std::max<int64_t>((chunks + kChunksPerBlock - 1) / kChunksPerBlock, 1), 64);
  store_padding_kernel<<<dim3(unsigned(blocks), unsigned(p.batch)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, out);
}

}  // namespace dllm
