"""Sampler steps captured in CUDA graphs and replayed: a step's kernels launch as one graph, so the
host's launch overhead (dozens of kernels per layer) leaves the step's latency.

A generation's graphs outlive it: they are kept per model (:class:`GraphSession`, the last
``MAX_SESSIONS`` configurations) and replayed by the next call with the same configuration, as a
server replays the graphs it captured at start-up, so that only a configuration's first call pays
for the warm-up runs and the captures. A graph reads and writes fixed addresses, so a session also
keeps every buffer its steps read: the per-call inputs are copied into them (:meth:`GraphSession.buffer`)
and state that lives across steps is made once (:meth:`GraphSession.keep`).

A kept session serves one call at a time, and calls may come from threads on different CUDA
streams. A call's host code ends before its GPU work (copies into the buffers, replays, copies
back) has run, so handing the session to the next call is not enough: the next call's stream
waits, on the GPU, for an event recorded on the last call's stream as that call left the session."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator

import torch

# Configurations whose graphs a model keeps (the least recently used one goes): the e2e benchmark
# times its diffusion points of one (length, batch) in turns, 9 by default, and refuses a grid of
# more than this on CUDA. Each holds its steps' activations and logits; clear_graphs frees them.
MAX_SESSIONS = 16
_sessions: "weakref.WeakKeyDictionary[object, OrderedDict]" = weakref.WeakKeyDictionary()


def check_graphable(device: torch.device) -> None:
    if device.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA model; this one is on {device}")


class GraphedStep:
    """``fn(x, *args) -> out`` (args: tensors whose values change between steps but whose shapes
    do not; fn may update x and args in place) captured on the first call and replayed after. Each
    call copies x and args into the graph's static buffers and back, so callers keep their own
    tensors, and state that fn carries from step to step in an arg survives the warm-up run. It
    returns fn's output as the graph's own buffer, which the next replay (this call's or a later
    one's) overwrites.

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
        graph = torch.cuda.CUDAGraph()
        if self.generator is not None:
            graph.register_generator_state(self.generator)
        with torch.cuda.graph(graph):
            out = self.fn(self.static_x, *self.static_args)
        # kept only once finished: a capture that raised (Ctrl-C, out of memory) is not replayed
        self.graph, self.static_out = graph, out

    def __call__(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            try:
                self._capture(x, args)
            finally:
                self.fn = None  # the graph keeps what it reads; fn's closure (the first call's) may go
        self.static_x.copy_(x)
        for buf, a in zip(self.static_args, args):
            buf.copy_(a)
        self.graph.replay()
        x.copy_(self.static_x)
        for buf, a in zip(self.static_args, args):
            a.copy_(buf)
        return self.static_out


class GraphSession:
    """The graphs and buffers of one configuration (model, sampler options, shapes, autocast,
    generator) across calls. ``steps`` maps (step name, argument shapes) to its GraphedStep.
    ``device``: the CUDA device of the model, and so of the session's buffers, on which consecutive
    calls are ordered (None: a session made for one call, or off CUDA, where ops finish as called)."""

    STREAM_ORDERED_ON = ("cuda",)  # device types whose work is queued on streams (tests add the CPU's)

    def __init__(self, generator: torch.Generator | None, device: torch.device | None = None):
        self.generator = generator  # kept alive: the graphs registered its state
        self.steps: dict = {}
        self._kept: dict = {}
        self.in_use = threading.Lock()  # held by the call that runs on the session's buffers
        self.device = device if device is not None and device.type in self.STREAM_ORDERED_ON else None
        self._left: torch.cuda.Event | None = None  # recorded on the last call's stream as it left

    def _enter(self) -> None:
        """Orders the entering call's stream after the last call's work on the session (no host sync):
        that call may have left with its copies and replays still queued on another stream."""
        if self._left is not None:
            torch.cuda.current_stream(self.device).wait_event(self._left)

    def _leave(self) -> None:
        """Marks the end of the leaving call's work on the session, on its stream."""
        if self.device is not None:
            if self._left is None:
                self._left = torch.cuda.Event()
                # Freed (evicted, cleared, its model gone), the buffers return to the allocator of
                # the stream that made them, which could hand them out while another stream's
                # queued work still uses them: the host waits for the last call's work first.
                waits = weakref.finalize(self, _wait_before_free, self._left, torch.cuda.is_current_stream_capturing)
                waits.atexit = False
            self._left.record(torch.cuda.current_stream(self.device))

    def step(self, name: str, fn, x: torch.Tensor, *args: torch.Tensor) -> "GraphedStep":
        key = (name, *(a.shape for a in (x, *args)))  # a graph replays one shape
        if key not in self.steps or self.steps[key].graph is None:  # new, or its capture raised: this call's fn
            self.steps[key] = GraphedStep(fn, self.generator)
        return self.steps[key]

    def keep(self, name: str, make):
        """The session's object ``name``, made by ``make()`` on the first call."""
        if name not in self._kept:
            self._kept[name] = make()
        return self._kept[name]

    def buffer(self, name: str, value: torch.Tensor | None) -> torch.Tensor | None:
        """A per-call input as the session's buffer: ``value`` copied into it (None stays None)."""
        if value is None:
            return None
        buf = self.keep(name, lambda: torch.empty_like(value))
        return buf.copy_(value)


def _wait_before_free(event, capturing) -> None:
    # not inside a capture (a garbage collection in the capturing thread): a sync would invalidate it
    if not capturing():
        event.synchronize()


@contextlib.contextmanager
def session_for(model, key: tuple, generator: torch.Generator | None, *,
                enabled: bool = True) -> Iterator[GraphSession | None]:
    """``with session_for(...) as session``: the model's session for ``key`` (every value a graph
    of the call would freeze besides the generator), made on its first use. A kept session serves
    one call at a time: a call that overlaps another of its configuration (from another thread)
    gets None and runs eagerly, as does every call when not ``enabled``. A call that gets the kept
    session may run on another CUDA stream than the last one to hold it, whose work may still be
    queued: its current stream waits for that work on the GPU (the host does not), and as it exits,
    its current stream records where its own work ends, so all of the call's work on the session
    must be queued on the stream current at exit. Calls under autocast get
    a session for that call only, since autocast's cache of cast weights, which the graphs read,
    is freed when the caller's autocast region ends (give the model bfloat16 weights to keep its
    graphs); so do models that are not an ``nn.Module``, whose replaced weights could not be told
    from the captured ones."""
    if not enabled:
        yield None
        return
    session = _kept_session(model, key, generator)
    if session is None:
        yield GraphSession(generator)
        return
    if not session.in_use.acquire(blocking=False):
        yield None  # eager: a second capture may not run beside the first call's CUDA work
        return
    try:
        session._enter()
        yield session
    finally:
        try:
            session._leave()
        finally:
            session.in_use.release()


def _kept_session(model, key: tuple, generator: torch.Generator | None) -> GraphSession | None:
    if torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu") or not isinstance(model, torch.nn.Module):
        return None
    sessions = _sessions.setdefault(model, OrderedDict())
    # a graph captured in training mode replays its dropout: the modules' modes are part of the key
    key = (*key, None if generator is None else id(generator), torch.is_grad_enabled(), _tensor_addresses(model),
           tuple(m.training for m in model.modules()))
    if key not in sessions:
        sessions[key] = GraphSession(generator, _model_device(model))
        while len(sessions) > MAX_SESSIONS:
            sessions.popitem(last=False)
    sessions.move_to_end(key)
    return sessions[key]


def _tensor_addresses(model) -> int:
    """Where the model's weights and buffers live: a graph reads those addresses, so a model whose
    tensors were replaced since (``model.to(dtype)``, a reassigned parameter) gets new graphs.
    Updates in place (an optimizer step, ``load_state_dict``) keep the addresses and the graphs."""
    return hash(tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers())))


def _model_device(model) -> torch.device | None:
    return next((t.device for t in (*model.parameters(), *model.buffers())), None)


def clear_graphs(model=None) -> None:
    """Frees the graphs (and their memory pools) kept for ``model``, or for every model."""
    if model is None:
        _sessions.clear()
    else:
        _sessions.pop(model, None)
