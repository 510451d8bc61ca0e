"""MDLM (kuleshov-group/mdlm-owt): a transformers folder, config.json with model_type "mdlm"
(vocab_size, model_length, hidden_dim, cond_dim, n_blocks, n_heads, dropout, time_conditioning)
and model.safetensors holding SEDD's DiT under ``backbone.``. The mask is the last index."""

from __future__ import annotations

from ..config import ModelConfig
from .layout import Layout, special_id


def _model_config(config: dict) -> ModelConfig:
    return ModelConfig(arch="dit", vocab_size=config["vocab_size"], hidden=config["hidden_dim"],
                       layers=config["n_blocks"], heads=config["n_heads"], cond_dim=config["cond_dim"],
                       max_seq_len=config["model_length"], time_conditioning=bool(config.get("time_conditioning")),
                       dropout=config.get("dropout", 0.0))


def _protocol(config: dict, tokenizer) -> dict:
    attrs = dict(mask_id=int(config["vocab_size"]) - 1, time_conditioned=bool(config.get("time_conditioning")))
    pad = special_id(config, "pad_token_id", None, None)
    if pad is not None:
        attrs["pad_id"] = pad
    return attrs


MDLM = Layout(
    name="mdlm",
    detect=lambda config: str(config.get("model_type", "")).lower() == "mdlm",
    model_config=_model_config,
    names=((r"vocab_embed", "backbone.vocab_embed.embedding"), (r"(.+)", r"backbone.\1")),
    protocol=_protocol,
    float32_default=True,
)
