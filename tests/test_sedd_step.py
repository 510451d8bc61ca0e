"""dllm.ops.sedd_step against SEDD's sampler math, evaluated exactly in float64."""

import math
import zlib

import numpy as np
import pytest
import torch

import dllm
from dllm.sedd import reference as ref
from stats import chi_square_pvalue, group_edges

pytestmark = pytest.mark.usefixtures("poisoned_empty")  # outputs start as NaN, not zeros

P_MIN = 1e-4  # seeded draws make every test deterministic; this only guards against a bad seed
METHODS = ["analytic", "euler", "denoise"]


def exact_next_token_probs(logits_row, x, sigma, dsig, graph, method, scale_by_sigma):
    """float64 next-token distribution of one position, from the reference (SEDD's formulas)."""
    w = ref.step_weights(logits_row.double().cpu()[None, None], torch.tensor([[x]]),
                         torch.tensor([sigma], dtype=torch.float32).double(),
                         torch.tensor([dsig], dtype=torch.float32).double(),
                         graph=graph, method=method, scale_by_sigma=scale_by_sigma)[0, 0]
    return (w / w.sum()).numpy()


def draws(logits_row, x, sigma, dsig, n, graph, method, scale_by_sigma, generator=None):
    """n draws for one position, the row read in place through a stride-0 batch."""
    device = logits_row.device
    logits = logits_row[None, None].expand(n, 1, logits_row.numel())
    xs = torch.full((n, 1), x, dtype=torch.int64, device=device)
    s = torch.full((n,), sigma, device=device)
    d = torch.full((n,), dsig, device=device)
    out = dllm.ops.sedd_step(logits, xs, s, d, graph=graph, method=method, scale_by_sigma=scale_by_sigma,
                             generator=generator)
    return out[:, 0]


# (graph, logit scale, sigma, dsig, scale_by_sigma): for absorb, scale 2 pushes c * S above 1
# (staying masked has weight 0 and is clipped), scale 1 keeps it inside (0, 1); for uniform, the
# clipped staggered score zeroes many entries in both.
CASES = [
    ("absorb", 2.0, 1.0, 0.3, True),
    ("absorb", 1.0, 1.0, 0.3, True),
    ("absorb", 1.5, 0.05, 0.01, True),
    ("uniform", 1.0, 0.8, 0.2, False),
    ("uniform", 3.0, 2.0, 0.7, False),
    ("uniform", 1.0, 0.8, 0.2, True),
    ("absorb", 3.0, 20.0, 2.0, True),   # geometric schedule's sigma_max: a large shift
    ("uniform", 4.0, 1e-3, 1e-3, False),  # almost no time passes: rare moves
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_frequencies_match_exact_next_token_distribution(device, case, method):
    graph, scale, sigma, dsig, sbs = case
    if method == "denoise":
        dsig = sigma
    k = 37
    gen = torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))  # hash() of a str varies per process
    row = (torch.randn(k, generator=gen) * scale).to(device)
    x = k - 1 if graph == "absorb" else 11
    probs = exact_next_token_probs(row, x, sigma, dsig, graph, method, sbs)
    torch.manual_seed(0)
    tokens = draws(row, x, sigma, dsig, 1 << 20, graph, method, sbs)
    assert chi_square_pvalue(tokens, probs) > P_MIN


# sigma and dsig past 709.78, where expm1 overflows float64, up to float32's 3e38 (the first steps
# of a schedule with a huge sigma_max): (graph, method, scale_by_sigma, sigma, dsig, the sigma and
# dsig of the exact distribution). With the score scaled by sigma, an absorbing step's linear
# weights underflow float64 there (the reference's; the kernels work in logs), but its distribution
# depends on sigma and dsig only through expm1(dsig) / expm1(sigma) (analytic) or not at all
# (denoise): the reference is evaluated at a sigma and dsig of the same ratio.
HUGE_SIGMA_CASES = [
    ("absorb", "analytic", True, 3e38, 3e38, (1.0, 1.0)),
    ("absorb", "analytic", True, 1e3, 999.0, (30.0, 29.0)),  # both ratios e^-1, to 1e-12
    ("absorb", "denoise", True, 3e38, 3e38, (1.0, 1.0)),
    ("absorb", "analytic", False, 1e3, 800.0, (1e3, 800.0)),
    ("uniform", "analytic", False, 1e3, 800.0, (1e3, 800.0)),
    ("uniform", "analytic", True, 3e38, 3e38, (3e38, 3e38)),  # scores of 0 but at x: x stays
]


