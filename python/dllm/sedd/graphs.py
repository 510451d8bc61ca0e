"""SEDD's two graphs (forward processes) as thin objects over ``dllm.ops``.

A graph fixes ``num_classes`` (the logits' last dimension) and the graph name every op takes;
the math lives in the kernels and, in plain PyTorch, in ``dllm.sedd.reference``.
"""

from __future__ import annotations

import operator

import torch

from .. import ops


def _vocab_size(graph: str, vocab_size, least: int = 1) -> int:
    try:
        n = operator.index(vocab_size)
    except TypeError:
        raise TypeError(f"{graph} vocab_size must be an integer, got {vocab_size!r}") from None
    if n < least:
        raise ValueError(f"{graph} vocab_size must be at least {least}, got {n}")
    return n


class _Graph:
    name: str
    num_classes: int

    def sample_transition(self, x0, sigma, *, generator=None) -> torch.Tensor:
        """Noise clean tokens ``x0`` [B, L] to total noise ``sigma``."""
        return ops.sample_transition(x0, sigma, graph=self.name, num_classes=self.num_classes, generator=generator)

    def step(self, logits, x, sigma, dsig, *, method: str = "analytic", scale_by_sigma: bool | None = None,
             generator=None) -> torch.Tensor:
        """One sampler step from the network's raw ``logits`` (see ``dllm.ops.sedd_step``)."""
        self._check(logits)
        scale = self.scale_by_sigma if scale_by_sigma is None else scale_by_sigma
        return ops.sedd_step(logits, x, sigma, dsig, graph=self.name, method=method, scale_by_sigma=scale,
                             generator=generator)

    def loss(self, logits, x_t, x0, sigma, dsigma, *, scale_by_sigma: bool | None = None) -> torch.Tensor:
        """Score-entropy loss [B] (see ``dllm.ops.score_entropy_loss``)."""
        self._check(logits)
        scale = self.scale_by_sigma if scale_by_sigma is None else scale_by_sigma
        return ops.score_entropy_loss(logits, x_t, x0, sigma, dsigma, graph=self.name, scale_by_sigma=scale)

    def _check(self, logits):
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"{type(self).__name__} graph has {self.num_classes} classes but the logits have "
                             f"{logits.shape[-1]}")


class Absorbing(_Graph):
    """Every token flows to the mask at unit rate. ``num_classes = vocab_size + 1``, the mask is
    the last index, and the limit distribution is all-mask."""

    name = "absorb"
    scale_by_sigma = True

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size = _vocab_size("Absorbing", vocab_size)
        self.num_classes = vocab_size + 1
        self.mask_id = vocab_size

    def sample_limit(self, batch: int, length: int, device=None, generator=None) -> torch.Tensor:
        # generator: the signature every graph shares; the absorbing limit is not random
        return torch.full((batch, length), self.mask_id, dtype=torch.int64, device=device)


class Uniform(_Graph):
    """Every token jumps to a uniformly drawn token; ``num_classes = vocab_size``. SEDD trains
    these models without the sigma scaling of the output."""

    name = "uniform"
    scale_by_sigma = False

    def __init__(self, vocab_size: int):
        # one token would leave nothing to jump to
        self.vocab_size = self.num_classes = _vocab_size("Uniform", vocab_size, least=2)

    def sample_limit(self, batch: int, length: int, device=None, generator=None) -> torch.Tensor:
        return torch.randint(0, self.num_classes, (batch, length), device=device, generator=generator)
