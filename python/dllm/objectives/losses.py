"""The two loss kernels of the diffusion objectives (SEDD's score entropy, MDLM's SUBS loss), and
their plain-PyTorch references under the names the objectives export (``dllm.sedd.reference``
holds them: the float64 definitions the fused ops are tested against); and the autoregressive
baseline's chunked cross-entropy (``next_token``).
"""

from __future__ import annotations

from .. import ops
from ..sedd.reference import masked_diffusion_loss as masked_diffusion_reference
from ..sedd.reference import score_entropy_loss as score_entropy_reference
from .next_token import next_token_nll

score_entropy_loss = ops.score_entropy_loss
masked_diffusion_loss = ops.masked_diffusion_loss

__all__ = ["score_entropy_loss", "masked_diffusion_loss", "score_entropy_reference", "masked_diffusion_reference",
           "next_token_nll"]
