"""The law of a whole generation: for canvases small enough to enumerate (3 to 5 generated
positions, 3 real tokens and the mask), each sampler's Markov chain over canvases is worked out
exactly in float64 from the papers' rules, and the sequences of one batched dllm.generate call
(20000 rows) are compared with it by a chi-square test over the possible outcomes (27 for three
unknown tokens).

The model's logits at every position are a fixed random function of the whole canvas (and of the
noise level, for a time-conditioned or score model), so a step that feeds the model a stale
canvas, the wrong time or sigma, reads the wrong row (logits_shift), commits the wrong positions
or draws several tokens from the wrong canvas changes the law. The enumeration below is written
from the samplers' published rules, not from dllm's code or its reference functions.
"""

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from torch import nn

import dllm
from dllm.sedd import Absorbing, Geometric, Uniform
from stats import chi_square_pvalue

P_MIN = 1e-4  # seeded draws make every test deterministic; this only guards against a bad seed
REAL = 3  # tokens 0, 1, 2
MASK = 3  # the last of the logits' 4 columns
COLUMNS = REAL + 1  # the logits' width, and the base of a canvas's index into the model's table
DRAWS = 20_000
LOGLINEAR_EPS = 1e-3  # the log-linear schedule's: 1 - exp(-sigma(t)) = (1 - eps) t


