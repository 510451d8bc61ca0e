"""Objectives against direct float64 formulas written from the definitions, not from the code."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import dllm

from dllm.data import ByteTokenizer
from dllm.sedd import Geometric, LogLinear
from dllm.objectives import AR, LLaDA, MDLM, SEDD, get_objective
from dllm.objectives import masked_diffusion_reference, score_entropy_reference
from dllm.sedd.reference import log_score
from stats import chi_square_pvalue

f64 = torch.float64


def transition(graph, K, sigma):
    """p_t(y | x0) as a [K, K] matrix (rows x0) for total noise sigma."""
    keep = math.exp(-sigma)
    if graph == "absorb":
        P = keep * torch.eye(K, dtype=f64)
        P[:, K - 1] += 1 - keep
        P[K - 1] = 0
        P[K - 1, K - 1] = 1
    else:
        P = keep * torch.eye(K, dtype=f64) + (1 - keep) / K
    return P


def rate(graph, K):
    """Forward rate a -> b (off-diagonal entries)."""
    if graph == "absorb":
        R = torch.zeros(K, K, dtype=f64)
        R[:, K - 1] = 1
        R[K - 1, K - 1] = 0
    else:
        R = torch.full((K, K), 1 / K, dtype=f64)
        R.fill_diagonal_(0)
    return R


def direct_score_entropy(s, x_t, x0, graph, sigma):
    """sum_{y != x_t} R(y -> x_t) [exp(s_y) - r_y s_y + r_y (log r_y - 1)],  r_y = p(y|x0) / p(x_t|x0)."""
    K = len(s)
    P, R = transition(graph, K, sigma), rate(graph, K)
    total = 0.0
    for y in range(K):
        if y == x_t or R[y, x_t] == 0:
            continue
        r = P[x0, y] / P[x0, x_t]
        k = r * (math.log(r) - 1) if r > 0 else 0.0
        total += R[y, x_t] * (math.exp(s[y]) - r * s[y] + k)
    return total


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_score_entropy_matches_the_definition(graph):
    g = torch.Generator().manual_seed(0)
    B, L, K = 3, 7, 6
    logits = torch.randn(B, L, K, generator=g, dtype=f64)
    sigma = torch.tensor([0.05, 0.7, 2.5], dtype=f64)    # both sides of the expm1 switch at 0.5
    dsigma = torch.tensor([1.3, 0.4, 2.0], dtype=f64)
    x0 = torch.randint(0, K - 1, (B, L), generator=g)
    x_t = x0.clone()
    if graph == "absorb":
        x_t[torch.rand(B, L, generator=g) < 0.6] = K - 1
    else:
        move = torch.rand(B, L, generator=g) < 0.6
        x_t[move] = torch.randint(0, K, (B, L), generator=g)[move]
    got = score_entropy_reference(logits, x_t, x0, sigma, dsigma, graph=graph, scale_by_sigma=graph == "absorb")
    s = log_score(logits, x_t, sigma, scale_by_sigma=graph == "absorb")
    want = torch.tensor([sum(dsigma[b].item() * direct_score_entropy(s[b, l].tolist(), x_t[b, l].item(), x0[b, l].item(),
                                                                      graph, sigma[b].item()) for l in range(L))
                         for b in range(B)], dtype=f64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_absorb_log_score_starts_at_the_true_ratio_mass_and_loss_is_zero_at_the_truth():
    K, sigma = 9, torch.tensor([0.3], dtype=f64)
    x_t = torch.full((1, 1), K - 1)
    s = log_score(torch.zeros(1, 1, K, dtype=f64), x_t, sigma, scale_by_sigma=True)
    torch.testing.assert_close(s[0, 0, :K - 1].exp().sum(), 1 / torch.expm1(sigma[0]))
    assert s[0, 0, K - 1] == 0  # the log-ratio of the input state to itself
    # The exact score: all ratio mass on x0 -> score entropy 0; anything else -> positive.
    x0 = torch.tensor([[2]])
    exact = torch.full((1, 1, K), -1e4, dtype=f64)
    exact[0, 0, 2] = -math.log(math.expm1(0.3))
    z = score_entropy_reference(exact, x_t, x0, sigma, torch.ones(1, dtype=f64), graph="absorb", scale_by_sigma=False)
    assert abs(z.item()) < 1e-12
    off = score_entropy_reference(exact + 0.1, x_t, x0, sigma, torch.ones(1, dtype=f64), graph="absorb", scale_by_sigma=False)
    assert off.item() > 1e-4


def test_masked_diffusion_matches_the_definition():
    g = torch.Generator().manual_seed(1)
    B, L, K = 2, 5, 7
    M = K - 1
    logits = torch.randn(B, L, K, generator=g, dtype=f64)
    x0 = torch.randint(0, M, (B, L), generator=g)
    x_t = torch.where(torch.rand(B, L, generator=g) < 0.5, torch.full_like(x0, M), x0)
    w = torch.tensor([2.0, 0.5], dtype=f64)
    got = masked_diffusion_reference(logits, x_t, x0, w, mask_id=M)
    want = []
    for b in range(B):
        tot = 0.0
        for l in range(L):
            if x_t[b, l] == M:
                z = sum(math.exp(logits[b, l, y].item()) for y in range(M))  # the mask logit is excluded
                tot += -(logits[b, l, x0[b, l]].item() - math.log(z))
        want.append(w[b].item() * tot)
    torch.testing.assert_close(got, torch.tensor(want, dtype=f64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("noise", [LogLinear(), Geometric()])
def test_noise_derivative(noise):
    t = torch.linspace(0.01, 0.99, 17, dtype=f64)
    sigma, dsigma = noise(t)
    h = 1e-6
    fd = (noise(t + h)[0] - noise(t - h)[0]) / (2 * h)
    torch.testing.assert_close(dsigma, fd, rtol=1e-6, atol=1e-8)


def test_loglinear_mask_probability_and_mdlm_weight_is_one_over_t():
    n = LogLinear(1e-3)
    t = torch.tensor([0.01, 0.3, 0.9], dtype=f64)
    sigma, dsigma = n(t)
    torch.testing.assert_close(-torch.expm1(-sigma), (1 - 1e-3) * t)
    torch.testing.assert_close(dsigma / torch.expm1(sigma), 1 / t)


class _Fixed(torch.nn.Module):
    """A 'model' that returns given logits and records what it was called with."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x, sigma=None):
        self.x, self.sigma = x, sigma
        return self.logits


