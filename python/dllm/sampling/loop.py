"""Bookkeeping shared by every sampler: model calls, nfe, history, callbacks, step timing."""

from __future__ import annotations

import time

import torch

from . import cuda_graph as graphs
from .model_protocol import call_model, check_takes_attention_mask, new_kv_cache, warn_if_dropout_on


class StepLoop:
    def __init__(self, model, attention_mask, callback, return_history: bool, device: torch.device, *,
                 cuda_graph: bool = False, generator: torch.Generator | None = None):
        if attention_mask is not None:
            check_takes_attention_mask(model)
        warn_if_dropout_on(model)
        self.model = model
        self.time_conditioned = bool(getattr(model, "time_conditioned", False))
        self.attention_mask = attention_mask
        self.callback = callback
        self.history: list[torch.Tensor] | None = [] if return_history else None
        self.nfe = 0
        self.cuda = device.type == "cuda"
        self.cuda_graph, self.generator = cuda_graph, generator
        self._graphs: dict = {}  # (step function, argument shapes) -> its GraphedStep
        self._marks: list = []  # (start, end) CUDA events or perf_counter pairs
        self._start = None
        self.step = 0

    def begin(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | None = None, *, stacked: int = 1,
                **cache_kwargs) -> torch.Tensor:
        """The model's logits, not counted in nfe (for step functions run by :meth:`call`).
        ``stacked``: x holds that many copies of the batch (classifier-free guidance), each
        padded like the prompts."""
        mask = self.attention_mask
        if mask is not None and stacked > 1:
            mask = mask.repeat(stacked, 1)
        return call_model(self.model, x, sigma, mask, **cache_kwargs)

    def logits(self, x: torch.Tensor, sigma: torch.Tensor | None = None, evaluations: int = 1,
               **cache_kwargs) -> torch.Tensor:
        self.nfe += evaluations
        return self.forward(x, sigma, **cache_kwargs)

    def new_kv_cache(self, x: torch.Tensor):
        return new_kv_cache(self.model, x.shape[0], x.shape[1])

    def call(self, fn, x: torch.Tensor, *args: torch.Tensor, evaluations: int = 1, replay: bool = True):
        """``fn(x, *args)`` (x and args updated in place), replayed from its CUDA graph when
        cuda_graph is on and ``replay`` (captured on fn's first call: a step run once is cheaper
        eager); counts ``evaluations`` network calls. Untimed: the sampler brackets its step with
        :meth:`begin` and :meth:`end`."""
        self.nfe += evaluations
        if not (self.cuda_graph and replay):
            return fn(x, *args)
        key = (fn, *(a.shape for a in (x, *args)))  # a graph replays one shape
        if key not in self._graphs:
            self._graphs[key] = graphs.GraphedStep(fn, self.generator)
        return self._graphs[key](x, *args)

    def run_step(self, fn, x: torch.Tensor, *args: torch.Tensor, evaluations: int = 1,
                 replay: bool = True) -> torch.Tensor:
        """One whole step ``fn(x, *args) -> logits`` through :meth:`call`, timed, counted and reported
        like any step."""
        self.begin()
        logits = self.call(fn, x, *args, evaluations=evaluations, replay=replay)
        self.end(x, logits)
        return logits

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