class CanvasModel(nn.Module):
    """Logits [B, L, 4] (3 on a uniform graph) looked up by the whole canvas: a + b exp(-sigma),
    the second term only when sigma is given (a time-conditioned or score model). exp(-sigma) is
    the log-linear schedule's 1 - (1 - eps) t, linear in time, so laws that integrate over a
    random time (first-hitting) are smooth enough for Gauss-Legendre quadrature. ``offset`` moves
    every entry of a (a score model's scores e^offset times the calibrated ones)."""

    def __init__(self, length: int, *, seed: int, scale=2.0, offset=0.0, time_conditioned=False, logits_shift=0,
                 graph=None, noise=None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        # a uniform graph's logits have no mask column
        shape = (COLUMNS ** length, length, COLUMNS if graph is None else graph.num_classes)
        # float64 draws kept as float32: the enumeration reads back the values the model returns
        self.a, self.b = (nn.Parameter((scale * torch.randn(shape, generator=g, dtype=torch.float64) + shift).float(),
                                       requires_grad=False) for shift in (offset, 0.0))
        self.register_buffer("place", COLUMNS ** torch.arange(length))
        self.mask_id, self.time_conditioned, self.logits_shift = MASK, time_conditioned, logits_shift
        if graph is not None:
            self.graph, self.noise = graph, noise

    def forward(self, x, sigma=None, attention_mask=None):  # (padding is a token like any other here)
        index = (x * self.place).sum(-1)
        if sigma is None:
            return self.a[index]
        return self.a[index] + self.b[index] * torch.exp(-sigma.float())[:, None, None]


# ---------------------------------------------------------------------------------------------
# The enumeration: a law is a dict {canvas (tuple): probability}; canvases hold the prompt too.

class Chain:
    """The model's logits as the enumeration reads them (float64)."""

    def __init__(self, model: CanvasModel, padding=0):
        """padding: how many of the canvas's first tokens pad its prompt."""
        self.a, self.b = (table.detach().cpu().double().numpy() for table in (model.a, model.b))
        self.shift, self.time_conditioned = model.logits_shift, model.time_conditioned
        self.length = self.a.shape[1]
        self.padding = padding

    def logits(self, canvas, alpha=None):
        """[..., L, 4]; alpha = exp(-sigma), a number or an array of them (leading dimension)."""
        i = sum(token * COLUMNS ** j for j, token in enumerate(canvas))
        if alpha is None:
            return self.a[i]
        return self.a[i] + np.asarray(alpha, dtype=np.float64)[..., None, None] * self.b[i]

    def rows(self, canvas, alpha=None):
        """[..., L, 3]: the real tokens' logits that predict each position, row j - shift (Dream's
        shifted head: position 0 reads row 0)."""
        return self.logits(canvas, alpha)[..., [max(j - self.shift, 0) for j in range(self.length)], :REAL]

    def probs(self, canvas, alpha=None, **proposal):
        return distribution(self.rows(canvas, alpha), **proposal)

    def clock(self, t):
        """exp(-sigma(t)) for a time-conditioned model, None (no time) for another."""
        return loglinear_alpha(t) if self.time_conditioned else None

    def canvas_clock(self, canvas):
        """llada, dream and fast-dllm have no clock of their own: a time-conditioned model gets the
        log-linear sigma at t = the canvas's masked fraction of real tokens (padding excluded;
        dllm.sampling.model_protocol)."""
        return self.clock(sum(token == MASK for token in canvas) / (len(canvas) - self.padding))


def loglinear_alpha(t):
    """exp(-sigma(t)) of the log-linear schedule."""
    return 1 - (1 - LOGLINEAR_EPS) * np.asarray(t, dtype=np.float64)


def distribution(rows, temperature=1.0, top_k=0, top_p=1.0):
    """[..., 3]: softmax(rows / temperature) over the real tokens (the mask is never proposed:
    MDLM's SUBS rule, dllm's documented contract), keeping the top_k most probable and the fewest
    most probable whose mass reaches top_p (each filter on the whole tempered distribution, as
    Dream applies them; ties with the last one kept are kept), renormalised."""
    z = rows / temperature
    e = np.exp(z - z.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    ordered = -np.sort(-p, -1)
    keep = np.ones(p.shape, dtype=bool)
    if top_k:
        keep &= p >= ordered[..., top_k - 1:top_k]
    if top_p < 1:
        mass = np.cumsum(ordered, -1)
        assert (abs(mass - top_p) > 1e-5).all(), "pick another seed: a mass at top_p"
        keep &= p >= np.take_along_axis(ordered, (mass < top_p).sum(-1, keepdims=True), -1)
    p = np.where(keep, p, 0.0)
    return p / p.sum(-1, keepdims=True)


def masked(canvas, lo=0, hi=None):
    return [j for j in range(lo, len(canvas) if hi is None else hi) if canvas[j] == MASK]


def with_tokens(canvas, tokens: dict):
    c = list(canvas)
    for j, y in tokens.items():
        c[j] = y
    return tuple(c)


def independent(canvas, options: dict):
    """Every position of ``options`` ({position: [(token, probability), ...]}) moves on its own:
    yields (next canvas, probability)."""
    positions = list(options)
    for choice in itertools.product(*([(y, p) for y, p in options[j] if p > 0] for j in positions)):
        yield with_tokens(canvas, {j: y for j, (y, _) in zip(positions, choice)}), math.prod(p for _, p in choice)


def proposals(probs, positions):
    """Every possible joint proposal at ``positions`` from the per-position ``probs`` [L, 3]:
    yields ({position: token}, probability)."""
    for tokens in itertools.product(range(REAL), repeat=len(positions)):
        p = math.prod(probs[j, y] for j, y in zip(positions, tokens))
        if p > 0:  # (a filtered token is never drawn, nor ranked)
            yield dict(zip(positions, tokens)), p


def top(scores: dict, k: int) -> list:
    """The k best positions, ties to the lowest index. A gap the ranking relies on must be far from
    float32 rounding, or the sampler's float32 confidences could order them otherwise; an exact
    tie (two positions reading one logits row under a shifted head) is a tie there too."""
    order = sorted(scores, key=lambda j: (-scores[j], j))
    if 0 < k < len(order):
        gap = abs(scores[order[k - 1]] - scores[order[k]])
        assert gap == 0 or gap > 1e-5, "pick another seed: a near-tie"
    return order[:k]


def step_law(law, move):
    """One step: ``move(canvas)`` yields (next canvas, probability) pairs."""
    out = defaultdict(float)
    for canvas, p in law.items():
        for nxt, q in move(canvas):
            out[nxt] += p * q
    return out


def outcome_probs(law, start: int, length: int) -> np.ndarray:
    """The law of the generated tokens, indexed as sequence_index does."""
    out = np.zeros(REAL ** length)
    for canvas, p in law.items():
        assert MASK not in canvas[start:], "the enumerated chain left a mask"
        out[sum(y * REAL ** j for j, y in enumerate(canvas[start:]))] += p
    assert abs(out.sum() - 1) < 1e-9
    return out


def sequence_index(sequences: torch.Tensor, start: int) -> torch.Tensor:
    generated = sequences[:, start:]
    return (generated * REAL ** torch.arange(generated.shape[1], device=generated.device)).sum(-1).cpu()


# ---------------------------------------------------------------------------------------------
# Each sampler's law, from its paper's rule.

def mdlm_law(chain, canvas, *, steps, eps=1e-5, **proposal):
    """MDLM's ancestral sampler (`_ddpm_caching_update`, log-linear schedule, move chance t): on
    the grid linspace(1, eps, steps + 1), going from t to s each masked token unmasks with
    probability (t - s) / t, drawn from the model's distribution at the canvas of time t (a
    time-conditioned model given sigma(t)); tokens still masked at t = eps take the argmax of one
    more forward (MDLM's noise removal, at sigma(eps))."""
    times = np.linspace(1, eps, steps + 1)
    law = {canvas: 1.0}
    for t, s in zip(times[:-1], times[1:]):
        q = (t - s) / t

        def move(c):
            probs = chain.probs(c, chain.clock(t), **proposal)
            return independent(c, {j: [(MASK, 1 - q)] + [(y, q * probs[j, y]) for y in range(REAL)]
                                   for j in masked(c)})
        law = step_law(law, move)

    def denoise(c):
        probs = chain.probs(c, chain.clock(times[-1]))
        yield with_tokens(c, {j: int(probs[j].argmax()) for j in masked(c)}), 1.0
    return step_law(law, denoise)


def first_hitting_law(chain, canvas, *, nodes=24, **proposal):
    """Zheng et al.'s first-hitting sampler: with n tokens masked, the next unmasking time is
    t * u^(1/n) (the largest of n uniform times on [0, t]), a uniformly chosen masked position
    unmasks, drawn from the model at the new time. For a time-conditioned model the law
    integrates over the times: the ratio r = u^(1/n) has density n r^(n - 1) on [0, 1], and the
    integrand is smooth (see CanvasModel), so Gauss-Legendre nodes per step are exact to ~1e-12.
    A law here maps a canvas to its probability along every path of nodes."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    r, w = (x + 1) / 2, w / 2
    law, times = {canvas: np.ones(1)}, np.ones(1)
    while True:
        (n,) = {len(masked(c)) for c in law}  # one token a step: every canvas has n masked
        if n == 0:
            return {c: float(p.sum()) for c, p in law.items()}
        if chain.time_conditioned:
            times = (times[:, None] * r).ravel()
            weight = w * n * r ** (n - 1)
        else:
            weight = np.ones(1)
        out = defaultdict(float)
        for c, p in law.items():
            p = (p[:, None] * weight).ravel()
            probs = chain.probs(c, chain.clock(times), **proposal)
            probs = probs if chain.time_conditioned else probs[None]
            for j in masked(c):
                for y in range(REAL):
                    out[with_tokens(c, {j: y})] += p * probs[:, j, y] / n
        law = out


def llada_law(chain, canvas, *, start, steps, block_length, remasking, cfg_scale=0.0, **proposal):
    """LLaDA's generate: blocks of block_length left to right, steps / blocks steps each; with m
    masks in the block, every step commits floor(m / steps) tokens and the first m mod steps one
    more (get_num_transfer_tokens). A step proposes a token at every masked position from the
    tempered (filtered) softmax and commits, within the block, the k proposals of highest
    untempered model probability ("low_confidence") or k uniformly chosen ones ("random").
    Guidance: logits u + (cfg_scale + 1)(c - u), u from the canvas whose given tokens (the
    prompt's, the template's; not padding) are masked."""
    given = [j for j in range(chain.padding, len(canvas)) if canvas[j] != MASK]

    def rows(c):
        cond = chain.rows(c, chain.canvas_clock(c))
        if not cfg_scale:
            return cond
        u = with_tokens(c, {j: MASK for j in given})
        uncond = chain.rows(u, chain.canvas_clock(u))
        return uncond + (cfg_scale + 1) * (cond - uncond)

    blocks = (len(canvas) - start) // block_length
    per_block = steps // blocks
    law = {canvas: 1.0}
    for b in range(blocks):
        lo, hi = start + b * block_length, start + (b + 1) * block_length
        (m,) = {len(masked(c, lo, hi)) for c in law}  # a block is untouched until its turn
        for k in [m // per_block + (i < m % per_block) for i in range(per_block)]:
            def move(c, k=k):
                logits = rows(c)
                probs, confidence = distribution(logits, **proposal), distribution(logits)
                eligible = masked(c, lo, hi)
                if remasking == "random":
                    for chosen in itertools.combinations(eligible, min(k, len(eligible))):
                        for tokens, p in proposals(probs, chosen):
                            yield with_tokens(c, tokens), p / math.comb(len(eligible), len(chosen))
                    return
                for tokens, p in proposals(probs, eligible):
                    chosen = top({j: confidence[j, y] for j, y in tokens.items()}, k)
                    yield with_tokens(c, {j: tokens[j] for j in chosen}), p
            law = step_law(law, move)
    return law


def drawn(scores: dict, k: int, temperature: float):
    """k positions drawn one by one without replacement from softmax(score / temperature) (Dream's
    alg_temp: torch.multinomial without replacement): yields (positions, probability)."""
    top_score = max(scores.values())
    weight = {j: math.exp((v - top_score) / temperature) for j, v in scores.items()}
    for order in itertools.permutations(weight, k):
        p, left = 1.0, dict(weight)
        for j in order:
            p *= left[j] / sum(left.values())
            del left[j]
        yield order, p


def dream_law(chain, canvas, *, steps, alg, alg_temp=0.0, eps=1e-3, **proposal):
    """Dream's diffusion_generate on the grid linspace(1, eps, steps + 1): "origin" unmasks each
    masked token with probability 1 - s/t (all at the last step); the confidence algorithms
    commit int(n_masked (1 - s/t)) tokens (all at the last step), the top ones (or, alg_temp > 0,
    ones drawn from softmax(confidence / alg_temp)) by the proposal distribution's probability of
    the drawn token (maskgit_plus), top-1 minus top-2 probability (topk_margin) or negative
    entropy (entropy); the proposal distribution is the tempered, filtered softmax the token is
    drawn from, and Dream's head is shifted (the model's logits_shift)."""
    times = np.linspace(1, eps, steps + 1)
    law = {canvas: 1.0}
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        last = i == steps - 1

        def move(c):
            probs = chain.probs(c, chain.canvas_clock(c), **proposal)
            todo = masked(c)
            if alg == "origin":
                q = 1.0 if last else 1 - s / t
                yield from independent(c, {j: [(MASK, 1 - q)] + [(y, q * probs[j, y]) for y in range(REAL)]
                                           for j in todo})
                return
            share = len(todo) * (1 - s / t)
            assert last or abs(share - round(share)) > 1e-6, "a count on float rounding's edge"
            k = len(todo) if last else int(share)
            ordered = -np.sort(-probs, -1)
            with np.errstate(divide="ignore", invalid="ignore"):  # filtered tokens: 0 log 0 = 0
                score = {"topk_margin": ordered[:, 0] - ordered[:, 1],
                         "entropy": np.where(probs > 0, probs * np.log(probs), 0.0).sum(-1)}
            for tokens, p in proposals(probs, todo):
                confidence = {j: probs[j, y] if alg == "maskgit_plus" else score[alg][j] for j, y in tokens.items()}
                if alg_temp:
                    for chosen, q in drawn(confidence, k, alg_temp):
                        yield with_tokens(c, {j: tokens[j] for j in chosen}), p * q
                else:
                    yield with_tokens(c, {j: tokens[j] for j in top(confidence, k)}), p
        law = step_law(law, move)
    return law


def fast_dllm_law(chain, canvas, *, start, block_length, threshold, **proposal):
    """Fast-dLLM's threshold decoding (get_transfer_index): blocks left to right (the last may be
    shorter); each step proposes at every masked position and commits, within the block, every
    proposal whose untempered model probability is >= threshold and always the most confident
    one, until the block has no mask."""
    law = {canvas: 1.0}
    for lo in range(start, len(canvas), block_length):
        hi = min(lo + block_length, len(canvas))

        def move(c):
            eligible = masked(c, lo, hi)
            if not eligible:  # this canvas's block is done; others may take more steps
                yield c, 1.0
                return
            logits = chain.rows(c, chain.canvas_clock(c))
            probs, confidence = distribution(logits, **proposal), distribution(logits)
            for tokens, p in proposals(probs, eligible):
                conf = {j: confidence[j, y] for j, y in tokens.items()}
                assert all(abs(v - threshold) > 1e-5 for v in conf.values()), "pick another seed: at the threshold"
                chosen = {j for j, v in conf.items() if v >= threshold} | set(top(conf, 1))
                yield with_tokens(c, {j: tokens[j] for j in chosen}), p
        for _ in range(hi - lo):  # a step commits at least one token
            law = step_law(law, move)
    return law


def loglinear(t):
    """SEDD's LogLinear noise (eps 1e-3): sigma(t) and dsigma/dt."""
    return -math.log1p(-(1 - LOGLINEAR_EPS) * t), (1 - LOGLINEAR_EPS) / (1 - (1 - LOGLINEAR_EPS) * t)


