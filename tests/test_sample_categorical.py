"""dllm.ops.sample_categorical against exact float64 probabilities."""

import numpy as np
import pytest
import torch

import dllm
from stats import chi_square_pvalue, exact_probs, group_edges, poisson_z, two_sample_pvalue

pytestmark = pytest.mark.usefixtures("poisoned_empty", "seeded")  # outputs start as NaN, not zeros

P_MIN = 1e-4  # seeded draws make every test deterministic; this only guards against a bad seed
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def draws(row: torch.Tensor, n: int, temperature=1.0, generator=None) -> torch.Tensor:
    """n draws from one row, read in place through a stride-0 batch."""
    tokens, _ = dllm.ops.sample_categorical(row.expand(n, row.numel()), temperature, generator=generator)
    return tokens


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_frequencies_match_exact_probabilities(device, dtype, temperature):
    torch.manual_seed(0)
    row = (torch.randn(37) * 2).to(dtype).to(device)
    tokens = draws(row, 1 << 22, temperature)
    assert chi_square_pvalue(tokens, exact_probs(row, temperature)) > P_MIN


@pytest.mark.parametrize("vocab", [4099, 6001])  # two and three groups of 2048, ragged last group
def test_frequencies_across_groups(device, vocab):
    torch.manual_seed(1)
    row = torch.randn(vocab) * 3
    # Random logits leave most edge entries a few expected draws, far below what the chi-square
    # over ~2000 bins can miss (~220): lift them near the top of the row, 600 to 4000 expected
    # draws each (an eighth to a quarter of the draws in all, the rest for the other entries).
    edges = group_edges(vocab)
    row[edges] = row.max() - 2.5 - 2 * torch.rand(len(edges))
    row = row.to(device)
    tokens = draws(row, 1 << 19)
    probs = exact_probs(row, 1.0)
    assert chi_square_pvalue(tokens, probs) > P_MIN
    counts = torch.bincount(tokens.cpu(), minlength=vocab).double().numpy()
    z = (counts[edges] - probs[edges] * tokens.numel()) / np.sqrt(probs[edges] * tokens.numel())
    assert np.abs(z).max() < 5, [(e, counts[e], probs[e] * tokens.numel()) for e in np.array(edges)[np.abs(z) >= 5]]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_rare_tail_tokens_come_out_at_their_true_rate(device, temperature):
    # One head token and 15999 tail tokens of total mass 1e-3 (each ~6e-8) at the requested
    # temperature. A float32 Gumbel race built from 24-bit uniforms (MDLM's and SEDD's
    # `-log(-log(u + 1e-10) + 1e-10)`) cannot reach the noise these tokens need to win
    # (arXiv:2409.02908): on this row it draws 674 tail tokens where 1049 are due (z = -11.6).
    vocab, head, tail_mass = 16000, 5555, 1e-3
    gen = torch.Generator().manual_seed(2)
    tail = torch.randn(vocab, generator=gen, dtype=torch.float64) * 0.5
    tail = tail - torch.logsumexp(tail, 0) + np.log(tail_mass)
    tail[head] = np.log1p(-tail_mass)
    row = (tail * temperature).float().to(device)  # softmax(row / T) has the mass above
    n = 1 << 20
    tokens = draws(row, n, temperature).cpu()
    probs = exact_probs(row, temperature)
    rare = tokens[tokens != head]
    expected = n * (1.0 - probs[head])
    assert abs(poisson_z(rare.numel(), expected)) < 4, (rare.numel(), expected)
    # The tail spans all 8 groups of 2048: each group must get its share of it.
    group_mass = np.add.reduceat(np.where(np.arange(vocab) == head, 0.0, probs), np.arange(0, vocab, 2048))
    assert chi_square_pvalue(rare // 2048, group_mass / group_mass.sum()) > P_MIN
    assert chi_square_pvalue(tokens, probs) > P_MIN


def test_per_row_temperature(device):
    torch.manual_seed(3)
    row = torch.randn(29, device=device) * 2
    n = 1 << 19
    temps = torch.tensor([0.5, 2.0], device=device).repeat(n // 2)
    tokens, _ = dllm.ops.sample_categorical(row.expand(n, 29), temps)
    for k, t in enumerate([0.5, 2.0]):
        assert chi_square_pvalue(tokens[k::2], exact_probs(row, t)) > P_MIN


def test_minus_inf_is_never_drawn(device):
    torch.manual_seed(4)
    vocab = 5000
    row = torch.randn(vocab, device=device)
    banned = torch.zeros(vocab, dtype=torch.bool, device=device)
    banned[: 2048 + 100] = True  # a whole group and part of the next
    banned[torch.randperm(vocab, device=device)[:1000]] = True
    row[banned] = float("-inf")
    tokens = draws(row, 1 << 18)
    assert not banned[tokens].any()
    assert chi_square_pvalue(tokens, exact_probs(row, 1.0)) > P_MIN


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 113), (2, 50258), (1, 262144), (7, 1)])
def test_logprob_matches_float64_log_softmax(device, dtype, shape):
    torch.manual_seed(5)
    logits = (torch.randn(shape) * 4).to(dtype).to(device)
    for temperature in (1.0, 0.7):
        tokens, logprob = dllm.ops.sample_categorical(logits, temperature)
        assert tokens.shape == shape[:-1] and tokens.dtype == torch.int64
        assert logprob.shape == shape[:-1] and logprob.dtype == torch.float32
        ref = torch.log_softmax(logits.double() / temperature, -1).gather(-1, tokens[..., None])[..., 0]
        # Plain PyTorch's own float32 error on the same values sets the tolerance.
        torch_err = (torch.log_softmax(logits.float() / temperature, -1).double().gather(-1, tokens[..., None])[..., 0] - ref).abs().max()
        assert (logprob.double() - ref).abs().max() <= 2 * torch_err + 2e-6


