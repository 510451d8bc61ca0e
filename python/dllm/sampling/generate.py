"""dllm.generate: one entry point for every sampler."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping

import torch

from .. import ops
from . import cuda_graph as graphs, masked, score
from .._limits import FLOAT32_MAX, INT64_MAX
from ..devices import indexed, made_current
from ..models import ARTransformer
from ..sedd import Absorbing, Geometric, LogLinear
from .loop import StepLoop
from .model_protocol import (check_takes_attention_mask, logits_shift_of, mask_id_of, max_seq_len_of, pad_id_of,
                             score_graph_of, time_conditioned, vocab_size_of)
from .output import GenerationOutput

SAMPLERS = ("sedd-analytic", "sedd-euler", "mdlm", "first-hitting", "llada", "dream", "fast-dllm")
VARIANTS = {"llada": ("low_confidence", "random"), "dream": tuple(masked.DREAM_ALGS)}
DEFAULT_VARIANT = {"llada": "low_confidence", "dream": "entropy"}
UNKNOWN = -1  # in an infill template: a position to generate (the only marker a uniform graph has)


CACHES = ("prefix", "dual")
BLOCK_SAMPLERS = ("llada", "fast-dllm")
FAST_DLLM_BLOCK = 32  # Fast-dLLM's default block size


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


def _check_window(model, canvas: int, gen_length: int) -> None:
    """A canvas longer than the model takes is named by its parts before the first network call."""
    window = max_seq_len_of(model)
    if window is None or canvas <= window:
        return
    prompt = canvas - gen_length
    fix = (f"lower gen_length to at most {window}" if prompt == 0 else
           f"shorten the prompt, or lower gen_length to at most {window - prompt}" if prompt < window else
           "shorten the prompt: it alone fills the window")
    raise ValueError(f"the prompt ({prompt} tokens) and gen_length ({gen_length}) make a canvas of {canvas} tokens, "
                     f"longer than the model's max_seq_len of {window}: {fix}")


def _nothing_to_generate(model, x: torch.Tensor, attention_mask, return_history: bool) -> GenerationOutput:
    """The output of a canvas with nothing to fill (an empty batch, or an infill that knows every
    token), without calling the model (whose reshapes may refuse zero rows); a padded batch for a
    model that cannot take the padding is refused as it would be with something to fill."""
    if attention_mask is not None:
        check_takes_attention_mask(model)
    return GenerationOutput(sequences=x, history=[] if return_history else None)


def _device_of(model) -> torch.device:
    """Where the canvas is made: the model's first parameter's device, else its first buffer's, else
    its ``device`` attribute (a callable that wraps a model), else the CPU."""
    for tensors in ("parameters", "buffers"):
        found = next((t.device for t in getattr(model, tensors, lambda: iter(()))()), None)
        if found is not None:
            return found
    device = getattr(model, "device", None)
    device = torch.device(device) if isinstance(device, (str, torch.device)) else torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():  # (only a declared device can be one)
        raise ValueError(f"the model says it runs on {device}, but no CUDA device is visible")
    return device


def _on_the_models_device(fn):
    """Runs ``fn(model, ...)`` with the model's CUDA device current (step_times' events and a CUDA
    graph's capture stream are the current device's)."""
    @functools.wraps(fn)
    def on_device(model, *args, **kwargs):
        with made_current(_device_of(model)):
            return fn(model, *args, **kwargs)
    return on_device


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


def token_tensor(value, what: str, device) -> torch.Tensor:
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{what} must hold token ids, not text ({value[:20]!r}): encode it with the model's "
                        "tokenizer first")
    if isinstance(value, Mapping):  # a tokenizer's output (a dict or Hugging Face's BatchEncoding)
        raise TypeError(f"{what} must hold token ids, got a {type(value).__name__} with keys {list(value)[:4]}: "
                        "pass a tokenizer's output as prompt=enc['input_ids'], attention_mask=enc['attention_mask']")
    try:
        t = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError) as error:  # ragged nested lists, objects that are not numbers
        raise ValueError(f"{what} must be a tensor, an array or a list of token ids, with rows of one length "
                         f"(got {type(value).__name__}: {error})") from None
    if t.numel() and (t.dtype == torch.bool or t.is_floating_point() or t.is_complex()):
        raise TypeError(f"{what} must hold integer token ids, got {t.dtype}")
    return t.to(torch.int64)


def _left_align(prompt: torch.Tensor, attention_mask, device):
    """The prompts with their padding moved to the left (right-padded rows are rotated), and the mask."""
    mask = torch.as_tensor(attention_mask, device=device)
    mask = mask[None] if mask.dim() == 1 else mask
    if mask.shape != prompt.shape:
        raise ValueError(f"attention_mask must have the prompt's shape {tuple(prompt.shape)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("attention_mask must hold 1 (or True) on real tokens and 0 (or False) on padding")
    mask = mask.bool()
    run_starts = mask & ~torch.nn.functional.pad(mask, (1, 0))[:, :-1]
    if bool((run_starts.sum(-1) > 1).any()):
        raise ValueError("attention_mask must mark one contiguous run of real tokens per row (left or right padding)")
    order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices  # pads first, tokens in their order
    return prompt.gather(1, order), mask.gather(1, order)


def _check_vocab(tokens: torch.Tensor, what: str, vocab_size: int | None, placeholder: int,
                 pad_id: int | None = None) -> None:
    """``pad_id``: the model's, where it pads ``tokens``."""
    if vocab_size is None:
        return
    outside = tokens[(tokens >= vocab_size) & (tokens != placeholder)]
    if pad_id is not None and pad_id >= vocab_size and bool((outside == pad_id).any()):
        raise ValueError(f"the model's pad_id {pad_id}, which pads the prompts, is outside its vocabulary of "
                         f"{vocab_size}")
    if outside.numel():
        raise ValueError(f"the {what} holds token id {int(outside.max())}, outside the model's vocabulary of "
                         f"{vocab_size}")


