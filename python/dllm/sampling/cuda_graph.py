"""One sampler step captured in a CUDA graph and replayed: the step's kernels launch as one graph,
so the host's launch overhead (dozens of kernels per layer) leaves the step's latency."""

from __future__ import annotations

import torch


def check_graphable(device: torch.device) -> None:
    if device.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA model; this one is on {device}")


class GraphedStep:
    """``fn(x, *args) -> out`` (args: tensors whose values change between steps but whose shapes
    do not; fn may update x and args in place) captured on the first call and replayed after. Each
    call copies x and args into the graph's static buffers and back, so callers keep their own
    tensors, and state that fn carries from step to step in an arg survives the warm-up run.

    fn must not synchronise with the host (dllm's predict_masked and commit_tokens do not). The
    warm-up run before the capture draws random numbers; the generator's state is restored after
    it, so a replay draws what an eager step would have drawn."""

    def __init__(self, fn, generator: torch.Generator | None):
        self.fn, self.generator = fn, generator
        self.graph: torch.cuda.CUDAGraph | None = None

    def _rng_state(self, device):
        return self.generator.get_state() if self.generator is not None else torch.cuda.get_rng_state(device)

    def _set_rng_state(self, state, device) -> None:
        if self.generator is not None:
            self.generator.set_state(state)
        else:
            torch.cuda.set_rng_state(state, device)

    def _capture(self, x: torch.Tensor, args: tuple[torch.Tensor, ...]) -> None:
        self.static_x = x.clone()
        self.static_args = [a.clone() for a in args]
        state = self._rng_state(x.device)
        # Warm up on a side stream (lazy initialisation, allocator, kernel selection), as torch.cuda.graph asks.
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            self.fn(self.static_x, *self.static_args)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self._set_rng_state(state, x.device)
        self.graph = torch.cuda.CUDAGraph()
        if self.generator is not None:
            self.graph.register_generator_state(self.generator)
        with torch.cuda.graph(self.graph):
            self.static_out = self.fn(self.static_x, *self.static_args)

    def __call__(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            self._capture(x, args)
        self.static_x.copy_(x)
        for buf, a in zip(self.static_args, args):
            buf.copy_(a)
        self.graph.replay()
        x.copy_(self.static_x)
        for buf, a in zip(self.static_args, args):
            a.copy_(buf)
        return self.static_out
