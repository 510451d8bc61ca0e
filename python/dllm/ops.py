"""dllm's operators: documented wrappers around ``torch.ops.dllm.*``.

Each op is registered in C++ (``csrc/torch/registration.cpp``) with a CPU and a CUDA kernel; the
fake (meta) implementation beside each wrapper lets ``torch.compile`` trace it without a graph
break. Randomness comes from torch's generators, so ``torch.manual_seed`` reproduces a run.
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy
import torch
from torch.fx.experimental.symbolic_shapes import guard_or_true

from . import _extension  # noqa: F401  (loads the library that registers the ops)
from ._limits import FLOAT32_MAX, INT64_MAX

# The ops. The module's other public names (KERNEL_DTYPES, CUDA_HEAD_DIMS, cuda_kernel_supports,
# sdpa_attention) serve dllm's models and benchmarks, which dispatch as the ops do.
__all__ = [
    "sample_categorical",
    "predict_masked",
    "commit_tokens",
    "raise_pending_errors",
    "attention",
    "attention_varlen",
    "rotary",
    "adaln",
    "adaln_residual",
    "sedd_step",
    "score_entropy_loss",
    "masked_diffusion_loss",
    "sample_transition",
]

Temperature = float | torch.Tensor
# The dtypes every kernel reads (float64 has plain-torch references instead).
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _call(op, *args, **kwargs):
    """``op(*args, **kwargs)``, below its autograd kernel where no gradient is recorded (dllm.generate
    and evaluation run under no_grad, a backward without create_graph runs without). That kernel, registered from Python by register_autograd,
    would only pass the call on there, at the cost of a round trip through Python: 3-10 us of host
    time a call, four calls a DiT layer. torch.compile traces the op itself: dynamo does not trace
    _AutoDispatchBelowAutograd (a graph break, an error under fullgraph)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return op(*args, **kwargs)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args, **kwargs)


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


def _one_device(fake):
    """The kernels refuse tensors on different devices; their fakes, which also serve as the Meta
    kernel whenever one input is on ``meta``, must too (else a meta/CPU mix returns garbage)."""
    op = fake.__name__.removeprefix("_").removesuffix("_fake")

    @functools.wraps(fake)
    def checked(*args, **kwargs):
        devices = {str(a.device) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        torch._check(len(devices) <= 1, lambda: f"{op}: all tensors must be on one device, got {sorted(devices)}")
        return fake(*args, **kwargs)

    return checked


# The fakes repeat the kernels' checks that need only metadata (shapes, dtypes, scalar
# arguments), with the same exception types, so that meta tensors and torch.compile's tracing
# refuse what the op refuses instead of returning outputs for a call that cannot run.
def _may(cond) -> bool:
    """cond, a bool or a condition on sizes, except that one torch.compile cannot decide while
    tracing (an unbacked, data-dependent size) counts as true: the kernel checks it when it runs."""
    return guard_or_true(cond)


def _same_shape(shape, expected) -> bool:
    """shape == expected, compared size by size with :func:`_may` (Python's == would have to decide each)."""
    return len(shape) == len(expected) and all(_may(a == b) for a, b in zip(shape, expected))


def _check_dtype(op: str, t: torch.Tensor, name: str, dtypes=KERNEL_DTYPES, what="float32, bfloat16 or float16"):
    torch._check_type(t.dtype in dtypes, lambda: f"{op}: {name} must be {what}, got {t.dtype}")


def _check_integer(op: str, t: torch.Tensor, name: str):
    torch._check_type(not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool),
                      lambda: f"{op}: {name} must be an integer tensor, got {t.dtype}")


def _check_floating(op: str, t: torch.Tensor, name: str):
    torch._check_type(t.is_floating_point(), lambda: f"{op}: {name} must be a floating tensor, got {t.dtype}")


def _check_finite_at_least(op: str, value: float, name: str, low: float = 0.0):
    torch._check_value(math.isfinite(value) and value >= low,
                       lambda: f"{op}: {name} must be finite and >= {low:g}, got {value}")


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


def _as_int(v, op: str, name: str, *, saturate: bool = False):
    """v for an int argument of the schema (int64), or an error that names the argument: the
    schema takes a bool as 0 or 1, and refuses an int past int64 as "found type 'int'". A tensor
    (the schema takes a 0-d one) and torch.compile's symbolic ints pass as they are. saturate:
    an int past int64's largest is that largest (a count, where any value past the length is all)."""
    if isinstance(v, (torch.Tensor, torch.SymInt)):
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__}")
    if saturate and v > INT64_MAX:
        return INT64_MAX
    if not -INT64_MAX - 1 <= v <= INT64_MAX:
        raise ValueError(f"{op}: {name} = {v} lies outside int64's range [-2**63, 2**63 - 1], which the op takes")
    return v


# float() and the schemas' float arguments take a bool as 0 or 1 (NumPy's bool is no int subclass)
_BOOLS = (bool, numpy.bool_)


