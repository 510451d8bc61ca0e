"""The SEDD/MDLM diffusion transformer (DiT with adaLN), and the autoregressive baseline on it.

Both run the same blocks; the AR model only switches attention to causal and adds a KV cache, so
diffusion and autoregression are compared on one backbone.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..devices import made_current
from .attention import attention, padding_layout
from .config import ModelConfig
from .io import PretrainedMixin
from .layers import (DenoisingKVCache, KVCache, ModulatedLayerNorm, Rotary, TimestepEmbedder, VocabProjection,
                     apply_rotary, cached_causal_mask, check_start, records_autograd)


class DiTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.hidden
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.norm1 = ModulatedLayerNorm(d, cfg.norm_eps)
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = ModulatedLayerNorm(d, cfg.norm_eps)
        hid = int(cfg.mlp_ratio * d)
        self.mlp = nn.Sequential(nn.Linear(d, hid), nn.GELU(approximate="tanh"), nn.Linear(hid, d))
        self.dropout = nn.Dropout(cfg.dropout)
        # Zero-initialised so every block starts as the identity (gates are zero).
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 6 * d)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x, c, cos, sin, *, causal=False, cache: KVCache | DenoisingKVCache | None = None, layer=0,
                start=0, key_mask: torch.Tensor | None = None, kv_len: torch.Tensor | None = None):
        B, S, _ = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        h = self.norm1(x, shift1, scale1)
        q, k, v = self.attn_qkv(h).view(B, S, 3, self.heads, self.head_dim).unbind(2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        mask = key_mask
        if isinstance(cache, KVCache) and S == 1 and mask is None:
            k, v, kv_len = cache.decode(layer, start, k, v)  # whole buffers: no strided views, static shapes
        elif cache is not None:
            k, v = cache.update(layer, start, k, v)
        if causal and (cache is not None or mask is not None):
            # SDPA takes a causal flag or a mask, not both: causality goes into the mask (a single query needs none)
            causal_mask = (cached_causal_mask(start, S, x.device) if cache is not None
                           else torch.ones(S, S, dtype=torch.bool, device=x.device).tril())
            if causal_mask is not None:
                mask = causal_mask if mask is None else mask & causal_mask
            causal = False
        a = attention(q, k, v, causal=causal, attn_mask=mask, kv_len=kv_len).reshape(B, S, self.heads * self.head_dim)
        x, h = self.norm2.residual(x, gate1, self.dropout(self.attn_out(a)), shift2, scale2)
        return torch.addcmul(x, gate2[:, None], self.dropout(self._mlp(h)))

    def _mlp(self, h):
        up, _, down = self.mlp
        if h.is_cuda and not records_autograd(h, up.weight, up.bias) and up.weight.dtype == h.dtype and hasattr(torch, "_addmm_activation"):
            # The tanh GELU in cuBLASLt's epilogue, on the float32 accumulator: the hidden
            # activations [B, S, 4 dim] are written once instead of written, read and written again.
            # (On the CPU this torch op takes the exact GELU, so it is left to CUDA.)
            hidden = torch._addmm_activation(up.bias, h.reshape(-1, h.shape[-1]), up.weight.t(), use_gelu=True)
            return down(hidden.view(*h.shape[:-1], -1))
        return self.mlp(h)


class FinalLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_final = ModulatedLayerNorm(cfg.hidden, cfg.norm_eps)
        self.linear = VocabProjection(cfg.hidden, cfg.vocab_size)
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 2 * cfg.hidden)
        for m in (self.linear, self.adaLN_modulation):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x, c, logits_at: torch.Tensor | None = None):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        if logits_at is not None:  # the selected positions as one-token rows, each with its sequence's modulation
            rows = logits_at // x.shape[1]
            x = x.reshape(-1, x.shape[-1]).index_select(0, logits_at)[:, None]
            return self.linear(self.norm_final(x, shift.index_select(0, rows), scale.index_select(0, rows)))[:, 0]
        return self.linear(self.norm_final(x, shift, scale))


def _draw(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    """The next token ``[B, 1]``: the op reads float32, bfloat16 or float16, so a float64 model's
    logits are drawn from their float32 rounding."""
    logits = logits.float() if logits.dtype == torch.float64 else logits
    return ops.sample_categorical(logits, temperature, generator=generator)[0][:, None]


class DiffusionTransformer(PretrainedMixin, nn.Module):
    """SEDD/MDLM DiT: ``forward(x [B, L] int64, sigma [B], one number or None) -> logits [B, L, vocab]``.

    The output is raw: the objective turns it into log-scores (SEDD) or SUBS probabilities (MDLM).
    It has the compute dtype (bfloat16 under bfloat16 autocast): dllm's samplers and losses read
    it as it is, in float32 math, and a float32 copy would be another pass over the largest tensor
    of a step (3.3 GB for SEDD-small at B 16, L 1024). On CUDA at inference it may be a view of rows
    padded past the vocabulary (:class:`~dllm.models.layers.VocabProjection`).
    With ``time_conditioning=False`` sigma is replaced by zeros, as MDLM does, so the network is
    time-agnostic; with it, sigma is required.
    """

    causal = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.vocab_embed = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden))
        nn.init.kaiming_uniform_(self.vocab_embed, a=math.sqrt(5))
        self.sigma_map = TimestepEmbedder(cfg.cond_dim)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.layers))
        self.output_layer = FinalLayer(cfg)

    @property
    def time_conditioned(self) -> bool:
        """The sampler protocol's flag (dllm.sampling.model_protocol): without it dllm.generate would
        call a DiT trained with time conditioning without sigma, which the DiT reads as sigma = 0."""
        return self.config.time_conditioning

    def _cond(self, sigma, batch, device):
        if sigma is None and self.config.time_conditioning:
            # sigma = 0 (the clean data) would be a silent guess: SEDD's logits depend on the noise level
            raise ValueError("this model is time-conditioned (config.time_conditioning): pass the noise level, "
                             "model(x, sigma) with sigma [B] or one number")
        if not self.config.time_conditioning:
            sigma = torch.zeros(batch, device=device)
        sigma = torch.as_tensor(sigma, device=device)
        if sigma.dim() == 0 or sigma.shape == (batch, 1):  # one noise level for all, or MDLM's [B, 1]
            sigma = sigma.reshape(-1).expand(batch)
        if sigma.shape != (batch,):
            raise ValueError(f"sigma must be [B] = [{batch}] (or one number for the batch), got shape "
                             f"{tuple(sigma.shape)}")
        return F.silu(self.sigma_map(sigma))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | None = None, *,
                cache: KVCache | DenoisingKVCache | None = None, start: int | torch.Tensor = 0,
                attention_mask: torch.Tensor | None = None, logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` holds the tokens at positions ``[start, start + S)``. ``cache``: the autoregressive
        model's :class:`KVCache`, or a :meth:`new_kv_cache` (keys of the whole canvas, see
        :mod:`dllm.sampling.model_protocol`). ``attention_mask``: bool ``[B, keys]``, False on padded
        keys (the keys: x's positions, or every position the cache holds); without a cache the
        bidirectional model hands attention per-row lengths instead (:class:`RaggedBatch`).
        ``start`` may be a one-element integer tensor on x's device with a KV cache (a step that a
        CUDA graph replays at changing positions; see :func:`check_start`). ``logits_at``: int64 ``[N]``
        indices into the flattened ``[B * S]`` positions; the output is then the logits of those
        positions only, ``[N, vocab]`` (:func:`dllm.objectives.base.loss_at_masked`)."""
        B, S = x.shape
        check_start(start, S, cache, self.config.max_seq_len)
        h = F.embedding(x, self.vocab_embed)
        c = self._cond(sigma, B, x.device)
        ragged, cos, sin, key_mask, kv_len = padding_layout(attention_mask, x, self.rotary, start,
                                                            lengths=cache is None and not self.causal)
        h = h if ragged is None else ragged.arrange(h)
        for i, blk in enumerate(self.blocks):
            h = blk(h, c, cos, sin, causal=self.causal, cache=cache, layer=i, start=start, key_mask=key_mask,
                    kv_len=kv_len)
        return self.output_layer(h if ragged is None else ragged.restore(h), c, logits_at)

    def new_kv_cache(self, batch: int, length: int) -> DenoisingKVCache:
        """An empty KV cache for ``batch`` canvases of ``length`` tokens (Fast-dLLM's prefix and dual caches)."""
        return DenoisingKVCache(batch, length)


