"""SEDD (score-entropy discrete diffusion) in Python: graphs, noise schedules and the plain-PyTorch
reference of every SEDD/MDLM op. The fused kernels are ``dllm.ops.sedd_step``,
``score_entropy_loss``, ``masked_diffusion_loss`` and ``sample_transition``."""

from . import reference
from .graphs import Absorbing, Uniform
from .schedules import Geometric, LogLinear, get_noise

__all__ = ["Absorbing", "Uniform", "LogLinear", "Geometric", "get_noise", "reference"]
