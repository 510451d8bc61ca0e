"""save_pretrained / from_pretrained: a folder with config.json and model.safetensors; published
checkpoint folders (SEDD, MDLM, LLaDA, Dream) are handed to :mod:`dllm.models.hub`."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from .._atomic import replaced_atomically
from ..devices import indexed
from .config import ModelConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
FOLDER_KINDS = "a folder written by save_pretrained or a published SEDD, MDLM, LLaDA or Dream checkpoint"


def _atomic_replace(write, path: Path) -> None:
    with replaced_atomically(path) as tmp:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates its files 0600; others should read a shared model


class PretrainedMixin:
    config: ModelConfig

    def save_pretrained(self, directory: str | os.PathLike, **extra) -> None:
        """Write ``config.json`` (the model config, plus ``extra`` JSON-able entries such as the
        tokenizer or objective) and ``model.safetensors``."""
        from safetensors.torch import save_file

        # Encoded before anything is written: a bad ``extra`` must not leave new weights beside an old config.
        cfg = json.dumps({"model": self.config.to_dict(), **extra}, indent=2)
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        _atomic_replace(lambda p: save_file(state, str(p), metadata={"format": "pt"}), d / WEIGHTS_NAME)
        _atomic_replace(lambda p: p.write_text(cfg), d / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None):
        """Load a model written by ``save_pretrained``; called on a base class it builds the saved
        architecture. A published checkpoint whose network is a ``cls`` gives that bare network
        (``PublishedModel.net``), without the tokenizer and sampler attributes (mask id, Dream's
        ``logits_shift=1``, SEDD's graph and noise) that :func:`dllm.models.from_pretrained`
        attaches; a Dream network sampled without its shift proposes wrong tokens, so it warns."""
        saved = _saved_class(directory)  # checked before reading weights, which may be gigabytes
        if saved is not None and not issubclass(saved, cls):
            raise TypeError(f"{str(directory)!r} holds a {saved.__name__}, not a {cls.__name__}")
        model = from_pretrained(directory, map_location=map_location, dtype=dtype)
        if isinstance(model, cls):
            return model
        if model.logits_shift:  # unlike a missing mask id, a missing shift would fail nowhere
            warnings.warn(f"{str(directory)!r} is a {model.layout} checkpoint whose head predicts position i from row "
                          f"i - {model.logits_shift}: the bare network drops that; sample it with "
                          "dllm.models.from_pretrained, or with logits_shift set on your wrapper", stacklevel=2)
        return model.net  # a PublishedModel around a ``cls``


def _classes() -> dict[str, type]:
    from .dit import ARTransformer, DiffusionTransformer
    from .llada import LLaDAModel

    return {"dit": DiffusionTransformer, "ar": ARTransformer, "llada": LLaDAModel}


def build_model(cfg: ModelConfig):
    return _classes()[cfg.arch](cfg)


def _saved_class(directory) -> type | None:
    """The model class a folder's config.json builds (for a published checkpoint, its network's);
    None when the config is too broken to tell, which from_pretrained then reports."""
    config = read_config(directory)
    if is_dllm_config(config):
        arch = config["model"]["arch"]
    else:
        from .hub import detect_layout

        try:
            arch = detect_layout(config, directory).model_config(config).arch
        except (KeyError, TypeError, ValueError):  # from_pretrained reports it, naming config.json
            return None
    return _classes().get(arch)


def read_config(directory: str | os.PathLike, *, expected: str = FOLDER_KINDS) -> dict:
    """A model folder's config.json as a dict; ``expected`` describes the folders the caller takes,
    for the error raised when ``directory`` is not one."""
    d = Path(directory)
    p = d / CONFIG_NAME
    if not p.is_file():
        if not d.exists():
            raise FileNotFoundError(f"{str(directory)!r} does not exist; expected {expected}")
        if not d.is_dir():
            raise NotADirectoryError(f"{str(directory)!r} is not a folder; expected {expected}")
        # `dllm train` writes the model to OUT_DIR/model; passing OUT_DIR is the likely slip
        hint = (f"; did you mean {str(d / 'model')!r}?" if (d / "model" / CONFIG_NAME).is_file()
                else f"; expected {expected}")
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(directory)!r}{hint}")
    try:
        config = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(p)!r} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{str(p)!r} is not UTF-8 text") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(p)!r} must hold a JSON object, not a {type(config).__name__}")
    return config


def network_config(directory: str | os.PathLike, config: dict) -> ModelConfig:
    """The network a folder's config.json (``config``) describes, a published checkpoint's too, read
    without its weights; a mistake in the file is a ValueError naming it."""
    if not is_dllm_config(config):
        from .hub.loader import published_network_config

        return published_network_config(directory, config)
    try:
        return ModelConfig.from_dict(config["model"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{str(Path(directory) / CONFIG_NAME)!r}: {e}") from None


def is_dllm_config(config: dict) -> bool:
    """A config.json written by save_pretrained (SEDD's hydra config also has a "model" entry)."""
    return isinstance(config.get("model"), dict) and "arch" in config["model"]


def load_device(map_location: str | torch.device) -> torch.device:
    """``map_location`` as a device the weights can be read onto (the CPU or a CUDA device); raises
    ValueError for any other, or one malformed or absent here (rather than letting the reader blame
    the file)."""
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError):
        raise ValueError(f"map_location {map_location!r} is not a torch device") from None
    if device.type == "cpu":
        return torch.device("cpu")  # safetensors refuses "cpu:0"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"map_location {map_location!r}: no CUDA device is visible")
        index = indexed(device).index
        if index >= torch.cuda.device_count():
            raise ValueError(f"map_location {map_location!r}: this machine has {torch.cuda.device_count()} CUDA "
                             "device(s)")
        return torch.device("cuda", index)
    raise ValueError(f"map_location {map_location!r}: weights are read onto the CPU or a CUDA device; load them "
                     f"there and move the model with .to()")


