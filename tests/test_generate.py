"""dllm.generate: every sampler on a tiny random model."""

import pytest
import torch
from torch import nn

import dllm

V, MASK, PAD = 40, 39, 0


class TinyModel(nn.Module):
    """Bidirectional toy: each position sees its token and the mean of the sequence."""

    def __init__(self, logits_shift=0, time_conditioned=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(V, 16, generator=g))
        self.head = nn.Parameter(torch.randn(32, V, generator=g))
        self.mask_id, self.pad_id, self.logits_shift, self.time_conditioned = MASK, PAD, logits_shift, time_conditioned
        self.calls = []

    def forward(self, x, sigma=None, attention_mask=None):
        self.calls.append((x.clone(), None if sigma is None else sigma.clone(), attention_mask))
        h = self.emb[x]
        ctx = h.mean(1, keepdim=True).expand_as(h)
        if sigma is not None:
            ctx = ctx + sigma[:, None, None]
        return torch.cat([h, ctx], -1) @ self.head * 2


SAMPLERS = ["mdlm", "first-hitting", "llada", "llada:random", "dream", "dream:origin", "dream:maskgit_plus",
            "dream:topk_margin", "fast-dllm"]


def run(sampler, model=None, seed=0, **kw):
    model = model or TinyModel()
    kw = {"gen_length": 32, "steps": 16, "temperature": 1.0, **kw}
    if sampler.startswith("fast-dllm"):
        kw.setdefault("block_length", 8)
    g = torch.Generator().manual_seed(seed)
    return dllm.generate(model, sampler=sampler, generator=g, **kw), model


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_fill_every_mask_and_keep_the_prompt(sampler):
    prompt = torch.randint(1, MASK, (3, 5))
    out, _ = run(sampler, prompt=prompt)
    assert out.sequences.shape == (3, 5 + 32)
    assert torch.equal(out.sequences[:, :5], prompt)
    assert not (out.sequences == MASK).any()
    again, _ = run(sampler, prompt=prompt)
    assert torch.equal(out.sequences, again.sequences)  # seeded generator: reproducible
    other, _ = run(sampler, prompt=prompt, seed=1)
    assert not torch.equal(out.sequences, other.sequences)


@pytest.mark.parametrize("sampler, expected", [("llada", 16), ("dream", 16), ("first-hitting", 32)])
def test_nfe_as_documented(sampler, expected):
    out, model = run(sampler, return_history=True)
    assert out.nfe == expected == len(model.calls) == len(out.history) == len(out.step_times)


def test_fast_dllm_steps_adapt_and_respect_blocks():
    out, model = run("fast-dllm", return_history=True, threshold=0.5)
    assert 32 // 8 <= out.nfe == len(model.calls) <= 32
    # a block is finished before the next one starts
    for canvas in out.history:
        open_blocks = [(canvas[0, b:b + 8] == MASK).any().item() for b in range(0, 32, 8)]
        assert open_blocks == sorted(open_blocks)


def test_llada_cfg_counts_two_evaluations_and_masks_the_prompt():
    prompt = torch.randint(1, MASK, (2, 4))
    out, model = run("llada", prompt=prompt, cfg_scale=1.0)
    assert out.nfe == 32 and len(model.calls) == 16
    x, _, _ = model.calls[0]
    assert x.shape[0] == 4 and (x[2:, :4] == MASK).all() and torch.equal(x[:2, :4], prompt)
    # ragged prompts: both halves of the guided batch carry the prompts' padding mask
    out, model = run("llada", prompt=[[3, 4, 5], [6]], cfg_scale=1.0)
    _, _, mask = model.calls[0]
    assert mask.shape == (4, 3 + 32) and torch.equal(mask[:2], mask[2:]) and mask[:, :2].tolist() == [[True, True],
                                                                                                      [False, False]] * 2


def test_llada_semi_autoregressive_blocks():
    out, _ = run("llada", block_length=8, return_history=True)
    for step, canvas in enumerate(out.history):  # 16 steps over 4 blocks of 8
        finished, started = (step + 1) // 4, step // 4 + 1
        assert not (canvas[:, : 8 * finished] == MASK).any()
        assert (canvas[:, 8 * started:] == MASK).all()
        assert (canvas[:, 8 * (started - 1): 8 * started] != MASK).sum() == 2 * (step % 4 + 1)


def test_mdlm_cache_skips_the_network_when_nothing_unmasks():
    out, model = run("mdlm", gen_length=4, steps=64)
    assert not (out.sequences == MASK).any()
    assert out.nfe == len(model.calls) < 64
    timed, model = run("mdlm", model=TinyModel(time_conditioned=True), gen_length=4, steps=64)
    assert timed.nfe == 64  # a time-conditioned model needs the time at every step
    assert model.calls[0][1] is not None


