"""Published checkpoint folders -> dllm's model classes, wrapped for dllm's samplers."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import ModelConfig
from ..io import build_model, load_device, load_dtype
from ..layers import Rotary
from .dream import DREAM
from .layout import ROTARY_BUFFER, Layout
from .llada import LLADA
from .mdlm import MDLM
from .published import PublishedModel
from .sedd import SEDD
from .weights import SHARD_INDEX, index_map, iter_tensors, weight_files

LAYOUTS = (SEDD, MDLM, LLADA, DREAM)
TOKENIZER_NAME = "tokenizer.json"


def detect_layout(config: dict, directory: str | Path = "") -> Layout:
    for layout in LAYOUTS:
        if layout.detect(config):
            return layout
    raise ValueError(f"{str(directory)!r}: config.json is neither a dllm folder (a \"model\" entry with \"arch\") nor a "
                     f"published layout dllm reads ({', '.join(l.name for l in LAYOUTS)}); "
                     f"model_type={config.get('model_type')!r}")


def load_tokenizer(directory: Path, vocab_size: int | None = None):
    """The folder's tokenizer.json, or None; one with ids past the model's ``vocab_size`` is refused
    here, since its tokens would fail later as an index error deep inside the embedding."""
    path = directory / TOKENIZER_NAME
    if not path.is_file():
        return None
    from ...data.tokenizer import read_tokenizer_json

    tok = read_tokenizer_json(path)
    entries = max(tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    if vocab_size is not None and entries > vocab_size:
        raise ValueError(f"{str(path)!r} has {entries} entries but the model's vocabulary has {vocab_size}: is it "
                         "another model's tokenizer.json?")
    return tok


def published_network_config(directory: str | Path, config: dict) -> ModelConfig:
    """The network a published checkpoint's config.json (``config``) describes, its mistakes named with the file."""
    layout = detect_layout(config, directory)
    return _read_config(Path(directory), layout, lambda: layout.model_config(config))


