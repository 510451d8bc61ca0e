"""The contract between dllm's samplers and a model. Any nn.Module (or callable) works if it

- maps tokens to logits: ``model(x) -> [B, L, V]`` (float32, bfloat16 or float16; float64, a
  reference run's, is sampled from in float32, the precision of the sampler ops) for x int64
  ``[B, L]``; it may also return an object with a ``.logits`` attribute (Hugging Face style) or
  a tuple whose first element is the logits (``return_dict=False``);
- has ``mask_id`` (int >= 0): the mask token, a valid index of the logits;
- may have more logits columns than its tokenizer has tokens (LLaDA's 126464 columns, Dream's
  152064: vocabularies padded for speed): the samplers may then propose any column but the mask,
  which a trained model gives almost no probability; ``vocab_size`` (or ``config.vocab_size``),
  where present, bounds the prompt's and the infill's ids, and the logits must cover it;
- is in eval mode (``model.eval()``): a sampler warns when dropout is on, which makes the
  samples noisier and a seeded run unrepeatable;
- optionally has ``logits_shift`` (int >= 0, default, and when None, 0): 1 when position i is
  predicted by logits row i - 1 (Dream, and other models adapted from autoregressive ones);
- optionally has ``time_conditioned`` (bool, default False): when True it is called as
  ``model(x, sigma)`` with the total noise ``sigma`` float ``[B]`` (SEDD; MDLM with time
  conditioning): the sampler's time for "mdlm" and "first-hitting", and the log-linear sigma of
  each canvas's masked fraction for "llada", "dream" and "fast-dllm", which have no clock of their
  own. Time-agnostic models are never given the time, which is what lets the MDLM sampler skip
  the network on steps that unmask nothing;
- score models (the SEDD samplers) have ``graph``, a ``dllm.sedd.Absorbing`` or ``Uniform``
  graph, optionally ``noise``, a ``dllm.sedd`` schedule (default: log-linear for the absorbing
  graph, geometric for the uniform one), and are always called as ``model(x, sigma)``. They
  return the network's raw output: the sampler itself subtracts ``log(expm1(sigma)) + log(K - 1)``
  where ``graph.scale_by_sigma`` says (the absorbing graph's default), and sets the input token's
  entry to 0, so a forward that already does so (SEDD's own ``SEDD.forward``) runs with
  ``model.graph.scale_by_sigma = False``, or it is shifted twice;
- optionally has ``pad_id`` (int, not the mask id; default, and when None, 0): used to left-pad
  ragged prompts, and written over padding (``attention_mask`` 0) that holds the mask id;
- optionally has ``max_seq_len`` (or ``config.max_seq_len``; dllm's models do): the longest canvas
  it takes; a prompt and ``gen_length`` that do not fit are refused before the first call;
- accepts ``attention_mask=`` (bool ``[B, L]``, True where a token is real) when prompts are
  padded;
- optionally has the KV-cache interface that ``cache="prefix"`` / ``"dual"`` (Fast-dLLM) need:
  ``new_kv_cache(batch, length)`` returns an empty cache for ``batch`` canvases of ``length``
  tokens, and ``model(x_part, cache=kv, start=s[, attention_mask=m])`` takes the tokens at
  positions ``[s, s + S)`` only: it writes their keys and values into ``kv`` (per layer, at their
  absolute positions, RoPE included) and lets them attend over all ``length`` positions, the
  cached ones as they were last written; it returns logits ``[B, S, V]``. A call with ``s = 0``
  and the whole canvas refreshes every entry. ``m`` then covers all ``length`` keys. Under
  ``cuda_graph=True`` with ``cache="dual"``, ``s`` of a partial call is a one-element int64 tensor
  on the model's device (one graph serves every block), and the refresh must write into the
  buffers the cache already holds, which the captured steps read. dllm's DiffusionTransformer and
  LLaDAModel implement both (dllm.models.layers.DenoisingKVCache).
- runs where its first parameter (or buffer) is; a callable without either may say where with a
  ``device`` attribute (default: the CPU). The canvas is made there, and a CUDA device is made
  current while the sampler runs;
- under ``cuda_graph=True``: no host synchronisation inside the forward (no ``.item()``, no
  data-dependent shapes), as any CUDA-graph capture requires.
"""

from __future__ import annotations

import inspect
import numbers
import os
import sys
import warnings

import torch

from ..sedd import Absorbing, Uniform


def mask_id_of(model) -> int:
    if not hasattr(model, "mask_id"):
        raise ValueError("the model has no `mask_id` attribute: masked-diffusion samplers need the mask token id (set "
                         "model.mask_id; a folder written by `dllm train` loads with it through "
                         "dllm.load_for_sampling, not dllm.models.from_pretrained)")
    if model.mask_id is None:
        raise ValueError("the model's `mask_id` is None: masked-diffusion samplers need the mask token id")
    return _nonnegative_int(model, "mask_id")


def time_conditioned(model) -> bool:
    return bool(getattr(model, "time_conditioned", False))


def score_graph_of(model):
    """A score model's ``graph`` (a dllm.sedd.Absorbing or Uniform), else None: an attribute of
    that name holding anything else (a torch.fx GraphModule's Graph) does not make a score model."""
    graph = getattr(model, "graph", None)
    return graph if isinstance(graph, (Absorbing, Uniform)) else None


def _nonnegative_int(model, name: str) -> int:
    """``model.<name>`` as an int >= 0: an int, or a one-element integer tensor (a buffer)."""
    value = getattr(model, name)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"the model's `{name}` must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"the model's `{name}` must be >= 0, got {value}")
    return int(value)


