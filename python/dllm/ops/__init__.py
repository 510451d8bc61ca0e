"""dllm's operators: documented wrappers around ``torch.ops.dllm.*``.

Each op is registered in C++ (``csrc/torch/registration.cpp``) with a CPU and a CUDA kernel; the
fake (meta) implementation beside each wrapper lets ``torch.compile`` trace it without a graph
break. Randomness comes from torch's generators, so ``torch.manual_seed`` reproduces a run.
"""

# The library first: the modules below register fakes and autograd kernels for its ops, and query
# its CUDA kernels at import. (A package's __init__ runs before any of its modules.)
from .. import _extension  # noqa: F401
from ._attention import CUDA_HEAD_DIMS, cuda_kernel_supports, sdpa_attention  # noqa: F401
from ._attention import attention, attention_varlen
from ._checks import KERNEL_DTYPES  # noqa: F401
from ._layers import adaln, adaln_residual, rotary
from . import _not_differentiable  # noqa: F401  (autograd kernels that raise, for what has no gradient)
from ._sampling import commit_tokens, predict_masked, raise_pending_errors, sample_categorical
from ._sedd import masked_diffusion_loss, sample_transition, score_entropy_loss, sedd_step

# The ops. The module's other public names (KERNEL_DTYPES, CUDA_HEAD_DIMS, cuda_kernel_supports,
# sdpa_attention) serve dllm's models and benchmarks, which dispatch as the ops do.
__all__ = [
    "sample_categorical",
    "predict_masked",
    "commit_tokens",
    "raise_pending_errors",
    "attention",
    "attention_varlen",
    "rotary",
    "adaln",
    "adaln_residual",
    "sedd_step",
    "score_entropy_loss",
    "masked_diffusion_loss",
    "sample_transition",
]

for _name in __all__:  # help() and reprs name the ops where users call them
    globals()[_name].__module__ = __name__
del _name
