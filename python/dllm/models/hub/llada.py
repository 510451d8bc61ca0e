"""LLaDA-8B Base/Instruct (GSAI-ML/LLaDA-8B-*): config.json with model_type "llada" (OLMo-style
keys: d_model, n_layers, n_heads, n_kv_heads, mlp_hidden_size, rope_theta, rms_norm_eps, ...) and
sharded safetensors named ``model.transformer.*``. Its LLaMA block maps onto dllm's LLaDAModel:
ff_proj is the SiLU gate, up_proj the linear branch, ff_out the down projection (and, at the top
level, the untied output head)."""

from __future__ import annotations

from ..config import ModelConfig
from .layout import Layout, require, special_id

MASK_TOKEN = "<|mdm_mask|>"


# LLaDA's own code defaults these to other choices than dllm runs (no RoPE, LayerNorm, OLMo's
# sequential block), and a wrong one leaves every weight's shape intact: a config must state them
STATED = {"rope": True, "layer_norm_type": "rms", "block_type": "llama", "activation_type": "silu"}


def _model_config(config: dict) -> ModelConfig:
    unstated = [k for k in STATED if config.get(k) is None]
    if unstated:
        raise ValueError(f"LLaDA config.json does not state {unstated}: LLaDA's code would default them to other "
                         f"choices than dllm's {({k: STATED[k] for k in unstated})}, which the weights cannot "
                         "tell apart")
    require(config, "LLaDA", block_type="llama", activation_type="silu", layer_norm_type="rms",
            layer_norm_with_affine=True, bias_for_layer_norm=False, include_bias=False, weight_tying=False,
            attention_layer_norm=False, input_emb_norm=False, scale_logits=False, alibi=False, rope=True,
            multi_query_attention=False, clip_qkv=None)
    d, heads = config["d_model"], config["n_heads"]
    return ModelConfig(arch="llada", vocab_size=config.get("embedding_size") or config["vocab_size"], hidden=d,
                       layers=config["n_layers"], heads=heads, kv_heads=config.get("n_kv_heads") or heads,
                       mlp_hidden=config.get("mlp_hidden_size") or int(config["mlp_ratio"] * d),
                       max_seq_len=config.get("max_sequence_length", 4096), rope_base=config.get("rope_theta", 10000.0),
                       norm_eps=config.get("rms_norm_eps", 1e-5), qkv_bias=bool(config.get("include_qkv_bias")))


def _protocol(config: dict, tokenizer) -> dict:
    attrs = dict(mask_id=special_id(config, "mask_token_id", tokenizer, MASK_TOKEN), logits_shift=0)
    for attr, key in (("pad_id", "pad_token_id"), ("eos_id", "eos_token_id")):
        value = special_id(config, key, None, None)
        if value is not None:
            attrs[attr] = value
    return attrs


_BLOCK = r"model.transformer.blocks.\1."
LLADA = Layout(
    name="llada",
    detect=lambda config: str(config.get("model_type", "")).lower() == "llada",
    model_config=_model_config,
    names=(
        (r"embed\.weight", "model.transformer.wte.weight"),
        (r"norm\.weight", "model.transformer.ln_f.weight"),
        (r"lm_head\.weight", "model.transformer.ff_out.weight"),
        (r"blocks\.(\d+)\.(attn_norm\.weight|[qkv]_proj\.weight|[qkv]_proj\.bias|up_proj\.weight)", _BLOCK + r"\2"),
        (r"blocks\.(\d+)\.o_proj\.weight", _BLOCK + "attn_out.weight"),
        (r"blocks\.(\d+)\.mlp_norm\.weight", _BLOCK + "ff_norm.weight"),
        (r"blocks\.(\d+)\.gate_proj\.weight", _BLOCK + "ff_proj.weight"),
        (r"blocks\.(\d+)\.down_proj\.weight", _BLOCK + "ff_out.weight"),
    ),
    protocol=_protocol,
)
