"""The models' fused layers: rotary position embedding and the DiT's adaLN."""

from __future__ import annotations

import math

import torch

from ._checks import _as_float, _call, _check_dtype, _may, _one_device, _same_shape


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (RoPE, the rotate-half layout of GPT-NeoX and LLaMA) in one pass.

    Args:
        x: ``[B, S, H, D]`` float32, bfloat16 or float16, D even. Any strides with a unit one in D:
            the q and k views of a fused qkv projection are read in place.
        cos, sin: float32 ``[S, D / 2]`` (one table for the batch) or ``[B, S, D / 2]`` (positions
            per sequence): the cosine and sine of each position's angle for each frequency.

    Returns:
        A contiguous ``[B, S, H, D]`` in x's dtype, with ``c, s`` the tables at (b, s) and pair i:
        ``out[..., i] = x[..., i] c_i - x[..., i + D/2] s_i`` and
        ``out[..., i + D/2] = x[..., i + D/2] c_i + x[..., i] s_i``, in float32, rounded once.
        Differentiable in x: the gradient is the rotation by the opposite angle, the same kernel
        (a backward that would need the gradient of cos or sin raises).

    Reads x once and writes the result once; in torch the same float32 math takes four passes
    and float32 temporaries, or eight passes and a concatenation as usually written.
    """
    return _call(torch.ops.dllm.rotary, x, cos, sin)


@torch.library.register_fake("dllm::rotary")
@_one_device
def _rotary_fake(x, cos, sin, inverse=False):
    torch._check(x.dim() == 4, lambda: f"rotary: x must be [B, S, H, D], got shape {tuple(x.shape)}")
    _check_dtype("rotary", x, "x")
    batch, seq, _, dim = x.shape
    torch._check_value(_may(dim % 2 == 0), lambda: f"rotary: the head dimension must be even, got {dim}")
    torch._check(_same_shape(cos.shape, sin.shape), lambda: "rotary: cos and sin must have one shape")
    torch._check(_same_shape(cos.shape, (seq, dim // 2)) or _same_shape(cos.shape, (batch, seq, dim // 2)),
                 lambda: "rotary: cos and sin must be [S, D / 2] or [B, S, D / 2]")
    torch._check_type(cos.dtype == torch.float32 and sin.dtype == torch.float32,
                      lambda: f"rotary: cos and sin must be float32, got {cos.dtype} and {sin.dtype}")
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _rotary_setup_context(ctx, inputs, output):
    _, cos, sin, inverse = inputs
    ctx.save_for_backward(cos, sin)
    ctx.inverse = inverse


def _rotary_backward(ctx, grad):
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        # raised, not dropped: learned or scaled RoPE angles would otherwise train on silently
        raise RuntimeError("dllm.ops.rotary is differentiable in x only: cos and sin require grad here; "
                           "rotate with torch's math where the angles are learned")
    cos, sin = ctx.saved_tensors
    return _call(torch.ops.dllm.rotary, grad, cos, sin, not ctx.inverse), None, None, None


torch.library.register_autograd("dllm::rotary", _rotary_backward, setup_context=_rotary_setup_context)


def adaln(x: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, *,
          eps: float = 1e-5) -> torch.Tensor:
    """adaLN, the DiT's modulated LayerNorm, in one pass over x.

    Args:
        x: ``[B, S, dim]`` float32, bfloat16 or float16.
        weight: the norm's ``[dim]``; shift, scale: ``[B, dim]``, one per sequence (the DiT's
            conditioning); any floating dtype.
        eps: added to the variance.

    Returns:
        ``layer_norm(x) * weight * (1 + scale) + shift`` (biased variance over dim), computed in
        float32 and rounded once to x's dtype, contiguous. Not differentiable: dllm's models call
        it when no autograd graph is recorded and run the same math in torch otherwise.
    """
    return _call(torch.ops.dllm.adaln, x, weight, shift, scale, _as_float(eps, "adaln", "eps", "a positive float"))


def adaln_residual(x: torch.Tensor, update: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor,
                   shift: torch.Tensor, scale: torch.Tensor, *, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """A DiT block's gated residual and the adaLN after it, in one pass: ``x_next = x + gate * update``
    (``update`` like x, ``gate`` ``[B, dim]``), rounded to x's dtype, and :func:`adaln` of x_next.
    Returns ``(x_next, out)``. Reads x and update once and writes each output once, where the two
    steps apart read x_next back."""
    return _call(torch.ops.dllm.adaln_residual, x, update, gate, weight, shift, scale,
                 _as_float(eps, "adaln_residual", "eps", "a positive float"))


@torch.library.register_fake("dllm::adaln")
@_one_device
def _adaln_fake(x, weight, shift, scale, eps, op="adaln"):
    torch._check(x.dim() == 3, lambda: f"{op}: x must be [B, S, dim], got shape {tuple(x.shape)}")
    _check_dtype(op, x, "x")
    batch, _, dim = x.shape
    torch._check(_same_shape(weight.shape, (dim,)), lambda: f"{op}: weight must be [dim]")
    for t, name in ((shift, "shift"), (scale, "scale")):
        torch._check(_same_shape(t.shape, (batch, dim)), lambda: f"{op}: {name} must be [B, dim]")
    torch._check_value(math.isfinite(eps) and eps > 0, lambda: f"{op}: eps must be positive and finite, got {eps}")
    for t, name in ((weight, "weight"), (shift, "shift"), (scale, "scale")):
        torch._check_type(t.is_floating_point(), lambda: f"{op}: {name} must be floating point, got {t.dtype}")
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.register_fake("dllm::adaln_residual")
@_one_device
def _adaln_residual_fake(x, update, gate, weight, shift, scale, eps):
    op = "adaln_residual"
    out = _adaln_fake(x, weight, shift, scale, eps, op)
    torch._check(_same_shape(update.shape, x.shape), lambda: f"{op}: update must have x's shape")
    torch._check_type(update.dtype == x.dtype, lambda: f"{op}: update must have x's dtype {x.dtype}, got {update.dtype}")
    torch._check(_same_shape(gate.shape, shift.shape), lambda: f"{op}: gate must be [B, dim]")
    torch._check_type(gate.is_floating_point(), lambda: f"{op}: gate must be floating point, got {gate.dtype}")
    return torch.empty_like(out), out
