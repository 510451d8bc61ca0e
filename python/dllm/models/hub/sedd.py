"""SEDD (louaaron/sedd-small, sedd-medium): huggingface_hub's PyTorchModelHubMixin folder, a
config.json holding the whole hydra config and the state dict of ``SEDD`` (SEDD's released model
code), whose module names dllm's DiT shares except the embedding table."""

from __future__ import annotations

from ...sedd import Absorbing, Geometric, LogLinear, Uniform
from ..config import ModelConfig
from .layout import Layout

GRAPHS = ("absorb", "uniform")


def _detect(config: dict) -> bool:
    return (isinstance(config.get("model"), dict) and "hidden_size" in config["model"]
            and isinstance(config.get("graph"), dict) and "tokens" in config)


def _graph_type(config: dict) -> str:
    kind = config["graph"].get("type")
    if kind not in GRAPHS:
        raise ValueError(f"SEDD graph type {kind!r} is not supported; expected one of {GRAPHS}")
    return kind


def _model_config(config: dict) -> ModelConfig:
    m = config["model"]
    absorb = _graph_type(config) == "absorb"
    return ModelConfig(arch="dit", vocab_size=int(config["tokens"]) + absorb, hidden=m["hidden_size"],
                       layers=m["n_blocks"], heads=m["n_heads"], cond_dim=m["cond_dim"], max_seq_len=m["length"],
                       time_conditioning=True, dropout=m.get("dropout", 0.0))


def _protocol(config: dict, tokenizer) -> dict:
    tokens, absorb = int(config["tokens"]), _graph_type(config) == "absorb"
    graph = Absorbing(tokens) if absorb else Uniform(tokens)
    scale = bool(config["model"].get("scale_by_sigma", absorb))
    if scale and not absorb:
        raise ValueError("SEDD scales its output by sigma only under the absorbing graph (scale_by_sigma with uniform)")
    graph.scale_by_sigma = scale
    noise = dict(config.get("noise") or {"type": "loglinear"})
    if noise.get("type") == "loglinear":
        schedule = LogLinear()  # SEDD builds LogLinearNoise() with its default eps 1e-3; sigma_min/max unused
    elif noise.get("type") == "geometric":
        schedule = Geometric(float(noise["sigma_min"]), float(noise["sigma_max"]))
    else:
        raise ValueError(f"SEDD noise type {noise.get('type')!r} is not supported; expected loglinear or geometric")
    attrs = dict(graph=graph, noise=schedule, time_conditioned=True)
    if absorb:
        attrs["mask_id"] = graph.mask_id
    return attrs


SEDD = Layout(
    name="sedd",
    detect=_detect,
    model_config=_model_config,
    names=((r"vocab_embed", "vocab_embed.embedding"), (r"(.+)", r"\1")),
    protocol=_protocol,
    float32_default=True,
)