def geometric(t, sigma_min=1e-4, sigma_max=20.0):
    """SEDD's Geometric noise: sigma(t) = sigma_min^(1 - t) sigma_max^t and dsigma/dt."""
    sigma = sigma_min ** (1 - t) * sigma_max ** t
    return sigma, sigma * math.log(sigma_max / sigma_min)


def sedd_law(chain, canvas, *, steps, method, noise=loglinear, eps=1e-5):
    """SEDD's PC sampler (sampling.py) on the absorbing graph. The time grid, read from
    dllm.sampling.score.sedd (SEDD's get_pc_sampler: steps predictor steps, then the denoiser):
    times linspace(1, eps = 1e-5, steps + 1), dt = (1 - eps) / steps, step i's network called at
    sigma(times[i]), the denoiser's at sigma(eps); the schedule is the model's ``noise``
    (log-linear by default on this graph). The network's output at a masked position, shifted
    by log(expm1(sigma)) + log(V) (scale_by_sigma), is the log score s_y of each real token y. Per
    masked position, "analytic" (Tweedie tau-leaping, dsig = sigma(t) - sigma(t - dt)) moves to y
    with weight (e^dsig - 1) s_y and stays masked with 1 - (e^dsig - 1) sum_y s_y; "euler"
    (dsig = dt dsigma(t)) with dsig s_y and 1 - dsig sum_y s_y; a negative weight is never drawn.
    Then the denoiser at t = eps: the analytic weights with dsig = sigma(eps), the mask dropped,
    which leaves s_y itself. (On the log-linear schedule e^dsig - 1 of the analytic step equals
    dt dsigma(t) exactly, so the two predictors share one law there.)"""
    times = np.linspace(1, eps, steps + 1)
    dt = (1 - eps) / steps
    law = {canvas: 1.0}
    for t in times[:-1]:
        sigma, dsigma = noise(t)
        factor = math.expm1(sigma - noise(t - dt)[0]) if method == "analytic" else dt * dsigma

        def move(c):
            logits = chain.logits(c, math.exp(-sigma))
            options = {}
            for j in masked(c):
                score = np.exp(logits[j, :REAL] - math.log(math.expm1(sigma)) - math.log(REAL))
                weights = np.append(factor * score, max(0.0, 1 - factor * score.sum()))
                weights /= weights.sum()
                options[j] = [(y, weights[y]) for y in range(REAL)] + [(MASK, weights[REAL])]
            return independent(c, options)
        law = step_law(law, move)

    def denoise(c):
        logits = chain.logits(c, math.exp(-noise(times[-1])[0]))
        score = {j: np.exp(logits[j, :REAL] - logits[j, :REAL].max()) for j in masked(c)}
        return independent(c, {j: [(y, s[y] / s.sum()) for y in range(REAL)] for j, s in score.items()})
    return step_law(law, denoise)


