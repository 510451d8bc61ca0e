"""CUDA-graph semantics on the CPU, so that the samplers' cuda_graph=True paths are tested without a GPU.

A CUDA graph replays the kernels its capture recorded, with the addresses and scalar arguments they
had then. ``RecordedStep`` (a drop-in for dllm.sampling.cuda_graph.GraphedStep) records the aten and
dllm ops of one run of the step with a TorchDispatchMode and replays exactly those ops on the same
tensors: ops that write in place run again, new outputs are recomputed and copied into the tensors
the capture made, views keep aliasing. So a step that reads a Python number that changes between
steps, builds its control flow from tensor values, or reallocates a buffer that a later step reads
replays stale values here as it would on the GPU, and a step that synchronises with the host fails
as its capture would. Like a graph, the recording holds only weak references to the tensors it
reads that it did not make (the model's weights, the buffers of a graph session): a replay that
reads one freed since, which on a GPU reads whatever reuses its memory, fails here.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from dllm.sampling.cuda_graph import GraphedStep
from host_syncs import makes_host_wait


class HostSyncInCapture(RuntimeError):
    pass


class FreedSinceCapture(RuntimeError):
    pass


class _Weak:
    def __init__(self, tensor: torch.Tensor):
        self.ref = weakref.ref(tensor)

    def get(self) -> torch.Tensor:
        tensor = self.ref()
        if tensor is None:
            raise FreedSinceCapture("a replayed step reads a tensor that was freed after its capture")
        return tensor


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if makes_host_wait(func, args):
            raise HostSyncInCapture(f"{func} reads a device value on the host inside a captured step")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _writes(func) -> bool:
    """Whether the op writes into an argument (and returns it)."""
    return any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)


def _is_view(func) -> bool:
    returns = func._schema.returns
    return bool(returns) and not _writes(func) and all(r.alias_info is not None for r in returns)


def _aliased(func, out) -> list[bool]:
    """Per flattened result: whether it is one of the op's arguments (schema alias annotation)."""
    returns, flat = func._schema.returns, tree_flatten(out)[0]
    return [r.alias_info is not None for r in returns] if len(returns) == len(flat) else [False] * len(flat)


class _Results:
    def __init__(self, tensors: list):
        self.tensors = tensors


class _Slot:
    """A view, made at replay, of a tensor the graph only reads."""

    def __init__(self, index: int):
        self.index = index


class _Graph:
    def __init__(self, ops, static: list[torch.Tensor]):
        # What the graph owns (the static buffers, every op's results and views of them) it keeps;
        # what it only reads (and views of that), it references weakly and views again at replay.
        owned = {id(t) for t in static}
        slots: dict[int, int] = {}

        def ref(a):
            if not isinstance(a, torch.Tensor):
                return a
            return _Slot(slots[id(a)]) if id(a) in slots else a if id(a) in owned else _Weak(a)

        def tensors(out):
            return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]

        self.ops, self.owned = [], list(static)
        for func, args, kwargs, out in ops:
            if _is_view(func):
                source = tensors(args)[0]
                if func is torch.ops.aten.lift_fresh.default:  # a constant the step made (torch.tensor(1.0),
                    owned.add(id(out))                         # x[i] = 7.0), a view of itself: the graph keeps it
                    self.owned.append(out)
                    continue
                if id(source) in owned:  # the captured view still aliases its (updated) base
                    owned |= {id(t) for t in tensors(out)}
                    self.owned.append(out)
                    continue
                new_slots = []
                for t in tensors(out):
                    slots[id(t)] = len(slots)
                    new_slots.append(slots[id(t)])
                self.ops.append((func, tree_map(ref, args), tree_map(ref, kwargs), new_slots))
                continue
            # the results the op makes (its mutated arguments, which it returns too, are not)
            results = [t if isinstance(t, torch.Tensor) and not alias else None
                       for t, alias in zip(tree_flatten(out)[0], _aliased(func, out))]
            self.ops.append((func, tree_map(ref, args), tree_map(ref, kwargs), _Results(results)))
            owned |= {id(t) for t in results if t is not None}
            self.owned.append(results)

    def replay(self) -> None:
        # Everything but the owned views runs again; results that are not the op's (mutated)
        # arguments are copied into the tensors the capture made, which later ops read.
        views: dict[int, torch.Tensor] = {}

        def resolve(a):
            return a.get() if isinstance(a, _Weak) else views[a.index] if isinstance(a, _Slot) else a

        for func, args, kwargs, out in self.ops:
            fresh = tree_flatten(func(*tree_map(resolve, args), **tree_map(resolve, kwargs)))[0]
            if isinstance(out, _Results):
                for old, new in zip(out.tensors, fresh):
                    if old is not None:
                        old.copy_(new)
            else:  # a view of what the graph only reads: its slots
                views.update(zip(out, (t for t in fresh if isinstance(t, torch.Tensor))))


