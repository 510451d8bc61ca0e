"""Each sampler's own rule, checked through dllm.generate: which positions a step commits (and with
what probability), the times and noise levels it gives the model, its guidance and its defaults.
The models here have fixed logits per position, so every rule's outcome is known exactly.
"""

import math

import pytest
import torch
from torch import nn

import dllm
from dllm.sedd import Absorbing, Geometric, LogLinear, Uniform
from stats import chi_square_pvalue

P_MIN = 1e-4  # seeded draws make every test deterministic; this only guards against a bad seed
V, MASK = 40, 39


def position_logits(*probs: list[float]) -> torch.Tensor:
    """[len(probs), V] logits whose softmax over the real tokens (the mask dropped) is each list,
    padded with zeros."""
    rows = torch.zeros(len(probs), V, dtype=torch.float64)
    for i, p in enumerate(probs):
        rows[i, :len(p)] = torch.tensor(p, dtype=torch.float64)
    return torch.where(rows > 0, rows.log(), torch.tensor(-60.0, dtype=torch.float64)).float()


class FixedModel(nn.Module):
    """The same logits [L, V] for every canvas; records the sigma of every call."""

    def __init__(self, logits: torch.Tensor, time_conditioned: bool = False):
        super().__init__()
        self.table = nn.Parameter(logits, requires_grad=False)
        self.mask_id, self.time_conditioned = MASK, time_conditioned
        self.sigmas = []

    def forward(self, x, sigma=None, attention_mask=None):
        self.sigmas.append(sigma)
        return self.table[-x.shape[1]:].expand(x.shape[0], -1, -1)


# Three positions told apart by the confidence rules: A has the most probable token, B the lowest
# entropy (two tokens at 1/2, margin 0) and C the largest top-1 minus top-2 margin.
A, B, C = [0.6, 0.35, 0.05], [0.5, 0.5], [0.55] + [0.45 / 38] * 38
CONFIDENCE = {"maskgit_plus": [0.6, 0.5, 0.55],
              "topk_margin": [0.25, 0.0, 0.55 - 0.45 / 38],
              "entropy": [sum(p * math.log(p) for p in q) for q in (A, B, C)]}


def first_committed(sequences_after_step: torch.Tensor) -> torch.Tensor:
    """The position each row committed in a step that commits one token per row."""
    committed = sequences_after_step != MASK
    assert (committed.sum(-1) == 1).all()
    return committed.long().argmax(-1)


@pytest.mark.parametrize("alg, winner", [("maskgit_plus", 0), ("topk_margin", 2), ("entropy", 1)])
def test_dream_confidence_algorithms_commit_their_own_choice(alg, winner):
    assert max(range(3), key=CONFIDENCE[alg].__getitem__) == winner
    # Two steps over three masks: the first commits floor(3 (1 - s/t)) = 1 token.
    out = dllm.generate(FixedModel(position_logits(A, B, C)), gen_length=3, steps=2, sampler=f"dream:{alg}",
                        return_history=True)
    assert first_committed(out.history[0]).tolist() == [winner]


def test_dream_alg_temp_draws_positions_from_the_tempered_softmax_of_confidence():
    rows, alg_temp = 4000, 0.05
    out = dllm.generate(FixedModel(position_logits(A, B, C)), torch.empty(rows, 0, dtype=torch.long), gen_length=3,
                        steps=2, sampler="dream:maskgit_plus", alg_temp=alg_temp, return_history=True,
                        generator=torch.Generator().manual_seed(0))
    want = torch.softmax(torch.tensor(CONFIDENCE["maskgit_plus"], dtype=torch.float64) / alg_temp, 0)
    assert chi_square_pvalue(first_committed(out.history[0]), want.numpy()) > P_MIN


@pytest.mark.parametrize("sampler", ["llada", "llada:random", "first-hitting"])
def test_which_position_a_one_token_step_commits(sampler):
    """LLaDA's low-confidence remasking commits the most confident proposal; its random remasking
    and the first-hitting sampler a uniformly drawn masked position."""
    rows, length = 3000, 6
    table = position_logits(*[[0.3 + 0.1 * i, 0.7 - 0.1 * i] for i in range(length)])
    infill = torch.full((length,), MASK)
    infill[2] = 5  # known: never a candidate
    out = dllm.generate(FixedModel(table), torch.empty(rows, 0, dtype=torch.long), gen_length=length, steps=length,
                        sampler=sampler, infill=infill, return_history=True,
                        generator=torch.Generator().manual_seed(1))
    before = out.history[0].clone()
    before[:, 2] = MASK
    chosen = first_committed(before)
    if sampler == "llada":
        assert (chosen == 5).all()  # the most confident proposal (0.8)
    else:
        uniform = torch.tensor([0.2, 0.2, 0.0, 0.2, 0.2, 0.2], dtype=torch.float64)
        assert chi_square_pvalue(chosen, uniform.numpy()) > P_MIN


