"""`dllm sample`: generate from a model folder written by `dllm train` or a published checkpoint folder."""

from __future__ import annotations

import os
import time

import torch
from tqdm.auto import tqdm

from .data.tokenizer import PublishedTokenizer
from .demo import show
from .devices import resolve_device
from .models.hub import detect_layout
from .models.io import is_dllm_config, network_config, read_config
from .sampling import generate
from .sampling.options import check_options
from .sampling.pretrained import load_with_tokenizer, sampling_tokenizer

# published checkpoints sample with their authors' sampler; dllm-trained masked models with llada's
DEFAULT_SAMPLERS = {"sedd": "sedd-analytic", "mdlm": "mdlm", "llada": "llada", "dream": "dream"}


def _expected_steps(sampler: str, steps: int, gen_length: int) -> int | None:
    """What the progress bar counts to: fast-dllm adapts its step count, first-hitting takes one per
    mask, and llada skips the steps that would commit nothing (more steps than tokens)."""
    name = sampler.partition(":")[0]
    if name in ("fast-dllm", "first-hitting"):
        return None
    return steps + 1 if name.startswith("sedd-") else min(steps, gen_length) if name == "llada" else steps


def _default_sampler(model_dir: str) -> str | None:
    """The sampler of a model folder, read from its config.json before its weights load; None for an
    autoregressive model."""
    config = read_config(model_dir)
    if not is_dllm_config(config):
        return DEFAULT_SAMPLERS[detect_layout(config, model_dir).name]
    objective = config.get("objective", {}).get("name")
    return None if objective == "ar" else "sedd-analytic" if objective == "sedd" else "llada"


def _check_window(model_dir: str, config: dict, tok, prompt: str, gen_length: int, *, ar: bool) -> None:
    """Refuses a prompt and --gen-length beyond the model's window, read from its config.json and
    tokenizer (``tok``, as sampling_tokenizer read it) before its weights: the model would otherwise
    fail inside its forward (the autoregressive one after generating what fits), naming no flag."""
    if not is_dllm_config(config):  # the special ids the loaded model adds change no prompt's encoding
        tok = PublishedTokenizer(tok, mask_id=None)
    window, prompt_tokens = network_config(model_dir, config).max_seq_len, len(tok.encode(prompt))
    start = max(1, prompt_tokens) if ar else prompt_tokens  # AR: an empty prompt starts from end-of-text
    room = window - start + (1 if ar else 0)  # AR: the last new token is drawn, never fed back
    if room <= 0:
        raise ValueError(f"the prompt ({start} tokens) fills the model's {window}-token window: shorten --prompt")
    if gen_length > room:
        raise ValueError(f"--gen-length {gen_length} does not fit: the model takes {window} tokens and the "
                         f"prompt uses {start}, so at most --gen-length {room}")


def run_sample(model_dir: str, *, prompt: str, gen_length: int, steps: int, sampler: str | None,
               temperature: float | None, block_length: int | None, num_samples: int, seed: int, device: str,
               show_steps: bool, cache: str | None = None, cuda_graph: bool = False) -> list[str]:
    try:  # Python passes argv's bytes its locale cannot decode as lone surrogates, which no tokenizer takes
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        try:  # under an ASCII locale (C) they are UTF-8 text's bytes, read back as sys.argv's documentation says
            prompt = os.fsencode(prompt).decode("utf-8")
        except UnicodeError:
            raise ValueError("--prompt is not valid UTF-8 text") from None
    device = str(resolve_device(device))
    default = _default_sampler(model_dir)
    if default is None and (sampler or cache or show_steps or block_length is not None):
        raise ValueError("--sampler, --cache, --show-steps and --block-length apply to diffusion samplers, not to an "
                         "autoregressive model (it decodes one token per step with its KV cache)")
    if default is not None and (sampler or default).startswith("sedd-"):
        if temperature is not None:  # 0 would pass generate() as its default, yet not be greedy
            raise ValueError("the SEDD samplers draw from the model's reverse process and take no --temperature")
        temperature = 0.0
    elif temperature is None:
        temperature = 0.8
    if default is not None:  # before the weights, which take minutes for a published checkpoint
        check_options(sampler or default, gen_length=gen_length, steps=steps, device=torch.device(device),
                      block_length=block_length, temperature=temperature, cache=cache, cuda_graph=cuda_graph)
    config = read_config(model_dir)
    tok = sampling_tokenizer(model_dir, config)  # read once: the window's check and the model take it
    _check_window(model_dir, config, tok, prompt, gen_length, ar=default is None)
    model, tok, kind = load_with_tokenizer(model_dir, config, tok, device)
    g = torch.Generator(device=device).manual_seed(seed)
    ids = torch.as_tensor(tok.encode(prompt), dtype=torch.int64, device=device)
    texts = []
    for i in range(num_samples):
        t0 = time.perf_counter()
        if kind == "ar":
            start = ids if ids.numel() else torch.full((1,), tok.eos_id, device=device)
            seq = model.generate(start[None], gen_length, temperature=temperature, generator=g,
                                 cuda_graph=cuda_graph)[0]
            seq = seq if ids.numel() else seq[1:]  # the end-of-text it started from is no part of the sample
            info = f"autoregressive, {gen_length} steps"
        else:
            name = sampler or default
            with tqdm(total=_expected_steps(name, steps, gen_length), desc=f"sample {i + 1}", unit="step", leave=False,
                      disable=show_steps, delay=0.5) as bar:  # delayed: no half-drawn bar above an argument error
                def callback(step, x, logits):
                    if show_steps:
                        print(f"  step {step + 1}: {show(tok, x[0])!r}")
                    bar.update()

                out = generate(model, ids if ids.numel() else None, gen_length=gen_length, steps=steps, sampler=name,
                               temperature=temperature, block_length=block_length, cache=cache, cuda_graph=cuda_graph,
                               generator=g, callback=callback)
            seq = out.sequences[0]
            info = f"{name}, {out.nfe} network evaluations"
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        text = show(tok, seq)
        texts.append(text)
        warm = ", including warm-up" if i == 0 else ""  # first calls allocate, autotune, fill caches
        print(f"--- sample {i + 1} ({info}, {gen_length / seconds:,.0f} tokens/s{warm}) ---\n{text}")
    return texts
