"""Plain-PyTorch references of the SEDD / MDLM ops, written the way SEDD and MDLM state the math.

They materialise ``[B, L, K]`` tensors and run in whatever dtype they are given (float64 in the
tests): they define what the fused kernels compute and are the eager baseline of the benchmarks.
Notation: ``K = logits.shape[-1]``; graph ``"absorb"`` has the mask at ``K - 1``, graph
``"uniform"`` has ``K`` tokens. ``sigma`` and the step terms are per sequence, shape ``[B]``.
"""

from __future__ import annotations

import math

import torch


def log_expm1(sigma: torch.Tensor) -> torch.Tensor:
    """``log(e^sigma - 1)`` written as ``sigma + log(1 - e^-sigma)``, finite for every finite
    ``sigma > 0``: ``expm1`` overflows float64 from ``sigma = 709.78`` (float32 from 88.72), and
    sigma itself, a float32, may be as large as 3.4e38."""
    return sigma + torch.log(-torch.expm1(-sigma))


def log_score(logits: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, scale_by_sigma: bool = True) -> torch.Tensor:
    """SEDD's output post-processing: the log concrete score ``log s(x)[y]``.

    With ``scale_by_sigma`` the logits are shifted by ``log(expm1(sigma)) + log(K - 1)`` (so a
    zero network output has total ratio mass ``1 / (e^sigma - 1)``); the entry of the input token
    is set to 0 (its ratio to itself is 1)."""
    out = logits
    if scale_by_sigma:
        shift = log_expm1(sigma.to(logits.dtype)) + math.log(logits.shape[-1] - 1)
        out = out - shift[:, None, None]
    return torch.scatter(out, -1, x[..., None], torch.zeros_like(out[..., :1]))


def _col(v: torch.Tensor) -> torch.Tensor:
    return v[:, None, None]


def staggered_score(graph: str, score: torch.Tensor, dsig: torch.Tensor) -> torch.Tensor:
    """``exp(dsig Q^T)``-style correction of the score used by the analytic (Tweedie) step, times
    ``exp(-dsig)``. SEDD's form, ``score * exp(dsig)`` plus ``(1 - exp(dsig)) * total`` at the
    mask (absorb) or everywhere over ``k`` (uniform), overflows for a large ``dsig``; the step's
    weights are unnormalised, so a common factor changes nothing."""
    total = score.sum(-1, keepdim=True)
    e = torch.exp(-_col(dsig))
    if graph == "absorb":
        out = score.clone()
        out[..., -1:] += (e - 1) * total
        return out
    return (e - 1) / score.shape[-1] * total + score


def transp_transition(graph: str, x: torch.Tensor, dsig: torch.Tensor, k: int, dtype) -> torch.Tensor:
    """Row ``x`` of ``exp(dsig Q)^T``: the forward transition probabilities into each token."""
    e = torch.exp(-dsig.to(dtype))[:, None, None]
    onehot = torch.nn.functional.one_hot(x, k).to(dtype)
    if graph == "absorb":
        masked = (x == k - 1)[..., None].to(dtype)
        return e * onehot + masked * (1 - e)
    off = (1 - e) / k * torch.ones_like(onehot)
    off = off * (1 - onehot)
    return off + onehot * (1 - off.sum(-1, keepdim=True))


