"""Bookkeeping shared by every sampler: model calls, nfe, history, callbacks, step timing."""

from __future__ import annotations

import time

import torch

from .model_protocol import call_model


class StepLoop:
    def __init__(self, model, attention_mask, callback, return_history: bool, device: torch.device):
        self.model = model
        self.attention_mask = attention_mask
        self.callback = callback
        self.history: list[torch.Tensor] | None = [] if return_history else None
        self.nfe = 0
        self.cuda = device.type == "cuda"
        self._marks: list = []  # (start, end) CUDA events or perf_counter pairs
        self._start = None
        self.step = 0

    def begin(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def logits(self, x: torch.Tensor, sigma: torch.Tensor | None = None, evaluations: int = 1) -> torch.Tensor:
        self.nfe += evaluations
        return call_model(self.model, x, sigma, self.attention_mask)

    def end(self, x: torch.Tensor, logits: torch.Tensor | None) -> None:
        if self.cuda:
            stop = torch.cuda.Event(enable_timing=True)
            stop.record()
        else:
            stop = time.perf_counter()
        self._marks.append((self._start, stop))
        if self.history is not None:
            self.history.append(x.detach().clone())
        if self.callback is not None:
            self.callback(self.step, x, logits)
        self.step += 1

    def step_times(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in self._marks]
        return [(b - a) * 1e3 for a, b in self._marks]
