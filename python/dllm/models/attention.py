"""The one place models call attention: dllm's fused op where it applies, else SDPA.

Layout is ``[B, S, H, D]`` for q and ``[B, Sk, Hkv, D]`` for k and v, the layout of
``dllm.ops.attention`` (non-causal, GQA by head groups). Causal and masked calls, and dtypes or
head sizes the op does not cover, take SDPA. Sq may differ from Sk: a query block attends to a
cached context (Fast-dLLM's KV caches), positions being absolute on both sides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops


def _fused_applies(q: torch.Tensor) -> bool:
    # The op's tensor-core coverage on the GPU: bfloat16/float16 with head dim 64 or 128. On the
    # CPU, dllm's kernel and SDPA's flash path run at parity on full batches (0.9-1.1x either way,
    # bench/results/cpu-2core-2026-11-29/attention*), so models keep SDPA there.
    return q.is_cuda and ops._cuda_kernel_supports(q)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    if not causal and attn_mask is None and _fused_applies(q):
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
