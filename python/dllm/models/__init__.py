"""Models: the SEDD/MDLM diffusion transformer, its autoregressive twin, and a LLaDA-style LM."""

from .config import ModelConfig, SIZES, model_config
from .dit import ARTransformer, DiffusionTransformer
from .io import build_model, from_pretrained
from .llada import LLaDAModel

__all__ = ["ModelConfig", "SIZES", "model_config", "DiffusionTransformer", "ARTransformer", "LLaDAModel",
           "build_model", "from_pretrained"]
