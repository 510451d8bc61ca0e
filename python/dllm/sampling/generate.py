"""dllm.generate: one entry point for every sampler."""

from __future__ import annotations

import torch

from . import masked, score
from ..sedd import Absorbing, Geometric, LogLinear
from .loop import StepLoop
from .model_protocol import mask_id_of
from .output import GenerationOutput

SAMPLERS = ("sedd-analytic", "sedd-euler", "mdlm", "first-hitting", "llada", "dream", "fast-dllm")
VARIANTS = {"llada": ("low_confidence", "random"), "dream": tuple(masked.DREAM_ALGS)}
DEFAULT_VARIANT = {"llada": "low_confidence", "dream": "entropy"}
UNKNOWN = -1  # in an infill template: a position to generate (the only marker a uniform graph has)


CACHES = ("prefix", "dual")
GRAPHED_SAMPLERS = ("llada", "dream")  # static step shapes and no host decisions inside a step


def _check_cache(name: str, cache) -> None:
    if cache is None:
        return
    if cache not in CACHES:
        raise ValueError(f"unknown cache {cache!r}; choose 'prefix' or 'dual' (or None)")
    if name != "fast-dllm":
        raise ValueError(f"cache={cache!r} applies only to the fast-dllm sampler, not {name!r}")


def _check_cuda_graph(name: str, cuda_graph: bool, cache, device: torch.device) -> None:
    if not cuda_graph:
        return
    if name not in GRAPHED_SAMPLERS:
        raise ValueError(f"cuda_graph=True supports the {' and '.join(GRAPHED_SAMPLERS)} samplers, not {name!r}: "
                         "mdlm, first-hitting, fast-dllm and the SEDD samplers decide on the host between steps "
                         "(skips, step counts, block ends) or change shapes")
    if cache is not None:
        raise ValueError("cuda_graph=True cannot be combined with cache=")
    if device.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA model; this one is on {device}")


def _device_of(model) -> torch.device:
    return next((p.device for p in getattr(model, "parameters", lambda: iter(()))()), torch.device("cpu"))


def _parse_sampler(sampler: str) -> tuple[str, str | None]:
    name, _, variant = sampler.partition(":")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)} "
                         "(variants: llada:random, dream:origin|maskgit_plus|topk_margin|entropy)")
    if variant and variant not in VARIANTS.get(name, ()):
        raise ValueError(f"sampler {name!r} has no variant {variant!r}; variants: {VARIANTS.get(name, ())}")
    return name, variant or DEFAULT_VARIANT.get(name)


def _canvas(prompt, attention_mask, infill, gen_length: int, mask_id: int, pad_id: int, device):
    """Left-padded prompts followed by gen_length masks (or the infill template)."""
    if prompt is None:
        batch = 1 if infill is None else (infill.shape[0] if infill.dim() == 2 else 1)
        prompt = torch.empty(batch, 0, dtype=torch.int64, device=device)
    elif isinstance(prompt, (list, tuple)):
        rows = [torch.as_tensor(p, dtype=torch.int64, device=device).flatten() for p in prompt]
        width = max(r.numel() for r in rows)
        padded = torch.full((len(rows), width), pad_id, dtype=torch.int64, device=device)
        pad_mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
        for i, r in enumerate(rows):
            padded[i, width - r.numel():] = r
            pad_mask[i, width - r.numel():] = True
        if attention_mask is not None:
            raise ValueError("give either a list of ragged prompts or a padded prompt with attention_mask, not both")
        prompt, attention_mask = padded, (None if bool(pad_mask.all()) else pad_mask)
    else:
        prompt = torch.as_tensor(prompt, dtype=torch.int64, device=device)
        prompt = prompt[None] if prompt.dim() == 1 else prompt
    if (prompt == mask_id).any():
        raise ValueError(f"the prompt contains the mask token {mask_id}")
    batch, width = prompt.shape
    gen = torch.full((batch, gen_length), mask_id, dtype=torch.int64, device=device)
    if infill is not None:
        infill = torch.as_tensor(infill, dtype=torch.int64, device=device)
        infill = torch.where(infill == UNKNOWN, mask_id, infill)
        infill = infill[None] if infill.dim() == 1 else infill
        if infill.shape[-1] != gen_length:
            raise ValueError(f"infill must cover the generated region: last dimension {gen_length}, got {tuple(infill.shape)}")
        gen = infill.expand(batch, gen_length).clone()
    x = torch.cat([prompt, gen], 1)
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask, device=device).bool()
        if attention_mask.shape != prompt.shape:
            raise ValueError(f"attention_mask must have the prompt's shape {tuple(prompt.shape)}, got {tuple(attention_mask.shape)}")
        attention_mask = torch.cat([attention_mask, torch.ones_like(gen, dtype=torch.bool)], 1)
    return x, attention_mask, width