@pytest.mark.parametrize("case", HUGE_SIGMA_CASES, ids=lambda c: "-".join(map(str, c[:5])))
def test_frequencies_at_huge_sigma(device, case):
    graph, method, sbs, sigma, dsig, (ref_sigma, ref_dsig) = case
    k = 4099  # three groups, whose log-masses carry the row's common factor
    row = (torch.randn(k, generator=torch.Generator().manual_seed(13)) - 1).to(device)  # absorb: masks stay or not
    x = k - 1 if graph == "absorb" else 11
    probs = exact_next_token_probs(row, x, ref_sigma, ref_dsig, graph, method, sbs)
    torch.manual_seed(0)
    tokens = draws(row, x, sigma, dsig, 1 << 16, graph, method, sbs)
    assert chi_square_pvalue(tokens, probs) > P_MIN


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_half_precision_logits(device, dtype, graph):
    torch.manual_seed(1)
    k = 101
    row = (torch.randn(k) * 2).to(dtype).to(device)
    x = k - 1 if graph == "absorb" else 5
    probs = exact_next_token_probs(row, x, 0.7, 0.2, graph, "analytic", graph == "absorb")
    tokens = draws(row, x, 0.7, 0.2, 1 << 18, graph, "analytic", graph == "absorb")
    assert chi_square_pvalue(tokens, probs) > P_MIN


@pytest.mark.parametrize("graph, method", [("absorb", "analytic"), ("absorb", "denoise"), ("uniform", "analytic"),
                                           ("uniform", "euler")])
def test_minus_inf_logits_are_never_drawn(device, graph, method):
    torch.manual_seed(12)
    k = 301
    row = torch.randn(k) * 2
    banned = torch.zeros(k, dtype=torch.bool)
    banned[torch.randperm(k - 1)[:100]] = True
    row[banned] = float("-inf")
    row = row.to(device)
    x = k - 1 if graph == "absorb" else int((~banned).nonzero()[3])
    sigma, dsig = (0.5, 0.5) if method == "denoise" else (0.5, 0.2)
    probs = exact_next_token_probs(row, x, sigma, dsig, graph, method, graph == "absorb")
    tokens = draws(row, x, sigma, dsig, 1 << 17, graph, method, graph == "absorb")
    assert not banned.to(device)[tokens].any()
    assert chi_square_pvalue(tokens, probs) > P_MIN


@pytest.mark.parametrize("graph, method, k", [("absorb", "analytic", 4099), ("absorb", "denoise", 6001),
                                             ("uniform", "analytic", 4099), ("uniform", "euler", 6001)])
def test_frequencies_across_groups(device, graph, method, k):
    # Several groups of 2048 with a ragged last one; absorb's mask sits in the last group. The
    # first and last entries of every group and subgroup (absorb: the last token before the mask)
    # are lifted near the top of the row: random logits left them under one expected draw each,
    # so the chi-square could not see one of them lost to an off-by-one (now 160 to 1500 each).
    torch.manual_seed(2)
    row = torch.randn(k) * 3
    edges = group_edges(k)
    if graph == "absorb":
        edges = sorted(set(edges) - {k - 1} | {k - 2})
    row[edges] = row.max() - 2.5 - 2 * torch.rand(len(edges))
    row = row.to(device)
    sigma, dsig = (0.5, 0.5) if method == "denoise" else (0.5, 0.05)
    x = k - 1 if graph == "absorb" else 4000
    probs = exact_next_token_probs(row, x, sigma, dsig, graph, method, graph == "absorb")
    tokens = draws(row, x, sigma, dsig, 1 << 17, graph, method, graph == "absorb")
    assert chi_square_pvalue(tokens, probs) > P_MIN
    expected = probs[edges] * tokens.numel()
    counts = torch.bincount(tokens.cpu(), minlength=k).double().numpy()[edges]
    assert (np.abs(counts - expected) < 5 * np.sqrt(expected)).all(), list(zip(edges, counts, expected))


