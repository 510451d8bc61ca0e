"""Model configuration: one dataclass for every architecture, round-tripped through config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ARCHS = ("dit", "ar", "llada")


@dataclass
class ModelConfig:
    arch: str = "dit"               # dit: SEDD/MDLM diffusion transformer; ar: the same backbone, causal; llada
    vocab_size: int = 258
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int | None = None     # llada only (grouped-query attention); None means heads
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None   # llada only: the SwiGLU width; None derives it from mlp_ratio
    qkv_bias: bool = False          # llada only: biases on q/k/v (Qwen2.5, hence Dream)
    cond_dim: int = 64              # dit/ar: width of the sigma embedding that drives adaLN
    max_seq_len: int = 1024
    time_conditioning: bool = False  # dit: condition on sigma (SEDD) or not (MDLM's default)
    dropout: float = 0.0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {ARCHS}")
        for name in ("vocab_size", "hidden", "layers", "heads", "kv_heads", "mlp_hidden", "cond_dim", "max_seq_len"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if (self.hidden // self.heads) % 2:
            raise ValueError(f"the head dimension hidden / heads = {self.hidden // self.heads} must be even: rotary "
                             "embeddings rotate pairs of channels")
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


# SEDD's small and medium (its released configs); tiny trains in minutes on two CPU cores.
SIZES = {
    "tiny": dict(hidden=128, layers=4, heads=4, cond_dim=64),
    "small": dict(hidden=768, layers=12, heads=12, cond_dim=128),
    "medium": dict(hidden=1024, layers=24, heads=16, cond_dim=128),
}


def model_config(size: str = "tiny", **overrides) -> ModelConfig:
    """A named size (``tiny``, ``small``, ``medium``) with field overrides, e.g. ``arch="ar"``."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(SIZES)}")
    return ModelConfig(**{**SIZES[size], **overrides})