def sedd_uniform_law(chain, prompt: list, gen_length: int, *, steps, method, noise=geometric, eps=1e-5):
    """SEDD's PC sampler on the uniform graph (V tokens, no mask): the generated tokens start
    uniform; the grid is the absorbing graph's. The network's output, unshifted (SEDD trains
    uniform models without scale_by_sigma) with the input token's entry set to 0, is the log score
    s. Per generated position holding x, "analytic" weighs y by the staggered score
    ((e - 1) / (V e)) sum_z s_z + s_y / e, e = exp(-dsig), times the transposed transition from x,
    (1 - e) / V off the diagonal and 1 - (V - 1)(1 - e) / V on it; "euler" moves to y != x with
    weight dsig s_y / V and stays with 1 - dsig sum_{y != x} s_y / V (onehot(x) + dsig times the
    reverse rate). Negative weights are never drawn; the denoiser is the analytic step with
    dsig = sigma(eps) (SEDD drops no column here). The prompt's tokens are projected back after
    every step."""
    times = np.linspace(1, eps, steps + 1)
    dt = (1 - eps) / steps
    law = {tuple(prompt) + tokens: REAL ** -gen_length
           for tokens in itertools.product(range(REAL), repeat=gen_length)}

    def move(sigma, dsig, method):
        def weights(c):
            logits = chain.logits(c, math.exp(-sigma))
            options = {}
            for j in range(len(prompt), len(c)):
                x = c[j]
                score = np.exp(logits[j])
                score[x] = 1.0
                if method == "euler":
                    w = dsig * score / REAL
                    w[x] = 1 - (w.sum() - w[x])
                else:
                    e = math.exp(-dsig)
                    transition = np.full(REAL, (1 - e) / REAL)
                    transition[x] = 1 - (REAL - 1) * (1 - e) / REAL
                    w = ((e - 1) / (REAL * e) * score.sum() + score / e) * transition
                w = np.maximum(w, 0.0)
                options[j] = list(enumerate(w / w.sum()))
            return independent(c, options)
        return weights

    for t in times[:-1]:
        sigma, dsigma = noise(t)
        dsig = sigma - noise(t - dt)[0] if method == "analytic" else dt * dsigma
        law = step_law(law, move(sigma, dsig, method))
    sigma = noise(times[-1])[0]
    return step_law(law, move(sigma, sigma, "analytic"))


