"""Validation NLL on the held-out split: what the trainer logs and what `dllm eval` reports."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from .. import ops
from ..data.dataset import PackedDataset

EVAL_SEED_OFFSET = 0x5EED  # the noise seed is the run's seed plus this, apart from the training noise


@torch.no_grad()
def validation_nll(model, objective, val: PackedDataset, *, sequences: int, batch_size: int, seed: int,
                   device: torch.device, amp=None, progress: bool = False) -> float:
    """Mean NLL per token in nats over the first ``sequences`` validation windows: the objective's
    bound for diffusion models, the exact NLL for autoregressive ones. The noise of every window is
    drawn at once from ``seed + EVAL_SEED_OFFSET``, so the estimate does not depend on ``batch_size``."""
    return validation_nll_per_window(model, objective, val, sequences=sequences, batch_size=batch_size, seed=seed,
                                     device=device, amp=amp, progress=progress).mean().item()


@torch.no_grad()
def validation_nll_per_window(model, objective, val: PackedDataset, *, sequences: int, batch_size: int, seed: int,
                              device: torch.device, amp=None, progress: bool = False) -> torch.Tensor:
    """What ``validation_nll`` averages: each window's NLL per token in nats, float64 ``[n]`` on the CPU."""
    from tqdm.auto import tqdm

    n = min(len(val), sequences)
    if n <= 0:
        raise ValueError("no validation sequences to evaluate")
    draws = objective.bound_draw(n, val.seq_len, torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET))
    per_window = []
    for start in tqdm(range(0, n, batch_size), desc="eval", disable=not progress, dynamic_ncols=True):
        rows = range(start, min(n, start + batch_size))
        x = val.get(rows).to(device)
        with amp or nullcontext():
            nll = objective.bound(model, x, {k: v[rows.start:rows.stop] for k, v in draws.items()})
        per_window.append(nll.double().cpu() / val.seq_len)
    ops.raise_pending_errors()  # a CUDA loss's bad tokens, found by its kernel (the copies above waited)
    return torch.cat(per_window)


def standard_error(values: torch.Tensor) -> float:
    """The standard error of the mean of ``values``; NaN for a single value, which shows no spread."""
    return values.std().item() / math.sqrt(values.numel()) if values.numel() > 1 else math.nan


def nll_metrics(nats: float, bytes_per_token: float, suffix: str = "") -> dict:
    """Nats per token as the three numbers the trainer logs: nats and bits per token, bits per byte."""
    bits = nats / math.log(2)
    return {f"val_nll_per_token{suffix}": nats, f"val_bits_per_token{suffix}": bits,
            f"val_bpb{suffix}": bits / bytes_per_token}
