"""CUDA-graph semantics on the CPU, so that the samplers' cuda_graph=True paths are tested without a GPU.

A CUDA graph replays the kernels its capture recorded, with the addresses and scalar arguments they
had then. ``RecordedStep`` (a drop-in for dllm.sampling.cuda_graph.GraphedStep) records the aten and
dllm ops of one run of the step with a TorchDispatchMode and replays exactly those ops on the same
tensors: ops that write in place run again, new outputs are recomputed and copied into the tensors
the capture made, views keep aliasing. So a step that reads a Python number that changes between
steps, builds its control flow from tensor values, or reallocates a buffer that a later step reads
replays stale values here as it would on the GPU, and a step that synchronises with the host fails
as its capture would.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class HostSyncInCapture(RuntimeError):
    pass


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            raise HostSyncInCapture(f"{func} reads a device value on the host inside a captured step")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _is_view(func) -> bool:
    returns, arguments = func._schema.returns, func._schema.arguments
    writes = any(a.alias_info is not None and a.alias_info.is_write for a in arguments)
    return bool(returns) and not writes and all(r.alias_info is not None for r in returns)


class _Graph:
    def __init__(self, ops):
        self.ops = [(func, args, kwargs, out) for func, args, kwargs, out in ops if not _is_view(func)]

    def replay(self) -> None:
        # A captured view still aliases its base, which the ops before it have updated; everything
        # else runs again, and results that are not the op's (mutated) arguments are copied into
        # the tensors the capture made, which later ops read.
        for func, args, kwargs, out in self.ops:
            fresh = func(*args, **kwargs)
            returns = func._schema.returns
            olds, news = tree_flatten(out)[0], tree_flatten(fresh)[0]
            aliased = [r.alias_info is not None for r in returns] if len(returns) == len(olds) else [False] * len(olds)
            for old, new, alias in zip(olds, news, aliased):
                if isinstance(old, torch.Tensor) and not alias:
                    old.copy_(new)


class RecordedStep:
    """GraphedStep's contract (copy x and args in, replay, copy them back) on a recorded op list."""

    captures = 0  # how many steps were captured, over all instances

    def __init__(self, fn, generator: torch.Generator | None):
        self.fn, self.generator = fn, generator
        self.graph: _Graph | None = None

    def _rng_state(self):
        return self.generator.get_state() if self.generator is not None else torch.get_rng_state()

    def _set_rng_state(self, state) -> None:
        if self.generator is not None:
            self.generator.set_state(state)
        else:
            torch.set_rng_state(state)

    def __call__(self, x: torch.Tensor, *args: torch.Tensor):
        if self.graph is None:
            self.static_x = x.clone()
            self.static_args = [a.clone() for a in args]
            state = self._rng_state()
            self.fn(self.static_x, *self.static_args)  # the warm-up run
            self._set_rng_state(state)
            with _Recorder() as recorder:
                self.static_out = self.fn(self.static_x, *self.static_args)
            self._set_rng_state(state)  # a capture records draws without making them
            self.graph = _Graph(recorder.ops)
            RecordedStep.captures += 1
        self.static_x.copy_(x)
        for buf, a in zip(self.static_args, args):
            buf.copy_(a)
        self.graph.replay()
        x.copy_(self.static_x)
        for buf, a in zip(self.static_args, args):
            a.copy_(buf)
        return self.static_out


def replay_on_cpu(monkeypatch) -> type[RecordedStep]:
    """Makes cuda_graph=True run on the CPU through RecordedStep; returns the class (its
    ``captures`` counts the graphs made since)."""
    from dllm.sampling import cuda_graph

    RecordedStep.captures = 0
    monkeypatch.setattr(cuda_graph, "GraphedStep", RecordedStep)
    monkeypatch.setattr(cuda_graph, "check_graphable", lambda device: None)
    return RecordedStep