@pytest.mark.parametrize("graph, method", [("absorb", "analytic"), ("absorb", "euler"), ("absorb", "denoise"),
                                           ("uniform", "euler")])
def test_frequencies_with_logits_far_from_zero(device, graph, method):
    """Logits near 1e7, where float32's spacing is 1: a mixture row's log-weights must be taken
    relative to its maximum before the Gumbel noise is added, or the noise keeps only its integer
    part and the draws leave the distribution (the CUDA kernel, emulated, before 2026-12-06: 0.14 /
    0.30 / 0.56 for probabilities 0.09 / 0.24 / 0.67). Such a row keeps x with weight 0 (c S > 1), so its
    exact distribution is the softmax of its others, which the offset does not change."""
    k, offset, sigma = 4099, 1e7, 1.0
    # rounded to integers; 10 above 0 in the exact distribution, so that c S > 1 in both graphs
    row = torch.randn(k, generator=torch.Generator().manual_seed(21)) * 2 + 10 + offset
    x = k - 1 if graph == "absorb" else 11
    dsig = sigma if method == "denoise" else 0.3
    probs = exact_next_token_probs(row.double() - offset, x, sigma, dsig, graph, method, True)
    assert probs[x] == 0.0  # x cannot stay: near 1e7 neither
    torch.manual_seed(0)
    tokens = draws(row.to(device), x, sigma, dsig, 1 << 17, graph, method, True)
    assert chi_square_pvalue(tokens, probs) > P_MIN


@pytest.mark.parametrize("method", METHODS)
def test_absorb_keeps_unmasked_tokens_and_masks_stay_at_the_right_rate(device, method):
    torch.manual_seed(3)
    b, l, k = 4, 113, 50258
    logits = torch.randn(b, l, k, dtype=torch.bfloat16, device=device)
    x = torch.randint(0, k - 1, (b, l), device=device)
    masked = torch.rand(b, l, device=device) < 0.5
    x[masked] = k - 1
    sigma = torch.tensor([0.3, 1.0, 2.0, 5.0], device=device)
    dsig = sigma if method == "denoise" else sigma * 0.05
    out = dllm.ops.sedd_step(logits, x, sigma, dsig, graph="absorb", method=method)
    assert torch.equal(out[~masked], x[~masked])
    assert ((out >= 0) & (out < k)).all()
    if method == "denoise":
        assert not (out == k - 1).any()
    # P(stay masked) per sequence, from the reference, against the counts over many draws.
    w = ref.step_weights(logits.double(), x, sigma.double(), dsig.double(), graph="absorb", method=method)
    p_stay = (w[..., -1] / w.sum(-1))[masked]
    n = 64
    stays = sum((dllm.ops.sedd_step(logits, x, sigma, dsig, graph="absorb", method=method)[masked] == k - 1).sum().item()
                for _ in range(n))
    mean = n * p_stay.sum().item()
    var = n * (p_stay * (1 - p_stay)).sum().item()
    assert abs(stays - mean) <= 5 * math.sqrt(var) + 1e-9, (stays, mean)


def test_seeded_runs_reproduce_and_consecutive_calls_differ(device):
    k = 3001
    logits = torch.randn(3, 50, k, device=device) * 4  # wide logits: most positions move
    x = torch.randint(0, k, (3, 50), device=device)
    args = (logits, x, torch.full((3,), 0.5, device=device), torch.full((3,), 0.2, device=device))
    kw = dict(graph="uniform", method="analytic")
    torch.manual_seed(5)
    a1, a2 = dllm.ops.sedd_step(*args, **kw), dllm.ops.sedd_step(*args, **kw)
    torch.manual_seed(5)
    b1 = dllm.ops.sedd_step(*args, **kw)
    assert torch.equal(a1, b1) and not torch.equal(a1, a2)
    g1 = torch.Generator(device=device).manual_seed(9)
    g2 = torch.Generator(device=device).manual_seed(9)
    assert torch.equal(dllm.ops.sedd_step(*args, **kw, generator=g1), dllm.ops.sedd_step(*args, **kw, generator=g2))