def loglinear_time(sigma: torch.Tensor) -> torch.Tensor:
    return -torch.expm1(-sigma.double()) / (1 - 1e-3)


def test_first_hitting_times_fall_as_the_maximum_of_the_remaining_uniforms():
    """t <- t u^(1/n) with n masked tokens: the time at which the first of n tokens, each
    unmasking at a uniform time in [0, t], unmasks. So (t_next / t)^n is uniform on [0, 1]."""
    rows, length = 2000, 4
    model = FixedModel(position_logits(*[A] * length), time_conditioned=True)
    dllm.generate(model, torch.empty(rows, 0, dtype=torch.long), gen_length=length, steps=length,
                  sampler="first-hitting", generator=torch.Generator().manual_seed(2))
    times = torch.stack([loglinear_time(s) for s in model.sigmas])  # [length, rows]
    ratios = times / torch.cat([torch.ones(1, rows, dtype=torch.float64), times[:-1]])
    n = torch.arange(length, 0, -1, dtype=torch.float64)[:, None]
    uniform = ratios ** n
    bins = (uniform * 10).long().clamp(max=9)
    assert chi_square_pvalue(bins, torch.full((10,), 0.1, dtype=torch.float64).numpy()) > P_MIN


@pytest.mark.parametrize("sampler", ["llada", "dream", "fast-dllm"])
def test_samplers_without_a_clock_give_the_masked_fraction_of_real_tokens(sampler):
    """llada, dream and fast-dllm condition a time-conditioned model on the log-linear sigma of
    the canvas's masked fraction, counted over each row's real tokens (padding excluded)."""
    model = FixedModel(position_logits(*[A] * 12), time_conditioned=True)
    calls = []
    model.register_forward_hook(lambda module, args, kwargs, out: calls.append((args[0].clone(),
                                                                               kwargs["attention_mask"])),
                                with_kwargs=True)
    dllm.generate(model, [[1, 2, 3, 4], [5]], gen_length=8, steps=8, sampler=sampler, temperature=1.0,
                  generator=torch.Generator().manual_seed(0))
    for (x, mask), sigma in zip(calls, model.sigmas):
        fraction = (x == MASK).sum(-1) / mask.sum(-1)
        torch.testing.assert_close(sigma, -torch.log1p(-(1 - 1e-3) * fraction))


def test_llada_guidance_extrapolates_from_the_unconditional_logits():
    """LLaDA's unsupervised classifier-free guidance: u + (w + 1)(c - u), with u the logits of
    the canvas whose prompt is masked."""

    class PromptSensitive(nn.Module):
        mask_id = MASK

        def forward(self, x, attention_mask=None):
            g = torch.Generator().manual_seed(0)
            emb = torch.randn(V, V, generator=g)
            return emb[x] + emb[x].mean(1, keepdim=True)

    seen = []
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    dllm.generate(PromptSensitive(), prompt, gen_length=4, steps=4, sampler="llada", cfg_scale=1.5,
                  callback=lambda step, x, logits: seen.append(logits.clone()))
    canvas = torch.cat([prompt, torch.full((2, 4), MASK)], 1)
    unconditional = canvas.clone()
    unconditional[:, :3] = MASK
    cond, uncond = PromptSensitive()(canvas), PromptSensitive()(unconditional)
    torch.testing.assert_close(seen[0], uncond + 2.5 * (cond - uncond))


def test_fast_dllm_defaults_are_fast_dllms():
    """threshold 0.9 and blocks of 32 tokens, as in Fast-dLLM's generate scripts."""
    model = FixedModel(position_logits(*[[0.95, 0.05], [0.85, 0.15]] * 32))
    prompt = torch.empty(1, 0, dtype=torch.long)
    default = dllm.generate(model, prompt, gen_length=64, steps=64, sampler="fast-dllm", return_history=True)
    # a step commits the block's tokens at >= 0.9 (or its best one): blocks of 32 take 1 + 16 steps
    assert default.nfe == 34
    assert (default.history[0][0, :32:2] != MASK).all() and (default.history[0][0, 32:] == MASK).all()
    for threshold, block_length in ((0.8, 32), (0.9, 16)):
        other = dllm.generate(model, prompt, gen_length=64, steps=64, sampler="fast-dllm", threshold=threshold,
                              block_length=block_length)
        assert other.nfe != default.nfe


