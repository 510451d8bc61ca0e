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

    name = "loglinear"

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = 1 - self.eps
        return -torch.log1p(-a * t), a / (1 - a * t)

    def config(self) -> dict:
        return {"type": self.name, "eps": self.eps}


class Geometric:
    """``sigma(t) = sigma_min^(1 - t) sigma_max^t``. The defaults are SEDD's training config
    (1e-4 to 20; its class defaults are 1e-3 and 1)."""

    name = "geometric"

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_min, log_max = math.log(self.sigma_min), math.log(self.sigma_max)
        sigma = torch.exp(log_min + t * (log_max - log_min))
        return sigma, sigma * (log_max - log_min)

    def config(self) -> dict:
        return {"type": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


def get_noise(name: str = "loglinear", **kwargs):
    """A schedule by name, as configs and checkpoints store it."""
    if name == "loglinear":
        return LogLinear(**kwargs)
    if name == "geometric":
        return Geometric(**kwargs)
    raise ValueError(f"unknown noise schedule {name!r}; expected 'loglinear' or 'geometric'")
