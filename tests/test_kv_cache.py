"""Fast-dLLM's prefix and dual KV caches on dllm's bidirectional models, and cuda_graph=True."""

import itertools

import pytest
import torch

import dllm
from dllm.models import build_model, model_config
from dllm.models.layers import DenoisingKVCache
from dllm.sampling.pretrained import MaskedLM

V, MASK = 50, 49
ARCHS = ["dit", "llada"]


def perturbed(net, std=0.3):
    with torch.no_grad():
        for p in net.parameters():  # the DiT starts as the identity with zero logits; make every layer matter
            p.normal_(0, std)
    return net.eval()


def make(arch, layers, seed=0, std=0.3, **config):
    torch.manual_seed(seed)
    cfg = model_config("tiny", arch=arch, vocab_size=V, hidden=32, heads=4, layers=layers, max_seq_len=96, cond_dim=16,
                       **({"kv_heads": 2} if arch == "llada" else {}), **config)
    return MaskedLM(perturbed(build_model(cfg), std), MASK)


class Recorder:
    """Wraps a model and keeps every call: (tokens fed, start, logits)."""

    def __init__(self, model):
        self.model, self.mask_id, self.calls = model, model.mask_id, []
        self.logits_shift = getattr(model, "logits_shift", 0)
        self.new_kv_cache = model.new_kv_cache

    def __call__(self, x, **kw):
        logits = self.model(x, **kw)
        self.calls.append((x.clone(), kw.get("start", 0), logits))
        return logits


PROMPTS = [[5, 7, 9, 11, 2, 3, 1], [8, 8, 4], [30, 31, 32, 33, 34]]  # ragged: left padded, attention_mask