# ---------------------------------------------------------------------------------------------

def canvas_of(prompt: list, template: str) -> tuple:
    """The canvas a call starts from: the prompt, then the generated region written as a template,
    "?" where a token is unknown (masked), a digit where it is known (an infill)."""
    return tuple(prompt) + tuple(MASK if ch == "?" else int(ch) for ch in template)


def draw(model, prompt: list, template: str, sampler: str, device, **options) -> torch.Tensor:
    """The outcomes of one batched call on the device: DRAWS copies of the prompt (which may be
    empty)."""
    infill = canvas_of([], template)
    if set(infill) != {MASK}:
        options["infill"] = torch.tensor(infill)
    prompts = torch.tensor([prompt] * DRAWS, dtype=torch.long).reshape(DRAWS, len(prompt))
    out = dllm.generate(model.to(device), prompts, gen_length=len(template), sampler=sampler,
                        generator=torch.Generator(device).manual_seed(0), **options)
    return sequence_index(out.sequences, len(prompt))


def assert_law(indices: torch.Tensor, law: dict, start: int):
    probs = outcome_probs(law, start, len(next(iter(law))) - start)
    p = chi_square_pvalue(indices, probs)
    assert p > P_MIN, (p, np.bincount(indices.numpy(), minlength=probs.size) / indices.numel(), probs)


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, template, time_conditioned, shift, options", [
    ([], "???", True, 0, dict(steps=3)), ([2], "???", True, 0, dict(steps=4)), ([], "???", False, 0, dict(steps=2)),
    ([1], "?2??", True, 1, dict(steps=3, temperature=0.7)),
    ([1], "???", False, 0, dict(steps=2, top_k=2)), ([], "???", True, 0, dict(steps=3, top_p=0.8)),
])
def test_mdlm_law(prompt, template, time_conditioned, shift, options, device):
    options = {"temperature": 1.0, **options}
    model = CanvasModel(len(prompt) + len(template), seed=1, time_conditioned=time_conditioned, logits_shift=shift)
    law = mdlm_law(Chain(model), canvas_of(prompt, template), **options)
    assert_law(draw(model, prompt, template, "mdlm", device, **options), law, len(prompt))