def reverse_rate(graph: str, x: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Reverse-time rate out of ``x``: transposed forward rate times the score, with the
    diagonal set to minus the rest of the row."""
    k = score.shape[-1]
    onehot = torch.nn.functional.one_hot(x, k).to(score.dtype)
    if graph == "absorb":
        rate = -onehot + (x == k - 1)[..., None].to(score.dtype)
    else:
        rate = torch.full_like(score, 1.0 / k) - onehot
    rate = rate * score * (1 - onehot)
    return rate - onehot * rate.sum(-1, keepdim=True)


def step_weights(logits, x, sigma, dsig, *, graph: str, method: str, scale_by_sigma: bool = True) -> torch.Tensor:
    """Unnormalised next-token weights ``[B, L, K]`` of one sampler step, negative entries set
    to 0 (SEDD's ``argmax(p / E)`` never picks them). Normalised per position, this is the exact
    distribution that ``dllm.ops.sedd_step`` draws from."""
    k = logits.shape[-1]
    score = log_score(logits, x, sigma, scale_by_sigma).exp()
    if method in ("analytic", "denoise"):
        probs = staggered_score(graph, score, dsig) * transp_transition(graph, x, dsig, k, score.dtype)
        if method == "denoise" and graph == "absorb":
            probs = probs.clone()
            probs[..., -1] = 0
            # Unmasked positions keep their token (their only positive entry survives).
    elif method == "euler":
        probs = torch.nn.functional.one_hot(x, k).to(score.dtype) + _col(dsig) * reverse_rate(graph, x, score)
    else:
        raise ValueError(f"unknown method {method!r}")
    return probs.clamp_min(0)


def sedd_step(logits, x, sigma, dsig, *, graph: str, method: str, scale_by_sigma: bool = True,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Eager SEDD sampler step: weights as above, then a Gumbel-max draw in the weights' dtype."""
    probs = step_weights(logits, x, sigma, dsig, graph=graph, method=method, scale_by_sigma=scale_by_sigma)
    u = torch.rand(probs.shape, dtype=probs.dtype, device=probs.device, generator=generator)
    # rand can return exactly 0 (2^-24 per entry in float32): E = 0 would make a zero weight 0/0 = NaN,
    # which argmax picks; a tiny E keeps it 0 and lets a positive weight win, as E -> 0 would
    return (probs / (-torch.log1p(-u)).clamp_min(torch.finfo(probs.dtype).tiny)).argmax(-1)


def score_entropy_loss(logits, x_t, x0, sigma, dsigma, *, graph: str, scale_by_sigma: bool = True) -> torch.Tensor:
    """SEDD's denoising score entropy, ``dsigma``-weighted and summed over positions: ``[B]``."""
    k = logits.shape[-1]
    s = log_score(logits, x_t, sigma, scale_by_sigma)
    # inv = 1 / (e^sigma - 1) with its log, which stays finite where inv underflows to 0
    log_inv = -log_expm1(sigma.to(s.dtype)[:, None])
    inv = log_inv.exp()
    if graph == "absorb":
        masked = x_t == k - 1
        ratio = inv
        neg = ratio * s.gather(-1, x0[..., None])[..., 0]
        pos = s[..., :-1].exp().sum(-1)
        const = ratio * (log_inv - 1)  # ratio (log(ratio) - 1), 0 at ratio = 0
        per_pos = torch.where(masked, pos - neg + const, torch.zeros_like(pos))
    else:
        ratio = 1 / (1 + k * inv)  # (e^sigma - 1) / (e^sigma - 1 + k)
        neg = s.mean(-1) - s.gather(-1, x_t[..., None])[..., 0] / k
        neg = torch.where(x_t == x0, ratio * neg, s.gather(-1, x0[..., None])[..., 0] * inv + neg)
        const = torch.where(x_t == x0, (k - 1) / k * ratio * (ratio.log() - 1),
                            ((-ratio.log() - 1) / ratio - (k - 2)) / k)
        sexp = s.exp()
        pos = sexp.mean(-1) - sexp.gather(-1, x_t[..., None])[..., 0] / k
        per_pos = pos - neg + const
    return (dsigma.to(s.dtype)[:, None] * per_pos).sum(-1)


def masked_diffusion_loss(logits, x_t, x0, weight, *, mask_id: int) -> torch.Tensor:
    """MDLM's SUBS continuous-time loss: ``weight * -log p(x0)`` at masked positions, with the
    mask logit excluded from the softmax, summed over positions: ``[B]``."""
    masked_logits = logits.clone()
    masked_logits[..., mask_id] = float("-inf")
    logp = torch.log_softmax(masked_logits, -1).gather(-1, x0[..., None])[..., 0]
    nll = torch.where(x_t == mask_id, -logp, torch.zeros_like(logp))
    return (weight.to(nll.dtype)[:, None] * nll).sum(-1)


def sample_transition(x0, sigma, *, graph: str, num_classes: int, generator: torch.Generator | None = None):
    """The forward process: each token moves with probability ``1 - exp(-sigma)``, to the mask
    (absorb) or to a uniform token (uniform)."""
    move_p = -torch.expm1(-sigma.double())[:, None]
    move = torch.rand(x0.shape, dtype=torch.float64, device=x0.device, generator=generator) < move_p
    if graph == "absorb":
        return torch.where(move, torch.full_like(x0, num_classes - 1), x0)
    other = torch.randint(0, num_classes, x0.shape, device=x0.device, generator=generator)
    return torch.where(move, other, x0)
