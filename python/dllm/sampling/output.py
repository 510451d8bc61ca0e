"""What dllm.generate returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class GenerationOutput:
    """sequences: int64 [B, P + gen_length], prompt included. history: the canvas after every
    step (only with return_history=True). nfe: network evaluations. step_times: per-step
    latency in ms (network + sampler), measured with CUDA events on a GPU."""

    sequences: torch.Tensor
    history: list[torch.Tensor] | None = None
    nfe: int = 0
    step_times: list[float] = field(default_factory=list)
