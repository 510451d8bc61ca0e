"""What the ops' wrappers and fake (meta) implementations share: the call below autograd, the
conversions of Python arguments into the schemas' types with errors that name the argument, and
the checks of metadata (shapes, dtypes, scalars) that fakes repeat from the kernels."""

from __future__ import annotations

import functools
import math
import numbers

import numpy
import torch
from torch.fx.experimental.symbolic_shapes import guard_or_true

from .._limits import FLOAT32_MAX, INT64_MAX

# The dtypes every kernel reads (float64 has plain-torch references instead).
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PerBatch = float | torch.Tensor


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


def _as_int(v, op: str, name: str, *, saturate: bool = False):
    """v for an int argument of the schema (int64), or an error that names the argument: the
    schema takes a bool as 0 or 1, and refuses an int past int64 as "found type 'int'". A tensor
    (the schema takes a 0-d one) and torch.compile's symbolic ints pass as they are. saturate:
    an int past int64's largest is that largest (a count, where any value past the length is all)."""
    # A plain int first: numbers.Integral's isinstance goes through the ABC machinery (0.46 us
    # here against 0.1, three calls a predict_masked of about 5 us in all).
    if type(v) is not int:
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
