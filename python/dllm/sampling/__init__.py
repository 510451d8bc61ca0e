"""Samplers for diffusion LMs: dllm.generate and the samplers it dispatches to."""

from .generate import SAMPLERS, generate
from .output import GenerationOutput

__all__ = ["generate", "GenerationOutput", "SAMPLERS"]
