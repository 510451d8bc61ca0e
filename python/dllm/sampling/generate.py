"""dllm.generate: one entry point for every sampler."""

from __future__ import annotations

import functools

import torch

from .. import ops
from . import cuda_graph as graphs, masked, score
from ..devices import made_current
from ..models import ARTransformer
from ..sedd import Absorbing, Geometric, LogLinear
from .canvas import UNKNOWN, _canvas, _check_window
from .loop import StepLoop
from .model_protocol import (check_takes_attention_mask, logits_shift_of, mask_id_of, pad_id_of, score_graph_of,
                             time_conditioned, vocab_size_of)
from .options import (_check_cache, _check_cuda_graph, _check_lengths, _check_masked_options, _check_sampling,
                      _check_sedd_options, _check_steps, _parse_sampler, check_generator_device)
from .output import GenerationOutput

FAST_DLLM_BLOCK = 32  # Fast-dLLM's default block size


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
