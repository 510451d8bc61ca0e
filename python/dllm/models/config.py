"""Model configuration: one dataclass for every architecture, round-tripped through config.json."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

ARCHS = ("dit", "ar", "llada")
_INTS = ("vocab_size", "hidden", "layers", "heads", "kv_heads", "mlp_hidden", "cond_dim", "max_seq_len")
_OPTIONAL = ("kv_heads", "mlp_hidden")  # None derives them


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
        self._check_types()
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {ARCHS}")
        for name in _INTS:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        for name in ("mlp_ratio", "rope_base", "norm_eps"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be positive and finite, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if (self.hidden // self.heads) % 2:
            raise ValueError(f"the head dimension hidden / heads = {self.hidden // self.heads} must be even: rotary "
                             "embeddings rotate pairs of channels")
        # options another architecture would read: accepted silently, a config would promise what it does not build
        llada_only = [n for n in ("kv_heads", "mlp_hidden") if getattr(self, n) is not None] + \
            (["qkv_bias"] if self.qkv_bias else [])
        if llada_only and self.arch != "llada":
            raise ValueError(f"{', '.join(llada_only)} {'applies' if len(llada_only) == 1 else 'apply'} to the llada "
                             f"architecture only, not {self.arch!r}")
        if self.time_conditioning and self.arch != "dit":
            raise ValueError(f"the {self.arch} architecture takes no time input: time_conditioning must be false")
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")

    def _check_types(self) -> None:
        """A config.json edited by hand (a quoted number, a null) fails here, naming the field, instead
        of as a comparison or a shape error deep inside the model."""
        for name in _INTS:
            value = getattr(self, name)
            if (value is not None or name not in _OPTIONAL) and (isinstance(value, bool) or
                                                                  not isinstance(value, numbers.Integral)):
                raise TypeError(f"{name} must be an int{' or None' if name in _OPTIONAL else ''}, got {value!r}")
        for name in ("mlp_ratio", "dropout", "rope_base", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number, got {value!r}")
        for name in ("qkv_bias", "time_conditioning"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be true or false, got {getattr(self, name)!r}")

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