def test_infill_keeps_known_tokens():
    template = torch.full((32,), MASK)
    template[:5] = torch.arange(1, 6)
    template[-3:] = torch.tensor([7, 8, 9])
    template[15] = 11
    for sampler in ("llada", "mdlm", "fast-dllm"):
        out, _ = run(sampler, infill=template)
        known = template != MASK
        assert torch.equal(out.sequences[0, known], template[known])
        assert not (out.sequences == MASK).any()


def test_ragged_prompts_are_left_padded_with_an_attention_mask():
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    out, model = run("llada", prompt=prompts)
    assert out.sequences[0, :3].tolist() == [5, 6, 7] and out.sequences[1, :3].tolist() == [PAD, PAD, 8]
    attention = model.calls[0][2]
    assert attention[1, :3].tolist() == [False, False, True] and attention[:, 3:].all()


def test_shifted_logits_and_callback():
    seen = []
    out, _ = run("dream", model=TinyModel(logits_shift=1), callback=lambda step, x, logits: seen.append(step))
    assert not (out.sequences == MASK).any() and seen == list(range(16))


def test_clear_errors():
    model = TinyModel()
    with pytest.raises(ValueError, match="unknown sampler"):
        dllm.generate(model, gen_length=8, steps=4, sampler="ddim")
    with pytest.raises(ValueError, match="no variant"):
        dllm.generate(model, gen_length=8, steps=4, sampler="llada:greedy")
    with pytest.raises(ValueError, match="threshold applies only"):
        dllm.generate(model, gen_length=8, steps=4, sampler="llada", threshold=0.9)
    with pytest.raises(ValueError, match="multiple of block_length"):
        dllm.generate(model, gen_length=8, steps=4, sampler="llada", block_length=3)
    with pytest.raises(ValueError, match="mask token"):
        dllm.generate(model, torch.tensor([1, MASK]), gen_length=8, steps=4, sampler="llada")
    with pytest.raises(ValueError, match="mask_id"):
        dllm.generate(lambda x: x, gen_length=8, steps=4, sampler="llada")


# ---- SEDD samplers ------------------------------------------------------------------------------

from dllm.sedd import Absorbing, Uniform  # noqa: E402


class TinyScore(nn.Module):
    """A sigma-conditioned toy score network over a graph's classes."""

    def __init__(self, graph):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.graph = graph
        k = graph.num_classes
        self.emb = nn.Parameter(torch.randn(k, 8, generator=g))
        self.head = nn.Parameter(torch.randn(17, k, generator=g))
        self.calls = []

    def forward(self, x, sigma):
        self.calls.append(sigma.clone())
        h = self.emb[x]
        h = torch.cat([h, h.mean(1, keepdim=True).expand_as(h), sigma[:, None, None].expand(*x.shape, 1)], -1)
        return h @ self.head


@pytest.mark.parametrize("graph", [Absorbing(V - 1), Uniform(V)])
@pytest.mark.parametrize("method", ["analytic", "euler"])
def test_sedd_samplers(graph, method):
    model = TinyScore(graph)
    prompt = torch.randint(0, V - 1, (2, 3))
    g = torch.Generator().manual_seed(0)
    out = dllm.generate(model, prompt, gen_length=24, steps=8, sampler=f"sedd-{method}", generator=g, return_history=True)
    assert out.sequences.shape == (2, 27) and torch.equal(out.sequences[:, :3], prompt)
    assert out.nfe == 9 == len(model.calls) == len(out.history)  # steps + the denoising step
    assert (out.sequences < graph.num_classes).all()
    if isinstance(graph, Absorbing):
        assert not (out.sequences == graph.mask_id).any()
    assert model.calls[0][0] > model.calls[-1][0]  # noise decreases
    again = dllm.generate(model, prompt, gen_length=24, steps=8, sampler=f"sedd-{method}",
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.sequences, again.sequences)


def test_sedd_infill_on_the_uniform_graph_uses_minus_one():
    model = TinyScore(Uniform(V))
    template = torch.full((16,), -1)
    template[4:8] = torch.tensor([1, 2, 3, 4])
    out = dllm.generate(model, gen_length=16, steps=4, sampler="sedd-analytic", infill=template)
    assert out.sequences[0, 4:8].tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="do not apply to the SEDD samplers"):
        dllm.generate(model, gen_length=16, steps=4, sampler="sedd-euler", threshold=0.9)
    with pytest.raises(ValueError, match="^top_k do not apply"):
        dllm.generate(model, gen_length=16, steps=4, sampler="sedd-euler", top_k=1, temperature=1.0)
    dllm.generate(model, gen_length=16, steps=4, sampler="sedd-euler", temperature=1.0, top_p=1.0)
    # A masked-diffusion model under a SEDD sampler: the missing graph is the error, not the options.
    with pytest.raises(ValueError, match="graph"):
        dllm.generate(TinyModel(), gen_length=16, steps=4, sampler="sedd-euler", temperature=0.8)