def load_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``dtype`` as a floating torch.dtype (its name, such as "bfloat16", works too); None stays None."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        dtype = DTYPES.get(dtype.removeprefix("torch."), dtype)
    elif not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or its name, got {type(dtype).__name__} {dtype!r}")
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be a floating type ({', '.join(DTYPES)}), got {dtype!r}")
    return dtype


def read_weights(path: Path, device) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or corrupt file is a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file ({e}): an incomplete copy?") from None


def from_pretrained(path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                    dtype: torch.dtype | str | None = None):
    """Load a model folder: one written by ``save_pretrained`` (returns that model class), or a
    published checkpoint (SEDD, MDLM, LLaDA, Dream; see :mod:`dllm.models.hub`), returned as a
    :class:`~dllm.models.hub.PublishedModel` that ``dllm.generate`` runs, in eval mode (dropout
    off; call ``.train()`` to fine-tune). ``dtype`` casts a dllm folder's weights (default: the
    dtype they were saved in); for published folders see
    :func:`~dllm.models.hub.load_published`. ``dtype`` may be named ("bfloat16", "float16",
    "float32"); ``map_location`` is any torch device spelling ("cpu:0", ``torch.device("cuda", 1)``)."""
    device, dtype = load_device(map_location), load_dtype(dtype)
    config = read_config(path)
    if not is_dllm_config(config):
        from .hub import load_published

        return load_published(path, config, map_location=device, dtype=dtype)
    model = build_model(network_config(path, config))
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {str(path)!r}")
    state = read_weights(weights, device)
    _check_state(path, state, model.state_dict())
    if dtype is None:  # each tensor in the dtype it was saved in (a bfloat16 model may keep float32 norms)
        model.to(device)
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name in state and t.is_floating_point() and state[name].dtype != t.dtype:
                t.data = t.data.to(state[name].dtype)
    else:
        model.to(device, dtype)
    model.load_state_dict(state)
    return model.eval()


def _check_state(directory, state: dict, expected: dict) -> None:
    """A config.json edited or copied from another run would otherwise surface as load_state_dict's
    multi-line RuntimeError; name the first weight that disagrees."""
    where = f"{str(directory)!r} does not match its {CONFIG_NAME}"
    for name, tensor in expected.items():
        if name not in state:
            raise ValueError(f"{where}: {WEIGHTS_NAME} lacks weight {name}")
        if state[name].shape != tensor.shape:
            raise ValueError(f"{where}: weight {name} in {WEIGHTS_NAME} has shape {tuple(state[name].shape)}, but "
                             f"{CONFIG_NAME} implies {tuple(tensor.shape)}")
        if tensor.is_floating_point() and not state[name].is_floating_point():  # load_state_dict would cast it
            raise ValueError(f"{where}: weight {name} in {WEIGHTS_NAME} has dtype {state[name].dtype}, not a "
                             "floating type")
    extra = [name for name in state if name not in expected]
    if extra:
        raise ValueError(f"{where}: {WEIGHTS_NAME} has unexpected weight {extra[0]}"
                         + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
