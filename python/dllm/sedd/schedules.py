"""SEDD's noise schedules: ``schedule(t) -> (sigma, dsigma)`` for ``t`` in [0, 1] (1 = all noise).

``sigma(t)`` is the total noise (a token is still clean with probability ``exp(-sigma)``) and
``dsigma`` its time derivative, the weight of the score-entropy loss.
"""

from __future__ import annotations

import math

import torch


class LogLinear:
    """``sigma(t) = -log(1 - (1 - eps) t)``: the mask probability ``1 - exp(-sigma)`` is
    ``(1 - eps) t`` exactly. SEDD's schedule for the absorbing graph (eps = 1e-3)."""

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = 1 - self.eps
        return -torch.log1p(-a * t), a / (1 - a * t)


class Geometric:
    """``sigma(t) = sigma_min^(1 - t) sigma_max^t``. SEDD's class defaults are 1e-3 and 1; its
    training config uses 1e-4 and 20."""

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 1.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_min, log_max = math.log(self.sigma_min), math.log(self.sigma_max)
        sigma = torch.exp(log_min + t * (log_max - log_min))
        return sigma, sigma * (log_max - log_min)