def _canvas(prompt, attention_mask, infill, gen_length: int, mask_id: int, pad_id: int, device,
            vocab_size: int | None = None):
    """Left-padded prompts followed by gen_length masks (or the infill template), and the prompts'
    attention mask: None where nothing is padded, so the model runs its unmasked path."""
    if infill is not None:
        infill = token_tensor(infill, "infill", device)
        infill = torch.where(infill == UNKNOWN, mask_id, infill)
        infill = infill[None] if infill.dim() == 1 else infill
        if infill.dim() != 2 or infill.shape[-1] != gen_length:
            raise ValueError(f"infill must be [gen_length] or [B, gen_length] with gen_length {gen_length}, "
                             f"got {tuple(infill.shape)}")
        if bool(((infill < 0) & (infill != mask_id)).any()):
            raise ValueError(f"infill holds negative ids other than {UNKNOWN} (the unknown marker)")
    if prompt is None:
        if attention_mask is not None:
            raise ValueError("attention_mask marks the padding of a prompt; there is no prompt (prompt=None)")
        prompt = torch.empty(1 if infill is None else infill.shape[0], 0, dtype=torch.int64, device=device)
    elif isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError("prompt is an empty list; pass None for unconditional generation")
        if all(isinstance(t, numbers.Integral) for t in prompt):
            prompt = [prompt]  # one prompt's token ids, as a Hugging Face tokenizer's encode returns them
        rows = [token_tensor(p, "prompt", device) for p in prompt]
        if any(r.dim() != 1 for r in rows):
            raise ValueError("a list of prompts must hold 1-D prompts (or be one prompt's token ids)")
        width = max(r.numel() for r in rows)
        if attention_mask is not None:
            # a batch padded to one length, as a tokenizer returns it with padding=True (lists)
            if any(r.numel() < width for r in rows):
                raise ValueError("attention_mask marks the padding of prompts of one length; these prompts have "
                                 "different lengths, which dllm left-pads itself: drop attention_mask, or give "
                                 "the prompts padded to one length")
            prompt, attention_mask = _left_align(torch.stack(rows), attention_mask, device)
        else:
            if any(r.numel() < width for r in rows):
                if pad_id == mask_id:
                    raise ValueError(f"the model's pad_id (model.pad_id, 0 when it sets none) equals its mask_id "
                                     f"({mask_id}): ragged prompts need another pad_id")
                attention_mask = torch.stack([torch.arange(width, device=device) >= width - r.numel() for r in rows])
            prompt = torch.full((len(rows), width), pad_id, dtype=torch.int64, device=device)
            for i, r in enumerate(rows):
                prompt[i, width - r.numel():] = r
    else:
        prompt = token_tensor(prompt, "prompt", device)
        prompt = prompt[None] if prompt.dim() == 1 else prompt
        if prompt.dim() != 2:
            raise ValueError(f"prompt must be [P] or [B, P], got shape {tuple(prompt.shape)}")
        if attention_mask is not None:
            prompt, attention_mask = _left_align(prompt, attention_mask, device)
    if attention_mask is not None and mask_id >= 0:  # (a uniform graph's -1 placeholder is refused below)
        masks_in_padding = (prompt == mask_id) & ~attention_mask
        if pad_id != mask_id:  # the padding is never attended: any other id serves (filled without a host sync)
            prompt = prompt.masked_fill(masks_in_padding, pad_id)
        elif bool(masks_in_padding.any()):
            raise ValueError(f"the prompts' padding (attention_mask 0) holds the mask token {mask_id}, which is "
                             "also the model's pad_id: pad with another id, or give the model a pad_id")
    if bool((prompt < 0).any()):
        raise ValueError("the prompt holds negative token ids")
    if bool((prompt == mask_id).any()):
        raise ValueError(f"the prompt (or its padding) contains the mask token {mask_id}")
    _check_vocab(prompt, "prompt", vocab_size, mask_id, None if attention_mask is None else pad_id)
    if infill is not None:
        _check_vocab(infill, "infill", vocab_size, mask_id)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    if infill is not None and prompt.shape[0] == 1 < infill.shape[0]:
        # one prompt, several templates: each template completes its own copy of the prompt
        prompt = prompt.expand(infill.shape[0], -1)
        attention_mask = None if attention_mask is None else attention_mask.expand(infill.shape[0], -1)
    batch, width = prompt.shape
    gen = torch.full((batch, gen_length), mask_id, dtype=torch.int64, device=device)
    if infill is not None:
        if infill.shape[0] not in (1, batch):
            raise ValueError(f"infill has {infill.shape[0]} rows for {batch} prompts")
        gen = infill.expand(batch, gen_length).clone()
    x = torch.cat([prompt, gen], 1)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones_like(gen, dtype=torch.bool)], 1)
    return x, attention_mask, width