def test_sedd_objective_noises_weights_and_reduces_as_specified():
    tok = ByteTokenizer()
    obj = SEDD(tok, graph="absorb")
    B, L, K = 4, 16, tok.vocab_size
    g = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, 256, (B, L), generator=g)
    d = obj.draw(B, L, g)
    logits = torch.randn(B, L, K, generator=g)
    m = _Fixed(logits)
    nll = obj.nll(m, x0, d)
    sigma, dsigma = LogLinear()(d["t"])
    x_t = torch.where(d["u"] < 1 - torch.exp(-sigma)[:, None], torch.full_like(x0, tok.mask_id), x0)
    assert torch.equal(m.x, x_t) and torch.allclose(m.sigma, sigma)
    want = score_entropy_reference(logits.double(), x_t, x0, sigma.double(), dsigma.double(), graph="absorb")
    torch.testing.assert_close(nll.double(), want, rtol=1e-4, atol=1e-3)
    assert torch.allclose(obj.train_loss(nll, L), nll.mean())  # per-sequence sum, mean over the batch
    assert ((d["t"] >= 1e-3) & (d["t"] <= 1)).all()


def test_mdlm_training_estimate_of_a_uniform_model_is_near_log_vocab_per_token():
    """The training estimator (antithetic t in [eps, 1]) expects (1 - eps) log V of a uniform model."""
    tok = ByteTokenizer()
    obj = MDLM(tok)
    B, L = 512, 32
    g = torch.Generator().manual_seed(3)
    d = obj.draw(B, L, g)
    t = d["t"]
    assert torch.allclose(torch.sort((t - 1e-3) / (1 - 1e-3) * B).values.floor(), torch.arange(B, dtype=torch.float32),
                          atol=1e-3)  # antithetic: one t in each 1/B stratum
    x0 = torch.randint(0, 256, (B, L), generator=g)
    nll = obj.nll(_Fixed(torch.zeros(B, L, tok.vocab_size)), x0, d)
    per_token = nll.sum() / (B * L)
    assert abs(per_token.item() / math.log(tok.vocab_size - 1) - 1) < 0.01