class RecordedStep(GraphedStep):
    """GraphedStep (copy x and args in, replay, copy them back) over a recorded op list."""

    captures = 0  # how many steps were captured, over all instances

    def _rng_state(self, device):
        return self.generator.get_state() if self.generator is not None else torch.get_rng_state()

    def _set_rng_state(self, state, device) -> None:
        if self.generator is not None:
            self.generator.set_state(state)
        else:
            torch.set_rng_state(state)

    def _capture(self, x: torch.Tensor, args: tuple[torch.Tensor, ...]) -> None:
        self.static_x = x.clone()
        self.static_args = [a.clone() for a in args]
        state = self._rng_state(x.device)
        self.fn(self.static_x, *self.static_args)  # the warm-up run
        self._set_rng_state(state, x.device)
        with _Recorder() as recorder:
            self.static_out = self.fn(self.static_x, *self.static_args)
        self._set_rng_state(state, x.device)  # a capture records draws without making them
        self.graph = _Graph(recorder.ops, [self.static_x, *self.static_args])
        self.fn = None  # as GraphedStep drops it: the graph must not need the first call's closure
        RecordedStep.captures += 1


def replay_on_cpu(monkeypatch) -> type[RecordedStep]:
    """Makes cuda_graph=True run on the CPU through RecordedStep; returns the class (its
    ``captures`` counts the graphs made since)."""
    from dllm.sampling import cuda_graph

    RecordedStep.captures = 0
    monkeypatch.setattr(cuda_graph, "GraphedStep", RecordedStep)
    monkeypatch.setattr(cuda_graph, "check_graphable", lambda device: None)
    return RecordedStep


class _CpuGraph:
    """torch.cuda.CUDAGraph's stand-in for the real GraphedStep: a capture records, as RecordedStep
    does, and leaves the registered generator as it found it; a graph whose capture did not
    finish refuses to replay, as CUDA does."""

    def __init__(self):
        self.generator, self.recorded = None, None

    def register_generator_state(self, generator):
        self.generator = generator

    def capture_begin(self):
        self.state = self.generator.get_state()
        self.recorder = _Recorder()
        self.recorder.__enter__()

    def capture_end(self, finished: bool):
        self.recorder.__exit__(None, None, None)
        self.generator.set_state(self.state)
        if finished:
            self.recorded = _Graph(self.recorder.ops, [])

    def replay(self):
        if self.recorded is None:
            raise RuntimeError("replay of a graph whose capture did not finish")
        self.recorded.replay()


_capturing = threading.local()


@contextlib.contextmanager
def _cpu_capture(graph: _CpuGraph):
    graph.capture_begin()
    _capturing.now = True
    try:
        yield
    except BaseException:
        graph.capture_end(finished=False)  # torch.cuda.graph's exit ends the capture whatever happened
        raise
    finally:
        _capturing.now = False
    graph.capture_end(finished=True)


class _CpuStream:
    """torch.cuda.Stream's stand-in: the CPU runs every op as it is called, so a stream only logs,
    in the order they were made, the calls that order it against others (the replays on it too)."""

    def __init__(self, log: list):
        self.log = log

    def wait_stream(self, other):
        self.log.append(("wait_stream", self, other))

    def wait_event(self, event):
        self.log.append(("wait", self, event.recorded))


class _CpuEvent:
    """torch.cuda.Event's stand-in: each record is logged as a mark of its own, which a wait names,
    as a CUDA stream waits for the event's latest record."""

    marks = 0

    def __init__(self, log: list):
        self.log, self.recorded = log, None

    def record(self, stream=None):
        _CpuEvent.marks += 1
        self.recorded = _CpuEvent.marks
        self.log.append(("record", stream or torch.cuda.current_stream(), self.recorded))

    def synchronize(self):
        self.log.append(("synchronize", None, self.recorded))


def cuda_graph_api_on_cpu(monkeypatch) -> list:
    """Runs the real GraphedStep on the CPU (steps given a generator): torch.cuda's streams, events,
    CUDAGraph and torch.cuda.graph replaced by CPU stand-ins, each thread on a stream of its own,
    and kept graph sessions ordered across streams as on a GPU. Returns the log of the streams'
    waits, the events' records and the graphs' replays: (what, stream, event mark or other stream)."""
    from dllm.sampling import cuda_graph

    log, current = [], threading.local()

    def current_stream(device=None):
        if not hasattr(current, "stream"):
            current.stream = _CpuStream(log)
        return current.stream

    @contextlib.contextmanager
    def stream(s):
        before, current.stream = current_stream(), s
        try:
            yield
        finally:
            current.stream = before

    class LoggedGraph(_CpuGraph):
        def replay(self):
            log.append(("replay", current_stream(), None))
            super().replay()

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _CpuStream(log))
    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "Event", lambda *args, **kwargs: _CpuEvent(log))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", LoggedGraph)
    monkeypatch.setattr(torch.cuda, "graph", _cpu_capture)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: getattr(_capturing, "now", False))
    monkeypatch.setattr(cuda_graph, "check_graphable", lambda device: None)
    monkeypatch.setattr(cuda_graph.GraphSession, "STREAM_ORDERED_ON", ("cpu",))
    return log
