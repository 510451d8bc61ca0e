"""The samplers' ops: categorical draws, and the masked-diffusion step's proposals and commits."""

from __future__ import annotations

import math
import numbers

import torch

from ._checks import (_as_float, _as_int, _call, _check_dtype, _check_finite_at_least,
                      _check_floating, _check_integer, _may, _not_bool, _one_device, _same_shape)

Temperature = float | torch.Tensor


def sample_categorical(
    logits: torch.Tensor,
    temperature: Temperature = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from ``softmax(logits / temperature)``, exactly, in one pass.

    Args:
        logits: ``[..., V]`` float32, bfloat16 or float16, any leading shape. Rows may be strided
            (a slice of a larger tensor is read in place); a last dimension that is not contiguous
            is copied first. ``-inf`` entries are never drawn.
        temperature: a float, or a float tensor of shape ``logits.shape[:-1]`` (one per row) or
            with one element. ``0`` means argmax, ties going to the lowest index; any positive
            temperature, however small, samples (a tiny one draws among the tied maxima). The
            kernels divide in float32: a temperature outside float32's normal range acts as the
            nearest end of it (``3.4e38``, ``1.2e-38``), which draws the same. Default 1.
        generator: a ``torch.Generator`` on the logits' device; default: torch's default one.
            A float temperature of 0 draws nothing and leaves the generator as it is.

    Returns:
        ``(tokens, logprob)``: ``tokens`` int64 ``[...]``, and ``logprob`` float32 ``[...]``, the
        log-probability of each drawn token under ``softmax(logits / temperature)`` (under
        ``softmax(logits)`` for rows with temperature 0): the confidence that masked-diffusion
        samplers rank positions by. Not differentiable: a backward through it raises.

    The draw is exact in distribution, tails included: Gumbel noise comes from 64-bit uniforms
    (float32 noise from 24-bit uniforms truncates the tail and acts as a lower temperature,
    arXiv:2409.02908), and a grouped Gumbel-max spends random numbers on about
    ``V / 2048 + 8 + 256`` entries per row instead of ``V``. The kernels work with
    ``(logits - max) / temperature``, so adding a constant to a row changes nothing, however large
    the logits or ``1 / temperature``. No ``[..., V]`` temporary is allocated.

    Raises ``ValueError`` for a row with NaN or ``+inf`` logits, a row that is all ``-inf``, or a
    negative or non-finite temperature. On CUDA it raises at a later call
    (:func:`raise_pending_errors`); inside CUDA-graph capture it is skipped, and such rows come back
    as token ``-1`` with NaN logprob.
    """
    if isinstance(temperature, torch.Tensor):
        return _call(torch.ops.dllm.sample_categorical, logits, temperature, 1.0, generator=generator)
    temperature = _as_float(temperature, "sample_categorical", "temperature", "a float or a float tensor")
    return _call(torch.ops.dllm.sample_categorical, logits, None, temperature, generator=generator)


@torch.library.register_fake("dllm::sample_categorical")
@_one_device
def _sample_categorical_fake(logits, temperature, scalar_temperature, *, generator=None):
    op = "sample_categorical"
    torch._check(logits.dim() >= 1, lambda: "sample_categorical: logits needs a vocabulary dimension")
    _check_dtype(op, logits, "logits")
    torch._check(_may(logits.shape[-1] > 0), lambda: "sample_categorical: logits has an empty vocabulary dimension (V = 0)")
    lead = logits.shape[:-1]
    if temperature is None:
        _check_finite_at_least(op, scalar_temperature, "temperature")
    else:
        _check_floating(op, temperature, "temperature")
        torch._check(_may(temperature.numel() == 1) or _same_shape(temperature.shape, lead),
                     lambda: f"sample_categorical: temperature must have one element or the shape {list(lead)}")
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
    confidence_from: str = "model",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Propose a token and score it at every masked position, in one pass over the logits.

    Args:
        logits: ``[B, L, V]`` (any leading shape ``[..., L, V]``) float32, bfloat16 or float16.
        x: int64 ``[B, L]``, the current tokens; positions equal to ``mask_id`` get proposals.
        mask_id: the mask token, in ``[0, V)``. It is never proposed (MDLM's SUBS rule).
        temperature: 0 proposes the argmax (lowest index on ties); > 0 draws exactly from
            ``softmax(logits / temperature)`` with float64-grade tails, after filtering (clamped
            into float32's normal range, as in :func:`sample_categorical`).
        top_k: keep the ``top_k`` largest logits (0: off).
        top_p: keep the smallest set of largest logits whose tempered mass reaches ``top_p``
            (1: off). Both filters keep every token tied with the last one kept. Both act on the
            whole tempered distribution, and a token must pass both (Dream's order; Hugging Face's
            applies top-p to the renormalised top-k, which may keep fewer).
        confidence: how each proposal is scored under the distribution ``confidence_from``
            names: ``"prob"`` (probability of the proposal: LLaDA low_confidence, Dream
            maskgit_plus), ``"margin"`` (top-1 minus top-2 probability: Dream topk_margin),
            ``"entropy"`` (negative entropy, sum p log p: Dream entropy), ``"random"`` (uniform
            on [0, 1): LLaDA random remasking).
        logits_shift: 1 reads position i's prediction from logits row i - 1, and position 0's from
            row 0 (Dream's head, inherited from an autoregressive model), without a copy.
        confidence_from: ``"model"``: the untempered, unfiltered ``softmax(logits)`` (LLaDA,
            Fast-dLLM); ``"proposal"``: the distribution the proposal is drawn from,
            ``softmax(logits / temperature)`` after top-k / top-p (temperature 1 when it is 0:
            the filtered ``softmax(logits)``), as Dream's ``sample_tokens`` scores. Both are over
            the vocabulary without the mask token.
        generator: a ``torch.Generator`` on the logits' device.

    Returns:
        ``(x0, conf)``: int64 ``[B, L]`` proposals (``x`` itself at unmasked positions) and
        float32 ``[B, L]`` confidences (``-inf`` at unmasked positions; not differentiable: a
        backward through them raises). Only the logits of
        masked positions are read (where the leading dimensions flatten to one row stride;
        others, such as ``[1, L, V].expand(B, L, V)``, are copied first).

    Raises ``ValueError`` for a masked position whose logits hold NaN or ``+inf``, or only ``-inf``
    besides the mask token, and for an unmasked position whose token lies outside ``[0, V)``; on CUDA
    at a later call (:func:`raise_pending_errors`), and not in a CUDA graph.
    """
    op = "predict_masked"
    mask_id, logits_shift = _as_int(mask_id, op, "mask_id"), _as_int(logits_shift, op, "logits_shift")
    top_k = _as_int(top_k, op, "top_k", saturate=True)  # any top_k >= V keeps every token
    temperature, top_p = _not_bool(temperature, op, "temperature"), _not_bool(top_p, op, "top_p")
    return _call(torch.ops.dllm.predict_masked, logits, x, mask_id, temperature, top_k, top_p, confidence,
                 logits_shift, confidence_from, generator=generator)


@torch.library.register_fake("dllm::predict_masked")
@_one_device
def _predict_masked_fake(logits, x, mask_id, temperature=0.0, top_k=0, top_p=1.0, confidence="prob",
                         logits_shift=0, confidence_from="model", *, generator=None):
    op = "predict_masked"
    torch._check(logits.dim() >= 2, lambda: "predict_masked: logits must be [..., L, V]")
    _check_dtype(op, logits, "logits")
    vocab, length = logits.shape[-1], logits.shape[-2]
    torch._check(_may(vocab > 0), lambda: "predict_masked: logits has an empty vocabulary dimension (V = 0)")
    _check_dtype(op, x, "x", (torch.int64,), "int64")
    torch._check(_same_shape(x.shape, logits.shape[:-1]), lambda: "predict_masked: x must have the shape of logits[..., 0]")
    torch._check_value(0 <= mask_id and _may(mask_id < vocab), lambda: f"predict_masked: mask_id {mask_id} is outside the vocabulary")
    _check_finite_at_least(op, temperature, "temperature")
    torch._check_value(top_k >= 0, lambda: f"predict_masked: top_k must be >= 0 (0 turns it off), got {top_k}")
    torch._check_value(0.0 < top_p <= 1.0, lambda: f"predict_masked: top_p must be in (0, 1], got {top_p}")
    torch._check_value(logits_shift >= 0 and (logits_shift <= 1 or _may(logits_shift < length)),
                       lambda: f"predict_masked: logits_shift must be in [0, max(L, 2)), got {logits_shift}")
    torch._check_value(confidence in ("prob", "margin", "entropy", "random"),
                       lambda: f"predict_masked: confidence must be 'prob', 'margin', 'entropy' or 'random', got {confidence!r}")
    torch._check_value(confidence_from in ("model", "proposal"),
                       lambda: f"predict_masked: confidence_from must be 'model' or 'proposal', got {confidence_from!r}")
    return x.new_empty(x.shape), logits.new_empty(x.shape, dtype=torch.float32)


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

    - ``num_tokens`` (int64 ``[B]``, or an int or 0-d tensor for every row): the k most
      confident eligible positions (LLaDA, Dream), ties to the lowest index; all of them if
      fewer than k. With ``position_temperature > 0`` the k positions are drawn without
      replacement from ``softmax(conf / position_temperature)`` instead (Dream's ``alg_temp``);
      the keys ``conf / position_temperature`` are float32, so it is clamped into
      ``[1e-36, 3.4e38]``, which keeps them finite for ``|conf|`` up to 340.
    - ``threshold`` (float): every eligible position with ``conf >= threshold``, and always the
      most confident one, so each step makes progress (Fast-dLLM parallel decoding). The threshold
      is rounded to float32 first, as PyTorch compares a float32 tensor with a Python float.
    - ``prob`` (float ``[B]``, or a float or 0-d tensor for every row): each eligible position
      independently with this probability (MDLM's ancestral step, Dream's ``origin``), compared
      with a 53-bit uniform so that tiny probabilities (steep schedules) stay exact.

    Args:
        x: int64 ``[B, L]``, contiguous; committed positions get ``x0``'s token.
        x0, conf: the proposals and confidences of :func:`predict_masked`, ``[B, L]``.
        window: int64 ``[B, 2]``: ``[start, end)`` of the eligible block (semi-autoregressive /
            block decoding); positions outside it are never committed. Default: the whole row.

    Returns:
        int64 ``[B]``, the number of positions committed per row: positions written, so one whose
        ``x0`` is ``mask_id`` (which :func:`predict_masked` never proposes) counts and stays masked.

    The op never synchronises with the host, so a whole sampler step can be captured in a CUDA
    graph. Invalid per-row values (a negative count, a window outside ``[0, L]``, a prob outside
    ``[0, 1]``, a NaN confidence at an eligible position) leave that row unchanged: its count is
    -1 on CUDA, and on the CPU the call raises ``ValueError`` after committing the valid rows. A
    Python or NumPy number given for every row raises before the op, on either device.
    """
    if x.dim() != 2:
        raise ValueError(f"commit_tokens: x must be [B, L], got shape {tuple(x.shape)}")
    mask_id = _as_int(mask_id, "commit_tokens", "mask_id")
    threshold = _not_bool(threshold, "commit_tokens", "threshold", "a float or None")
    prob = _not_bool(prob, "commit_tokens", "prob", "a float, a float tensor or None")
    position_temperature = _not_bool(position_temperature, "commit_tokens", "position_temperature")
    # One value for every row: a 0-d tensor, or a Python or NumPy number. Tensors and None first:
    # the numbers ABCs' isinstance costs about 0.4 us a check here.
    if isinstance(num_tokens, torch.Tensor):
        if num_tokens.dim() == 0:
            num_tokens = num_tokens.expand(x.shape[0])
    elif num_tokens is not None and isinstance(num_tokens, numbers.Integral):
        if num_tokens < 0:
            raise ValueError(f"commit_tokens: num_tokens must be >= 0, got {num_tokens}")
        # a count past L commits every eligible position, as int64's largest does
        count = int(_as_int(num_tokens, "commit_tokens", "num_tokens", saturate=True))
        num_tokens = torch.full((x.shape[0],), count, dtype=torch.int64, device=x.device)
    if isinstance(prob, torch.Tensor):
        if prob.dim() == 0:
            prob = prob.expand(x.shape[0])
    elif prob is not None and isinstance(prob, numbers.Real):
        if not 0 <= prob <= 1:  # (torch.full would refuse one past float32 naming nothing)
            raise ValueError(f"commit_tokens: prob must be in [0, 1], got {prob}")
        prob = torch.full((x.shape[0],), float(prob), dtype=torch.float32, device=x.device)
    return torch.ops.dllm.commit_tokens(
        x, x0, conf, mask_id, num_tokens, threshold, prob, window, position_temperature, generator=generator
    )


@torch.library.register_fake("dllm::commit_tokens")
@_one_device
def _commit_tokens_fake(x, x0, conf, mask_id, num_tokens=None, threshold=None, prob=None, window=None,
                        position_temperature=0.0, *, generator=None):
    op = "commit_tokens"
    torch._check(x.dim() == 2, lambda: "commit_tokens: x must be [B, L]")
    torch._check_type(x.dtype == torch.int64 and x0.dtype == torch.int64, lambda: "commit_tokens: x and x0 must be int64")
    _check_dtype(op, conf, "conf", (torch.float32,), "float32")
    torch._check(x.is_contiguous(), lambda: "commit_tokens: x is updated in place and must be contiguous")
    torch._check(_same_shape(x0.shape, x.shape) and _same_shape(conf.shape, x.shape),
                 lambda: "commit_tokens: x, x0 and conf must share one shape [B, L]")
    torch._check_value(mask_id >= 0, lambda: f"commit_tokens: mask_id must be >= 0, got {mask_id}")
    rules = (num_tokens is not None) + (threshold is not None) + (prob is not None)
    torch._check_value(rules == 1, lambda: f"commit_tokens: give exactly one of num_tokens, threshold or prob (got {rules})")
    _check_finite_at_least(op, position_temperature, "position_temperature")
    torch._check_value(position_temperature == 0.0 or num_tokens is not None,
                       lambda: "commit_tokens: position_temperature applies only to num_tokens (choosing k positions)")
    batch = x.shape[0]
    if num_tokens is not None:
        _check_integer(op, num_tokens, "num_tokens")
    if threshold is not None:
        torch._check_value(not math.isnan(threshold), lambda: "commit_tokens: threshold is NaN")
    for t, name in ((num_tokens, "num_tokens"), (prob, "prob")):
        if t is not None:
            torch._check(_same_shape(t.shape, (batch,)), lambda: f"commit_tokens: {name} must have shape [B]")
    if window is not None:
        _check_integer(op, window, "window")
        torch._check(_same_shape(window.shape, (batch, 2)),
                     lambda: "commit_tokens: window must have shape [B, 2] ([start, end) per row)")
    return x.new_empty((batch,), dtype=torch.int64)


@torch.compiler.disable  # it waits for the GPU: a graph break, never a node a compiled graph could drop
def raise_pending_errors() -> None:
    """Waits for dllm's CUDA calls still running and raises the first error they found in their
    inputs' values (``ValueError``: NaN or ``+inf`` logits, tokens outside the vocabulary, bad
    per-row temperatures or sigmas), naming the op and the row or position, as the CPU ops raise it
    at once. A CUDA call of ``sample_categorical``, ``predict_masked``, ``sedd_step``,
    ``sample_transition`` or a loss forward does not wait for its kernel's check: it copies the
    check's result to the host behind the kernel, and raises the results that have arrived (its
    own only if the GPU has already finished it), as does ``commit_tokens``. So a bad value
    raises at a later call of these ops, or here; ``dllm.generate`` and ``dllm train`` call this
    where they wait for the GPU anyway. The first error raised drops the checks still pending
    (later calls on the same bad values would only repeat it); it waits only for the calls made
    before it was called, by any thread of the process. Nothing is checked in a CUDA graph
    (capture, or replays). Returns at once when nothing is pending (always on the CPU)."""
    torch.ops.dllm.raise_pending_errors()
