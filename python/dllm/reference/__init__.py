"""Plain-PyTorch references of dllm's ops, float64-capable: the math the kernels must match."""

from . import attention, unmask

__all__ = ["attention", "unmask"]
