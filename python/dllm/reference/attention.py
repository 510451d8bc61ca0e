"""Plain-PyTorch attention with per-sequence lengths: the reference dllm.ops.attention matches."""

from __future__ import annotations

import torch


def attention(q, k, v, kv_len=None, q_len=None, softmax_scale=None, upcast=True):
    """q [B, Sq, H, D], k and v [B, Sk, Hkv, D]. Keys past kv_len are masked out; output rows past
    q_len, and rows with no key, are zero. upcast=True computes in float64; upcast=False in the
    inputs' dtype, which measures how much error plain PyTorch makes at that precision."""
    dtype = torch.float64 if upcast else q.dtype
    B, Sq, H, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    scale = D**-0.5 if softmax_scale is None else softmax_scale
    qf, kf, vf = (t.to(dtype).transpose(1, 2) for t in (q, k, v))  # [B, heads, S, D]
    kf, vf = kf.repeat_interleave(H // Hkv, 1), vf.repeat_interleave(H // Hkv, 1)
    scores = (qf * scale) @ kf.transpose(-1, -2)  # [B, H, Sq, Sk]
    if kv_len is not None:
        keep = torch.arange(Sk, device=q.device)[None, :] < kv_len.to(q.device)[:, None]
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        vf = vf.masked_fill(~keep[:, None, :, None], 0)  # the op never reads them: NaN there stays out
    probs = torch.softmax(scores.float() if not upcast else scores, -1).nan_to_num(0.0).to(dtype)
    out = (probs @ vf).transpose(1, 2)
    if q_len is not None:
        rows = torch.arange(Sq, device=q.device)[None, :] < q_len.to(q.device)[:, None]
        out = out * rows[:, :, None, None]
    return out
