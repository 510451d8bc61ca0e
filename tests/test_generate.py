"""dllm.generate: every sampler on a tiny random model."""

import contextlib
import json
import math
import time
import warnings

import pytest
import torch
from torch import nn

import dllm
from dllm.sampling.options import check_generator_device, check_options
from threads import assert_same_under_threads

V, MASK, PAD = 40, 39, 0


class TinyModel(nn.Module):
    """Bidirectional toy: each position sees its token and the mean of the sequence."""

    def __init__(self, logits_shift=0, time_conditioned=False, vocab=V):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(vocab, 16, generator=g))
        self.head = nn.Parameter(torch.randn(32, vocab, generator=g))
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
    prompt = torch.randint(1, MASK, (3, 5), generator=torch.Generator().manual_seed(0))
    out, _ = run(sampler, prompt=prompt)
    assert out.sequences.shape == (3, 5 + 32)
    assert torch.equal(out.sequences[:, :5], prompt)
    assert not (out.sequences == MASK).any()
    again, _ = run(sampler, prompt=prompt)
    assert torch.equal(out.sequences, again.sequences)  # seeded generator: reproducible
    # TinyModel's proposals are nearly one-hot (two seeds differ in ~10 of 96 tokens), so one other
    # seed can draw the same sequences by chance; three all doing so would take a generator ignored
    assert any(not torch.equal(out.sequences, run(sampler, prompt=prompt, seed=seed)[0].sequences) for seed in (1, 2, 3))


@pytest.mark.parametrize("sampler, expected", [("llada", 16), ("dream", 16), ("first-hitting", 32)])
def test_nfe_as_documented(sampler, expected):
    out, model = run(sampler, return_history=True)
    assert out.nfe == expected == len(model.calls) == len(out.history) == len(out.step_times)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_history_and_callback_see_every_step(sampler):
    """return_history keeps the canvas after every step, step_times times every step and
    callback(step, x, logits) sees each step once, in order, for every sampler: mdlm's steps that
    reuse cached logits and fast-dllm's adaptive ones count as steps too."""
    seen = []
    out, model = run(sampler, prompt=torch.randint(1, MASK, (2, 3)), return_history=True,
                     callback=lambda step, x, logits: seen.append((step, x.clone())))
    steps = len(out.history)
    assert steps == len(out.step_times) == len(seen) >= 1
    assert [step for step, _ in seen] == list(range(steps))
    assert all(torch.equal(x, canvas) for (_, x), canvas in zip(seen, out.history))
    assert torch.equal(out.history[-1], out.sequences)
    masks = [int((canvas == MASK).sum()) for canvas in out.history]
    assert masks == sorted(masks, reverse=True) and masks[-1] == 0
    if sampler in ("mdlm", "llada", "llada:random") or sampler.startswith("dream"):
        assert steps == 16  # run()'s steps, whatever the network calls (mdlm's cache skips some)
    if sampler == "mdlm":  # cached steps call no network; the last may add its final argmax's call
        assert out.nfe == len(model.calls) <= steps + 1
    else:
        assert out.nfe == len(model.calls) == steps


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
    x, _, mask = model.calls[0]
    assert mask.shape == (4, 3 + 32) and torch.equal(mask[:2], mask[2:]) and mask[:, :2].tolist() == [[True, True],
                                                                                                      [False, False]] * 2
    assert x[3, :3].tolist() == [PAD, PAD, MASK]  # only real prompt tokens are masked; padding stays padding
    # so a time-conditioned model's t (masked over real tokens) stays within [0, 1] in both halves
    out, model = run("llada", model=TinyModel(time_conditioned=True), prompt=[[3, 4, 5], [6]], cfg_scale=1.0)
    sigmas = torch.stack([sigma for _, sigma, _ in model.calls])
    assert torch.isfinite(sigmas).all()
    torch.testing.assert_close(sigmas[0, 2:], torch.full((2,), -torch.log1p(torch.tensor(-(1 - 1e-3))).item()))
    # an infill template's known tokens are the condition too (LLaDA's generate masks every position given
    # at the start), also without a prompt; generated tokens stay in both halves
    template = torch.full((32,), MASK)
    template[:4], template[-4:] = torch.tensor([5, 6, 7, 8]), torch.tensor([9, 10, 11, 12])
    for prompt in (None, [[3, 4]]):
        out, model = run("llada", prompt=prompt, infill=template, cfg_scale=1.0)
        known = out.sequences.shape[1] - 32
        first, last = model.calls[0][0], model.calls[-1][0]
        assert (first[1, :known + 4] == MASK).all() and (first[1, -4:] == MASK).all()
        assert torch.equal(first[0, known:], template) and torch.equal(last[1, known + 4:-4], last[0, known + 4:-4])


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


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mdlm_cache_draws_what_the_uncached_sampler_draws(temperature):
    # the cache reuses logits only where a time-agnostic model would return the same ones, so a
    # model that ignores sigma samples alike whether it says it is time-conditioned (no cache) or not
    class IgnoresSigma(TinyModel):
        def forward(self, x, sigma=None, attention_mask=None):
            return super().forward(x, None, attention_mask)

    cached, uncached = (run("mdlm", model=IgnoresSigma(time_conditioned=timed), gen_length=16, steps=64,
                            temperature=temperature)[0] for timed in (False, True))
    assert torch.equal(cached.sequences, uncached.sequences) and cached.nfe < uncached.nfe == 64


@pytest.mark.parametrize("model", [TinyModel(), TinyModel(time_conditioned=True), TinyModel(logits_shift=1)],
                         ids=["time-agnostic", "time-conditioned", "shifted"])
def test_mdlm_ends_with_the_argmax_of_what_is_still_masked(model, monkeypatch):
    # MDLM's grid stops at t = eps; one more forward's argmax fills what is left (rare at eps = 1e-5,
    # so a large eps shows it), at sigma(eps) and reading the shifted rows
    monkeypatch.setattr(dllm.sampling.masked, "MDLM_EPS", 0.5)
    out, model = run("mdlm", model=model, gen_length=32, steps=1)
    assert not (out.sequences == MASK).any() and out.nfe == len(model.calls) == 2
    before, sigma, _ = model.calls[1]
    left = before == MASK
    assert 0 < left.sum() < 32  # the ancestral step from t = 1 to 0.5 unmasks about half
    if model.time_conditioned:
        torch.testing.assert_close(sigma, torch.tensor([-math.log1p(-(1 - 1e-3) * 0.5)]))  # log-linear, t = eps
    logits = model(before, sigma)
    if model.logits_shift:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)
    logits[..., MASK] = float("-inf")
    assert torch.equal(out.sequences[left], logits.argmax(-1)[left])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_step_that_commits_nothing_is_an_error_not_a_hang_or_masks_returned(sampler, monkeypatch):
    # commit_tokens on CUDA leaves a row with NaN confidences as it is (count -1); inside a CUDA
    # graph's replay nothing raises at that step, so the sampler has to notice the unfilled masks
    def refusing(x, x0, conf, **kw):
        return torch.full((x.shape[0],), -1, dtype=torch.long)

    monkeypatch.setattr(dllm.sampling.masked.ops, "commit_tokens", refusing)
    with pytest.raises(ValueError, match="left masked positions unfilled: the model's logits hold NaN or"):
        run(sampler)


@pytest.mark.parametrize("shift", [0, 1])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_infill_keeps_known_tokens(sampler, shift):
    template = torch.full((32,), MASK)
    template[:5] = torch.arange(1, 6)
    template[-3:] = torch.tensor([7, 8, 9])
    template[15] = 11
    out, _ = run(sampler, model=TinyModel(logits_shift=shift), infill=template)
    known = template != MASK
    assert torch.equal(out.sequences[0, known], template[known])
    assert not (out.sequences == MASK).any()


def test_llada_runs_no_step_that_commits_nothing():
    # blocks of 8 with 4 steps each: the infill fills the second block, and the last block has two
    # masked tokens, so two of its steps would commit none
    template = torch.full((32,), MASK)
    template[8:16] = torch.arange(1, 9)
    template[24:30] = torch.arange(10, 16)
    out, model = run("llada", infill=template, block_length=8, return_history=True)
    assert out.nfe == len(model.calls) == len(out.history) == 4 + 0 + 4 + 2
    assert all((before != after).any() for before, after in zip([model.calls[0][0]] + out.history, out.history))
    known = template != MASK
    assert torch.equal(out.sequences[0, known], template[known]) and not (out.sequences == MASK).any()


def test_sampling_a_model_with_dropout_on_warns():
    model = TinyModel()
    model.drop = nn.Dropout(0.1)
    with pytest.warns(UserWarning, match=r"dropout on.*model.eval\(\)"):
        run("llada", model=model)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run("llada", model=model)


def test_the_dropout_warning_names_the_callers_line():
    """The warning points at the user's call of dllm.generate, not at torch.no_grad's wrapper or
    dllm's own frames (masked samplers and the SEDD dispatch have different depths)."""
    masked, score = TinyModel(), TinyScore(Absorbing(V - 1))
    for model, sampler in ((masked, "llada"), (score, "sedd-analytic")):
        model.drop = nn.Dropout(0.1)
        with pytest.warns(UserWarning, match="dropout on") as caught:
            dllm.generate(model, [1, 2], gen_length=8, steps=4, sampler=sampler)
        assert [w.filename for w in caught] == [__file__], sampler


def test_one_prompt_completes_each_of_several_infill_templates():
    templates = torch.full((3, 32), MASK)
    for row in range(3):
        templates[row, 4 * row] = row + 1
    prompt = [5, 6, 7]
    out, _ = run("llada", prompt=prompt, infill=templates)
    assert out.sequences.shape == (3, 3 + 32)
    assert (out.sequences[:, :3] == torch.tensor(prompt)).all()
    known = templates != MASK
    assert torch.equal(out.sequences[:, 3:][known], templates[known]) and not (out.sequences == MASK).any()
    repeated, _ = run("llada", prompt=torch.tensor([prompt] * 3), infill=templates)
    assert torch.equal(out.sequences, repeated.sequences)