def test_llada_weight_and_ar_shift():
    tok = ByteTokenizer()
    B, L = 2, 6
    g = torch.Generator().manual_seed(4)
    x0 = torch.randint(0, 256, (B, L), generator=g)
    obj = LLaDA(tok)
    d = obj.draw(B, L, g)
    logits = torch.randn(B, L, tok.vocab_size, generator=g)
    m = _Fixed(logits)
    nll = obj.nll(m, x0, d)
    p = (1 - 1e-3) * d["t"] + 1e-3
    assert torch.equal(m.x == tok.mask_id, d["u"] < p[:, None]) and m.sigma is None
    torch.testing.assert_close(nll, masked_diffusion_reference(logits, m.x, x0, 1 / p, mask_id=tok.mask_id))
    assert torch.allclose(obj.train_loss(nll, L), nll.sum() / (B * L))

    ar = AR(tok)
    m = _Fixed(logits)
    nll = ar.nll(m, x0, {})
    assert torch.equal(m.x[:, 0], torch.full((B,), tok.eos_id)) and torch.equal(m.x[:, 1:], x0[:, :-1])
    want = -torch.log_softmax(logits.double(), -1).gather(-1, x0[..., None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(nll.double(), want, rtol=1e-5, atol=1e-5)


def test_uniform_sedd_model_has_no_mask_output():
    tok = ByteTokenizer()
    assert SEDD(tok, graph="uniform").model_vocab_size == tok.vocab_size - 1
    d = SEDD(tok, graph="uniform").draw(4, 8, torch.Generator().manual_seed(0))
    assert d["y"].max() < tok.vocab_size - 1


def test_objectives_call_the_fused_losses_with_their_options(monkeypatch):
    from dllm.objectives import diffusion

    calls = []

    def fake_se(logits, x_t, x0, sigma, dsigma, *, graph, scale_by_sigma=True):
        calls.append(("se", graph, scale_by_sigma))
        return torch.full((logits.shape[0],), 7.0)

    def fake_md(logits, x_t, x0, weight, *, mask_id):
        calls.append(("md", mask_id))
        return torch.full((logits.shape[0],), 3.0)

    assert diffusion.score_entropy_loss is dllm.ops.score_entropy_loss
    assert diffusion.masked_diffusion_loss is dllm.ops.masked_diffusion_loss
    monkeypatch.setattr(diffusion, "score_entropy_loss", fake_se)
    monkeypatch.setattr(diffusion, "masked_diffusion_loss", fake_md)
    tok = ByteTokenizer()
    x0 = torch.randint(0, 256, (2, 4))
    g = torch.Generator().manual_seed(0)
    for obj, want in ((SEDD(tok, graph="uniform"), 7.0), (MDLM(tok), 3.0), (LLaDA(tok), 3.0)):
        nll = obj.nll(_Fixed(torch.zeros(2, 4, obj.model_vocab_size)), x0, obj.draw(2, 4, g))
        assert torch.equal(nll, torch.full((2,), want))
    assert calls == [("se", "uniform", False), ("md", tok.mask_id), ("md", tok.mask_id)]


@pytest.mark.parametrize("noise", [LogLinear(0.01), Geometric(1e-3, 5.0)])
def test_get_noise_reads_back_a_schedules_config(noise):
    again = dllm.sedd.get_noise(**noise.config())
    assert type(again) is type(noise) and again.config() == noise.config()
    assert isinstance(dllm.sedd.get_noise("geometric"), Geometric) and isinstance(dllm.sedd.get_noise(), LogLinear)
    with pytest.raises(ValueError, match="two names"):
        dllm.sedd.get_noise("loglinear", type="geometric")


@pytest.mark.parametrize("make,match", [(lambda: LogLinear(eps=2), "eps must lie in"),
                                        (lambda: LogLinear(eps=0), "eps must lie in"),
                                        (lambda: Geometric(1.0, 0.1), "sigma_max must exceed sigma_min"),
                                        (lambda: Geometric(-1, 1), "sigma_min must be a positive"),
                                        (lambda: Geometric(1e-4, float("inf")), "sigma_max must be a positive"),
                                        (lambda: dllm.sedd.Absorbing(-3), "vocab_size must be at least 1"),
                                        # one token leaves the uniform graph nothing to jump to
                                        (lambda: dllm.sedd.Uniform(1), "vocab_size must be at least 2"),
                                        (lambda: dllm.sedd.get_noise(""), "unknown noise schedule ''"),
                                        # a misspelt graph would otherwise train as the uniform graph
                                        (lambda: SEDD(ByteTokenizer(), graph="absorbing"), "unknown graph"),
                                        # a user's tokenizer.json that already holds the mask token elsewhere
                                        (lambda: SEDD(SimpleNamespace(mask_id=3, eos_id=0, vocab_size=10)),
                                         "SEDD needs the mask as the last vocabulary entry; this tokenizer has it "
                                         "at 3 of 10")])
def test_schedules_and_graphs_check_their_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("noise", [LogLinear(), Geometric()])
def test_schedules_take_a_float_t_and_refuse_t_outside_0_1(noise):
    sigma, dsigma = noise(0.5)
    want = noise(torch.tensor(0.5))
    assert torch.equal(sigma, want[0]) and torch.equal(dsigma, want[1])
    for bad in (1.5, -0.1, torch.tensor([0.5, 1.5]), torch.tensor([float("nan")])):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            noise(bad)
    with pytest.raises(ValueError, match=r"got nan and 1 more"):  # the bad value named, not a NaN range
        noise(torch.tensor([0.2, float("nan"), 2.0]))
    with pytest.raises(TypeError, match="t must be a float or a tensor, got list"):
        noise([0.5])


@pytest.mark.parametrize("eps", [1e-3, 1e-5, 1e-7, 1e-9])
def test_loglinear_is_exact_near_t_1_in_float32(eps):
    # 1 - (1 - eps) t cancels in float32 near t = 1: sigma(1) was inf for eps = 1e-9 and 16% low in dsigma at 1e-7
    t = torch.tensor([0.0, 0.3, 0.5, 0.9, 1 - 2**-20, 1.0])
    sigma, dsigma = LogLinear(eps)(t)
    t64 = t.double()
    rest = 1 - (1 - eps) * t64  # float64 loses at most 1e-16 / eps relative here, far below float32's 6e-8
    torch.testing.assert_close(sigma, -torch.log(rest).float(), rtol=5e-7, atol=0)
    torch.testing.assert_close(dsigma, ((1 - eps) / rest).float(), rtol=5e-7, atol=0)


# -- the evaluation bounds -----------------------------------------------------------------------
# A model whose every prediction is uniform over the V real tokens generates each token uniformly,
# whatever the order of unmasking: its exact NLL is log V per token, and the bound of a process that
# starts all-masked is tight for it. Any upper bound must expect at least log V.

def _uniform_model_objectives(tok):
    return {"mdlm": MDLM(tok), "llada": LLaDA(tok), "sedd": SEDD(tok, graph="absorb")}


@pytest.mark.parametrize("name", ["mdlm", "llada", "sedd"])
def test_bound_of_a_uniform_model_is_its_exact_nll(name):
    tok = ByteTokenizer()
    obj = _uniform_model_objectives(tok)[name]
    B, L = 64, 24
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(0, 256, (B, L), generator=g)
    zero = _Fixed(torch.zeros(B, L, tok.vocab_size))
    exact = L * math.log(tok.vocab_size - 1)
    bound = obj.bound(zero, x0, obj.bound_draw(B, L, g))
    torch.testing.assert_close(bound.double(), torch.full((B,), exact, dtype=f64), rtol=1e-5, atol=0)
    # The training estimator (t in [eps, 1], mask rate (1 - eps) t; LLaDA's rate (1 - eps) t + eps)
    # expects, given t, E[#masked] * weight * log V: (1 - eps) L log V for MDLM and SEDD, below the exact NLL.
    t = torch.tensor([0.001, 0.2, 0.7, 1.0])
    if name == "mdlm":
        sigma, dsigma = obj.noise(t)
        expected = -torch.expm1(-sigma) * L * dsigma / torch.expm1(sigma) * math.log(tok.vocab_size - 1)
        torch.testing.assert_close(expected, torch.full((4,), (1 - 1e-3) * exact), rtol=1e-5, atol=0)


class _TokenTable(torch.nn.Module):
    """Logits of each position from its own token and sigma (positions independent given sigma)."""

    def __init__(self, K, scale):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.a, self.b = (scale * torch.randn(K, K, generator=g, dtype=f64) for _ in range(2))

    def forward(self, x, sigma):
        return (self.a[x] + torch.sin(torch.as_tensor(sigma, dtype=f64))[:, None, None] * self.b[x]).float()


def _uniform_dwdse_by_quadrature(noise, model, x0: int, K: int) -> float:
    """int_0^{sigma(1)} E_{x_t ~ q_sigma(.|x0)}[SE] dsigma + KL(q_{sigma(1)}(.|x0) || uniform) for one
    token, in float64: the sum over x_t exact, the integral by trapezoids in log sigma (the integrand
    grows like log(1 / sigma) near 0), the network fed at least sigma(0), the least noise it was trained on."""
    (sigma0, sigma1), _ = noise(torch.tensor([0.0, 1.0], dtype=f64))
    sigma = torch.logspace(-14, math.log10(sigma1), 20001, dtype=f64)
    moved = -torch.expm1(-sigma)
    expected = torch.zeros_like(sigma)
    for xt in range(K):
        x = torch.full((len(sigma), 1), xt)
        se = score_entropy_reference(model(x, sigma.clamp_min(sigma0)).double(), x, torch.full_like(x, x0), sigma,
                                     torch.ones_like(sigma), graph="uniform", scale_by_sigma=False)
        expected += (moved / K + (xt == x0) * torch.exp(-sigma)) * se
    q = torch.full((K,), moved[-1].item() / K, dtype=f64)
    q[x0] += math.exp(-sigma1)
    prior = (q * torch.log(q * K)).sum()
    return (torch.trapezoid(expected * sigma, torch.log(sigma)) + prior).item()


def _expected_uniform_bound(obj, model, x0: int, K: int, n: int = 50000) -> float:
    """E[obj.bound] for one token, without Monte-Carlo noise: v on a midpoint grid of (0, 1], each
    branch of the draw (the share of (0, sigma(0)] and the rest) and each x_t (kept, or jumped to
    each token) forced through the draws and weighted by its probability."""
    (sigma0, _), _ = obj.noise(torch.tensor([0.0, 1.0], dtype=f64))
    share = 0.05 if sigma0 > 0 else 0.0
    v = (torch.arange(n, dtype=f64) + 0.5) / n
    t = v * v  # as the bound draws it
    total = 0.0
    for below, p_branch in ((0.0, share), (0.999, 1 - share)):
        if p_branch == 0:
            continue
        moved = -torch.expm1(-sigma0) * t if below < share else -torch.expm1(-obj.noise(t)[0])
        for y in [None, *range(K)]:  # None: the token kept (no jump)
            draws = {"v": v, "below": torch.full((n,), below, dtype=f64),
                     "u": torch.full((n, 1), 1.0 if y is None else 0.0, dtype=f64),
                     "y": torch.full((n, 1), 0 if y is None else y)}
            p = (1 - moved) if y is None else moved / K
            bound = obj.bound(model, torch.full((n, 1), x0), draws).double()
            total += p_branch * (p * bound).mean().item()
    return total


# the defaults, and schedules that end early, whose prior term is a large part of the bound
@pytest.mark.parametrize("noise", [LogLinear(), Geometric(), LogLinear(0.2), Geometric(0.3, 2.0)],
                         ids=["loglinear", "geometric", "loglinear-eps0.2", "geometric-0.3-2"])
@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_uniform_sedd_bound_is_the_dwdse_integral_with_its_prior(noise, scale):
    """Zero logits are the uniform model, whose exact NLL is log K: the training estimator (t in
    [eps, 1]) reads below it, the bound may not. Checked against quadrature over every noise level."""
    from types import SimpleNamespace

    K = 7
    obj = SEDD(SimpleNamespace(vocab_size=K + 1, mask_id=K, eos_id=K - 1), graph="uniform")
    obj.noise = noise
    model = _TokenTable(K, scale)
    exact = _uniform_dwdse_by_quadrature(obj.noise, model, 3, K)
    if scale == 0:
        assert exact == pytest.approx(math.log(K), rel=1e-6)
    assert _expected_uniform_bound(obj, model, 3, K) == pytest.approx(exact, rel=1e-4)
    # the draws: v stratified over (0, 1], and a sequence's positions summed
    B, L = 20000, 2
    bound = obj.bound(model, torch.full((B, L), 3), obj.bound_draw(B, L, torch.Generator().manual_seed(0))).double()
    assert abs(bound.mean().item() - L * exact) < 4 * bound.std().item() / math.sqrt(B)


def _mask_patterns(L):
    return [torch.tensor([(p >> i) & 1 for i in range(L)], dtype=torch.bool) for p in range(1, 2 ** L)]


class _PatternModel(torch.nn.Module):
    """Logits that depend on the whole masked input and on sigma (as a time-conditioned network's do)."""

    def __init__(self, K, L, time=True):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.table = torch.randn(2 ** L, L, K, generator=g, dtype=f64)
        self.slope = torch.randn(L, K, generator=g, dtype=f64) if time else torch.zeros(L, K, dtype=f64)
        self.K = K

    def forward(self, x, sigma=None):
        code = ((x == self.K - 1).long() * (2 ** torch.arange(x.shape[1]))).sum(-1)
        s = torch.zeros(x.shape[0], dtype=f64) if sigma is None else torch.as_tensor(sigma, dtype=f64)
        return self.table[code] + torch.sin(s)[:, None, None] * self.slope


@pytest.mark.parametrize("time", [False, True])
def test_masked_diffusion_bound_is_the_integral_over_mask_rates(time):
    """MDLM's bound estimates int_0^1 (1/m) E_{z ~ q_m}[sum_masked -log p(x0 | z, sigma(m))] dm (the NELBO
    with the all-mask prior), here by quadrature over every mask pattern of L = 3 tokens; a
    time-conditioned network sees the total noise -log(1 - m), clamped to the schedule's [0, sigma(1)]."""
    tok = ByteTokenizer()
    obj = MDLM(tok)
    L, K = 3, tok.vocab_size
    net = _PatternModel(K, L, time=time)
    x0 = torch.tensor([[5, 200, 17]])
    n = 200000 if not time else 4000
    m = (torch.arange(n, dtype=f64) + 0.5) / n
    sig = (-torch.log1p(-m)).clamp(max=-math.log(1e-3))
    integral = torch.zeros((), dtype=f64)
    for pat in _mask_patterns(L):
        k = int(pat.sum())
        x_t = torch.where(pat, torch.full_like(x0, K - 1), x0)
        if not time:
            ce = masked_diffusion_reference(net(x_t), x_t, x0, torch.ones(1, dtype=f64), mask_id=K - 1)[0]
            integral += ce * (m ** (k - 1) * (1 - m) ** (L - k)).mean()
            continue
        x_t = x_t.expand(n, L)
        ce = masked_diffusion_reference(net(x_t, sig), x_t, x0.expand(n, L), torch.ones(n, dtype=f64), mask_id=K - 1)
        integral += (ce * m ** (k - 1) * (1 - m) ** (L - k)).mean()
    B = 40000
    g = torch.Generator().manual_seed(8)
    est = obj.bound(lambda x, s: net(x, s).float(), x0.expand(B, L), obj.bound_draw(B, L, g)).double()
    assert abs(est.mean() - integral) < 4 * est.std() / B ** 0.5, (est.mean().item(), integral.item())


def test_sedd_absorb_bound_is_the_dwdse_integral_over_all_sigma():
    """SEDD absorb's bound estimates int_0^inf E_{x_t ~ q_sigma}[sum_l SE(sigma)] dsigma (the DWDSE with the
    all-mask prior, nothing left out at sigma > sigma(1)), by quadrature over sigma and every mask
    pattern; the network sees sigma clamped to the schedule's [sigma(0), sigma(1)]."""
    tok = ByteTokenizer()
    obj = SEDD(tok, graph="absorb")
    L, K = 3, tok.vocab_size
    net = _PatternModel(K, L)
    x0 = torch.tensor([[5, 200, 17]])
    top = -math.log(1e-3)
    # sigma = -log(1 - m): quadrature in m on (0, 1), dsigma = dm / (1 - m)
    n = 4000
    m = (torch.arange(n, dtype=f64) + 0.5) / n
    sig = -torch.log1p(-m)
    integral = torch.zeros((), dtype=f64)
    for pat in _mask_patterns(L):
        x_t = torch.where(pat, torch.full_like(x0, K - 1), x0).expand(n, L)
        logits = net(x_t, sig.clamp(max=top))
        se = score_entropy_reference(logits, x_t, x0.expand(n, L), sig, 1 / (1 - m), graph="absorb")
        k = int(pat.sum())
        integral += (se * m ** k * (1 - m) ** (L - k)).mean()
    B = 40000
    g = torch.Generator().manual_seed(9)
    est = obj.bound(lambda x, s: net(x, s).float(), x0.expand(B, L), obj.bound_draw(B, L, g)).double()
    assert abs(est.mean() - integral) < 4 * est.std() / B ** 0.5, (est.mean().item(), integral.item())


class _WithoutLogitsAt(torch.nn.Module):
    """The same network behind a forward without ``logits_at``: the objectives' full-logits path."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, sigma=None):
        return self.net(x, sigma)


def _masked_loss_cases():
    estimates = {"mdlm": ("nll", "bound", "step_bound"), "llada": ("nll", "bound"), "sedd": ("nll", "bound")}
    # the bound masks at least one position of every row
    return [(name, estimate, masks) for name, names in estimates.items() for estimate in names
            for masks in (("random",) if estimate == "bound" else ("random", "one row unmasked", "none masked"))]


@pytest.mark.parametrize("name,estimate,masks", _masked_loss_cases())
def test_the_head_runs_on_masked_positions_only_and_changes_nothing(name, estimate, masks):
    from dllm.models import build_model, model_config

    tok = ByteTokenizer()
    obj = {"mdlm": MDLM(tok), "llada": LLaDA(tok), "sedd": SEDD(tok, graph="absorb")}[name]
    arch = obj.arch
    torch.manual_seed(0)
    cfg = model_config("tiny", arch=arch, hidden=32, layers=2, heads=2, vocab_size=obj.model_vocab_size,
                       max_seq_len=64, time_conditioning=arch == "dit")
    net = build_model(cfg)
    with torch.no_grad():
        for p in net.parameters():  # the zero-initialised head would make every loss alike
            p.add_(0.1 * torch.randn_like(p))
    head = net.output_layer.linear if arch == "dit" else net.lm_head
    rows_seen, canvases = [], []
    head.register_forward_hook(lambda mod, args, out: rows_seen.append(args[0].numel() // args[0].shape[-1]))
    net.register_forward_pre_hook(lambda mod, args: canvases.append(args[0]))
    B, L = 5, 37
    x0 = torch.randint(0, 256, (B, L), generator=torch.Generator().manual_seed(1))
    draw = obj.bound_draw if estimate == "bound" else obj.draw
    draws = draw(B, L, torch.Generator().manual_seed(2))
    if masks != "random":  # the uniforms mask where they are small
        draws["u"] = draws["u"].clone()
        draws["u"][0 if masks == "one row unmasked" else slice(None)] = 2.0

    def run(model):
        net.zero_grad(set_to_none=True)
        nll = getattr(obj, estimate)(model, x0, draws)
        nll.sum().backward()
        return nll.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    nll, grads = run(net)
    masked = rows_seen.pop()
    want, want_grads = run(_WithoutLogitsAt(net))
    assert rows_seen.pop() == B * L and masked == (canvases[0] == tok.mask_id).sum()  # the masked positions alone
    torch.testing.assert_close(nll, want, rtol=1e-5, atol=1e-5)
    assert grads.keys() == want_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], want_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    if masks == "none masked":
        assert masked == 0 and torch.equal(nll, torch.zeros(B))
    if masks == "one row unmasked":
        assert nll[0] == 0 and (nll[1:] != 0).all()


@pytest.mark.parametrize("noise", ["loglinear", "geometric"])
def test_mdlm_step_bound_feeds_the_samplers_sigma_at_its_mask_rate(noise):
    """The T-step bound scores the mdlm sampler's process: a canvas masked at rate t meets the
    sigma the sampler gives it there, 1 - e^-sigma = (1 - eps) t, whatever schedule trained the net."""
    tok = ByteTokenizer()
    obj = MDLM(tok, noise=noise)
    seen = []

    def net(x, sigma):
        seen.append(sigma)
        return torch.randn(*x.shape, obj.model_vocab_size)

    draws = obj.draw(64, 32, torch.Generator().manual_seed(0))
    obj.step_bound(net, torch.randint(0, 256, (64, 32)), draws)
    torch.testing.assert_close(-torch.expm1(-seen[0].double()), (1 - 1e-3) * draws["t"].double(), rtol=1e-5, atol=0)


def test_bounds_feed_the_network_sigma_inside_the_trained_range():
    """The evaluation bounds clamp the network's sigma to the schedule's [sigma(0), sigma(1)]: the
    masked-count draws past sigma(1) reach the clamp, uniform sedd's low share sigma(0)."""
    tok = ByteTokenizer()
    for obj in (MDLM(tok), SEDD(tok, graph="absorb"), SEDD(tok, graph="uniform", noise="geometric")):
        seen = []

        def net(x, s):
            seen.append(torch.as_tensor(s, dtype=torch.float64))
            return torch.zeros(*x.shape, obj.model_vocab_size)

        B, L = 4000, 3
        obj.bound(net, torch.randint(0, 200, (B, L)), obj.bound_draw(B, L, torch.Generator().manual_seed(0)))
        (lo, hi), _ = obj.noise(torch.tensor([0.0, 1.0], dtype=torch.float64))
        s = torch.cat(seen)
        assert s.max() <= hi * (1 + 1e-6) and s.min() >= lo * (1 - 1e-6), (obj.name, s.min(), s.max(), lo, hi)
        if obj.name == "mdlm" or obj.graph == "absorb":
            assert s.max() >= hi * (1 - 1e-6)
        else:
            assert (s <= lo * (1 + 1e-6)).any()


def test_a_compiled_model_keeps_the_masked_only_head():
    """torch.compile's wrapper hides the forward's signature; the objectives look through it."""
    from dllm.models import build_model, model_config

    tok = ByteTokenizer()
    obj = MDLM(tok)
    torch.manual_seed(0)
    net = build_model(model_config("tiny", arch=obj.arch, hidden=32, layers=1, heads=2,
                                   vocab_size=obj.model_vocab_size, max_seq_len=64))
    calls = []
    net.register_forward_pre_hook(lambda mod, args, kwargs: calls.append("logits_at" in kwargs), with_kwargs=True)
    x0 = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(1))
    draws = obj.draw(3, 20, torch.Generator().manual_seed(2))
    want = obj.nll(net, x0, draws)
    got = obj.nll(torch.compile(net, backend="eager"), x0, draws)
    assert calls == [True, True]
    torch.testing.assert_close(got, want)




@pytest.mark.parametrize("noise", [LogLinear(0.2), Geometric(0.3, 2.0), LogLinear()],
                         ids=["loglinear-eps0.2", "geometric-0.3-2", "loglinear"])
def test_uniform_sedd_bound_of_a_sequence_is_the_sum_of_its_tokens_bounds(noise):
    """Each token is noised alone and the network here reads each position alone, so the bound of L
    tokens (the integral and the prior term KL(q_sigma(1) || uniform) of every position) is the sum
    of the bounds of each token drawn with the same v, below, u and y."""
    K, B, L = 7, 13, 5
    obj = SEDD(SimpleNamespace(vocab_size=K + 1, mask_id=K, eos_id=K - 1), graph="uniform")
    obj.noise = noise
    model = _TokenTable(K, 1.0)
    g = torch.Generator().manual_seed(23)
    x0 = torch.randint(0, K, (B, L), generator=g)
    draws = obj.bound_draw(B, L, g)
    whole = obj.bound(model, x0, draws).double()
    parts = sum(obj.bound(model, x0[:, i:i + 1], {**draws, "u": draws["u"][:, i:i + 1], "y": draws["y"][:, i:i + 1]})
                .double() for i in range(L))
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["draw", "bound_draw"])
def test_uniform_sedd_jumps_to_every_token_alike(which):
    """The uniform graph's jump targets y are uniform over all K real tokens, the last one included."""
    K, B, L = 9, 397, 53
    obj = SEDD(SimpleNamespace(vocab_size=K + 1, mask_id=K, eos_id=K - 1), graph="uniform")
    y = getattr(obj, which)(B, L, torch.Generator().manual_seed(4))["y"]
    assert y.min() >= 0 and y.max() < K
    assert chi_square_pvalue(y, np.full(K, 1 / K)) > 1e-5


