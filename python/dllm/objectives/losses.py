"""The two loss kernels of the diffusion objectives (SEDD's score entropy, MDLM's SUBS loss), and
their plain-PyTorch references under the names the objectives export (``dllm.sedd.reference``
holds them: the float64 definitions the fused ops are tested against).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..sedd.reference import masked_diffusion_loss as masked_diffusion_reference
from ..sedd.reference import score_entropy_loss as score_entropy_reference

score_entropy_loss = ops.score_entropy_loss
masked_diffusion_loss = ops.masked_diffusion_loss


def next_token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sequence summed next-token cross-entropy ``[B]``."""
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return nll.view(targets.shape).sum(-1)


__all__ = ["score_entropy_loss", "masked_diffusion_loss", "score_entropy_reference", "masked_diffusion_reference",
           "next_token_nll"]