@_on_the_models_device
@torch.no_grad()
def generate(model, prompt=None, *, gen_length: int, steps: int, sampler: str, block_length: int | None = None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, threshold: float | None = None,
             alg_temp: float = 0.0, cfg_scale: float = 0.0, infill=None, attention_mask=None, cache=None,
             cuda_graph: bool = False, generator: torch.Generator | None = None, callback=None,
             return_history: bool = False) -> GenerationOutput:
    """Generate with a diffusion LM: start from masks after the prompt and denoise.

    Args:
        model: see :mod:`dllm.sampling.model_protocol` (tokens -> logits, a ``mask_id``).
        prompt: int64 ``[B, P]`` or ``[P]`` (a tensor, or a NumPy array as dllm's tokenizers'
            ``encode`` returns it), a list of ints (one prompt, as a Hugging Face tokenizer's
            ``encode`` returns it), or a list of 1-D prompts of different lengths (left padded with
            ``model.pad_id``); None for one unconditional sample (``torch.empty(B, 0,
            dtype=torch.int64)`` for ``B``). Lists of one length may come with ``attention_mask``
            (a tokenizer's padded batch).
        gen_length: tokens to generate after the prompt.
        steps: sampler steps ("first-hitting" takes one per masked token and "fast-dllm" adapts
            its count, so both ignore it; the SEDD samplers add the denoising step). mdlm, dream
            and the SEDD samplers make a time grid of steps + 1 points first (past 2**60 - 2, refused).
            "llada" skips the steps that commit no token (as when steps > gen_length), "dream" calls the
            network at each step as Dream's code does (nfe = steps).
        sampler: "sedd-analytic" or "sedd-euler" (score models, with the final denoising
            step), "mdlm", "first-hitting", "llada" (or "llada:random"), "dream" (or
            "dream:origin", "dream:maskgit_plus", "dream:topk_margin"; default entropy), or
            "fast-dllm". Each names the paper it follows in its docstring
            (dllm.sampling.score, dllm.sampling.masked).
        block_length: semi-autoregressive block size for "llada" (default gen_length; it must
            divide gen_length, and the block count must divide steps) and "fast-dllm" (default 32; a
            last block may be shorter); an error for the other samplers.
        temperature, top_k, top_p: the proposal distribution (0 = argmax, the default; the
            papers' ancestral samplers, "mdlm" and "first-hitting", draw at 1), see
            :func:`dllm.ops.predict_masked`. At temperature 0 top_k and top_p keep the argmax and
            change nothing, an error, except for "dream", whose confidences they filter (as Dream
            does; "dream:origin" ranks none, so there too they are an error). The SEDD samplers
            draw from the reverse process itself: they accept only the defaults (and temperature 1)
            and are never greedy.
        threshold: Fast-dLLM's confidence threshold (default 0.9).
        alg_temp: Dream's temperature over positions (0: take the top ones).
        cfg_scale: LLaDA's unsupervised classifier-free guidance (0: off): the unconditional
            logits come from the canvas with the given tokens (the prompt's, the infill's) masked.
        infill: int64 ``[gen_length]`` or ``[B, gen_length]``: a template of the generated region;
            its tokens other than the mask (or -1) are known and stay fixed (a prefix, a suffix,
            any pattern; a template that knows every token returns at once, nfe 0). A
            uniform-graph model has no mask: mark unknown positions with -1.
            One template serves every prompt; ``B`` templates with one prompt complete ``B``
            copies of it.
        attention_mask: bool (or 0/1) ``[B, P]`` (``[P]`` with a 1-D prompt) for padded prompts
            (True on real tokens), one contiguous run per row: right-padded rows are moved to the
            left, so ``sequences`` always holds left-padded prompts followed by the generated
            region. The model then gets ``attention_mask=`` over the whole canvas; a mask without
            padding is dropped.
        cache: "fast-dllm" only: None (every step runs the whole canvas), "prefix" or "dual"
            (Fast-dLLM's approximate KV caches, refreshed once per block; the model needs the
            KV-cache interface of :mod:`dllm.sampling.model_protocol`).
        cuda_graph: capture a sampler step (network + the sampler's ops) in a CUDA graph and
            replay it for every step, on a CUDA model, so a small model's step costs its kernels and
            not their launches. Every sampler; fast-dllm with ``cache=None`` or ``"dual"`` (a
            prefix-cached step's shape shrinks from block to block), its dual-cached steps handing
            the model ``start`` as a one-element tensor. mdlm captures two steps (with and without
            the network), SEDD's final denoising step runs eagerly. The host still syncs once a
            step where the sampler decides there: mdlm's reuse of the logits, fast-dllm's block end.
            A replay checks no logits: NaN or +inf from the model is a ValueError when a step
            commits nothing (fast-dllm) or the call ends with masks left, not at the step.
            The graphs stay with the model for the next call with the same options, shapes,
            generator object and weights (updated in place, not replaced): the last 16 such
            configurations (``dllm.sampling.cuda_graph``; ``clear_graphs(model)`` frees them).
            Under autocast each call captures its own, since autocast's cached weight casts end with
            the caller's autocast region: a model with bfloat16 weights keeps its graphs.
        generator: a ``torch.Generator`` on the model's device.
        callback: ``callback(step, x, logits)`` after every step (reading x syncs a GPU); with a
            cache, logits covers only the positions the step fed. x is the live canvas, which the
            next steps change in place: clone it to keep it (``return_history`` does); writing
            into it changes the generation. With ``cuda_graph=True`` logits is the graph's own
            buffer, which the next replay (this call's or a later call's) overwrites: clone it too.
        return_history: keep the canvas after every step.

    Returns:
        :class:`GenerationOutput` (sequences [B, P + gen_length], history, nfe, step_times).
        nfe counts model evaluations; a classifier-free-guidance step counts 2.
    """
    name, variant = _parse_sampler(sampler)
    # load_for_sampling returns an AR folder's network as it is, with kind "ar" (given a mask id, a
    # causal network may still be sampled as a diffusion model)
    if isinstance(model, ARTransformer) and getattr(model, "mask_id", None) is None:
        raise ValueError("this is an autoregressive model, which dllm.generate's diffusion samplers cannot run: "
                         "sample it with model.generate(prompt, max_new_tokens)")
    _check_lengths(gen_length=gen_length, steps=steps)
    _check_steps(name, steps)
    _check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, threshold=threshold, cfg_scale=cfg_scale,
                    alg_temp=alg_temp, generator=generator, callback=callback)
    if name.startswith("sedd-"):
        return _generate_sedd(model, prompt, name.removeprefix("sedd-"), gen_length=gen_length, steps=steps,
                              infill=infill, attention_mask=attention_mask, cache=cache, cuda_graph=cuda_graph,
                              generator=generator, callback=callback, return_history=return_history,
                              unsupported=dict(block_length=block_length, temperature=temperature, top_k=top_k,
                                               top_p=top_p, threshold=threshold, alg_temp=alg_temp, cfg_scale=cfg_scale))
    device = _device_of(model)
    _check_cache(name, cache)
    _check_cuda_graph(cuda_graph, cache, device)
    check_generator_device(generator, device)
    _check_masked_options(name, variant, block_length=block_length, threshold=threshold, cfg_scale=cfg_scale,
                          alg_temp=alg_temp, temperature=temperature, top_k=top_k, top_p=top_p)
    if score_graph_of(model) is not None:
        raise ValueError(f"this is a score (SEDD) model: sample it with sedd-analytic or sedd-euler, not {name!r}")
    mask_id = mask_id_of(model)
    x, attention_mask, start = _canvas(prompt, attention_mask, infill, gen_length, mask_id,
                                       pad_id_of(model), device, vocab_size_of(model))
    _check_window(model, x.shape[1], gen_length)
    if name == "llada":  # before any early return: an option error does not depend on the template
        masked.llada_blocks(gen_length, steps, gen_length if block_length is None else block_length)
        # the tokens given (a prompt's, an infill template's) are guidance's condition, as in LLaDA's
        # generate, whose unconditional canvas masks every position not masked at the start
        given = x != mask_id
        if attention_mask is not None:
            given[:, :start] &= attention_mask[:, :start]  # padding stays padding
        if cfg_scale and not bool(given.any()):
            raise ValueError("cfg_scale needs a prompt or an infill template's known tokens: guidance contrasts "
                             "the canvas with them and without them")
    if x.shape[0] == 0 or not bool((x == mask_id).any()):
        return _nothing_to_generate(model, x, attention_mask, return_history)
    # on a canvas no longer than the shift every position reads row 0, as under a shift of L - 1,
    # the largest predict_masked takes
    shift = min(logits_shift_of(model), x.shape[1] - 1)
    # Everything a step's graph freezes, besides the shapes its session keys by (the model's
    # attributes too: a step reads them as it is captured)
    config = (name, variant, steps, block_length, temperature, top_k, top_p, threshold, alg_temp, cfg_scale, cache,
              mask_id, shift, time_conditioned(model), tuple(x.shape), start, attention_mask is None)
    common = dict(mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p, shift=shift, generator=generator)
    with graphs.session_for(model, config, generator, enabled=cuda_graph) as session:
        loop = StepLoop(model, attention_mask, callback, return_history, device, graphs=session, mask_id=mask_id)
        if name == "llada":
            masked.llada(loop, x, start=start, steps=steps, cfg_scale=cfg_scale, remasking=variant,
                         block_length=gen_length if block_length is None else block_length, given=given, **common)
        elif name == "mdlm":
            masked.mdlm(loop, x, steps=steps, **common)
        elif name == "first-hitting":
            masked.first_hitting(loop, x, **common)
        elif name == "dream":
            masked.dream(loop, x, steps=steps, alg=variant, alg_temp=alg_temp, **common)
        else:
            masked.fast_dllm(loop, x, start=start,
                             block_length=FAST_DLLM_BLOCK if block_length is None else block_length,
                             threshold=0.9 if threshold is None else threshold, cache=cache, **common)
        ops.raise_pending_errors()  # NaN logits of the last steps, before the canvas is read back
        if bool((x == mask_id).any()):
            raise ValueError(masked.UNFILLED)
    return GenerationOutput(sequences=x, history=loop.history, nfe=loop.nfe, step_times=loop.step_times())


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


