"""Host synchronisations counted on the CPU, where they cost nothing and so go unnoticed.

On a CUDA tensor these make the host wait for the device: reading a value in Python (``.item()``,
``bool(t)``, ``int(t)``, ``if t.any():``, which all reach ``aten::_local_scalar_dense``), ops whose
output shape depends on the values (``nonzero``, boolean-mask indexing, ``masked_select``,
``repeat_interleave`` without ``output_size``, ``unique``; not ``t[mask] = number``, which torch
2.15 runs as ``masked_fill_``), ops that answer on the host
(``torch.equal``, ``allclose``; ``bincount``, which sizes its output from the maximum), ``tolist``,
and ``torch.tensor`` of host data (on CUDA a blocking copy); the last two dispatch no op on the CPU,
so they are counted by patching them (every call, even one that stays on the host). ``.cpu()`` and
``.numpy()`` dispatch nothing on a CPU tensor either, and are not counted. A sampler step that does none of these
can be captured in a CUDA graph and, eager, queues its kernels without stalling.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SYNCING_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
               aten.repeat_interleave.Tensor, aten._unique2.default, aten.unique_consecutive.default,
               aten.equal.default, aten.allclose.default, aten.bincount.default}
# boolean-mask indexing reaches the dispatcher as index / index_put_ (their nonzero runs inside)
INDEX_OPS = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


def makes_host_wait(func, args) -> bool:
    """Whether the op makes the host wait for the device on CUDA."""
    if func in SYNCING_OPS:
        return True
    return func in INDEX_OPS and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                     for i in args[1] if i is not None)


class HostSyncs(TorchDispatchMode):
    """Counts (``count``) the ops of SYNCING_OPS and the ``tolist`` and ``torch.tensor`` calls made
    while it is active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += makes_host_wait(func, args)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._saved = [(torch.Tensor, "tolist"), (torch, "tensor")]
        self._saved = [(owner, name, getattr(owner, name)) for owner, name in self._saved]
        for owner, name, fn in self._saved:
            setattr(owner, name, self._counted(fn))
        return super().__enter__()

    def _counted(self, fn):
        def counted(*args, **kwargs):
            self.count += 1
            return fn(*args, **kwargs)
        return counted

    def __exit__(self, *exc):
        for owner, name, fn in self._saved:
            setattr(owner, name, fn)
        return super().__exit__(*exc)


def syncs_per_step(generate, **kwargs) -> list[int]:
    """The host syncs of each step of ``generate(..., callback=)`` but the first and the last (where
    a sampler may sync once a call: before its loop, or to finish): those made after the previous
    step's callback, up to and including its own."""
    counts = []
    with HostSyncs() as syncs:
        generate(callback=lambda step, x, logits: counts.append(syncs.count), **kwargs)
    return [b - a for a, b in zip(counts, counts[1:])][:-1]
