// Bidirectional (non-causal) attention with per-sequence lengths, forward and backward.
//
// Every layout is described the same way: q, k, v, out are [tokens, heads, D] with token and
// head strides, and sequence b owns query tokens [q_begin(b), q_begin(b) + q_size(b)) and key
// tokens [k_begin(b), k_begin(b) + k_size(b)). A packed varlen batch gives them as arrays made
// from cu_seqlens; a padded batch [B, S, H, D] has q_begin(b) = b * S and q_size(b) = q_len[b]
// (or S), worked out where they are read, so that no kernel runs ahead of the attention's to
// write them (but for the mma.sync forward, which reads arrays: one small kernel of its own makes them).
// Keys past k_size are never read (no mask tensor exists); query rows in a sequence's padding
// are not computed and their output is zero.
#pragma once
#include <cstdint>

#include "dllm/common.h"

namespace dllm {

struct AttentionParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // [heads, q_tokens] log-sum-exp of the scaled scores; -inf for empty rows
  DType dtype = DType::kBFloat16;
  int64_t batch = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int64_t q_tokens = 0, k_tokens = 0;
  // Upper bounds of q_count / k_count. CUDA: at most 2^31 - 256 (the binding refuses more), which
  // keeps the kernels' positions within a sequence (tile offsets, masks, counts) in int; every
  // address is 64-bit (token and head offsets are int64 products).
  int64_t max_q = 0, max_k = 0;
  int64_t q_token_stride = 0, q_head_stride = 0;
  int64_t k_token_stride = 0, k_head_stride = 0;
  int64_t v_token_stride = 0, v_head_stride = 0;
  int64_t o_token_stride = 0, o_head_stride = 0;
  // Varlen (and padded, inside the mma.sync forward): int64 [batch] arrays, already clamped. Padded:
  // null, sequence b starting at b * max_q (b * max_k), of q_len[b] (k_len[b]) queries (keys)
  // clamped to [0, max_q] ([0, max_k]) here, as on CUDA a check would synchronise, or of max_q
  // (max_k) where q_len (k_len) is null too.
  const int64_t* q_start = nullptr;
  const int64_t* q_count = nullptr;
  const int64_t* k_start = nullptr;
  const int64_t* k_count = nullptr;
  const void* q_len = nullptr;  // [batch] int32 or int64 (q_len_int32), as the caller gave it
  const void* k_len = nullptr;
  bool q_len_int32 = false, k_len_int32 = false;
  float scale = 1.0f;

  DLLM_HD_MEMBER int64_t q_begin(int64_t b) const { return q_start != nullptr ? q_start[b] : b * max_q; }
  DLLM_HD_MEMBER int64_t k_begin(int64_t b) const { return k_start != nullptr ? k_start[b] : b * max_k; }
  // Nothing to compute: a launch with a zero grid dimension is an error on a GPU.
  DLLM_HD_MEMBER bool launches_nothing() const { return batch == 0 || heads == 0 || max_q == 0 || max_k == 0; }
  DLLM_HD_MEMBER int64_t q_size(int64_t b) const { return size(q_count, q_len, q_len_int32, b, max_q); }
  DLLM_HD_MEMBER int64_t k_size(int64_t b) const { return size(k_count, k_len, k_len_int32, b, max_k); }

 private:
  DLLM_HD_MEMBER static int64_t size(const int64_t* count, const void* len, bool int32, int64_t b, int64_t max) {
    if (count != nullptr) return count[b];
    if (len == nullptr) return max;
    const int64_t n = int32 ? int64_t(static_cast<const int32_t*>(len)[b]) : static_cast<const int64_t*>(len)[b];
    return n < 0 ? 0 : n > max ? max : n;
  }
};

struct AttentionGradParams {
  AttentionParams fwd;          // q, k, v, out, lse as in the forward
  const void* dout = nullptr;   // like out
  int64_t do_token_stride = 0, do_head_stride = 0;
  void* dq = nullptr;           // like q (contiguous [q_tokens, heads, D])
  void* dk = nullptr;           // like k (contiguous [k_tokens, kv_heads, D])
  void* dv = nullptr;           // like v (contiguous [k_tokens, kv_heads, D])
};

// CPU: the forward over (sequence, head) pairs [begin, end) of batch * heads, and the backward
// over (sequence, kv head) pairs [begin, end) of batch * kv_heads.
void attention_forward_cpu(const AttentionParams& p, int64_t begin, int64_t end);
void attention_backward_cpu(const AttentionGradParams& p, int64_t begin, int64_t end);