def test_mdlm_law_when_steps_reuse_the_logits():
    """A time-agnostic model's logits are reused by a step after one that unmasked nothing in the
    whole batch, which a batch of thousands never sees: small batches, many steps, exercise it.
    Exact: the canvas the logits were computed on is the canvas the step sees."""
    model, steps, rows, calls = CanvasModel(3, seed=2), 24, 5, 1000
    law = mdlm_law(Chain(model), canvas_of([], "???"), steps=steps)
    g, nfe, indices = torch.Generator().manual_seed(0), 0, []
    for _ in range(calls):
        out = dllm.generate(model, torch.empty(rows, 0, dtype=torch.long), gen_length=3, steps=steps, sampler="mdlm",
                            temperature=1.0, generator=g)
        nfe += out.nfe
        indices.append(sequence_index(out.sequences, 0))
    assert nfe < 0.75 * calls * steps  # the reuse is exercised (about half the steps)
    assert_law(torch.cat(indices), law, 0)


@pytest.mark.parametrize("prompt, template, time_conditioned, shift, options", [
    ([1], "???", False, 0, {}), ([], "???", True, 0, {}), ([], "?0??", True, 0, dict(temperature=0.5)),
    ([1], "???", False, 1, {}), ([1], "???", False, 0, dict(top_k=2)), ([1], "???", False, 0, dict(top_p=0.8)),
])
def test_first_hitting_law(prompt, template, time_conditioned, shift, options, device):
    options = {"temperature": 1.0, **options}
    model = CanvasModel(len(prompt) + len(template), seed=3, time_conditioned=time_conditioned, logits_shift=shift)
    law = first_hitting_law(Chain(model), canvas_of(prompt, template), **options)
    assert_law(draw(model, prompt, template, "first-hitting", device, steps=3, **options), law, len(prompt))


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("prompt, template, time_conditioned, shift, options", [
    ([0], "???", True, 0, dict(steps=2, block_length=3)),  # one block: commits 2 tokens, then 1
    ([], "????", False, 0, dict(steps=4, block_length=2, temperature=0.5)),  # two blocks of two steps
    ([0], "???", True, 0, dict(steps=3, block_length=3, cfg_scale=0.5)),
    ([], "??2?", False, 0, dict(steps=4, block_length=2, top_k=2)),  # the second block has one mask
    ([0], "???", False, 0, dict(steps=2, block_length=3, top_p=0.8)),
    ([0], "???", False, 1, dict(steps=2, block_length=3)),
])
def test_llada_law(remasking, prompt, template, time_conditioned, shift, options, device):
    options = {"temperature": 1.0, **options}
    model = CanvasModel(len(prompt) + len(template), seed=4, time_conditioned=time_conditioned, logits_shift=shift)
    law = llada_law(Chain(model), canvas_of(prompt, template), start=len(prompt), remasking=remasking, **options)
    sampler = "llada" if remasking == "low_confidence" else "llada:random"
    assert_law(draw(model, prompt, template, sampler, device, **options), law, len(prompt))


