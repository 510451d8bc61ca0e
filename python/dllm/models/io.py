"""save_pretrained / from_pretrained: a folder with config.json and model.safetensors; published
checkpoint folders (SEDD, MDLM, LLaDA, Dream) are handed to :mod:`dllm.models.hub`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import ModelConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _atomic_replace(write, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors creates its files 0600; others should read a shared model
    os.replace(tmp, path)


class PretrainedMixin:
    config: ModelConfig

    def save_pretrained(self, directory: str | os.PathLike, **extra) -> None:
        """Write ``config.json`` (the model config, plus ``extra`` JSON-able entries such as the
        tokenizer or objective) and ``model.safetensors``."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        _atomic_replace(lambda p: save_file(state, str(p), metadata={"format": "pt"}), d / WEIGHTS_NAME)
        cfg = {"model": self.config.to_dict(), **extra}
        _atomic_replace(lambda p: p.write_text(json.dumps(cfg, indent=2)), d / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu"):
        """Load a model written by ``save_pretrained``; called on a base class it builds the saved
        architecture."""
        model = from_pretrained(directory, map_location=map_location)
        if not isinstance(model, cls):
            raise TypeError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


def build_model(cfg: ModelConfig):
    from .dit import ARTransformer, DiffusionTransformer
    from .llada import LLaDAModel

    return {"dit": DiffusionTransformer, "ar": ARTransformer, "llada": LLaDAModel}[cfg.arch](cfg)


def read_config(directory: str | os.PathLike) -> dict:
    p = Path(directory) / CONFIG_NAME
    if not p.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(directory)!r}; expected a folder written by save_pretrained "
                                "or a published SEDD, MDLM, LLaDA or Dream checkpoint")
    return json.loads(p.read_text())


def is_dllm_config(config: dict) -> bool:
    """A config.json written by save_pretrained (SEDD's hydra config also has a "model" entry)."""
    return isinstance(config.get("model"), dict) and "arch" in config["model"]


def read_weights(path: Path, device) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or corrupt file is a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file ({e}): an incomplete copy?") from None


def from_pretrained(directory: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None):
    """Load a model folder: one written by ``save_pretrained`` (returns that model class), or a
    published checkpoint (SEDD, MDLM, LLaDA, Dream; see :mod:`dllm.models.hub`), returned as a
    :class:`~dllm.models.hub.PublishedModel` that ``dllm.generate`` runs. ``dtype`` casts a
    dllm folder's weights (default: as saved); for published folders see
    :func:`~dllm.models.hub.load_published`."""
    config = read_config(directory)
    if not is_dllm_config(config):
        from .hub import load_published

        return load_published(directory, config, map_location=map_location, dtype=dtype)
    cfg = ModelConfig.from_dict(config["model"])
    model = build_model(cfg)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {str(directory)!r}")
    model.load_state_dict(read_weights(weights, map_location))
    return model.to(map_location) if dtype is None else model.to(map_location, dtype)
