"""Training objectives. ``get_objective(name, tokenizer, **options)`` with name in sedd, mdlm, llada, ar."""

from .ar import AR
from .base import Objective
from .diffusion import LLaDA, MDLM, SEDD
from .losses import (masked_diffusion_loss, masked_diffusion_reference, next_token_nll, score_entropy_loss,
                     score_entropy_reference)

OBJECTIVES = {"sedd": SEDD, "mdlm": MDLM, "llada": LLaDA, "ar": AR}


def get_objective(name: str, tokenizer, *, graph: str = "absorb", noise: str = "loglinear") -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    if name == "sedd":
        return SEDD(tokenizer, graph=graph, noise=noise)
    if name == "mdlm":
        return MDLM(tokenizer, noise=noise)
    return OBJECTIVES[name](tokenizer)


__all__ = ["Objective", "SEDD", "MDLM", "LLaDA", "AR", "OBJECTIVES", "get_objective", "score_entropy_loss",
           "score_entropy_reference", "masked_diffusion_loss", "masked_diffusion_reference", "next_token_nll"]
