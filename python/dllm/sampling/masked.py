"""Masked-diffusion samplers, each a short composition of dllm.ops.predict_masked and
dllm.ops.commit_tokens. The canvas x [B, L] holds the prompt, then the generated region
[start, L); only masked positions are ever written, so prompt and infill tokens stay fixed.
"""

from __future__ import annotations


import torch

from .. import ops
from ..unmask_schedule import transfer_counts
from .loop import StepLoop

# commit_tokens commits at least one token a row unless it refuses the row, which it does for
# the NaN confidences that predict_masked reports as an error only outside CUDA-graph replays.
UNFILLED = ("a sampler step left masked positions unfilled: the model's logits hold NaN or +inf there "
            "(a CUDA-graph replay cannot stop at the step that produced them)")


def _window(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    # filled on the device: torch.tensor([lo, hi], device=...) would be a blocking copy from the host
    window = torch.full((x.shape[0], 2), lo, dtype=torch.int64, device=x.device)
    window[:, 1] = hi
    return window


def loglinear_sigma(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    # MDLM / SEDD log-linear schedule: 1 - e^{-sigma(t)} = (1 - eps) t
    return -torch.log1p(-(1 - eps) * t)


def _canvas_sigma(loop: StepLoop, x: torch.Tensor, mask_id: int) -> torch.Tensor | None:
    """A time-conditioned model's sigma in the samplers without a clock of their own (llada, dream,
    fast-dllm): the log-linear sigma at t = the canvas's masked fraction of real tokens, the rate
    at which training masked them; None for a time-agnostic model."""
    if not loop.time_conditioned:
        return None
    mask = loop.attention_mask
    real = x.shape[1] if mask is None else mask.sum(-1).repeat(x.shape[0] // mask.shape[0])
    return loglinear_sigma((x == mask_id).sum(-1) / real)


def llada_blocks(gen_length: int, steps: int, block_length: int) -> int:
    """LLaDA's block count, or a ValueError where the blocks or the steps do not divide evenly."""
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
    blocks = gen_length // block_length
    if steps % blocks:
        raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks ({blocks})")
    return blocks


def llada(loop: StepLoop, x, *, mask_id, start, steps, block_length, temperature, top_k, top_p, cfg_scale,
          remasking, shift, given, generator):
    """LLaDA (Nie et al. 2025, generate.py): semi-autoregressive blocks; in each, the linear
    schedule fixes how many tokens every step commits, and the most confident proposals win
    ("low_confidence") or random ones ("random"). Steps that would commit no token in any row are
    not run (LLaDA's loop runs them, to no effect but a network call). cfg_scale > 0 adds unsupervised
    classifier-free guidance: logits = u + (cfg_scale + 1)(c - u), with u from the canvas whose
    given tokens are masked (``given``: bool [B, L], the prompts' real tokens and an infill
    template's known ones; padding stays padding)."""
    gen_length = x.shape[1] - start
    blocks = llada_blocks(gen_length, steps, block_length)
    # A step commits at least a token or is skipped, so a block never runs more steps than it has
    # positions: the same steps with the schedule cut there, which a count past them cannot overflow
    per_block = min(steps // blocks, block_length)
    confidence = "random" if remasking == "random" else "prob"
    given = loop.buffer("given", given)

    def step(x, num_tokens, window):
        if cfg_scale > 0:
            unconditional = x.masked_fill(given, mask_id)
            both = torch.cat([x, unconditional])
            cond, uncond = loop.forward(both, _canvas_sigma(loop, both, mask_id), stacked=2).chunk(2)
            # u + (s + 1)(c - u) in one pass over [B, L, V] (the expression makes three, and rounds bf16 thrice)
            logits = torch.lerp(uncond, cond, cfg_scale + 1)
        else:
            logits = loop.forward(x, _canvas_sigma(loop, x, mask_id))
        x0, conf = ops.predict_masked(logits, x, mask_id=mask_id, temperature=temperature, top_k=top_k,
                                      top_p=top_p, confidence=confidence, logits_shift=shift, generator=generator)
        ops.commit_tokens(x, x0, conf, mask_id=mask_id, num_tokens=num_tokens, window=window, generator=generator)
        return logits

    for b in range(blocks):
        lo, hi = start + b * block_length, start + (b + 1) * block_length
        window = _window(x, lo, hi)
        counts = transfer_counts((x[:, lo:hi] == mask_id).sum(-1), per_block)  # counts >= 0: unchecked
        # A step that commits nothing in any row (a block the infill already fills, or more steps
        # than masked tokens) would only cost a network call: skipped, for one host sync per block.
        busy = (counts > 0).any(0).tolist()
        for num_tokens, busy_step in zip(counts.unbind(1), busy):  # (views made in one op, not one a step)
            if busy_step:
                loop.run_step(step, x, num_tokens, window, evaluations=2 if cfg_scale > 0 else 1)
    return x


MDLM_EPS = 1e-5  # where MDLM's sampling grid stops


def mdlm(loop: StepLoop, x, *, mask_id, steps, temperature, top_k, top_p, shift, generator):
    """MDLM's ancestral sampler (Sahoo et al. 2024, `_ddpm_caching_update`) on the log-linear
    schedule, times linspace(1, 1e-5, steps + 1): from time t to s every masked token unmasks with
    probability (t - s) / t, to a token drawn from the model's clean-token distribution (as the
    paper samples at temperature=1; generate's default temperature=0 takes its argmax). The
    tokens still masked at t = 1e-5 (rare) take the argmax of one more forward, as MDLM's noise
    removal does, within the last step. For a time-agnostic model the logits of a step that
    unmasked nothing are reused, so that step costs no network call (under cuda_graph the steps
    with and without the network are two graphs), and choosing between them is one host sync a
    step; a time-conditioned model's steps all call the network and make none."""
    times = torch.linspace(1, MDLM_EPS, steps + 1, dtype=torch.float64).tolist()
    time_conditioned = loop.time_conditioned
    # did the latest step commit a token?
    unmasked = loop.keep("unmasked", lambda: torch.zeros((), dtype=torch.bool, device=x.device))
    latest: list[torch.Tensor] = []  # the latest forward's logits (a graph's own buffer when replayed)

    def per_row(value: float) -> torch.Tensor:
        return torch.full((x.shape[0],), value, device=x.device)

    def unmask(x, logits, rate):
        x0, conf = ops.predict_masked(logits, x, mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p,
                                      logits_shift=shift, generator=generator)
        torch.any(ops.commit_tokens(x, x0, conf, mask_id=mask_id, prob=rate, generator=generator), out=unmasked)
        return logits

    def forward_step(x, rate, *t):  # t: the time of a time-conditioned model (no tensor made for another)
        return unmask(x, loop.forward(x, loglinear_sigma(*t) if time_conditioned else None), rate)

    def reuse_step(x, rate):
        return unmask(x, latest[0], rate)

    for i in range(steps):
        t, s = times[i], times[i + 1]
        rate = per_row((t - s) / t)
        loop.begin()
        if latest and not time_conditioned:
            loop.call(reuse_step, x, rate, evaluations=0)
        else:
            latest[:] = [loop.call(forward_step, x, rate, *((per_row(t),) if time_conditioned else ()))]
        if i == steps - 1 and bool((x == mask_id).any()):
            if time_conditioned or bool(unmasked):
                latest[:] = [loop.logits(x, loglinear_sigma(per_row(s)) if time_conditioned else None)]
            x0, conf = ops.predict_masked(latest[0], x, mask_id=mask_id, logits_shift=shift)  # argmax
            ops.commit_tokens(x, x0, conf, mask_id=mask_id, threshold=0.0)  # every one of them
        loop.end(x, latest[0])
        # Reading unmasked syncs with the device: only a time-agnostic model may skip the network
        if not time_conditioned and bool(unmasked):
            latest.clear()
    return x


def first_hitting(loop: StepLoop, x, *, mask_id, temperature, top_k, top_p, shift, generator):
    """The first-hitting sampler (Zheng et al. 2024, arXiv:2409.02908): exactly one token per
    step, at the time it would first unmask, drawn analytically, t <- t * u^(1/n) with n masked
    tokens. The position is uniform among the masked ones, so `steps` is the number of masked
    tokens; the time matters only to a time-conditioned model. The token is drawn from the
    proposal distribution (temperature=1 for the paper's sampler; 0, generate's default, is argmax)."""
    time_conditioned = loop.time_conditioned
    one = loop.keep("one", lambda: torch.ones(x.shape[0], dtype=torch.int64, device=x.device))

    def step(x, t):
        n = (x == mask_id).sum(-1).clamp(min=1)
        u = torch.rand(x.shape[0], device=x.device, dtype=torch.float64, generator=generator)
        t.mul_(u ** n.reciprocal())  # u^(1/n): torch computes 1.0 / n as n.reciprocal() * 1.0, an op more
        logits = loop.forward(x, loglinear_sigma(t).float() if time_conditioned else None)
        x0, conf = ops.predict_masked(logits, x, mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p,
                                      confidence="random", logits_shift=shift, generator=generator)
        ops.commit_tokens(x, x0, conf, mask_id=mask_id, num_tokens=one, generator=generator)
        return logits

    t = torch.ones(x.shape[0], device=x.device, dtype=torch.float64)  # carried from step to step
    for _ in range(int((x == mask_id).sum(-1).max())):
        loop.run_step(step, x, t)
    return x


DREAM_ALGS = {"origin": None, "maskgit_plus": "prob", "topk_margin": "margin", "entropy": "entropy"}


def dream(loop: StepLoop, x, *, mask_id, steps, temperature, top_k, top_p, alg, alg_temp, shift, generator, eps=1e-3):
    """Dream 7B's diffusion_generate (Ye et al. 2025): times linspace(1, eps, steps + 1). "origin"
    unmasks each masked token with probability 1 - s/t; the confidence algorithms commit
    floor(n_masked * (1 - s/t)) tokens per row (all at the last step) ranked by the proposal's
    probability ("maskgit_plus"), top-1 minus top-2 margin ("topk_margin") or negative entropy
    ("entropy"), or drawn from softmax(confidence / alg_temp) when alg_temp > 0. As in Dream's
    sample_tokens, the confidence is that of the distribution the proposal is drawn from
    (tempered, after top-k / top-p). Dream counts the batch-average of masked tokens; dllm counts
    per row, which ragged batches need."""
    times = torch.linspace(1, eps, steps + 1).tolist()
    kind = DREAM_ALGS[alg]
    rate_dtype = torch.float32 if kind is None else torch.float64

    def step(x, rate):
        logits = loop.forward(x, _canvas_sigma(loop, x, mask_id))
        x0, conf = ops.predict_masked(logits, x, mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p,
                                      confidence=kind or "prob", logits_shift=shift, confidence_from="proposal",
                                      generator=generator)
        if kind is None:
            ops.commit_tokens(x, x0, conf, mask_id=mask_id, prob=rate, generator=generator)
        else:
            # floor(n_masked * rate), the truncation of a count >= 0 (float64 counts are exact)
            k = (x == mask_id).sum(-1, dtype=torch.float64).mul_(rate).long()
            ops.commit_tokens(x, x0, conf, mask_id=mask_id, num_tokens=k, position_temperature=alg_temp,
                              generator=generator)
        return logits

    for i in range(steps):
        t, s = times[i], times[i + 1]
        # the fraction of masked tokens to commit (all of them at the last step), a tensor so that a
        # captured step reads it; origin's commit_tokens takes it as float32, made so at once
        rate = torch.full((x.shape[0],), 1.0 if i == steps - 1 else 1 - s / t, dtype=rate_dtype, device=x.device)
        loop.run_step(step, x, rate)
    return x


def fast_dllm(loop: StepLoop, x, *, mask_id, start, block_length, threshold, cache, temperature, top_k, top_p, shift,
              generator):
    """Fast-dLLM's parallel decoding (Wu et al. 2025, `get_transfer_index` in threshold mode):
    blocks left to right (the last one may be shorter); every step commits each masked position
    of the block whose proposal has probability >= threshold, and at least the most confident
    one, until the block is done. The number of steps adapts to the model's confidence. The
    confidences are float32: a probability within 2^-25 of 1 reads as 1, so threshold 1.0 commits
    those too, where Fast-dLLM's float64 ones commit a token a step unless one is exactly 1.

    cache (Fast-dLLM's `generate_with_prefix_cache` / `generate_with_dual_cache`): the block's
    first step runs the whole canvas and refreshes every layer's keys and values; the block's
    later steps feed only x[:, block_start:] ("prefix": the prefix comes from the cache) or only
    the block ("dual": prefix and suffix come from the cache). Approximate: cached keys do not
    see the tokens committed since the refresh (exact for one layer of a time-agnostic model,
    whose keys depend only on their own token; a time-conditioned model's keys also carry the
    refresh's noise level). The logits given to the callback cover the positions fed."""
    length = x.shape[1]
    kv = loop.keep("kv", lambda: loop.new_kv_cache(x)) if cache is not None else None

    def decode(part, logits, window):
        # a span that starts at 0 (a prompt shorter than the shift) may be no longer than the shift
        x0, conf = ops.predict_masked(logits, part, mask_id=mask_id, temperature=temperature, top_k=top_k,
                                      top_p=top_p, logits_shift=min(shift, part.shape[1] - 1), generator=generator)
        ops.commit_tokens(part, x0, conf, mask_id=mask_id, threshold=threshold, window=window, generator=generator)

    def full_step(x, window):  # the whole canvas; with a cache, the block's first step refreshes it
        logits = loop.forward(x, _canvas_sigma(loop, x, mask_id), **({} if kv is None else {"cache": kv, "start": 0}))
        decode(x, logits, window)
        return logits

    def cached_step(x, span_window, positions):  # only the fed span; the cache holds every other position
        part = x.index_select(1, positions)
        # Under cuda_graph the span's start is a tensor (a dual-cache span moves from block to block
        # with a fixed shape); eagerly it is the int of the model protocol.
        at = positions[:1] if loop.cuda_graph else q_lo
        logits = loop.forward(part, _canvas_sigma(loop, x, mask_id), cache=kv, start=at)
        decode(part, logits, span_window)
        x.index_copy_(1, positions, part)
        return logits

    for lo in range(start, length, block_length):
        hi = min(lo + block_length, length)
        window = _window(x, lo, hi)
        # A shifted head predicts position i from row i - 1, so the fed span starts one earlier.
        q_lo = lo - min(shift, lo)
        positions = torch.arange(q_lo, length if cache == "prefix" else hi, device=x.device)
        span_window = window - q_lo if kv is not None else None  # the window within the fed span
        block = x[:, lo:hi]  # a view: x is updated in place
        refresh, left = True, int((block == mask_id).sum())
        while left:
            if refresh or kv is None:
                loop.run_step(full_step, x, window)
            else:
                loop.run_step(cached_step, x, span_window, positions)
            refresh = False
            # The block's one sync a step. A step that commits nothing would repeat forever.
            left, before = int((block == mask_id).sum()), left
            if left == before:
                ops.raise_pending_errors()  # predict_masked's own error (NaN logits), if it found one
                raise ValueError(UNFILLED)
    return x

