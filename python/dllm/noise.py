"""Noise schedules: ``schedule(t) -> (sigma, dsigma)``, total noise and its time derivative (ALGORITHMS.md 1.3).

A token survives to time t with probability ``exp(-sigma(t))``.
"""

from __future__ import annotations

import math

import torch


class LogLinearNoise:
    """``sigma(t) = -log(1 - (1 - eps) t)``: the mask probability is exactly ``(1 - eps) t``."""

    name = "loglinear"

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = 1 - self.eps
        return -torch.log1p(-a * t), a / (1 - a * t)

    def config(self) -> dict:
        return {"type": self.name, "eps": self.eps}


class GeometricNoise:
    """``sigma(t) = sigma_min^(1-t) sigma_max^t`` (SEDD's config: 1e-4 to 20)."""

    name = "geometric"

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        sigma = torch.exp(lo + t * (hi - lo))
        return sigma, sigma * (hi - lo)

    def config(self) -> dict:
        return {"type": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


def get_noise(name: str = "loglinear", **kwargs):
    if name == "loglinear":
        return LogLinearNoise(**kwargs)
    if name == "geometric":
        return GeometricNoise(**kwargs)
    raise ValueError(f"unknown noise schedule {name!r}; expected 'loglinear' or 'geometric'")