def test_result_does_not_depend_on_layout_or_threads():
    base = torch.randn(2, 30, 5003)
    view = base[:, :, 1:4099]  # rows start at 4-byte offsets
    copy = view.contiguous()
    x = torch.randint(0, 4098, (2, 30))
    x[:, ::2] = 4097
    sigma, dsig = torch.tensor([0.4, 0.9]), torch.tensor([0.1, 0.2])
    threads = torch.get_num_threads()
    results = []
    try:
        for logits, nthreads in ((view, 3), (copy, 3), (copy, 1)):  # explicit: a 1-core runner defaults to 1
            torch.set_num_threads(nthreads)
            for graph in ("absorb", "uniform"):
                torch.manual_seed(11)
                results.append((graph, dllm.ops.sedd_step(logits, x, sigma, dsig, graph=graph, method="analytic")))
    finally:
        torch.set_num_threads(threads)
    for i, (graph, out) in enumerate(results[2:]):
        assert torch.equal(out, results[i % 2][1])


def test_reference_draw_never_picks_a_zero_weight_when_rand_returns_0(monkeypatch):
    # torch.rand returns exactly 0 with probability 2^-24 per float32 entry; an exponential of 0
    # made every zero weight 0/0 = NaN, which argmax picks (about 3 tokens per SEDD-sized step)
    logits, x = torch.randn(3, 5, 7), torch.randint(0, 6, (3, 5))  # absorb: the mask is class 6
    sigma, dsig = torch.full((3,), 0.5), torch.full((3,), 0.1)
    weights = ref.step_weights(logits, x, sigma, dsig, graph="absorb", method="analytic")
    assert (weights == 0).any()
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.zeros(*shape, dtype=kw.get("dtype")))
    out = ref.sedd_step(logits, x, sigma, dsig, graph="absorb", method="analytic")
    assert (weights.gather(-1, out[..., None]) > 0).all()


def test_zero_step_keeps_every_token(device):
    # dsig = 0: no time passes, so analytic and euler steps keep every token.
    logits = torch.randn(2, 9, 41, device=device)
    x = torch.randint(0, 41, (2, 9), device=device)
    zero = torch.zeros(2, device=device)
    for graph in ("absorb", "uniform"):
        for method in ("analytic", "euler"):
            out = dllm.ops.sedd_step(logits, x, torch.ones(2, device=device), zero, graph=graph, method=method)
            assert torch.equal(out, x)


def test_float_arguments_and_empty_batch(device):
    logits = torch.randn(2, 4, 17, device=device)
    x = torch.full((2, 4), 16, device=device)
    out = dllm.ops.sedd_step(logits, x, 0.5, 0.5, graph="absorb", method="denoise")
    assert out.shape == (2, 4) and (out < 16).all()
    empty = dllm.ops.sedd_step(torch.randn(0, 3, 17, device=device), torch.zeros(0, 3, dtype=torch.int64, device=device),
                               torch.ones(0, device=device), torch.ones(0, device=device), graph="uniform", method="euler")
    assert empty.shape == (0, 3)