@pytest.mark.parametrize("cfg_scale", [0.0, 0.5])
def test_llada_law_of_padded_prompts(cfg_scale, device):
    """A left-padded prompt's row: its time-conditioned model's sigma counts the real tokens only,
    and guidance masks the prompt's tokens, not its padding."""
    model, half = CanvasModel(5, seed=4, time_conditioned=True), DRAWS // 2
    out = dllm.generate(model.to(device), [[0, 1]] * half + [[2]] * half, gen_length=3, steps=2, sampler="llada",
                        temperature=1.0, cfg_scale=cfg_scale, generator=torch.Generator(device).manual_seed(0))
    for rows, prompt, padding in ((slice(None, half), [0, 1], 0), (slice(half, None), [0, 2], 1)):  # pad id 0
        law = llada_law(Chain(model, padding), canvas_of(prompt, "???"), start=2, steps=2, block_length=3,
                        remasking="low_confidence", temperature=1.0, cfg_scale=cfg_scale)
        assert_law(sequence_index(out.sequences[rows], 2), law, 2)


@pytest.mark.parametrize("alg, prompt, template, time_conditioned, seed, options", [
    ("origin", [1], "???", False, 5, dict(steps=3)),
    ("origin", [], "?1??", True, 5, dict(steps=2, temperature=0.7)),
    ("maskgit_plus", [1], "???", False, 5, dict(steps=2)),
    # a table where the tempered and the untempered confidences rank differently
    ("maskgit_plus", [], "???", True, 23, dict(steps=2, temperature=0.5)),
    ("maskgit_plus", [2], "???", False, 5, dict(steps=2, top_p=0.8)),
    ("topk_margin", [2], "???", False, 5, dict(steps=2)),
    ("topk_margin", [0], "???", True, 5, dict(steps=2, temperature=0.8, top_k=2)),
    ("entropy", [1], "???", True, 5, dict(steps=3)),
    # five masks: the first step draws 2 positions without replacement, the second takes the 3 left
    ("entropy", [], "?????", False, 5, dict(steps=2, alg_temp=0.2)),
])
def test_dream_law(alg, prompt, template, time_conditioned, seed, options, device):
    options = {"temperature": 1.0, **options}
    model = CanvasModel(len(prompt) + len(template), seed=seed, time_conditioned=time_conditioned, logits_shift=1)
    law = dream_law(Chain(model), canvas_of(prompt, template), alg=alg, **options)
    assert_law(draw(model, prompt, template, f"dream:{alg}", device, **options), law, len(prompt))