@pytest.mark.parametrize("dtype", DTYPES)
def test_temperature_zero_is_argmax_with_lowest_index_on_ties(device, dtype):
    torch.manual_seed(6)
    logits = torch.randn(4, 6000).to(dtype)
    logits[1, [5, 3000, 5999]] = 10.0  # ties across groups: the lowest index wins
    logits[2, :] = -3.0  # every entry tied
    logits[3, :4000] = float("-inf")
    logits = logits.to(device)
    tokens, logprob = dllm.ops.sample_categorical(logits, 0.0)
    expected = logits.float().argmax(-1)  # torch also returns the first maximal index
    assert tokens.tolist() == expected.tolist()
    assert tokens[1] == 5 and tokens[2] == 0
    ref = torch.log_softmax(logits.double(), -1).gather(-1, tokens[:, None])[:, 0]
    torch.testing.assert_close(logprob.double(), ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("offset, temperature", [(1e6, 1.0), (1e7, 1.0), (1e7, 0.5), (10.0, 1e-6)])
def test_large_logits_keep_their_distribution_and_logprob(device, offset, temperature):
    # The kernels temper relative to the row's max: a float32 Gumbel race on raw values of 1e7
    # rounds the noise to the logits' ulp of 1 (it drew a 0.665 token 0.762 of the time), and
    # logits near 10 at temperature 1e-6 are values near 1e7 too once divided.
    torch.manual_seed(8)
    row = (offset + torch.randint(-6, 1, (29,), dtype=torch.float64) * temperature).float()
    tokens, logprob = dllm.ops.sample_categorical(row.to(device).expand(1 << 19, 29), temperature)
    probs = exact_probs(row, temperature)
    assert chi_square_pvalue(tokens, probs) > P_MIN
    want = torch.from_numpy(np.log(probs))[tokens.cpu()]
    assert (logprob.cpu().double() - want).abs().max() < 1e-5


# 1 / T overflows float32 below 2.9e-39; below 1.4e-45 a float32 is 0 (argmax), so a float or a
# float64 tensor is clamped to float32's normal range, and 1 / T of a subnormal float32 one is capped
@pytest.mark.parametrize("temperature", [1e-30, 1e-38, 1e-40, 1e-45, 1e-46, 1e-300])
def test_a_tiny_temperature_is_the_greedy_limit_with_ties_drawn_uniformly(device, temperature):
    row = torch.tensor([-5.0, -3.0, -3.0, -4.0, -90.0, -3.0 - 2**-20], device=device)
    n = 1 << 16
    tensors = [torch.tensor([temperature], dtype=dtype, device=device) for dtype in (torch.float64, torch.float32)]
    for t in [temperature] + [t for t in tensors if t.item() > 0]:
        tokens, logprob = dllm.ops.sample_categorical(row.expand(n, 6), t)
        counts = torch.bincount(tokens, minlength=6).cpu()
        assert counts[[0, 3, 4, 5]].sum() == 0
        assert abs(counts[1].item() - n / 2) < 4 * (n / 4) ** 0.5
        torch.testing.assert_close(logprob.cpu(), torch.full((n,), -np.log(2.0), dtype=torch.float32))


@pytest.mark.parametrize("temperature", [1e30, 1e39, 1e300])  # float32 ends at 3.4e38: larger ones are clamped
def test_a_huge_temperature_is_the_uniform_limit(device, temperature):
    row = torch.tensor([2.0, -1.0, float("-inf"), 30.0, 0.5], device=device)
    n = 1 << 14
    for t in (temperature, torch.tensor([temperature], dtype=torch.float64, device=device)):
        tokens, logprob = dllm.ops.sample_categorical(row.expand(n, 5), t)
        assert chi_square_pvalue(tokens, np.array([0.25, 0.25, 0.0, 0.25, 0.25])) > P_MIN
        torch.testing.assert_close(logprob.cpu(), torch.full((n,), -np.log(4.0), dtype=torch.float32))


def test_per_row_temperature_zero_rows_are_greedy(device):
    torch.manual_seed(7)
    logits = torch.randn(64, 300, device=device)
    temps = torch.tensor([0.0, 1.0], device=device).repeat(32)
    tokens, _ = dllm.ops.sample_categorical(logits, temps)
    assert torch.equal(tokens[0::2], logits[0::2].argmax(-1))
    assert not torch.equal(tokens[1::2], logits[1::2].argmax(-1))


def test_seeded_runs_reproduce_and_consecutive_calls_differ(device):
    logits = torch.randn(257, 3000, device=device)
    torch.manual_seed(123)
    a1, l1 = dllm.ops.sample_categorical(logits)
    a2, _ = dllm.ops.sample_categorical(logits)
    torch.manual_seed(123)
    b1, m1 = dllm.ops.sample_categorical(logits)
    assert torch.equal(a1, b1) and torch.equal(l1, m1)
    assert not torch.equal(a1, a2)
    g1 = torch.Generator(device=device).manual_seed(9)
    g2 = torch.Generator(device=device).manual_seed(9)
    assert torch.equal(dllm.ops.sample_categorical(logits, generator=g1)[0],
                       dllm.ops.sample_categorical(logits, generator=g2)[0])



def test_a_greedy_call_leaves_the_generator_as_it_is(device):
    """A float temperature of 0 draws nothing (as predict_masked and commit_tokens), so greedy
    decoding between two seeded draws does not shift the second; a temperature tensor draws."""
    logits = torch.randn(5, 300, device=device)
    g = torch.Generator(device=device).manual_seed(4)
    global_state = torch.cuda.get_rng_state if device == "cuda" else torch.get_rng_state
    before, global_before = g.get_state(), global_state()
    dllm.ops.sample_categorical(logits, 0.0, generator=g)
    assert torch.equal(g.get_state(), before)
    dllm.ops.sample_categorical(logits, 0.0)
    assert torch.equal(global_state(), global_before)
    dllm.ops.sample_categorical(logits, torch.zeros(5, device=device), generator=g)
    assert not torch.equal(g.get_state(), before)

def test_result_does_not_depend_on_layout_or_threads():
    # Randomness is keyed by logical (row, index): strided rows, a copy, and any thread count
    # draw the same tokens from the same seed.
    base = torch.randn(40, 5003)
    view = base[:, 1:4099]  # rows start at 4-byte offsets from any alignment
    copy = view.contiguous()
    threads = torch.get_num_threads()
    try:
        results = []
        for x, nthreads in ((view, 3), (copy, 3), (copy, 1)):  # explicit: a 1-core runner defaults to 1
            torch.set_num_threads(nthreads)
            torch.manual_seed(11)
            results.append(dllm.ops.sample_categorical(x, 0.8))
    finally:
        torch.set_num_threads(threads)
    for tokens, logprob in results[1:]:
        assert torch.equal(tokens, results[0][0]) and torch.equal(logprob, results[0][1])


def test_empty_batch(device):
    tokens, logprob = dllm.ops.sample_categorical(torch.randn(0, 5, 11, device=device))
    assert tokens.shape == (0, 5) and logprob.shape == (0, 5)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda d: torch.randn(4, 10, device=d).index_fill_(1, torch.tensor([3], device=d), float("nan")), ValueError, "row 0 .*NaN"),
        (lambda d: torch.randn(4, 10, device=d).index_fill_(0, torch.tensor([2], device=d), float("inf")), ValueError, "row 2 .*NaN or \\+inf"),
        (lambda d: torch.randn(4, 3000, device=d).index_fill_(0, torch.tensor([3], device=d), float("-inf")), ValueError, "row 3 .*all -inf"),
        (lambda d: torch.randn(4, 0, device=d), RuntimeError, "V = 0"),
        (lambda d: torch.randint(0, 5, (4, 10), device=d), TypeError, "float32, bfloat16 or float16"),
        (lambda d: torch.randn(4, 10, dtype=torch.float64, device=d), TypeError, "float32, bfloat16 or float16"),
        (lambda d: torch.tensor(1.0, device=d), RuntimeError, "at least one dimension"),
    ],
)
def test_bad_logits_raise_clear_errors(device, make, error, match):
    with pytest.raises(error, match=match):
        dllm.ops.sample_categorical(make(device))
        dllm.ops.raise_pending_errors()  # CUDA raises the kernel's finds at a later call, or here


