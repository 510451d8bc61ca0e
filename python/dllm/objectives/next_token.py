"""The autoregressive baseline's loss, ``next_token_nll``: the cross-entropy of ``F.cross_entropy``
without its float32 copies of the logits.

``F.cross_entropy(logits.float(), ...)`` on bfloat16 logits ``[N, V]`` makes a float32 copy, saves
a float32 log-softmax for the backward and builds two float32 gradients there: at the peak of a
forward and backward, six times the logits' bytes on top of the logits (measured on the CPU). Here
the rows are taken a chunk at a time, each chunk's float32 temporary bounded by ``_CHUNK_BYTES``
(less on a CPU running one thread). The forward saves the logits themselves (the output head, a
linear layer, does not keep its output for its backward, so they are the one tensor added to the
graph, in their own dtype) and one log-sum-exp per row; the backward writes ``d(logits)`` once, in
the logits' dtype. Pure PyTorch, so it runs on any device and under ``torch.compile``.
"""

from __future__ import annotations

import torch

# The float32 temporaries of one chunk of rows. On CUDA few chunks, since each costs a handful of
# kernel launches (and under torch.compile a loop iteration it unrolls). On the CPU a chunk that
# stays in the caches makes the passes over it cheap: float32 16 x 129 x 4096 (the demo's AR loss),
# forward and backward on an idle 2-core EPYC: 2 threads 27 ms with 4 MB chunks, 45-55 ms with
# 32 MB, 35 ms for F.cross_entropy; 1 thread 38 ms with 512 KB, 55 ms with 4 MB, 55 ms for
# F.cross_entropy (one thread has no parallel region's barrier per op to pay for small chunks).
_CHUNK_BYTES = 32 << 20
_CPU_CHUNK_BYTES = 4 << 20
_ONE_THREAD_CHUNK_BYTES = 512 << 10
# F.cross_entropy's default ignore_index: such a target adds 0 to the loss and gets no gradient.
_IGNORE_INDEX = -100


def _chunk_rows(vocab: int, acc: torch.dtype, device: torch.device) -> int:
    budget = _CHUNK_BYTES
    if device.type == "cpu" and not torch.compiler.is_compiling():
        budget = min(budget, _ONE_THREAD_CHUNK_BYTES if torch.get_num_threads() == 1 else _CPU_CHUNK_BYTES)
    return max(1, budget // (acc.itemsize * vocab))


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # float32, float64 for float64 logits


# One chunk each. Their one temporary of the chunk's size dies on return (a loop variable would keep
# it alive while the next chunk's is made). On the CPU an op mixing dtypes (chunk - lse) would copy
# its input to float32 besides making its output, hence the copy of half-precision chunks and the
# in-place ops.

def _minus(chunk: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
    """``chunk - by`` in ``by``'s dtype, a new tensor."""
    return chunk.sub(by) if chunk.dtype == by.dtype else chunk.to(by.dtype, copy=True).sub_(by)


def _log_sum_exp(chunk: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Per row, in ``acc``. The max is exact in any dtype. A row holding NaN or ``+inf``, or only
    ``-inf``, gets NaN, as in F.cross_entropy."""
    peak = chunk.amax(-1, keepdim=True).to(acc)
    return _minus(chunk, peak).exp_().sum(-1).log_().add_(peak[:, 0])


def _write_grad(out: torch.Tensor, chunk: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor,
                grad: torch.Tensor) -> None:
    """``out = (softmax(chunk) - onehot(targets)) * grad[:, None]``, in the logits' dtype."""
    d = _minus(chunk, lse[:, None]).exp_().mul_(grad[:, None])
    d.scatter_add_(1, targets[:, None], -grad[:, None])
    out.copy_(d)


class _RowNLL(torch.autograd.Function):
    """``-log softmax(logits[n])[targets[n]]`` for ``logits [N, V]``, ``targets [N]``: ``[N]``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        acc = _accumulation_dtype(logits.dtype)
        ignored = targets == _IGNORE_INDEX
        safe = targets.masked_fill(ignored, 0)
        lse = torch.empty(logits.shape[0], dtype=acc, device=logits.device)
        rows = _chunk_rows(logits.shape[1], acc, logits.device)
        for start in range(0, logits.shape[0], rows):
            lse[start:start + rows] = _log_sum_exp(logits[start:start + rows], acc)
        nll = lse - logits.gather(1, safe[:, None])[:, 0].to(acc)
        nll = nll.masked_fill(ignored, 0)
        ctx.save_for_backward(logits, lse, safe, ignored)
        return nll

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, lse, safe, ignored = ctx.saved_tensors
        grad = grad.to(lse.dtype).masked_fill(ignored, 0)
        if torch.is_grad_enabled():
            # create_graph (a gradient penalty): d(logits) as a function of the logits, all rows at
            # once, so that its own gradient flows through the softmax (the saved lse carries no
            # graph; once_differentiable would not raise here, as the incoming grad has none either)
            d = torch.softmax(logits.to(lse.dtype), -1).scatter_add(1, safe[:, None], -torch.ones_like(grad)[:, None])
            return (d * grad[:, None]).to(logits.dtype), None
        out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        rows = _chunk_rows(logits.shape[1], lse.dtype, logits.device)
        for start in range(0, logits.shape[0], rows):
            rs = slice(start, start + rows)
            _write_grad(out[rs], logits[rs], lse[rs], safe[rs], grad[rs])
        return out, None


def next_token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sequence summed next-token cross-entropy ``[B]``: ``logits [B, L, V]`` (any float dtype,
    any strides), ``targets [B, L]`` int64. The values and gradient of
    ``F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")`` summed
    per sequence, computed in float32 (float64 for float64 logits, which the result then is) a
    chunk of rows at a time: the graph keeps the logits and one float per position, and the
    backward's only full-size tensor is ``d(logits)``, in the logits' dtype (under ``create_graph``,
    for a second derivative, the backward makes the whole float32 softmax instead).

    As in ``F.cross_entropy``: a NaN or ``+inf`` logit, or a row of ``-inf`` only, makes its
    position's loss and gradient row NaN (a non-finite loss, which gradient scalers detect); a
    ``-inf`` logit elsewhere is a banned token (probability 0, gradient 0), and at the target gives
    ``+inf`` with a finite gradient; a target of -100 adds 0 and gets a zero gradient row (NaN where
    its logits hold a NaN or ``+inf``). A target outside ``[0, V)`` raises (on CUDA, a device-side
    assert). Logits whose batch and position dimensions cannot be merged into a view are copied
    once, in their dtype."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"next_token_nll takes logits [B, L, V] and targets [B, L]; got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    nll = _RowNLL.apply(logits.flatten(0, 1), targets.flatten())
    return nll.view(targets.shape).sum(-1)