def test_sedd_training_times_lie_in_eps_1_and_reach_near_eps():
    """SEDD draws t uniformly on [sampling_eps, 1], sampling_eps 1e-3 by default (SEDD's), not stratified."""
    obj = SEDD(ByteTokenizer())
    B = 20011
    t = obj.draw(B, 3, torch.Generator().manual_seed(8))["t"].double()
    assert t.min() >= 1e-3 - 1e-7 and t.max() <= 1
    assert t.min() < 1e-3 + 5 * (1 - 1e-3) / B  # P(min above) = e^-5
    assert abs(t.mean().item() - (1 + 1e-3) / 2) < 5 * (1 / 12) ** 0.5 / B ** 0.5
    # independent draws: the count in each of B equal strata is Poisson-like (antithetic draws put exactly one in each)
    strata = torch.bincount(((t - 1e-3) / (1 - 1e-3) * B).floor().long().clamp(0, B - 1), minlength=B)
    assert (strata == 0).double().mean().item() > 0.3  # about e^-1 of them empty


def test_bound_draws_deal_their_strata_to_the_rows_at_random():
    """The masked bound's counts k (and the uniform bound's v) are stratified over the batch, one per
    stratum, with the strata dealt at random: no row always meets few masks (or low noise)."""
    from dllm.objectives import MDLM
    B, L, reps = 7, 53, 600
    g = torch.Generator().manual_seed(17)
    uniform = SEDD(SimpleNamespace(vocab_size=10, mask_id=9, eos_id=8), graph="uniform")
    ks, vs = [], []
    for _ in range(reps):
        k = MDLM(ByteTokenizer()).bound_draw(B, L, g)["k"]
        for i, ki in enumerate(sorted(k.tolist())):  # one count in each stratum: floor(v L) + 1, v in [i/B, (i+1)/B)
            assert i * L // B + 1 <= ki <= (i + 1) * L // B + 1
        ks.append(k)
        v = uniform.bound_draw(B, 3, g)["v"]
        assert sorted(((1 - v) * B).floor().long().tolist()) == list(range(B))
        vs.append(v)
    k, v = torch.stack(ks).double(), torch.stack(vs)
    sd_k = ((L * L - 1) / 12) ** 0.5
    assert (k.mean(0) - (L + 1) / 2).abs().max().item() < 5 * sd_k / reps ** 0.5
    assert (v.mean(0) - 0.5).abs().max().item() < 5 * (1 / 12) ** 0.5 / reps ** 0.5