def pad_id_of(model) -> int:
    """The id that left-pads ragged prompts: ``model.pad_id``, 0 when absent or None (tokenizers
    without a pad token)."""
    return 0 if getattr(model, "pad_id", None) is None else _nonnegative_int(model, "pad_id")


def logits_shift_of(model) -> int:
    """``model.logits_shift``: how many rows before its position a token's logits are (0 when absent or None)."""
    return 0 if getattr(model, "logits_shift", None) is None else _nonnegative_int(model, "logits_shift")


def _declared_size(model, name: str) -> int | None:
    """``model.<name>`` or ``model.config.<name>`` where it is an integer, else None."""
    size = getattr(model, name, None)
    if size is None:
        size = getattr(getattr(model, "config", None), name, None)
    return int(size) if isinstance(size, numbers.Integral) and not isinstance(size, bool) else None


def vocab_size_of(model) -> int | None:
    """``model.vocab_size`` or ``model.config.vocab_size`` where the model says (dllm's models do),
    so that token ids out of range fail with their value instead of inside an embedding."""
    return _declared_size(model, "vocab_size")


def max_seq_len_of(model) -> int | None:
    """``model.max_seq_len`` or ``model.config.max_seq_len`` where the model says (dllm's models do),
    so that a canvas too long for the model fails naming the prompt and gen_length, not inside its
    forward."""
    return _declared_size(model, "max_seq_len")


# dllm's package folder and torch's: the frames a warning about the caller's model skips
_LIBRARY_DIRS = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,  # dllm/sampling/.. = dllm
                 os.path.dirname(os.path.abspath(torch.__file__)) + os.sep)


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside dllm and torch (torch.no_grad's wrapper, the SEDD
    dispatch), so that a warning names the line of the user's code that called dllm.generate."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def warn_if_dropout_on(model) -> None:
    if isinstance(model, torch.nn.Module) and any(
            m.training and isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        warnings.warn(f"{type(model).__name__} is in training mode with dropout on: the samples are noisier and "
                      "a seeded generator does not reproduce them; call model.eval() before sampling",
                      stacklevel=_caller_stacklevel())


def _lacks_keywords(model, *names: str) -> list[str]:
    """The keywords of ``names`` that the model's call signature has no parameter for (nor
    ``**kwargs``); none where the signature cannot be read (the call then decides)."""
    try:
        params = inspect.signature(model.forward if isinstance(model, torch.nn.Module) else model).parameters.values()
    except (TypeError, ValueError):
        return []
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return []
    return [name for name in names if name not in {p.name for p in params}]


def check_takes_attention_mask(model) -> None:
    """Padded prompts are passed as ``attention_mask=``: a model whose call signature has no
    such keyword (nor ``**kwargs``) is refused before the first step."""
    if _lacks_keywords(model, "attention_mask"):
        raise ValueError(f"padded prompts need a model that accepts attention_mask= (bool [B, L], True on real "
                         f"tokens); {type(model).__name__} does not (see dllm.sampling.model_protocol). "
                         "Give prompts of one length, or add the keyword")


def new_kv_cache(model, batch: int, length: int):
    make = getattr(model, "new_kv_cache", None)
    if make is None:
        raise ValueError(f"cache= needs a model with the KV-cache interface (new_kv_cache(batch, length) and "
                         f"model(x, cache=, start=)); {type(model).__name__} has none: call with cache=None "
                         "(see dllm.sampling.model_protocol)")
    missing = _lacks_keywords(model, "cache", "start")
    if missing:
        raise ValueError(f"cache= needs a model that accepts cache= and start= in its call; {type(model).__name__} "
                         f"has new_kv_cache but no {' or '.join(m + '=' for m in missing)} (see "
                         "dllm.sampling.model_protocol)")
    return make(batch, length)


def call_model(model, x: torch.Tensor, sigma: torch.Tensor | None, attention_mask: torch.Tensor | None, *,
               vocab_size: int | None, mask_id: int | None = None, **cache_kwargs) -> torch.Tensor:
    """``vocab_size``: the model's :func:`vocab_size_of`, which the caller reads once (a model without
    one fails two nn.Module attribute lookups, several microseconds a step). ``mask_id``: the masked
    samplers' mask token, whose column the logits must have."""
    kwargs = dict(cache_kwargs) if attention_mask is None else {"attention_mask": attention_mask, **cache_kwargs}
    out = model(x, sigma, **kwargs) if sigma is not None else model(x, **kwargs)
    # .logits first: a NamedTuple output (or HF's ModelOutput) may start with something else (a loss)
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = out[0] if isinstance(out, (tuple, list)) and out else out
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}; expected logits [B, L, V]: a tensor, an object "
                        "with .logits or a tuple starting with them (see dllm.sampling.model_protocol)")
    if logits.dim() != 3 or logits.shape[:2] != x.shape:
        raise ValueError(f"the model returned logits of shape {tuple(logits.shape)} for tokens {tuple(x.shape)}; expected [B, L, V]")
    if not logits.is_floating_point():
        raise TypeError(f"the model returned {logits.dtype} logits; expected float32, bfloat16 or float16 "
                        "(float64 is sampled in float32)")
    if vocab_size is not None and logits.shape[-1] < vocab_size:
        # ids from the logits' width up to vocab_size could never be sampled, though prompts may hold them
        raise ValueError(f"the model returned logits over {logits.shape[-1]} tokens, fewer than its vocab_size "
                         f"{vocab_size}")
    if mask_id is not None and logits.shape[-1] <= mask_id:
        raise ValueError(f"the model returned logits over {logits.shape[-1]} tokens, without a column for its mask_id "
                         f"{mask_id}: the masked samplers need the logits over the whole vocabulary, the mask token "
                         "included (its column is never sampled)")
    return logits.float() if logits.dtype == torch.float64 else logits
