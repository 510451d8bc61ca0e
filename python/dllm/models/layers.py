"""Building blocks shared by the models: norms, rotary embeddings, the sigma embedder, KV caches."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops


def records_autograd(*tensors: torch.Tensor) -> bool:
    """Whether autograd records ops on these tensors here: the fused inference kernels (adaLN, the
    GELU epilogue) are not differentiable, so the models take them only when it does not."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class ModulatedLayerNorm(nn.Module):
    """adaLN (SEDD's DiT norm): ``layer_norm(x) * weight * (1 + scale) + shift`` with per-sequence
    ``shift, scale [B, dim]``, computed in float32 or better whatever the autocast dtype; the output
    has x's dtype. Without an autograd graph to record, float32 / bfloat16 / float16 take
    :func:`dllm.ops.adaln` (one pass; :meth:`residual`: :func:`dllm.ops.adaln_residual`); otherwise
    torch runs the same math in two passes (the norm, then one multiply-add with the norm's weight
    folded into the scale)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def _fused(self, *inputs: torch.Tensor) -> bool:
        return inputs[0].dtype in ops.KERNEL_DTYPES and not records_autograd(*inputs, self.weight)

    def forward(self, x, shift, scale):
        if self._fused(x, shift, scale):
            return ops.adaln(x, self.weight, shift, scale, eps=self.eps)
        acc = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            # in acc throughout, rounded once at the end as dllm.ops.adaln: layer_norm of a bfloat16
            # x would round its output to bfloat16 before the multiply-add rounds again
            y = F.layer_norm(x.to(acc), (x.shape[-1],), None, None, self.eps)
            w = self.weight.to(acc) * (1 + scale.to(acc))
            return torch.addcmul(shift[:, None].to(acc), y, w[:, None]).to(x.dtype)

    def residual(self, x, gate, update, shift, scale):
        """The gated residual ``x + gate * update`` (gate ``[B, dim]``), then this norm of it:
        ``(x_next, normed)``."""
        if self._fused(x, gate, update, shift, scale):
            return ops.adaln_residual(x, update.to(x.dtype), gate, self.weight, shift, scale, eps=self.eps)
        # rounded once to x's dtype, as the fused op: a float32 gate would make a bfloat16 stream float32
        x = torch.addcmul(x, gate[:, None], update).to(x.dtype)
        return x, self(x, shift, scale)


class VocabProjection(nn.Linear):
    """The output head ``[..., dim] -> [..., vocab]``: an ``nn.Linear`` (same parameters, same
    checkpoints) whose CUDA inference output over many positions, when ``vocab`` is not a multiple
    of :attr:`ROW_MULTIPLE`, is computed into rows padded to one and returned as a view of their
    first ``vocab`` columns (row stride > vocab; :meth:`padded`). cuBLAS's tensor-core GEMM kernels
    want 16-byte aligned rows; a bfloat16 row of GPT-2's vocabulary plus a mask (50258) starts on a
    4-byte boundary only, so the largest GEMM of a SEDD or MDLM step, and the samplers' reads of its
    output, run off alignment (nanoGPT pads its vocabulary to 50304 for the same reason). dllm's ops
    read rows at any stride, in place. Kept plain: training (the padding would cost the backward a
    copy of the gradient), the CPU, and fewer than :attr:`PADDED_MIN_ROWS` positions (a decoding
    step, a ``logits_at`` of few positions), whose GEMM costs little more than reading the weight,
    which the padded copy would read and write once more."""

    ROW_MULTIPLE = 64  # elements: 128-byte rows in bfloat16, a cache line
    PADDED_ON = ("cuda",)  # device types
    # From 4096 rows the GEMM (2 * rows FLOPs per weight entry) outlasts the weight's copy (4 bytes
    # moved per bfloat16 entry) about tenfold on an H100's roofline (~600 TFLOP/s, 3.35 TB/s)
    PADDED_MIN_ROWS = 4096

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if (self.out_features % self.ROW_MULTIPLE == 0 or h.device.type not in self.PADDED_ON
                or h.numel() < self.PADDED_MIN_ROWS * self.in_features or records_autograd(h, *self.parameters())):
            return super().forward(h)
        return self.padded(h)

    def padded(self, h: torch.Tensor) -> torch.Tensor:
        """The projection into rows of a multiple of :attr:`ROW_MULTIPLE` entries, as a view of their
        first ``vocab``: one GEMM with :meth:`padded_parameters` (torch's GEMM writes a contiguous
        output)."""
        return F.linear(h, *self.padded_parameters())[..., :self.out_features]

    def padded_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Copies of the weight and bias with zero rows appended up to a multiple of :attr:`ROW_MULTIPLE`."""
        pad = -self.out_features % self.ROW_MULTIPLE
        return F.pad(self.weight, (0, 0, 0, pad)), None if self.bias is None else F.pad(self.bias, (0, pad))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        if x.dtype == self.weight.dtype:
            # torch's kernel computes in float32 (float64 for float64) and rounds once, as below, in one
            # pass (CUDA) instead of five
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # mixed dtypes (float32 weights under autocast): torch's fused kernel does not take them (it
        # warns and falls back to an unfused path)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class Rotary(nn.Module):
    """Rotate-half rotary embedding; cos/sin are recomputed from positions, never stored in weights."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self.register_buffer("inv_freq", self.frequencies(), persistent=False)

    def frequencies(self, device=None) -> torch.Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim))

    def _apply(self, fn, recurse=True):
        # Position times frequency needs float32: bfloat16 frequencies put position 1000 radians
        # off. A model cast with .to(dtype) keeps them float32 (recomputed on the buffer's device).
        super()._apply(fn, recurse)
        self.inv_freq = self.frequencies(self.inv_freq.device)
        return self

    def forward(self, start: int | torch.Tensor, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``[length, D / 2]`` float32 of positions ``start .. start + length - 1`` (start an
        int, or a one-element integer tensor on ``device``: a CUDA-graphed decode step's position)."""
        return self.at(torch.arange(length, device=device) + start)

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``[*positions.shape, D / 2]`` float32 of integer positions (per row: :class:`RaggedBatch`)."""
        angles = positions.to(torch.float32)[..., None] * self.inv_freq.to(positions.device)
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of ``x [B, S, H, D]`` by :class:`Rotary`'s ``cos, sin`` (``[S, D / 2]`` or
    ``[B, S, D / 2]``): contiguous, in x's dtype. float32, bfloat16 and float16 take
    :func:`dllm.ops.rotary` (one pass, float32 math); float64 the same math in torch."""
    if x.dtype in ops.KERNEL_DTYPES:
        return ops.rotary(x, cos, sin)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[..., None, :], sin[..., None, :]  # broadcast over heads
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of sigma (cos and sin of 128 frequencies: 256 features) through a two-layer
    MLP (SEDD's ``sigma_map``)."""

    def __init__(self, cond_dim: int, freq_dim: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
        args = sigma.float()[:, None] * freqs[None]
        # Features in float32 for accuracy, then in the MLP's dtype so bf16 / fp64 models run too.
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class _PerStep:
    """What every layer of a step works out alike from the step's position (a decoding step's lengths,
    a cached block's indices): made by the step's first layer and kept for the others, since on CUDA
    each was a launch or two ahead of the layer's attention. A position tensor updated in place since
    (a CUDA graph's static input) starts a new step."""

    def __init__(self):
        self._kept = None  # (position, what identifies the step, the value)

    def get(self, layer: int, position, shape: tuple, make):
        step = (position._version if isinstance(position, torch.Tensor) else position, shape)
        kept = self._kept
        if layer == 0 or kept is None or kept[0] is not position or kept[1] != step:
            kept = self._kept = (position, step, make())
        return kept[2]


class KVCache:
    """Per-layer key/value buffers ``[B, max_len, Hkv, D]`` for autoregressive decoding."""

    def __init__(self, layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int, device, dtype):
        shape = (batch, max_len, kv_heads, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.max_len = max_len
        self._filled = _PerStep()

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Writes the keys and values of positions ``[start, start + S)``; returns those of ``[0, start + S)``."""
        end = start + k.shape[1]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        self.k[layer][:, start:end] = k
        self.v[layer][:, start:end] = v
        return self.k[layer][:, :end], self.v[layer][:, :end]

    def decode(self, layer: int, position: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """One token's step: writes its keys and values ``[B, 1, Hkv, D]`` at ``position`` and returns
        the whole buffers with the filled length of each row, int ``[B]`` (attention's ``kv_len``), made
        once a step: every layer of a step writes at the same position, and on CUDA each length tensor
        made a layer was a launch or two ahead of its attention's.
        Whole buffers, not the filled prefix: a prefix of a batched buffer is a strided view that the
        CUDA kernels would copy, and its shape would change every token, which a CUDA graph cannot
        replay. ``position`` may be a one-element tensor on the cache's device (a graphed step's); it
        is not checked against the buffer, since reading it would synchronise. On the CPU, with an
        int position (eager decoding), the filled prefix comes back instead, with ``None`` for the
        lengths: at that model's small sizes SDPA's call costs about half of dllm's, and a 64-token
        loop of the e2e benchmark's tiny model ran 1.10x faster at batch 1 and 4
        (bench/results/cpu-2core-2026-12-01/ar_decode_path, attention_decode_tiny)."""
        if isinstance(position, torch.Tensor):
            index = position.reshape(1)
            self.k[layer].index_copy_(1, index, k.to(self.k[layer].dtype))
            self.v[layer].index_copy_(1, index, v.to(self.v[layer].dtype))
            # int64 [B] in one launch: attention reads int32 and int64 lengths as given
            make = lambda: index.expand(k.shape[0]) + 1  # noqa: E731
        else:
            if not 0 <= position < self.max_len:
                raise ValueError(f"KV cache holds {self.max_len} positions; asked to write position {position}")
            self.k[layer][:, position] = k[:, 0]
            self.v[layer][:, position] = v[:, 0]
            if k.device.type == "cpu":
                return self.k[layer][:, :position + 1], self.v[layer][:, :position + 1], None
            make = lambda: torch.full((k.shape[0],), position + 1, dtype=torch.int32, device=k.device)  # noqa: E731
        return self.k[layer], self.v[layer], self._filled.get(layer, position, k.shape[:2], make)


class DenoisingKVCache:
    """Keys and values of every canvas position, per layer, for bidirectional denoising (Fast-dLLM's
    prefix and dual caches). A forward over the whole canvas (the refresh) replaces every entry; a
    forward over tokens at ``[start, start + S)`` overwrites only theirs, and its queries attend over
    all ``length`` positions: the fresh ones and the cached rest, which may be stale."""

    def __init__(self, batch: int, length: int):
        self.batch, self.length = batch, length
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self._index = _PerStep()

    def update(self, layer: int, start: int | torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes the keys and values of ``[start, start + S)`` and returns every position's. The
        buffers, once made by the first refresh, are written in place, so a CUDA graph that reads
        them reads every later refresh. ``start`` may be a one-element tensor (a graphed step's),
        which is not checked against the length, since reading it would synchronise."""
        if isinstance(start, torch.Tensor):
            if layer not in self.k:
                raise ValueError("the KV cache is empty: its first forward must cover the whole canvas (the refresh)")
            index = self._index.get(layer, start, k.shape[1:2],
                                    lambda: start.reshape(1) + torch.arange(k.shape[1], device=k.device))
            self.k[layer].index_copy_(1, index, k.to(self.k[layer].dtype))
            self.v[layer].index_copy_(1, index, v.to(self.v[layer].dtype))
            return self.k[layer], self.v[layer]
        end = start + k.shape[1]
        if k.shape[0] != self.batch or start < 0 or end > self.length:
            raise ValueError(f"the KV cache holds {self.batch} canvases of {self.length} positions; asked to write "
                             f"{k.shape[0]} at [{start}, {end})")
        if start == 0 and end == self.length and (layer not in self.k or self.k[layer].dtype != k.dtype):
            self.k[layer], self.v[layer] = k.contiguous(), v.contiguous()
        elif layer not in self.k:
            raise ValueError("the KV cache is empty: its first forward must cover the whole canvas (the refresh)")
        else:
            self.k[layer][:, start:end] = k
            self.v[layer][:, start:end] = v
        return self.k[layer], self.v[layer]


def check_start(start: int | torch.Tensor, span: int, cache, max_seq_len: int) -> None:
    """A forward's first position: an int within ``max_seq_len``, or a one-element tensor (a step
    that a CUDA graph replays at changing positions) with a KV cache: one token with a
    :class:`KVCache`, any span with a :class:`DenoisingKVCache`."""
    if isinstance(start, torch.Tensor):
        if start.numel() != 1 or not (isinstance(cache, DenoisingKVCache) or (span == 1 and isinstance(cache, KVCache))):
            raise ValueError("a tensor start takes one position, and a KV cache: one token (x [B, 1]) with a "
                             "KVCache, or any span with a denoising KV cache (new_kv_cache)")
    elif start + span > max_seq_len:
        raise ValueError(f"sequence of {start + span} tokens exceeds max_seq_len={max_seq_len}")


def cached_causal_mask(start: int, q_len: int, device) -> torch.Tensor | None:
    """Boolean mask for queries at ``start..start+q_len`` over keys ``0..start+q_len`` (None if not needed)."""
    if q_len == 1:
        return None
    qpos = torch.arange(start, start + q_len, device=device)[:, None]
    kpos = torch.arange(start + q_len, device=device)[None, :]
    return kpos <= qpos
