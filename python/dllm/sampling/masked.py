"""Masked-diffusion samplers, each a short composition of dllm.ops.predict_masked and
dllm.ops.commit_tokens. The canvas x [B, L] holds the prompt, then the generated region
[start, L); only masked positions are ever written, so prompt and infill tokens stay fixed.
"""

from __future__ import annotations


import torch

from .. import ops
from ..unmask_schedule import linear_transfer_counts
from .loop import StepLoop


def _window(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    return torch.tensor([lo, hi], device=x.device).expand(x.shape[0], 2).contiguous()


def _loglinear_sigma(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    # MDLM / SEDD log-linear schedule: 1 - e^{-sigma(t)} = (1 - eps) t
    return -torch.log1p(-(1 - eps) * t)


def llada(loop: StepLoop, x, *, mask_id, start, steps, block_length, temperature, top_k, top_p, cfg_scale,
          remasking, shift, prompt_positions, generator):
    """LLaDA (Nie et al. 2025, generate.py): semi-autoregressive blocks; in each, the linear
    schedule fixes how many tokens every step commits, and the most confident proposals win
    ("low_confidence") or random ones ("random"). cfg_scale > 0 adds unsupervised
    classifier-free guidance: logits = u + (cfg_scale + 1)(c - u), with u from the canvas whose
    prompt is masked."""
    gen_length = x.shape[1] - start
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
    blocks = gen_length // block_length
    if steps % blocks:
        raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks ({blocks})")
    per_block = steps // blocks
    confidence = "random" if remasking == "random" else "prob"
    for b in range(blocks):
        lo, hi = start + b * block_length, start + (b + 1) * block_length
        window = _window(x, lo, hi)
        counts = linear_transfer_counts((x[:, lo:hi] == mask_id).sum(-1), per_block)
        for s in range(per_block):
            loop.begin()
            if cfg_scale > 0:
                unconditional = x.clone()
                unconditional[:, prompt_positions] = mask_id
                both = loop.logits(torch.cat([x, unconditional]), evaluations=2)
                cond, uncond = both.chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = loop.logits(x)
            x0, conf = ops.predict_masked(logits, x, mask_id=mask_id, temperature=temperature, top_k=top_k,
                                          top_p=top_p, confidence=confidence, logits_shift=shift, generator=generator)
            ops.commit_tokens(x, x0, conf, mask_id=mask_id, num_tokens=counts[:, s], window=window, generator=generator)
            loop.end(x, logits)
    return x


def mdlm(loop: StepLoop, x, *, mask_id, steps, temperature, top_k, top_p, shift, generator):
    """MDLM's ancestral sampler (Sahoo et al. 2024, `_ddpm_caching_update`) on the log-linear
    schedule: from time t to s = t - 1/steps every masked token unmasks with probability
    (t - s) / t, to a token drawn from the model's clean-token distribution; the last step
    unmasks everything. For a time-agnostic model the logits of a step that unmasked nothing
    are reused, so that step costs no network call."""
    logits = None
    time_conditioned = getattr(loop.model, "time_conditioned", False)
    for i in range(steps):
        t, s = 1 - i / steps, 1 - (i + 1) / steps
        loop.begin()
        if logits is None or time_conditioned:
            sigma = _loglinear_sigma(torch.full((x.shape[0],), t, device=x.device)) if time_conditioned else None
            logits = loop.logits(x, sigma)
        x0, conf = ops.predict_masked(logits, x, mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p,
                                      logits_shift=shift, generator=generator)
        committed = ops.commit_tokens(x, x0, conf, mask_id=mask_id, prob=(t - s) / t, generator=generator)
        loop.end(x, logits)
        if bool(committed.any()):
            logits = None
    return x


def first_hitting(loop: StepLoop, x, *, mask_id, temperature, top_k, top_p, shift, generator):
    """The first-hitting sampler (Zheng et al. 2024, arXiv:2409.02908): exactly one token per
    step, at the time it would first unmask, drawn analytically, t <- t * u^(1/n) with n masked
    tokens. The position is uniform among the masked ones, so `steps` is the number of masked
    tokens; the time matters only to a time-conditioned model."""
    time_conditioned = getattr(loop.model, "time_conditioned", False)
    t = torch.ones(x.shape[0], device=x.device, dtype=torch.float64)
    one = torch.ones(x.shape[0], dtype=torch.int64, device=x.device)
    for _ in range(int((x == mask_id).sum(-1).max())):
        loop.begin()
        n = (x == mask_id).sum(-1).clamp(min=1)
        u = torch.rand(x.shape[0], device=x.device, dtype=torch.float64, generator=generator)
        t = t * u ** (1.0 / n)
        sigma = _loglinear_sigma(t).float() if time_conditioned else None
        logits = loop.logits(x, sigma)
        x0, conf = ops.predict_masked(logits, x, mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p,
                                      confidence="random", logits_shift=shift, generator=generator)
        ops.commit_tokens(x, x0, conf, mask_id=mask_id, num_tokens=one, generator=generator)
        loop.end(x, logits)
    return x


DREAM_ALGS = {"origin": None, "maskgit_plus": "prob", "topk_margin": "margin", "entropy": "entropy"}


def dream(loop: StepLoop, x, *, mask_id, steps, temperature, top_k, top_p, alg, alg_temp, shift, generator, eps=1e-3):
    """Dream 7B's diffusion_generate (Ye et al. 2025): times linspace(1, eps, steps + 1). "origin"
    unmasks each masked token with probability 1 - s/t; the confidence algorithms commit
    floor(n_masked * (1 - s/t)) tokens per row (all at the last step) ranked by the proposal's
    probability ("maskgit_plus"), top-1 minus top-2 margin ("topk_margin") or negative entropy
    ("entropy"), or drawn from softmax(confidence / alg_temp) when alg_temp > 0. Dream counts
    the batch-average of masked tokens; dllm counts per row, which ragged batches need."""
    times = torch.linspace(1, eps, steps + 1).tolist()
    kind = DREAM_ALGS[alg]
    for i in range(steps):
        t, s = times[i], times[i + 1]
        last = i == steps - 1
        loop.begin()
        logits = loop.logits(x)
        x0, conf = ops.predict_masked(logits, x, mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p,
                                      confidence=kind or "prob", logits_shift=shift, generator=generator)
        if kind is None:
            ops.commit_tokens(x, x0, conf, mask_id=mask_id, prob=1.0 if last else 1 - s / t, generator=generator)
        else:
            masked = (x == mask_id).sum(-1)
            k = masked if last else (masked.double() * (1 - s / t)).floor().long()
            ops.commit_tokens(x, x0, conf, mask_id=mask_id, num_tokens=k, position_temperature=alg_temp,
                              generator=generator)
        loop.end(x, logits)
    return x


def fast_dllm(loop: StepLoop, x, *, mask_id, start, block_length, threshold, temperature, top_k, top_p, shift,
              generator):
    """Fast-dLLM's parallel decoding (Wu et al. 2025, `get_transfer_index` in threshold mode):
    blocks left to right; every step commits each masked position of the block whose proposal
    has probability >= threshold, and at least the most confident one, until the block is done.
    The number of steps adapts to the model's confidence."""
    gen_length = x.shape[1] - start
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
    for lo in range(start, x.shape[1], block_length):
        hi = lo + block_length
        window = _window(x, lo, hi)
        while bool((x[:, lo:hi] == mask_id).any()):
            loop.begin()
            logits = loop.logits(x)
            x0, conf = ops.predict_masked(logits, x, mask_id=mask_id, temperature=temperature, top_k=top_k,
                                          top_p=top_p, logits_shift=shift, generator=generator)
            ops.commit_tokens(x, x0, conf, mask_id=mask_id, threshold=threshold, window=window, generator=generator)
            loop.end(x, logits)
    return x
