import json
import math

import numpy as np
import pytest
import torch

from dllm.models import ARTransformer, DiffusionTransformer, LLaDAModel, from_pretrained, model_config, build_model
import dllm
from dllm import ops
from dllm.models import attention as attn_mod
from dllm.models.config import ModelConfig
from dllm.models.layers import RMSNorm, VocabProjection
import torch.nn.functional as F


def _tiny(arch, **kw):
    return model_config("tiny", arch=arch, hidden=64, layers=2, heads=4, vocab_size=50, max_seq_len=32,
                        time_conditioning=arch == "dit", **kw)


def _perturb(model):
    # Zero-initialised output layers would make every model look alike; give them real weights.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("arch,extra", [("dit", {}), ("ar", {}), ("llada", {"kv_heads": 2})])
def test_save_and_from_pretrained_round_trip(tmp_path, arch, extra):
    torch.manual_seed(0)
    m = _perturb(build_model(_tiny(arch, **extra))).eval()
    x = torch.randint(0, 50, (2, 16))
    sigma = torch.tensor([0.3, 1.2])
    m.save_pretrained(tmp_path / arch, note="hello")
    assert {p.name for p in (tmp_path / arch).iterdir()} == {"config.json", "model.safetensors"}
    again = from_pretrained(tmp_path / arch).eval()
    assert type(again) is type(m) and again.config == m.config
    assert torch.equal(m(x, sigma), again(x, sigma))
    assert type(m).from_pretrained(tmp_path / arch).config == m.config
    wrong = LLaDAModel if arch != "llada" else DiffusionTransformer
    with pytest.raises(TypeError, match=f"not a {wrong.__name__}"):
        wrong.from_pretrained(tmp_path / arch)
    (tmp_path / arch / "model.safetensors").unlink()  # a copy that left the weights behind
    with pytest.raises(FileNotFoundError, match="no model.safetensors in"):
        from_pretrained(tmp_path / arch)


def test_from_pretrained_gives_an_eval_model_in_the_saved_dtype(tmp_path):
    torch.manual_seed(0)
    m = _perturb(build_model(_tiny("dit", dropout=0.1))).to(torch.bfloat16).eval()
    x, sigma = torch.randint(0, 50, (2, 30)), torch.tensor([0.3, 1.2])
    m.save_pretrained(tmp_path / "bf16")
    again = from_pretrained(tmp_path / "bf16")
    assert not again.training and next(again.parameters()).dtype == torch.bfloat16
    assert torch.equal(again(x, sigma), m(x, sigma))
    assert next(from_pretrained(tmp_path / "bf16", dtype="float32").parameters()).dtype == torch.float32
    for name, module in m.named_modules():  # mixed precision: float32 norms in a bfloat16 model
        if "norm" in name.split(".")[-1]:
            module.float()
    saved = {name: t.dtype for name, t in m.state_dict().items()}
    assert set(saved.values()) == {torch.bfloat16, torch.float32}
    m.save_pretrained(tmp_path / "mixed")
    assert {name: t.dtype for name, t in from_pretrained(tmp_path / "mixed").state_dict().items()} == saved
    with pytest.raises(ValueError, match="onto the CPU or a CUDA device"):
        from_pretrained(tmp_path / "bf16", map_location="meta")


def test_rotary_frequencies_stay_float32_when_the_model_is_cast():
    m = build_model(_tiny("llada"))
    want = m.rotary.inv_freq.clone()
    m.to(torch.bfloat16)
    assert m.rotary.inv_freq.dtype == torch.float32 and torch.equal(m.rotary.inv_freq, want)


def test_a_failed_save_leaves_the_folder_as_it_was(tmp_path):
    first = _perturb(build_model(_tiny("ar")))
    first.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(TypeError, match="not JSON serializable"):
        build_model(_tiny("dit")).save_pretrained(tmp_path, note=object())
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_sigma_may_be_one_number_or_mdlms_column():
    torch.manual_seed(0)
    m = _perturb(DiffusionTransformer(_tiny("dit"))).eval()
    x = torch.randint(0, 50, (3, 8))
    want = m(x, torch.full((3,), 0.7))
    for sigma in (0.7, torch.tensor(0.7), torch.full((3, 1), 0.7)):
        torch.testing.assert_close(m(x, sigma), want, rtol=0, atol=0)
    for bad in (torch.full((2,), 0.7), torch.full((3, 2), 0.7)):
        with pytest.raises(ValueError, match=r"sigma must be \[B\] = \[3\]"):
            m(x, bad)


def test_zero_init_output_and_sizes():
    m = DiffusionTransformer(_tiny("dit"))
    out = m(torch.randint(0, 50, (2, 8)), torch.tensor([0.1, 2.0]))
    assert out.shape == (2, 8, 50) and out.dtype == torch.float32 and torch.count_nonzero(out) == 0
    small = model_config("small")
    assert (small.hidden, small.layers, small.heads) == (768, 12, 12)
    medium = model_config("medium")
    assert (medium.hidden, medium.layers, medium.heads) == (1024, 24, 16)


def test_bidirectional_versus_causal():
    torch.manual_seed(0)
    x = torch.randint(0, 50, (1, 12))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 50
    for arch, sees_future in (("dit", True), ("llada", True), ("ar", False)):
        m = _perturb(build_model(_tiny(arch))).eval()
        sigma = torch.ones(1) if arch == "dit" else None
        changed = not torch.allclose(m(x, sigma)[0, 0], m(y, sigma)[0, 0])
        assert changed == sees_future, arch


