"""Published checkpoint layouts (SEDD, MDLM, LLaDA, Dream) loaded by dllm.models.from_pretrained.

No checkpoint can be downloaded here, so each test writes a tiny random checkpoint in the
published layout (file names, sharding and index, weight names, config keys, tokenizer.json) and
checks dllm's forward pass against a plain-PyTorch float64 implementation of the published
architecture kept in this file (as SEDD's, LLaDA's and Dream's released code define it), which
uses none of dllm's modules.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer

import dllm
from dllm.models import DiffusionTransformer, from_pretrained, model_config
from dllm.models.hub.loader import published_network_config
from dllm.sedd import Absorbing, Geometric, LogLinear, Uniform
from dllm.sedd.reference import log_score

f64 = torch.float64


# --------------------------- plain-PyTorch references (float64) ---------------------------

def rope(x, theta, positions=None):
    """x [B, H, S, D]: rotate-half rotary as complex multiplication of the pairs (j, j + D/2), at
    positions 0..S-1 or ``positions`` [B, S]."""
    half = x.shape[-1] // 2
    freqs = theta ** (-2 * torch.arange(half, dtype=f64) / x.shape[-1])
    pos = torch.arange(x.shape[2], dtype=f64) if positions is None else positions.to(f64)[:, None, :]
    angle = pos[..., None] * freqs
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], -1)


def attend(q, k, v, key_mask=None):
    """Bidirectional softmax attention over [B, H, S, D]; key/value heads shared by query groups;
    ``key_mask`` [B, Sk] False on padded keys."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], -math.inf)
    return torch.softmax(scores, -1) @ v


def heads(t, n):  # [B, S, n * D] -> [B, n, S, D]
    return t.view(t.shape[0], t.shape[1], n, -1).transpose(1, 2)


def merge(t):  # [B, H, S, D] -> [B, S, H * D]
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


def layer_norm(x, w, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps) * w


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def ref_dit(sd, prefix, x, sigma, n_heads):
    """SEDD's DiT (MDLM's backbone): adaLN blocks over sinusoidal sigma features; raw output."""
    p = lambda n: sd[prefix + n].to(f64)  # noqa: E731
    lin = lambda t, n, bias=True: t @ p(n + ".weight").T + (p(n + ".bias") if bias else 0)  # noqa: E731
    h = p("vocab_embed.embedding")[x]
    freqs = torch.exp(-math.log(10000.0) * torch.arange(128, dtype=f64) / 128)
    args = sigma.to(f64)[:, None] * freqs[None]
    t = torch.cat([torch.cos(args), torch.sin(args)], -1)
    c = F.silu(lin(F.silu(lin(t, "sigma_map.mlp.0")), "sigma_map.mlp.2"))
    n_blocks = len({k.removeprefix(prefix).split(".")[1] for k in sd if k.startswith(prefix + "blocks.")})
    for i in range(n_blocks):
        b = f"blocks.{i}."
        sh1, sc1, g1, sh2, sc2, g2 = (m[:, None] for m in lin(c, b + "adaLN_modulation").chunk(6, -1))
        a = layer_norm(h, p(b + "norm1.weight")) * (1 + sc1) + sh1
        q, k, v = lin(a, b + "attn_qkv", bias=False).view(*x.shape, 3, -1).unbind(2)
        q, k, v = heads(q, n_heads), heads(k, n_heads), heads(v, n_heads)
        h = h + g1 * lin(merge(attend(rope(q, 10000.0), rope(k, 10000.0), v)), b + "attn_out", bias=False)
        m = layer_norm(h, p(b + "norm2.weight")) * (1 + sc2) + sh2
        h = h + g2 * lin(F.gelu(lin(m, b + "mlp.0"), approximate="tanh"), b + "mlp.2")
    shift, scale = (m[:, None] for m in lin(c, "output_layer.adaLN_modulation").chunk(2, -1))
    return lin(layer_norm(h, p("output_layer.norm_final.weight")) * (1 + scale) + shift, "output_layer.linear")


def sedd_log_score(raw, x, sigma):
    """SEDD.forward's tail: scale by sigma (absorbing graph), then 0 at the input token."""
    esigm1 = torch.where(sigma < 0.5, torch.expm1(sigma), sigma.exp() - 1).to(f64)
    out = raw - esigm1.log()[:, None, None] - math.log(raw.shape[-1] - 1)
    return out.scatter(-1, x[..., None], 0.0)


def ref_llama(sd, names, x, *, n_heads, n_kv, theta, eps, mask=None, start=0, cached=None, record=None):
    """A bidirectional LLaMA/Qwen2 stack: RMSNorm, RoPE, GQA, SwiGLU, optional q/k/v biases.

    ``mask`` [B, L] (False on padding) makes it Dream's padded forward (generation_utils): padded keys
    excluded, rotary positions cumsum(mask) - 1, counted from each row's first real token. ``x``
    then holds the tokens at [start, start + S) of an L-token canvas, and their queries attend over
    all L keys: their own fresh ones and, elsewhere, ``cached[layer] = (k, v)`` [B, Hkv, L, D] (a
    Fast-dLLM KV cache, as a full forward left them). ``record``, a list, receives each layer's
    (k, v) over the fed positions, RoPE applied."""
    p = lambda n: sd[n].to(f64)  # noqa: E731
    lin = lambda t, n: t @ p(n + ".weight").T + (p(n + ".bias") if n + ".bias" in sd else 0)  # noqa: E731
    S = x.shape[1]
    positions = None if mask is None else (mask.long().cumsum(-1) - 1).clamp(min=0)[:, start:start + S]
    h = p(names["embed"])[x]
    i = 0
    while names["q"].format(i=i) + ".weight" in sd:
        n = {k: v.format(i=i) for k, v in names.items()}
        a = rms_norm(h, p(n["attn_norm"]), eps)
        q, k, v = heads(lin(a, n["q"]), n_heads), heads(lin(a, n["k"]), n_kv), heads(lin(a, n["v"]), n_kv)
        q, k = rope(q, theta, positions), rope(k, theta, positions)
        if record is not None:
            record.append((k, v))
        if cached is not None:
            k, v = (c.clone().index_copy_(2, torch.arange(start, start + S), t) for c, t in zip(cached[i], (k, v)))
        h = h + lin(merge(attend(q, k, v, mask)), n["o"])
        m = rms_norm(h, p(n["mlp_norm"]), eps)
        h = h + lin(F.silu(lin(m, n["gate"])) * lin(m, n["up"]), n["down"])
        i += 1
    return rms_norm(h, p(names["norm"]), eps) @ p(names["head"]).T


LLADA_NAMES = dict(embed="model.transformer.wte.weight", norm="model.transformer.ln_f.weight",
                   head="model.transformer.ff_out.weight", attn_norm="model.transformer.blocks.{i}.attn_norm.weight",
                   q="model.transformer.blocks.{i}.q_proj", k="model.transformer.blocks.{i}.k_proj",
                   v="model.transformer.blocks.{i}.v_proj", o="model.transformer.blocks.{i}.attn_out",
                   mlp_norm="model.transformer.blocks.{i}.ff_norm.weight", gate="model.transformer.blocks.{i}.ff_proj",
                   up="model.transformer.blocks.{i}.up_proj", down="model.transformer.blocks.{i}.ff_out")