@pytest.mark.parametrize("noise", [LogLinear(0.01), Geometric(1e-3, 5.0)])
def test_schedules_take_the_float_end_points_0_and_1(noise):
    """t = 0 and t = 1 lie in [0, 1]: as Python floats they must be taken, and agree with tensors."""
    for t in (0, 0.0, 1, 1.0):
        sigma, dsigma = noise(t)
        ts, tds = noise(torch.tensor([float(t)], dtype=torch.float64))
        assert math.isclose(sigma.item(), ts.item(), rel_tol=1e-6) and math.isclose(dsigma.item(), tds.item(), rel_tol=1e-6)
    assert noise(0.0)[0].item() == pytest.approx(0.0 if isinstance(noise, LogLinear) else noise.sigma_min, rel=1e-6)


def test_loglinear_eps_1_is_refused():
    """eps = 1 makes sigma(t) = 0 everywhere (nothing is ever masked): refused like eps = 2."""
    with pytest.raises(ValueError, match="eps must lie in"):
        LogLinear(eps=1.0)


@pytest.mark.parametrize("name,options", [("sedd", {"graph": "absorb"}), ("sedd", {"graph": "uniform"}), ("mdlm", {})])
def test_get_objective_builds_the_noise_and_graph_it_is_given(name, options):
    """`dllm train --objective sedd --noise geometric` (and `dllm eval`) build the objective here."""
    tok = ByteTokenizer()
    obj = get_objective(name, tok, noise="geometric", **options)
    assert isinstance(obj.noise, Geometric) and obj.config()["noise"] == Geometric().config()
    assert all(getattr(obj, k) == v for k, v in options.items())
    assert isinstance(get_objective(name, tok, **options).noise, LogLinear)


