"""Reading a published checkpoint's tensors: one safetensors file, safetensors shards with their
index, or a ``pytorch_model.bin``, one tensor at a time so that peak host memory stays near one
tensor (safetensors memory-maps its files)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Iterator

import torch

SAFETENSORS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"{str(index)!r} is not a shard index ({e}): an incomplete copy?") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no weight_map")
    bad = next((name for name, shard in weight_map.items() if not isinstance(shard, str)), None)
    if bad is not None:
        raise ValueError(f"{index} maps {bad!r} to {weight_map[bad]!r}, not a shard's file name")
    return weight_map


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a folder, preferring safetensors; shards are checked against their index."""
    index = directory / SHARD_INDEX
    if index.is_file():
        weight_map = _weight_map(index)
        files = [directory / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} lists shards that are not in {str(directory)!r}: {absent}")
        return files
    for name in (SAFETENSORS, TORCH_BIN):
        if (directory / name).is_file():
            return [directory / name]
    raise FileNotFoundError(f"no weights in {str(directory)!r}: expected {SAFETENSORS}, {SHARD_INDEX} with its "
                            f"shards, or {TORCH_BIN}")


def index_map(directory: Path) -> dict[str, str] | None:
    index = directory / SHARD_INDEX
    return _weight_map(index) if index.is_file() else None


def iter_tensors(path: Path, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of one file; safetensors reads each tensor straight onto ``device``."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except SafetensorError as e:
            raise ValueError(f"{str(path)!r} is not a readable safetensors file ({e}): an incomplete copy?") from None
    else:
        for name, t in _torch_load(path).items():
            yield name, t.to(device)


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save`` state dict; memory-mapped when it is a zip archive, the format torch can
    map, read whole when it is the legacy (pre-1.6) format."""
    with open(path, "rb") as f:
        mapped = f.read(4) == b"PK\x03\x04"
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # torch maps a file by its path as UTF-8 text, which bytes the locale could not
        mapped = False  # decode (they arrive as surrogate escapes) are not; read whole, through Python's open
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        # torch's messages run to paragraphs (or are empty for EOFError); the first sentence says enough
        message = str(e).strip()
        reason = message.splitlines()[0].split(". ")[0] if message else type(e).__name__
        raise ValueError(f"{str(path)!r} is not a readable PyTorch checkpoint ({reason}): an incomplete copy?") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict (names to tensors)")
    return state
