"""The objective interface the trainer drives.

An objective draws its randomness for a whole *global* batch (``draw``) and computes, for any
slice of that batch, a per-sequence negative log-likelihood in nats (``nll``): a Monte-Carlo
estimate of the diffusion ELBO bound, or the exact NLL for autoregression. Because the noise is
drawn for the global batch and then sliced, one process, several DDP ranks and gradient
accumulation all see the same noise for the same sequence, so their updates agree.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch.nn.parallel import DistributedDataParallel


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

    def bound_draw(self, batch: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random tensors of ``bound`` for a batch (on the CPU); by default the training draws."""
        return self.draw(batch, seq_len, generator)

    def bound(self, model, x0: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-sequence evaluation NLL in nats, ``[B]``: an unbiased estimate of an upper bound on
        ``-log p(x0)`` (the exact NLL for autoregression). By default the training ``nll``."""
        return self.nll(model, x0, draws)

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


def draw_mask_counts(batch: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The draws of the masked-diffusion bound (``masked_by_count``): a number of masked tokens ``k``
    uniform on {1, ..., L}, stratified over the batch with the strata dealt to the sequences at
    random (dealt in order, the first sequences would always meet few masks), and float64 uniforms
    ``u`` whose ``k`` smallest mark the masked positions."""
    v = (torch.rand(batch, generator=generator, dtype=torch.float64)
         + torch.randperm(batch, generator=generator).double()) / batch
    k = (v * seq_len).floor().long().clamp(0, seq_len - 1) + 1
    return {"k": k, "u": torch.rand(batch, seq_len, generator=generator, dtype=torch.float64)}


def masked_by_count(x0: torch.Tensor, draws: dict[str, torch.Tensor], mask_id: int):
    """The masked-diffusion NELBO with the all-mask prior, int_0^1 (1/m) E_{z ~ q_m}[sum_{masked} -log p(x0|z)] dm
    over the mask rate m in [0, 1], written exactly as sum_{k=1}^{L} (1/k) E[sum_{masked} -log p(x0|z)] with
    k masked positions drawn uniformly, and m | k ~ Beta(k, L - k + 1) (the k-th smallest of L
    uniforms) for a time-conditioned network. Unlike the training estimator (t in [eps, 1], mask rate
    (1 - eps) t) it leaves out no part of [0, 1] and its weight L / k is bounded.
    Returns (x_t, m [B] float64, weight L / k [B] float64)."""
    u, k = draws["u"].to(x0.device), draws["k"].to(x0.device)
    m = u.sort(-1).values.gather(-1, (k - 1)[:, None])  # the k-th smallest: the mask rate, Beta(k, L - k + 1)
    x_t = torch.where(u <= m, torch.full_like(x0, mask_id), x0)
    return x_t, m[:, 0].clamp_min(1e-12), x0.shape[1] / k.double()


@functools.cache
def _takes_logits_at(cls: type) -> bool:
    try:
        return "logits_at" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def loss_at_masked(loss, model, x_t: torch.Tensor, sigma: torch.Tensor | None, mask_token: int, x0: torch.Tensor,
                   *per_sequence: torch.Tensor, **options) -> torch.Tensor:
    """``loss(model(x_t, sigma), x_t, x0, *per_sequence, **options) -> [B]`` for a loss that only
    masked positions carry (the SUBS loss of MDLM and LLaDA, SEDD's absorbing score entropy).
    A model whose forward takes ``logits_at`` (dllm's) runs its output head on the masked
    positions alone, which the loss then sees as one-token rows, summed back per sequence: the
    head, the loss and their gradients cost the masked share of the [B, L, V] logits (half on
    average over the training's mask rates) instead of all of it. The values are the full loss's
    up to the order of the sums."""
    net = model
    while isinstance(net, DistributedDataParallel) or hasattr(net, "_orig_mod"):  # DDP's and torch.compile's wrappers
        net = net.module if isinstance(net, DistributedDataParallel) else net._orig_mod
    if not _takes_logits_at(type(net)):
        return loss(model(x_t, sigma), x_t, x0, *per_sequence, **options)
    B, L = x_t.shape
    at = (x_t.reshape(-1) == mask_token).nonzero()[:, 0]  # the one host sync on CUDA, before the network is queued
    rows = at // L
    logits = model(x_t, sigma, logits_at=at)[:, None]
    per_row = loss(logits, x_t.reshape(-1).index_select(0, at)[:, None], x0.reshape(-1).index_select(0, at)[:, None],
                   *(p.index_select(0, rows) for p in per_sequence), **options)
    return per_row.new_zeros(B).index_add(0, rows, per_row)