def _bad(device, **change):
    k = 10
    args = dict(logits=torch.randn(2, 3, k, device=device), x=torch.full((2, 3), k - 1, device=device),
                sigma=torch.ones(2, device=device), dsig=torch.full((2,), 0.1, device=device),
                graph="absorb", method="analytic")
    for key, v in change.items():
        args[key] = v(args[key]) if callable(v) else v
    return args


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(logits=lambda t: t.index_fill(2, torch.tensor([4], device=t.device), float("nan"))), ValueError, r"logits\[0, 0\] contains NaN"),
        (dict(x=lambda t: t.index_fill(1, torch.tensor([2], device=t.device), 10)), ValueError, r"x at position \[0, 2\] is outside"),
        (dict(x=lambda t: t.index_fill(1, torch.tensor([1], device=t.device), -1)), ValueError, r"x at position \[0, 1\]"),
        (dict(sigma=lambda t: t.index_fill(0, torch.tensor([1], device=t.device), 0.0)), ValueError, r"sigma\[1\] must be finite and > 0"),
        (dict(dsig=lambda t: -t), ValueError, r"sigma\[0\] must be finite and > 0, and dsig\[0\] finite and >= 0"),
        (dict(logits=lambda t: t[..., :1]), RuntimeError, "K >= 2"),
        (dict(logits=lambda t: t[0]), RuntimeError, r"shape \[B, L, K\]"),
        (dict(x=lambda t: t[:, :2]), RuntimeError, r"x must have shape \[B, L\]"),
        (dict(x=lambda t: t.int()), TypeError, "x must be int64"),
        (dict(sigma=lambda t: t[:1]), RuntimeError, r"sigma must have shape \[B\]"),
        (dict(logits=lambda t: t.double()), TypeError, "float32, bfloat16 or float16"),
        (dict(graph="masked"), ValueError, "graph must be"),
        (dict(method="tweedie"), ValueError, "method must be"),
    ],
)
def test_bad_input_raises_clear_errors(device, change, error, match):
    with pytest.raises(error, match=match):
        dllm.ops.sedd_step(**_bad(device, **change))
        dllm.ops.raise_pending_errors()  # CUDA raises the kernel's finds at a later call, or here


def test_all_minus_inf_denoise_row_raises(device):
    logits = torch.randn(1, 2, 9, device=device)
    logits[0, 1, :8] = float("-inf")
    with pytest.raises(ValueError, match=r"no token has positive probability at position \[0, 1\]"):
        dllm.ops.sedd_step(logits, torch.full((1, 2), 8, device=device), 1.0, 1.0, graph="absorb", method="denoise")
        dllm.ops.raise_pending_errors()


def test_opcheck(device):
    logits = torch.randn(2, 5, 301, device=device)
    x = torch.randint(0, 301, (2, 5), device=device)
    s, d = torch.full((2,), 0.5, device=device), torch.full((2,), 0.1, device=device)
    op = torch.ops.dllm.sedd_step.default
    for graph in ("absorb", "uniform"):
        torch.library.opcheck(op, (logits, x, s, d), dict(graph=graph, method="analytic"),
                              test_utils=("test_schema", "test_faketensor"))
    # dsig = 0 is deterministic, so eager and traced outputs can be compared exactly.
    torch.library.opcheck(op, (logits.bfloat16(), x, s, torch.zeros_like(d)), dict(graph="uniform", method="euler"))


def test_torch_compile_fullgraph(device):
    logits = torch.randn(3, 7, 57, device=device)
    x = torch.randint(0, 57, (3, 7), device=device)
    s, d = torch.full((3,), 0.5, device=device), torch.full((3,), 0.1, device=device)

    def step(z):
        return dllm.ops.sedd_step(z * 1.5, x, s, d, graph="uniform", method="analytic") + 1

    compiled = torch.compile(step, fullgraph=True)
    torch.manual_seed(0)
    got = compiled(logits)
    torch.manual_seed(0)
    assert torch.equal(got, step(logits))


def test_graph_objects_drive_the_ops(device):
    graph = dllm.sedd.Absorbing(20)
    x = graph.sample_limit(2, 6, device=device)
    assert (x == 20).all()
    logits = torch.randn(2, 6, 21, device=device)
    out = graph.step(logits, x, 1.0, 1.0, method="denoise")
    assert (out < 20).all()
    with pytest.raises(ValueError, match="21 classes but the logits have 20"):
        graph.step(logits[..., :20], x, 1.0, 0.1)
    uni = dllm.sedd.Uniform(20)
    assert uni.sample_limit(2, 6, device=device).max() < 20


