"""SEDD's and MDLM's ops: the fused sampler step, both losses with their backward, the forward noising."""

from __future__ import annotations

import torch

from ._checks import (PerBatch, _as_int, _call, _check_dtype, _check_floating, _may, _one_device,
                      _per_batch, _same_shape)


def sedd_step(
    logits: torch.Tensor,
    x: torch.Tensor,
    sigma: PerBatch,
    dsig: PerBatch,
    *,
    graph: str,
    method: str,
    scale_by_sigma: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One SEDD sampler step, fused: score post-processing, predictor and an exact draw.

    Args:
        logits: the network's raw output ``[B, L, K]``, float32, bfloat16 or float16. Graph
            ``"absorb"``: ``K = V + 1`` and the mask is ``K - 1``; graph ``"uniform"``: ``K = V``.
        x: current tokens, int64 ``[B, L]`` in ``[0, K)``.
        sigma: total noise at the current time, a float or a floating 0-d or ``[B]`` tensor, ``> 0``.
            Used for the log-score shift.
        dsig: the step's noise term, ``>= 0`` (float, 0-d or ``[B]``): ``sigma(t) - sigma(t - dt)``
            for ``"analytic"``, ``dt * dsigma/dt(t)`` for ``"euler"``, ``sigma(t)`` for
            ``"denoise"``.
        graph: ``"absorb"`` or ``"uniform"``.
        method: ``"analytic"`` (Tweedie tau-leaping: staggered score times the transposed
            transition), ``"euler"`` (tau-leaping with the reverse rate) or ``"denoise"`` (the
            final step: analytic, with the mask column dropped for absorb).
        scale_by_sigma: subtract ``log(expm1(sigma)) + log(K - 1)`` from the logits first
            (SEDD's absorbing models; SEDD trains uniform models without it). Either way the
            log-score of the input token is set to 0.
        generator: a ``torch.Generator`` on the logits' device (default: torch's default one).

    Returns:
        ``x_next``, int64 ``[B, L]``.

    Negative weights (SEDD's clipped mass) are never drawn, as in SEDD's ``argmax(p / E)``.
    Under the absorbing graph unmasked tokens are kept and their logits are not read. The draw
    is exact in distribution with float64-grade Gumbel tails (see ``sample_categorical``); each
    row is read from memory once and nothing of size ``[B, L, K]`` is allocated (for logits whose
    leading dimensions flatten to one row stride; others, such as ``[1, L, K].expand(B, L, K)``,
    are copied first).

    Raises ``ValueError`` for NaN or ``+inf`` logits in a row that is read, ``x`` outside
    ``[0, K)``, ``sigma <= 0`` or ``dsig < 0`` (or non-finite), or a row with no positive weight.
    On CUDA it raises at a later call (:func:`raise_pending_errors`; skipped inside CUDA-graph
    capture, where bad rows come back as ``-1``).
    """
    return torch.ops.dllm.sedd_step(logits, x, _per_batch(sigma, logits, "sedd_step", "sigma"),
                                    _per_batch(dsig, logits, "sedd_step", "dsig"),
                                    graph=graph, method=method, scale_by_sigma=scale_by_sigma, generator=generator)


def _check_bl_k(op: str, logits, *tokens):
    torch._check(logits.dim() == 3, lambda: f"{op}: logits must have shape [B, L, K]")
    _check_dtype(op, logits, "logits")
    torch._check(_may(logits.shape[2] >= 2), lambda: f"{op}: logits needs K >= 2 classes")
    for t in tokens:
        _check_dtype(op, t, "token tensors", (torch.int64,), "int64")
        torch._check(_same_shape(t.shape, logits.shape[:2]), lambda: f"{op}: token tensors must have shape [B, L]")


def _check_per_batch(op: str, batch, **named):
    for name, t in named.items():
        _check_floating(op, t, name)
        torch._check(_same_shape(t.shape, (batch,)), lambda: f"{op}: {name} must have shape [B]")


def _check_graph(op: str, graph: str):
    torch._check_value(graph in ("absorb", "uniform"), lambda: f'{op}: graph must be "absorb" or "uniform", got "{graph}"')


@torch.library.register_fake("dllm::sedd_step")
@_one_device
def _sedd_step_fake(logits, x, sigma, dsig, *, graph, method, scale_by_sigma=True, generator=None):
    _check_bl_k("sedd_step", logits, x)
    _check_per_batch("sedd_step", logits.shape[0], sigma=sigma, dsig=dsig)
    _check_graph("sedd_step", graph)
    torch._check_value(method in ("analytic", "euler", "denoise"),
                       lambda: f'sedd_step: method must be "analytic", "euler" or "denoise", got "{method}"')
    return x.new_empty(x.shape)


def score_entropy_loss(
    logits: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: PerBatch,
    dsigma: PerBatch,
    *,
    graph: str,
    scale_by_sigma: bool = True,
) -> torch.Tensor:
    """SEDD's training loss: denoising score entropy, ``dsigma``-weighted, summed over positions.

    Args:
        logits: the network's raw output ``[B, L, K]`` at ``x_t`` (float32, bfloat16, float16),
            post-processed here exactly as in ``sedd_step``.
        x_t: noised tokens int64 ``[B, L]``; x0: clean tokens int64 ``[B, L]`` (absorb: in
            ``[0, K - 1)``).
        sigma: total noise ``> 0`` and dsigma: its time derivative (the per-sequence weight);
            floats, 0-d or ``[B]`` tensors.
        graph: ``"absorb"`` (only masked positions count) or ``"uniform"``.
        scale_by_sigma: as in ``sedd_step``.

    Returns:
        ``loss`` float32 ``[B]`` (SEDD then takes ``.mean()``; it is not normalised by length).

    Differentiable in ``logits`` (not in sigma or dsigma: a backward that would need their
    gradient raises, see ``dllm.sedd.reference`` for learned schedules): forward and backward are fused
    kernels; the backward reads the logits once and writes ``d(logits)`` once, and nothing of size
    ``[B, L, K]`` but the logits is saved. A NaN or ``+inf`` logit the loss reads gives a non-finite
    loss and gradient (which gradient scalers detect); ``-inf`` adds nothing where only its exp enters
    and makes the loss ``+inf`` (gradient finite) where its log does. The column a
    position leaves out (the mask under absorb, ``x_t`` under uniform) and unmasked positions under
    absorb may hold anything. Tokens out of range or ``sigma <= 0`` raise ``ValueError``.
    """
    return _call(torch.ops.dllm.score_entropy_loss, logits, x_t, x0,
                 _per_batch(sigma, logits, "score_entropy_loss", "sigma"),
                 _per_batch(dsigma, logits, "score_entropy_loss", "dsigma"), graph=graph, scale_by_sigma=scale_by_sigma)


@torch.library.register_fake("dllm::score_entropy_loss")
@_one_device
def _score_entropy_loss_fake(logits, x_t, x0, sigma, dsigma, *, graph, scale_by_sigma=True):
    _check_bl_k("score_entropy_loss", logits, x_t, x0)
    _check_graph("score_entropy_loss", graph)  # before sigma and dsigma, as prepare_score_entropy
    _check_per_batch("score_entropy_loss", logits.shape[0], sigma=sigma, dsigma=dsigma)
    return logits.new_empty(logits.shape[:1], dtype=torch.float32)


@torch.library.register_fake("dllm::score_entropy_loss_backward")
@_one_device
def _score_entropy_loss_backward_fake(grad_loss, logits, x_t, x0, sigma, dsigma, *, graph, scale_by_sigma):
    op = "score_entropy_loss_backward"
    _check_bl_k(op, logits, x_t, x0)
    _check_graph(op, graph)
    _check_per_batch(op, logits.shape[0], sigma=sigma, dsigma=dsigma, grad_loss=grad_loss)
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _score_entropy_setup(ctx, inputs, keyword_only_inputs, output):
    logits, x_t, x0, sigma, dsigma = inputs
    ctx.save_for_backward(logits, x_t, x0, sigma, dsigma)
    ctx.kw = keyword_only_inputs


def _refuse_weight_gradients(ctx, op: str, names: dict[int, str]) -> None:
    """The losses are differentiable in logits only: a per-sequence term that requires grad (a
    learned noise schedule) raises instead of silently getting no gradient (as rotary's cos and
    sin do)."""
    wanted = [name for i, name in names.items() if ctx.needs_input_grad[i]]
    if wanted:
        raise RuntimeError(f"dllm.ops.{op} is differentiable in logits only: {' and '.join(wanted)} "
                           f"require{'s' if len(wanted) == 1 else ''} grad here; detach "
                           f"{'it' if len(wanted) == 1 else 'them'}, or use dllm.sedd.reference.{op} "
                           "(per-sequence terms [B]) where the schedule is learned")


def _score_entropy_backward(ctx, grad):
    _refuse_weight_gradients(ctx, "score_entropy_loss", {3: "sigma", 4: "dsigma"})
    logits, x_t, x0, sigma, dsigma = ctx.saved_tensors
    dlogits = _call(torch.ops.dllm.score_entropy_loss_backward, grad, logits, x_t, x0, sigma, dsigma, **ctx.kw)
    return dlogits, None, None, None, None


torch.library.register_autograd("dllm::score_entropy_loss", _score_entropy_backward, setup_context=_score_entropy_setup)


def masked_diffusion_loss(
    logits: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    weight: PerBatch,
    *,
    mask_id: int,
) -> torch.Tensor:
    """MDLM's continuous-time loss (SUBS parameterisation), fused log-softmax and gather.

    ``loss[b] = weight[b] * sum over positions l with x_t[b, l] == mask_id of
    -log softmax(logits[b, l] without the mask logit)[x0[b, l]]``; unmasked positions count 0
    (carry-over unmasking).

    Args:
        logits: ``[B, L, K]`` float32, bfloat16 or float16. x_t, x0: int64 ``[B, L]`` in
            ``[0, K)``; x0 must not be the mask where x_t is masked.
        weight: per-sequence weight, e.g. ``dsigma / expm1(sigma)`` or ``1 / t`` for the
            log-linear schedule; a finite float, or a 0-d or ``[B]`` tensor, whose values are the
            caller's to keep finite (checking them would synchronise with a CUDA device every call).
        mask_id: the mask token, in ``[0, K)``.

    Returns:
        ``loss`` float32 ``[B]``. Differentiable in ``logits`` (not in ``weight``: a backward that
        would need its gradient raises); the forward
        saves one float per position (the log-sum-exp) and the backward writes ``d(logits)``
        once. A NaN or ``+inf`` logit at a masked position gives a non-finite loss and gradient; ``-inf``
        at ``x0`` gives ``+inf`` (gradient finite); the mask column and unmasked positions may hold
        anything.
    """
    weight = _per_batch(weight, logits, "masked_diffusion_loss", "weight", finite=True)
    mask_id = _as_int(mask_id, "masked_diffusion_loss", "mask_id")
    return _call(torch.ops.dllm.masked_diffusion_loss, logits, x_t, x0, weight, mask_id=mask_id)[0]


def _check_mask_id(op: str, logits, x_t, x0, weight, mask_id):
    _check_bl_k(op, logits, x_t, x0)
    torch._check_value(0 <= mask_id and _may(mask_id < logits.shape[2]), lambda: f"{op}: mask_id must be in [0, K), got {mask_id}")
    _check_per_batch(op, logits.shape[0], weight=weight)


@torch.library.register_fake("dllm::masked_diffusion_loss")
@_one_device
def _masked_diffusion_loss_fake(logits, x_t, x0, weight, *, mask_id):
    _check_mask_id("masked_diffusion_loss", logits, x_t, x0, weight, mask_id)
    return (logits.new_empty(logits.shape[:1], dtype=torch.float32),
            logits.new_empty(logits.shape[:2], dtype=torch.float32))


@torch.library.register_fake("dllm::masked_diffusion_loss_backward")
@_one_device
def _masked_diffusion_loss_backward_fake(grad_loss, logits, lse, x_t, x0, weight, *, mask_id):
    op = "masked_diffusion_loss_backward"
    _check_mask_id(op, logits, x_t, x0, weight, mask_id)
    torch._check(lse.dtype == torch.float32 and _same_shape(lse.shape, x_t.shape),
                 lambda: f"{op}: lse must be the float32 [B, L] tensor that masked_diffusion_loss returned")
    _check_per_batch(op, logits.shape[0], grad_loss=grad_loss)
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _masked_diffusion_setup(ctx, inputs, keyword_only_inputs, output):
    logits, x_t, x0, weight = inputs
    ctx.mark_non_differentiable(output[1])  # the log-sum-exp, as attention_forward's lse
    ctx.save_for_backward(logits, output[1], x_t, x0, weight)
    ctx.mask_id = keyword_only_inputs["mask_id"]


def _masked_diffusion_backward(ctx, grad, _grad_lse):
    _refuse_weight_gradients(ctx, "masked_diffusion_loss", {3: "weight"})
    logits, lse, x_t, x0, weight = ctx.saved_tensors
    dlogits = _call(torch.ops.dllm.masked_diffusion_loss_backward, grad, logits, lse, x_t, x0, weight,
                    mask_id=ctx.mask_id)
    return dlogits, None, None, None


torch.library.register_autograd("dllm::masked_diffusion_loss", _masked_diffusion_backward,
                                setup_context=_masked_diffusion_setup)


def sample_transition(
    x0: torch.Tensor,
    sigma: PerBatch,
    *,
    graph: str,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The forward (noising) process of a SEDD graph at total noise ``sigma``.

    Each position independently moves with probability ``1 - exp(-sigma)``: to the mask
    ``num_classes - 1`` (``"absorb"``), or to a uniformly drawn token of ``[0, num_classes)``,
    possibly itself (``"uniform"``).

    Args:
        x0: clean tokens, int64 ``[B, L]`` in ``[0, num_classes)``.
        sigma: ``>= 0``, a float or a floating 0-d or ``[B]`` tensor.
        num_classes: ``K``, the logits' last dimension (absorb: vocabulary + 1).
        generator: a ``torch.Generator`` on ``x0``'s device.

    Returns:
        ``x_t``, int64 ``[B, L]``. The move test uses 53-bit uniforms in double.
    """
    sigma = _per_batch(sigma, x0, "sample_transition", "sigma")
    num_classes = _as_int(num_classes, "sample_transition", "num_classes")
    return torch.ops.dllm.sample_transition(x0, sigma, graph=graph, num_classes=num_classes,
                                            generator=generator)


@torch.library.register_fake("dllm::sample_transition")
@_one_device
def _sample_transition_fake(x0, sigma, *, graph, num_classes, generator=None):
    op = "sample_transition"
    _check_graph(op, graph)
    torch._check(2 <= num_classes < 2**31, lambda: f"{op}: num_classes must be in [2, 2^31), got {num_classes}")
    _check_dtype(op, x0, "x0", (torch.int64,), "int64")
    torch._check(x0.dim() == 2, lambda: "sample_transition: x0 must have shape [B, L]")
    _check_per_batch(op, x0.shape[0], sigma=sigma)
    return x0.new_empty(x0.shape)