@pytest.mark.parametrize("noise", ["loglinear", "geometric"])
def test_mdlm_training_feeds_a_time_conditioned_network_its_total_noise(noise):
    """MDLM trains with time conditioning on request (--time-conditioning): the network must see each
    sequence's sigma(t), not None (which a DiT reads as sigma = 0, what the samplers never feed it)."""
    tok = ByteTokenizer()
    obj = MDLM(tok, noise=noise)
    B, L = 7, 13
    seen = []

    def net(x, sigma):
        seen.append(sigma)
        return torch.zeros(*x.shape, obj.model_vocab_size)

    g = torch.Generator().manual_seed(31)
    draws = obj.draw(B, L, g)
    obj.nll(net, torch.randint(0, 256, (B, L), generator=g), draws)
    assert seen[0] is not None
    want = obj.noise(draws["t"].double())[0]
    torch.testing.assert_close(torch.as_tensor(seen[0]).double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["mdlm", "sedd"])
def test_masked_count_bounds_feed_the_network_no_less_than_the_schedules_least_noise(name):
    """A schedule with sigma(0) > 0 (geometric) never trained the network below sigma(0): the mask-count
    bounds' rates m near 0 must meet it at sigma(0), as the uniform bound's low share does."""
    tok = ByteTokenizer()
    obj = MDLM(tok) if name == "mdlm" else SEDD(tok, graph="absorb")
    obj.noise = Geometric(0.3, 2.0)  # sigma(0) = 0.3: mask rates below 1 - e^-0.3 = 0.26 are common
    seen = []

    def net(x, s):
        seen.append(torch.as_tensor(s, dtype=f64))
        return torch.zeros(*x.shape, obj.model_vocab_size)

    B, L = 211, 7
    obj.bound(net, torch.randint(0, 256, (B, L)), obj.bound_draw(B, L, torch.Generator().manual_seed(3)))
    s = torch.cat(seen)
    assert s.min() >= 0.3 * (1 - 1e-6) and s.max() <= 2.0 * (1 + 1e-6), (s.min(), s.max())
    assert (s <= 0.3 * (1 + 1e-6)).any() and (s >= 2.0 * (1 - 1e-6)).any()


