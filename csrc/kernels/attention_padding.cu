// The rows of a padded batch that the tiled attention kernels leave unwritten, stored as what
// they are (attention_store_padding_cuda in dllm/attention.h). Those kernels store a sequence's
// query rows below q_size if it has keys, and its key rows' gradients below k_size if it has
// queries; the rest of a sequence's S rows is one contiguous range of each [B, S, heads, D]
// tensor (and of each head's lse row), so this writes ranges, not a fill of the whole output
// ahead of the attention: with kv_len alone it writes only the sequences without keys.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "dllm/attention.h"

namespace dllm {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunksPerBlock = 4 * kThreads;  // 16-byte stores a CTA makes, about, on a long range

// Zeros 16-byte chunks [begin, end) of rows, striding over the CTAs of this sequence.
__device__ void zero_chunks(void* rows, int64_t begin, int64_t end) {
  if (rows == nullptr) return;
  uint4* dst = static_cast<uint4*>(rows);
  for (int64_t i = begin + int64_t(blockIdx.x) * kThreads + threadIdx.x; i < end; i += int64_t(gridDim.x) * kThreads)
    dst[i] = uint4{0u, 0u, 0u, 0u};
}

// Sequence blockIdx.y: query rows [first, S) where it has no output (first = q_size, or 0 without
// keys), key rows [first, S) where it has no key gradient (first = k_size, or 0 without queries,
// which zero query heads also leave it).
__global__ void store_padding_kernel(const AttentionParams p, const AttentionPadding out) {
  const int64_t b = blockIdx.y;
  const int64_t qn = p.q_size(b), kn = p.k_size(b);
  const int64_t q_first = kn == 0 ? 0 : qn, k_first = qn == 0 || p.heads == 0 ? 0 : kn;
  // rows of heads * D (kv_heads * D) 2-byte elements: D in {64, 128} makes them whole 16-byte chunks
  const int64_t q_row = p.heads * p.head_dim / 8, k_row = p.kv_heads * p.head_dim / 8;
  zero_chunks(out.queries, (b * p.max_q + q_first) * q_row, (b + 1) * p.max_q * q_row);
  zero_chunks(out.keys[0], (b * p.max_k + k_first) * k_row, (b + 1) * p.max_k * k_row);
  zero_chunks(out.keys[1], (b * p.max_k + k_first) * k_row, (b + 1) * p.max_k * k_row);
  if (out.lse == nullptr) return;
  const int64_t rows = p.max_q - q_first;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < p.heads * rows; i += int64_t(gridDim.x) * kThreads)
    out.lse[(i / rows) * p.q_tokens + b * p.max_q + q_first + i % rows] = -INFINITY;
}

}  // namespace

void attention_store_padding_cuda(const AttentionParams& p, const AttentionPadding& out, void* stream) {
  if (p.batch == 0) return;
  const int64_t chunks = std::max(p.max_q * p.heads, p.max_k * p.kv_heads) * p.head_dim / 8;
  const int64_t blocks = std::min<int64_t>(std::max<int64_t>((chunks + kChunksPerBlock - 1) / kChunksPerBlock, 1), 64);
  store_padding_kernel<<<dim3(unsigned(blocks), unsigned(p.batch)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, out);
}

}  // namespace dllm
