"""References of predict_masked and commit_tokens in plain PyTorch (float64 where it matters).

They follow the samplers they replace: LLaDA's `generate.py` (low_confidence / random remasking,
per-row top-k of the confidence), Dream's `sample_tokens` (top-p, top-k, maskgit_plus,
topk_margin, entropy) and Fast-dLLM's threshold rule, with two deliberate differences that make
the result a function of the inputs alone: ties go to the lowest index, and top-k / top-p keep
every token tied with the last one kept.
"""

from __future__ import annotations

import torch


def shifted(logits: torch.Tensor, shift: int) -> torch.Tensor:
    """Dream's convention: position i is predicted by row i - shift, position < shift by row 0."""
    if shift == 0:
        return logits
    return torch.cat([logits[..., :1, :].expand(*logits.shape[:-2], shift, logits.shape[-1]), logits[..., :-shift, :]], -2)


def clean_log_probs(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """float64 log-softmax over the vocabulary without the mask token (its entry is -inf)."""
    z = logits.double().clone()
    z[..., mask_id] = float("-inf")
    return torch.log_softmax(z, -1)


def above(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """softmax(z) over the last dim, and for each entry how many entries, and how much of that
    mass, lie strictly above its value (top-k and top-p keep by these)."""
    probs = torch.softmax(z, -1)
    sorted_z, order = torch.sort(z, -1, descending=True)
    sorted_p = probs.gather(-1, order)
    first_of_value = torch.searchsorted(-sorted_z.contiguous(), -z.contiguous(), side="left")
    mass = (torch.cumsum(sorted_p, -1) - sorted_p).gather(-1, first_of_value.clamp(max=z.shape[-1] - 1))
    return probs, first_of_value, mass


def filtered_proposal_probs(logits: torch.Tensor, mask_id: int, temperature: float, top_k: int = 0,
                            top_p: float = 1.0) -> torch.Tensor:
    """The exact float64 distribution that predict_masked draws a proposal from, per row."""
    z = logits.double().clone()
    z[..., mask_id] = float("-inf")
    z = z / temperature
    probs, count_above, mass_above = above(z)
    keep = torch.isfinite(z)
    if top_k > 0:
        keep &= count_above < top_k
    if top_p < 1.0:
        keep &= mass_above <= top_p
    p = torch.where(keep, probs, 0.0)
    return p / p.sum(-1, keepdim=True)


def _score(p: torch.Tensor, tokens: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "prob":
        return p.gather(-1, tokens[..., None])[..., 0]
    if kind == "margin":
        top2 = p.topk(2, -1).values
        return top2[..., 0] - top2[..., 1]
    if kind == "entropy":
        return torch.where(p > 0, p * p.log(), 0.0).sum(-1)
    raise ValueError(f"no deterministic reference for confidence {kind!r}")


def confidence(logits: torch.Tensor, tokens: torch.Tensor, mask_id: int, kind: str) -> torch.Tensor:
    """float64 confidence of `tokens` under the untempered clean distribution (not "random"):
    LLaDA's, and predict_masked's with confidence_from="model"."""
    return _score(clean_log_probs(logits, mask_id).exp(), tokens, kind)


def proposal_confidence(logits: torch.Tensor, tokens: torch.Tensor, mask_id: int, kind: str, temperature: float,
                        top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """float64 confidence of `tokens` under the distribution they are drawn from, temperature 0
    scoring at temperature 1 (Dream's sample_tokens; predict_masked's confidence_from="proposal")."""
    return _score(filtered_proposal_probs(logits, mask_id, temperature or 1.0, top_k, top_p), tokens, kind)


def predict_masked_greedy(logits: torch.Tensor, x: torch.Tensor, mask_id: int, confidence_kind: str = "prob",
                          logits_shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """predict_masked at temperature 0: argmax (first index) and its confidence, -inf where unmasked."""
    logits = shifted(logits, logits_shift)
    logp = clean_log_probs(logits, mask_id)
    x0 = logp.argmax(-1)  # torch returns the first maximal index
    conf = confidence(logits, x0, mask_id, confidence_kind)
    masked = x == mask_id
    return torch.where(masked, x0, x), torch.where(masked, conf, float("-inf"))


def eligible(x: torch.Tensor, mask_id: int, window: torch.Tensor | None) -> torch.Tensor:
    pos = torch.arange(x.shape[-1], device=x.device)
    ok = x == mask_id
    if window is not None:
        ok &= (pos >= window[:, :1]) & (pos < window[:, 1:])
    return ok


def commit_tokens(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor, mask_id: int, *,
                  num_tokens: torch.Tensor | None = None, threshold: float | None = None,
                  window: torch.Tensor | None = None) -> torch.Tensor:
    """The deterministic rules of commit_tokens, row by row as LLaDA / Fast-dLLM do; returns the
    new x (the input is not modified) and leaves the random rules to statistical tests."""
    x = x.clone()
    ok = eligible(x, mask_id, window)
    for b in range(x.shape[0]):
        idx = ok[b].nonzero()[:, 0]
        if idx.numel() == 0:
            continue
        c = conf[b, idx].double()
        order = idx[torch.sort(-c, stable=True).indices]  # most confident first, lower index on ties
        if num_tokens is not None:
            chosen = order[: int(num_tokens[b])]
        else:
            # float32 against the threshold rounded to float32, as the op and PyTorch's own tensor >= float
            chosen = torch.cat([order[:1], idx[conf[b, idx].float() >= threshold]]).unique()
        x[b, chosen] = x0[b, chosen]
    return x