def _generate_sedd(model, prompt, method, *, gen_length, steps, infill, attention_mask, cache, cuda_graph, generator,
                   callback, return_history, unsupported) -> GenerationOutput:
    """The SEDD samplers: the canvas starts at the graph's limit (all mask, or uniform tokens)."""
    graph = score_graph_of(model)
    if graph is None:
        found = getattr(model, "graph", None)
        raise ValueError("the SEDD samplers need a score model with a `graph` attribute (dllm.sedd.Absorbing or "
                         "Uniform)" + ("" if found is None else f", not a {type(found).__name__}") +
                         "; a masked-diffusion model samples with mdlm, first-hitting, llada, dream or fast-dllm")
    _check_cache("sedd-" + method, cache)
    device = _device_of(model)
    _check_cuda_graph(cuda_graph, cache, device)
    check_generator_device(generator, device)
    _check_sedd_options(unsupported)
    noise = getattr(model, "noise", None)
    if noise is None:
        noise = LogLinear() if isinstance(graph, Absorbing) else Geometric()
    elif not callable(noise):
        raise TypeError(f"model.noise must be a schedule, t -> (sigma, dsigma) (dllm.sedd.LogLinear or Geometric), "
                        f"not a {type(noise).__name__}")
    placeholder = graph.mask_id if isinstance(graph, Absorbing) else UNKNOWN
    x, attention_mask, _ = _canvas(prompt, attention_mask, infill, gen_length, placeholder,
                                   pad_id_of(model), device, getattr(graph, "num_classes", None))
    _check_window(model, x.shape[1], gen_length)
    known = x != placeholder
    if x.shape[0] == 0 or bool(known.all()):
        return _nothing_to_generate(model, x, attention_mask, return_history)
    if placeholder == UNKNOWN:
        x = torch.where(known, x, graph.sample_limit(*x.shape, device=device, generator=generator))
    has_known = bool(known.any())
    config = ("sedd-" + method, graph.name, graph.num_classes, graph.scale_by_sigma, steps, tuple(x.shape),
              attention_mask is None, has_known)
    with graphs.session_for(model, config, generator, enabled=cuda_graph) as session:
        loop = StepLoop(model, attention_mask, callback, return_history, device, graphs=session)
        x = score.sedd(loop, x, graph=graph, noise=noise, method=method, steps=steps,
                       known=known if has_known else None, generator=generator)
        ops.raise_pending_errors()
    return GenerationOutput(sequences=x, history=loop.history, nfe=loop.nfe, step_times=loop.step_times())
