"""Model folders written by `dllm train` as samplers see them (the model protocol)."""

from __future__ import annotations

from torch import nn

from ..data.tokenizer import tokenizer_for_model
from ..models import from_pretrained
from ..models.io import read_config
from ..sedd import Absorbing, Uniform, get_noise


class MaskedLM(nn.Module):
    """A masked-diffusion network (MDLM, LLaDA objectives) with the mask id samplers need; it passes
    ``attention_mask`` and the KV-cache interface through."""

    def __init__(self, model: nn.Module, mask_id: int):
        super().__init__()
        self.model, self.mask_id = model, mask_id
        if getattr(model, "new_kv_cache", None) is not None:
            self.new_kv_cache = model.new_kv_cache

    def forward(self, x, **kwargs):
        return self.model(x, **kwargs)


class ScoreModel(nn.Module):
    """A SEDD score network with its graph and noise schedule."""

    def __init__(self, model: nn.Module, graph, noise):
        super().__init__()
        self.model, self.graph, self.noise = model, graph, noise

    def forward(self, x, sigma):
        return self.model(x, sigma)


def load_for_sampling(directory, device="cpu"):
    """Returns (model, tokenizer, kind) with kind "ar", "masked" or "score"; the model is wrapped
    so that dllm.generate (or, for "ar", its own KV-cache generate) can run it."""
    objective = read_config(directory).get("objective", {})
    tok = tokenizer_for_model(directory)
    net = from_pretrained(directory).to(device).eval()
    name = objective.get("name")
    if name == "ar":
        return net, tok, "ar"
    if name == "sedd":
        noise = dict(objective["noise"])
        graph = Absorbing(tok.vocab_size - 1) if objective["graph"] == "absorb" else Uniform(tok.vocab_size - 1)
        return ScoreModel(net, graph, get_noise(noise.pop("type"), **noise)), tok, "score"
    return MaskedLM(net, tok.mask_id), tok, "masked"