def test_ragged_prompts_are_left_padded_with_an_attention_mask():
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    out, model = run("llada", prompt=prompts)
    assert out.sequences[0, :3].tolist() == [5, 6, 7] and out.sequences[1, :3].tolist() == [PAD, PAD, 8]
    attention = model.calls[0][2]
    assert attention[1, :3].tolist() == [False, False, True] and attention[:, 3:].all()


def test_one_list_of_token_ids_is_one_prompt():
    """What tokenizer.encode returns (a list or an array of ints) is one prompt, not a batch of them."""
    import numpy as np

    expected, _ = run("llada", prompt=torch.tensor([5, 6, 7]))
    for prompt in ([5, 6, 7], (5, 6, 7), np.array([5, 6, 7])):
        out, _ = run("llada", prompt=prompt)
        assert out.sequences.shape == (1, 3 + 32) and torch.equal(out.sequences, expected.sequences)


def test_model_attribute_and_output_conventions():
    """pad_id None (a tokenizer without a pad token) pads with 0; a tuple output (Hugging Face's
    return_dict=False) gives its first element; a bad mask_id or output is named in the error."""
    model = TinyModel()
    model.pad_id = None
    out, _ = run("llada", model=model, prompt=[[5, 6], [7]])
    assert out.sequences[1, 0] == 0

    class TupleModel(TinyModel):
        def forward(self, x, sigma=None, attention_mask=None):
            return super().forward(x, sigma, attention_mask), None

    expected, _ = run("dream", prompt=torch.tensor([[5, 6]]))
    out, _ = run("dream", model=TupleModel(), prompt=torch.tensor([[5, 6]]))
    assert torch.equal(out.sequences, expected.sequences)
    for mask_id, message in ((None, "mask_id` is None"), (-1, "must be >= 0, got -1")):
        model = TinyModel()
        model.mask_id = mask_id
        with pytest.raises(ValueError, match=message):
            run("llada", model=model)
    with pytest.raises(TypeError, match="the model returned dict; expected logits"):
        run("llada", model=type("M", (TinyModel,), {"forward": lambda self, x, **kw: {"logits": x}})())
    with pytest.raises(TypeError, match="the model returned torch.int64 logits; expected float32"):
        run("llada", model=type("M", (TinyModel,), {"forward": lambda self, x, **kw: x[..., None].expand(-1, -1, V)})())
    narrow = TinyModel()
    narrow.vocab_size = V + 5  # ids from V on could never be sampled, though a prompt may hold them
    with pytest.raises(ValueError, match=f"logits over {V} tokens, fewer than its vocab_size {V + 5}"):
        run("llada", model=narrow)
    past_the_logits = type("M", (TinyModel,), {"forward": lambda self, x, **kw: TinyModel.forward(self, x % V, **kw)})()
    past_the_logits.mask_id = V  # a mask id one past the logits: named here, not by the op that reads the column
    for sampler in ("mdlm", "llada", "first-hitting", "dream", "fast-dllm"):
        with pytest.raises(ValueError, match=f"logits over {V} tokens, without a column for its mask_id {V}"):
            run(sampler, model=past_the_logits)



def test_an_output_with_logits_is_read_by_name_before_position():
    """A NamedTuple output (loss, logits) is a tuple whose first element is not the logits."""
    from typing import NamedTuple

    class Output(NamedTuple):
        loss: torch.Tensor | None
        logits: torch.Tensor

    class NamedOutputModel(TinyModel):
        def forward(self, x, sigma=None, attention_mask=None):
            return Output(None, super().forward(x, sigma, attention_mask))

    expected, _ = run("llada", prompt=torch.tensor([[5, 6]]))
    out, _ = run("llada", model=NamedOutputModel(), prompt=torch.tensor([[5, 6]]))
    assert torch.equal(out.sequences, expected.sequences)


def test_a_graph_attribute_that_is_not_a_sedd_graph_makes_no_score_model():
    """torch.fx's GraphModule has a .graph of its own: it samples like the model it traces, and
    the SEDD samplers name what they found instead of failing inside it."""
    class Traceable(TinyModel):  # no Python branches
        def forward(self, x):
            h = self.emb[x]
            return torch.cat([h, h.mean(1, keepdim=True).expand_as(h)], -1) @ self.head * 2

    model = Traceable()
    traced = torch.fx.symbolic_trace(model)
    traced.mask_id, traced.pad_id = MASK, PAD
    expected, _ = run("llada", model=model, prompt=torch.tensor([[5, 6]]))
    out, _ = run("llada", model=traced, prompt=torch.tensor([[5, 6]]))
    assert torch.equal(out.sequences, expected.sequences)
    with pytest.raises(ValueError, match="need a score model .* not a Graph"):
        dllm.generate(traced, gen_length=8, steps=4, sampler="sedd-analytic")

def test_right_padded_prompts_are_moved_to_the_left():
    prompt = torch.tensor([[5, 6, 7], [8, PAD, PAD]])
    right, model = run("llada", prompt=prompt, attention_mask=torch.tensor([[1, 1, 1], [1, 0, 0]]))
    left, _ = run("llada", prompt=[torch.tensor([5, 6, 7]), torch.tensor([8])])
    assert torch.equal(right.sequences, left.sequences)
    assert model.calls[0][2][1, :3].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="one contiguous run"):
        run("llada", prompt=prompt, attention_mask=torch.tensor([[1, 1, 1], [1, 0, 1]]))


def test_a_tokenizers_padded_lists_come_with_their_attention_mask():
    """tokenizer(texts, padding=True) without return_tensors gives lists of one length and a list
    mask: the same batch as the tensors. Lists of different lengths are padded by dllm, so a mask
    with them is refused."""
    ids, mask = [[5, 6, 7], [8, PAD, PAD]], [[1, 1, 1], [1, 0, 0]]
    expected, _ = run("llada", prompt=torch.tensor(ids), attention_mask=torch.tensor(mask))
    out, model = run("llada", prompt=ids, attention_mask=mask)
    assert torch.equal(out.sequences, expected.sequences)
    assert model.calls[0][2][1, :3].tolist() == [False, False, True]
    one, _ = run("llada", prompt=[5, 6, PAD], attention_mask=[1, 1, 0])  # one prompt's ids and mask
    assert torch.equal(one.sequences, run("llada", prompt=torch.tensor([5, 6, PAD]),
                                          attention_mask=torch.tensor([1, 1, 0]))[0].sequences)
    assert one.sequences[0, :3].tolist() == [PAD, 5, 6]
    with pytest.raises(ValueError, match="different lengths, which dllm left-pads itself"):
        run("llada", prompt=[[5, 6, 7], [8]], attention_mask=mask)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_time_conditioned_models_get_sigma_from_every_sampler(sampler):
    out, model = run(sampler, model=TinyModel(time_conditioned=True), prompt=torch.tensor([[1, 2, 3, 4]]))
    sigmas = torch.cat([sigma for _, sigma, _ in model.calls])
    assert len(sigmas) == out.nfe and torch.isfinite(sigmas).all()
    assert (sigmas[1:] <= sigmas[:-1]).all()  # the noise falls as tokens are committed
    if sampler.partition(":")[0] in ("llada", "dream", "fast-dllm"):  # no clock: the canvas's masked fraction
        masked = [(x == MASK).sum() / x.shape[1] for x, _, _ in model.calls]
        torch.testing.assert_close(sigmas, -torch.log1p(-(1 - 1e-3) * torch.stack(masked)))


def test_trained_model_wrappers_pass_sigma_and_the_padding_mask():
    from dllm.models import build_model, model_config
    from dllm.sampling.pretrained import MaskedLM, ScoreModel
    from dllm.sedd import LogLinear

    net = build_model(model_config("tiny", arch="dit", vocab_size=V, hidden=32, heads=4, layers=1, max_seq_len=64,
                                   cond_dim=16, time_conditioning=True)).eval()
    sigmas = []
    net.register_forward_pre_hook(lambda module, args: sigmas.append(args[1] if len(args) > 1 else None))
    masked = MaskedLM(net, MASK)
    assert masked.time_conditioned
    dllm.generate(masked, [[1, 2, 3], [4]], gen_length=8, steps=4, sampler="mdlm")
    assert sigmas and all(s is not None for s in sigmas)
    score = ScoreModel(net, Absorbing(V - 1), LogLinear())
    out = dllm.generate(score, [[1, 2, 3], [4]], gen_length=8, steps=4, sampler="sedd-analytic")
    assert out.sequences[1, :3].tolist() == [PAD, PAD, 4]


def test_a_time_conditioned_dit_gets_sigma_without_a_wrapper():
    # dllm's own DiT, given a mask id and sampled as it is (not through load_for_sampling's wrapper)
    from dllm.models import build_model, model_config

    for conditioned in (True, False):
        net = build_model(model_config("tiny", arch="dit", vocab_size=V, hidden=32, heads=4, layers=1,
                                       max_seq_len=64, cond_dim=16, time_conditioning=conditioned)).eval()
        net.mask_id = MASK
        sigmas = []
        net.register_forward_pre_hook(lambda module, args: sigmas.append(args[1] if len(args) > 1 else None))
        dllm.generate(net, [[1, 2, 3], [4]], gen_length=8, steps=4, sampler="mdlm")
        assert sigmas and all((s is not None) == conditioned for s in sigmas)


