"""dllm's operators: documented wrappers around ``torch.ops.dllm.*``.

Each op is registered in C++ (``csrc/torch/registration.cpp``) with a CPU and a CUDA kernel; the
fake (meta) implementation beside each wrapper lets ``torch.compile`` trace it without a graph
break. Randomness comes from torch's generators, so ``torch.manual_seed`` reproduces a run.
"""

from __future__ import annotations

import torch

from . import _extension  # noqa: F401  (loads the library that registers the ops)

__all__ = ["sample_categorical", "predict_masked", "commit_tokens"]

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


def predict_masked(
    logits: torch.Tensor,
    x: torch.Tensor,
    *,
    mask_id: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    confidence: str = "prob",
    logits_shift: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Propose a token and score it at every masked position, in one pass over the logits.

    Args:
        logits: ``[B, L, V]`` (any leading shape ``[..., L, V]``) float32, bfloat16 or float16.
        x: int64 ``[B, L]``, the current tokens; positions equal to ``mask_id`` get proposals.
        mask_id: the mask token, in ``[0, V)``. It is never proposed (MDLM's SUBS rule).
        temperature: 0 proposes the argmax (lowest index on ties); > 0 draws exactly from
            ``softmax(logits / temperature)`` with float64-grade tails, after filtering.
        top_k: keep the ``top_k`` largest logits (0: off).
        top_p: keep the smallest set of largest logits whose tempered mass reaches ``top_p``
            (1: off). Both filters keep every token tied with the last one kept.
        confidence: how each proposal is scored, from the untempered, unfiltered distribution
            over the vocabulary without the mask token: ``"prob"`` (probability of the proposal:
            LLaDA low_confidence, Dream maskgit_plus), ``"margin"`` (top-1 minus top-2
            probability: Dream topk_margin), ``"entropy"`` (negative entropy, sum p log p: Dream
            entropy), ``"random"`` (uniform on [0, 1): LLaDA random remasking).
        logits_shift: 1 reads position i's prediction from logits row i - 1, and position 0's from
            row 0 (Dream's head, inherited from an autoregressive model), without a copy.
        generator: a ``torch.Generator`` on the logits' device.

    Returns:
        ``(x0, conf)``: int64 ``[B, L]`` proposals (``x`` itself at unmasked positions) and
        float32 ``[B, L]`` confidences (``-inf`` at unmasked positions). Only the logits of
        masked positions are read.

    Raises ``ValueError`` for a masked position whose logits hold NaN or ``+inf``, or only ``-inf``
    besides the mask token; on CUDA that check synchronises, except during CUDA-graph capture.
    """
    return torch.ops.dllm.predict_masked(
        logits, x, mask_id, temperature, top_k, top_p, confidence, logits_shift, generator=generator
    )


@torch.library.register_fake("dllm::predict_masked")
def _predict_masked_fake(logits, x, mask_id, temperature=0.0, top_k=0, top_p=1.0, confidence="prob",
                         logits_shift=0, *, generator=None):
    torch._check(logits.dim() >= 2, lambda: "predict_masked: logits must be [..., L, V]")
    torch._check(x.shape == logits.shape[:-1], lambda: "predict_masked: x must have the shape of logits[..., 0]")
    return torch.empty_like(x), logits.new_empty(x.shape, dtype=torch.float32)


def commit_tokens(
    x: torch.Tensor,
    x0: torch.Tensor,
    conf: torch.Tensor,
    *,
    mask_id: int,
    num_tokens: torch.Tensor | int | None = None,
    threshold: float | None = None,
    prob: torch.Tensor | float | None = None,
    window: torch.Tensor | None = None,
    position_temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Commit proposals at chosen masked positions, updating ``x`` in place.

    Eligible positions are those with ``x == mask_id`` inside the row's window. Exactly one rule:

    - ``num_tokens`` (int64 ``[B]``, or an int for every row): the k most confident eligible
      positions (LLaDA, Dream), ties to the lowest index; all of them if fewer than k. With
      ``position_temperature > 0`` the k positions are drawn without replacement from
      ``softmax(conf / position_temperature)`` instead (Dream's ``alg_temp``).
    - ``threshold`` (float): every eligible position with ``conf >= threshold``, and always the
      most confident one, so each step makes progress (Fast-dLLM parallel decoding).
    - ``prob`` (float ``[B]``, or a float for every row): each eligible position independently
      with this probability (MDLM's ancestral step, Dream's ``origin``).

    Args:
        x: int64 ``[B, L]``, contiguous; committed positions get ``x0``'s token.
        x0, conf: the proposals and confidences of :func:`predict_masked`, ``[B, L]``.
        window: int64 ``[B, 2]``: ``[start, end)`` of the eligible block (semi-autoregressive /
            block decoding); positions outside it are never committed. Default: the whole row.

    Returns:
        int64 ``[B]``, the number of positions committed per row.

    The op never synchronises with the host, so a whole sampler step can be captured in a CUDA
    graph. Invalid per-row values (a negative count, a window outside ``[0, L]``, a prob outside
    ``[0, 1]``, a NaN confidence at an eligible position) raise ``ValueError`` on the CPU; on CUDA
    that row is left unchanged and its count is -1.
    """
    if isinstance(num_tokens, int):
        num_tokens = torch.full((x.shape[0],), num_tokens, dtype=torch.int64, device=x.device)
    if isinstance(prob, (int, float)):
        prob = torch.full((x.shape[0],), float(prob), dtype=torch.float32, device=x.device)
    return torch.ops.dllm.commit_tokens(
        x, x0, conf, mask_id, num_tokens, threshold, prob, window, position_temperature, generator=generator
    )


@torch.library.register_fake("dllm::commit_tokens")
def _commit_tokens_fake(x, x0, conf, mask_id, num_tokens=None, threshold=None, prob=None, window=None,
                        position_temperature=0.0, *, generator=None):
    torch._check(x.dim() == 2, lambda: "commit_tokens: x must be [B, L]")
    return x.new_empty((x.shape[0],), dtype=torch.int64)
