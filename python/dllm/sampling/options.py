"""dllm.generate's options, checked before the first network call (which, for a large model, is
what a late error would cost), and `check_options` for callers that check them before loading a model."""

from __future__ import annotations

import math
import numbers

import torch

from . import cuda_graph as graphs, masked
from .._limits import FLOAT32_MAX, INT64_MAX
from ..devices import indexed

SAMPLERS = ("sedd-analytic", "sedd-euler", "mdlm", "first-hitting", "llada", "dream", "fast-dllm")
VARIANTS = {"llada": ("low_confidence", "random"), "dream": tuple(masked.DREAM_ALGS)}
DEFAULT_VARIANT = {"llada": "low_confidence", "dream": "entropy"}
CACHES = ("prefix", "dual")
BLOCK_SAMPLERS = ("llada", "fast-dllm")


def _check_cache(name: str, cache) -> None:
    if cache is None:
        return
    if cache not in CACHES:
        raise ValueError(f"unknown cache {cache!r}; choose 'prefix' or 'dual' (or None)")
    if name != "fast-dllm":
        raise ValueError(f"cache={cache!r} applies only to the fast-dllm sampler, not {name!r}")


def _check_cuda_graph(cuda_graph: bool, cache, device: torch.device) -> None:
    if not cuda_graph:
        return
    if cache == "prefix":
        raise ValueError("cuda_graph=True cannot be combined with cache='prefix': a prefix-cached step's span "
                         "shrinks from block to block, each shape a graph of its own; use cache='dual'")
    graphs.check_graphable(device)


def check_generator_device(generator: torch.Generator | None, device: torch.device) -> None:
    """Before the first network call: torch would only refuse a generator of another device type at
    the first random draw, and draws from one on another CUDA device without a word (its ops and
    ours check only the type: pytorch#62451)."""
    if generator is None:
        return
    given, device = indexed(generator.device), indexed(device)
    if given.type != device.type or (device.type == "cuda" and given.index != device.index):
        raise ValueError(f"the generator is on {given} but the model is on {device}: make it with "
                         f"torch.Generator(device={str(device)!r})")


def _check_lengths(**lengths) -> None:
    for key, value in lengths.items():
        # past int64, torch's own "Overflow when unpacking long" names no argument
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 < value <= INT64_MAX:
            raise ValueError(f"{key} must be a positive int (at most 2**63 - 1), got {value!r}")


# mdlm, dream and the SEDD samplers make their time grid, steps + 1 points, before the first step:
# past this many steps its size in float64 (mdlm's, SEDD's) overflows int64, which torch reports
# naming no argument (counts far below cannot be allocated either, as torch's allocator says).
# llada runs at most a step a token (masked.llada), and first-hitting and fast-dllm ignore steps:
# any positive int64 is theirs.
_GRID_STEPS_MAX = INT64_MAX // 8 - 1
_GRID_SAMPLERS = ("mdlm", "dream", "sedd-analytic", "sedd-euler")


def _check_steps(name: str, steps: int) -> None:
    if name in _GRID_SAMPLERS and steps > _GRID_STEPS_MAX:
        raise ValueError(f"steps must be at most 2**60 - 2 for the {name} sampler, got {steps}: its time grid of "
                         "steps + 1 points would overflow int64's byte count")