class ARTransformer(DiffusionTransformer):
    """The same backbone with causal attention: ``forward(x)`` gives next-token logits at every position."""

    causal = True
    # Causal decoding has its own cache (new_cache); the denoising cache of the samplers does not apply.
    new_kv_cache = None

    def new_cache(self, batch: int, max_len: int | None = None, dtype=None) -> KVCache:
        """Empty key/value buffers for ``batch`` rows of ``max_len`` positions, in ``dtype`` (default: the
        autocast dtype where autocast is on, which the projections give the keys in; else the weights')."""
        cfg = self.config
        p = self.vocab_embed
        if dtype is None:
            dtype = torch.get_autocast_dtype(p.device.type) if torch.is_autocast_enabled(p.device.type) else p.dtype
        return KVCache(cfg.layers, batch, max_len or cfg.max_seq_len, cfg.heads, cfg.head_dim, p.device, dtype)

    def decode_step(self, token: torch.Tensor, cache: KVCache, position: int | torch.Tensor, *, temperature: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """One decoding step: the logits ``[B, V]`` of ``token [B, 1]`` at ``position`` (an int, or a
        one-element tensor on its device, which a CUDA graph can replay), with ``token`` overwritten
        by the next token drawn by :func:`dllm.ops.sample_categorical`."""
        logits = self(token, cache=cache, start=position)[:, -1]
        token.copy_(_draw(logits, temperature, generator))
        return logits

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 generator: torch.Generator | None = None, cuda_graph: bool = False) -> torch.Tensor:
        """Sample ``max_new_tokens`` after ``prompt [B, P]`` (or one prompt ``[P]``: a tensor, a list of
        ids or a NumPy array, as a tokenizer's ``encode`` gives it) with a KV cache (one token per forward), each
        token drawn by :func:`dllm.ops.sample_categorical` from ``softmax(logits / temperature)`` (argmax
        at temperature 0) with ``generator``. ``cuda_graph``: the one-token step (forward and draw) is
        captured in a CUDA graph once and replayed at every position, as gpt-fast's decoding does, so
        a small model's step costs its kernels and not their launches; the tokens are those of the
        eager loop. The graph stays with the model for the next call with the same batch, length,
        temperature and generator object, as :func:`dllm.generate`'s do. The prompt and the generator are on the
        model's device (a list or array is put there). Returns ``[B, P + max_new_tokens]``."""
        # (dllm.sampling imports the models)
        from ..sampling.canvas import token_tensor
        from ..sampling.model_protocol import warn_if_dropout_on
        from ..sampling.options import check_generator_device, check_number

        check_number("temperature", temperature)
        if temperature < 0:
            raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
        device = self.vocab_embed.device
        check_generator_device(generator, device)
        if not isinstance(prompt, torch.Tensor):  # one prompt as a tokenizer's encode gives it, or rows
            prompt = token_tensor(prompt, "prompt", device)
        if prompt.dim() == 1:
            prompt = prompt[None]
        if prompt.dim() != 2 or prompt.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"prompt must be an int64 (or int32) tensor [B, P] of token ids, got {prompt.dtype} "
                             f"{tuple(prompt.shape)}")
        if prompt.device != device:  # torch would refuse it inside the embedding, after the id check's sync
            raise ValueError(f"the prompt is on {prompt.device} but the model is on {device}: "
                             f"pass prompt.to({str(device)!r})")
        if prompt.numel():
            lo, hi = torch.stack(torch.aminmax(prompt)).tolist()  # one host sync
            if not 0 <= lo <= hi < self.config.vocab_size:
                raise ValueError(f"prompt ids must lie in [0, {self.config.vocab_size}), got {lo}..{hi}")
        prompt = prompt.long()
        warn_if_dropout_on(self)
        from ..sampling import cuda_graph as graphs  # (dllm.sampling imports the models)
        if cuda_graph:
            graphs.check_graphable(prompt.device)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        B, P = prompt.shape
        if max_new_tokens == 0:
            return prompt.clone()
        if P == 0:
            raise ValueError("the prompt is empty: the first token is drawn from the logits of the prompt's last "
                             "position, so give at least a start token (end-of-text)")
        # the last new token is drawn, never fed back: the model sees P + max_new_tokens - 1 positions
        length = P + max_new_tokens - 1
        if length > self.config.max_seq_len:
            raise ValueError(f"a prompt of {P} tokens and {max_new_tokens} new ones feed the model {length} positions "
                             f"(the last new token is never fed back), more than max_seq_len={self.config.max_seq_len}")
        key = ("ar-decode", B, P + max_new_tokens, temperature)
        # a graph captures on the current device's stream
        with made_current(prompt.device), graphs.session_for(self, key, generator, enabled=cuda_graph) as session:
            # A kept session's cache: every position a step reads is written earlier in this call.
            cache = self.new_cache(B, length) if session is None else \
                session.keep("kv", lambda: self.new_cache(B, length))
            logits = self(prompt, cache=cache, start=0)[:, -1]
            # dllm's exact Gumbel-max draw (argmax at temperature 0): the baseline gets dllm's kernels too
            token = _draw(logits, temperature, generator)
            out = [prompt, token]

            def step(token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
                return self.decode_step(token, cache, position, temperature=temperature, generator=generator)

            if session is not None:
                positions = torch.arange(P, P + max_new_tokens, device=prompt.device)  # what the graph's replays read
                step = session.step("decode", step, token, positions[0])
            for i in range(max_new_tokens - 1):
                token = token.clone()
                # eager: an int position, with which a CPU step attends over the cache's filled prefix (KVCache.decode)
                step(token, positions[i] if session is not None else P + i)
                out.append(token)
            return torch.cat(out, dim=1)
