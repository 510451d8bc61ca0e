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
    template, known = loop.buffer("template", x.clone()), loop.buffer("known", known)
    times = torch.linspace(1, eps, steps + 1, device=x.device)
    sigma, dsigma = noise(times)  # the whole schedule at once: the steps read it, none computes it
    if method == "analytic":
        dsig = sigma[:-1] - noise(times[:-1] - (1 - eps) / steps)[0]
    else:
        dsig = (1 - eps) / steps * dsigma[:-1]

    def predictor(method):
        def step(x, sigma, dsig):
            logits = loop.forward(x, sigma)
            x_next = graph.step(logits, x, sigma, dsig, method=method, generator=generator)
            if known is None:
                x.copy_(x_next)
            else:  # the known tokens projected back, written into the canvas by the same op
                torch.where(known, template, x_next, out=x)
            return logits
        return step

    # a row of [B] per step, the rows' views made in one op
    sigma, dsig = (v[:, None].repeat(1, batch).unbind(0) for v in (sigma, dsig))
    step = predictor(method)
    for i in range(steps):
        loop.run_step(step, x, sigma[i], dsig[i])
    loop.run_step(predictor("denoise"), x, sigma[-1], sigma[-1], replay=False)
    return x
