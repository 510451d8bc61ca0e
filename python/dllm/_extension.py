"""Loads the compiled core (dllm/_C), whose static initialisers register the torch.ops.dllm ops.

The extension links against one exact torch build. Loading it under another one fails with an
unreadable "undefined symbol" error, so the versions are compared first.
"""

import torch

try:
    from . import _build_commit, _build_config
except ImportError as e:  # a source checkout that was never built
    raise ImportError(
        "dllm's compiled extension is missing: install the package with "
        "`pip install --no-build-isolation .` (see README.md)"
    ) from e

REBUILD = "pip install --no-build-isolation --no-deps --force-reinstall <dllm's source: its checkout, sdist or URL>"

if torch.__version__ != _build_config.TORCH_VERSION:
    raise ImportError(
        f"dllm was built against torch {_build_config.TORCH_VERSION} but torch {torch.__version__} "
        f"is installed; rebuild dllm against the installed torch: `{REBUILD}`"
    )

from . import _C  # noqa: E402


def build_info() -> dict:
    """What the installed extension was built with.

    Returns a dict: ``version`` (dllm), ``torch`` (the torch version it was built against),
    ``torch_cuda`` (that torch's CUDA version, or None), ``cuda`` (whether CUDA kernels are
    compiled in), ``cuda_archs`` (the compiled SM architectures, e.g. ``["80", "90"]``) and
    ``wgmma`` (whether the Hopper attention kernels on wgmma, forward and backward, built for
    sm_90a, are compiled in) and ``commit`` (the git commit built, ``-dirty`` with uncommitted
    changes, or "unknown" outside a checkout).
    """
    archs = [a for a in _build_config.CUDA_ARCHS.split(";") if a]
    return {
        "version": _build_config.VERSION,
        "torch": _build_config.TORCH_VERSION,
        "torch_cuda": _build_config.TORCH_CUDA_VERSION or None,
        "cuda": bool(_C.with_cuda),
        "cuda_archs": archs if _C.with_cuda else [],
        "wgmma": bool(_C.with_wgmma),
        "commit": _build_commit.COMMIT,
    }