def load_published(directory: str | Path, config: dict, *, map_location: str | torch.device = "cpu",
                   dtype: torch.dtype | str | None = None, tokenizer=None) -> PublishedModel:
    """Build dllm's model for a published checkpoint folder and load its weights.

    ``dtype`` defaults to bfloat16 on CUDA and float32 elsewhere for LLaDA and Dream; SEDD and
    MDLM default to float32 (their authors keep float32 weights and compute under bfloat16
    autocast), any floating dtype (or its name, such as "bfloat16") when asked. Weights are read
    tensor by tensor straight onto ``map_location``. A tokenizer.json with more entries than the
    model's vocabulary is refused. ``tokenizer``: what :func:`load_tokenizer` returned (and checked) for this
    folder and model, when the caller read it already (`dllm sample`, to measure the prompt before the
    weights); taken as it is, not checked again; read here when None.
    """
    directory = Path(directory)
    layout = detect_layout(config, directory)
    device, dtype = load_device(map_location), load_dtype(dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" and not layout.float32_default else torch.float32
    cfg = published_network_config(directory, config)
    if tokenizer is None:
        tokenizer = load_tokenizer(directory, cfg.vocab_size)  # before the weights, which may take minutes
    protocol = _read_config(directory, layout, lambda: layout.protocol(config, tokenizer))
    _check_ids(layout, protocol, cfg)
    with torch.device("meta"):  # no memory and no init for weights that are overwritten anyway
        net = build_model(cfg)
    state = _read_state(directory, layout, cfg, {k: tuple(v.shape) for k, v in net.state_dict().items()}, dtype, device)
    net.load_state_dict(state, strict=True, assign=True)
    for module in net.modules():  # non-persistent buffers were left on the meta device
        if isinstance(module, Rotary):
            module.inv_freq = module.frequencies(device)
    return PublishedModel(net, layout=layout.name, config=config, tokenizer=tokenizer, **protocol).eval()


def _read_config(directory: Path, layout: Layout, read):
    """``read()`` of the folder's config.json, its mistakes named with the file."""
    try:
        return read()
    except KeyError as e:
        raise ValueError(f"{str(directory / 'config.json')!r} lacks {e.args[0]!r}, which the {layout.name} layout "
                         "needs") from None
    except (TypeError, ValueError) as e:  # a mistyped value, or an option dllm's classes do not implement
        raise ValueError(f"{str(directory / 'config.json')!r}: {e}") from None


def _read_state(directory: Path, layout: Layout, cfg: ModelConfig, shapes: dict[str, tuple], dtype, device) -> dict:
    files = weight_files(directory)
    index = index_map(directory)
    to_dllm = {layout.published_name(name): name for name in shapes}
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for path in tqdm(files, desc=f"loading {layout.name} shards", unit="file", disable=len(files) < 2):
        for key, tensor in iter_tensors(path, device):
            if index is not None and index.get(key) != path.name:
                where = f"places it in {index[key]}" if key in index else "does not list it"
                raise ValueError(f"{key} is in {path.name} but {SHARD_INDEX} {where}")
            target = to_dllm.get(key)
            if target is None:
                if re.fullmatch(ROTARY_BUFFER, key):
                    _check_rotary(key, path, tensor, cfg)
                else:
                    unexpected.append(f"{key} (in {path.name})")
                continue
            if tuple(tensor.shape) != shapes[target]:
                raise ValueError(f"weight {key} in {path.name} has shape {tuple(tensor.shape)}, but config.json "
                                 f"implies {shapes[target]}")
            if not tensor.is_floating_point():
                raise ValueError(f"weight {key} in {path.name} has dtype {tensor.dtype}, not a floating type")
            state[target] = tensor.to(dtype)
    missing = [f"{key} (expected in {index.get(key, '?') if index else files[0].name})"
               for key, name in to_dllm.items() if name not in state]
    if missing or unexpected:
        parts = ([f"missing weights {_some(missing)}"] if missing else []) + \
                ([f"unexpected weights {_some(unexpected)}"] if unexpected else [])
        raise ValueError(f"{str(directory)!r} does not hold a {layout.name} checkpoint matching its config.json: "
                         + "; ".join(parts) + _prefix_hint(unexpected, to_dllm))
    return state


def _some(names: list[str], shown: int = 4) -> str:
    """A list of weight names short enough to read: an 8B model's would run to hundreds."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _prefix_hint(unexpected: list[str], published: dict) -> str:
    """Names saved from a wrapped model (torch.compile's ``_orig_mod.``, DDP's ``module.``) are the
    expected ones behind a common prefix: say so, since every weight is then both missing and unexpected."""
    keys = [u.rsplit(" (in ", 1)[0] for u in unexpected]
    names = [name for name in published if keys and keys[0].endswith("." + name)]
    prefix = keys[0][:-len(max(names, key=len))] if names else ""
    if not prefix or any(not (k.startswith(prefix) and k[len(prefix):] in published) for k in keys):
        return ""
    return f" (every unexpected name is an expected one behind the prefix {prefix!r}: strip it from the weights' names)"


def _check_rotary(key: str, path: Path, tensor: torch.Tensor, cfg: ModelConfig) -> None:
    """A saved rotary buffer must be what dllm recomputes from the config (head size and base)."""
    expected = Rotary(cfg.head_dim, cfg.rope_base).frequencies()
    # at the precision it was saved in: a checkpoint saved in bfloat16 holds the frequencies rounded
    rtol = max(1e-4, torch.finfo(tensor.dtype).eps) if tensor.is_floating_point() else 1e-4
    if tuple(tensor.shape) != tuple(expected.shape) or not torch.allclose(tensor.float().cpu(), expected, rtol=rtol):
        raise ValueError(f"rotary buffer {key} in {path.name} does not match head size {cfg.head_dim} and rotary "
                         f"base {cfg.rope_base} from config.json")


def _check_ids(layout: Layout, protocol: dict, cfg: ModelConfig) -> None:
    if "mask_id" in protocol and protocol["mask_id"] is None:
        raise ValueError(f"{layout.name} checkpoint: no mask token id in config.json (mask_token_id) or tokenizer.json")
    for name in ("mask_id", "pad_id", "eos_id"):
        value = protocol.get(name)
        if value is not None and not 0 <= value < cfg.vocab_size:
            raise ValueError(f"{layout.name} checkpoint: {name} {value} is outside the vocabulary [0, {cfg.vocab_size})")
