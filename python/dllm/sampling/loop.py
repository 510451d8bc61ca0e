"""Bookkeeping shared by every sampler: model calls, nfe, history, callbacks, step timing."""

from __future__ import annotations

import time

import torch

from .cuda_graph import GraphSession
from .model_protocol import (call_model, check_takes_attention_mask, new_kv_cache, time_conditioned, vocab_size_of,
                             warn_if_dropout_on)


class StepLoop:
    def __init__(self, model, attention_mask, callback, return_history: bool, device: torch.device, *,
                 graphs: GraphSession | None = None, mask_id: int | None = None):
        """graphs: the session whose CUDA graphs replay the steps run by :meth:`call` (None: eager).
        mask_id: the masked samplers' mask token, which every step's logits must cover."""
        if attention_mask is not None:
            check_takes_attention_mask(model)
        warn_if_dropout_on(model)
        self.model = model
        self.time_conditioned = time_conditioned(model)
        self.vocab_size = vocab_size_of(model)  # what every step's logits must cover
        self.mask_id = mask_id
        self.graphs = graphs
        self.attention_mask = self.buffer("attention_mask", attention_mask)
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

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | None = None, *, stacked: int = 1,
                **cache_kwargs) -> torch.Tensor:
        """The model's logits, not counted in nfe (for step functions run by :meth:`call`).
        ``stacked``: x holds that many copies of the batch (classifier-free guidance), each
        padded like the prompts."""
        mask = self.attention_mask
        if mask is not None and stacked > 1:
            mask = mask.repeat(stacked, 1)
        return call_model(self.model, x, sigma, mask, vocab_size=self.vocab_size, mask_id=self.mask_id,
                          **cache_kwargs)

    def logits(self, x: torch.Tensor, sigma: torch.Tensor | None = None, evaluations: int = 1,
               **cache_kwargs) -> torch.Tensor:
        self.nfe += evaluations
        return self.forward(x, sigma, **cache_kwargs)

    def new_kv_cache(self, x: torch.Tensor):
        return new_kv_cache(self.model, x.shape[0], x.shape[1])

    @property
    def cuda_graph(self) -> bool:
        return self.graphs is not None

    def keep(self, name: str, make):
        """An object the steps use across steps (and, under cuda_graph, across calls): ``make()``
        once per graph session, or every call when eager."""
        return make() if self.graphs is None else self.graphs.keep(name, make)

    def buffer(self, name: str, value: torch.Tensor | None) -> torch.Tensor | None:
        """A per-call tensor that the steps read: under cuda_graph, the session's buffer that holds
        its values (a graph reads the address it captured); eager, the tensor itself."""
        return value if self.graphs is None else self.graphs.buffer(name, value)

    def call(self, fn, x: torch.Tensor, *args: torch.Tensor, evaluations: int = 1, replay: bool = True):
        """``fn(x, *args)`` (x and args updated in place), replayed from its CUDA graph when
        cuda_graph is on and ``replay`` (captured on the first call of fn's name and argument
        shapes in the session: a step run once is cheaper eager); counts ``evaluations`` network
        calls. Untimed: the sampler brackets its step with :meth:`begin` and :meth:`end`. fn may
        read only its arguments, the model and what :meth:`keep` and :meth:`buffer` return: its
        graph outlives the call."""
        self.nfe += evaluations
        if not (self.cuda_graph and replay):
            return fn(x, *args)
        return self.graphs.step(fn.__qualname__, fn, x, *args)(x, *args)

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