def test_time_conditioning_is_optional():
    torch.manual_seed(0)
    x = torch.randint(0, 50, (2, 8))
    s1, s2 = torch.tensor([0.1, 0.1]), torch.tensor([3.0, 3.0])
    on = _perturb(DiffusionTransformer(_tiny("dit")))
    assert not torch.allclose(on(x, s1), on(x, s2))
    with pytest.raises(ValueError, match="time-conditioned"):
        on(x)  # sigma = 0 would be a guess
    off = _perturb(DiffusionTransformer(model_config("tiny", hidden=64, layers=2, heads=4, vocab_size=50,
                                                     time_conditioning=False)))
    assert torch.equal(off(x, s1), off(x, s2))


def test_ar_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    m = _perturb(ARTransformer(_tiny("ar"))).eval()
    x = torch.randint(0, 50, (2, 10))
    full = m(x)
    cache = m.new_cache(2, 10)
    parts = [m(x[:, :4], cache=cache, start=0)]          # a prompt, then one token at a time
    parts += [m(x[:, i:i + 1], cache=cache, start=i) for i in range(4, 6)]
    position = torch.tensor(6)  # a graphed step's position tensor, updated in place as a graph's input is
    parts.append(m(x[:, 6:7], cache=cache, start=position))
    position.fill_(7)
    parts.append(m(x[:, 7:8], cache=cache, start=position))
    parts.append(m(x[:, 8:], cache=cache, start=8))      # a multi-token chunk after a cached prefix
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
    out = m.generate(x[:, :3], 5, temperature=0)
    assert out.shape == (2, 8) and torch.equal(out[:, :3], x[:, :3])
    # Greedy decoding with the cache equals greedy decoding by full forwards.
    seq = x[:, :3]
    for _ in range(5):
        seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_ar_decoding_checks_its_positions_and_caches_in_the_compute_dtype():
    m = ARTransformer(_tiny("ar")).eval()
    cache = m.new_cache(2, 8)
    with pytest.raises(ValueError, match="a tensor start takes one position, and a KV cache"):
        m(torch.zeros(2, 2, dtype=torch.long), cache=cache, start=torch.tensor(0))
    with pytest.raises(ValueError, match="asked to write position 8"):
        m(torch.zeros(2, 1, dtype=torch.long), cache=cache, start=8)
    # the last new token is never fed back: 30 + 3 tokens fit 32 positions, and decode as full forwards do
    full = _perturb(ARTransformer(_tiny("ar"))).eval()
    seq = prompt = torch.randint(0, 50, (1, 30), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        seq = torch.cat([seq, full(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(full.generate(prompt, 3, temperature=0), seq)
    with pytest.raises(ValueError, match="feed the model 33 positions .* more than max_seq_len=32"):
        m.generate(torch.zeros(1, 30, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA model"):
        m.generate(torch.zeros(1, 1, dtype=torch.long), 3, cuda_graph=True)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0"):
        m.generate(torch.zeros(1, 1, dtype=torch.long), -1)
    assert torch.equal(m.generate(torch.ones(2, 3, dtype=torch.long), 0), torch.ones(2, 3, dtype=torch.long))
    # a prompt that is no [B, P] tensor of ids is named, not met inside the embedding
    for prompt, message in ((torch.ones(1, 1, 2, dtype=torch.long), r"prompt must be an int64 \(or int32\) tensor \[B, P\]"),
                            (torch.ones(1, 2), "got torch.float32"),
                            ([[1, 2], [3]], "rows of one length"),
                            (torch.tensor([[1, m.config.vocab_size]]), rf"prompt ids must lie in \[0, {m.config.vocab_size}\)")):
        with pytest.raises(ValueError, match=message):
            m.generate(prompt, 2)
    assert m.generate(torch.ones(1, 2, dtype=torch.int32), 2, temperature=0).dtype == torch.int64
    # one prompt as a tokenizer gives it (a NumPy array, a list) or as a 1-D tensor: a batch of one
    want = m.generate(torch.tensor([[3, 1, 4]]), 2, temperature=0)
    for one in (np.array([3, 1, 4]), [3, 1, 4], torch.tensor([3, 1, 4])):
        assert torch.equal(m.generate(one, 2, temperature=0), want)
    with pytest.warns(UserWarning, match="dropout on"):  # as dllm.generate warns
        ARTransformer(_tiny("ar", dropout=0.5)).generate(torch.ones(1, 2, dtype=torch.long), 2)
    # Under autocast the projections give bfloat16 keys: a float32 cache would be converted back
    # at every step of every layer.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.new_cache(1, 4).k[0].dtype == torch.bfloat16
        out = m.generate(torch.zeros(1, 2, dtype=torch.long), 3, temperature=0)
    assert m.new_cache(1, 4).k[0].dtype == torch.float32 and out.shape == (1, 5)


def test_ar_generate_checks_its_options_and_devices_as_dllm_generate_does():
    m = ARTransformer(_tiny("ar")).eval()
    prompt = torch.zeros(1, 2, dtype=torch.long)
    for temperature, error, message in ((True, TypeError, "temperature must be a number, got True"),
                                        ("1", TypeError, "temperature must be a number"),
                                        (2 ** 2000, ValueError, "temperature must be finite"),
                                        (-1.0, ValueError, "temperature must be finite and >= 0")):
        with pytest.raises(error, match=message):
            m.generate(prompt, 2, temperature=temperature)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got 'seed'"):
        m.generate(prompt, 2, generator="seed")
    # before any forward, not at the first draw (a CPU machine has no second device but "meta")
    with pytest.raises(ValueError, match="the generator is on cpu but the model is on meta"):
        ARTransformer(_tiny("ar")).to("meta").generate(prompt.to("meta"), 2, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"the prompt is on meta but the model is on cpu: pass prompt.to\('cpu'\)"):
        m.generate(prompt.to("meta"), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ar_generate_refuses_a_generator_or_a_prompt_off_the_cuda_model_before_any_forward():
    m = ARTransformer(_tiny("ar")).eval().cuda()
    prompt = torch.zeros(1, 2, dtype=torch.long, device="cuda")
    for cuda_graph in (False, True):
        with pytest.raises(ValueError, match="the generator is on cpu but the model is on cuda:0"):
            m.generate(prompt, 2, generator=torch.Generator(), cuda_graph=cuda_graph)
        with pytest.raises(ValueError, match="the prompt is on cpu but the model is on cuda:0"):
            m.generate(prompt.cpu(), 2, cuda_graph=cuda_graph)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ar_generate_replayed_from_a_cuda_graph_equals_the_eager_loop(temperature):
    m = _perturb(ARTransformer(_tiny("ar"))).eval().cuda()
    prompt = torch.randint(0, 50, (3, 4), device="cuda")

    def run(cuda_graph):
        g = torch.Generator("cuda").manual_seed(7)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return m.generate(prompt, 20, temperature=temperature, generator=g, cuda_graph=cuda_graph)

    eager, graphed = run(False), run(True)
    assert torch.equal(graphed, eager) and torch.equal(graphed[:, :4], prompt)


def _constant_ar(logits: torch.Tensor) -> ARTransformer:
    """An autoregressive model whose next-token logits are ``logits`` whatever the input: its output
    layer keeps the zero weights it starts with, and its bias is the logits."""
    net = ARTransformer(_tiny("ar")).eval()
    with torch.no_grad():
        net.output_layer.linear.bias.copy_(logits)
    return net


def test_ar_generate_draws_from_the_softmax_with_sample_categorical_and_the_kv_cache():
    logits = torch.full((50,), -30.0)
    logits[:5] = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    net = _constant_ar(logits)
    calls = []
    forward = net.forward

    def spy(x, *args, cache=None, start=0, **kw):
        calls.append((x.shape[1], cache is not None, start))
        return forward(x, *args, cache=cache, start=start, **kw)

    net.forward = spy
    prompt, n, temperature = torch.zeros(64, 2, dtype=torch.long), 30, 0.8

    def sample(seed):
        return net.generate(prompt, n, temperature=temperature, generator=torch.Generator().manual_seed(seed))

    out = sample(1)
    # one forward over the prompt, then one cached forward a token (none after the last)
    assert calls == [(2, True, 0)] + [(1, True, 2 + i) for i in range(n - 1)]
    assert torch.equal(out[:, :2], prompt) and torch.equal(sample(1), out) and not torch.equal(sample(2), out)
    # each token is dllm.ops.sample_categorical's draw from the same generator stream
    g = torch.Generator().manual_seed(1)
    rows = logits.expand(64, -1).contiguous()
    expected = torch.stack([ops.sample_categorical(rows, temperature, generator=g)[0] for _ in range(n)], 1)
    assert torch.equal(out[:, 2:], expected)
    # the 64 x 30 draws follow softmax(logits / T): chi-square with 4 degrees of freedom below its
    # 0.1% critical value 18.47; tokens of probability e^-40 never come
    counts = torch.bincount(out[:, 2:].flatten(), minlength=50).double()
    p = torch.softmax(logits.double() / temperature, 0)[:5] * out[:, 2:].numel()
    assert counts[5:].sum() == 0 and ((counts[:5] - p) ** 2 / p).sum() < 18.47



def test_ar_generate_takes_a_float64_model_and_refuses_an_empty_prompt():
    model = _perturb(ARTransformer(_tiny("ar"))).eval()
    prompt = torch.randint(0, 50, (2, 3))
    want = model.generate(prompt, 5, temperature=0.0)
    assert torch.equal(model.double().generate(prompt, 5, temperature=0.0), want)
    with pytest.raises(ValueError, match="the prompt is empty"):
        model.generate(prompt[:, :0], 5)

def test_llada_gqa_matches_repeated_heads():
    torch.manual_seed(0)
    m = _perturb(LLaDAModel(_tiny("llada", kv_heads=2))).eval()
    x = torch.randint(0, 50, (2, 8))
    got = m(x)
    # Rebuild the same model with 4 KV heads whose weights repeat each of the 2 groups.
    full = LLaDAModel(_tiny("llada", kv_heads=4)).eval()
    sd = m.state_dict()
    for k in list(sd):
        if k.endswith(("k_proj.weight", "v_proj.weight")):
            w = sd[k].view(2, 16, 64)
            sd[k] = w.repeat_interleave(2, dim=0).reshape(64, 64)
    full.load_state_dict(sd)
    torch.testing.assert_close(full(x), got, rtol=1e-5, atol=1e-5)


def test_attention_dispatch_uses_fused_op_where_it_applies(monkeypatch):
    calls = []

    def fake(q, k, v):
        calls.append(q.shape)
        return torch.zeros_like(q)

    monkeypatch.setattr(attn_mod.ops, "attention", fake, raising=False)
    q = torch.randn(1, 5, 2, 8)
    # On the CPU, SDPA is faster than dllm's kernel for unpadded batches: models take SDPA.
    assert torch.count_nonzero(attn_mod.attention(q, q, q)) > 0 and calls == []
    monkeypatch.setattr(attn_mod, "_fused_applies", lambda q, k: True)
    assert torch.count_nonzero(attn_mod.attention(q, q, q)) == 0 and calls == [q.shape]
    ref = attn_mod.attention(q, q, q, causal=True)  # causal always takes SDPA
    assert torch.count_nonzero(ref) > 0 and len(calls) == 1



@pytest.mark.parametrize("arch", ["dit", "llada"])
def test_padded_batches_reach_attention_as_lengths_and_compute_what_the_mask_does(arch, monkeypatch):
    """Without a KV cache a bidirectional model gives dllm's attention per-row lengths (each row's
    real tokens moved to its front, their positions kept); with a cache the same batch takes SDPA
    with a key-padding mask. Logits and gradients agree, whether padding is on the left (as the
    samplers pad prompts), on the right or in the middle."""
    torch.manual_seed(0)
    net = _perturb(build_model(_tiny(arch, **({"kv_heads": 2} if arch == "llada" else {}))))
    x = torch.randint(0, 49, (4, 19))
    mask = torch.ones(4, 19, dtype=torch.bool)
    mask[0, :7] = False
    mask[1, 12:] = False
    mask[2, 5:9] = False
    sigma = torch.tensor([0.5, 1.0, 1.5, 2.0])
    lengths, fused = [], attn_mod.ops.attention

    def recording(q, k, v, **kw):
        lengths.append(kw["kv_len"].tolist())
        return fused(q, k, v, **kw)

    monkeypatch.setattr(attn_mod.ops, "attention", recording)
    out = net(x, sigma, attention_mask=mask)
    assert lengths == [[12, 12, 15, 19]] * 2  # one call a layer
    ref = net(x, sigma, cache=net.new_kv_cache(4, 19), attention_mask=mask)
    assert len(lengths) == 2
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    params = list(net.parameters())
    for got, want in zip(torch.autograd.grad(out.square().sum(), params),
                         torch.autograd.grad(ref.square().sum(), params)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    with pytest.raises(ValueError, match="attention_mask must have the tokens' shape"):
        net(x, sigma, attention_mask=mask[:, 1:])

@pytest.mark.parametrize("arch", ["dit", "llada"])
def test_a_float64_model_runs_padded_batches(arch):
    # The fused op leaves float64 out; its lengths become SDPA's key mask.
    torch.manual_seed(0)
    net = _perturb(build_model(_tiny(arch))).double().eval()
    x = torch.randint(0, 49, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, :4] = False
    sigma = torch.tensor([0.5, 1.0], dtype=torch.float64)
    out = net(x, sigma, attention_mask=mask)
    torch.testing.assert_close(out[1, 4:], net(x[1:, 4:], sigma[1:])[0], rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_full_self_attention_takes_sdpa_and_a_query_block_over_a_cache_the_op(monkeypatch):
    calls = []
    fused = attn_mod.ops.attention
    monkeypatch.setattr(attn_mod.ops, "attention", lambda q, k, v, **kw: calls.append(q.shape) or fused(q, k, v, **kw))
    q, kv = (torch.randn(2, n, 4, 64, device="cuda", dtype=torch.bfloat16) for n in (8, 40))
    full = attn_mod.attention(kv, kv, kv)
    assert calls == []  # SDPA: 1.6-2.1x dllm's kernels on full batches on the H200
    block = attn_mod.attention(q, kv, kv)
    assert calls == [q.shape]
    everything = torch.ones(2, 1, 1, 40, dtype=torch.bool, device="cuda")
    torch.testing.assert_close(block, attn_mod.attention(q, kv, kv, attn_mask=everything), rtol=2e-2, atol=2e-2)
    lengths = torch.full((2,), 40, dtype=torch.int32, device="cuda")
    torch.testing.assert_close(full, attn_mod.attention(kv, kv, kv, kv_len=lengths), rtol=2e-2, atol=2e-2)


def test_cached_decoding_under_autocast_takes_the_fused_op(monkeypatch):
    # On a GPU, bf16 autocast makes q bfloat16 while the AR model's KV cache holds float32 keys; the
    # fused op takes one dtype. Simulated here by letting the op apply on the CPU.
    monkeypatch.setattr(attn_mod, "_fused_applies", lambda q, k: q.dtype == torch.bfloat16)
    torch.manual_seed(0)
    net = build_model(model_config("tiny", arch="ar", hidden=128, heads=2, vocab_size=50)).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net.generate(torch.zeros(2, 1, dtype=torch.long), 4, temperature=1.0)
    assert out.shape == (2, 5) and out.min() >= 0 and out.max() < 50


def test_lengths_do_not_combine_with_a_causal_or_masked_call():
    q = torch.randn(1, 5, 2, 8)
    kv_len = torch.tensor([5], dtype=torch.int32)
    for options in ({"causal": True}, {"attn_mask": torch.ones(1, 1, 1, 5, dtype=torch.bool)}):
        with pytest.raises(ValueError, match="kv_len is the bidirectional path's padding"):
            attn_mod.attention(q, q, q, kv_len=kv_len, **options)


def test_the_ar_model_stays_causal_under_a_padding_mask():
    # A key-padding mask (ragged rows, right-padded) must not switch the causal model to bidirectional
    # attention: each row's real tokens get what an unpadded forward of that row gives.
    torch.manual_seed(0)
    net = _perturb(ARTransformer(_tiny("ar"))).double().eval()
    x = torch.randint(0, 50, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    lengths = [12, 8, 3]
    for row, n in enumerate(lengths):
        mask[row, n:] = False
    out = net(x, attention_mask=mask)
    for row, n in enumerate(lengths):
        torch.testing.assert_close(out[row, :n], net(x[row:row + 1, :n])[0], rtol=1e-10, atol=1e-10)
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 50  # a later token does not reach earlier positions
    torch.testing.assert_close(net(y, attention_mask=mask)[:, :-1], out[:, :-1], rtol=0, atol=0)


def test_model_configs_are_checked():
    from dllm.models import ModelConfig

    for kw, message in ((dict(arch="gpt"), "unknown arch 'gpt'"), (dict(heads=0), "heads must be positive"),
                        (dict(arch="llada", hidden=96, heads=4, kv_heads=3), r"heads \(4\) must be a multiple of kv_heads \(3\)"),
                        (dict(hidden=100, heads=3), r"hidden \(100\) must be a multiple of heads \(3\)"),
                        (dict(hidden=12, heads=4), "head dimension hidden / heads = 3 must be even"),
                        # what the architecture would ignore, so that a config promises only what it builds
                        (dict(arch="dit", kv_heads=2), "kv_heads applies to the llada architecture only, not 'dit'"),
                        (dict(arch="ar", qkv_bias=True, mlp_hidden=64), "mlp_hidden, qkv_bias apply to the llada"),
                        (dict(arch="llada", time_conditioning=True), "the llada architecture takes no time input")):
        with pytest.raises(ValueError, match=message):
            ModelConfig(**kw)
    assert ModelConfig(arch="llada", hidden=96, heads=4, kv_heads=2).head_dim == 24
    with pytest.raises(ValueError, match=r"unknown model config keys: \['width'\]"):
        ModelConfig.from_dict({"width": 3})
    for kw, message in ((dict(dropout=1.0), r"dropout must lie in \[0, 1\), got 1.0"),
                        (dict(norm_eps=0.0), "norm_eps must be positive and finite")):
        with pytest.raises(ValueError, match=message):
            ModelConfig(**kw)
    # what a hand-edited config.json holds: a quoted number, a null, a float count, a number for a flag
    for kw, message in ((dict(vocab_size="258"), "vocab_size must be an int, got '258'"),
                        (dict(max_seq_len=None), "max_seq_len must be an int, got None"),
                        (dict(layers=4.0), "layers must be an int, got 4.0"), (dict(heads=True), "heads must be an int"),
                        (dict(kv_heads="2"), "kv_heads must be an int or None"),
                        (dict(dropout="0.1"), "dropout must be a number"),
                        (dict(time_conditioning=1), "time_conditioning must be true or false, got 1")):
        with pytest.raises(TypeError, match=message):
            ModelConfig(**kw)


def test_a_mistyped_config_json_is_named(tmp_path):
    build_model(_tiny("dit")).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["vocab_size"] = "abc"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json': vocab_size must be an int, got 'abc'"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_bytes(b'{"model": "\xff"}')
    with pytest.raises(ValueError, match="config.json' is not UTF-8 text"):
        from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"unknown model size 'huge'; expected one of \['medium', 'small', 'tiny'\]"):
        model_config("huge")


def test_llada_blocks_apply_dropout_in_training_only():
    torch.manual_seed(0)
    model = build_model(model_config("tiny", arch="llada", vocab_size=50, hidden=32, heads=2, layers=2, dropout=0.5))
    x = torch.randint(0, 50, (2, 12))
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    model = build_model(model_config("tiny", arch="llada", vocab_size=50, hidden=32, heads=2, layers=2))
    assert torch.equal(model.train()(x), model.eval()(x))


def test_llada_init_scales_the_residual_projections_by_depth():
    # N(0, 0.02) everywhere, and GPT-2's 0.02 / sqrt(2 * layers) on the projections into the residual stream
    torch.manual_seed(0)
    cfg = model_config("tiny", arch="llada", hidden=64, layers=8, heads=4, vocab_size=50)
    net = LLaDAModel(cfg)
    for name, p in net.named_parameters():
        if p.dim() != 2:
            continue
        want = 0.02 / (2 * cfg.layers) ** 0.5 if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
        # the sample standard deviation of >= 2,500 normals is within 10% of sigma with overwhelming probability
        assert abs(p.std().item() / want - 1) < 0.1, (name, p.std().item(), want)


def test_save_pretrained_leaves_the_process_umask_alone(tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        build_model(_tiny("dit")).save_pretrained(tmp_path)
        assert os.umask(0o027) == 0o027  # still the process's umask after the save
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name  # 0o666 under that umask


@pytest.mark.parametrize("arch", ["dit", "llada"])
def test_logits_at_gives_those_positions_logits_only(arch):
    torch.manual_seed(0)
    m = _perturb(build_model(_tiny(arch))).eval()
    x, sigma = torch.randint(0, 50, (3, 17)), torch.tensor([0.3, 1.2, 2.0])
    padding = torch.ones(3, 17, dtype=torch.bool)
    padding[1, :5] = False  # a left-padded row: the ragged layout must be undone before the head
    at = torch.tensor([0, 5, 16, 17, 30, 33, 50])
    for mask in (None, padding):
        full = m(x, sigma, attention_mask=mask)
        torch.testing.assert_close(m(x, sigma, attention_mask=mask, logits_at=at), full.reshape(-1, 50)[at])
    assert m(x, sigma, logits_at=at[:0]).shape == (0, 50)


@pytest.mark.parametrize("bias", [True, False])
def test_the_vocab_head_pads_its_rows_in_inference_only(monkeypatch, bias):
    monkeypatch.setattr(VocabProjection, "PADDED_ON", ("cpu",))  # what CUDA takes, here
    torch.manual_seed(0)
    head = VocabProjection(13, 37, bias=bias).double()
    h = torch.randn(3, 5, 13, dtype=torch.float64)
    want = (h @ head.weight.T + (head.bias if bias else 0)).detach()
    with torch.no_grad():
        assert head(h).is_contiguous()  # 15 positions: too few to pay for the weight's copy
        monkeypatch.setattr(VocabProjection, "PADDED_MIN_ROWS", 15)
        out = head(h)
    assert out.shape == (3, 5, 37) and out.stride() == (5 * 64, 64, 1)
    torch.testing.assert_close(out, want, rtol=1e-13, atol=1e-13)
    recorded = head(h)  # a graph to record: the plain projection, whose backward writes no padding
    assert recorded.is_contiguous() and recorded.requires_grad
    torch.testing.assert_close(recorded.detach(), want, rtol=1e-13, atol=1e-13)
    with torch.no_grad():
        with monkeypatch.context() as patched:
            patched.setattr(VocabProjection, "padded", lambda self, h: pytest.fail("rows whole already were padded"))
            assert VocabProjection(13, 128).double()(h).is_contiguous()
        monkeypatch.setattr(VocabProjection, "PADDED_ON", ("cuda",))
        assert head(h).is_contiguous()  # the CPU's default


@pytest.mark.parametrize("arch,sampler", [("dit", "sedd-analytic"), ("dit", "mdlm"), ("llada", "llada"),
                                          ("llada", "dream")])
def test_samplers_read_the_padded_heads_logits_in_place(monkeypatch, arch, sampler):
    """The head's padded rows (vocab 50 -> row stride 64) reach dllm's ops as they are, and every
    sampler draws what it draws from contiguous logits."""
    from dllm.sampling.pretrained import MaskedLM, ScoreModel
    from dllm.sedd import Absorbing, get_noise

    torch.manual_seed(0)
    net = _perturb(build_model(_tiny(arch))).eval()
    model = ScoreModel(net, Absorbing(49), get_noise("loglinear")) if sampler.startswith("sedd") else MaskedLM(net, 49)
    strides = []
    model.register_forward_hook(lambda m, args, out: strides.append(out.stride()))

    def run():
        g = torch.Generator().manual_seed(3)
        return dllm.generate(model, [[1, 2, 3], [4, 5, 6]], gen_length=12, steps=4, sampler=sampler,
                             temperature=1.0, generator=g).sequences

    plain = run()
    monkeypatch.setattr(VocabProjection, "PADDED_ON", ("cpu",))
    monkeypatch.setattr(VocabProjection, "PADDED_MIN_ROWS", 1)
    padded = run()
    assert strides[0][-2] == 50 and strides[-1][-2] == 64
    assert torch.equal(padded, plain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_vocab_head_pads_its_rows_on_cuda():
    torch.manual_seed(0)
    head = VocabProjection(768, 50258).cuda().bfloat16()  # SEDD's and MDLM's head
    h = torch.randn(2, 2048, 768, device="cuda", dtype=torch.bfloat16)  # 4096 positions: PADDED_MIN_ROWS
    with torch.no_grad():
        out = head(h)
    assert out.shape == (2, 2048, 50258) and out.stride() == (2048 * 50304, 50304, 1) and out.data_ptr() % 128 == 0
    torch.testing.assert_close(out, torch.nn.functional.linear(h, head.weight, head.bias), rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("arch", ["llada", "dit"])
@pytest.mark.parametrize("branch", ["attention", "mlp"])
def test_dropout_reaches_each_residual_branch(arch, branch):
    """With the other branch's output projection zeroed, the output in training still varies from call to
    call: this branch's update is dropped out too (and not in eval mode)."""
    torch.manual_seed(3)
    model = build_model(model_config("tiny", arch=arch, vocab_size=37, hidden=24, heads=2, layers=2, cond_dim=12,
                                     dropout=0.4))
    with torch.no_grad():
        for prm in model.parameters():  # the zero-initialised adaLN and head too
            prm.copy_(0.3 * torch.randn_like(prm) + (prm if prm.dim() == 1 else 0))
        for blk in model.blocks:
            if arch == "llada":
                other = blk.down_proj if branch == "attention" else blk.o_proj
            else:
                other = blk.mlp[2] if branch == "attention" else blk.attn_out
            other.weight.zero_()
            if getattr(other, "bias", None) is not None:
                other.bias.zero_()
    x = torch.randint(0, 37, (3, 11))
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_every_llada_rms_norm_uses_the_configs_eps():
    torch.manual_seed(5)
    eps = 0.29
    model = build_model(model_config("tiny", arch="llada", vocab_size=31, hidden=20, heads=2, layers=2,
                                     norm_eps=eps)).double().eval()
    seen = []

    def check(module, args, out):
        x = args[0]
        want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * module.weight
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
        seen.append(module)

    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    for m in norms:
        with torch.no_grad():
            m.weight.copy_(1 + 0.5 * torch.randn_like(m.weight))
        m.register_forward_hook(check)
    with torch.no_grad():
        model(torch.randint(0, 31, (2, 9)))
    assert len(seen) == len(norms) == 2 * 2 + 1


@pytest.mark.parametrize("hidden", [48, 160])
def test_dit_token_embedding_starts_as_sedds_kaiming_uniform(hidden):
    """SEDD's EmbeddingLayer: kaiming_uniform_(a=sqrt(5)) on [vocab, hidden], i.e. U(-1/sqrt(hidden), 1/sqrt(hidden))."""
    torch.manual_seed(hidden)
    model = build_model(model_config("tiny", arch="dit", vocab_size=301, hidden=hidden, heads=4, layers=1))
    w = model.vocab_embed.detach().double()
    bound = hidden ** -0.5
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.99 * bound  # 301 * hidden draws reach near the edge
    assert w.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)
    assert abs(w.mean().item()) < 5 * bound / (3 * w.numel()) ** 0.5


@pytest.mark.parametrize("hidden,ratio,want", [(128, 4.0, 344), (96, 4.0, 256), (60, 3.0, 120), (36, 2.5, 64)])
def test_llada_derived_swiglu_width_rounds_two_thirds_up_to_a_multiple_of_8(hidden, ratio, want):
    # LLaMA's rule: int(2/3 * ratio * hidden), rounded up to a multiple of 8
    assert want == 8 * -(-int(2 * ratio * hidden / 3) // 8)
    model = build_model(model_config("tiny", arch="llada", vocab_size=20, hidden=hidden, heads=2, layers=1,
                                     mlp_ratio=ratio))
    blk = model.blocks[0]
    assert blk.gate_proj.weight.shape == blk.up_proj.weight.shape == (want, hidden)
    assert blk.down_proj.weight.shape == (hidden, want)


@pytest.mark.parametrize("arch", ["dit", "ar"])
@pytest.mark.parametrize("ratio,hidden", [(2.5, 24), (3.0, 40), (1.0, 16)])
def test_dit_mlp_width_follows_mlp_ratio(arch, ratio, hidden):
    model = build_model(model_config("tiny", arch=arch, vocab_size=23, hidden=hidden, heads=2, layers=2,
                                     mlp_ratio=ratio))
    for blk in model.blocks:
        up, _, down = blk.mlp
        assert up.weight.shape == (int(ratio * hidden), hidden) and down.weight.shape == (hidden, int(ratio * hidden))
    out = model(torch.randint(0, 23, (2, 5)))
    assert out.shape == (2, 5, 23)


def test_named_sizes_are_sedds_released_configs():
    # SEDD's configs/model/{small,medium}.yaml: hidden_size, n_blocks, n_heads, cond_dim
    for size, (hidden, layers, heads, cond) in {"small": (768, 12, 12, 128), "medium": (1024, 24, 16, 128)}.items():
        cfg = model_config(size)
        assert (cfg.hidden, cfg.layers, cfg.heads, cfg.cond_dim, cfg.mlp_ratio) == (hidden, layers, heads, cond, 4.0)


def test_from_pretrained_takes_torch_prefixed_dtype_names(tmp_path):
    """dtype="torch.bfloat16" (str(torch.bfloat16)) names a dtype as "bfloat16" does."""
    m = build_model(_tiny("dit")).eval()
    m.save_pretrained(tmp_path)
    for name in ("torch.bfloat16", "torch.float64"):
        got = from_pretrained(tmp_path, dtype=name)
        want = getattr(torch, name.removeprefix("torch."))
        assert all(p.dtype == want for p in got.parameters() if p.dim() > 1)


def test_from_pretrained_names_an_extra_weight_in_model_safetensors(tmp_path):
    """A weight the config does not imply is reported as a ValueError naming it, not load_state_dict's RuntimeError."""
    from safetensors.torch import load_file, save_file

    m = build_model(_tiny("dit"))
    m.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["blocks.7.extra.weight"] = torch.randn(3, 5)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected weight blocks\.7\.extra\.weight"):
        from_pretrained(tmp_path)


def test_ar_decoding_refuses_a_negative_position():
    m = ARTransformer(_tiny("ar")).eval()
    cache = m.new_cache(2, 8)
    m(torch.ones(2, 3, dtype=torch.long), cache=cache, start=0)
    before = [t.clone() for t in cache.k + cache.v]
    with pytest.raises(ValueError, match="asked to write position -1"):
        m(torch.zeros(2, 1, dtype=torch.long), cache=cache, start=-1)
    assert all(torch.equal(a, b) for a, b in zip(before, cache.k + cache.v))  # the last slot not overwritten


def test_a_graphed_decoding_step_writes_a_float32_cache_under_autocast():
    """bf16 autocast makes bfloat16 keys; a cache made in float32 takes them converted, whether the
    step's position is an int (eager) or a one-element tensor (a CUDA graph's replay)."""
    torch.manual_seed(0)
    m = _perturb(ARTransformer(_tiny("ar"))).eval()
    x = torch.randint(0, 50, (3, 7))
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in (6, torch.tensor(6)):
            cache = m.new_cache(3, 8, dtype=torch.float32)
            m(x[:, :6], cache=cache, start=0)
            out.append(m(x[:, 6:], cache=cache, start=start).float())
            assert cache.k[0].dtype == torch.float32
    full = m(x)[:, 6:]
    for got in out:
        torch.testing.assert_close(got, full, rtol=5e-2, atol=5e-2 * full.abs().max().item())


def test_a_tokenizers_0_1_attention_mask_is_a_key_padding_mask():
    """An int64 mask as a tokenizer gives it (1 on real tokens) masks what the bool mask masks: in the
    causal model's and a cached forward's SDPA masks, and in the bidirectional model's lengths."""
    torch.manual_seed(0)
    x = torch.randint(0, 50, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[0, :4] = False
    mask[2, 7:] = False
    for arch in ("ar", "dit"):
        net = _perturb(build_model(_tiny(arch))).eval()
        sigma = torch.ones(3) if arch == "dit" else None
        want = net(x, sigma, attention_mask=mask)
        torch.testing.assert_close(net(x, sigma, attention_mask=mask.long()), want, rtol=0, atol=0)
        if arch == "dit":
            cached = net(x, sigma, cache=net.new_kv_cache(3, 11), attention_mask=mask.long())
            torch.testing.assert_close(cached[mask], want[mask], rtol=1e-5, atol=1e-5)


def test_from_pretrained_on_a_base_class_builds_the_saved_subclass(tmp_path):
    """ARTransformer is a DiffusionTransformer: DiffusionTransformer.from_pretrained of an AR folder gives
    the AR model (causal), as the docstring says; a class the saved one does not derive from is refused."""
    torch.manual_seed(0)
    m = build_model(_tiny("ar")).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.save_pretrained(tmp_path / "ar")
    again = DiffusionTransformer.from_pretrained(tmp_path / "ar")
    assert type(again) is ARTransformer and again.config == m.config
    x = torch.randint(0, 50, (2, 11))
    assert torch.equal(again(x), m(x))
    # causal: the first positions' logits do not depend on later tokens
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 50
    assert torch.equal(again(y)[:, :6], again(x)[:, :6])
    assert type(ARTransformer.from_pretrained(tmp_path / "ar")) is ARTransformer
    with pytest.raises(TypeError, match="not a LLaDAModel"):
        LLaDAModel.from_pretrained(tmp_path / "ar")
    build_model(_tiny("dit")).save_pretrained(tmp_path / "dit")
    with pytest.raises(TypeError, match="not a ARTransformer"):  # the subclass does not take its base's folder
        ARTransformer.from_pretrained(tmp_path / "dit")


@pytest.mark.parametrize("name", ["mlp_ratio", "dropout", "rope_base", "norm_eps"])
def test_a_boolean_for_a_number_is_refused(name):
    """A hand-edited config.json's true is no number (Python would read it as 1: mlp_ratio true would build
    a 1x MLP without a word)."""
    with pytest.raises(TypeError, match=f"{name} must be a number, got True"):
        ModelConfig(**{name: True})
    with pytest.raises(TypeError, match=f"{name} must be a number, got False"):
        ModelConfig(**{name: False})


def test_from_pretrained_of_a_file_says_it_is_not_a_folder(tmp_path):
    folder = tmp_path / "m"
    build_model(model_config("tiny", vocab_size=37, hidden=32, layers=1, heads=2)).save_pretrained(folder)
    for path in (folder / "model.safetensors", folder / "config.json"):  # the file instead of its folder
        with pytest.raises(NotADirectoryError, match="is not a folder; expected a folder written by save_pretrained"):
            from_pretrained(path)
    assert from_pretrained(folder).config.vocab_size == 37


def test_a_model_classs_from_pretrained_takes_the_dtype_asked_for(tmp_path):
    torch.manual_seed(0)
    for arch, cls in (("dit", DiffusionTransformer), ("llada", LLaDAModel)):
        m = build_model(model_config("tiny", arch=arch, vocab_size=37, hidden=32, layers=1, heads=2))
        m.save_pretrained(tmp_path / arch)  # float32
        for dtype in (torch.bfloat16, "float16", "torch.float64"):
            again = cls.from_pretrained(tmp_path / arch, dtype=dtype)
            want = getattr(torch, str(dtype).removeprefix("torch."))
            assert type(again) is cls and {p.dtype for p in again.parameters()} == {want}
        assert {p.dtype for p in cls.from_pretrained(tmp_path / arch).parameters()} == {torch.float32}


@pytest.mark.parametrize("name", ["rope_base", "norm_eps", "mlp_ratio"])
def test_an_infinite_rope_base_eps_or_mlp_ratio_is_refused(name):
    # rope_base inf zeroes every rotary frequency but the first (positions vanish), norm_eps inf zeroes
    # every normalised activation: a hand-edited config.json's 1e999 must fail, naming the field
    with pytest.raises(ValueError, match=f"{name} must be positive and finite, got inf"):
        ModelConfig(arch="llada", **{name: math.inf})


@pytest.mark.parametrize("value", [-0.1, -1.0])
def test_a_negative_dropout_is_refused(value):
    with pytest.raises(ValueError, match=rf"dropout must lie in \[0, 1\), got {value}"):
        ModelConfig(dropout=value)


@pytest.mark.parametrize("value", ["false", 0, 1, None])
def test_a_qkv_bias_that_is_no_bool_is_refused(value):
    # "false" is truthy: the network would grow q/k/v biases the config.json says it lacks
    with pytest.raises(TypeError, match=f"qkv_bias must be true or false, got {value!r}"):
        ModelConfig(arch="llada", qkv_bias=value)


def test_only_the_dit_takes_time_conditioning():
    with pytest.raises(ValueError, match="the ar architecture takes no time input"):
        ModelConfig(arch="ar", time_conditioning=True)


def test_a_fresh_dits_blocks_are_the_identity():
    """SEDD's DiT zero-initialises each block's adaLN modulation (weight and bias), so every gate is
    zero and a fresh network is its head on the token embeddings, whatever sigma: with only the
    head given weights, the logits are the float64 head of the embeddings."""
    torch.manual_seed(2)
    m = DiffusionTransformer(_tiny("dit")).double().eval()
    for blk in m.blocks:
        assert torch.count_nonzero(blk.adaLN_modulation.weight) == 0 == torch.count_nonzero(blk.adaLN_modulation.bias)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.output_layer.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    x, sigma = torch.randint(0, 50, (3, 19), generator=g), torch.tensor([0.05, 1.0, 7.0])
    with torch.no_grad():
        out = m(x, sigma)
        c = F.silu(m.sigma_map(sigma.double()))
        shift, scale = F.linear(c, m.output_layer.adaLN_modulation.weight,
                                m.output_layer.adaLN_modulation.bias).chunk(2, dim=-1)
        h = F.layer_norm(m.vocab_embed[x], (64,), eps=m.config.norm_eps)
        h = h * m.output_layer.norm_final.weight * (1 + scale[:, None]) + shift[:, None]
        want = F.linear(h, m.output_layer.linear.weight, m.output_layer.linear.bias)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ["dit", "llada"])
def test_logits_at_takes_positions_in_any_order_and_repeated(arch):
    """logits_at's rows come back in the order asked, each with its own sequence's modulation."""
    torch.manual_seed(0)
    m = _perturb(build_model(_tiny(arch))).eval()
    x, sigma = torch.randint(0, 50, (3, 17)), torch.tensor([0.3, 1.2, 2.0])
    at = torch.tensor([33, 0, 50, 5, 17, 5, 16])
    with torch.no_grad():
        full = m(x, sigma)
        torch.testing.assert_close(m(x, sigma, logits_at=at), full.reshape(-1, 50)[at])


def test_ar_generate_refuses_negative_prompt_ids_and_returns_a_copy_for_no_new_tokens():
    m = ARTransformer(_tiny("ar")).eval()
    prompt = torch.tensor([[3, 4, 5], [7, -1, 2]])
    with pytest.raises(ValueError, match=r"prompt ids must lie in \[0, 50\), got -1\.\.7"):
        m.generate(prompt, 2)  # refused by name, not an index error in the embedding (a device assert on CUDA)
    good = torch.tensor([[3, 4, 5], [7, 1, 2]])
    out = m.generate(good, 0)
    assert torch.equal(out, good) and out.data_ptr() != good.data_ptr()  # the caller's prompt is not handed back
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0, got True"):
        m.generate(good, True)
