"""dllm's operators: documented wrappers around ``torch.ops.dllm.*``.

Each op is registered in C++ (``csrc/torch/registration.cpp``) with a CPU and a CUDA kernel; the
fake (meta) implementation beside each wrapper lets ``torch.compile`` trace it without a graph
break. Randomness comes from torch's generators, so ``torch.manual_seed`` reproduces a run.
"""

from __future__ import annotations

import torch

from . import _extension  # noqa: F401  (loads the library that registers the ops)

__all__ = ["sample_categorical"]

Temperature = float | torch.Tensor


def sample_categorical(
    logits: torch.Tensor,
    temperature: Temperature = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from ``softmax(logits / temperature)``, exactly, in one pass.

    Args:
        logits: ``[..., V]`` float32, bfloat16 or float16, any leading shape. The last dimension
            must be contiguous; rows may be strided (a slice of a larger tensor is read in place).
            ``-inf`` entries are never drawn.
        temperature: a float, or a float tensor of shape ``logits.shape[:-1]`` (one per row) or
            with one element. ``0`` means argmax, ties going to the lowest index. Default 1.
        generator: a ``torch.Generator`` on the logits' device; default: torch's default one.

    Returns:
        ``(tokens, logprob)``: ``tokens`` int64 ``[...]``, and ``logprob`` float32 ``[...]``, the
        log-probability of each drawn token under ``softmax(logits / temperature)`` (under
        ``softmax(logits)`` for rows with temperature 0): the confidence that masked-diffusion
        samplers rank positions by.

    The draw is exact in distribution, tails included: Gumbel noise comes from 64-bit uniforms
    (float32 noise from 24-bit uniforms truncates the tail and acts as a lower temperature,
    arXiv:2409.02908), and a grouped Gumbel-max spends random numbers on about ``V / 2048 + 2048``
    entries per row instead of ``V``. No ``[..., V]`` temporary is allocated.

    Raises ``ValueError`` for a row with NaN or ``+inf`` logits, a row that is all ``-inf``, or a
    negative or non-finite temperature. On CUDA that check synchronises with the device; inside
    CUDA-graph capture it is skipped, and such rows come back as token ``-1`` with NaN logprob.
    """
    if isinstance(temperature, torch.Tensor):
        return torch.ops.dllm.sample_categorical(logits, temperature, 1.0, generator=generator)
    return torch.ops.dllm.sample_categorical(logits, None, float(temperature), generator=generator)


@torch.library.register_fake("dllm::sample_categorical")
def _sample_categorical_fake(logits, temperature, scalar_temperature, *, generator=None):
    torch._check(logits.dim() >= 1, lambda: "sample_categorical: logits needs a vocabulary dimension")
    torch._check(
        logits.dtype in (torch.float32, torch.bfloat16, torch.float16),
        lambda: f"sample_categorical: logits must be float32, bfloat16 or float16, got {logits.dtype}",
    )
    lead = logits.shape[:-1]
    return logits.new_empty(lead, dtype=torch.int64), logits.new_empty(lead, dtype=torch.float32)