def fast(model, cache, **kw):
    kw = {"gen_length": 24, "steps": 1, "block_length": 8, "temperature": 0.0, "threshold": 0.5, **kw}
    return dllm.generate(model, PROMPTS, sampler="fast-dllm", cache=cache, return_history=True, **kw)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_forward_equals_full_forward_when_the_cache_is_fresh(arch):
    # With every cached entry up to date the cache is exact at any depth; absolute RoPE positions and
    # the key-padding mask over the whole canvas are what make the sliced forward agree.
    net = make(arch, layers=3).model
    x = torch.randint(0, V - 1, (2, 40))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, :6] = False
    full = net(x, attention_mask=mask)
    kv = net.new_kv_cache(2, 40)
    torch.testing.assert_close(net(x, cache=kv, start=0, attention_mask=mask), full)
    for lo, hi in ((13, 40), (13, 21), (0, 5), (39, 40)):
        torch.testing.assert_close(net(x[:, lo:hi], cache=kv, start=lo, attention_mask=mask), full[:, lo:hi],
                                   atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_one_layer_caches_reproduce_the_uncached_sampler(arch, cache):
    # In one layer a key depends only on its own token, and within a block the prefix and the suffix
    # do not change, so the cached keys are the ones a full forward would compute.
    ref_model, model = Recorder(make(arch, layers=1)), Recorder(make(arch, layers=1))
    ref, out = fast(ref_model, None), fast(model, cache)
    assert torch.equal(out.sequences, ref.sequences) and not (out.sequences == MASK).any()
    assert out.nfe == ref.nfe == len(model.calls) > 24 // 8
    for (x_ref, _, logits_ref), (x, start, logits) in zip(ref_model.calls, model.calls):
        torch.testing.assert_close(logits, logits_ref[:, start:start + x.shape[1]], atol=2e-5, rtol=2e-5)
        assert torch.equal(x, x_ref[:, start:start + x.shape[1]])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_deep_model_refreshes_once_per_block_and_feeds_the_right_span(arch, cache):
    model = Recorder(make(arch, layers=3, std=0.2))
    out = fast(model, cache, threshold=0.95)
    width = max(map(len, PROMPTS))
    assert out.sequences.shape == (3, width + 24) and not (out.sequences == MASK).any()
    assert [p[-len(p):] for p in out.sequences[:, :width].tolist()] == [[0] * (width - len(p)) + p for p in PROMPTS]
    assert out.nfe == len(model.calls) == len(out.history) == len(out.step_times)
    refreshes = [i for i, (x, start, _) in enumerate(model.calls) if x.shape[1] == width + 24]
    assert len(refreshes) == 3 and refreshes[0] == 0 and out.nfe > 3  # one per block, and later steps in between
    for i, (x, start, logits) in enumerate(model.calls):
        if i in refreshes:
            # the block's first step is the uncached step: the whole canvas through the network
            assert start == 0
            canvas = out.history[i - 1] if i else None
            if canvas is not None:
                torch.testing.assert_close(logits, model.model(canvas, attention_mask=canvas_mask()))
        else:
            block = (start - width) // 8
            assert start == width + 8 * block
            assert x.shape[1] == (width + 24 - start if cache == "prefix" else 8)


def canvas_mask():
    width = max(map(len, PROMPTS))
    m = torch.ones(3, width + 24, dtype=torch.bool)
    for i, p in enumerate(PROMPTS):
        m[i, :width - len(p)] = False
    return m


class SigmaRecorder(Recorder):
    """A time-conditioned model's recorder that keeps the sigma of every call."""

    time_conditioned = True

    def __init__(self, model):
        super().__init__(model)
        self.sigmas = []

    def __call__(self, x, sigma, **kw):
        self.sigmas.append(sigma.clone())
        return super().__call__(x, sigma=sigma, **kw)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_a_cached_step_gives_the_time_conditioned_model_the_whole_canvas_sigma(cache):
    # a cached step feeds a span, but its sigma is still the masked fraction of the whole canvas's real tokens
    model = SigmaRecorder(make("dit", 2, time_conditioning=True))
    out = fast(model, cache)
    width, real = max(map(len, PROMPTS)), canvas_mask().sum(-1)
    first = torch.where(canvas_mask()[:, :width], out.sequences[:, :width], 0)
    canvases = [torch.cat([first, torch.full((3, 24), MASK)], 1)] + out.history[:-1]
    assert len(model.sigmas) == len(canvases) and any(x.shape[1] < width + 24 for x, _, _ in model.calls)
    for canvas, sigma in zip(canvases, model.sigmas):
        t = (canvas == MASK).sum(-1) / real
        torch.testing.assert_close(sigma, -torch.log1p(-(1 - 1e-3) * t))


def test_cache_errors():
    model = make("llada", layers=1)
    with pytest.raises(ValueError, match="applies only to the fast-dllm sampler"):
        dllm.generate(model, gen_length=8, steps=8, sampler="llada", cache="prefix")
    with pytest.raises(ValueError, match="unknown cache 'full'"):
        dllm.generate(model, gen_length=8, steps=8, sampler="fast-dllm", cache="full")
    score_model = make("dit", 1).model
    score_model.graph = dllm.sedd.Absorbing(MASK)
    with pytest.raises(ValueError, match="applies only to the fast-dllm sampler"):
        dllm.generate(score_model, gen_length=8, steps=8, sampler="sedd-analytic", cache="dual")

    class NoCache(torch.nn.Module):
        mask_id = MASK

        def forward(self, x):
            return torch.zeros(*x.shape, V)

    with pytest.raises(ValueError, match="KV-cache interface.*NoCache"):
        dllm.generate(NoCache(), gen_length=8, steps=8, sampler="fast-dllm", block_length=8, cache="dual")

    class HalfCache(NoCache):  # the cache maker without the call's keywords: was a TypeError inside the first step
        def new_kv_cache(self, batch, length):
            return DenoisingKVCache(batch, length)

        def forward(self, x, start=0):
            return torch.zeros(*x.shape, V)

    with pytest.raises(ValueError, match="HalfCache has new_kv_cache but no cache= \\(see"):
        dllm.generate(HalfCache(), gen_length=8, steps=8, sampler="fast-dllm", block_length=8, cache="dual")
    ar = build_model(model_config("tiny", arch="ar", vocab_size=V, hidden=32, layers=1, cond_dim=16))
    ar.mask_id = MASK
    with pytest.raises(ValueError, match="KV-cache interface.*ARTransformer"):
        dllm.generate(ar, gen_length=8, steps=8, sampler="fast-dllm", block_length=8, cache="prefix")
    kv = DenoisingKVCache(2, 10)
    k = torch.zeros(2, 3, 1, 4)
    with pytest.raises(ValueError, match="first forward must cover the whole canvas"):
        kv.update(0, 2, k, k)
    with pytest.raises(ValueError, match=r"2 canvases of 10 positions; asked to write 2 at \[8, 11\)"):
        kv.update(0, 8, k, k)
    cache = ar.new_cache(2, max_len=6)
    x = torch.randint(0, MASK, (2, 4))
    ar(x, cache=cache)
    with pytest.raises(ValueError, match="KV cache holds 6 positions; asked to write up to 8"):
        ar(x, start=4, cache=cache)
    with pytest.raises(ValueError, match=f"sequence of {ar.config.max_seq_len + 1} tokens exceeds max_seq_len="
                                         f"{ar.config.max_seq_len}"):
        ar(torch.randint(0, MASK, (1, ar.config.max_seq_len + 1)))


def test_cuda_graph_errors():
    model = make("llada", layers=1)
    for sampler in ("dream", "mdlm", "fast-dllm", "first-hitting"):
        with pytest.raises(ValueError, match="cuda_graph needs a CUDA model"):
            dllm.generate(model, gen_length=8, steps=8, sampler=sampler, cuda_graph=True)
    with pytest.raises(ValueError, match="cannot be combined with cache='prefix'"):
        dllm.generate(model, gen_length=8, steps=8, sampler="fast-dllm", cache="prefix", cuda_graph=True)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("sampler, kw", [("llada", {}), ("llada", {"cfg_scale": 1.0, "block_length": 16}),
                                         ("dream", {}), ("dream:origin", {}), ("llada:random", {}), ("mdlm", {}),
                                         ("first-hitting", {}), ("fast-dllm", {"block_length": 8, "threshold": 0.5}),
                                         ("fast-dllm", {"block_length": 8, "threshold": 0.5, "cache": "dual"})])
def test_cuda_graph_equals_eager(sampler, kw):
    model = make("llada", layers=2).cuda()
    # ragged prompts: the captured step includes the padded batch's move to per-row lengths
    for prompt, temperature in itertools.product((torch.randint(0, V - 1, (3, 6), device="cuda"), PROMPTS), (0.0, 1.0)):
        outs = []
        for graph in (False, True, True):
            g = torch.Generator(device="cuda").manual_seed(3)
            outs.append(dllm.generate(model, prompt, gen_length=32, steps=16, sampler=sampler, temperature=temperature,
                                      cuda_graph=graph, generator=g, **kw))
        eager, graphed, again = outs
        assert torch.equal(graphed.sequences, again.sequences)  # seeded: reproducible
        assert all(t > 0 for t in graphed.step_times)
        if temperature == 0.0:
            assert torch.equal(graphed.sequences, eager.sequences)
            assert graphed.nfe == eager.nfe and len(graphed.step_times) == len(eager.step_times)
        assert not (graphed.sequences == MASK).any()


@cuda
@pytest.mark.parametrize("sampler, kw", [("mdlm", {}), ("llada", {"block_length": 8}),
                                         ("fast-dllm", {"block_length": 8, "threshold": 0.5, "cache": "dual"})])
def test_cuda_graph_under_bf16_autocast_equals_eager(sampler, kw):
    # The e2e benchmark's setting: captured under autocast, whose cast weights the graphs then read.
    model = make("llada", layers=2).cuda()
    outs = []
    for graph in (False, True):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outs.append(dllm.generate(model, PROMPTS, gen_length=32, steps=16, sampler=sampler, cuda_graph=graph,
                                      generator=torch.Generator("cuda").manual_seed(2), **kw))
    assert torch.equal(outs[0].sequences, outs[1].sequences) and outs[0].nfe == outs[1].nfe


@cuda
def test_cuda_graph_with_the_default_generator_is_reproducible():
    model = make("llada", layers=2).cuda()
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(dllm.generate(model, gen_length=16, steps=8, sampler="dream", temperature=1.0,
                                  cuda_graph=True).sequences)
    assert torch.equal(*runs)


@cuda
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_caches_on_cuda_match_the_cpu_rule(cache):
    # CUDA rounds matmuls of different shapes differently in the last bits, so equality needs every
    # decision to clear that: with seed 8 (measured on the CPU) the closest top-two logits differ by
    # 2.2e-4 and the closest top-two confidences by 2.9e-4 of their value, against float32's 6e-8.
    model = make("llada", layers=1, seed=8).cuda()
    ref = dllm.generate(model, [p for p in PROMPTS], gen_length=24, steps=1, sampler="fast-dllm", block_length=8,
                        threshold=0.5)
    out = dllm.generate(model, [p for p in PROMPTS], gen_length=24, steps=1, sampler="fast-dllm", block_length=8,
                        threshold=0.5, cache=cache)
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("prompt", [PROMPTS, None])
def test_shifted_head_caches_feed_one_position_earlier(cache, prompt):
    # Dream's head predicts position i from row i - 1: a cached step must also feed block_start - 1.
    from dllm.models.hub import PublishedModel

    net = make("llada", layers=1).model
    model = Recorder(PublishedModel(net, layout="dream", mask_id=MASK, logits_shift=1))
    ref = dllm.generate(PublishedModel(net, layout="dream", mask_id=MASK, logits_shift=1), prompt, gen_length=24,
                        steps=1, sampler="fast-dllm", block_length=8, threshold=0.5)
    out = dllm.generate(model, prompt, gen_length=24, steps=1, sampler="fast-dllm", block_length=8, threshold=0.5,
                        cache=cache)
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
    width = out.sequences.shape[1] - 24
    starts = {start for _, start, _ in model.calls}
    assert starts - {0} and all((s - width + 1) % 8 == 0 for s in starts - {0})


def test_a_head_shifted_past_a_short_fed_span_decodes_as_the_whole_canvas():
    # without a prompt the first blocks' dual-cached spans start at 0 and are no longer than a shift of 2
    model = make("llada", layers=1)
    model.logits_shift = 2
    kw = dict(gen_length=8, steps=1, sampler="fast-dllm", block_length=2, threshold=1.0)  # a token a step
    ref = dllm.generate(model, **kw)
    out = dllm.generate(model, cache="dual", **kw)
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe == 8


def test_the_denoising_cache_refuses_a_first_forward_short_of_the_canvas_and_writes_off_it():
    kv = DenoisingKVCache(2, 10)
    k = torch.randn(2, 3, 1, 4)
    with pytest.raises(ValueError, match="first forward must cover the whole canvas"):
        kv.update(0, 0, k, k)  # a prefix from position 0 is not the whole canvas
    with pytest.raises(ValueError, match="first forward must cover the whole canvas"):
        kv.update(0, torch.tensor(2), k, k)  # a graphed step's start
    one = torch.randn(1, 10, 1, 4)
    with pytest.raises(ValueError, match=r"2 canvases of 10 positions; asked to write 1 at \[0, 10\)"):
        kv.update(0, 0, one, one)  # one canvas's refresh, not the batch's
    assert kv.k == {} and kv.v == {}
    full = torch.randn(2, 10, 1, 4)
    kv.update(0, 0, full, full)
    with pytest.raises(ValueError, match=r"2 canvases of 10 positions; asked to write 1 at \[2, 5\)"):
        kv.update(0, 2, k[:1], k[:1])  # would be broadcast over both canvases
    with pytest.raises(ValueError, match=r"2 canvases of 10 positions; asked to write 2 at \[-4, -1\)"):
        kv.update(0, -4, k, k)  # would land on positions 6..8
    assert torch.equal(kv.k[0], full) and torch.equal(kv.v[0], full)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_refresh_in_another_dtype_replaces_the_cached_keys(arch):
    """A cache refreshed under bfloat16 autocast and refreshed again in float32 holds float32 keys:
    the float32 forwards equal the uncached model's."""
    net = make(arch, layers=2).model
    x = torch.randint(0, V - 1, (2, 19), generator=torch.Generator().manual_seed(5))
    kv = net.new_kv_cache(2, 19)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x, cache=kv, start=0)
    assert kv.k[0].dtype == torch.bfloat16
    full = net(x)
    torch.testing.assert_close(net(x, cache=kv, start=0), full)
    assert kv.k[0].dtype == torch.float32
    torch.testing.assert_close(net(x[:, 5:12], cache=kv, start=5), full[:, 5:12], atol=2e-5, rtol=2e-5)