@pytest.mark.parametrize("graph, noise", [(Absorbing(V - 1), LogLinear()), (Uniform(V), Geometric())])
@pytest.mark.parametrize("method", ["analytic", "euler"])
def test_sedd_steps_get_sedd_noise_increments(monkeypatch, graph, noise, method):
    """SEDD's sampling.py on t_i = linspace(1, eps, steps + 1), dt = (1 - eps) / steps: analytic
    (Tweedie) steps take sigma(t) - sigma(t - dt), Euler steps dt * dsigma(t); the final denoising
    step takes sigma(eps)."""

    class Score(nn.Module):
        def __init__(self):
            super().__init__()
            self.graph, self.noise = graph, noise
            self.table = torch.randn(graph.num_classes, generator=torch.Generator().manual_seed(0))

        def forward(self, x, sigma):
            return self.table.expand(*x.shape, -1)

    seen = []
    real_step = dllm.ops.sedd_step

    def recording_step(logits, x, sigma, dsig, *, method, **kw):
        seen.append((method, sigma.clone(), dsig.clone()))
        return real_step(logits, x, sigma, dsig, method=method, **kw)

    monkeypatch.setattr(dllm.ops, "sedd_step", recording_step)
    steps, eps = 4, 1e-5
    dllm.generate(Score(), gen_length=5, steps=steps, sampler=f"sedd-{method}")
    assert [m for m, _, _ in seen] == [method] * steps + ["denoise"]
    times, dt = torch.linspace(1, eps, steps + 1), (1 - eps) / steps
    for t, (_, sigma, dsig) in zip(times[:-1], seen[:-1]):
        want_sigma, dsigma = noise(t[None])
        want = want_sigma - noise(t[None] - dt)[0] if method == "analytic" else dt * dsigma
        torch.testing.assert_close(sigma, want_sigma, rtol=1e-6, atol=0)
        torch.testing.assert_close(dsig, want, rtol=1e-5, atol=0)
    torch.testing.assert_close(seen[-1][1], noise(times[-1:])[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(seen[-1][2], seen[-1][1])


@pytest.mark.parametrize("sampler, eps", [("mdlm", 1e-5), ("dream:origin", 1e-3)])
def test_each_step_commits_every_masked_token_with_probability_one_minus_s_over_t(sampler, eps):
    """MDLM's and Dream's original rule: going from t to s each masked token is committed with
    probability (t - s) / t on the grid linspace(1, eps); MDLM's network sees sigma(t)."""
    rows, length, steps = 256, 64, 4
    model = FixedModel(position_logits(*[A] * length), time_conditioned=True)
    out = dllm.generate(model, torch.empty(rows, 0, dtype=torch.long), gen_length=length, steps=steps,
                        sampler=sampler, temperature=1.0, return_history=True,
                        generator=torch.Generator().manual_seed(0))
    times = torch.linspace(1, eps, steps + 1, dtype=torch.float64).tolist()
    before = torch.full((rows, length), MASK)
    for i, after in enumerate(out.history[:steps - 1]):  # the last step commits everything left
        n = (before == MASK).sum().item()
        q = (times[i] - times[i + 1]) / times[i]
        k = ((before == MASK) & (after != MASK)).sum().item()
        assert abs(k - n * q) < 5 * math.sqrt(n * q * (1 - q)), (i, k, n * q)
        before = after
    if sampler == "mdlm":
        want = -torch.log1p(-(1 - 1e-3) * torch.tensor(times[:steps], dtype=torch.float64))
        got = torch.stack([s[0] for s in model.sigmas[:steps]]).double()
        torch.testing.assert_close(got, want.float().double(), rtol=1e-5, atol=0)


def test_plain_dream_is_dreams_entropy_algorithm():
    """sampler="dream" is documented (generate's docstring, DEFAULT_VARIANT) as dream:entropy: of
    three positions ranked differently by each confidence rule, its first step commits entropy's
    pick (B, the lowest entropy), not maskgit_plus's (A) or topk_margin's (C)."""
    model = FixedModel(position_logits(A, B, C))
    plain = dllm.generate(model, gen_length=3, steps=2, sampler="dream", return_history=True)
    entropy = dllm.generate(model, gen_length=3, steps=2, sampler="dream:entropy", return_history=True)
    committed = (plain.history[0] != MASK).long()
    assert committed.sum().item() == 1 and committed.argmax().item() == 1
    assert all(torch.equal(a, b) for a, b in zip(plain.history, entropy.history))


def test_dream_counts_are_floored_from_the_exact_rate_on_a_long_canvas():
    """Dream's confidence algorithms commit floor(n_masked * (1 - s/t)) a step, the rate taken in
    float64: at 9 steps over 993 tokens one step's n (1 - s/t) lies within float32's rounding of an
    integer, where a rate rounded to float32 floors to another count."""
    length, steps = 993, 9
    out = dllm.generate(FixedModel(position_logits(*[A] * length)), gen_length=length, steps=steps,
                        sampler="dream:maskgit_plus", return_history=True)
    times = torch.linspace(1, 1e-3, steps + 1).tolist()
    n, want = length, []
    for i in range(steps):
        k = n if i == steps - 1 else math.floor(n * (1 - times[i + 1] / times[i]))
        want.append(k)
        n -= k
    masked = [length] + [int((h == MASK).sum()) for h in out.history]
    assert [a - b for a, b in zip(masked, masked[1:])] == want