def _not_bool(v, op: str, name: str, what: str = "a float"):
    """v for a float argument the op passes on as it is, or a TypeError that names the argument for
    a bool. Anything else passes (torch.compile's symbolic floats, and what the op checks itself)."""
    if isinstance(v, _BOOLS):
        raise TypeError(f"{op}: {name} must be {what}, got {type(v).__name__}")
    return v


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
        int64 ``[B]``, the number of positions committed per row.

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
    # One value for every row: a Python or NumPy number, or a 0-d tensor.
    if isinstance(num_tokens, numbers.Integral):
        if num_tokens < 0:
            raise ValueError(f"commit_tokens: num_tokens must be >= 0, got {num_tokens}")
        # a count past L commits every eligible position, as int64's largest does
        count = int(_as_int(num_tokens, "commit_tokens", "num_tokens", saturate=True))
        num_tokens = torch.full((x.shape[0],), count, dtype=torch.int64, device=x.device)
    elif isinstance(num_tokens, torch.Tensor) and num_tokens.dim() == 0:
        num_tokens = num_tokens.expand(x.shape[0])
    if isinstance(prob, numbers.Real):
        if not 0 <= prob <= 1:  # (torch.full would refuse one past float32 naming nothing)
            raise ValueError(f"commit_tokens: prob must be in [0, 1], got {prob}")
        prob = torch.full((x.shape[0],), float(prob), dtype=torch.float32, device=x.device)
    elif isinstance(prob, torch.Tensor) and prob.dim() == 0:
        prob = prob.expand(x.shape[0])
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


# Decided once at import (the library is loaded by then), so that torch.compile reads a constant
# instead of tracing a dispatcher query.
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


# ---- SEDD / MDLM ---------------------------------------------------------------------------

PerBatch = float | torch.Tensor


def _as_float(v, op: str, name: str, what: str) -> float:
    """float(v), or a TypeError that names the argument (not float()'s, which names neither)."""
    try:
        if isinstance(v, (str, bytes, *_BOOLS)):  # which float() would parse, or take as 0 or 1
            raise TypeError
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: {name} must be {what}, got {type(v).__name__}") from None
    except OverflowError:  # an int past float64
        raise _outside_float32(op, name, v) from None


def _outside_float32(op: str, name: str, value) -> ValueError:
    return ValueError(f"{op}: {name} = {value!r} lies outside float32's range, which the kernels compute in")


def _per_batch(v: PerBatch, like: torch.Tensor, op: str, name: str, *, finite: bool = False) -> torch.Tensor:
    """A float, a 0-d or a [B] tensor as the [B] tensor the ops take. finite: refuse an infinite or
    NaN float, for an op whose kernel does not (a tensor's values are not read: that would sync)."""
    if like.dim() == 0:
        raise ValueError(f"{op}: expected batched inputs ([B, L, ...]), got a 0-d tensor")
    if isinstance(v, torch.Tensor):
        # one value for every sequence (what a schedule gives for one t), as commit_tokens takes its counts
        return v.expand(like.shape[0]) if v.dim() == 0 else v
    value = _as_float(v, op, name, "a float or a floating 0-d or [B] tensor")
    # torch.full refuses finite values past float32's largest, naming neither the op nor the argument,
    # and float32 rounds 0 < |v| <= 2^-150 to a 0 the op would blame for being <= 0. Comparisons
    # only: under torch.compile the value may be a symbolic float, which math.isfinite refuses.
    magnitude = abs(value)
    if finite and not magnitude < math.inf:  # (NaN too)
        raise ValueError(f"{op}: {name} must be finite, got {value}")
    if FLOAT32_MAX < magnitude < math.inf or 0.0 < magnitude <= 2.0**-150:
        raise _outside_float32(op, name, value)
    return torch.full((like.shape[0],), value, dtype=torch.float32, device=like.device)


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


# Without an autograd kernel, torch's fallback would let gradients flow through these ops as None
# or zeros with only a warning: the samplers' float outputs (log-probabilities, confidences) and
# second derivatives of the fused losses and attention raise instead. They raise when the
# gradient is computed, not when the backward is traced: torch.compile traces the backward of
# every output that requires grad (a sampler's conf or logprob returned from a compiled function
# whose logits require grad), so the backward emits this op, whose fake kernel lets the trace
# through and whose kernel raises, in eager at once and in a compiled backward when it runs.
@torch.library.custom_op("dllm::_not_differentiable", mutates_args=())
def _not_differentiable(grad: torch.Tensor, shape: list[int], dtype: torch.dtype, what: str) -> torch.Tensor:
    raise RuntimeError(f"{what} is not differentiable")


@_not_differentiable.register_fake
def _not_differentiable_fake(grad, shape, dtype, what):
    return grad.new_empty(shape, dtype=dtype)


def _register_not_differentiable(op: str, what: str) -> None:
    def setup_context(ctx, inputs, output, keyword_only_inputs=None):
        ctx.inputs = [(t.shape, t.dtype) if isinstance(t, torch.Tensor) else None for t in inputs]

    def backward(ctx, *grads):
        anchor = next(g for g in grads if g is not None)
        return tuple(torch.ops.dllm._not_differentiable(anchor, meta[0], meta[1], what) if need and meta else None
                     for need, meta in zip(ctx.needs_input_grad, ctx.inputs))

    torch.library.register_autograd(f"dllm::{op}", backward, setup_context=setup_context)


_register_not_differentiable("sample_categorical", "dllm.ops.sample_categorical (its logprob output)")
_register_not_differentiable("predict_masked", "dllm.ops.predict_masked (its confidence output)")
_register_not_differentiable("adaln", "dllm.ops.adaln (models run its math in torch under autograd)")
_register_not_differentiable("adaln_residual", "dllm.ops.adaln_residual (models run its math in torch under autograd)")
for _op, _names in (("attention", "attention and attention_varlen"), ("score_entropy_loss", "score_entropy_loss"),
                    ("masked_diffusion_loss", "masked_diffusion_loss")):
    _register_not_differentiable(f"{_op}_backward", f"the gradient of dllm.ops.{_names} (no double backward)")
