"""Dream-7B (Dream-org/Dream-v0-Base-7B, -Instruct-7B): Qwen2.5-7B's architecture (q/k/v biases,
grouped-query attention, RMSNorm, SwiGLU, rope_theta) run bidirectionally; config.json with
model_type "Dream" and Qwen2 key names, sharded safetensors with Qwen2 weight names. Its head is
inherited from the autoregressive model, so position i is predicted by logits row i - 1."""

from __future__ import annotations

from ..config import ModelConfig
from .layout import Layout, require, special_id

MASK_TOKEN, PAD_TOKEN = "<|mask|>", "<|endoftext|>"


def _model_config(config: dict) -> ModelConfig:
    require(config, "Dream", hidden_act="silu", tie_word_embeddings=False, use_sliding_window=False,
            rope_scaling=None)
    d, heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim") not in (None, d // heads):
        raise ValueError(f"Dream head_dim {config['head_dim']} differs from hidden_size / num_attention_heads; "
                         "dllm's model does not support that")
    return ModelConfig(arch="llada", vocab_size=config["vocab_size"], hidden=d, layers=config["num_hidden_layers"],
                       heads=heads, kv_heads=config.get("num_key_value_heads") or heads,
                       mlp_hidden=config["intermediate_size"], max_seq_len=config.get("max_position_embeddings", 131072),
                       rope_base=config.get("rope_theta", 10000.0), norm_eps=config.get("rms_norm_eps", 1e-6),
                       qkv_bias=True)


def _protocol(config: dict, tokenizer) -> dict:
    attrs = dict(mask_id=special_id(config, "mask_token_id", tokenizer, MASK_TOKEN), logits_shift=1)
    pad = special_id(config, "pad_token_id", tokenizer, PAD_TOKEN)
    if pad is not None:
        attrs["pad_id"] = pad
    eos = special_id(config, "eos_token_id", None, None)
    if eos is not None:
        attrs["eos_id"] = eos
    return attrs


_LAYER = r"model.layers.\1."
DREAM = Layout(
    name="dream",
    detect=lambda config: str(config.get("model_type", "")).lower() == "dream",
    model_config=_model_config,
    names=(
        (r"embed\.weight", "model.embed_tokens.weight"),
        (r"norm\.weight", "model.norm.weight"),
        (r"lm_head\.weight", "lm_head.weight"),
        (r"blocks\.(\d+)\.attn_norm\.weight", _LAYER + "input_layernorm.weight"),
        (r"blocks\.(\d+)\.mlp_norm\.weight", _LAYER + "post_attention_layernorm.weight"),
        (r"blocks\.(\d+)\.([qkvo]_proj\.(weight|bias))", _LAYER + r"self_attn.\2"),
        (r"blocks\.(\d+)\.((gate|up|down)_proj\.weight)", _LAYER + r"mlp.\2"),
    ),
    protocol=_protocol,
)