def test_fast_dllm_default_and_short_last_block():
    out, model = run("fast-dllm", gen_length=20, block_length=8, return_history=True)
    assert not (out.sequences == MASK).any()
    for before, after in zip([torch.full((1, 20), MASK)] + out.history, out.history):
        changed = (before != after)[0].nonzero().flatten()
        assert changed.numel() and changed.max() // 8 == changed.min() // 8  # one block per step
    out, _ = run("fast-dllm", gen_length=16, block_length=None)  # the default block (32) is longer
    assert not (out.sequences == MASK).any()


def test_shifted_logits_and_callback():
    seen = []
    out, _ = run("dream", model=TinyModel(logits_shift=1), callback=lambda step, x, logits: seen.append(step))
    assert not (out.sequences == MASK).any() and seen == list(range(16))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_head_shifted_past_the_canvas_reads_row_0_everywhere(sampler):
    # the protocol takes any logits_shift >= 0; on a canvas no longer than the shift every position
    # reads row 0, as it does under a shift of one on a canvas of two
    want = run(sampler, model=TinyModel(logits_shift=1), gen_length=2, steps=2)[0].sequences
    out, _ = run(sampler, model=TinyModel(logits_shift=2), gen_length=2, steps=2)
    assert torch.equal(out.sequences, want)


DREAM_CONFIDENCE = {"maskgit_plus": "prob", "topk_margin": "margin", "entropy": "entropy"}  # Dream's `alg`s


def dream_transcription(model, prompt, gen_length, steps, alg, top_k, top_p, eps=1e-3, scored_by_model=False):
    """Dream's diffusion_generate at temperature 0 for one sequence, step by step in float64: shifted
    logits, the proposal's distribution after top-p / top-k (dllm also drops the mask token), a
    confidence from it (from the unfiltered distribution if scored_by_model, as LLaDA scores), and
    the floor(n (1 - s/t)) most confident positions committed."""
    from dllm.reference import unmask as ref

    x = torch.cat([prompt, torch.full((1, gen_length), MASK)], 1)
    times = torch.linspace(1, eps, steps + 1).tolist()
    for i in range(steps):
        masked = x[0] == MASK
        logits = ref.shifted(model(x).double(), 1)[0]
        x0 = ref.clean_log_probs(logits, MASK).argmax(-1)  # filtering keeps the argmax
        conf = ref.confidence(logits, x0, MASK, DREAM_CONFIDENCE[alg]) if scored_by_model else \
            ref.proposal_confidence(logits, x0, MASK, DREAM_CONFIDENCE[alg], 0.0, top_k, top_p)
        n = int(masked.sum())
        k = n if i == steps - 1 else int(n * (1 - times[i + 1] / times[i]))
        order = sorted(masked.nonzero().flatten().tolist(), key=lambda j: (-conf[j].item(), j))
        for j in order[:k]:
            x[0, j] = x0[j]
    return x


class SofterModel(TinyModel):
    def forward(self, x, sigma=None, attention_mask=None):
        return super().forward(x, sigma, attention_mask) * 0.5


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_dream_scores_the_filtered_proposal_distribution_as_dream_does(alg):
    model = SofterModel(logits_shift=1)
    prompt = torch.randint(1, MASK, (1, 4), generator=torch.Generator().manual_seed(3))
    out = dllm.generate(model, prompt, gen_length=32, steps=8, sampler=f"dream:{alg}", temperature=0.0, top_p=0.5)
    want = dream_transcription(model, prompt, 32, 8, alg, 0, 0.5)
    assert torch.equal(out.sequences, want)
    # the setting tells the two scorings apart
    assert not torch.equal(want, dream_transcription(model, prompt, 32, 8, alg, 0, 0.5, scored_by_model=True))