def check_number(key: str, value, *, integral: bool = False) -> None:
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{key} must be {'an int' if integral else 'a number'}, got {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int past float64's largest
        finite = False
    if not finite:
        raise ValueError(f"{key} must be finite, got {value!r}")


def _check_sampling(*, temperature, top_k, top_p, threshold, cfg_scale, alg_temp, generator, callback) -> None:
    """The proposal options, checked before the first network call (which, for a large model, is
    what a late error would cost)."""
    for key, value in dict(temperature=temperature, top_p=top_p, cfg_scale=cfg_scale, alg_temp=alg_temp).items():
        check_number(key, value)
    check_number("top_k", top_k, integral=True)
    if threshold is not None:
        check_number("threshold", threshold)
    if temperature < 0 or alg_temp < 0 or top_k < 0:
        raise ValueError(f"temperature, alg_temp and top_k must be >= 0, got {temperature}, {alg_temp} and {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1: off), got {top_p}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be None or callable as callback(step, x, logits), got {callback!r}")


def _check_masked_options(name: str, variant, *, block_length, threshold, cfg_scale, alg_temp, temperature, top_k,
                          top_p) -> None:
    """Options that do not apply to the chosen sampler are errors, not silently ignored."""
    # (dream's confidence algorithms rank the filtered distribution's confidences; dream:origin ranks none)
    if temperature == 0 and (top_k or top_p < 1) and (name != "dream" or variant == "origin"):
        chosen = "dream:origin" if name == "dream" else name
        raise ValueError(f"top_k and top_p filter the distribution a token is drawn from; at temperature 0 {chosen!r} "
                         "takes the argmax, which they keep: pass a temperature > 0 or leave them off")
    if block_length is not None:
        if name not in BLOCK_SAMPLERS:
            raise ValueError(f"block_length applies only to the {' and '.join(BLOCK_SAMPLERS)} samplers, not {name!r}")
        _check_lengths(block_length=block_length)
    if threshold is not None:
        if name != "fast-dllm":
            raise ValueError("threshold applies only to the fast-dllm sampler")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a probability in [0, 1] (Fast-dLLM's default: 0.9), got {threshold}")
    # (its type and finiteness: _check_sampling); past float32's largest, guidance overflows the logits
    if not 0 <= cfg_scale <= FLOAT32_MAX:
        raise ValueError(f"cfg_scale must be a finite number >= 0 within float32's range (0: no guidance), "
                         f"got {cfg_scale}")
    if cfg_scale and name != "llada":
        raise ValueError("cfg_scale applies only to the llada sampler")
    if alg_temp and (name != "dream" or variant == "origin"):
        chosen = "dream:origin" if name == "dream" else repr(name)
        raise ValueError("alg_temp applies only to the dream sampler's confidence algorithms "
                         f"(entropy, maskgit_plus, topk_margin), not to {chosen}")


def _parse_sampler(sampler: str) -> tuple[str, str | None]:
    if not isinstance(sampler, str):
        raise TypeError(f"sampler must be a name such as 'llada', got {sampler!r}")
    name, colon, variant = sampler.partition(":")
    if name not in SAMPLERS or (colon and not variant):
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)} "
                         "(variants: llada:random, dream:origin|maskgit_plus|topk_margin|entropy)")
    if variant and variant not in VARIANTS.get(name, ()):
        choices = VARIANTS.get(name)
        raise ValueError(f"sampler {name!r} has no variant {variant!r}; " + (
            f"choose one of {', '.join(f'{name}:{c}' for c in choices)}" if choices else f"it has none: use {name!r}"))
    return name, variant or DEFAULT_VARIANT.get(name)


# generate()'s defaults, and temperature 1 (the exact reverse process SEDD samples anyway): values
# that leave a SEDD sampler unchanged, so passing them is not an error.
_SEDD_NEUTRAL = {"temperature": (0.0, 1.0), "top_k": (0,), "top_p": (1.0,), "alg_temp": (0.0,), "cfg_scale": (0.0,)}


def _check_sedd_options(options: dict) -> None:
    given = [k for k, v in options.items() if v not in _SEDD_NEUTRAL.get(k, (None,))]
    if given:
        raise ValueError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to the SEDD samplers")


def check_options(sampler: str, *, gen_length: int, steps: int, device: torch.device, block_length: int | None = None,
                  temperature: float = 0.0, cache=None, cuda_graph: bool = False) -> None:
    """What ``generate`` refuses of these options whatever the model, for a caller to check before
    it loads one (a published checkpoint's weights take minutes): the sampler, the lengths (llada's
    blocks too), the temperature, and the options the sampler does not take."""
    name, variant = _parse_sampler(sampler)
    _check_lengths(gen_length=gen_length, steps=steps)
    _check_steps(name, steps)
    _check_sampling(temperature=temperature, top_k=0, top_p=1.0, threshold=None, cfg_scale=0.0, alg_temp=0.0,
                    generator=None, callback=None)
    _check_cache(name, cache)
    _check_cuda_graph(cuda_graph, cache, device)
    if name.startswith("sedd-"):
        _check_sedd_options(dict(block_length=block_length, temperature=temperature))
        return
    _check_masked_options(name, variant, block_length=block_length, threshold=None, cfg_scale=0.0, alg_temp=0.0,
                          temperature=temperature, top_k=0, top_p=1.0)
    if name == "llada":
        masked.llada_blocks(gen_length, steps, gen_length if block_length is None else block_length)