@pytest.mark.parametrize("prompt, template, time_conditioned, shift, options", [
    ([0], "???", False, 0, dict(block_length=2, threshold=0.5)),  # blocks of 2 and 1
    ([], "???", True, 1, dict(block_length=3, threshold=0.4)),
    ([1], "?2??", False, 0, dict(block_length=4, threshold=0.6, top_p=0.9)),
    ([0], "???", False, 0, dict(block_length=2, threshold=0.5, top_k=2)),
])
def test_fast_dllm_law(prompt, template, time_conditioned, shift, options, device):
    options = {"temperature": 1.0, **options}
    model = CanvasModel(len(prompt) + len(template), seed=6, time_conditioned=time_conditioned, logits_shift=shift)
    law = fast_dllm_law(Chain(model), canvas_of(prompt, template), start=len(prompt), **options)
    assert_law(draw(model, prompt, template, "fast-dllm", device, steps=3, **options), law, len(prompt))


@pytest.mark.parametrize("method", ["analytic", "euler"])
@pytest.mark.parametrize("prompt, template, steps, noise, offset", [
    ([], "???", 3, "loglinear", 0.0), ([2], "???", 2, "loglinear", 0.0), ([], "???", 3, "geometric", 0.0),
    ([1], "???", 3, "loglinear", -2.0), ([], "?0??", 3, "loglinear", -1.0),
])
def test_sedd_absorbing_law(method, prompt, template, steps, noise, offset, device):
    # Scores of about the true total mass 1 / (e^sigma - 1): some steps clip the staying weight, some
    # do not. Smaller scores (offset < 0) leave most positions masked for the denoiser.
    model = CanvasModel(len(prompt) + len(template), seed=7, scale=1.0, offset=offset, graph=Absorbing(REAL),
                        noise=Geometric() if noise == "geometric" else None)
    law = sedd_law(Chain(model), canvas_of(prompt, template), steps=steps, method=method,
                   noise=geometric if noise == "geometric" else loglinear)
    assert_law(draw(model, prompt, template, f"sedd-{method}", device, steps=steps), law, len(prompt))


@pytest.mark.parametrize("method", ["analytic", "euler"])
@pytest.mark.parametrize("prompt, steps", [([], 3), ([2], 2)])
def test_sedd_uniform_law(method, prompt, steps, device):
    model = CanvasModel(len(prompt) + 3, seed=8, scale=1.0, graph=Uniform(REAL))
    law = sedd_uniform_law(Chain(model), prompt, 3, steps=steps, method=method)
    assert_law(draw(model, prompt, "???", f"sedd-{method}", device, steps=steps), law, len(prompt))
