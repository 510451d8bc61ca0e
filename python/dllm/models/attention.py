"""The one place models call attention: dllm's fused op for padded batches (per-row lengths) and
KV-cache decoding, and on the GPU for query blocks over a cached context; SDPA for full
self-attention and for causal and masked calls.

Layout is ``[B, S, H, D]`` for q and ``[B, Sk, Hkv, D]`` for k and v, the layout of
``dllm.ops.attention`` (non-causal, GQA by head groups). Causal and boolean-masked calls, and dtypes
or head sizes the op does not cover, take SDPA. Sq may differ from Sk: a query block attends to a
cached context (Fast-dLLM's KV caches), positions being absolute on both sides. Padded batches
(ragged prompts) reach the op as per-row lengths through :class:`RaggedBatch`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops


def _fused_applies(q: torch.Tensor, k: torch.Tensor) -> bool:
    # Whether an unpadded, non-causal call takes dllm's op: on the GPU, where its kernels cover q
    # (bfloat16/float16, head dim 64 or 128), for a query block over a longer cached context
    # (Fast-dLLM's caches; the op splits the keys when its query tiles alone would leave most SMs
    # idle). Eager calls at those sizes measured 0.21-0.69x SDPA on the H200, mostly host time
    # (bench/results/h200-2026-12-04/run2-d583a3b/attention_decode/): bench/attention_decode.py's
    # CUDA-graph rows, the way the cached steps run, decide this routing. Full self-attention takes SDPA there: its
    # default (cuDNN) backend ran 1.6-2.1x faster than dllm's fastest kernels forward and 1.9-2.3x
    # forward + backward at head dims 64 and 128 on the H200
    # (bench/results/h200-2026-11-30/run3-0a8c228/attention*). On the CPU full batches keep SDPA
    # too, as the KV-cache and causal calls do, so that cached and uncached forwards of unpadded
    # rows round alike (padded rows take dllm's kernel with lengths uncached, SDPA with a mask cached):
    # dllm's kernel measured 0.93-1.06x SDPA's flash path there on 2026-11-29 and 1.14-1.57x on
    # 2026-11-30 (bench/results/cpu-2core-*/attention), too unsteady a gain for that.
    return q.is_cuda and q.shape[1] != k.shape[1] and ops.cuda_kernel_supports(q)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              attn_mask: torch.Tensor | None = None, kv_len: torch.Tensor | None = None) -> torch.Tensor:
    """``kv_len``: int32 ``[B]``, the keys of each row that are real (the rest is padding); it
    takes dllm's op, which skips padded keys instead of masking them (on CUDA SDPA leaves its
    flash kernel for any mask; on the CPU the op ran 1.34-1.89x faster than SDPA with a mask,
    bench/results/cpu-2core-2026-11-30/attention*)."""
    if kv_len is not None:
        if causal or attn_mask is not None:
            raise ValueError("kv_len is the bidirectional path's padding; a causal or masked call passes its "
                             "padding inside attn_mask")
        if q.dtype == torch.float64:  # a dtype the op leaves out: SDPA with the lengths as a key mask
            return ops.sdpa_attention(q, k.to(q.dtype), v.to(q.dtype), kv_len, None, q.shape[-1] ** -0.5)
        return ops.attention(q, k.to(q.dtype), v.to(q.dtype), kv_len=kv_len)
    if not causal and attn_mask is None and _fused_applies(q, k):
        # Under autocast the projections give a bf16 q while a KV cache may hold float32 keys: cast
        # them to q's dtype, as SDPA under autocast would.
        return ops.attention(q, k.to(q.dtype), v.to(q.dtype))
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = qt.shape[1] != kt.shape[1]
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=attn_mask, is_causal=causal and attn_mask is None,
                                         enable_gqa=gqa)
    return out.transpose(1, 2)


def key_padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, Sk]`` bool (True on real tokens) as an SDPA mask ``[B, 1, 1, Sk]``: padded keys are never attended."""
    return None if attention_mask is None else attention_mask.bool()[:, None, None, :]


class RaggedBatch:
    """A padded batch laid out for attention with per-row lengths: each row's real tokens move to
    its front, in order, and its padding to its back, so every layer passes the row's length
    (``lengths``, for ``kv_len``) instead of a boolean mask. Tokens keep their positions
    (``positions``, for RoPE) and the output is moved back (:meth:`restore`), so the model
    computes what it computes on the unmoved batch with a key-padding mask, any mask pattern.
    Sorting the mask, not checking its pattern, keeps the layout free of host synchronisation,
    so a step with it can be captured in a CUDA graph."""

    def __init__(self, attention_mask: torch.Tensor, tokens: torch.Tensor):
        if attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask must have the tokens' shape {tuple(tokens.shape)}, got "
                             f"{tuple(attention_mask.shape)}")
        mask = attention_mask.bool()
        self.positions = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # [B, S]: real ones first
        self.lengths = mask.sum(-1, dtype=torch.int32)

    def _index(self, h: torch.Tensor) -> torch.Tensor:
        return self.positions.view(*self.positions.shape, *[1] * (h.dim() - 2)).expand_as(h)

    def arrange(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, S, ...]`` in the batch's order -> real tokens first."""
        return h.gather(1, self._index(h))

    def restore(self, h: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`arrange`."""
        return torch.empty_like(h).scatter_(1, self._index(h), h)


def padding_layout(attention_mask: torch.Tensor | None, tokens: torch.Tensor, rotary, start: int, *, lengths: bool):
    """What a model's layers take for the tokens at ``[start, start + S)`` and their padding:
    ``(ragged, cos, sin, key_mask, kv_len)``. With ``lengths`` (bidirectional, no KV cache) a
    padded batch becomes a :class:`RaggedBatch` (``ragged``; its ``arrange`` and ``restore`` wrap the
    layers) and per-row lengths; otherwise the padding is a key-padding mask."""
    if attention_mask is None or not lengths:
        cos, sin = rotary(start, tokens.shape[1], tokens.device)
        return None, cos, sin, key_padding_mask(attention_mask), None
    ragged = RaggedBatch(attention_mask, tokens)
    cos, sin = rotary.at(ragged.positions + start)
    return ragged, cos, sin, None, ragged.lengths
