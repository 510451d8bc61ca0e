"""A published checkpoint as dllm's samplers see it (dllm.sampling.model_protocol)."""

from __future__ import annotations

import torch
from torch import nn


class PublishedModel(nn.Module):
    """dllm's network for a published checkpoint, with the attributes ``dllm.generate`` reads.

    Attributes: ``net`` (DiffusionTransformer or LLaDAModel), ``layout`` ("sedd", "mdlm",
    "llada", "dream"), ``tokenizer`` (a ``tokenizers.Tokenizer`` from the folder's
    tokenizer.json, or None), ``config`` (the folder's config.json), ``mask_id`` (absent for
    SEDD's uniform graph), ``pad_id``, ``logits_shift``, ``time_conditioned`` and, for SEDD,
    ``graph`` and ``noise``.
    """

    def __init__(self, net: nn.Module, *, layout: str, config: dict | None = None, tokenizer=None, pad_id: int = 0,
                 logits_shift: int = 0, time_conditioned: bool = False, **protocol):
        super().__init__()
        self.net, self.layout, self.config, self.tokenizer = net, layout, config, tokenizer
        self.pad_id, self.logits_shift, self.time_conditioned = pad_id, logits_shift, time_conditioned
        for name, value in protocol.items():  # mask_id, eos_id, graph, noise
            setattr(self, name, value)
        if getattr(net, "new_kv_cache", None) is not None:  # the KV-cache interface of Fast-dLLM's caches
            self.new_kv_cache = net.new_kv_cache

    @property
    def vocab_size(self) -> int:  # bounds the prompt's and the infill's ids (model_protocol)
        return self.net.config.vocab_size

    @property
    def max_seq_len(self) -> int:  # the longest canvas (model_protocol)
        return self.net.config.max_seq_len

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """kwargs: ``attention_mask``, and ``cache`` / ``start`` of the KV-cache interface."""
        return self.net(x, sigma, **kwargs)

    def extra_repr(self) -> str:
        mask = getattr(self, "mask_id", None)
        return f"layout={self.layout!r}, mask_id={mask}, logits_shift={self.logits_shift}"