def llada_transcription(model, prompt, gen_length, steps, block_length, cfg_scale):
    """LLaDA's generate at temperature 0 with low-confidence remasking, the canvas after every
    step: per block, get_num_transfer_tokens (floor(m / steps) a step, one more in each of the
    first m mod steps steps); guided logits u + (w + 1)(c - u), u from the canvas whose given tokens
    are masked; the k most probable proposals of the block committed (dllm also drops the mask token)."""
    from dllm.reference import unmask as ref

    x = torch.cat([prompt, torch.full((prompt.shape[0], gen_length), MASK)], 1)
    start, per_block, history = prompt.shape[1], steps // (gen_length // block_length), []
    given = x != MASK
    for lo in range(start, x.shape[1], block_length):
        masked = (x[:, lo:lo + block_length] == MASK).sum(-1)
        counts = [[int(m) // per_block + (i < int(m) % per_block) for i in range(per_block)] for m in masked]
        for i in range(per_block):
            logits = model(x).double()
            if cfg_scale:
                unconditional = x.clone()
                unconditional[given] = MASK
                u = model(unconditional).double()
                logits = u + (cfg_scale + 1) * (logits - u)
            x0, conf = ref.predict_masked_greedy(logits, x, MASK)
            window = torch.tensor([[lo, lo + block_length]] * x.shape[0])
            x = ref.commit_tokens(x, x0, conf, MASK, num_tokens=torch.tensor(counts)[:, i], window=window)
            history.append(x)
    return history


class PositionalModel(SofterModel):
    """TinyModel's masked positions share their logits; a table per position tells them apart."""

    def forward(self, x, sigma=None, attention_mask=None):
        table = torch.randn(x.shape[1], V, generator=torch.Generator().manual_seed(9))
        return super().forward(x, sigma, attention_mask) * 0.6 + table


@pytest.mark.parametrize("steps, block_length, cfg_scale", [(6, 10, 0.0), (7, 20, 0.5)])
def test_llada_commits_what_llada_commits_at_every_step(steps, block_length, cfg_scale):
    # blocks of 10 in 3 steps commit 4, 3, 3; 20 masks in 7 steps commit 3 3 3 3 3 3 2
    prompt = torch.randint(1, MASK, (2, 4), generator=torch.Generator().manual_seed(3))
    out = dllm.generate(PositionalModel(), prompt, gen_length=20, steps=steps, sampler="llada",
                        block_length=block_length, cfg_scale=cfg_scale, return_history=True)
    want = llada_transcription(PositionalModel(), prompt, 20, steps, block_length, cfg_scale)
    assert len(out.history) == len(want) == steps
    for got, expected in zip(out.history, want):
        assert torch.equal(got, expected)


def test_prompt_mask_and_infill_of_the_wrong_shape_are_named():
    with pytest.raises(ValueError, match=r"attention_mask must have the prompt's shape \(2, 3\), got \(2, 4\)"):
        dllm.generate(TinyModel(), [[1, 2, 3], [4, 5, 6]], attention_mask=[[1] * 4] * 2, gen_length=4, steps=2,
                      sampler="llada")
    with pytest.raises(ValueError, match=r"infill must be \[gen_length\] or \[B, gen_length\] with gen_length 4, "
                                         r"got \(1, 3\)"):
        dllm.generate(TinyModel(), [1], infill=[1, -1, 2], gen_length=4, steps=2, sampler="llada")


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
    for sampler, options, message in [
            ("llada", dict(block_length=-8), "block_length must be a positive int"),
            ("fast-dllm", dict(block_length=0), "block_length must be a positive int"),
            ("mdlm", dict(block_length=4), "block_length applies only"),
            ("dream", dict(block_length=4), "block_length applies only"),
            ("llada", dict(cfg_scale=-1.0), "cfg_scale must be a finite number >= 0"),
            ("llada", dict(cfg_scale=float("nan"), prompt=[1]), "cfg_scale must be finite"),
            ("llada", dict(cfg_scale=1.0), "cfg_scale needs a prompt or an infill template's known tokens"),
            ("llada", dict(cfg_scale=1.0, infill=[MASK] * 8), "cfg_scale needs a prompt or an infill"),
            ("dream:origin", dict(alg_temp=0.5), "not to dream:origin"),
            ("llada", dict(alg_temp=0.5), "not to 'llada'"),
            ("llada", dict(top_k=2), "at temperature 0 'llada' takes the argmax"),
            ("fast-dllm", dict(top_p=0.5), "at temperature 0 'fast-dllm' takes the argmax"),
            # dream:origin ranks no confidence for them to filter
            ("dream:origin", dict(top_k=2), "at temperature 0 'dream:origin' takes the argmax"),
            ("dream:origin", dict(top_p=0.5), "at temperature 0 'dream:origin' takes the argmax"),
            ("llada:", {}, "unknown sampler"),
            ("mdlm:entropy", {}, "sampler 'mdlm' has no variant 'entropy'; it has none: use 'mdlm'"),
            ("dream:margin", {}, "no variant 'margin'; choose one of dream:origin, dream:maskgit_plus, "
                                 "dream:topk_margin, dream:entropy"),
            ("fast-dllm", dict(threshold=-0.5), r"threshold is a probability in \[0, 1\]"),
            ("fast-dllm", dict(threshold=1.5), r"threshold is a probability in \[0, 1\]"),
            ("fast-dllm", dict(threshold=float("nan")), "threshold must be finite"),
            ("llada", dict(attention_mask=torch.ones(1, 3, dtype=torch.bool)), "there is no prompt"),
            ("llada", dict(prompt=torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[0, 2, 1]])), "must hold 1"),
            ("llada", dict(steps=4.0), "steps must be a positive int"),
            ("llada", dict(gen_length=0), "gen_length must be a positive int"),
            # past int64 torch's "Overflow when unpacking long" named nothing
            ("llada", dict(steps=2**70), r"steps must be a positive int \(at most 2\*\*63 - 1\), got 1180"),
            ("mdlm", dict(gen_length=2**63), "gen_length must be a positive int"),
            ("fast-dllm", dict(block_length=2**64), "block_length must be a positive int"),
            ("llada", dict(cfg_scale=1e39, prompt=[1]), "cfg_scale must be a finite number >= 0 within float32's range"),
            ("llada", dict(prompt=[]), "empty list"),
            ("llada", dict(prompt=[torch.tensor([1, 2]), torch.tensor([[3]])]), "must hold 1-D prompts"),
            ("llada", dict(prompt=torch.ones(1, 1, 3, dtype=torch.long)), r"\[P\] or \[B, P\]"),
            ("llada", dict(prompt=torch.tensor([-1, 2])), "negative token ids"),
            ("llada", dict(prompt=torch.ones(2, 3, dtype=torch.long), infill=torch.full((3, 8), MASK)), "3 rows for 2"),
            ("llada", dict(infill=torch.full((8,), -2)), "negative ids"),
            ("llada", dict(temperature=-1.0), "temperature, alg_temp and top_k must be >= 0"),
            ("dream", dict(alg_temp=-0.5), "temperature, alg_temp and top_k must be >= 0"),
            ("llada", dict(top_k=-1), "temperature, alg_temp and top_k must be >= 0"),
            ("llada", dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
            ("llada", dict(prompt=[[1, 2], [3]], model=TinyModel()), None)]:
        kw = {"gen_length": 8, "steps": 4, **options}
        model = kw.pop("model", model)
        if message is None:
            model.pad_id = MASK
            message = r"pad_id \(model.pad_id, 0 when it sets none\) equals its mask_id"
        with pytest.raises(ValueError, match=message):
            dllm.generate(model, sampler=sampler, **kw)
    with pytest.raises(TypeError, match="integer token ids"):
        dllm.generate(TinyModel(), torch.tensor([1.5, 2.0]), gen_length=8, steps=4, sampler="llada")
    # a newcomer's prompts: text, a tokenizer's whole output, a ragged template
    for prompt, message in (("def f(", r"not text \('def f\('\): encode it with the model's tokenizer"),
                            (["def", "class"], "not text"),
                            ({"input_ids": [[1, 2]], "attention_mask": [[1, 1]]},
                             r"prompt=enc\['input_ids'\], attention_mask=enc\['attention_mask'\]")):
        with pytest.raises(TypeError, match=message):
            dllm.generate(TinyModel(), prompt, gen_length=8, steps=4, sampler="llada")
    with pytest.raises(ValueError, match="infill must be a tensor, an array or a list of token ids, with rows of one"):
        dllm.generate(TinyModel(), [1], infill=[[1, -1], [2]], gen_length=2, steps=2, sampler="llada")
    with pytest.raises(TypeError, match="integer token ids"):
        dllm.generate(TinyModel(), gen_length=8, steps=4, sampler="llada", infill=torch.zeros(8, dtype=torch.bool))
    with pytest.raises(TypeError, match="sampler must be a name"):
        dllm.generate(TinyModel(), gen_length=8, steps=4, sampler=None)
    # the proposal options are checked before the network runs (an 8B model's forward is the cost of a late error)
    for options, error, message in [(dict(temperature=None), TypeError, "temperature must be a number"),
                                    (dict(alg_temp=None, sampler="dream"), TypeError, "alg_temp must be a number"),
                                    (dict(top_k=2.5), TypeError, "top_k must be an int"),
                                    (dict(cfg_scale=None), TypeError, "cfg_scale must be a number"),
                                    (dict(threshold="0.5", sampler="fast-dllm"), TypeError, "threshold must be a number"),
                                    (dict(temperature=float("inf")), ValueError, "temperature must be finite"),
                                    (dict(top_p=10**400), ValueError, "top_p must be finite"),  # past float64
                                    (dict(generator=5), TypeError, "generator must be a torch.Generator"),
                                    (dict(callback=5), TypeError, "callback must be None or callable")]:
        model = TinyModel()
        with pytest.raises(error, match=message):
            dllm.generate(model, **{"gen_length": 8, "steps": 4, "sampler": "llada", **options})
        assert model.calls == []
    model = TinyModel()
    model.mask_id = 39.5
    with pytest.raises(TypeError, match="must be an int, got 39.5"):
        dllm.generate(model, gen_length=8, steps=4, sampler="llada")


def test_steps_past_what_a_sampler_can_hold():
    # torch's "Overflow when unpacking long long" (mdlm, dream, SEDD) and "IntArrayRef contains an
    # int that cannot be represented as a SymInt" (llada) named nothing
    for sampler, model in (("mdlm", TinyModel()), ("dream", TinyModel()), ("sedd-euler", TinyScore(Absorbing(V - 1))),
                           ("sedd-analytic", TinyScore(Absorbing(V - 1)))):
        for steps in (2**60 - 1, 2**63 - 1):
            message = rf"steps must be at most 2\*\*60 - 2 for the {sampler} sampler, got {steps}: its time grid"
            with pytest.raises(ValueError, match=message):
                dllm.generate(model, gen_length=4, steps=steps, sampler=sampler)
            with pytest.raises(ValueError, match=message):
                check_options(sampler, gen_length=4, steps=steps, device=torch.device("cpu"))
        assert model.calls == []
    # llada's blocks run a step a token at most, so any count past that draws what that count draws;
    # first-hitting and fast-dllm ignore steps
    for sampler, options in (("llada", dict(block_length=4)), ("llada:random", dict(block_length=4)),
                             ("first-hitting", {}), ("fast-dllm", dict(block_length=4))):
        outs = [run(sampler, gen_length=8, steps=steps, **options)[0] for steps in (8, 16, 2**63 - 2)]
        assert all(torch.equal(outs[0].sequences, o.sequences) and outs[0].nfe == o.nfe for o in outs[1:])
        check_options(sampler, gen_length=8, steps=2**63 - 2, device=torch.device("cpu"), **options)


class _CudaLikeGenerator(torch.Generator):
    """What a machine without a GPU can build of a CUDA generator: only its device is checked."""

    def __new__(cls, device="cuda:0"):
        self = super().__new__(cls)
        self._device = torch.device(device)
        return self

    @property
    def device(self):
        return self._device


@pytest.mark.parametrize("sampler", ["llada", "sedd-analytic"])
def test_a_generator_on_another_device_is_refused_before_the_network_runs(sampler):
    model = TinyModel() if sampler == "llada" else TinyScore(Absorbing(V - 1))
    with pytest.raises(ValueError, match=r"the generator is on cuda:0 but the model is on cpu: make it with "
                                         r"torch.Generator\(device='cpu'\)"):
        dllm.generate(model, gen_length=8, steps=4, sampler=sampler, generator=_CudaLikeGenerator())
    assert model.calls == []


def test_a_generator_on_another_cuda_device_is_refused_before_the_network_runs(monkeypatch):
    # torch draws from a generator of another CUDA index without a word (it checks only the type)
    import importlib

    module = importlib.import_module("dllm.sampling.generate")  # (dllm.sampling.generate is also the function)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())  # made_current's
    for sampler, model in (("llada", TinyModel()), ("sedd-analytic", TinyScore(Absorbing(V - 1)))):
        monkeypatch.setattr(module, "_device_of", lambda model: torch.device("cuda", 0))
        with pytest.raises(ValueError, match=r"the generator is on cuda:1 but the model is on cuda:0: make it "
                                             r"with torch.Generator\(device='cuda:0'\)"):
            dllm.generate(model, gen_length=8, steps=4, sampler=sampler, generator=_CudaLikeGenerator("cuda:1"))
        # an index-less "cuda" is the current device, cuda:1 here
        monkeypatch.setattr(module, "_device_of", lambda model: torch.device("cuda"))
        with pytest.raises(ValueError, match=r"the generator is on cuda:0 but the model is on cuda:1: make it "
                                             r"with torch.Generator\(device='cuda:1'\)"):
            dllm.generate(model, gen_length=8, steps=4, sampler=sampler, generator=_CudaLikeGenerator("cuda:0"))
        assert model.calls == []
    for model_device, generator_device in (("cuda:0", "cuda:0"), ("cuda:1", "cuda:1"), ("cuda", "cuda:1"),
                                           ("cuda:1", "cuda"), ("cuda", "cuda")):
        check_generator_device(_CudaLikeGenerator(generator_device), torch.device(model_device))
    with pytest.raises(ValueError, match="the generator is on cuda:1 but the model is on cuda:0"):
        check_generator_device(_CudaLikeGenerator("cuda"), torch.device("cuda:0"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_callable_declared_on_cuda_without_cuda_is_named():
    def model(x):
        raise AssertionError("not called")
    model.mask_id, model.device = MASK, "cuda"
    with pytest.raises(ValueError, match="the model says it runs on cuda, but no CUDA device is visible"):
        dllm.generate(model, gen_length=4, steps=2, sampler="llada")


def test_token_ids_outside_a_known_vocabulary_are_named():
    model = TinyModel()
    model.vocab_size = V
    with pytest.raises(ValueError, match=f"the prompt holds token id 45, outside the model's vocabulary of {V}"):
        dllm.generate(model, [1, 45, 2], gen_length=8, steps=4, sampler="llada")
    with pytest.raises(ValueError, match=f"the infill holds token id {V}, outside"):
        dllm.generate(model, [1], gen_length=3, steps=3, sampler="llada", infill=[MASK, V, -1])
    dllm.generate(model, [1, V - 2], gen_length=3, steps=3, sampler="llada", infill=[MASK, V - 2, -1])


def test_a_canvas_longer_than_the_model_takes_names_the_prompt_and_gen_length():
    # the model would fail inside its forward with its own window's numbers, naming no argument
    for sampler, model in (("llada", TinyModel()), ("sedd-analytic", TinyScore(Absorbing(V - 1)))):
        model.max_seq_len = 12
        with pytest.raises(ValueError, match=r"the prompt \(3 tokens\) and gen_length \(10\) make a canvas of 13 "
                                             r"tokens, longer than the model's max_seq_len of 12: shorten the prompt, "
                                             r"or lower gen_length to at most 9"):
            dllm.generate(model, [1, 2, 3], gen_length=10, steps=2, sampler=sampler)
        with pytest.raises(ValueError, match="shorten the prompt: it alone fills the window"):
            dllm.generate(model, list(range(1, 13)), gen_length=1, steps=1, sampler=sampler)
        assert model.calls == []
        assert dllm.generate(model, [1, 2, 3], gen_length=9, steps=3, sampler=sampler).sequences.shape == (1, 12)
    model = TinyModel()
    model.config = type("Config", (), {"max_seq_len": 8})()  # dllm's models say it in their config
    with pytest.raises(ValueError, match="max_seq_len of 8: lower gen_length to at most 8$"):  # no prompt to shorten
        dllm.generate(model, gen_length=9, steps=3, sampler="mdlm")


def test_the_models_pad_id_and_logits_shift_are_checked_before_the_network_runs():
    for name, value, error in (("pad_id", -1, ValueError), ("pad_id", 1.5, TypeError), ("pad_id", True, TypeError),
                               ("logits_shift", "1", TypeError), ("logits_shift", 1.5, TypeError),
                               ("logits_shift", torch.tensor([-1]), ValueError)):
        model = TinyModel()
        setattr(model, name, value)
        with pytest.raises(error, match=f"the model's `{name}` must be (an int|>= 0), got "):
            dllm.generate(model, [[1, 2], [3]], gen_length=4, steps=2, sampler="dream")
        assert model.calls == []
    model = TinyModel()
    model.pad_id, model.vocab_size = V, V
    with pytest.raises(ValueError, match=f"the model's pad_id {V}, which pads the prompts, is outside its vocabulary "
                                         f"of {V}"):
        dllm.generate(model, [[1, 2], [3]], gen_length=4, steps=2, sampler="llada")
    assert dllm.generate(model, [1, 2], gen_length=4, steps=2, sampler="llada").sequences.shape == (1, 6)  # unused
    # None: no shift, as pad_id None pads with 0; a one-element integer tensor (a buffer) counts as its value
    want = run("dream", model=TinyModel(logits_shift=1), prompt=[[1, 2], [3]])[0].sequences
    for shift, pad in ((None, 0), (torch.tensor(1), torch.tensor(PAD))):
        model = TinyModel(logits_shift=shift)
        model.pad_id = pad
        out = run("dream", model=model, prompt=[[1, 2], [3]])[0].sequences
        assert torch.equal(out, want) == (shift is not None)


def test_padding_that_holds_the_mask_id_takes_the_pad_id():
    # a tokenizer may pad with any id, the mask's too: the padding is never attended, so the sampler
    # writes the model's pad_id there, and the output is that of the same batch padded with pad_id
    prompt = torch.tensor([[7, 8, MASK], [9, 10, 11]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out, model = run("llada", prompt=prompt, attention_mask=mask)
    want, _ = run("llada", prompt=torch.tensor([[7, 8, PAD], [9, 10, 11]]), attention_mask=mask)
    assert torch.equal(out.sequences, want.sequences)
    assert torch.equal(out.sequences[0, :3], torch.tensor([PAD, 7, 8]))
    model = TinyModel()
    model.pad_id = MASK
    with pytest.raises(ValueError, match=f"padding \\(attention_mask 0\\) holds the mask token {MASK}, which is also "
                                         "the model's pad_id"):
        dllm.generate(model, prompt, attention_mask=mask, gen_length=4, steps=2, sampler="llada")
    with pytest.raises(ValueError, match="contains the mask token"):  # where it is attended, it stays an error
        dllm.generate(TinyModel(), prompt, gen_length=4, steps=2, sampler="llada")


def test_an_empty_batch_generates_nothing_without_calling_the_model():
    for sampler in SAMPLERS:
        model = TinyModel()
        out = dllm.generate(model, torch.zeros(0, 3, dtype=torch.long), gen_length=4, steps=2, sampler=sampler,
                            return_history=True)
        assert out.sequences.shape == (0, 7) and out.nfe == 0 and out.history == [] and model.calls == []


def test_padding_masks_reach_only_models_that_take_them():
    class NoMaskModel(TinyModel):
        def forward(self, x, sigma=None):
            return super().forward(x, sigma)

    with pytest.raises(ValueError, match="accepts attention_mask="):
        run("llada", model=NoMaskModel(), prompt=[[1, 2], [3]])
    # a mask with no padding is dropped: the model runs unmasked, as for prompts of one length
    out, model = run("llada", model=NoMaskModel(), prompt=torch.tensor([1, 2]), attention_mask=torch.tensor([1, 1]))
    expected, _ = run("llada", prompt=torch.tensor([1, 2]))
    assert torch.equal(out.sequences, expected.sequences)
    # a 1-D mask goes with a 1-D prompt
    out, model = run("llada", prompt=torch.tensor([5, 1, 2]), attention_mask=torch.tensor([0, 1, 1]))
    assert model.calls[0][2][0, :3].tolist() == [False, True, True]


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


def test_a_score_models_noise_must_be_a_schedule():
    model = TinyScore(Absorbing(V - 1))
    model.noise = "loglinear"  # a config's name, not the schedule: was "'str' object is not callable"
    with pytest.raises(TypeError, match="model.noise must be a schedule.* not a str"):
        dllm.generate(model, [[1]], gen_length=4, steps=2, sampler="sedd-analytic")
    model.noise = dllm.sedd.Geometric()  # a schedule given is used, not the graph's default
    model.calls.clear()
    dllm.generate(model, [[1]], gen_length=4, steps=2, sampler="sedd-analytic")
    assert model.calls[0][0].item() == pytest.approx(20.0, rel=1e-5)  # sigma(1): geometric's, not log-linear's 6.9


@pytest.mark.parametrize("sampler", SAMPLERS + ["sedd-analytic"])
def test_a_float64_model_samples_as_its_logits_rounded_to_float32(sampler):
    """The sampler ops read float32, bfloat16 or float16: a float64 model (a reference run, a
    published checkpoint loaded with dtype="float64") samples from its logits rounded to float32."""
    class Rounded(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net
            for name in ("mask_id", "pad_id", "logits_shift", "time_conditioned", "graph"):
                if hasattr(net, name):
                    setattr(self, name, getattr(net, name))

        def forward(self, x, sigma=None):
            return self.net(x, sigma).float()

    if sampler.startswith("sedd-"):
        net = TinyScore(Absorbing(V - 1)).double()
        draw = lambda model: dllm.generate(model, torch.randint(0, V - 1, (2, 3), generator=torch.Generator().manual_seed(1)),
                                           gen_length=16, steps=8, sampler=sampler,
                                           generator=torch.Generator().manual_seed(0))
    else:
        net = TinyModel().double()
        draw = lambda model: run(sampler, model)[0]
    assert torch.equal(draw(net).sequences, draw(Rounded(net)).sequences)


@pytest.mark.parametrize("sampler", ["mdlm", "llada", "dream", "fast-dllm", "sedd-analytic"])
def test_samplers_draw_alike_on_any_thread_count(sampler):
    # A vocabulary of 1500 makes the ops split the 3 x 69 positions between threads (grains
    # 1 + 65536 / 1500 = 44 for predict_masked, 43 for sedd_step), so the whole loop is checked.
    vocab = 1500
    model = TinyScore(Absorbing(vocab - 1)) if sampler.startswith("sedd") else TinyModel(vocab=vocab)
    prompt = torch.randint(1, MASK, (3, 5), generator=torch.Generator().manual_seed(3))
    kw = {"mdlm": dict(temperature=0.9), "llada": dict(temperature=0.9), "dream": dict(temperature=0.9, top_p=0.95),
          "fast-dllm": dict(temperature=0.9, block_length=16), "sedd-analytic": {}}[sampler]
    assert_same_under_threads(lambda g: dllm.generate(model, prompt, sampler=sampler, gen_length=64, steps=16,
                                                      generator=g, **kw).sequences, threads=(1, 2))


def test_sedd_infill_on_the_uniform_graph_uses_minus_one():
    model = TinyScore(Uniform(V))
    template = torch.full((16,), -1)
    template[4:8] = torch.tensor([1, 2, 3, 4])
    out = dllm.generate(model, gen_length=16, steps=4, sampler="sedd-analytic", infill=template)
    assert out.sequences[0, 4:8].tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="^threshold does not apply to the SEDD samplers"):
        dllm.generate(model, gen_length=16, steps=4, sampler="sedd-euler", threshold=0.9)
    with pytest.raises(ValueError, match="^top_k does not apply"):
        dllm.generate(model, gen_length=16, steps=4, sampler="sedd-euler", top_k=1)
    dllm.generate(model, gen_length=16, steps=4, sampler="sedd-euler", temperature=1.0, top_p=1.0)
    # A masked-diffusion model under a SEDD sampler: the missing graph is the error, not the options.
    with pytest.raises(ValueError, match="graph"):
        dllm.generate(TinyModel(), gen_length=16, steps=4, sampler="sedd-euler", temperature=0.8)
    with pytest.raises(ValueError, match="score .SEDD. model"):
        dllm.generate(model, gen_length=16, steps=4, sampler="llada")


@pytest.mark.parametrize("sampler", SAMPLERS + ["sedd-analytic", "sedd-euler"])
def test_an_infill_that_knows_every_token_returns_without_calling_the_model(sampler):
    score = sampler.startswith("sedd")
    model = TinyScore(Uniform(V)) if score else TinyModel()
    prompt = torch.randint(1, MASK, (2, 3), generator=torch.Generator().manual_seed(0))
    template = torch.randint(1, MASK, (2, 8), generator=torch.Generator().manual_seed(1))
    kw = {} if score else {"temperature": 1.0}
    out = dllm.generate(model, prompt, gen_length=8, steps=4, sampler=sampler, infill=template, return_history=True,
                        callback=lambda *_: pytest.fail("no step runs"), **kw)
    assert torch.equal(out.sequences, torch.cat([prompt, template], 1))
    assert out.nfe == len(model.calls) == len(out.history) == len(out.step_times) == 0
    template[1, 5] = -1  # one unknown token: the sampler runs
    out = dllm.generate(model, prompt, gen_length=8, steps=4, sampler=sampler, infill=template, **kw)
    assert out.nfe == len(model.calls) >= 1 and (out.sequences[:, 3:] == template).sum() == 15


def test_what_a_call_refuses_does_not_depend_on_the_template_being_complete():
    class NoMaskModel(TinyModel):
        def forward(self, x, sigma=None):
            return super().forward(x, sigma)

    full = torch.randint(1, MASK, (2, 8), generator=torch.Generator().manual_seed(1))
    for template in (full, full.index_fill(1, torch.tensor([5]), -1)):
        with pytest.raises(ValueError, match=r"gen_length \(8\) must be a multiple of block_length \(3\)"):
            dllm.generate(TinyModel(), [[1, 2]] * 2, gen_length=8, steps=4, sampler="llada", block_length=3,
                          infill=template)
        with pytest.raises(ValueError, match=r"steps \(3\) must be a multiple of the number of blocks \(2\)"):
            dllm.generate(TinyModel(), [[1, 2]] * 2, gen_length=8, steps=3, sampler="llada", block_length=4,
                          infill=template)
        with pytest.raises(ValueError, match="accepts attention_mask="):
            dllm.generate(NoMaskModel(), [[1, 2], [3]], gen_length=8, steps=4, sampler="mdlm", infill=template)


def test_a_trained_folder_samples_from_python(tmp_path):
    """docs/training.md's route from `dllm train` to dllm.generate: load_for_sampling wraps the bare
    network with what the samplers need (mask id; a SEDD run's graph and noise)."""
    from _train_helpers import make_corpus, tiny

    corpus = make_corpus(tmp_path / "corpus")
    for objective, kind, sampler in (("mdlm", "masked", "mdlm"), ("sedd", "score", "sedd-analytic")):
        dllm.train(**tiny(tmp_path / objective, corpus, objective=objective, steps=2))
        model, tok, got_kind = dllm.load_for_sampling(tmp_path / objective / "run" / "model")
        assert got_kind == kind
        prompt = tok.encode("def ")
        out = dllm.generate(model, prompt, gen_length=16, steps=8, sampler=sampler, temperature=1.0,
                            generator=torch.Generator().manual_seed(0))
        assert out.sequences.shape == (1, len(prompt) + 16) and out.sequences[0, :len(prompt)].tolist() == list(prompt)
        assert not (out.sequences == tok.mask_id).any() and isinstance(tok.decode(out.sequences[0].tolist()), str)
        if kind == "masked":  # the bare network, which lacks the mask id, points to the wrapper
            with pytest.raises(ValueError, match="no `mask_id`.*dllm.load_for_sampling"):
                dllm.generate(dllm.models.from_pretrained(tmp_path / objective / "run" / "model"), prompt,
                              gen_length=16, steps=8, sampler=sampler)
        # the wrapper gives the network's window (seq_len 64), so a canvas too long is named before any call
        with pytest.raises(ValueError, match=r"gen_length \(64\) make a canvas of 68 tokens, longer than the "
                                             r"model's max_seq_len of 64"):
            dllm.generate(model, prompt, gen_length=64, steps=8, sampler=sampler)
    # a run record whose sedd objective lost its noise schedule is named, not a KeyError
    config = tmp_path / "sedd" / "run" / "model" / "config.json"
    record = json.loads(config.read_text())
    record["objective"].pop("noise")
    config.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="config.json': a sedd objective records its graph"):
        dllm.load_for_sampling(config.parent)


@pytest.mark.parametrize("sampler", ["llada", "sedd-analytic"])
def test_an_autoregressive_model_is_pointed_to_its_own_generate(sampler):
    # load_for_sampling returns an AR folder's network as it is (kind "ar"); without this check the
    # masked samplers would ask for a mask id and point back to load_for_sampling
    cfg = dllm.models.model_config("tiny", arch="ar", vocab_size=50, hidden=32, heads=4, layers=1, max_seq_len=32)
    with pytest.raises(ValueError, match=r"autoregressive model.*model\.generate\(prompt, max_new_tokens\)"):
        dllm.generate(dllm.models.build_model(cfg), [1, 2], gen_length=8, steps=8, sampler=sampler)


def test_the_canvas_goes_where_the_model_is(monkeypatch):
    """The model's device: its parameters', else its buffers', else a callable's `device`; a CUDA
    one is made current while the sampler runs (step_times' events and a CUDA graph's capture
    stream are the current device's, not the model's on cuda:1 without set_device)."""
    import importlib

    module = importlib.import_module("dllm.sampling.generate")  # (dllm.sampling.generate is also the function)

    only_buffers = nn.Module()
    only_buffers.register_buffer("table", torch.zeros(3, device="meta"))
    assert module._device_of(only_buffers) == torch.device("meta")

    def wrapped(x):
        return x
    wrapped.device = "meta"
    assert module._device_of(wrapped) == torch.device("meta")
    assert module._device_of(lambda x: x) == torch.device("cpu")

    entered = []

    class Current:
        def __init__(self, device):
            entered.append(torch.device(device))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", Current)
    body = module._on_the_models_device(lambda model, k: entered.append(k) or k)
    assert body(TinyModel(), "cpu") == "cpu" and entered == ["cpu"]  # no device to make current
    monkeypatch.setattr(module, "_device_of", lambda model: torch.device("cuda", 1))
    assert body(TinyModel(), "gpu") == "gpu" and entered == ["cpu", torch.device("cuda", 1), "gpu"]
    assert dllm.generate.__code__ is body.__code__  # generate runs inside it


# ---- host synchronisation -----------------------------------------------------------------------

from host_syncs import HostSyncs, syncs_per_step  # noqa: E402

# Syncs a sampler's step makes, as its docstring says: mdlm chooses whether a time-agnostic model's
# step needs the network from the previous step's outcome (none for a time-conditioned model, which
# needs it at every step); llada syncs once a block (one block here), the SEDD samplers never.
DOCUMENTED_SYNCS = [("mdlm", TinyModel, 1), ("mdlm", lambda: TinyModel(time_conditioned=True), 0),
                    ("first-hitting", TinyModel, 0), ("llada", TinyModel, 0), ("llada:random", TinyModel, 0),
                    ("dream", TinyModel, 0), ("dream:origin", TinyModel, 0),
                    ("sedd-analytic", lambda: TinyScore(Absorbing(V - 1)), 0),
                    ("sedd-euler", lambda: TinyScore(Uniform(V)), 0)]


@pytest.mark.parametrize("sampler, model, syncs", DOCUMENTED_SYNCS,
                         ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(DOCUMENTED_SYNCS)])
def test_sampler_steps_sync_with_the_host_only_where_documented(sampler, model, syncs):
    # Counted on the CPU: each would stall an eager GPU step (and break its CUDA-graph capture,
    # where it sits inside a captured step function)
    kw = {} if sampler.startswith("sedd") else {"temperature": 1.0}
    counts = syncs_per_step(dllm.generate, model=model(), prompt=[[1, 2, 3], [4, 5, 6]], gen_length=32, steps=16,
                            sampler=sampler, generator=torch.Generator().manual_seed(0), **kw)
    assert len(counts) >= 10 and counts == [syncs] * len(counts)


def test_llada_syncs_with_the_host_once_a_block():
    # the block's step plan (which steps commit a token in some row) is read on the host; its
    # window and counts are made on the device
    def syncs(blocks):
        with HostSyncs() as counter:
            dllm.generate(TinyModel(), [[1, 2, 3], [4, 5, 6]], gen_length=32, steps=16, block_length=32 // blocks,
                          sampler="llada", temperature=1.0, generator=torch.Generator().manual_seed(0))
        return counter.count

    assert syncs(4) - syncs(1) == 3 and syncs(2) - syncs(1) == 1


class _SlowModel(TinyModel):
    """Every call takes at least `delay` seconds of wall clock."""

    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    def forward(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().forward(*args, **kwargs)


@pytest.mark.parametrize("sampler", ["llada", "mdlm"])
def test_step_times_are_milliseconds(sampler):
    """On the CPU, step_times are wall-clock milliseconds: each step with a network call takes at
    least the model's 7 ms, and together they take no longer than the call itself."""
    delay, model = 0.007, _SlowModel(0.007)
    t0 = time.perf_counter()
    out = dllm.generate(model, torch.randint(0, MASK, (2, 3)), gen_length=11, steps=5, sampler=sampler,
                        temperature=1.0, generator=torch.Generator().manual_seed(0))
    total_ms = (time.perf_counter() - t0) * 1e3
    assert len(out.step_times) >= len(model.calls) >= 1
    with_network = sorted(out.step_times)[-len(model.calls):]  # mdlm skips the network on steps that unmask nothing
    assert all(t >= delay * 1e3 for t in with_network), out.step_times
    assert sum(out.step_times) <= total_ms


def test_fast_dllm_threshold_bounds_are_accepted():
    """threshold is a probability in [0, 1], both ends included: 0 commits every masked position of a
    block in its first step (one network call a block), 1 commits only the most confident one unless
    a proposal is certain."""
    model = TinyModel()
    gen_length, block = 13, 5  # blocks of 5, 5, 3
    out = dllm.generate(model, torch.randint(0, MASK, (2, 4)), gen_length=gen_length, steps=1, sampler="fast-dllm",
                        block_length=block, threshold=0.0, return_history=True)
    assert not (out.sequences == MASK).any()
    assert out.nfe == len(model.calls) == 3
    for step, canvas in enumerate(out.history):  # each step fills its whole block
        assert not (canvas[:, :4 + min(block * (step + 1), gen_length)] == MASK).any()
    out = dllm.generate(TinyModel(), None, gen_length=gen_length, steps=1, sampler="fast-dllm", block_length=block,
                        threshold=1.0)
    assert not (out.sequences == MASK).any() and out.nfe >= 3
    for bad in (-1e-9, 1.0 + 1e-9):
        with pytest.raises(ValueError, match="threshold"):
            dllm.generate(TinyModel(), None, gen_length=4, steps=1, sampler="fast-dllm", threshold=bad)


def test_check_options_refuses_what_the_sedd_samplers_do_not_take():
    """check_options (what `dllm sample` runs before loading weights) refuses the options generate
    would refuse a SEDD sampler only after the load: a block length, a temperature other than 0 or 1."""
    cpu = torch.device("cpu")
    for method in ("sedd-analytic", "sedd-euler"):
        for temperature in (0.0, 1.0):
            check_options(method, gen_length=8, steps=4, device=cpu, temperature=temperature)
        with pytest.raises(ValueError, match="block_length does not apply to the SEDD samplers"):
            check_options(method, gen_length=8, steps=4, device=cpu, block_length=4)
        with pytest.raises(ValueError, match="temperature does not apply to the SEDD samplers"):
            check_options(method, gen_length=8, steps=4, device=cpu, temperature=0.7)


@pytest.mark.parametrize("sampler", ["llada", "mdlm", "fast-dllm"])
@pytest.mark.parametrize("cut", [(slice(None), slice(1, None)), (slice(0, 1), slice(None))])
def test_logits_of_the_wrong_batch_or_length_name_the_model(sampler, cut):
    """A model that returns logits for fewer positions (or one row for a batch) is refused naming the
    model's output and the shape expected, before any sampler op reads them."""

    class Short(TinyModel):
        def forward(self, x, sigma=None, attention_mask=None):
            return super().forward(x)[cut]

    with pytest.raises(ValueError, match=r"the model returned logits of shape .* for tokens \(3, 9\); expected"):
        dllm.generate(Short(), torch.randint(0, MASK, (3, 2)), gen_length=7, steps=7, sampler=sampler)


@pytest.mark.parametrize("sampler", ["llada", "mdlm"])
def test_training_mode_without_active_dropout_does_not_warn(sampler):
    """The warning is about dropout that changes the samples: a model in training mode whose dropout
    layers all have p = 0 (as many configurations ship them) samples as in eval mode, without a word."""
    model = TinyModel()
    model.drop, model.drop2 = nn.Dropout(0.0), nn.Dropout1d(0.0)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train = dllm.generate(model, torch.randint(0, MASK, (2, 3)), gen_length=6, steps=6, sampler=sampler,
                              temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert not (train.sequences == MASK).any()


def test_empty_prompts_of_any_dtype_are_unconditional():
    """An empty prompt holds no ids whose type could be wrong: torch.empty(B, 0) (float32 by default)
    and a list of empty lists (which torch reads as float) are B unconditional samples, as
    torch.empty(B, 0, dtype=torch.int64) is."""
    want = dllm.generate(TinyModel(), torch.empty(3, 0, dtype=torch.int64), gen_length=5, steps=5, sampler="llada")
    for prompt in (torch.empty(3, 0), [[], [], []], torch.empty(3, 0, dtype=torch.bool)):
        out = dllm.generate(TinyModel(), prompt, gen_length=5, steps=5, sampler="llada")
        assert out.sequences.dtype == torch.int64 and torch.equal(out.sequences, want.sequences)
    with pytest.raises(TypeError, match="must hold integer token ids"):
        dllm.generate(TinyModel(), torch.ones(3, 1), gen_length=5, steps=5, sampler="llada")


def test_one_padded_prompt_with_several_templates():
    """One padded prompt and B infill templates complete B copies of the prompt, its padding (and
    the model's attention mask) copied with it."""
    model = TinyModel()
    seen = []
    model.forward = lambda x, sigma=None, attention_mask=None: seen.append(attention_mask) or \
        TinyModel.forward(model, x, sigma, attention_mask)
    templates = torch.full((3, 6), -1)
    templates[:, 2] = torch.tensor([7, 8, 9])
    out = dllm.generate(model, torch.tensor([5, 6, 17, 1]), attention_mask=torch.tensor([0, 1, 1, 1]), gen_length=6,
                        steps=5, sampler="llada", infill=templates)
    assert out.sequences.shape == (3, 10)
    assert torch.equal(out.sequences[:, :4], torch.tensor([[5, 6, 17, 1]] * 3))  # (padding kept as given)
    assert torch.equal(out.sequences[:, 6], torch.tensor([7, 8, 9])) and not (out.sequences == MASK).any()
    want = torch.ones(3, 10, dtype=torch.bool)
    want[:, 0] = False
    assert seen and all(torch.equal(m, want) for m in seen)


def _save_trained_folder(folder, objective, **config):
    """A model folder as `dllm train` writes it (config.json's tokenizer and objective), without the training."""
    from dllm.data.tokenizer import ByteTokenizer, tokenizer_config
    from dllm.models import build_model, model_config

    tok = ByteTokenizer()
    net = build_model(model_config("tiny", arch="dit", hidden=32, heads=4, layers=1, max_seq_len=48, cond_dim=16,
                                   **config))
    net.save_pretrained(folder, tokenizer=tokenizer_config(tok), objective=objective(tok).config())
    return net


def test_a_uniform_sedd_folder_samples_over_the_real_tokens(tmp_path):
    """SEDD's uniform graph has no mask state: its network has one entry fewer than the tokenizer,
    and the graph load_for_sampling builds covers exactly the network's entries."""
    from dllm.objectives.diffusion import SEDD

    _save_trained_folder(tmp_path, lambda tok: SEDD(tok, graph="uniform"), vocab_size=257, time_conditioning=True)
    model, tok, kind = dllm.load_for_sampling(tmp_path)
    assert kind == "score" and tok.vocab_size == 258
    assert model.graph.vocab_size == model.model.config.vocab_size == 257
    prompt = tok.encode("x = ")
    out = dllm.generate(model, prompt, gen_length=19, steps=5, sampler="sedd-analytic", temperature=1.0,
                        generator=torch.Generator().manual_seed(3))
    assert out.sequences.shape == (1, len(prompt) + 19)
    assert out.sequences.min() >= 0 and out.sequences.max() < 257  # never the mask id, which this graph lacks


def test_a_loaded_masked_folder_keeps_the_kv_cache_interface(tmp_path):
    """fast-dllm's cache on load_for_sampling's wrapper: the wrapper passes the DiT's new_kv_cache through,
    and the cached run equals the one on the bare network given the mask id."""
    from dllm.objectives.diffusion import MDLM

    net = _save_trained_folder(tmp_path, MDLM, vocab_size=258, time_conditioning=False)
    model, tok, kind = dllm.load_for_sampling(tmp_path)
    assert kind == "masked"
    net.eval().mask_id = tok.mask_id
    prompt = [tok.encode("def f(a, b):"), tok.encode("x")]
    for cache in ("prefix", "dual"):
        got = dllm.generate(model, prompt, gen_length=12, steps=6, block_length=6, sampler="fast-dllm", cache=cache,
                            threshold=0.3, generator=torch.Generator().manual_seed(1))
        want = dllm.generate(net, prompt, gen_length=12, steps=6, block_length=6, sampler="fast-dllm", cache=cache,
                             threshold=0.3, generator=torch.Generator().manual_seed(1))
        assert torch.equal(got.sequences, want.sequences) and got.nfe == want.nfe


def test_the_callback_gets_each_steps_logits():
    """callback(step, x, logits): logits are the network's output of that step, for every sampler that
    calls the network once a step (llada, fast-dllm without a cache, sedd's analytic sampler)."""
    from dllm.models import build_model, model_config
    from dllm.sampling.pretrained import ScoreModel
    from dllm.sedd import Absorbing, LogLinear

    V = 37
    net = build_model(model_config("tiny", arch="dit", vocab_size=V, hidden=32, heads=4, layers=1, max_seq_len=32,
                                   cond_dim=16, time_conditioning=True)).eval()
    outputs = []
    net.register_forward_hook(lambda module, args, out: outputs.append(out.detach().clone()))
    net.mask_id = V - 1
    score = ScoreModel(net, Absorbing(V - 1), LogLinear())
    for model, sampler in ((net, "llada"), (net, "fast-dllm"), (score, "sedd-analytic")):
        outputs.clear()
        seen = []
        dllm.generate(model, [[1, 2, 3], [4, 5]], gen_length=9, steps=3, sampler=sampler, temperature=1.0,
                      generator=torch.Generator().manual_seed(2),
                      callback=lambda step, x, logits: seen.append(logits if logits is None else logits.clone()))
        assert len(seen) == len(outputs) >= 3, sampler
        for got, want in zip(seen, outputs):
            assert isinstance(got, torch.Tensor) and got.shape == (2, 12, V), sampler
            assert torch.allclose(got.float(), want.float()), sampler


def test_a_bool_is_not_a_number_option():
    # True is an int to Python: as temperature, top_k, top_p, cfg_scale, alg_temp or threshold it
    # would pass silently as 1 (a typo for return_history=True, say); it is refused before the network runs
    for sampler, key in (("llada", "temperature"), ("llada", "top_k"), ("llada", "top_p"), ("llada", "cfg_scale"),
                         ("dream", "alg_temp"), ("fast-dllm", "threshold")):
        model = TinyModel()
        with pytest.raises(TypeError, match=f"{key} must be (a number|an int), got True"):
            dllm.generate(model, [3, 4], gen_length=6, steps=3, sampler=sampler, **{key: True})
        assert model.calls == []


def test_the_largest_step_count_a_time_grid_takes_is_accepted():
    # the message's bound, 2**60 - 2, is itself allowed (check_options is what `dllm sample` runs)
    for sampler in ("mdlm", "dream", "sedd-euler", "sedd-analytic"):
        check_options(sampler, gen_length=4, steps=2**60 - 2, device=torch.device("cpu"))
        with pytest.raises(ValueError, match=r"at most 2\*\*60 - 2"):
            check_options(sampler, gen_length=4, steps=2**60 - 1, device=torch.device("cpu"))


def test_a_model_returning_a_list_starting_with_the_logits():
    model = TinyModel()
    want = dllm.generate(model, [3, 4], gen_length=6, steps=3, sampler="llada").sequences
    listed = type("Listed", (), {"mask_id": MASK, "__call__": lambda self, x, **kw: [model(x, **kw), None]})()
    assert torch.equal(dllm.generate(listed, [3, 4], gen_length=6, steps=3, sampler="llada").sequences, want)


def test_a_sedd_cuda_graph_on_a_cpu_model_is_named():
    for sampler in ("sedd-euler", "sedd-analytic"):
        model = TinyScore(Absorbing(V - 1))
        with pytest.raises(ValueError, match="cuda_graph needs a CUDA model; this one is on cpu"):
            dllm.generate(model, [3, 4], gen_length=6, steps=3, sampler=sampler, cuda_graph=True)
        assert model.calls == []


class FlatModel(nn.Module):
    """Fixed random logits per position, so flat that no proposal reaches probability 0.1."""

    def __init__(self, length: int, scale: float = 0.3):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.table = nn.Parameter(torch.randn(length, V, generator=g) * scale, requires_grad=False)
        self.mask_id, self.calls = MASK, []

    def forward(self, x, attention_mask=None):
        self.calls.append(x.clone())
        return self.table[:x.shape[1]].expand(x.shape[0], -1, -1)


def test_mdlm_fills_every_mask_left_at_eps_however_unsure_the_model(monkeypatch):
    """MDLM's final noise removal takes the argmax of every token still masked at t = eps, whatever
    its probability: on proposals below 0.1 nothing may stay masked (or be refused as unfilled)."""
    monkeypatch.setattr(dllm.sampling.masked, "MDLM_EPS", 0.5)  # about half the tokens are left at eps
    rows, length = 3, 29
    model = FlatModel(length)
    probs = torch.softmax(model.table.double()[:, :MASK], -1)
    assert probs.max() < 0.1
    out = dllm.generate(model, torch.empty(rows, 0, dtype=torch.long), gen_length=length, steps=1,
                        sampler="mdlm", temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert len(model.calls) == 2
    left = model.calls[1] == MASK
    assert (left.sum(-1) >= 2).all()  # several per row, so that "at least one a row" is not enough
    assert not (out.sequences == MASK).any()
    argmax = model.table[:, :MASK].argmax(-1).expand(rows, -1)
    assert torch.equal(out.sequences[left], argmax[left])


def _random_weights(net):
    # the DiT's adaLN and head start at zero (constant logits, which every rule would pass)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net


def test_a_loaded_masked_folder_passes_the_padding_mask_and_the_cache_to_its_network(tmp_path):
    """load_for_sampling's MaskedLM of a time-agnostic network (sigma None) hands attention_mask
    and the KV cache's arguments on: ragged prompts, with and without fast-dllm's caches, sample
    as the bare network does (weights that are not zero, so that both change the logits)."""
    from dllm.data.tokenizer import ByteTokenizer, tokenizer_config
    from dllm.models import build_model, model_config
    from dllm.objectives.diffusion import MDLM

    tok = ByteTokenizer()
    net = _random_weights(build_model(model_config("tiny", arch="dit", hidden=32, heads=4, layers=1, max_seq_len=48,
                                                   cond_dim=16, vocab_size=258, time_conditioning=False)))
    net.save_pretrained(tmp_path, tokenizer=tokenizer_config(tok), objective=MDLM(tok).config())
    model, tok, kind = dllm.load_for_sampling(tmp_path)
    assert kind == "masked" and not model.time_conditioned
    net.eval().mask_id = tok.mask_id
    prompt = [tok.encode("def f(a, b):"), tok.encode("x")]
    for cache in (None, "prefix", "dual"):
        kw = dict(gen_length=12, steps=6, block_length=6, sampler="fast-dllm", cache=cache, threshold=0.3)
        got = dllm.generate(model, prompt, generator=torch.Generator().manual_seed(1), **kw)
        want = dllm.generate(net, prompt, generator=torch.Generator().manual_seed(1), **kw)
        assert torch.equal(got.sequences, want.sequences) and got.nfe == want.nfe, cache
    for sampler in ("mdlm", "llada"):
        kw = dict(gen_length=12, steps=6, sampler=sampler, temperature=1.0)
        got = dllm.generate(model, prompt, generator=torch.Generator().manual_seed(2), **kw)
        want = dllm.generate(net, prompt, generator=torch.Generator().manual_seed(2), **kw)
        assert torch.equal(got.sequences, want.sequences), sampler


@pytest.mark.parametrize("objective", ["mdlm", "sedd"])
def test_a_folder_whose_tokenizer_has_one_entry_more_than_its_network_is_refused(tmp_path, objective):
    """A masked or absorbing-SEDD network has an entry for every tokenizer id (the mask included):
    a tokenizer one larger is another model's, refused by name, not an IndexError at sampling."""
    from dllm.data.tokenizer import ByteTokenizer, tokenizer_config
    from dllm.models import build_model, model_config
    from dllm.objectives.diffusion import MDLM, SEDD

    tok = ByteTokenizer()
    assert tok.vocab_size == 258
    net = build_model(model_config("tiny", arch="dit", hidden=32, heads=4, layers=1, max_seq_len=48, cond_dim=16,
                                   vocab_size=257, time_conditioning=objective == "sedd"))
    config = (MDLM(tok) if objective == "mdlm" else SEDD(tok, graph="absorb")).config()
    net.save_pretrained(tmp_path, tokenizer=tokenizer_config(tok), objective=config)
    with pytest.raises(ValueError, match="has 258 entries but the model's vocabulary has 257"):
        dllm.load_for_sampling(tmp_path)


def test_infill_templates_neither_one_nor_one_per_prompt_are_named():
    """Two templates for three prompts: a ValueError naming the counts, not torch's expand error."""
    class Tiny(nn.Module):
        mask_id = MASK

        def forward(self, x, attention_mask=None):
            return torch.zeros(*x.shape, V)

    prompt = torch.randint(1, MASK, (3, 4), generator=torch.Generator().manual_seed(0))
    templates = torch.full((2, 6), MASK)
    with pytest.raises(ValueError, match=r"infill has 2 rows for 3 prompts"):
        dllm.generate(Tiny(), prompt, gen_length=6, steps=6, sampler="llada", infill=templates)


@pytest.mark.parametrize("top_p", [1.5, 0.0, -0.1])
def test_a_top_p_outside_0_1_is_refused_before_the_network_runs(top_p):
    """top_p is a probability mass in (0, 1]: generate refuses one past either end before the first
    network call (predict_masked would only refuse it after the model has run)."""
    class NeverCalled(nn.Module):
        mask_id = MASK

        def forward(self, x, attention_mask=None):
            raise AssertionError("the network ran")

    with pytest.raises(ValueError, match=r"^top_p must be in \(0, 1\]"):
        dllm.generate(NeverCalled(), [1, 2, 3], gen_length=4, steps=4, sampler="mdlm", temperature=1.0, top_p=top_p)


def test_a_sedd_folder_samples_with_the_noise_schedule_its_config_records(tmp_path):
    """config.json's objective records the schedule with its parameters (SEDD's own config.yaml range for
    the geometric one, not the class defaults): load_for_sampling rebuilds that schedule, not a default one."""
    from dllm.objectives.diffusion import SEDD

    def objective(tok):
        obj = SEDD(tok, noise="geometric")
        obj.noise = dllm.sedd.Geometric(1e-4, 20.0)
        return obj

    _save_trained_folder(tmp_path / "geometric", objective, time_conditioning=True)
    model, tok, kind = dllm.load_for_sampling(tmp_path / "geometric")
    assert kind == "score" and isinstance(model.noise, dllm.sedd.Geometric)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    sigma, dsigma = model.noise(t)
    torch.testing.assert_close(sigma, 1e-4 ** (1 - t) * 20.0 ** t)
    torch.testing.assert_close(dsigma, sigma * math.log(20.0 / 1e-4))

    def loglinear(tok):
        obj = SEDD(tok)
        obj.noise = dllm.sedd.LogLinear(eps=1e-2)
        return obj

    _save_trained_folder(tmp_path / "loglinear", loglinear, time_conditioning=True)
    model, tok, kind = dllm.load_for_sampling(tmp_path / "loglinear")
    sigma, _ = model.noise(t)
    torch.testing.assert_close(-torch.expm1(-sigma), (1 - 1e-2) * t)  # the mask probability (1 - eps) t


@pytest.mark.parametrize("sampler", ["mdlm", "first-hitting", "dream", "dream:origin", "fast-dllm"])
def test_cfg_scale_is_refused_by_every_masked_sampler_but_llada(sampler):
    # guidance is llada's alone: any other sampler would run without it, silently
    model = TinyModel()
    with pytest.raises(ValueError, match="cfg_scale applies only to the llada sampler"):
        dllm.generate(model, torch.tensor([[3, 5, 7]]), gen_length=8, steps=4, sampler=sampler, cfg_scale=1.5)
    assert model.calls == []  # refused before the network runs
    # llada takes it (and calls the network twice a step)
    out = dllm.generate(TinyModel(), torch.tensor([[3, 5, 7]]), gen_length=8, steps=4, sampler="llada", cfg_scale=1.5)
    assert out.nfe == 8 and not (out.sequences == MASK).any()
