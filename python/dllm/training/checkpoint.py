"""Atomic, self-checking training checkpoints.

The file is a header (magic, payload length, SHA-256 of the payload) followed by a ``torch.save``
payload of tensors and primitives only, so it loads with ``weights_only=True``. It is written to a
temporary file in the same folder, flushed to disk, then renamed over the old one: a crash at any
point leaves either the old checkpoint or the new one, never a mix. A truncated or altered file is
refused with ``CheckpointError`` before torch parses it.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path

import torch

from .._atomic import replaced_atomically

MAGIC = b"DLLM-CKPT-1\n"
_HEADER = len(MAGIC) + 8 + 32


class CheckpointError(RuntimeError):
    pass


class RunFolderInUse(RuntimeError):
    """Another training run holds the output folder (see ``trainer.run_folder_lock``)."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    with replaced_atomically(path, hidden=True) as tmp, open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(payload)) + hashlib.sha256(payload).digest())
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path: str | os.PathLike, *, own_run: bool = False) -> dict:
    """The state saved by ``save_checkpoint``, checked whole. ``own_run``: the checkpoint belongs to the
    output folder being trained, so that a damaged one may be deleted (which the error then suggests)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e.strerror or e}") from e
    # a path given to --resume may be anything (exported weights, another run's checkpoint): not for deleting
    hint = ("delete it to start over, or pass another checkpoint to --resume" if own_run else
            "pass another checkpoint written by dllm train to --resume")
    if len(data) < _HEADER or not data.startswith(MAGIC):
        raise CheckpointError(f"{str(path)!r} is not a dllm checkpoint or its header is truncated "
                              f"({len(data)} bytes); {hint}")
    (n,) = struct.unpack("<Q", data[len(MAGIC):len(MAGIC) + 8])
    digest = data[len(MAGIC) + 8:_HEADER]
    payload = data[_HEADER:]
    if len(payload) != n:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated: {len(payload)} of {n} payload bytes; {hint}")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt (SHA-256 mismatch); {hint}")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