def test_bad_temperature_raises(device):
    logits = torch.randn(3, 10, device=device)
    with pytest.raises(ValueError, match="finite and >= 0"):
        dllm.ops.sample_categorical(logits, -1.0)
    for bad in (-0.5, float("inf"), float("nan")):  # float64 ones too, which are clamped when positive and finite
        with pytest.raises(ValueError, match="row 1 .*temperature"):
            dllm.ops.sample_categorical(logits, torch.tensor([1.0, bad, 1.0], dtype=torch.float64, device=device))
            dllm.ops.raise_pending_errors()
    with pytest.raises(ValueError, match="row 1 .*temperature"):
        dllm.ops.sample_categorical(logits, torch.tensor([1.0, -0.5, 1.0], device=device))
        dllm.ops.raise_pending_errors()
    with pytest.raises(RuntimeError, match="one element or the shape"):
        dllm.ops.sample_categorical(logits, torch.ones(2, device=device))


def test_opcheck(device):
    logits = torch.randn(3, 4, 301, device=device)
    op = torch.ops.dllm.sample_categorical.default
    # Greedy calls compare eagerly-run and traced outputs exactly.
    torch.library.opcheck(op, (logits, None, 0.0))
    torch.library.opcheck(op, (logits.bfloat16(), torch.zeros(3, 4, device=device), 1.0))
    torch.library.opcheck(op, (logits, None, 1.0), test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph(device):
    logits = torch.randn(5, 777, device=device)

    def step(x):
        tokens, logprob = dllm.ops.sample_categorical(x * 1.5, 0.9)
        return tokens + 1, logprob.exp()

    compiled = torch.compile(step, fullgraph=True)
    torch.manual_seed(0)
    got = compiled(logits)
    torch.manual_seed(0)
    want = step(logits)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generator_and_device_checks():
    logits = torch.randn(2, 10, device="cuda")
    for temperature in (1.0, 0.0):  # a greedy call draws nothing but refuses the generator all the same
        with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator"):
            dllm.ops.sample_categorical(logits, temperature, generator=torch.Generator())  # a CPU generator
    with pytest.raises(RuntimeError, match="Expected a 'cpu' device type for generator"):
        dllm.ops.sample_categorical(logits.cpu(), 0.0, generator=torch.Generator("cuda"))
    with pytest.raises(RuntimeError, match="temperature is on"):
        dllm.ops.sample_categorical(logits, torch.ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replays_draw_fresh_numbers_like_eager():
    logits = torch.randn(64, 3001, device="cuda")
    dllm.ops.sample_categorical(logits)  # warm up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_tokens, _ = dllm.ops.sample_categorical(logits)
    torch.cuda.manual_seed(21)
    graph.replay()
    first = static_tokens.clone()
    graph.replay()
    second = static_tokens.clone()
    torch.cuda.manual_seed(21)
    eager = [dllm.ops.sample_categorical(logits)[0] for _ in range(2)]
    assert torch.equal(first, eager[0]) and torch.equal(second, eager[1])
    assert not torch.equal(first, second)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_and_cpu_agree_in_distribution(dtype):
    torch.manual_seed(8)
    row = (torch.randn(3001) * 2).to(dtype)
    n = 1 << 19
    assert two_sample_pvalue(draws(row, n), draws(row.cuda(), n), 3001) > P_MIN


def test_a_one_element_temperature_tensor_traces_on_meta_and_under_compile():
    # a temperature tensor with one element serves every row, of any leading shape: the fake
    # (meta kernel, torch.compile's) must take it as the kernel does
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, 11, generator=g)
    for temperature in (torch.tensor([0.7]), torch.tensor([[[0.7]]]), torch.tensor(0.7)):
        tokens, logprob = dllm.ops.sample_categorical(logits.to("meta"), temperature.to("meta"))
        assert tokens.shape == logprob.shape == (3, 5) and tokens.dtype == torch.int64
        torch._dynamo.reset()
        torch.manual_seed(0)
        eager = dllm.ops.sample_categorical(logits, temperature)
        torch.manual_seed(0)
        compiled = torch.compile(dllm.ops.sample_categorical, backend="eager", fullgraph=True)(logits, temperature)
        assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])
