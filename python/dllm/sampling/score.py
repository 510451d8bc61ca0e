"""SEDD's samplers (Lou, Meng, Ermon 2024, `sampling.py`), each step one fused dllm.ops.sedd_step."""

from __future__ import annotations

import torch

from .loop import StepLoop


def sedd(loop: StepLoop, x, *, graph, noise, method: str, steps: int, known: torch.Tensor | None,
         generator, eps: float = 1e-5):
    """The predictor of SEDD's PC sampler from t = 1 to eps in `steps` equal steps, then the
    final denoising step. "analytic" is Tweedie tau-leaping with dsig = sigma(t) - sigma(t - dt),
    "euler" tau-leaping with the reverse rate and dsig = dt * dsigma(t). Known tokens (prompt,
    infill) are projected back after every step, as SEDD's conditional sampling does."""
    batch = x.shape[0]
    template = x.clone()
    times = torch.linspace(1, eps, steps + 1, device=x.device)
    dt = (1 - eps) / steps

    def step(t, method, dsig_of):
        nonlocal x
        loop.begin()
        sigma, dsigma = noise(t.expand(batch))
        logits = loop.logits(x, sigma)
        x = graph.step(logits, x, sigma, dsig_of(t, sigma, dsigma), method=method, generator=generator)
        if known is not None:
            x = torch.where(known, template, x)
        loop.end(x, logits)

    for i in range(steps):
        if method == "analytic":
            step(times[i], "analytic", lambda t, sigma, _: sigma - noise((t - dt).expand(batch))[0])
        else:
            step(times[i], "euler", lambda t, _, dsigma: dt * dsigma)
    step(times[-1], "denoise", lambda t, sigma, _: sigma)
    return x
