"""Autoregressive next-token cross-entropy: the exact NLL of the baseline."""

from __future__ import annotations

import torch

from .base import Objective
from .losses import next_token_nll


class AR(Objective):
    """Every window is predicted in full: the input is end-of-text followed by the first L-1 tokens,
    so the NLL covers the same L tokens the diffusion bounds cover."""

    name = "ar"
    arch = "ar"

    def nll(self, model, x0, draws):
        bos = torch.full_like(x0[:, :1], self.eos_id)
        return next_token_nll(model(torch.cat([bos, x0[:, :-1]], dim=1)), x0)
