"""Samplers for diffusion LMs: dllm.generate and the samplers it dispatches to."""

from .generate import generate
from .options import SAMPLERS
from .output import GenerationOutput
from .pretrained import load_for_sampling

__all__ = ["generate", "GenerationOutput", "SAMPLERS", "load_for_sampling"]