DREAM_NAMES = dict(embed="model.embed_tokens.weight", norm="model.norm.weight", head="lm_head.weight",
                   attn_norm="model.layers.{i}.input_layernorm.weight", q="model.layers.{i}.self_attn.q_proj",
                   k="model.layers.{i}.self_attn.k_proj", v="model.layers.{i}.self_attn.v_proj",
                   o="model.layers.{i}.self_attn.o_proj", mlp_norm="model.layers.{i}.post_attention_layernorm.weight",
                   gate="model.layers.{i}.mlp.gate_proj", up="model.layers.{i}.mlp.up_proj",
                   down="model.layers.{i}.mlp.down_proj")


# ------------------------------ tiny checkpoints, published layouts ------------------------------

def random_weights(shapes: dict, seed: int) -> dict:
    """Matrices ~ N(0, 1/fan_in), norm weights ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2): nothing zero."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=g)
        if len(shape) == 2:
            t = t / math.sqrt(shape[1])
        elif "norm" in name:
            t = 1 + 0.1 * t
        else:
            t = 0.1 * t
        out[name] = t.contiguous()
    return out


def inv_freq(head_dim, base=10000.0):
    return 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def dit_shapes(prefix, V, d, cond, layers):
    s = {"vocab_embed.embedding": (V, d), "sigma_map.mlp.0.weight": (cond, 256), "sigma_map.mlp.0.bias": (cond,),
         "sigma_map.mlp.2.weight": (cond, cond), "sigma_map.mlp.2.bias": (cond,),
         "output_layer.norm_final.weight": (d,), "output_layer.linear.weight": (V, d), "output_layer.linear.bias": (V,),
         "output_layer.adaLN_modulation.weight": (2 * d, cond), "output_layer.adaLN_modulation.bias": (2 * d,)}
    for i in range(layers):
        b = f"blocks.{i}."
        s.update({b + "norm1.weight": (d,), b + "attn_qkv.weight": (3 * d, d), b + "attn_out.weight": (d, d),
                  b + "norm2.weight": (d,), b + "mlp.0.weight": (4 * d, d), b + "mlp.0.bias": (4 * d,),
                  b + "mlp.2.weight": (d, 4 * d), b + "mlp.2.bias": (d,), b + "adaLN_modulation.weight": (6 * d, cond),
                  b + "adaLN_modulation.bias": (6 * d,)})
    return {prefix + k: v for k, v in s.items()}


def llama_shapes(names, V, d, n_heads, n_kv, hidden, layers, qkv_bias):
    hd = d // n_heads
    s = {names["embed"]: (V, d), names["norm"]: (d,), names["head"]: (V, d)}
    for i in range(layers):
        n = {k: v.format(i=i) for k, v in names.items()}
        s.update({n["attn_norm"]: (d,), n["q"] + ".weight": (d, d), n["k"] + ".weight": (n_kv * hd, d),
                  n["v"] + ".weight": (n_kv * hd, d), n["o"] + ".weight": (d, d), n["mlp_norm"]: (d,),
                  n["gate"] + ".weight": (hidden, d), n["up"] + ".weight": (hidden, d), n["down"] + ".weight": (d, hidden)})
        if qkv_bias:
            s.update({n["q"] + ".bias": (d,), n["k"] + ".bias": (n_kv * hd,), n["v"] + ".bias": (n_kv * hd,)})
    return s


def write_sharded(directory, tensors: dict, shards: int) -> None:
    """transformers' layout: model-0000k-of-0000n.safetensors plus model.safetensors.index.json."""
    names = sorted(tensors)
    weight_map = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k::shards]}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_tokenizer(directory, vocab_size: int, specials: dict[int, str]) -> None:
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {specials.get(i, f"w{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(directory / "tokenizer.json"))


SEDD_CONFIG = {"ngpus": 8, "tokens": 40, "training": {"batch_size": 512, "ema": 0.9999},
               "graph": {"type": "absorb", "file": "data", "report_all": False},
               "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
               "model": {"name": "small", "type": "ddit", "hidden_size": 48, "cond_dim": 24, "length": 32,
                         "n_blocks": 2, "n_heads": 3, "scale_by_sigma": True, "dropout": 0.1}}
MDLM_CONFIG = {"architectures": ["MDLM"], "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig",
                                                       "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
               "model_type": "mdlm", "vocab_size": 41, "model_length": 32, "hidden_dim": 48, "cond_dim": 24,
               "n_blocks": 2, "n_heads": 3, "dropout": 0.1, "time_conditioning": False, "return_dict": False,
               "torch_dtype": "float32", "transformers_version": "4.38.2"}
LLADA_CONFIG = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": 48, "n_heads": 3, "n_kv_heads": 3,
                "n_layers": 2, "mlp_hidden_size": 80, "mlp_ratio": 4, "vocab_size": 96, "embedding_size": 96,
                "max_sequence_length": 64, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "mask_token_id": 90,
                "eos_token_id": 88, "pad_token_id": 88, "activation_type": "silu", "block_type": "llama",
                "layer_norm_type": "rms", "layer_norm_with_affine": True, "bias_for_layer_norm": False,
                "include_bias": False, "include_qkv_bias": False, "weight_tying": False, "attention_layer_norm": False,
                "input_emb_norm": False, "scale_logits": False, "alibi": False, "rope": True,
                "multi_query_attention": None, "flash_attention": False, "precision": "amp_bf16"}
DREAM_CONFIG = {"architectures": ["DreamModel"], "model_type": "Dream", "hidden_size": 64, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 72, "vocab_size": 100,
                "max_position_embeddings": 64, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "mask_token_id": 97,
                "pad_token_id": 95, "bos_token_id": 95, "eos_token_id": 95, "hidden_act": "silu",
                "tie_word_embeddings": False, "use_sliding_window": False, "rope_scaling": None,
                "torch_dtype": "bfloat16", "attention_dropout": 0.0}


def make_checkpoint(directory, family: str, *, weights_file: str | None = None, config_edit=None, tokenizer=True):
    """Write a tiny checkpoint of `family` into `directory`; returns its tensors (published names)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps({"sedd": SEDD_CONFIG, "mdlm": MDLM_CONFIG, "llada": LLADA_CONFIG,
                                    "dream": DREAM_CONFIG}[family]))
    if config_edit:
        config_edit(config)
    if family in ("sedd", "mdlm"):
        prefix = "" if family == "sedd" else "backbone."
        V = SEDD_CONFIG["tokens"] + 1 if family == "sedd" else MDLM_CONFIG["vocab_size"]
        tensors = random_weights(dit_shapes(prefix, V, 48, 24, 2), seed=1 if family == "sedd" else 2)
        tensors[prefix + "rotary_emb.inv_freq"] = inv_freq(16)  # a persistent buffer in both codebases
        weights_file = weights_file or ("pytorch_model.bin" if family == "sedd" else "model.safetensors")
        if weights_file.endswith(".bin"):
            torch.save(tensors, directory / weights_file)
        else:
            save_file(tensors, str(directory / weights_file), metadata={"format": "pt"})
    elif family == "llada":
        tensors = random_weights(llama_shapes(LLADA_NAMES, 96, 48, 3, 3, 80, 2, False), seed=3)
        write_sharded(directory, tensors, 2)
        if tokenizer:
            write_tokenizer(directory, 96, {90: "<|mdm_mask|>", 88: "<|eot_id|>"})
    else:
        tensors = random_weights(llama_shapes(DREAM_NAMES, 100, 64, 4, 2, 72, 2, True), seed=4)
        write_sharded(directory, tensors, 3)
        if tokenizer:
            write_tokenizer(directory, 100, {97: "<|mask|>", 95: "<|endoftext|>"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return tensors


def tokens(V, shape=(2, 13), seed=0):
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------- tests -------------------------------------------

@pytest.mark.parametrize("weights_file", ["pytorch_model.bin", "model.safetensors"])
def test_sedd_matches_published_architecture(tmp_path, weights_file):
    if weights_file == "pytorch_model.bin":  # torch maps it by its path as text: from a folder whose name is not
        tmp_path = tmp_path / "caf\udce9"  # UTF-8, as a non-ASCII name reaches Python under an ASCII locale
    sd = make_checkpoint(tmp_path, "sedd", weights_file=weights_file)
    model = from_pretrained(tmp_path)
    x = tokens(41)
    sigma = torch.tensor([0.3, 2.5])
    out = model(x, sigma)
    ref = ref_dit(sd, "", x, sigma, 3)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # the samplers' path: the fused adaLN kernels, which autograd leaves out
        torch.testing.assert_close(model(x, sigma).double(), ref, rtol=1e-4, atol=1e-4)
    # dllm's kernels turn the raw output into SEDD's log-score; its reference does the same math
    torch.testing.assert_close(log_score(out.double(), x, sigma.double(), model.graph.scale_by_sigma),
                               sedd_log_score(ref, x, sigma), rtol=1e-4, atol=1e-4)
    assert isinstance(model.graph, Absorbing) and model.graph.vocab_size == 40 and model.graph.scale_by_sigma
    assert isinstance(model.noise, LogLinear) and model.time_conditioned
    assert model.mask_id == 40 and model.tokenizer is None and model.layout == "sedd"


def test_mdlm_matches_published_architecture(tmp_path):
    sd = make_checkpoint(tmp_path, "mdlm")
    model = from_pretrained(tmp_path)
    x = tokens(41)
    ref = ref_dit(sd, "backbone.", x, torch.zeros(2), 3)  # time_conditioning False: sigma is zeroed
    torch.testing.assert_close(model(x).double(), ref, rtol=1e-4, atol=1e-4)
    assert model.mask_id == 40 and not model.time_conditioned and model.logits_shift == 0


LLAMA_REF = {"llada": (LLADA_NAMES, dict(n_heads=3, n_kv=3, theta=5e5, eps=1e-5)),
             "dream": (DREAM_NAMES, dict(n_heads=4, n_kv=2, theta=1e6, eps=1e-6))}


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_llama_families_match_published_architecture(tmp_path, family):
    sd = make_checkpoint(tmp_path, family)
    model = from_pretrained(tmp_path)
    cfg = LLADA_CONFIG if family == "llada" else DREAM_CONFIG
    x = tokens(cfg.get("vocab_size"), (2, 11))
    names, kw = LLAMA_REF[family]
    ref = ref_llama(sd, names, x, **kw)
    out = model(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    assert model.mask_id == cfg["mask_token_id"] and model.pad_id == cfg["pad_token_id"]
    assert model.eos_id == cfg["eos_token_id"]
    assert model.net.config.max_seq_len == cfg.get("max_sequence_length", cfg.get("max_position_embeddings"))
    assert model.logits_shift == (1 if family == "dream" else 0)
    mask_token = "<|mdm_mask|>" if family == "llada" else "<|mask|>"
    assert model.tokenizer.token_to_id(mask_token) == model.mask_id


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_left_padded_rows_match_the_published_padded_forward(tmp_path, family):
    # As the samplers run it (no_grad, so the inference kernels), left-padded rows, without a cache
    # (per-row lengths) and with one (a key mask), against Dream's padded forward: padded keys
    # excluded, RoPE counted from each row's first real token. dllm counts from the canvas's first
    # position instead, which RoPE's relative scores make the same function.
    sd = make_checkpoint(tmp_path, family)
    model = from_pretrained(tmp_path)
    names, kw = LLAMA_REF[family]
    x = tokens(model.vocab_size, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, :4] = False
    mask[2, :9] = False
    ref = ref_llama(sd, names, x, mask=mask, **kw)
    with torch.no_grad():
        outs = [model(x, attention_mask=mask), model(x, attention_mask=mask, cache=model.new_kv_cache(3, 11))]
    for out in outs:
        for row in range(3):
            torch.testing.assert_close(out[row, mask[row]].double(), ref[row, mask[row]], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("span", [(9, 13), (9, 20)], ids=["dual", "prefix"])
def test_a_cached_step_attends_over_the_refreshs_keys(tmp_path, span):
    # Fast-dLLM's caches on a deep model: after a refresh over canvas x0, a step on x1 (tokens
    # committed since) feeds [lo, hi) only; each layer's queries attend over the fed positions' fresh
    # keys and every other position's keys as the refresh computed them (stale), padding excluded.
    sd = make_checkpoint(tmp_path, "dream")
    model = from_pretrained(tmp_path)
    names, kw = LLAMA_REF["dream"]
    x0 = tokens(model.vocab_size, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, :3] = False
    refresh: list = []
    ref_model = ref_llama(sd, names, x0, mask=mask, record=refresh, **kw)
    lo, hi = span
    x1 = x0.clone()
    x1[:, lo:hi] = tokens(model.vocab_size, (2, hi - lo), seed=1)
    ref = ref_llama(sd, names, x1[:, lo:hi], mask=mask, start=lo, cached=refresh, **kw)
    kv = model.new_kv_cache(2, 20)
    with torch.no_grad():
        # (padded rows' own outputs follow no convention: compared on real tokens)
        torch.testing.assert_close(model(x0, attention_mask=mask, cache=kv, start=0)[mask].double(), ref_model[mask],
                                   rtol=1e-4, atol=1e-4)
        out = model(x1[:, lo:hi], attention_mask=mask, cache=kv, start=lo)
    assert (ref - ref_llama(sd, names, x1, mask=mask, **kw)[:, lo:hi]).abs().max() > 1e-2  # the cache is stale
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["dream", "sedd"])
def test_bfloat16_load_is_within_bf16_tolerance(tmp_path, family):
    sd = make_checkpoint(tmp_path, family)
    model = from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    if family == "dream":
        x = tokens(100, (2, 11))
        out, ref = model(x), ref_llama(sd, DREAM_NAMES, x, n_heads=4, n_kv=2, theta=1e6, eps=1e-6)
    else:
        x, sigma = tokens(41), torch.tensor([0.3, 2.5])
        out, ref = model(x, sigma), ref_dit(sd, "", x, sigma, 3)
    err = (out.double() - ref).abs().max() / ref.abs().max()
    assert err < 3e-2, err


def test_mask_id_from_tokenizer_when_config_has_none(tmp_path):
    make_checkpoint(tmp_path, "llada", config_edit=lambda c: c.pop("mask_token_id"))
    assert from_pretrained(tmp_path).mask_id == 90


def test_special_ids_must_agree_and_exist(tmp_path):
    make_checkpoint(tmp_path / "a", "dream", config_edit=lambda c: c.update(mask_token_id=96))
    with pytest.raises(ValueError, match=r"config.json': mask_token_id=96 but tokenizer.json maps '<\|mask\|>' to 97"):
        from_pretrained(tmp_path / "a")
    make_checkpoint(tmp_path / "b", "llada", config_edit=lambda c: c.pop("mask_token_id"), tokenizer=False)
    with pytest.raises(ValueError, match="no mask token id"):
        from_pretrained(tmp_path / "b")


def _rewrite_shard(directory, file, edit, *, reindex: bool):
    part = load_file(str(directory / file))
    edit(part)
    save_file(part, str(directory / file))
    if reindex:
        index_path = directory / "model.safetensors.index.json"
        index = json.loads(index_path.read_text())
        index["weight_map"] |= dict.fromkeys(part, file)
        index_path.write_text(json.dumps(index))


def test_missing_unexpected_and_misshapen_weights_are_named(tmp_path):
    shard2 = "model-00002-of-00002.safetensors"
    make_checkpoint(tmp_path / "missing", "llada")
    victim = "model.transformer.blocks.1.up_proj.weight"
    owner = json.loads((tmp_path / "missing" / "model.safetensors.index.json").read_text())["weight_map"][victim]
    _rewrite_shard(tmp_path / "missing", owner, lambda part: part.pop(victim), reindex=False)  # the index still lists it
    with pytest.raises(ValueError, match=rf"missing weights {victim} \(expected in {owner}\)$"):
        from_pretrained(tmp_path / "missing")

    make_checkpoint(tmp_path / "nameless", "llada")
    index_path = tmp_path / "nameless" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"][victim] = None
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f"maps '{victim}' to None, not a shard's file name"):
        from_pretrained(tmp_path / "nameless")

    make_checkpoint(tmp_path / "extra", "llada")
    _rewrite_shard(tmp_path / "extra", shard2, lambda part: part.update({"model.transformer.blocks.0.q_norm.weight":
                                                                        torch.ones(48)}), reindex=True)
    with pytest.raises(ValueError, match=rf"unexpected weights model.transformer.blocks.0.q_norm.weight \(in {shard2}\)$"):
        from_pretrained(tmp_path / "extra")

    sd = make_checkpoint(tmp_path / "shape", "mdlm")
    sd["backbone.blocks.1.attn_out.weight"] = torch.ones(48, 47)
    save_file(sd, str(tmp_path / "shape" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"backbone.blocks.1.attn_out.weight in model.safetensors has shape "
                                         r"\(48, 47\), but config.json implies \(48, 48\)"):
        from_pretrained(tmp_path / "shape")


def test_unsupported_options_and_unknown_layouts_are_refused(tmp_path):
    make_checkpoint(tmp_path / "tied", "llada", config_edit=lambda c: c.update(weight_tying=True))
    with pytest.raises(ValueError, match=r"config.json': LLaDA checkpoint options \{'weight_tying': True\} are not supported"):
        from_pretrained(tmp_path / "tied")
    make_checkpoint(tmp_path / "rope", "sedd")
    sd = torch.load(tmp_path / "rope" / "pytorch_model.bin")
    sd["rotary_emb.inv_freq"] = inv_freq(16, 500.0)
    torch.save(sd, tmp_path / "rope" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="rotary buffer rotary_emb.inv_freq in pytorch_model.bin does not match"):
        from_pretrained(tmp_path / "rope")
    make_checkpoint(tmp_path / "gpt2", "mdlm", config_edit=lambda c: c.update(model_type="gpt2"))
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        from_pretrained(tmp_path / "gpt2")
    make_checkpoint(tmp_path / "short", "mdlm", config_edit=lambda c: c.pop("hidden_dim"))
    with pytest.raises(ValueError, match="lacks 'hidden_dim', which the mdlm layout needs"):
        from_pretrained(tmp_path / "short")
    make_checkpoint(tmp_path / "sigma", "sedd", config_edit=lambda c: c.update(noise={"type": "geometric", "sigma_max": 20}))
    with pytest.raises(ValueError, match="sigma/config.json' lacks 'sigma_min', which the sedd layout needs"):
        from_pretrained(tmp_path / "sigma")
    make_checkpoint(tmp_path / "null", "mdlm", config_edit=lambda c: c.update(model_length=None))
    with pytest.raises(ValueError, match="null/config.json': max_seq_len must be an int, got None"):
        from_pretrained(tmp_path / "null")
    with pytest.raises(ValueError, match="null/config.json': max_seq_len must be an int, got None"):
        DiffusionTransformer.from_pretrained(tmp_path / "null")  # the class's loader names the file too
    make_checkpoint(tmp_path / "cut", "mdlm")
    weights = tmp_path / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        from_pretrained(tmp_path / "cut")


def test_an_unsupported_sedd_graph_or_noise_and_a_folder_without_weights_are_named(tmp_path):
    make_checkpoint(tmp_path / "graph", "sedd", config_edit=lambda c: c["graph"].update(type="blocks"))
    with pytest.raises(ValueError, match=r"SEDD graph type 'blocks' is not supported; expected one of \('absorb', "
                                         r"'uniform'\)"):
        from_pretrained(tmp_path / "graph")
    make_checkpoint(tmp_path / "noise", "sedd", config_edit=lambda c: c.update(noise={"type": "cosine"}))
    with pytest.raises(ValueError, match="SEDD noise type 'cosine' is not supported; expected loglinear or geometric"):
        from_pretrained(tmp_path / "noise")
    make_checkpoint(tmp_path / "bare", "mdlm")
    (tmp_path / "bare" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights in .*bare': expected model.safetensors, "
                                                "model.safetensors.index.json with its shards, or pytorch_model.bin"):
        from_pretrained(tmp_path / "bare")


def test_a_truncated_dllm_folder_is_named(tmp_path):
    from dllm.models import build_model, model_config

    build_model(model_config("tiny", vocab_size=40, hidden=16, heads=2, layers=1)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        from_pretrained(tmp_path)


def test_dllm_folders_still_load_as_their_own_class(tmp_path):
    net = DiffusionTransformer(model_config("tiny", time_conditioning=True, vocab_size=50))
    net.save_pretrained(tmp_path)
    again = from_pretrained(tmp_path)
    assert type(again) is DiffusionTransformer
    x, sigma = tokens(50), torch.tensor([0.5, 1.0])
    torch.testing.assert_close(again(x, sigma), net(x, sigma), rtol=0, atol=0)


@pytest.mark.parametrize("family,sampler", [("sedd", "sedd-analytic"), ("mdlm", "mdlm"), ("llada", "llada"),
                                            ("dream", "dream")])
def test_generate_runs_each_family(tmp_path, family, sampler):
    make_checkpoint(tmp_path, family)
    model = from_pretrained(tmp_path)
    prompt = torch.tensor([[3, 7, 5], [1, 2, 4]])
    torch.manual_seed(0)
    out = dllm.generate(model, prompt, gen_length=8, steps=4, sampler=sampler).sequences
    assert out.shape == (2, 11) and torch.equal(out[:, :3], prompt)
    assert not (out == model.mask_id).any()


@pytest.mark.parametrize("family,kind", [("sedd", "score"), ("mdlm", "masked"), ("llada", "masked"),
                                         ("dream", "masked")])
def test_load_for_sampling_reads_each_family(tmp_path, family, kind):
    # what `dllm sample` runs on a published folder: the kind picks the samplers, the tokenizer keeps the
    # model's own mask and end-of-text ids
    make_checkpoint(tmp_path, family)
    if family in ("sedd", "mdlm"):
        write_tokenizer(tmp_path, 40, {})  # GPT-2's stand-in; the mask is id 40, past its vocabulary
    model, tok, got = dllm.load_for_sampling(tmp_path)
    assert got == kind and model.layout == family and tok.kind == "published"
    assert tok.mask_id == model.mask_id and tok.vocab_size == model.net.config.vocab_size
    assert model.max_seq_len == model.net.config.max_seq_len  # bounds dllm.generate's canvas
    if family in ("llada", "dream"):
        config = LLADA_CONFIG if family == "llada" else DREAM_CONFIG
        assert tok.eos_id == model.eos_id == config["eos_token_id"]


@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint", "empty"])
def test_an_unreadable_pytorch_model_bin_is_named(tmp_path, damage):
    make_checkpoint(tmp_path, "sedd")
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes({"truncated": weights.read_bytes()[:20000], "not a checkpoint": b"<html>404</html>",
                         "empty": b""}[damage])
    with pytest.raises(ValueError, match=r"pytorch_model.bin' is not a readable PyTorch checkpoint \(.+\): an "
                                         r"incomplete copy\?$"):
        from_pretrained(tmp_path)


def test_a_legacy_pytorch_model_bin_loads(tmp_path):
    sd = make_checkpoint(tmp_path, "sedd")
    torch.save(sd, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    x, sigma = tokens(41), torch.tensor([0.3, 2.5])
    torch.testing.assert_close(from_pretrained(tmp_path)(x, sigma).double(), ref_dit(sd, "", x, sigma, 3),
                               rtol=1e-4, atol=1e-4)


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    make_checkpoint(tmp_path, "mdlm")
    write_tokenizer(tmp_path, 60, {})  # the model's vocabulary has 41 entries
    with pytest.raises(ValueError, match=r"tokenizer.json' has 60 entries but the model's vocabulary has 41"):
        from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')  # no model in it
    with pytest.raises(ValueError, match=r"tokenizer.json' is not a valid tokenizer.json"):
        from_pretrained(tmp_path)


def test_bad_config_json_is_named(tmp_path):
    make_checkpoint(tmp_path, "mdlm")
    config = tmp_path / "config.json"
    config.write_text("{bad")
    with pytest.raises(ValueError, match=r"config.json' is not valid JSON \(.+ at line 1 column 2\)"):
        from_pretrained(tmp_path)
    config.write_text("[1]")
    with pytest.raises(ValueError, match="config.json' must hold a JSON object, not a list"):
        from_pretrained(tmp_path)


def test_missing_folders_and_run_folders_get_a_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match="'.*nowhere' does not exist"):
        from_pretrained(tmp_path / "nowhere")
    DiffusionTransformer(model_config("tiny", vocab_size=50)).save_pretrained(tmp_path / "run" / "model")
    with pytest.raises(FileNotFoundError, match=r"no config.json in '.*run'; did you mean '.*run/model'\?"):
        from_pretrained(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"no config.json in '.*run'; did you mean '.*run/model'\?"):
        dllm.data.tokenizer_for_model(tmp_path / "run")


@pytest.mark.parametrize("family", ["mdlm", "dream"])
def test_devices_and_dtypes_by_name(tmp_path, family):
    make_checkpoint(tmp_path / "pub", family)
    DiffusionTransformer(model_config("tiny", vocab_size=50)).save_pretrained(tmp_path / "own")
    for folder in ("pub", "own"):
        for location in ("cpu:0", torch.device("cpu", 0)):  # safetensors takes only "cpu"
            assert next(from_pretrained(tmp_path / folder, map_location=location).parameters()).device.type == "cpu"
        for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32)):
            assert next(from_pretrained(tmp_path / folder, dtype=name).parameters()).dtype == dtype
        with pytest.raises(ValueError, match="dtype must be a floating type .*, got torch.int64"):
            from_pretrained(tmp_path / folder, dtype=torch.int64)
        with pytest.raises(ValueError, match="dtype must be a floating type .*, got 'bf16'"):
            from_pretrained(tmp_path / folder, dtype="bf16")
        with pytest.raises(TypeError, match="dtype must be a torch.dtype or its name"):
            from_pretrained(tmp_path / folder, dtype=2)
        with pytest.raises(ValueError, match="map_location 'bogus' is not a torch device"):
            from_pretrained(tmp_path / folder, map_location="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="map_location 'cuda:1': no CUDA device is visible"):
            from_pretrained(tmp_path / "pub", map_location="cuda:1")


def test_a_model_class_takes_the_network_of_a_published_folder(tmp_path):
    from dllm.models import LLaDAModel

    make_checkpoint(tmp_path / "mdlm", "mdlm")
    make_checkpoint(tmp_path / "llada", "llada")
    net = DiffusionTransformer.from_pretrained(tmp_path / "mdlm")
    assert type(net) is DiffusionTransformer
    x = tokens(41)
    torch.testing.assert_close(net(x, torch.zeros(2)), from_pretrained(tmp_path / "mdlm")(x), rtol=0, atol=0)
    assert type(LLaDAModel.from_pretrained(tmp_path / "llada", dtype="bfloat16")) is LLaDAModel
    with pytest.raises(TypeError, match="holds a LLaDAModel, not a DiffusionTransformer"):
        DiffusionTransformer.from_pretrained(tmp_path / "llada")


def test_a_dllm_folder_whose_config_disagrees_with_its_weights(tmp_path):
    DiffusionTransformer(model_config("tiny", vocab_size=50, hidden=32, heads=2, layers=1)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["hidden"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"^'.*' does not match its config.json: weight vocab_embed in "
                                         r"model.safetensors has shape \(50, 32\), but config.json implies \(50, 64\)$"):
        from_pretrained(tmp_path)
    config["model"].update(hidden=32, layers=2)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model.safetensors lacks weight blocks.1.\S+$"):
        from_pretrained(tmp_path)


def test_a_half_precision_checkpoint_keeps_its_rounded_rotary_buffer(tmp_path):
    make_checkpoint(tmp_path, "mdlm")
    weights = tmp_path / "model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}, str(weights))
    assert from_pretrained(tmp_path, dtype="bfloat16").net.config.rope_base == 10000.0


def test_config_ids_and_shard_indexes_that_are_not_what_they_should_be(tmp_path):
    make_checkpoint(tmp_path / "eos", "dream", config_edit=lambda c: c.update(eos_token_id=[95, 96]))
    assert from_pretrained(tmp_path / "eos").eos_id == 95  # transformers configs may list several end ids
    for key, value, message in [("mask_token_id", [97, 1], "mask_token_id=[97, 1]: expected one token id"),
                                ("pad_token_id", "0", "pad_token_id='0': expected a token id")]:
        make_checkpoint(tmp_path / key, "dream", config_edit=lambda c: c.update({key: value}))
        with pytest.raises(ValueError, match=re.escape(f"config.json': {message}")):
            from_pretrained(tmp_path / key)
    make_checkpoint(tmp_path / "index", "llada")
    index = tmp_path / "index" / "model.safetensors.index.json"
    index.write_text(index.read_text()[:50])
    with pytest.raises(ValueError, match="model.safetensors.index.json' is not a shard index .*an incomplete copy"):
        from_pretrained(tmp_path / "index")


def test_a_llada_config_must_state_what_its_weights_cannot_show(tmp_path):
    make_checkpoint(tmp_path, "llada", config_edit=lambda c: [c.pop(k) for k in ("rope", "layer_norm_type")])
    with pytest.raises(ValueError, match=r"does not state \['rope', 'layer_norm_type'\]"):
        from_pretrained(tmp_path)


def test_published_models_name_their_vocabulary_and_dreams_bare_network_warns(tmp_path):
    from dllm.models import LLaDAModel

    make_checkpoint(tmp_path / "llada", "llada")
    model = from_pretrained(tmp_path / "llada")
    with pytest.raises(ValueError, match="the prompt holds token id 200, outside the model's vocabulary of 96"):
        dllm.generate(model, torch.tensor([[3, 200]]), gen_length=4, steps=4, sampler="llada")
    make_checkpoint(tmp_path / "dream", "dream")
    with pytest.warns(UserWarning, match="predicts position i from row i - 1"):
        LLaDAModel.from_pretrained(tmp_path / "dream")


def test_dllm_sample_checks_a_published_models_window_first(tmp_path, capsys):
    from dllm.cli import main

    make_checkpoint(tmp_path, "mdlm")  # a 32-token window
    write_tokenizer(tmp_path, 40, {})
    with pytest.raises(SystemExit):
        main(["sample", str(tmp_path), "--prompt", "w1 w2", "--gen-length", "40", "--device", "cpu"])
    assert "--gen-length 40 does not fit: the model takes 32 tokens" in capsys.readouterr().err


def test_a_published_tokenizer_never_truncates_or_pads_a_prompt(tmp_path):
    from dllm.data.tokenizer import PublishedTokenizer

    write_tokenizer(tmp_path, 40, {})
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tok.enable_truncation(max_length=2)  # a tokenizer.json made for batched model input
    tok.enable_padding(length=8)
    assert PublishedTokenizer(tok, mask_id=39).encode("w1 w2 w3").tolist() == [1, 2, 3]


def test_sedd_uniform_graph_and_geometric_noise_load(tmp_path):
    """The options SEDD's released configs leave at absorb / log-linear: the uniform graph (no mask
    entry, so K = tokens, and no sigma scaling) and the geometric schedule's own range."""
    def uniform_geometric(c):
        c["graph"]["type"] = "uniform"
        c["model"]["scale_by_sigma"] = False
        c["noise"] = {"type": "geometric", "sigma_min": 1e-3, "sigma_max": 15}

    make_checkpoint(tmp_path, "sedd", config_edit=uniform_geometric)
    sd = random_weights(dit_shapes("", 40, 48, 24, 2), seed=5)  # K = tokens: the uniform graph has no mask
    torch.save(sd, tmp_path / "pytorch_model.bin")
    model = from_pretrained(tmp_path)
    x, sigma = tokens(40), torch.tensor([0.3, 2.5])
    torch.testing.assert_close(model(x, sigma).double(), ref_dit(sd, "", x, sigma, 3), rtol=1e-4, atol=1e-4)
    assert isinstance(model.graph, Uniform) and model.graph.num_classes == 40 and not model.graph.scale_by_sigma
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    sig, dsig = model.noise(t)
    assert isinstance(model.noise, Geometric)
    torch.testing.assert_close(sig, 1e-3 ** (1 - t) * 15 ** t)
    torch.testing.assert_close(dsig, sig * math.log(15 / 1e-3))


