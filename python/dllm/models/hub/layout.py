"""What a published checkpoint family must tell the loader: how to recognise its config.json,
the dllm model it becomes, its weight names, and the sampler-protocol attributes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ..config import ModelConfig

# Rotary inverse frequencies some families save as buffers; dllm recomputes them, so the loader
# checks them against the config instead of loading them.
ROTARY_BUFFER = r"(.*\.)?rotary_emb\.inv_freq"


@dataclass(frozen=True)
class Layout:
    name: str
    detect: Callable[[dict], bool]
    model_config: Callable[[dict], ModelConfig]
    # (regex over a dllm state-dict name, its published name as a ``re`` template)
    names: tuple[tuple[str, str], ...]
    # config.json (and the tokenizers.Tokenizer or None) -> sampler-protocol attributes
    protocol: Callable[[dict, object], dict]
    # SEDD and MDLM keep float32 weights and compute in bf16 under autocast; load them in float32
    # unless a dtype is asked for
    float32_default: bool = False

    def published_name(self, dllm_name: str) -> str:
        for pattern, template in self.names:
            m = re.fullmatch(pattern, dllm_name)
            if m:
                return m.expand(template)
        raise KeyError(f"layout {self.name!r} has no published name for dllm weight {dllm_name!r}")


def require(config: dict, layout: str, **expected) -> None:
    """Raise on config options dllm's classes do not implement (a key absent from the config, or
    null, takes the family's default, which dllm implements)."""
    bad = {k: config[k] for k, v in expected.items() if config.get(k) is not None and config[k] != v}
    if bad:
        want = {k: expected[k] for k in bad}
        raise ValueError(f"{layout} checkpoint options {bad} are not supported by dllm (supported: {want})")


def special_id(config: dict, key: str, tokenizer, token: str | None) -> int | None:
    """A special token id from config.json, cross-checked with the tokenizer; the tokenizer's entry
    for ``token`` when the config has none."""
    from_config = config.get(key)
    if isinstance(from_config, list):  # transformers configs may list several end-of-text ids
        if key != "eos_token_id" or not from_config:
            raise ValueError(f"{key}={from_config!r}: expected one token id")
        from_config = from_config[0]
    if from_config is not None and (isinstance(from_config, bool) or not isinstance(from_config, int)):
        raise ValueError(f"{key}={from_config!r}: expected a token id (an int)")
    from_tokenizer = tokenizer.token_to_id(token) if tokenizer is not None and token else None
    if from_config is not None and from_tokenizer is not None and int(from_config) != from_tokenizer:
        raise ValueError(f"{key}={from_config} but tokenizer.json maps {token!r} to {from_tokenizer}")
    value = from_config if from_config is not None else from_tokenizer
    return None if value is None else int(value)
