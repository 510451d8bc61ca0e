"""How many tokens a masked-diffusion sampler commits per step."""

from __future__ import annotations

import numbers

import torch


def linear_transfer_counts(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's linear schedule (``get_num_transfer_tokens``): with m masked tokens and `steps`
    steps, every step commits floor(m / steps) tokens and the first m mod steps steps one more,
    so the expected number of unmasked tokens grows linearly in time.

    Args:
        masked: int ``[B]`` (a tensor or a list), masked tokens per row (e.g. ``(x == mask_id).sum(-1)`` over a block).
        steps: number of steps (> 0).

    Returns:
        int64 ``[B, steps]``, summing to ``masked`` along the last dimension.

    Checking that the counts are >= 0 reads them on the host: on CUDA, one synchronisation a call.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps <= 0:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    masked = torch.as_tensor(masked)
    if masked.is_floating_point() or masked.is_complex() or masked.dtype == torch.bool:  # 2.7 would become 2
        raise TypeError(f"masked must hold integer counts, got {masked.dtype}")
    masked = masked.to(torch.int64)
    if masked.dim() != 1:
        raise ValueError(f"masked must be [B], one count per row, got shape {tuple(masked.shape)}")
    if (masked < 0).any():  # a host sync on CUDA, which the samplers' own calls skip
        raise ValueError("masked counts must be >= 0")
    return transfer_counts(masked, steps)


def transfer_counts(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """:func:`linear_transfer_counts` without its checks, for counts known to be valid."""
    base = (masked // steps)[:, None].expand(-1, steps)
    extra = torch.arange(steps, device=masked.device)[None, :] < (masked % steps)[:, None]
    return base + extra.to(torch.int64)
