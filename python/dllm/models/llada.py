"""A LLaDA/Dream-style bidirectional LM: LLaMA blocks (RMSNorm, SwiGLU, RoPE, GQA) without the causal mask."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention, padding_layout
from .config import ModelConfig
from .io import PretrainedMixin
from .layers import DenoisingKVCache, RMSNorm, Rotary, VocabProjection, apply_rotary, check_start


class LLaDABlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.heads, self.head_dim = cfg.hidden, cfg.heads, cfg.head_dim
        self.kv_heads = cfg.kv_heads or cfg.heads
        self.attn_norm = RMSNorm(d, cfg.norm_eps)
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.mlp_norm = RMSNorm(d, cfg.norm_eps)
        # SwiGLU at 2/3 of the dense width keeps the parameter count of a 4x GELU MLP.
        hid = cfg.mlp_hidden or 8 * ((int(2 * cfg.mlp_ratio * d / 3) + 7) // 8)
        self.gate_proj = nn.Linear(d, hid, bias=False)
        self.up_proj = nn.Linear(d, hid, bias=False)
        self.down_proj = nn.Linear(hid, d, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)  # on each branch before its residual add, as the DiT's

    def forward(self, x, cos, sin, *, cache: DenoisingKVCache | None = None, layer=0, start=0,
                key_mask: torch.Tensor | None = None, kv_len: torch.Tensor | None = None):
        B, S, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, S, self.heads, self.head_dim)
        k = self.k_proj(h).view(B, S, self.kv_heads, self.head_dim)
        v = self.v_proj(h).view(B, S, self.kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, start, k, v)
        a = attention(q, k, v, attn_mask=key_mask, kv_len=kv_len).reshape(B, S, self.heads * self.head_dim)
        x = x + self.dropout(self.o_proj(a))
        h = self.mlp_norm(x)
        return x + self.dropout(self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h)))


class LLaDAModel(PretrainedMixin, nn.Module):
    """``forward(x [B, L], sigma=None) -> logits [B, L, vocab]`` in the compute dtype (as the DiT's);
    sigma is accepted and ignored (LLaDA has no time input), so the objectives can call every model
    the same way."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base)
        self.blocks = nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.lm_head = VocabProjection(cfg.hidden, cfg.vocab_size, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2 and name != "embed.weight":
                nn.init.normal_(p, std=0.02)
        # Residual projections scaled down by depth (GPT-2's rule) keep early activations bounded.
        for blk in self.blocks:
            for p in (blk.o_proj.weight, blk.down_proj.weight):
                nn.init.normal_(p, std=0.02 / (2 * cfg.layers) ** 0.5)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | None = None, *, cache: DenoisingKVCache | None = None,
                start: int | torch.Tensor = 0, attention_mask: torch.Tensor | None = None,
                logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` holds the tokens at positions ``[start, start + S)``; ``cache`` (from :meth:`new_kv_cache`)
        supplies the keys of the rest of the canvas. ``attention_mask``: bool ``[B, keys]``, False on
        padded keys (keys are x's positions, or the whole canvas with a cache); without a cache it
        reaches attention as per-row lengths (:class:`RaggedBatch`). ``start`` may be a one-element
        integer tensor with a cache (a CUDA-graphed step's; see :func:`check_start`). ``logits_at``: as
        :meth:`DiffusionTransformer.forward`'s, the logits ``[N, vocab]`` of those flattened positions only."""
        check_start(start, x.shape[1], cache, self.config.max_seq_len)
        h = self.embed(x)
        ragged, cos, sin, key_mask, kv_len = padding_layout(attention_mask, x, self.rotary, start,
                                                            lengths=cache is None)
        h = h if ragged is None else ragged.arrange(h)
        for i, blk in enumerate(self.blocks):
            h = blk(h, cos, sin, cache=cache, layer=i, start=start, key_mask=key_mask, kv_len=kv_len)
        h = h if ragged is None else ragged.restore(h)
        if logits_at is not None:
            h = h.reshape(-1, h.shape[-1]).index_select(0, logits_at)
        return self.lm_head(self.norm(h))

    def new_kv_cache(self, batch: int, length: int) -> DenoisingKVCache:
        """An empty KV cache for ``batch`` canvases of ``length`` tokens (Fast-dLLM's prefix and dual caches)."""
        return DenoisingKVCache(batch, length)