def test_sedd_absorb_bound_scores_past_sigma_1_at_the_true_noise():
    """Past the schedule's last rate 1 - eps the network is fed sigma(1), but the score entropy (its
    ratios, the output's scaling) and its weight are those of the true noise -log(1 - m)."""
    tok = ByteTokenizer()
    obj = SEDD(tok, graph="absorb")
    B, L = 5, 3
    g = torch.Generator().manual_seed(12)
    x0 = torch.randint(0, 256, (B, L), generator=g)
    # every position masked (k = L), at a mask rate m = max(u) in (0.9999, 1): sigma above sigma(1) = 6.9
    draws = {"k": torch.full((B,), L), "u": 1 - torch.rand(B, L, generator=g, dtype=f64) * 1e-4}
    logits = torch.randn(B, L, tok.vocab_size, generator=g)
    got = obj.bound(lambda x, s: logits, x0, draws).double()
    sigma = -torch.log1p(-draws["u"].max(-1).values)
    x_t = torch.full_like(x0, tok.mask_id)
    want = score_entropy_reference(logits.double(), x_t, x0, sigma, torch.expm1(sigma), graph="absorb")  # weight L/k = 1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=0)


def test_mdlm_step_bound_masks_at_rate_t_and_everything_at_t_1():
    """The T-step bound scores the samplers' process: mask rate t exactly (all masked at t = 1), not
    training's (1 - eps) t, weighted 1 / t."""
    tok = ByteTokenizer()
    obj = MDLM(tok)
    B, L = 6, 29
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(0, 256, (B, L), generator=g)
    draws = obj.draw(B, L, g)
    draws["t"] = torch.tensor([1.0, 1.0, 0.5, 0.25, 0.75, 1 / 3])
    # uniforms within 1e-4 of t on either side: masked exactly where u < t
    side = torch.where(torch.rand(B, L, generator=g) < 0.5, -1.0, 1.0)
    side[:2] = -1.0  # t = 1: every token masked
    draws["u"] = draws["t"][:, None] * (1 + side * 1e-4 * (0.1 + torch.rand(B, L, generator=g)))
    logits = torch.randn(B, L, tok.vocab_size, generator=g)
    seen = []

    def net(x, s):
        seen.append(x)
        return logits

    got = obj.step_bound(net, x0, draws)
    x_t = torch.where(side < 0, torch.full_like(x0, tok.mask_id), x0)
    assert torch.equal(seen[0], x_t) and (seen[0][:2] == tok.mask_id).all()
    want = masked_diffusion_reference(logits.double(), x_t, x0, 1 / draws["t"].double(), mask_id=tok.mask_id)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make, match", [
    # a float vocabulary size is not silently truncated (2.7 -> a 2-token graph), nor a string read as a number
    (lambda: dllm.sedd.Absorbing(2.7), "vocab_size must be an integer"),
    (lambda: dllm.sedd.Uniform(50.0), "vocab_size must be an integer"),
    (lambda: dllm.sedd.Absorbing("50"), "vocab_size must be an integer"),
])
def test_graphs_refuse_a_vocab_size_that_is_not_an_integer(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_geometric_refuses_equal_sigmas():
    # sigma_min == sigma_max is a constant schedule: dsigma = 0 weighs every loss term by 0 and the
    # samplers' steps move nothing
    with pytest.raises(ValueError, match="sigma_max must exceed sigma_min"):
        Geometric(0.5, 0.5)
    assert Geometric(0.5, 0.5000001).sigma_max > 0.5  # any increase is a schedule


def test_get_noise_takes_the_same_name_twice():
    # a name given both ways is fine when the two agree (a config spread next to its name)
    cfg = Geometric(1e-3, 5.0).config()
    again = dllm.sedd.get_noise(cfg["type"], **cfg)
    assert type(again) is Geometric and again.config() == cfg
    with pytest.raises(ValueError, match="two names"):
        dllm.sedd.get_noise("loglinear", type="geometric")


def test_geometric_refuses_a_zero_sigma_min():
    # log(0) = -inf would make sigma(t) = exp(-inf + t * inf) NaN for every t > 0
    with pytest.raises(ValueError, match="sigma_min must be a positive finite number"):
        Geometric(0.0, 20.0)


def test_sedd_absorb_bound_scores_the_least_mask_rates_at_their_true_noise():
    """At the other end from sigma(1): one masked token (k = 1) at a mask rate m = min(u) far below
    1e-3, the network's sigma, the score entropy and its weight L / k * expm1(sigma) are those of
    sigma = -log(1 - m)."""
    tok = ByteTokenizer()
    obj = SEDD(tok, graph="absorb")
    B, L = 5, 7
    g = torch.Generator().manual_seed(21)
    x0 = torch.randint(0, 256, (B, L), generator=g)
    u = 0.5 + 0.5 * torch.rand(B, L, generator=g, dtype=f64)
    at = torch.randint(0, L, (B,), generator=g)
    tiny = torch.tensor([3e-9, 1e-7, 4e-6, 2e-5, 2e-4], dtype=f64)
    u[torch.arange(B), at] = tiny
    draws = {"k": torch.ones(B, dtype=torch.long), "u": u}
    logits = torch.randn(B, L, tok.vocab_size, generator=g)
    seen = []
    got = obj.bound(lambda x, s: (seen.append(torch.as_tensor(s, dtype=f64)), logits)[1], x0, draws).double()
    sigma = -torch.log1p(-tiny)
    # a time-conditioned network meets the true (log-linear) noise, not a floor on the mask rate
    torch.testing.assert_close(seen[0], sigma, rtol=1e-5, atol=0)
    x_t = x0.clone()
    x_t[torch.arange(B), at] = tok.mask_id
    want = score_entropy_reference(logits.double(), x_t, x0, sigma, L * torch.expm1(sigma), graph="absorb")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=0)


def test_get_objective_names_the_objectives_it_knows():
    """An unknown name is a ValueError listing the choices, not a bare KeyError."""
    for name in ("dllm", "AR", ""):
        with pytest.raises(ValueError, match=r"unknown objective .*\['ar', 'llada', 'mdlm', 'sedd'\]"):
            get_objective(name, ByteTokenizer())