@torch.no_grad()
def generate(model, prompt=None, *, gen_length: int, steps: int, sampler: str, block_length: int | None = None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, threshold: float | None = None,
             alg_temp: float = 0.0, cfg_scale: float = 0.0, infill=None, attention_mask=None, cache=None,
             cuda_graph: bool = False, generator: torch.Generator | None = None, callback=None,
             return_history: bool = False) -> GenerationOutput:
    """Generate with a diffusion LM: start from masks after the prompt and denoise.

    Args:
        model: see :mod:`dllm.sampling.model_protocol` (tokens -> logits, a ``mask_id``).
        prompt: int64 ``[B, P]`` or ``[P]``, or a list of 1-D prompts of different lengths (left
            padded with ``model.pad_id``); None for unconditional generation.
        gen_length: tokens to generate after the prompt.
        steps: sampler steps ("first-hitting" takes one per masked token and "fast-dllm" adapts
            its count, so both ignore it; the SEDD samplers add the denoising step).
        sampler: "sedd-analytic" or "sedd-euler" (score models, with the final denoising
            step), "mdlm", "first-hitting", "llada" (or "llada:random"), "dream" (or
            "dream:origin", "dream:maskgit_plus", "dream:topk_margin"; default entropy), or
            "fast-dllm". Each names the paper it follows in its docstring
            (dllm.sampling.score, dllm.sampling.masked).
        block_length: semi-autoregressive block size for "llada" (default gen_length) and
            "fast-dllm" (default 32).
        temperature, top_k, top_p: the proposal distribution (0 = argmax), see
            :func:`dllm.ops.predict_masked`.
        threshold: Fast-dLLM's confidence threshold (default 0.9).
        alg_temp: Dream's temperature over positions (0: take the top ones).
        cfg_scale: LLaDA's unsupervised classifier-free guidance (0: off).
        infill: int64 ``[gen_length]`` or ``[B, gen_length]``: a template of the generated region;
            its tokens other than the mask (or -1) are known and stay fixed (a prefix, a suffix,
            any pattern). A uniform-graph model has no mask: mark unknown positions with -1.
        attention_mask: bool ``[B, P]`` for left-padded prompts (True on real tokens).
        cache: "fast-dllm" only: None (every step runs the whole canvas), "prefix" or "dual"
            (Fast-dLLM's approximate KV caches, refreshed once per block; the model needs the
            KV-cache interface of :mod:`dllm.sampling.model_protocol`).
        cuda_graph: capture one sampler step (network + predict_masked + commit_tokens) in a CUDA
            graph and replay it for every step ("llada" and "dream", on a CUDA model).
        generator: a ``torch.Generator`` on the model's device.
        callback: ``callback(step, x, logits)`` after every step (reading x syncs a GPU); with a
            cache, logits covers only the positions the step fed.
        return_history: keep the canvas after every step.

    Returns:
        :class:`GenerationOutput` (sequences [B, P + gen_length], history, nfe, step_times).
        nfe counts model evaluations; a classifier-free-guidance step counts 2.
    """
    name, variant = _parse_sampler(sampler)
    if name.startswith("sedd-"):
        return _generate_sedd(model, prompt, name.removeprefix("sedd-"), gen_length=gen_length, steps=steps,
                              infill=infill, attention_mask=attention_mask, cache=cache, cuda_graph=cuda_graph,
                              generator=generator, callback=callback, return_history=return_history,
                              unsupported=dict(block_length=block_length, temperature=temperature, top_k=top_k,
                                               top_p=top_p, threshold=threshold, alg_temp=alg_temp, cfg_scale=cfg_scale))
    if gen_length <= 0 or steps <= 0:
        raise ValueError(f"gen_length and steps must be positive, got {gen_length} and {steps}")
    device = _device_of(model)
    _check_cache(name, cache)
    _check_cuda_graph(name, cuda_graph, cache, device)
    if threshold is not None and name != "fast-dllm":
        raise ValueError("threshold applies only to the fast-dllm sampler")
    if cfg_scale and name != "llada":
        raise ValueError("cfg_scale applies only to the llada sampler")
    if alg_temp and name != "dream":
        raise ValueError("alg_temp applies only to the dream sampler")
    mask_id = mask_id_of(model)
    x, attention_mask, start = _canvas(prompt, attention_mask, infill, gen_length, mask_id,
                                       int(getattr(model, "pad_id", 0)), device)
    loop = StepLoop(model, attention_mask, callback, return_history, device, cuda_graph=cuda_graph, generator=generator)
    common = dict(mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p,
                  shift=int(getattr(model, "logits_shift", 0)), generator=generator)
    if name == "llada":
        masked.llada(loop, x, start=start, steps=steps, block_length=block_length or gen_length, cfg_scale=cfg_scale,
                     remasking=variant, prompt_positions=slice(0, start), **common)
    elif name == "mdlm":
        masked.mdlm(loop, x, steps=steps, **common)
    elif name == "first-hitting":
        masked.first_hitting(loop, x, **common)
    elif name == "dream":
        masked.dream(loop, x, steps=steps, alg=variant, alg_temp=alg_temp, **common)
    else:
        masked.fast_dllm(loop, x, start=start, block_length=block_length or 32,
                         threshold=0.9 if threshold is None else threshold, cache=cache, **common)
    return GenerationOutput(sequences=x, history=loop.history, nfe=loop.nfe, step_times=loop.step_times())