@pytest.mark.parametrize("graph_cls, scaled", [(dllm.sedd.Absorbing, True), (dllm.sedd.Uniform, False)])
def test_graph_objects_scale_the_output_by_sigma_as_sedd_trains_them(device, graph_cls, scaled):
    """SEDD scales the absorbing graph's output by sigma and not the uniform graph's (ALGORITHMS.md
    1.1): the graph objects' step and loss must default to that, since the SEDD samplers call
    graph.step without scale_by_sigma. Seeded draws of the op itself are the reference, and the
    inputs are checked to tell the two settings apart."""
    graph = graph_cls(29)
    K = graph.num_classes
    g = torch.Generator(device).manual_seed(11)
    B, L = 3, 37
    logits = torch.randn(B, L, K, generator=g, device=device) * 2
    x = torch.randint(0, K, (B, L), generator=g, device=device)
    x0 = torch.randint(0, graph.vocab_size, (B, L), generator=g, device=device)
    sigma = torch.rand(B, generator=g, device=device) * 0.5 + 0.05
    dsig = sigma * 0.3
    if graph.name == "absorb":
        # only masked positions move under absorb: half of them, so that the two settings' draws
        # differ in many positions rather than in the few that a random x leaves masked
        x[:, ::2] = graph.mask_id

    def op_step(method, scale):
        return dllm.ops.sedd_step(logits, x, sigma, dsig, graph=graph.name, method=method, scale_by_sigma=scale,
                                  generator=torch.Generator(device).manual_seed(5))

    for method in METHODS:
        got = graph.step(logits, x, sigma, dsig, method=method, generator=torch.Generator(device).manual_seed(5))
        assert torch.equal(got, op_step(method, scaled))
        # (absorb's denoising step normalises the scale away: only the other methods tell them apart)
        if method != "denoise" or graph.name == "uniform":
            assert not torch.equal(got, op_step(method, not scaled))
        # an explicit scale_by_sigma overrides the graph's default
        overridden = graph.step(logits, x, sigma, dsig, method=method, scale_by_sigma=not scaled,
                                generator=torch.Generator(device).manual_seed(5))
        assert torch.equal(overridden, op_step(method, not scaled))
    loss = graph.loss(logits, x, x0, sigma, dsig)
    want = dllm.ops.score_entropy_loss(logits, x, x0, sigma, dsig, graph=graph.name, scale_by_sigma=scaled)
    other = dllm.ops.score_entropy_loss(logits, x, x0, sigma, dsig, graph=graph.name, scale_by_sigma=not scaled)
    assert torch.equal(loss, want) and not torch.allclose(loss, other)
    assert torch.equal(graph.loss(logits, x, x0, sigma, dsig, scale_by_sigma=not scaled), other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_mismatch():
    args = _bad("cuda")
    args["sigma"] = args["sigma"].cpu()
    with pytest.raises(RuntimeError, match="sigma is on cpu"):
        dllm.ops.sedd_step(**args)
    args = _bad("cuda")
    args["x"] = args["x"].cpu()
    with pytest.raises(RuntimeError, match="x is on cpu"):
        dllm.ops.sedd_step(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("graph, method", [("absorb", "analytic"), ("uniform", "analytic"), ("uniform", "euler")])
def test_cuda_and_cpu_agree_in_distribution(graph, method):
    from stats import two_sample_pvalue

    torch.manual_seed(8)
    k = 3001
    row = (torch.randn(k) * 2).to(torch.bfloat16)
    x = k - 1 if graph == "absorb" else 17
    n = 1 << 18
    cpu = draws(row, x, 0.6, 0.1, n, graph, method, graph == "absorb")
    gpu = draws(row.cuda(), x, 0.6, 0.1, n, graph, method, graph == "absorb")
    assert two_sample_pvalue(cpu, gpu, k) > P_MIN


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replays_draw_fresh_numbers_like_eager():
    k = 3001
    logits = torch.randn(4, 64, k, device="cuda") * 3
    x = torch.full((4, 64), k - 1, device="cuda")
    s, d = torch.full((4,), 0.5, device="cuda"), torch.full((4,), 0.3, device="cuda")
    step = lambda: dllm.ops.sedd_step(logits, x, s, d, graph="absorb", method="analytic")  # noqa: E731
    step()  # warm up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    torch.cuda.manual_seed(21)
    graph.replay()
    first = static.clone()
    graph.replay()
    second = static.clone()
    torch.cuda.manual_seed(21)
    eager = [step() for _ in range(2)]
    assert torch.equal(first, eager[0]) and torch.equal(second, eager[1])
    assert not torch.equal(first, second)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_allocates_no_b_l_k_temporary():
    logits = torch.randn(4, 256, 50258, dtype=torch.bfloat16, device="cuda")
    x = torch.full((4, 256), 50257, device="cuda")
    s, d = torch.full((4,), 0.5, device="cuda"), torch.full((4,), 0.1, device="cuda")
    for graph in ("absorb", "uniform"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        dllm.ops.sedd_step(logits, x, s, d, graph=graph, method="analytic")
        torch.cuda.synchronize()
        assert torch.cuda.max_memory_allocated() - base <= 1 << 20


@pytest.mark.parametrize("graph_cls, method", [(dllm.sedd.Absorbing, "analytic"), (dllm.sedd.Absorbing, "euler"),
                                               (dllm.sedd.Uniform, "analytic")])
def test_full_sampling_loop_with_schedule(device, graph_cls, method):
    # SEDD's PC sampler with a stand-in network: every absorbing-graph token ends unmasked, the
    # number of masks never grows, and every token stays in range.
    torch.manual_seed(13)
    graph, noise = graph_cls(50), dllm.sedd.LogLinear()
    b, l, steps, eps = 3, 40, 16, 1e-5
    table = torch.randn(graph.num_classes, device=device) * 2
    x = graph.sample_limit(b, l, device=device)
    t = torch.linspace(1, eps, steps + 1, device=device)
    masks = [(x == graph.num_classes - 1).sum().item()]
    for i in range(steps):
        sigma, dsigma = noise(t[i].expand(b))
        logits = table.expand(b, l, -1) + torch.randn(b, l, graph.num_classes, device=device)
        if method == "analytic":
            dsig = sigma - noise(t[i + 1].expand(b))[0]
        else:
            dsig = (t[i] - t[i + 1]) * dsigma
        x = graph.step(logits, x, sigma, dsig, method=method)
        masks.append((x == graph.num_classes - 1).sum().item())
        assert ((x >= 0) & (x < graph.num_classes)).all()
    sigma, _ = noise(t[-1].expand(b))
    x = graph.step(table.expand(b, l, -1).contiguous(), x, sigma, sigma, method="denoise")
    if graph_cls is dllm.sedd.Absorbing:
        assert all(m1 <= m0 for m0, m1 in zip(masks, masks[1:])) and masks[0] == b * l > masks[steps // 2]
        assert (x < graph.num_classes - 1).all()


@pytest.mark.parametrize("graph, method", [("absorb", "analytic"), ("absorb", "euler"), ("absorb", "denoise"),
                                           ("uniform", "analytic"), ("uniform", "euler")])
def test_reference_step_draws_from_its_normalised_weights(graph, method):
    # The eager reference step (the benchmarks' baseline, public as dllm.sedd.reference.sedd_step)
    # must draw each position's token from step_weights / step_weights.sum(): an exponential race
    # w_y / E_y. Its only other test checks that it picks a positive weight, which a draw from the
    # wrong law (w_y * E_y, or the plain argmax of w) also does.
    g = torch.Generator().manual_seed(23)
    k, n = 11, 1 << 16
    row = torch.randn(k, generator=g, dtype=torch.float64) * 1.5
    x = k - 1 if graph == "absorb" else 4
    sbs = graph == "absorb"  # as SEDD trains each graph
    sigma, dsig = (0.8, 0.8) if method == "denoise" else (0.8, 0.3)
    w = ref.step_weights(row[None, None], torch.tensor([[x]]), torch.tensor([sigma], dtype=torch.float64),
                         torch.tensor([dsig], dtype=torch.float64), graph=graph, method=method, scale_by_sigma=sbs)[0, 0]
    probs = (w / w.sum()).numpy()
    assert (probs > 0.01).sum() >= 3 and probs.max() < 0.9  # a law a greedy pick or a skewed race would miss
    args = (row.expand(n, 1, k), torch.full((n, 1), x), torch.full((n,), sigma, dtype=torch.float64),
            torch.full((n,), dsig, dtype=torch.float64))
    kw = dict(graph=graph, method=method, scale_by_sigma=sbs)
    tokens = ref.sedd_step(*args, **kw, generator=torch.Generator().manual_seed(5))
    assert chi_square_pvalue(tokens, probs) > P_MIN
    # a seeded generator reproduces the draws (the benchmarks' baseline is rerun with one)
    assert torch.equal(ref.sedd_step(*args, **kw, generator=torch.Generator().manual_seed(5)), tokens)


@pytest.mark.parametrize("graph_cls", [dllm.sedd.Absorbing, dllm.sedd.Uniform])
def test_graph_step_defaults_to_the_analytic_method(graph_cls):
    # graph.step's method defaults to "analytic" (SEDD's Tweedie tau-leaping), not euler
    graph = graph_cls(23)
    K = graph.num_classes
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 301, K, generator=g) * 2
    x = torch.randint(0, K, (2, 301), generator=g)
    if graph.name == "absorb":
        x[:, ::2] = graph.mask_id
    sigma, dsig = torch.tensor([0.9, 2.0]), torch.tensor([0.9, 1.5])  # e^dsig - 1 far from dsig

    def op(method):
        return dllm.ops.sedd_step(logits, x, sigma, dsig, graph=graph.name, method=method,
                                  scale_by_sigma=graph.scale_by_sigma, generator=torch.Generator().manual_seed(8))

    got = graph.step(logits, x, sigma, dsig, generator=torch.Generator().manual_seed(8))
    assert torch.equal(got, op("analytic")) and not torch.equal(got, op("euler"))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_step_arguments_the_kernel_refuses_are_refused_on_meta_too(device):
    # the fake (meta kernel, torch.compile's) refuses from metadata what the CPU kernel refuses
    g = torch.Generator().manual_seed(4)
    B, L = 3, 5
    x = torch.zeros(B, L, dtype=torch.int64, device=device)
    one = torch.ones(B, device=device)
    with pytest.raises(RuntimeError, match="K >= 2"):  # a single class: nothing to move to
        dllm.ops.sedd_step(torch.randn(B, L, 1, generator=g).to(device), x, 1.0, 0.1, graph="uniform", method="euler")
    logits = torch.randn(B, L, 7, generator=g).to(device)
    with pytest.raises(TypeError, match="sigma"):  # integer per-sequence terms
        dllm.ops.sedd_step(logits, x, one.long(), one, graph="uniform", method="euler")
    with pytest.raises(RuntimeError, match="K >= 2"):
        dllm.ops.score_entropy_loss(logits[..., :1], x, x, 1.0, 1.0, graph="uniform")


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_the_denoise_step_traces_on_meta_and_under_compile(graph):
    g = torch.Generator().manual_seed(6)
    B, L, K = 2, 7, 9
    logits = torch.randn(B, L, K, generator=g)
    x = torch.randint(0, K, (B, L), generator=g)
    step = lambda lg, t: dllm.ops.sedd_step(lg, t, 0.8, 0.8, graph=graph, method="denoise")  # noqa: E731
    meta = step(logits.to("meta"), x.to("meta"))
    assert meta.shape == (B, L) and meta.dtype == torch.int64
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = step(logits, x)
    torch.manual_seed(0)
    assert torch.equal(torch.compile(step, backend="eager", fullgraph=True)(logits, x), eager)
