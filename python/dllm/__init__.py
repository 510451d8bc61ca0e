"""dllm: fast kernels and a small Python API for discrete diffusion language models."""

import torch  # noqa: F401  (the extension needs torch's libraries loaded first)

from ._extension import build_info
from . import ops
from . import data, models, objectives, reference, sedd
from .sampling import GenerationOutput, generate, load_for_sampling
from .training import TrainConfig, train

__version__ = build_info()["version"]
__all__ = ["build_info", "ops", "reference", "sedd", "generate", "GenerationOutput", "load_for_sampling", "data",
           "models", "objectives", "train", "TrainConfig", "__version__"]