def test_the_denoising_cache_refuses_a_first_forward_of_the_canvas_tail_and_writes_a_block_in_place():
    """Only a forward over the whole canvas [0, length) makes (or re-makes) the buffers: a block that
    ends at the canvas's end but starts later is refused on an empty cache, and on a refreshed one is
    written into the refresh's buffers (cast to their dtype), not kept as the whole cache."""
    g = torch.Generator().manual_seed(3)
    B, L, H, D = 3, 11, 2, 5
    kv = DenoisingKVCache(B, L)
    tail = torch.randn(B, 4, H, D, generator=g)
    with pytest.raises(ValueError, match="first forward must cover the whole canvas"):
        kv.update(0, L - 4, tail, tail)  # positions 7..10: ends the canvas, starts short of it
    assert kv.k == {} and kv.v == {}
    full_k, full_v = torch.randn(B, L, H, D, generator=g), torch.randn(B, L, H, D, generator=g)
    kv.update(1, 0, full_k, full_v)
    tk, tv = (torch.randn(B, 4, H, D, generator=g).bfloat16() for _ in range(2))  # a block under autocast
    k, v = kv.update(1, L - 4, tk, tv)
    assert k.shape == v.shape == (B, L, H, D) and k.dtype == v.dtype == torch.float32
    for got, old, new in ((k, full_k, tk), (v, full_v, tv)):
        assert torch.equal(got[:, :L - 4], old[:, :L - 4])
        assert torch.equal(got[:, L - 4:], new.float())


def test_a_graphed_step_writes_its_block_in_the_cached_dtype():
    """A tensor start (a CUDA-graphed step's) writes a bfloat16 block into float32 buffers made by a
    float32 refresh, cast, as an int start does."""
    g = torch.Generator().manual_seed(8)
    B, L, H, D, S, start = 2, 13, 3, 4, 5, 6
    refresh_k, refresh_v = torch.randn(B, L, H, D, generator=g), torch.randn(B, L, H, D, generator=g)
    bk, bv = (torch.randn(B, S, H, D, generator=g).bfloat16() for _ in range(2))
    by_int, by_tensor = DenoisingKVCache(B, L), DenoisingKVCache(B, L)
    for kv in (by_int, by_tensor):
        kv.update(0, 0, refresh_k.clone(), refresh_v.clone())
    want_k, want_v = by_int.update(0, start, bk, bv)
    got_k, got_v = by_tensor.update(0, torch.tensor(start), bk, bv)
    assert got_k.dtype == got_v.dtype == torch.float32 and got_k.shape == (B, L, H, D)
    assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
    assert torch.equal(got_k[:, start:start + S], bk.float()) and torch.equal(got_k[:, :start], refresh_k[:, :start])