# generate()'s defaults, and temperature 1 (the exact reverse process SEDD samples anyway): values
# that leave a SEDD sampler unchanged, so passing them is not an error.
_SEDD_NEUTRAL = {"temperature": (0.0, 1.0), "top_k": (0,), "top_p": (1.0,), "alg_temp": (0.0,), "cfg_scale": (0.0,)}


def _generate_sedd(model, prompt, method, *, gen_length, steps, infill, attention_mask, cache, cuda_graph, generator,
                   callback, return_history, unsupported) -> GenerationOutput:
    """The SEDD samplers: the canvas starts at the graph's limit (all mask, or uniform tokens)."""
    graph = getattr(model, "graph", None)
    if graph is None:
        raise ValueError("the SEDD samplers need a score model with a `graph` attribute (dllm.sedd.Absorbing or Uniform)")
    _check_cache("sedd-" + method, cache)
    _check_cuda_graph("sedd-" + method, cuda_graph, cache, _device_of(model))
    given = [k for k, v in unsupported.items() if v not in _SEDD_NEUTRAL.get(k, (None,))]
    if given:
        raise ValueError(f"{', '.join(given)} do not apply to the SEDD samplers")
    if gen_length <= 0 or steps <= 0:
        raise ValueError(f"gen_length and steps must be positive, got {gen_length} and {steps}")
    noise = getattr(model, "noise", None) or (LogLinear() if isinstance(graph, Absorbing) else Geometric())
    placeholder = graph.mask_id if isinstance(graph, Absorbing) else UNKNOWN
    if infill is not None:
        infill = torch.as_tensor(infill)
        infill = torch.where(infill == UNKNOWN, placeholder, infill)
    device = _device_of(model)
    x, attention_mask, _ = _canvas(prompt, attention_mask, infill, gen_length, placeholder,
                                   int(getattr(model, "pad_id", 0)), device)
    known = x != placeholder
    if placeholder == UNKNOWN:
        x = torch.where(known, x, graph.sample_limit(*x.shape, device=device, generator=generator))
    loop = StepLoop(model, attention_mask, callback, return_history, device)
    x = score.sedd(loop, x, graph=graph, noise=noise, method=method, steps=steps,
                   known=known if bool(known.any()) else None, generator=generator)
    return GenerationOutput(sequences=x, history=loop.history, nfe=loop.nfe, step_times=loop.step_times())
