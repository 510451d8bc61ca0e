"""Checks that tests/test_cuda_emulated.py catches bugs: plants one known bug at a time in a
copy of the CUDA kernels (a missing barrier or wait, an off-by-one, a wrong fragment layout) and
reports whether some emulated test failed. Takes about fifteen minutes on 2 cores.

    python tests/cuda_emulator/mutate.py [INDEX ...]

Runs in a temporary git worktree of HEAD, with its own emulator build; the working tree is not
touched. Two barriers are known to survive (the row-loop barriers of sedd_step_kernel and
predict_masked_kernel): each is followed by barriers inside the next row's reductions before any
shared memory is written again, so removing them changes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FWD, BWD, MMA, WG_FWD, WG_BWD, WG, DECODE = (
    f"csrc/kernels/{name}"
    for name in ("attention_fwd.cu", "attention_bwd.cu", "attention_mma.cuh", "attention_fwd_wgmma.cu",
                 "attention_bwd_wgmma.cu", "wgmma.cuh", "attention_decode.cu")
)
DEFERRED = "csrc/torch/deferred_errors.cpp"
PAD, BIND = "csrc/kernels/attention_padding.cu", "csrc/torch/attention_cuda.cpp"
# (file, text, replacement, tests that must catch it)
MUTANTS = [
    (FWD, "    __syncthreads();  // tile j is visible to all", "    // (removed)", "attention"),
    (FWD, "    cp_async_wait_all();\n", "", "attention"),
    (MMA, "(e & 1) >= kn) s[nb][e] = value;", "(e & 1) > kn) s[nb][e] = value;", "attention"),
    (BWD, "    cp_async_wait_all();\n    __syncthreads();\n    if (j + 1 < n_tiles) {",
     "    cp_async_wait_all();\n    if (j + 1 < n_tiles) {", "attention"),
    (MMA, "(((lane >> 3) & 1) << 3), chunk0 + (lane >> 4)));", "((lane >> 4) << 3), chunk0 + ((lane >> 3) & 1)));",
     "attention"),
    (MMA, "a[1] = Elem<D>::pack(acc[2 * kk][2], acc[2 * kk][3]);",
     "a[1] = Elem<D>::pack(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);", "attention"),
    ("csrc/kernels/cuda_rows.cuh", "  __syncthreads();  // scratch may still be read by a previous reduction\n", "",
     "sample_categorical or predict_masked"),
    ("csrc/kernels/commit_tokens.cu", "const bool in = i < end &&", "const bool in = i <= end &&", "commit"),
    ("csrc/kernels/predict_masked.cu", "!(proposal_scored && ordered_key(st.second) < tau)", "true", "predict_masked"),
    ("csrc/kernels/predict_masked.cu", "group_pass(proposal_entropy);", "group_pass(false);", "predict_masked"),
    # a tie in a later batch of the same thread taking the max's index; the margin's second left
    # out of the batch that raises the max; the row's sums left out at temperature 1
    ("csrc/kernels/predict_masked.cu", "const bool raises = b1 > best.v;", "const bool raises = b1 >= best.v;",
     "predict_masked"),
    ("csrc/kernels/predict_masked.cu", "second = fmaxf(fmaxf(second, raises ? best.v : b1), b2);",
     "second = fmaxf(second, b2);", "predict_masked"),
    ("csrc/kernels/predict_masked.cu", "      if (group_sums) mine.add_sums(acc);\n", "", "predict_masked"),
    ("csrc/kernels/sample_categorical.cu", "+ r * p.row_stride * RowView<D>::kElemBytes)",
     "+ int(r * p.row_stride * RowView<D>::kElemBytes))", "2_gib"),  # 32-bit byte offsets
    (FWD, "  allow_dynamic_smem<attention_fwd_kernel<DT, Dim>>(smem);", "", "attention"),  # 80 KB without opt-in
    ("csrc/include/dllm/philox.h", "o = uint64_t(*offset_ptr) + offset_intragraph;", "o = uint64_t(*offset_ptr);",
     "capture"),  # graph replays would repeat their draws
    # the plain seed as the key: row 0 of the first call after manual_seed draws torch's curand blocks
    ("csrc/include/dllm/philox.h", "uint32_t(seed) ^ kDllmKeyDomain,", "uint32_t(seed),", "philox"),
    # the Exp(1) noise without Goldberg's log1p correction: small u lose their relative precision
    ("csrc/include/dllm/philox.h", "(z == 1.0f ? w : -l * (w / (1.0f - z)))", "(z == 1.0f ? w : -l)", "noise"),
    # the wgmma kernels: scores read before their wgmma retired, an unswizzled layout, V / dO / Q
    # read as K-major in the P (or dS) products, a wrong 8-row stride in the descriptors, tiles
    # not aligned to the swizzle atom, a missing barrier before the next tile's loads
    (WG_FWD, "    wg::wait_group<0>();  // both, before any other instruction: see \"Retired at once\" above\n", "",
     "attention and wgmma"),
    (WG, "(((chunk & 7) ^ (row & 7)) << 3)", "((chunk & 7) << 3)", "attention and wgmma"),
    (WG, "mma_async<DT, 64, true>(columns<64>(out", "mma_async<DT, 64, false>(columns<64>(out", "attention and wgmma"),
    (WG, "kStride = kSwizzleAtomBytes >> 4;", "kStride = kSwizzleAtomBytes >> 3;", "attention and wgmma"),
    (WG, "return raw + (kAtom - attn::smem_addr(raw) % kAtom) % kAtom;", "return raw;", "attention and wgmma"),
    (WG, "  fence_proxy_async();\n  __syncthreads();\n", "  fence_proxy_async();\n", "attention and wgmma"),
    # the wgmma backward: a warpgroup reading the other's rows of dO in its dP product
    (WG_BWD, "k_major<kRowsPerCta>(a2, row0, ks)", "k_major<kRowsPerCta>(a2, 0, ks)", "attention and wgmma"),
    # the forward's Q K^T reading the first warpgroup's queries in both warpgroups
    (WG_FWD, "k_major<kBlockM>(sQ, q_row0, ks)", "k_major<kBlockM>(sQ, 0, ks)", "attention and wgmma"),
    # cp.async writes not made visible to wgmma's async-proxy reads
    (WG, "  attn::cp_async_wait_all();\n  fence_proxy_async();\n", "  attn::cp_async_wait_all();\n",
     "attention and wgmma"),
    # the forward's P V reading V_j's buffer
    (WG_FWD, "(o, pf, v_tile(j - 1));", "(o, pf, v_tile(j));", "attention and wgmma"),
    # the softmax scale folded into the exponent: the running maximum's correction left unscaled;
    # a sequence's last key tile left unmasked; the dQ kernel's dS of padded keys not zeroed
    # (harmless until exp(-lse) overflows: inf * a zero-filled K row)
    (MMA, "exp2_ftz((row_max[half] - new_max) * scale_log2)", "exp2_ftz(row_max[half] - new_max)", "attention"),
    (MMA, "  if (key0 + Blocks * 8 <= kn) return;", "  if (key0 < kn) return;", "attention"),
    (BWD, "    mask_keys(s, j * kDqKeys, kn, lane, 0.0f);\n", "", "far_negative"),
    # the wgmma backward: the dK/dV products reading tile it's buffers; the scores read before
    # they retire (both kernels); dQ's product reading K_j
    (WG_BWD, "    issue_gradients(it - 1);", "    issue_gradients(it);", "attention and wgmma"),
    (WG_BWD, "    wg::wait_group<0>();  // all four, before any other instruction (see the note above)\n", "",
     "attention and wgmma"),
    (WG_BWD, "    wg::wait_group<0>();  // all three, before any other instruction (see the note above)\n", "",
     "attention and wgmma"),
    (WG_BWD, "(dq, dsf, k_tile(j - 1));", "(dq, dsf, k_tile(j));", "attention and wgmma"),
    # ping-pong: one buffer too few for K (dQ) or Q / dO (dK/dV), whose K_{j+1} overwrites a tile
    # the lagging warpgroup's products still read; its barrier before dS missing
    (WG_BWD, "constexpr int kDqKBuffers = 3;", "constexpr int kDqKBuffers = 2;", "attention and wgmma"),
    (WG_BWD, "constexpr int kQueryBuffers = 3;", "constexpr int kQueryBuffers = 2;", "attention and wgmma"),
    (WG_BWD, "    load_ahead(j);\n    if (lags) wg::arrive();\n", "    load_ahead(j);\n", "attention and wgmma"),
    # atomic dQ: dS stored without the fence that shows it to wgmma, or without the warpgroup's
    # barrier; the keys past the end not zeroed (inf dS times their zero K row); the second
    # warpgroup multiplying by the first one's K rows; the walk's start rotated past its end;
    # dQ left unscaled; at D = 128 K^T read without the transpose bit, or its second half of d
    # added over the first
    (WG_BWD, "  wg::fence_proxy_async();\n  wg::warpgroup_sync();\n", "  wg::warpgroup_sync();\n", "atomic"),
    (WG_BWD, "  wg::fence_proxy_async();\n  wg::warpgroup_sync();\n", "  wg::fence_proxy_async();\n", "atomic"),
    (WG_BWD, "const uint32_t pair = real ? ds[kk][e] : 0u;", "const uint32_t pair = ds[kk][e];", "atomic"),
    (WG_BWD, "wg::mn_major<kRowsPerCta>(sK, row0 / 16 + ks, 0)", "wg::mn_major<kRowsPerCta>(sK, ks, 0)", "atomic"),
    (WG_BWD, "it + first < steps ? it + first : it + first - steps", "it + first", "atomic"),
    (WG_BWD, "Elem<DT>::pack(a.x * scale, a.y * scale)", "Elem<DT>::pack(a.x, a.y * scale)", "atomic"),
    (WG_BWD, "wg::mma_async<DT, 32, false, true>(", "wg::mma_async<DT, 32, false, false>(", "atomic"),
    (WG_BWD, "token_stride + 64 * half + 16 * w", "token_stride + 16 * w", "atomic"),
    # the conditional rescaling: a stale maximum kept however far a tile's exceeds it (float16 P
    # overflows); the wgmma forward rescaling O by a stale correction
    (MMA, "constexpr float kRescaleThreshold = 8.0f;", "constexpr float kRescaleThreshold = 1e30f;", "climb"),
    (WG_FWD, "    if (rescale) rescale_rows(o, correction);", "    rescale_rows(o, correction);", "attention and wgmma"),
    # a packed sequence running past the tokens left unclamped (the varlen descriptors); zero heads launched
    (FWD, "  if (count > c.tokens - start) count = c.tokens - start;\n", "", "malformed"),
    ("csrc/include/dllm/attention.h", "batch == 0 || heads == 0 ||", "batch == 0 ||", "degenerate"),
    # a range's straddling last chunk left unread, in increasing order and in one call with the
    # first's; a batch's tie going to its higher index
    ("csrc/kernels/cuda_rows.cuh", "(kOrder == Order::kIncreasing) reduce_one_by_one<kLanes>(view, split.inner_hi, hi, tid, f);",
     "(kOrder == Order::kIncreasing) {}", "predict_masked or loss or alignment"),
    ("csrc/kernels/cuda_rows.cuh", "ends = head + (hi - split.inner_hi);", "ends = head;",
     "sedd or sample_categorical or alignment"),
    ("csrc/kernels/cuda_rows.cuh", "    const bool gt = v[e] > top;", "    const bool gt = v[e] >= top;", "alignment or greedy"),
    # predict_masked's unfused pass: a batch of -inf and NaN only, a +inf batch maximum, a NaN
    # sum, and the entropy's clamped sums taken for clean
    ("csrc/kernels/predict_masked.cu", "    if (!(b1 > -kInf)) mine.bad |= any_nan(v);\n", "", "non_finite"),
    ("csrc/kernels/predict_masked.cu", "    mine.bad |= b1 == kInf;\n", "", "non_finite"),
    ("csrc/kernels/predict_masked.cu", "if (st.bad || !(st.s == st.s))", "if (st.bad)", "non_finite"),
    ("csrc/kernels/predict_masked.cu", "    if (entropy) mine.bad |= any_not_below_inf(v);\n", "", "non_finite"),
    # sedd_step's mixture rows: the weight of staying at x left at 0 (log 1), where one thread takes it
    ("csrc/kernels/sedd.cu", "if (g == groups && !s.clip) {", "if (g == groups && s.clip) {", "sedd_step"),
    # the losses' gradient: the incoming gradient's sign or its size left out of sign(ga) * exp(l - exp_ref)
    ("csrc/include/dllm/sedd.h", "gr.ga < 0.0 ? -1.0f : 1.0f", "1.0f", "loss"),
    ("csrc/include/dllm/sedd.h", "float(gr.ref - log(fabs(gr.ga)))", "float(gr.ref)", "loss"),
    # merge's stand-in max for two empty sides left out (an all -inf group's sum NaN)
    ("csrc/kernels/cuda_rows.cuh", "at = m == -kInf ? 0.0f : m,", "at = m,", "sedd or sample_categorical or predict"),
    # the batches (cuda_rows.cuh's for_batches): the next batch never loaded; chunks past the range
    # filled with zeros rather than -inf; a position between a batch's runs taken for one in them;
    # a batch's new maximum not rescaling the running sum
    ("csrc/kernels/cuda_rows.cuh", "    if (c0 + kStep < c_end) load(next, c0 + kStep);\n", "",
     "sedd or predict_masked or sample_categorical"),
    ("csrc/kernels/cuda_rows.cuh", ": minus_inf_chunk<D>();", ": uint4{};", "sedd or predict_masked or sample_categorical"),
    ("csrc/kernels/cuda_rows.cuh", "return offset < kRun ? run * kRun + offset : -1;", "return run * kRun + offset;",
     "sedd or predict_masked or loss"),
    ("csrc/kernels/cuda_rows.cuh", "acc.s = acc.m == -kInf ? 0.0f : acc.s * exp_ftz(acc.m - bm, scale, scale_log2);\n"
     "    acc.m = bm;\n  }\n  acc.s += batch_sum_exp", "acc.s = acc.m == -kInf ? 0.0f : acc.s;\n    acc.m = bm;\n  }\n"
     "  acc.s += batch_sum_exp",
     "sedd or sample_categorical"),
    # sedd_step's pass 1 counting x; the uniform loss summing the -inf filling; predict_masked's
    # fused group masses left untempered
    ("csrc/kernels/sedd.cu", "    drop(v, where.find(x));\n    add_batch_fma", "    add_batch_fma", "sedd"),
    ("csrc/kernels/sedd.cu", "if (e != at && e / run < chunks) sum_l", "if (e != at) sum_l", "loss"),
    ("csrc/kernels/predict_masked.cu", "tempered_log_mass(group_max[g], group_lse[g], row_max, scale)",
     "tempered_log_mass(group_max[g], group_lse[g], row_max, 1.0f)", "predict"),
    # large logits tempered without the row's max subtracted; 1 / T uncapped; a tiny commit
    # probability compared with a 24-bit uniform
    ("csrc/kernels/cuda_rows.cuh", "(group_max - row_max) * scale + __logf(sum)", "group_max * scale + __logf(sum)",
     "large_logits"),
    ("csrc/kernels/predict_masked.cu", ": (v - row_max) * scale;", ": v * scale;", "large_logits"),
    # (sample_categorical's: predict_masked's temperature is clamped to float's smallest normal on
    # the host, so its 1 / T never reaches the cap; a per-row float32 temperature can be subnormal)
    ("csrc/kernels/sample_categorical.cu", "inverse_temperature(temperature)", "1.0f / temperature", "subnormal"),
    ("csrc/kernels/commit_tokens.cu", "uniform53_at(seed", "uniform_at(seed", "commit"),
    # the radix select's digit scan leaving out the neighbouring lane's counts
    ("csrc/kernels/commit_tokens.cu", "    if (lane >= o) through += t;", "    if (lane > o) through += t;", "commit"),
    # RoPE: the second half rotated the wrong way, or written over the first; every head after
    # the first reading the first's pairs
    ("csrc/kernels/rotary.cu", "hi[j] = x2[k][j] * c[j] + x1[k][j] * sn[j];",
     "hi[j] = x2[k][j] * c[j] - x1[k][j] * sn[j];", "rotary"),
    ("csrc/kernels/rotary.cu", "out0 + k * 2 * p.half + p.half, hi);", "out0 + k * 2 * p.half, hi);", "rotary"),
    ("csrc/kernels/rotary.cu", "x0 + k * p.x_head_stride + p.half, x2[k]);", "x0 + p.half, x2[k]);", "rotary"),
    ("csrc/kernels/rotary.cu", "h0 = (pos_group - pos * groups) * kHeads;", "h0 = 0;", "rotary"),
    ("csrc/kernels/rotary.cu", "p.heads - h0 < kHeads ? p.heads - h0 : kHeads;", "kHeads;", "rotary"),
    # adaLN: half a warp's sums lost; every row modulated by the first sequence's factors; the
    # variance taken about zero
    ("csrc/kernels/cuda_rows.cuh", "for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);",
     "for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);", "adaln"),
    ("csrc/kernels/adaln.cu", "const int64_t b = r / p.seq, first", "const int64_t b = 0, first", "adaln"),
    ("csrc/kernels/adaln.cu", "sq += (v[j] - mean) * (v[j] - mean);", "sq += v[j] * v[j];", "adaln"),
    ("csrc/kernels/adaln.cu", "sq += (v[c][j] - mean) * (v[c][j] - mean);", "sq += v[c][j] * v[c][j];", "adaln"),
    ("csrc/kernels/adaln.cu", "if (dim <= 32 * kChunks * kVec) {", "if (dim <= 64 * kChunks * kVec) {", "adaln"),
    # the split-key decoding kernels: the barriers around the shared scores, a chunk's partial end,
    # the merge's rescaling, the group reduction, the GQA head
    (DECODE, "  __syncthreads();\n\n  // The chunk's softmax", "\n  // The chunk's softmax", "decoding"),
    (DECODE, "  __syncthreads();\n\n  // The weighted sum", "\n  // The weighted sum", "decoding"),
    (DECODE, "s_scores[i][j] = j < keys ? dot : -INFINITY;", "s_scores[i][j] = dot;", "decoding"),
    (DECODE, "const float factor = exp2f(stats[c].x - m);", "const float factor = 1.0f;", "decoding"),
    (DECODE, "for (int offset = kLanes / 2; offset > 0; offset /= 2)", "for (int offset = kLanes / 4; offset > 0; offset /= 2)",
     "decoding"),
    (DECODE, "const int hk = int(h / (p.heads / p.kv_heads));", "const int hk = int(h % p.kv_heads);", "decoding"),
    (DECODE, "for (int c = 0; c < chunks; ++c) m = fmaxf(m, stats[c].x);", "m = stats[0].x;", "decoding"),
    # the tensor-core forward split into key chunks: a chunk's keys from the sequence's start, chunks
    # running into the next one's keys, a statistic in raw score units, a row sum of one lane pair,
    # the merge counting chunks of the decoding kernels' size
    (FWD, "k0 = p.k_start[b] + first;", "k0 = p.k_start[b];", "query_block"),
    (FWD, "keys - first > split.chunk_keys ? split.chunk_keys : keys - first", "false ? split.chunk_keys : keys - first",
     "query_block"),
    (FWD, "float2{row_max[half] * scale_log2, row_sum[half]}", "float2{row_max[half], row_sum[half]}", "query_block"),
    (FWD, "    row_sum[half] += __shfl_xor_sync(0xffffffffu, row_sum[half], 2);\n    const int row = row0 + g",
     "    const int row = row0 + g", "query_block"),
    (DECODE, "int((kn + w.chunk_keys - 1) / w.chunk_keys)", "int((kn + 127) / 128)", "query_block"),
    # the MDLM loss's backward leaving out the last column instead of the mask's
    ("csrc/kernels/sedd.cu", "const int64_t skip = md ? p.mask_id : xt;", "const int64_t skip = md ? p.vocab - 1 : xt;",
     "masked_diffusion_loss"),
    # the loss backward indexing with tokens no forward checked, or storing 0 where they give NaN
    ("csrc/include/dllm/sedd.h", "gr.tokens_ok = loss_tokens_ok(p, xt, x0);", "gr.tokens_ok = x0 >= 0;",
     "backward_fills"),
    ("csrc/kernels/sedd.cu", "    if (!gr.tokens_ok)\n#pragma unroll\n", "    if (false)\n#pragma unroll\n", "backward_fills"),
    # the loss forward flagging a NaN in the column it leaves out
    ("csrc/kernels/sedd.cu", "      drop(v, at);  // the skipped column", "      nan |= any_nan(v);\n      drop(v, at);  //",
     "losses_ignore"),
    # the kernels' rules and checks beyond their tested defaults: Fast-dLLM's progress guarantee, long
    # shifts, the per-row checks read back as errors, rows marked under capture, the padded head's
    # loss gradient, draws only when drawing, empty launches, misaligned vector loads
    ("csrc/kernels/commit_tokens.cu", "conf[i] >= p.threshold || i == always", "conf[i] >= p.threshold", "commit"),
    ("csrc/kernels/commit_tokens.cu", "if (start < 0 || start > end || end > L) status", "if (start < 0 || end > L) status",
     "commit"),
    ("csrc/kernels/predict_masked.cu", "(i - p.logits_shift > 0 ? i - p.logits_shift : 0)",
     "(i - p.logits_shift > 0 ? i - (p.logits_shift > 0) : 0)", "predict_masked"),
    ("csrc/kernels/sample_categorical.cu", "|| temperature == kInf", "", "errors"),
    ("csrc/kernels/predict_masked.cu", "if (token_in < 0 || token_in >= p.vocab) report_error",
     "if (token_in < 0) report_error", "errors"),
    # an L2 prefetch a chunk short of its last byte's 16: misaligned, which the hardware refuses
    ("csrc/kernels/cuda_rows.cuh", "uint32_t(s.end - s.begin) * 16u)", "uint32_t(s.end - s.begin) * 16u - 8u)",
     "l2_prefetch"),
    # ... a later row past the last one taken as the last, a later absorbing row prefetched unmasked
    ("csrc/kernels/cuda_rows.cuh", "return next < rows ? next : rows;", "return next < rows ? next : rows - 1;",
     "l2_prefetch"),
    ("csrc/kernels/sedd.cu", "(p.graph != SeddGraph::kAbsorb || p.x[later] == K - 1)", "true", "l2_prefetch"),
    # the first passes' rings (DLLM_ASYNC_COPIES): a batch read before its copies landed (by
    # warp groups, in one range), a copy into the slot about to be read (both), straddling end
    # elements dropped (a range's first, all of both ends, the last ones), the next group's first chunk taken
    # as if the row were 16-byte aligned, a slot past the range's chunks read
    ("csrc/kernels/cuda_async_rows.cuh", "async_wait_own<kAsyncStages - 1>();  // this batch's copies\n      reduce_slots",
     "async_wait_own<kAsyncStages>();\n      reduce_slots", "async_copies"),
    ("csrc/kernels/cuda_async_rows.cuh", "async_wait_own<kAsyncStages - 1>();  // this batch's copies\n    reduce_slots",
     "async_wait_own<kAsyncStages>();\n    reduce_slots", "async_copies"),
    ("csrc/kernels/cuda_async_rows.cuh", "copy_slots<32>(view, slots, stage == 0 ? kAsyncStages - 1 : stage - 1, pc, e);",
     "copy_slots<32>(view, slots, stage, pc, e);", "async_copies"),
    ("csrc/kernels/cuda_async_rows.cuh", "slots, stage == 0 ? kAsyncStages - 1 : stage - 1, pc, c_end);",
     "slots, stage, pc, c_end);", "async_copies"),
    ("csrc/kernels/cuda_async_rows.cuh", "if (offset >= 0) {", "if (offset > 0) {", "async_copies"),
    ("csrc/kernels/cuda_async_rows.cuh", "value = view.at(lo + offset);", "value = -kInf;", "async_copies"),
    ("csrc/kernels/cuda_async_rows.cuh", "      reduce_one_by_one<kLanes>(view, view.split(lo, hi).inner_hi, hi, tid, f);\n", "",
     "async_copies"),
    ("csrc/kernels/cuda_async_rows.cuh", "pc = (g + kWarps) * kGroupChunks + (pc & (kStep - 1));",
     "pc = (g + kWarps) * kGroupChunks + (threadIdx.x & 31);", "async_copies"),
    ("csrc/kernels/cuda_async_rows.cuh", "c0 + kLanes * u < c_end ? slots", "c0 + kLanes * u <= c_end ? slots",
     "async_copies"),
    ("csrc/kernels/sedd.cu", "if (x < 0 || x >= K) return finish(-1, kSeddBadToken);",
     "if (x < 0) return finish(-1, kSeddBadToken);", "errors"),
    ("csrc/kernels/sedd.cu", "      else if (xt == p.mask_id && x0 == p.mask_id) status = kSeddMaskTarget;\n", "", "errors"),
    ("csrc/kernels/sedd.cu", "i < K; i += kThreads)\n        grad[i]", "i + 1 < K; i += kThreads)\n        grad[i]",
     "padded_head_rows"),
    # a mixture row's token drawn by its raw log-weight: the Gumbel noise rounded away near 1e7
    ("csrc/kernels/sedd.cu", "  if (!clip) return l - ref;", "  if (!clip) return l;", "far_from_zero"),
    ("csrc/kernels/sedd.cu", "p.x_next[r] = status == kSeddOk ? token : -1;", "p.x_next[r] = status == kSeddOk ? token : x;",
     "capture"),
    ("csrc/torch/unmask_cuda.cpp", "async_copies();\n  call.params.rng = cuda_rng_state(generator, call.random);",
     "async_copies();\n  call.params.rng = cuda_rng_state(generator);", "without_draws"),
    ("csrc/kernels/predict_masked.cu", "  if (positions == 0) return;\n", "", "empty_inputs"),
    ("csrc/kernels/rotary.cu", "p.x_head_stride % kVec == 0 &&", "", "16_byte"),
    # the streaming passes' FFMA exponent: its rounding's correction, the huge-scale branch, the
    # NaN among -inf, SEDD's x and the mask read apart; the attention's unfilled outputs
    ("csrc/kernels/cuda_rows.cuh", "(part[2] + part[3])) * x.corr;", "(part[2] + part[3]));",
     "large_logits"),
    ("csrc/kernels/cuda_rows.cuh", "if (fabsf(ms) < 0x1p31f) return", "if (fabsf(ms) < kInf) return", "tiny_temperatures"),
    ("csrc/kernels/sample_categorical.cu", "if (!(row.s == row.s)) return", "if (false) return", "non_finite"),
    ("csrc/kernels/cuda_rows.cuh", "if (any_nan(v)) acc = MaxSum{kNaN, kNaN};", "", "non_finite"),
    ("csrc/kernels/sedd.cu", "scratch.x_finite = l_x < kInf;", "scratch.x_finite = true;", "non_finite"),
    ("csrc/kernels/sedd.cu", "if (!scratch.x_finite || !(row_acc.s == row_acc.s)) return", "if (!scratch.x_finite) return",
     "non_finite"),
    ("csrc/kernels/predict_masked.cu", "  if (threadIdx.x == 0 && mask < vocab) mine.bad |= !(view.at(mask) < kInf);\n", "",
     "non_finite"),
    ("csrc/kernels/cuda_rows.cuh", "__device__ __forceinline__ float log2e_times(float scale) { return fminf(scale * kLog2e, "
     "kMaxFloat); }", "__device__ __forceinline__ float log2e_times(float scale) { return scale * kLog2e; }", "subnormal"),
    ("csrc/torch/attention.cpp", "!q_len && !kv_len && heads > 0", "!q_len && heads > 0", "attention_never_reads_keys"),
    # a padded batch's lengths taken unclamped; its key starts placed at the queries' stride
    ("csrc/include/dllm/attention.h", "    return n < 0 ? 0 : n > max ? max : n;", "    return n;", "clamps_lengths"),
    ("csrc/include/dllm/attention.h", "k_start[b] : b * max_k;", "k_start[b] : b * max_q;", "clamps_lengths"),
    # the merge leaving rows without work unwritten (the binding no longer fills them): all, or a
    # padded batch's past its queries
    (DECODE, "    if (i < qn || (p.q_start == nullptr && i < p.max_q)) {", "    if (false) {", "attention"),
    (DECODE, "    if (i < qn || (p.q_start == nullptr && i < p.max_q)) {", "    if (i < qn) {", "attention"),
    # the mma.sync forward's copy of a padded batch's descriptors: q_len ignored, keys at the queries'
    # stride; the split launch's merge given that copy, which leaves the padding's rows unstored
    (FWD, "  d[p.batch + b] = p.q_size(b);", "  d[p.batch + b] = p.max_q;", "attention"),
    (FWD, "  d[2 * p.batch + b] = p.k_begin(b);", "  d[2 * p.batch + b] = p.q_begin(b);", "attention"),
    (FWD, "  attention_merge_chunks_cuda(p, workspace,", "  attention_merge_chunks_cuda(a, workspace,", "attention"),
    # a varlen sequence's start taken below 0, its count below 0 (cu_seqlens unchecked on CUDA)
    (FWD, "  start = lo < 0 ? 0 : lo > c.tokens ? c.tokens : lo;", "  start = lo > c.tokens ? c.tokens : lo;",
     "cu_seqlens"),
    (FWD, "  count = n < 0 ? 0 : n > c.max_seqlen ? c.max_seqlen : n;", "  count = n > c.max_seqlen ? c.max_seqlen : n;",
     "cu_seqlens"),
    # the rows without work: a sequence without keys keeping its query rows unstored, one without
    # queries its key gradients; lse stored as 0; the gaps after sequences, and the rows before the
    # first, unstored; a varlen batch's decoding or split launch taken as storing every row;
    # neither launch made
    (PAD, "p.q_begin(b + 1), kn > 0),", "p.q_begin(b + 1), true),", "attention"),
    (PAD, "p.k_begin(b + 1), qn > 0 && p.heads > 0),", "p.k_begin(b + 1), p.heads > 0),", "attention"),
    (PAD, "rows.first + i % n] = -INFINITY;", "rows.first + i % n] = 0.0f;", "rows_without_work"),
    (PAD, "return worked ? Rows{end, next}", "return worked ? Rows{end, end}", "attention"),
    (PAD, "Rows{0, b == 0 ? p.q_begin(0) : 0}", "Rows{0, 0}", "varlen_rows_without_work"),
    (PAD, "Rows{0, b == 0 ? p.k_begin(0) : 0}", "Rows{0, 0}", "varlen_rows_without_work"),
    (BIND, "!p.launches_nothing() && p.q_start == nullptr;", "!p.launches_nothing();", "varlen_rows_without_work"),
    (BIND, "  if (call.unfilled_outputs && !call.every_row_written && !merged)\n",
     "  if (false)\n", "attention"),
    (BIND, "  if (call.fwd.unfilled_outputs && !call.fwd.every_row_written)\n", "  if (false)\n", "attention"),
    # errors found by the kernels: a call's own not raised once arrived, or marked as an earlier
    # call's; commit_tokens not raising what arrived; raise_pending_errors not waiting; the queue
    # kept after an error; a token read back from an x updated since
    (DEFERRED, "  raise_taken(/*wait=*/false, UINT64_MAX, id);\n", "", "read_back_like"),
    (DEFERRED, "if (p.id != own_id)\n", "if (true)\n", "read_back_like"),
    ("csrc/torch/unmask_cuda.cpp", "  raise_arrived_errors();  // a sampler's step calls predict_masked, then this\n", "",
     "later_call"),
    (DEFERRED, "(wait ? word->wait() : word->arrived())", "word->arrived()", "later_call"),
    (DEFERRED, "      q.pending.clear();\n", "", "later_call"),
    ("csrc/torch/unmask_cuda.cpp", "x._version() != version);", "false);", "bad_token_raised_later"),
]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tests"))
    from mutation import run_mutants, selected_indices

    sys.exit(run_mutants(MUTANTS, selected_indices(sys.argv[1:], len(MUTANTS), __doc__),
                         pytest_args=lambda tests: ["tests/test_cuda_emulated.py", "-k", tests]))
