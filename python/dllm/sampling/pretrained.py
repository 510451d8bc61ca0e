"""Model folders written by `dllm train`, and published checkpoint folders, as samplers see them (the model
protocol)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..data.tokenizer import PublishedTokenizer, tokenizer_for_model
from ..models import from_pretrained
from ..models.hub import detect_layout, load_published
from ..models.hub.loader import load_tokenizer
from ..models.io import is_dllm_config, network_config, read_config
from ..sedd import Absorbing, Uniform, get_noise
from .model_protocol import max_seq_len_of, time_conditioned, vocab_size_of


class MaskedLM(nn.Module):
    """A masked-diffusion network (MDLM, LLaDA objectives) with the mask id samplers need; it passes
    sigma (to a DiT trained with time conditioning), ``attention_mask`` and the KV-cache interface
    through."""

    def __init__(self, model: nn.Module, mask_id: int):
        super().__init__()
        self.model, self.mask_id = model, mask_id
        self.time_conditioned = time_conditioned(model)
        if getattr(model, "new_kv_cache", None) is not None:
            self.new_kv_cache = model.new_kv_cache

    @property
    def vocab_size(self) -> int | None:  # bounds the prompt's and the infill's ids (model_protocol)
        return vocab_size_of(self.model)

    @property
    def max_seq_len(self) -> int | None:  # the longest canvas (model_protocol)
        return max_seq_len_of(self.model)

    def forward(self, x, sigma=None, **kwargs):
        return self.model(x, **kwargs) if sigma is None else self.model(x, sigma, **kwargs)


class ScoreModel(nn.Module):
    """A SEDD score network with its graph and noise schedule."""

    def __init__(self, model: nn.Module, graph, noise):
        super().__init__()
        self.model, self.graph, self.noise = model, graph, noise

    vocab_size = MaskedLM.vocab_size
    max_seq_len = MaskedLM.max_seq_len

    def forward(self, x, sigma, **kwargs):
        return self.model(x, sigma, **kwargs)


def load_for_sampling(directory, device="cpu"):
    """Returns (model, tokenizer, kind) with kind "ar", "masked" or "score"; the model is wrapped
    so that dllm.generate (or, for "ar", its own KV-cache generate) can run it: a masked-diffusion
    network gets its mask id, a score network its graph and noise schedule, all read from the
    folder's config.json (``dllm.models.from_pretrained`` returns the bare network). A published
    checkpoint folder (SEDD, MDLM, LLaDA, Dream) needs its tokenizer.json."""
    config = read_config(directory)
    return load_with_tokenizer(directory, config, sampling_tokenizer(directory, config), device)


def sampling_tokenizer(directory, config: dict):
    """The tokenizer of a model folder (``config``: its config.json), read before the weights: a dllm
    folder's own, or a published folder's tokenizer.json as a ``tokenizers.Tokenizer``, which the
    loaded model's special ids complete."""
    if is_dllm_config(config):
        return tokenizer_for_model(directory)
    if not (Path(directory) / "tokenizer.json").is_file():
        layout = detect_layout(config, directory).name
        if layout in ("sedd", "mdlm"):
            fix = "SEDD and MDLM use GPT-2's tokenizer: put GPT-2's tokenizer.json into the folder"
        elif layout == "dream":
            fix = ("Dream's repository ships vocab.json and merges.txt but no tokenizer.json: write one from them "
                   "into the folder (a Hugging Face fast tokenizer's save_pretrained does)")
        else:
            fix = f"put the {layout} checkpoint's tokenizer.json into the folder"
        raise FileNotFoundError(f"{str(directory)!r} has no tokenizer.json, which `dllm sample` needs to read "
                                f"prompts and write text; {fix}")
    return load_tokenizer(Path(directory), network_config(directory, config).vocab_size)


def load_with_tokenizer(directory, config: dict, tok, device="cpu"):
    """:func:`load_for_sampling` given the folder's config.json and what :func:`sampling_tokenizer` read,
    for a caller that needs the tokenizer before the weights (`dllm sample`) and reads it once."""
    if not is_dllm_config(config):
        model = load_published(directory, config, map_location=device, tokenizer=tok)
        tok = PublishedTokenizer(model.tokenizer, mask_id=getattr(model, "mask_id", None),
                                 eos_id=getattr(model, "eos_id", None))
        return model, tok, "score" if model.layout == "sedd" else "masked"
    objective = config.get("objective", {})
    net = from_pretrained(directory, map_location=device).eval()
    name = objective.get("name")
    # SEDD's uniform graph has no mask state: its network has one entry fewer than the tokenizer
    spare = 1 if name == "sedd" and objective.get("graph") == "uniform" else 0
    _check_vocab(directory, tok, net.config.vocab_size, spare)
    if name == "ar":
        return net, tok, "ar"
    if name == "sedd":
        noise = objective.get("noise")
        if objective.get("graph") not in ("absorb", "uniform") or not (isinstance(noise, dict) and "type" in noise):
            raise ValueError(f"{str(Path(directory) / 'config.json')!r}: a sedd objective records its graph "
                             f"('absorb' or 'uniform') and its noise schedule ({{'type': ...}}); got {objective!r}")
        noise = dict(noise)
        graph = Absorbing(tok.vocab_size - 1) if objective["graph"] == "absorb" else Uniform(tok.vocab_size - 1)
        return ScoreModel(net, graph, get_noise(noise.pop("type"), **noise)), tok, "score"
    return MaskedLM(net, tok.mask_id), tok, "masked"


def _check_vocab(directory, tok, vocab_size: int, spare: int) -> None:
    """Ids past the model's vocabulary would fail deep in the embedding as an IndexError."""
    if tok.vocab_size - spare > vocab_size:
        source = repr(str(Path(directory) / "tokenizer.json")) if tok.kind == "bpe" else f"the {tok.kind} tokenizer"
        raise ValueError(f"{source} has {tok.vocab_size} entries but the model's vocabulary has {vocab_size}: "
                         f"{str(Path(directory) / 'config.json')!r} records another model's tokenizer")
