"""The objective interface the trainer drives.

An objective draws its randomness for a whole *global* batch (``draw``) and computes, for any
slice of that batch, a per-sequence negative log-likelihood in nats (``nll``): a Monte-Carlo
estimate of the diffusion ELBO bound, or the exact NLL for autoregression. Because the noise is
drawn for the global batch and then sliced, one process, several DDP ranks and gradient
accumulation all see the same noise for the same sequence, so their updates agree.
"""

from __future__ import annotations

import torch


class Objective:
    name: str = ""
    arch: str = "dit"             # the model architecture it trains by default
    time_conditioning: bool = False
    random_length: float = 0.0    # the fraction of steps trained at a random length, by default

    def __init__(self, tokenizer):
        self.mask_id = tokenizer.mask_id
        self.eos_id = tokenizer.eos_id
        self.vocab_size = tokenizer.vocab_size

    @property
    def model_vocab_size(self) -> int:
        return self.vocab_size

    def draw(self, batch: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random tensors for a global batch (on the CPU); each has the batch as dimension 0."""
        return {}

    def nll(self, model, x0: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-sequence NLL (bound) in nats, ``[B]``."""
        raise NotImplementedError

    def train_loss(self, nll: torch.Tensor, seq_len: int) -> torch.Tensor:
        """The scalar minimised; a mean over this slice of the batch, so DDP's gradient average is the global mean."""
        return nll.sum() / (nll.numel() * seq_len)

    def config(self) -> dict:
        return {"name": self.name}


def sample_t(batch: int, generator: torch.Generator, eps: float, antithetic: bool) -> torch.Tensor:
    """t in [eps, 1]; antithetic sampling spreads one batch evenly over [0, 1) (MDLM's default)."""
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    if antithetic:
        u = (u / batch + torch.arange(batch, dtype=torch.float64) / batch) % 1
    return ((1 - eps) * u + eps).float()
