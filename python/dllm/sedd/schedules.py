"""SEDD's noise schedules: ``schedule(t) -> (sigma, dsigma)`` for ``t`` in [0, 1] (1 = all noise).

``sigma(t)`` is the total noise (a token is still clean with probability ``exp(-sigma)``) and
``dsigma`` its time derivative, the weight of the score-entropy loss.
"""

from __future__ import annotations

import math
import numbers

import torch


def _time(t) -> torch.Tensor:
    """``t`` as a tensor, checked to lie in [0, 1] where that costs no device synchronisation: a
    Python number or a CPU tensor. CUDA tensors go unchecked, since samplers call the schedule
    every step (and may be captured in a CUDA graph)."""
    if isinstance(t, numbers.Real):
        if not 0 <= t <= 1:
            raise ValueError(f"t must lie in [0, 1], got {t}")
        return torch.tensor(float(t))
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a float or a tensor, got {type(t).__name__}")
    if t.device.type == "cpu" and not torch.compiler.is_compiling() and t.numel():
        outside = t.detach()[~((t >= 0) & (t <= 1))]  # NaN fails both
        if outside.numel():
            raise ValueError(f"t must lie in [0, 1], got {outside[0].item()}"
                             + (f" and {outside.numel() - 1} more values outside" if outside.numel() > 1 else ""))
    return t


def _positive(name: str, value) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


class LogLinear:
    """``sigma(t) = -log(1 - (1 - eps) t)``: the mask probability ``1 - exp(-sigma)`` is
    ``(1 - eps) t`` exactly. SEDD's schedule for the absorbing graph (eps = 1e-3)."""

    name = "loglinear"

    def __init__(self, eps: float = 1e-3):
        eps = float(eps)
        if not 0 < eps < 1:
            raise ValueError(f"LogLinear eps must lie in (0, 1), got {eps}")
        self.eps = eps

    def __call__(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        t = _time(t)
        a = 1 - self.eps
        # 1 - a t written without the cancellation that turns sigma(1) into inf in float32 for eps < ~6e-8
        rest = (1 - t) + self.eps * t
        return torch.where(a * t < 0.5, -torch.log1p(-a * t), -torch.log(rest)), a / rest

    def config(self) -> dict:
        return {"type": self.name, "eps": self.eps}


class Geometric:
    """``sigma(t) = sigma_min^(1 - t) sigma_max^t``. The defaults are SEDD's training config
    (1e-4 to 20; its class defaults are 1e-3 and 1)."""

    name = "geometric"

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        sigma_min, sigma_max = _positive("Geometric sigma_min", sigma_min), _positive("Geometric sigma_max", sigma_max)
        if not sigma_max > sigma_min:
            raise ValueError(f"Geometric sigma_max must exceed sigma_min, got {sigma_min} and {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __call__(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        t = _time(t)
        log_min, log_max = math.log(self.sigma_min), math.log(self.sigma_max)
        sigma = torch.exp(log_min + t * (log_max - log_min))
        return sigma, sigma * (log_max - log_min)

    def config(self) -> dict:
        return {"type": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


def get_noise(name: str | None = None, *, type: str | None = None, **kwargs):
    """A schedule by name, as configs and checkpoints store it: ``get_noise("geometric")``, or
    ``get_noise(**schedule.config())`` (whose name is under ``type``)."""
    if name is not None and type is not None and name != type:
        raise ValueError(f"get_noise got two names, {name!r} and type={type!r}")
    name = name if name is not None else type if type is not None else "loglinear"
    if name == "loglinear":
        return LogLinear(**kwargs)
    if name == "geometric":
        return Geometric(**kwargs)
    raise ValueError(f"unknown noise schedule {name!r}; expected 'loglinear' or 'geometric'")