def test_llada_grouped_query_attention_qkv_bias_and_mlp_ratio_load(tmp_path):
    """n_kv_heads < n_heads, include_qkv_bias, and mlp_hidden_size null (width mlp_ratio * d_model)."""
    make_checkpoint(tmp_path, "llada",
                    config_edit=lambda c: c.update(n_kv_heads=1, include_qkv_bias=True, mlp_hidden_size=None))
    sd = random_weights(llama_shapes(LLADA_NAMES, 96, 48, 3, 1, 4 * 48, 2, True), seed=6)
    for shard in tmp_path.glob("model-*.safetensors"):
        shard.unlink()
    write_sharded(tmp_path, sd, 2)
    model = from_pretrained(tmp_path)
    x = tokens(96, (2, 11))
    want = ref_llama(sd, LLADA_NAMES, x, n_heads=3, n_kv=1, theta=5e5, eps=1e-5)
    torch.testing.assert_close(model(x).double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family,eps", [("llada", 1e-5), ("dream", 1e-6)])
def test_an_omitted_rope_theta_and_rms_norm_eps_take_the_published_codes_defaults(tmp_path, family, eps):
    # LLaDA's ModelConfig (configuration_llada.py) and DreamConfig default rope_theta to 10000 and
    # rms_norm_eps to 1e-5 and 1e-6; a config.json may leave them out
    sd = make_checkpoint(tmp_path, family, config_edit=lambda c: [c.pop(k) for k in ("rope_theta", "rms_norm_eps")])
    model = from_pretrained(tmp_path)
    assert (model.net.config.rope_base, model.net.config.norm_eps) == (10000.0, eps)
    names, kw = LLAMA_REF[family]
    x = tokens(model.vocab_size, (2, 11))
    want = ref_llama(sd, names, x, **{**kw, "theta": 10000.0, "eps": eps})
    torch.testing.assert_close(model(x).double(), want, rtol=1e-4, atol=1e-4)


def test_a_time_conditioned_mdlm_sees_sigma(tmp_path):
    sd = make_checkpoint(tmp_path, "mdlm", config_edit=lambda c: c.update(time_conditioning=True))
    model = from_pretrained(tmp_path)
    x, sigma = tokens(41), torch.tensor([0.3, 2.5])
    assert model.time_conditioned
    torch.testing.assert_close(model(x, sigma).double(), ref_dit(sd, "backbone.", x, sigma, 3), rtol=1e-4, atol=1e-4)


def test_special_ids_outside_the_vocabulary_and_dream_options_dllm_lacks_are_refused(tmp_path):
    make_checkpoint(tmp_path / "eos", "llada", config_edit=lambda c: c.update(eos_token_id=96))
    with pytest.raises(ValueError, match=r"eos_id 96 is outside the vocabulary \[0, 96\)"):
        from_pretrained(tmp_path / "eos")
    make_checkpoint(tmp_path / "window", "dream", config_edit=lambda c: c.update(use_sliding_window=True))
    with pytest.raises(ValueError, match="use_sliding_window"):
        from_pretrained(tmp_path / "window")
    make_checkpoint(tmp_path / "head", "dream", config_edit=lambda c: c.update(head_dim=32))
    with pytest.raises(ValueError, match="head_dim 32 differs from hidden_size / num_attention_heads"):
        from_pretrained(tmp_path / "head")


def test_weights_that_are_no_floats_or_no_shard_lists_are_named(tmp_path):
    shard2 = "model-00002-of-00002.safetensors"
    make_checkpoint(tmp_path / "int", "llada")
    victim = "model.transformer.blocks.0.up_proj.weight"
    owner = json.loads((tmp_path / "int" / "model.safetensors.index.json").read_text())["weight_map"][victim]
    _rewrite_shard(tmp_path / "int", owner, lambda part: part.update({victim: part[victim].long()}), reindex=False)
    with pytest.raises(ValueError, match=f"{victim} in {owner} has dtype torch.int64, not a floating type"):
        from_pretrained(tmp_path / "int")
    make_checkpoint(tmp_path / "unlisted", "llada")
    _rewrite_shard(tmp_path / "unlisted", shard2, lambda part: part.update({"extra.weight": torch.ones(2)}),
                   reindex=False)
    with pytest.raises(ValueError, match=f"extra.weight is in {shard2} but model.safetensors.index.json does not list it"):
        from_pretrained(tmp_path / "unlisted")


def test_weights_saved_from_a_wrapped_model_get_a_short_error_naming_the_prefix(tmp_path):
    sd = make_checkpoint(tmp_path, "mdlm")
    save_file({"_orig_mod." + k: v for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"and \d+ more; unexpected weights .* and \d+ more \(every unexpected name "
                                         r"is an expected one behind the prefix '_orig_mod\.'") as error:
        from_pretrained(tmp_path)
    assert len(str(error.value)) < 1200


def test_a_dllm_folder_with_integer_weights_is_refused(tmp_path):
    DiffusionTransformer(model_config("tiny", vocab_size=30, hidden=32, heads=2, layers=1)).save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    name = next(iter(state))
    state[name] = state[name].long()
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=f"weight {re.escape(name)} in model.safetensors has dtype torch.int64"):
        from_pretrained(tmp_path)


def test_sample_passes_block_length_and_the_default_temperature_to_generate(tmp_path, monkeypatch):
    import dllm.sample_cli
    from dllm.cli import main

    make_checkpoint(tmp_path, "llada")
    seen, real = [], dllm.sample_cli.generate

    def spy(*args, **kw):
        seen.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(dllm.sample_cli, "generate", spy)
    common = ["sample", str(tmp_path), "--prompt", "w3 w7", "--device", "cpu", "--gen-length", "8", "--steps", "4"]
    assert main(common + ["--block-length", "4"]) in (0, None)
    assert seen[-1]["block_length"] == 4 and seen[-1]["temperature"] == 0.8  # the documented default
    assert main(common + ["--temperature", "0", "--sampler", "fast-dllm", "--block-length", "2"]) in (0, None)
    assert seen[-1]["block_length"] == 2 and seen[-1]["temperature"] == 0.0 and seen[-1]["sampler"] == "fast-dllm"


def _edited(config, **changes):
    config = json.loads(json.dumps(config))
    for path, value in changes.items():
        *parents, key = path.split("__")
        d = config
        for p in parents:
            d = d[p]
        if value is None:
            d.pop(key)
        else:
            d[key] = value
    return config


def test_stated_config_values_reach_the_network_config(tmp_path):
    """Values a config.json states (other than the published defaults) are taken, not the defaults."""
    cfg = published_network_config(tmp_path, _edited(LLADA_CONFIG, rms_norm_eps=3e-6, embedding_size=128))
    assert cfg.norm_eps == 3e-6 and cfg.vocab_size == 128  # OLMo pads the embedding past vocab_size
    cfg = published_network_config(tmp_path, _edited(LLADA_CONFIG, mlp_hidden_size=None, mlp_ratio=2.5))
    assert cfg.mlp_hidden == 120  # int(2.5 * 48), not int(2.5) * 48
    cfg = published_network_config(tmp_path, _edited(DREAM_CONFIG, rms_norm_eps=2e-5))
    assert cfg.norm_eps == 2e-5
    cfg = published_network_config(tmp_path, _edited(SEDD_CONFIG, model__length=48, model__dropout=0.25))
    assert cfg.max_seq_len == 48 and cfg.dropout == 0.25


def test_an_mdlm_folder_keeps_its_dropout_and_pad_id(tmp_path):
    """MDLM's config.json states its dropout (0.1 in mdlm-owt's) and may state a pad token: a fine-tune
    of the loaded network drops out at that rate, and ragged prompts are padded with that id."""
    cfg = published_network_config(tmp_path, _edited(MDLM_CONFIG, dropout=0.25, model_length=48))
    assert cfg.dropout == 0.25 and cfg.max_seq_len == 48
    assert published_network_config(tmp_path, _edited(MDLM_CONFIG, dropout=None)).dropout == 0.0  # the default
    make_checkpoint(tmp_path / "pad", "mdlm", config_edit=lambda c: c.update(pad_token_id=7))
    model = from_pretrained(tmp_path / "pad")
    assert model.pad_id == 7 and model.mask_id == 40 and model.net.config.dropout == MDLM_CONFIG["dropout"]
    x = tokens(41, (2, 9))
    assert torch.equal(model(x), model(x))  # eval mode: dropout off
    model.train()
    assert not torch.equal(model(x), model(x))  # training: the stated rate
    make_checkpoint(tmp_path / "nopad", "mdlm")
    assert from_pretrained(tmp_path / "nopad").pad_id == 0  # no pad token: the protocol's default


def test_a_boolean_special_id_is_refused(tmp_path):
    """JSON's true is no token id (Python would read it as 1)."""
    make_checkpoint(tmp_path / "eos", "dream", config_edit=lambda c: c.update(eos_token_id=True))
    with pytest.raises(ValueError, match=re.escape("config.json': eos_token_id=True: expected a token id")):
        from_pretrained(tmp_path / "eos")


def test_dreams_pad_id_comes_from_the_tokenizer_when_the_config_has_none(tmp_path):
    # <|endoftext|> is 95 in the tiny tokenizer; the protocol's default (0) would pad with an ordinary token
    make_checkpoint(tmp_path / "a", "dream", config_edit=lambda c: c.pop("pad_token_id"))
    model = from_pretrained(tmp_path / "a")
    assert model.pad_id == 95 and model.mask_id == 97
    # and a config that names another pad than its tokenizer is refused, as for the mask
    make_checkpoint(tmp_path / "b", "dream", config_edit=lambda c: c.update(pad_token_id=94))
    with pytest.raises(ValueError, match=r"pad_token_id=94 but tokenizer.json maps '<\|endoftext\|>' to 95"):
        from_pretrained(tmp_path / "b")


@pytest.mark.parametrize("key, attr", [("eos_token_id", "eos_id"), ("pad_token_id", "pad_id")])
@pytest.mark.parametrize("value", [-1, -96])
def test_negative_special_ids_are_outside_the_vocabulary(tmp_path, key, attr, value):
    make_checkpoint(tmp_path, "llada", config_edit=lambda c: c.update({key: value}))
    with pytest.raises(ValueError, match=rf"{attr} {value} is outside the vocabulary \[0, 96\)"):
        from_pretrained(tmp_path)


def test_sedd_scales_by_sigma_by_default_under_the_absorbing_graph_only(tmp_path):
    def uniform(scale):
        def edit(c):
            c["graph"]["type"] = "uniform"
            c["model"].pop("scale_by_sigma")
            if scale is not None:
                c["model"]["scale_by_sigma"] = scale
        return edit

    for name, scale in (("default", None), ("scaled", True)):
        make_checkpoint(tmp_path / name, "sedd", config_edit=uniform(scale))
        torch.save(random_weights(dit_shapes("", 40, 48, 24, 2), seed=5), tmp_path / name / "pytorch_model.bin")
    # a config without scale_by_sigma: off under the uniform graph, where SEDD asserts it off, on under absorb
    assert not from_pretrained(tmp_path / "default").graph.scale_by_sigma
    with pytest.raises(ValueError, match="scales its output by sigma only under the absorbing graph"):
        from_pretrained(tmp_path / "scaled")
    make_checkpoint(tmp_path / "absorb", "sedd", config_edit=lambda c: c["model"].pop("scale_by_sigma"))
    assert from_pretrained(tmp_path / "absorb").graph.scale_by_sigma


def test_a_pytorch_model_bin_holding_more_than_tensors_is_named(tmp_path):
    sd = make_checkpoint(tmp_path, "sedd")
    torch.save({**sd, "step": 1000, "note": "trained on 8 GPUs"}, tmp_path / "pytorch_model.bin")  # loads weights-only
    with pytest.raises(ValueError, match=r"pytorch_model.bin' does not hold a state dict \(names to tensors\)"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("option", ["rope", "layer_norm_with_affine"])
def test_a_llada_option_stated_false_that_dllm_needs_true_is_refused(tmp_path, option):
    # false is a stated value, not an absent one: no rotary embedding (or norms without weights) would
    # load into dllm's network unchanged in shape and compute something else
    make_checkpoint(tmp_path, "llada", config_edit=lambda c: c.update({option: False}))
    with pytest.raises(ValueError, match=rf"LLaDA checkpoint options \{{'{option}': False\}} are not supported"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("family,option,value", [
    # options of LLaDA's and Dream's code that leave every weight's shape intact: loaded silently, the
    # network would compute something else than the published one
    ("llada", "scale_logits", True), ("llada", "clip_qkv", 8.0), ("llada", "alibi", True),
    ("llada", "layer_norm_type", "default"), ("llada", "block_type", "sequential"),
    ("llada", "activation_type", "gelu"), ("llada", "input_emb_norm", True),
    ("dream", "rope_scaling", {"type": "linear", "factor": 4.0}), ("dream", "hidden_act", "gelu")])
def test_every_option_dllm_does_not_implement_is_refused(tmp_path, family, option, value):
    make_checkpoint(tmp_path, family, config_edit=lambda c: c.update({option: value}))
    with pytest.raises(ValueError, match=rf"checkpoint options \{{'{option}': .*\}} are not supported by dllm"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_saved_rotary_buffer_is_checked_against_the_configs_rope_theta(tmp_path, family):
    # older transformers saved each layer's rotary_emb.inv_freq: at the config's rope_theta it loads
    # (and is not loaded: dllm recomputes it), at another base it is refused
    theta, head_dim = {"llada": 5e5, "dream": 1e6}[family], 16
    prefix = {"llada": "model.transformer.blocks.1.", "dream": "model.layers.1.self_attn."}[family]
    shard = {"llada": "model-00001-of-00002.safetensors", "dream": "model-00001-of-00003.safetensors"}[family]
    for name, base in (("good", theta), ("bad", 10000.0)):
        sd = make_checkpoint(tmp_path / name, family)
        buffer = {prefix + "rotary_emb.inv_freq": inv_freq(head_dim, base)}
        _rewrite_shard(tmp_path / name, shard, lambda part: part.update(buffer), reindex=True)
        if name == "good":
            model = from_pretrained(tmp_path / name)
            names, kw = LLAMA_REF[family]
            x = tokens(model.vocab_size, (2, 7))
            torch.testing.assert_close(model(x).double(), ref_llama(sd, names, x, **kw), rtol=1e-4, atol=1e-4)
        else:
            with pytest.raises(ValueError, match=rf"rotary buffer {prefix}rotary_emb.inv_freq in {shard} does not "
                                                 rf"match head size {head_dim} and rotary base {theta}"):
                from_pretrained(tmp_path / name)


def test_sedds_loglinear_schedule_keeps_its_eps_whatever_sigma_min_says(tmp_path):
    # SEDD builds LogLinearNoise() (eps 1e-3) and ignores sigma_min / sigma_max (1e-4 and 20 in its config);
    # a config without a noise entry takes the log-linear schedule too
    make_checkpoint(tmp_path / "stated", "sedd")
    make_checkpoint(tmp_path / "absent", "sedd", config_edit=lambda c: c.pop("noise"))
    t = torch.tensor([0.0, 0.3, 0.9, 1.0], dtype=torch.float64)
    for name in ("stated", "absent"):
        noise = from_pretrained(tmp_path / name).noise
        assert isinstance(noise, LogLinear)
        sigma, dsigma = noise(t)
        torch.testing.assert_close(1 - torch.exp(-sigma), (1 - 1e-3) * t)  # the mask probability, exactly
        torch.testing.assert_close(dsigma, (1 - 1e-3) / (1 - (1 - 1e-3) * t))


@pytest.mark.parametrize("value", [96, 1000, -1])
def test_a_mask_id_outside_the_vocabulary_is_refused(tmp_path, value):
    # no tokenizer.json to cross-check it: the model would embed a canvas of ids past its table
    make_checkpoint(tmp_path, "llada", config_edit=lambda c: c.update(mask_token_id=value), tokenizer=False)
    with pytest.raises(ValueError, match=rf"mask_id {value} is outside the vocabulary \[0, 96\)"):
        from_pretrained(tmp_path)


def test_a_tokenizers_added_tokens_count_against_the_vocabulary(tmp_path):
    # a tokenizer.json whose special tokens are added tokens (as real ones are) past the model's vocabulary
    make_checkpoint(tmp_path, "mdlm")  # 41 entries
    write_tokenizer(tmp_path, 41, {})
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.add_special_tokens([AddedToken("<|extra|>", special=True)]) == 1
    assert tok.token_to_id("<|extra|>") == 41
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"tokenizer.json' has 42 entries but the model's vocabulary has 41"):
        from_pretrained(tmp_path)


def test_safetensors_are_preferred_to_a_pytorch_model_bin_in_the_same_folder(tmp_path):
    # hub repositories often hold both; dllm reads the memory-mapped safetensors, whatever the .bin holds
    sd = make_checkpoint(tmp_path, "sedd", weights_file="model.safetensors")
    torch.save({k: v * 2 if k != "rotary_emb.inv_freq" else v for k, v in sd.items()}, tmp_path / "pytorch_model.bin")
    x, sigma = tokens(41), torch.tensor([0.3, 2.5])
    torch.testing.assert_close(from_pretrained(tmp_path)(x, sigma).double(), ref_dit(sd, "", x, sigma, 3),
                               rtol=1e-4, atol=1e-4)


def test_a_shard_index_naming_absent_shards_or_none_is_refused(tmp_path):
    make_checkpoint(tmp_path / "absent", "dream")
    (tmp_path / "absent" / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"index.json lists shards that are not in .*: "
                                                r"\['model-00002-of-00003.safetensors'\]"):
        from_pretrained(tmp_path / "absent")
    make_checkpoint(tmp_path / "empty", "dream")
    (tmp_path / "empty" / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {}}))
    with pytest.raises(ValueError, match="model.safetensors.index.json has no weight_map"):
        from_pretrained(tmp_path / "empty")


def test_a_weight_in_another_shard_than_its_index_says_is_named(tmp_path):
    # an index left over from another save: the weight it places in shard 1 now sits in shard 2
    make_checkpoint(tmp_path, "llada")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    victim = next(k for k, f in index.items() if f == "model-00001-of-00002.safetensors")
    moved = {}
    _rewrite_shard(tmp_path, "model-00001-of-00002.safetensors", lambda part: moved.update({victim: part.pop(victim)}),
                   reindex=False)
    _rewrite_shard(tmp_path, "model-00002-of-00002.safetensors", lambda part: part.update(moved), reindex=False)
    with pytest.raises(ValueError, match=rf"{victim} is in model-00002-of-00002.safetensors but "
                                         r"model.safetensors.index.json places it in model-00001-of-00002.safetensors"):
        from_pretrained(tmp_path)


def test_an_empty_eos_token_id_list_is_named(tmp_path):
    make_checkpoint(tmp_path, "dream", config_edit=lambda c: c.update(eos_token_id=[]))
    with pytest.raises(ValueError, match=r"config.json': eos_token_id=\[\]: expected one token id"):
        from_pretrained(tmp_path)