// CUDA (head_dim 64 or 128, bfloat16 or float16), asynchronously on `stream` (a cudaStream_t).
// All pointers are device pointers; q, k, v, out and dout 16-byte aligned. Rows without work are
// not written: attention_store_padding_cuda stores them beforehand (but where the merge of a
// padded batch's decoding or split launch stores every row, below).
// `delta` is float32 scratch of lse's shape [heads, q_tokens].
// The mma.sync forward reads a padded batch's starts and counts from arrays (its 128 registers at
// D = 64 have no room to work them out): `descriptors`, int64 scratch of
// attention_descriptor_count(p) elements (none for a varlen p, whose arrays it reads), receives them.
int64_t attention_descriptor_count(const AttentionParams& p);
// The outputs whose rows without work attention_store_padding_cuda stores: query rows no sequence
// holds (a padded batch's past q_size) or of a sequence without keys, as zeros (`queries`: out or
// dq, [q_tokens, heads, D] contiguous) and -inf (`lse`); key rows no sequence holds or of a
// sequence without queries, as zeros (`keys`: dk and dv, [k_tokens, kv_heads, D] contiguous).
// Any may be null. It runs before the attention kernels: where a malformed cu_seqlens makes
// sequences overlap, it also stores rows that they write.
struct AttentionPadding {
  void* queries = nullptr;
  float* lse = nullptr;
  void* keys[2] = {nullptr, nullptr};
};
void attention_store_padding_cuda(const AttentionParams& p, const AttentionPadding& out, void* stream);
// A varlen batch's q_start, q_count, k_start, k_count (each [batch] int64, one after the other in
// `descriptors`) from cu_seqlens ([batch + 1], int32 or int64 as flagged), in one kernel. Nothing
// is checked (a check would synchronise): starts are clamped to [0, tokens] and counts to
// [0, max_seqlen] and to the tokens after the start, so a malformed cu_seqlens gives wrong
// attention but never reads or writes outside q, k, v and out.
struct CuSeqlens {
  const void* cu = nullptr;
  bool int32 = false;
  int64_t tokens = 0, max_seqlen = 0;
};
void attention_varlen_descriptors_cuda(CuSeqlens q, CuSeqlens k, int64_t batch, int64_t* descriptors, void* stream);
void attention_forward_cuda(const AttentionParams& p, int64_t* descriptors, void* stream);
// delta = rowsum(dO * O), the backward's first step (part of attention_backward_cuda).
void attention_delta_cuda(const AttentionGradParams& g, float* delta, void* stream);
// The forward and backward on Hopper's wgmma instruction, for compute capability 9.0 only; they
// exist in builds whose architectures include 9.0 (compiled for sm_90a). Same contracts as above.
// `stagger` runs a CTA's two warpgroups half a tile apart (ping-pong) instead of in lock step.
// `dq_accum` (or null): zero-filled float32 scratch of dq's shape, into which the dK/dV kernel
// adds dQ with atomics, instead of a dQ kernel recomputing the scores; a last pass then writes all
// of dq (zeros where no query has keys), which therefore needs no zero fill.
void attention_forward_wgmma_cuda(const AttentionParams& p, bool stagger, void* stream);
void attention_backward_wgmma_cuda(const AttentionGradParams& g, float* delta, bool stagger, float* dq_accum,
                                   void* stream);
void attention_backward_cuda(const AttentionGradParams& g, float* delta, void* stream);

// Forwards with each sequence's keys split into chunks across CTAs (FlashDecoding), for few
// queries over many keys, where one CTA per query tile would leave most SMs idle. Each chunk's
// unnormalised output and (maximum, sum) go to float32 scratch of
// attention_chunk_workspace_floats(p, chunks) elements; attention_merge_chunks_cuda merges them
// into out and lse, storing every row of a padded batch (zeros and -inf where there is no work;
// of a varlen batch, those of its sequences). Same contract as attention_forward_cuda otherwise.
int64_t attention_chunk_workspace_floats(const AttentionParams& p, int64_t chunks);
void attention_merge_chunks_cuda(const AttentionParams& p, float* workspace, int64_t chunks, int64_t chunk_keys,
                                 void* stream);
// A decoding step (max_q <= kDecodeQueries): CUDA-core kernels, attention_decode_chunks(p) chunks.
constexpr int64_t kDecodeQueries = 4;
int64_t attention_decode_chunks(const AttentionParams& p);
void attention_decode_cuda(const AttentionParams& p, float* workspace, void* stream);
// A query block (max_q <= kSplitQueries, as Fast-dLLM's cached steps feed): the tensor-core
// forward over key chunks of chunk_keys keys (a multiple of 64). attention_key_split picks them
// for a card with `sms` SMs; chunks == 0 where one pass already fills the card or the keys are few.
constexpr int64_t kSplitQueries = 64;
struct KeySplit {
  int64_t chunks = 0, chunk_keys = 0;
};
KeySplit attention_key_split(const AttentionParams& p, int sms);
void attention_forward_split_cuda(const AttentionParams& p, KeySplit split, float* workspace, int64_t* descriptors,
                                  void* stream);

}  // namespace dllm
