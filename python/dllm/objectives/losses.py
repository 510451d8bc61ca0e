"""The two loss kernels, each behind one dispatch point: ``dllm.ops``' fused op when it exists,
else the plain-PyTorch reference below (SEDD's score entropy, MDLM's SUBS loss).

Signatures are those of the fused ops, so they plug in without touching the objectives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import ops


def _as_float(x: torch.Tensor) -> torch.Tensor:
    # float64 stays float64 so the references can be checked tightly; half types compute in float32.
    return x if x.dtype == torch.float64 else x.float()


def _expm1_sigma(sigma: torch.Tensor) -> torch.Tensor:
    # expm1 is exact for small sigma; exp(sigma) - 1 matches SEDD's choice for the rest.
    return torch.where(sigma < 0.5, torch.expm1(sigma), torch.exp(sigma) - 1)


def log_score(logits: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, *, scale_by_sigma: bool) -> torch.Tensor:
    """SEDD's output post-processing: the model's raw logits -> log concrete score ``[B, L, K]``.

    With ``scale_by_sigma`` (absorbing graph) the zero-initialised network starts at the exact
    total ratio mass ``1 / (e^sigma - 1)`` of a masked position; the entry at the input token is
    the log-ratio of a state to itself, 0.
    """
    s = _as_float(logits)
    if scale_by_sigma:
        K = s.shape[-1]
        s = s - (torch.log(_expm1_sigma(sigma)) + math.log(K - 1))[:, None, None]
    return torch.scatter(s, -1, x_t[..., None], 0.0)


def score_entropy_reference(logits, x_t, x0, sigma, dsigma, *, graph: str, scale_by_sigma: bool = True):
    """Per-sequence ``sum_l dsigma * score_entropy`` ``[B]`` (the DWDSE bound, SEDD's training loss)."""
    s = log_score(logits, x_t, sigma, scale_by_sigma=scale_by_sigma)
    K = s.shape[-1]
    esigm1 = _expm1_sigma(sigma)[:, None]
    if graph == "absorb":
        mask_id = K - 1
        r = 1.0 / esigm1                                   # p_t(x0) / p_t(mask) at a masked position
        pos = s[..., :mask_id].exp().sum(-1)               # sum over real tokens y != mask
        neg = r * s.gather(-1, x0[..., None]).squeeze(-1)
        ent = torch.where(x_t == mask_id, pos - neg + r * (torch.log(r) - 1), torch.zeros_like(pos))
    elif graph == "uniform":
        V = K
        q = esigm1 / (esigm1 + V)                         # off-diagonal ratio when x_t == x0
        s_xt = s.gather(-1, x_t[..., None]).squeeze(-1)
        s_x0 = s.gather(-1, x0[..., None]).squeeze(-1)
        same = x_t == x0
        neg = s.mean(-1) - s_xt / V
        neg = torch.where(same, q * neg, s_x0 / esigm1 + neg)
        const = torch.where(same, (V - 1) / V * q * (torch.log(q) - 1), ((-torch.log(q) - 1) / q - (V - 2)) / V)
        sexp = s.exp()
        pos = sexp.mean(-1) - sexp.gather(-1, x_t[..., None]).squeeze(-1) / V
        ent = pos - neg + const
    else:
        raise ValueError(f"unknown graph {graph!r}; expected 'absorb' or 'uniform'")
    return (dsigma[:, None] * ent).sum(-1)


def score_entropy_loss(logits, x_t, x0, sigma, dsigma, *, graph: str, scale_by_sigma: bool = True):
    if hasattr(ops, "score_entropy_loss"):
        return ops.score_entropy_loss(logits, x_t, x0, sigma, dsigma, graph=graph, scale_by_sigma=scale_by_sigma)
    return score_entropy_reference(logits, x_t, x0, sigma, dsigma, graph=graph, scale_by_sigma=scale_by_sigma)


def masked_diffusion_reference(logits, x_t, x0, weight, *, mask_id: int):
    """Per-sequence ``weight * sum over masked positions of -log p(x0)`` ``[B]``, with MDLM's SUBS
    parameterization: the mask logit is excluded from the softmax; unmasked positions add 0."""
    lg = _as_float(logits).clone()
    lg[..., mask_id] = float("-inf")
    nll = -lg.log_softmax(-1).gather(-1, x0[..., None]).squeeze(-1)
    nll = torch.where(x_t == mask_id, nll, torch.zeros_like(nll))
    return weight * nll.sum(-1)


def masked_diffusion_loss(logits, x_t, x0, weight, *, mask_id: int):
    if hasattr(ops, "masked_diffusion_loss"):
        return ops.masked_diffusion_loss(logits, x_t, x0, weight, mask_id=mask_id)
    return masked_diffusion_reference(logits, x_t, x0, weight, mask_id=mask_id)


def next_token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sequence summed next-token cross-entropy ``[B]``."""
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return nll.view(targets.shape).sum(-1)
