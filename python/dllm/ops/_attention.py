"""Bidirectional attention over padded and packed batches: the ops, their fakes, autograd, and
the SDPA path for what the CUDA kernels do not take."""

from __future__ import annotations

import math

import torch

from .._limits import FLOAT32_MAX
from ._checks import (_as_int, _call, _check_dtype, _check_integer, _may, _not_bool, _one_device,
                      _outside_float32, _same_shape)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    kv_len: torch.Tensor | None = None,
    q_len: torch.Tensor | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Bidirectional (non-causal) attention over right-padded batches, differentiable.

    Args:
        q: ``[B, Sq, H, D]``; k, v: ``[B, Sk, Hkv, D]`` with H a multiple of Hkv (GQA / MQA).
            float32, bfloat16 or float16 (float32 on CUDA goes to SDPA, see below). Sq may differ
            from Sk (a query block attending to a cached context). The forward reads views in
            place where each tensor's tokens flatten to one stride, D is contiguous and rows start
            on 16-byte boundaries (q, k, v sliced from one fused projection); it copies the rest.
        kv_len: int ``[B]``, valid keys per sequence: keys past it are never read (no mask).
        q_len: int ``[B]``, valid queries per sequence: output rows past it are zero.
        softmax_scale: the factor of the scores, positive (the kernels take each row's maximum of
            the raw scores as that of the scaled ones); default ``1 / sqrt(D)``.

    Returns:
        ``[B, Sq, H, D]``, like q. The backward saves only the output and the per-row
        log-sum-exp. Lengths outside ``[0, S]`` raise on the CPU and are clamped on CUDA (checking
        would synchronise).

    Kernels: on the CPU a tiled online softmax with a fused backward; on CUDA FlashAttention-2
    style tensor-core kernels (``mma.sync``, sm_80+) for bfloat16 / float16 with D = 64 or 128,
    or on compute capability 9.0 their Hopper ``wgmma`` versions (the default there;
    ``DLLM_ATTENTION_KERNEL=mma`` picks mma.sync), and a deterministic backward (no atomics). Other head dimensions, float32 and GPUs older
    than sm_80 run torch SDPA with a key-padding mask instead, with the same semantics.
    """
    scale = _softmax_scale(q, softmax_scale, "attention")
    if q.is_cuda and not cuda_kernel_supports(q):
        return sdpa_attention(q, k, v, kv_len, q_len, scale)
    out, _ = _call(torch.ops.dllm.attention_forward, q, k, v, kv_len, q_len, None, None, 0, 0, scale)
    return out


def _softmax_scale(q: torch.Tensor, softmax_scale: float | None, op: str) -> float:
    if softmax_scale is None:
        if q.dim() == 0 or q.shape[-1] == 0:
            raise ValueError(f"{op}: q must have a positive head dimension, got shape {tuple(q.shape)}")
        return q.shape[-1] ** -0.5
    # comparisons only: under torch.compile a second value makes softmax_scale a symbolic float,
    # which math.isfinite cannot take (a graph break, an error under fullgraph)
    _not_bool(softmax_scale, op, "softmax_scale", "a float or None")
    try:
        valid = 0 < softmax_scale < math.inf
    except TypeError:  # Python's own names no argument
        raise TypeError(f"{op}: softmax_scale must be a float or None, "
                        f"got {type(softmax_scale).__name__}") from None
    if not valid:
        raise ValueError(f"{op}: softmax_scale must be positive and finite, got {softmax_scale}")
    if softmax_scale > FLOAT32_MAX:  # the kernels scale in float32: an infinite scale makes NaN
        raise _outside_float32(op, "softmax_scale", softmax_scale)
    return float(softmax_scale)


# Decided once at import (dllm.ops loads the library before its modules), so that torch.compile
# reads a constant instead of tracing a dispatcher query.
_HAS_CUDA_ATTENTION = torch._C._dispatch_has_kernel_for_dispatch_key("dllm::attention_forward", "CUDA")
CUDA_HEAD_DIMS = (64, 128)


def cuda_kernel_supports(q: torch.Tensor) -> bool:
    """Whether dllm's CUDA attention kernels take q (a CUDA build, bfloat16 / float16, D 64 or 128,
    compute capability 8.0 or newer)."""
    return (_HAS_CUDA_ATTENTION and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] in CUDA_HEAD_DIMS
            # get_device_properties is constant-folded by torch.compile
            and torch.cuda.get_device_properties(q.device).major >= 8)


def _fallback_lengths(t, name: str, q: torch.Tensor, limit: int):
    """A length tensor on q's device, clamped as the kernels clamp it, for the SDPA path (whose
    mask would otherwise index with lengths past S); _check_attention checked its shape and dtype."""
    if t is None:
        return None
    if t.device != q.device:
        raise RuntimeError(f"attention: {name} is on {t.device} but q is on {q.device}")
    return t.clamp(0, limit)


def sdpa_attention(q, k, v, kv_len, q_len, scale):
    """What :func:`attention` runs on CUDA for shapes the kernels do not take (see
    ``cuda_kernel_supports``): torch SDPA with a key-padding mask, same semantics (rows past
    q_len and rows without keys are zero, lengths clamped to [0, S] as the kernels do)."""
    # the kernels' checks and messages, which SDPA's own would replace (its dtype error is a RuntimeError)
    _check_attention(q, k, v, kv_len, q_len, None, None, 0, 0, scale, kernel_dtype=False)
    B, Sq, H, _ = q.shape
    Sk = k.shape[1]
    kv_len = _fallback_lengths(kv_len, "kv_len", q, Sk)
    q_len = _fallback_lengths(q_len, "q_len", q, Sq)
    mask = None
    if kv_len is not None:
        # A sequence without keys attends to everything and is zeroed below: no NaN rows, which
        # some SDPA backends return (and differentiate) for a fully masked row.
        mask = (torch.arange(Sk, device=q.device)[None, :] < kv_len[:, None]) | (kv_len == 0)[:, None]
        mask = mask[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale,
        enable_gqa=H != k.shape[2]).transpose(1, 2)
    keep = torch.ones(B, Sq, dtype=torch.bool, device=q.device)
    if q_len is not None:
        keep &= torch.arange(Sq, device=q.device)[None, :] < q_len[:, None]
    if kv_len is not None:
        keep &= (kv_len > 0)[:, None]
    return out * keep[:, :, None, None].to(out.dtype)


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """:func:`attention` on packed sequences, FlashAttention's varlen convention: q ``[Tq, H, D]``,
    k and v ``[Tk, Hkv, D]``; sequence b owns rows ``cu_seqlens[b]:cu_seqlens[b + 1]`` (int
    ``[B + 1]``, starting at 0); ``max_seqlen_*`` bound the lengths (Python ints, so no
    ``.item()`` breaks a compiled graph). On CUDA: bfloat16 / float16 with D = 64 or 128 only
    (``NotImplementedError`` otherwise); cu_seqlens are not checked there (that would
    synchronise) but clamped to the packed tokens and to ``max_seqlen_*``: invalid ones give
    wrong attention, never an access outside the tensors. The CPU raises ``ValueError``.
    Give the true longest length, not a loose bound: on CUDA a few queries a sequence over many
    keys (decoding) split the keys into chunks, as many per sequence as ``max_seqlen_k`` needs, so
    passing the packed total instead sizes the workspace and the grid about B times too large."""
    scale = _softmax_scale(q, softmax_scale, "attention_varlen")
    max_seqlen_q = _as_int(max_seqlen_q, "attention_varlen", "max_seqlen_q")
    max_seqlen_k = _as_int(max_seqlen_k, "attention_varlen", "max_seqlen_k")
    out, _ = _call(torch.ops.dllm.attention_forward, q, k, v, None, None, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                   max_seqlen_k, scale)
    return out


@torch.library.register_fake("dllm::attention_forward")
@_one_device
def _attention_forward_fake(q, k, v, kv_len, q_len, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale):
    tokens = _check_attention(q, k, v, kv_len, q_len, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((q.shape[-2], tokens), dtype=torch.float32)


def _attention_op(varlen: bool) -> str:
    """The op a user called, which errors name (csrc/torch/attention.h's attention_op)."""
    return "attention_varlen" if varlen else "attention"


def _check_attention(q, k, v, kv_len, q_len, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
                     kernel_dtype=True):
    """prepare_attention's checks (csrc/torch/attention.cpp); returns the number of query tokens.
    kernel_dtype=False (the SDPA path) takes any floating dtype q, k and v share."""
    varlen = cu_seqlens_q is not None
    op = _attention_op(varlen)
    torch._check(varlen == (cu_seqlens_k is not None),
                 lambda: f"{op}: give both cu_seqlens_q and cu_seqlens_k, or neither")
    rank = 3 if varlen else 4
    torch._check(q.dim() == rank and k.dim() == rank and v.dim() == rank,
                 lambda: f"{op}: q, k, v must be {'[total, heads, D] (varlen)' if varlen else '[B, S, heads, D]'}")
    if kernel_dtype:
        _check_dtype(op, q, "q")
    torch._check_type(k.dtype == q.dtype and v.dtype == q.dtype, lambda: f"{op}: q, k, v must share a dtype")
    torch._check(_same_shape(k.shape, v.shape), lambda: f"{op}: k and v must have the same shape")
    heads, kv_heads, dim = q.shape[-2], k.shape[-2], q.shape[-1]
    torch._check(_may(k.shape[-1] == dim), lambda: f"{op}: q and k must share the head dimension")
    torch._check(_may(kv_heads > 0) and _may(heads % kv_heads == 0),
                 lambda: f"{op}: the number of q heads must be a multiple of the number of k/v heads")
    torch._check(_may(dim > 0), lambda: f"{op}: head dimension must be positive")
    torch._check_value(math.isfinite(scale) and scale > 0,
                       lambda: f"{op}: softmax_scale must be positive and finite, got {scale}")
    if varlen:
        torch._check(kv_len is None and q_len is None, lambda: f"{op}: varlen inputs take lengths from cu_seqlens only")
        for cu in (cu_seqlens_q, cu_seqlens_k):
            _check_integer(op, cu, "cu_seqlens")
            torch._check(cu.dim() == 1 and _may(cu.shape[0] >= 1), lambda: f"{op}: cu_seqlens must be [B + 1]")
        torch._check(_may(cu_seqlens_q.shape[0] == cu_seqlens_k.shape[0]),
                     lambda: f"{op}: cu_seqlens_q and cu_seqlens_k disagree on B")
        torch._check_value(max_seqlen_q >= 0 and max_seqlen_k >= 0,
                           lambda: f"{op}: max_seqlen_q and max_seqlen_k must be >= 0")
        return q.shape[0]
    batch = q.shape[0]
    torch._check(_may(k.shape[0] == batch), lambda: f"{op}: q and k disagree on the batch size")
    for t, name in ((q_len, "q_len"), (kv_len, "kv_len")):
        if t is not None:
            torch._check(_same_shape(t.shape, (batch,)),
                         lambda: f"{op}: {name} must have shape [{batch}], got {list(t.shape)}")
            _check_integer(op, t, name)
    return batch * q.shape[1]


@torch.library.register_fake("dllm::attention_backward")
@_one_device
def _attention_backward_fake(grad_out, q, k, v, out, lse, kv_len, q_len, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                             max_seqlen_k, scale):
    tokens = _check_attention(q, k, v, kv_len, q_len, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
    op = _attention_op(cu_seqlens_q is not None)
    torch._check(_same_shape(grad_out.shape, q.shape) and _same_shape(out.shape, q.shape),
                 lambda: f"{op}: grad_out and out must have q's shape")
    torch._check(_same_shape(lse.shape, (q.shape[-2], tokens)) and lse.dtype == torch.float32,
                 lambda: f"{op}: lse must be float32 [H, tokens]")
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _attention_setup_context(ctx, inputs, output):
    q, k, v, kv_len, q_len, cu_q, cu_k, max_q, max_k, scale = inputs
    out, lse = output
    # lse is the backward's input, not a differentiable result: its gradient would be dropped
    # (the backward ignores it), so it does not require grad and a loss built on it raises.
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, kv_len, q_len, cu_q, cu_k)
    ctx.max_q, ctx.max_k, ctx.scale = max_q, max_k, scale


def _attention_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, kv_len, q_len, cu_q, cu_k = ctx.saved_tensors
    dq, dk, dv = _call(torch.ops.dllm.attention_backward, grad_out, q, k, v, out, lse, kv_len, q_len, cu_q, cu_k,
                       ctx.max_q, ctx.max_k, ctx.scale)
    return dq, dk, dv, None, None, None, None, None, None, None


torch.library.register_autograd("dllm::attention_forward", _attention_backward, setup_context=_attention_setup_context)
