"""The --device flag of every command: 'auto', 'cpu', 'cuda' or 'cuda:N', checked before any work starts."""

from __future__ import annotations

import contextlib

import torch

DEVICE_HELP = "cpu, cuda, cuda:N or auto (auto: the GPU if there is one)"


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """An indexed device: 'auto' picks CUDA when it is visible; a bare 'cuda' means this process's GPU
    (LOCAL_RANK under torchrun). Raises ValueError for devices that do not exist here."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"unknown device {spec!r}: use {DEVICE_HELP}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"device {spec!r} is not supported: use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r}: no CUDA device is visible")
    index = local_rank if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def indexed(device: torch.device) -> torch.device:
    """``device`` with an index-less 'cuda' read as torch reads it: the current CUDA device. (Without
    CUDA there is nothing to resolve: no CUDA tensor or generator can be used.)"""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def made_current(device: torch.device):
    """A context in which ``device`` is torch's current CUDA device (nothing for other devices): CUDA
    events, synchronize and a CUDA graph's capture stream belong to the current device, which is not
    a model's on cuda:1 without torch.cuda.set_device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
