"""next_token_nll, the autoregressive baseline's loss: values and gradients against F.cross_entropy
in float64, over several chunks of rows, and the memory it keeps and allocates."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from compile_check import assert_compiled_loss_matches_eager
from dllm.objectives import next_token
from dllm.objectives import next_token_nll

pytestmark = pytest.mark.usefixtures("poisoned_empty")  # outputs start as NaN: every chunk must be written
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, L, V): one position, an awkward length, a small odd V and a large one
SHAPES = [(3, 1, 37), (3, 113, 37), (3, 1, 5003), (2, 113, 5003)]
# the gradient's rounding to the logits' dtype (|grad| <= |weight| < 2), plus float32's error on the values
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10, torch.float64: 1e-12}


def make_inputs(shape, dtype, seed=0, device="cpu"):
    b, l, v = shape
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=gen) * 3).to(dtype)
    targets = torch.randint(0, v, (b, l), generator=gen)
    weight = torch.rand(b, generator=gen) * 2 - 1  # an upstream gradient other than ones, negatives included
    return logits.to(device), targets.to(device), weight.to(device)


def reference(logits, targets, weight):
    """The old definition, in float64: values [B] and d(sum(weight * nll)) / d(logits)."""
    x = logits.detach().double().requires_grad_()
    nll = F.cross_entropy(x.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape).sum(-1)
    (nll * weight.double()).sum().backward()
    return nll.detach(), x.grad


def ours(logits, targets, weight):
    x = logits.detach().requires_grad_()
    nll = next_token_nll(x, targets)
    (nll * weight.to(nll.dtype)).sum().backward()
    return nll.detach(), x.grad


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 2 rows at V = 5003."""
    monkeypatch.setattr(next_token, "_CHUNK_BYTES", 4 * 5003 * 2)
    assert next_token._chunk_rows(5003, torch.float32, torch.device("cpu")) == 2


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_values_and_gradients_match_float64_cross_entropy(shape, dtype, chunked, device, monkeypatch):
    if chunked:  # 4 rows a chunk: 3, 226 and 339 rows end on a ragged chunk
        monkeypatch.setattr(next_token, "_CHUNK_BYTES", 4 * shape[2] * 4)
    logits, targets, weight = make_inputs(shape, dtype, device=device)
    want, want_grad = reference(logits, targets, weight)
    got, grad = ours(logits, targets, weight)
    assert got.dtype == torch.float32 and got.shape == (shape[0],)
    assert grad.dtype == dtype and grad.shape == logits.shape
    # summed over L <= 113 positions of float32 values: a few float32 ulps of the sum
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-5)
    torch.testing.assert_close(grad.double(), want_grad, rtol=0, atol=GRAD_TOL[dtype])


@pytest.mark.parametrize("layout", ["padded rows", "batch-major transpose"])
def test_non_contiguous_logits(layout, device, monkeypatch):
    # The CUDA inference head returns rows padded to 64 columns (VocabProjection.padded); a caller
    # may also hand in a transpose, whose batch and position dimensions do not merge into a view.
    monkeypatch.setattr(next_token, "_CHUNK_BYTES", 4 * 37 * 4)
    logits, targets, weight = make_inputs((3, 50, 37), torch.bfloat16, seed=1, device=device)
    if layout == "padded rows":
        x = torch.full((3, 50, 64), float("nan"), dtype=torch.bfloat16, device=device)
        x[..., :37] = logits
        x = x[..., :37]
    else:
        x = logits.transpose(0, 1).contiguous().transpose(0, 1)
    assert not x.is_contiguous() and torch.equal(x, logits)
    want, want_grad = reference(logits, targets, weight)
    got, grad = ours(x, targets, weight)
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-5)
    torch.testing.assert_close(grad.double(), want_grad, rtol=0, atol=GRAD_TOL[torch.bfloat16])


def test_float64_logits_give_float64_values_and_pass_gradcheck(monkeypatch):
    monkeypatch.setattr(next_token, "_CHUNK_BYTES", 8 * 7 * 3)  # 4 rows in chunks of 3 and 1
    logits, targets, _ = make_inputs((2, 2, 7), torch.float64, seed=2)
    got = next_token_nll(logits, targets)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference(logits, targets, torch.ones(2))[0], rtol=1e-14, atol=1e-13)
    assert torch.autograd.gradcheck(lambda x: next_token_nll(x, targets), (logits.requires_grad_(),))


def test_ignored_targets_and_non_finite_logits_follow_cross_entropy(small_chunks, device):
    # One chunk per special row (2 rows a chunk at V = 5003): NaN, +inf, a row of -inf only, -inf at
    # the target (+inf, finite gradient), -inf elsewhere (a banned token) and two ignored targets,
    # one of them on a NaN row (0 loss; its gradient row is NaN in F.cross_entropy and here).
    logits, targets, weight = make_inputs((2, 8, 5003), torch.bfloat16, seed=3, device=device)
    inf = float("inf")
    logits[0, 0, 17] = float("nan")
    logits[0, 2, 5] = inf
    logits[0, 4] = -inf
    logits[0, 6, targets[0, 6]] = -inf
    logits[1, 0, (targets[1, 0] + 1) % 5003] = -inf
    targets[1, 2] = -100
    logits[1, 4, 9] = float("nan")
    targets[1, 4] = -100
    # each position as a sequence of one: the loss per position
    per_position = logits.view(16, 1, 5003), targets.view(16, 1), weight.repeat_interleave(8)
    want, want_grad = reference(*per_position)
    got, grad = ours(*per_position)
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(grad.double(), want_grad, rtol=0, atol=GRAD_TOL[torch.bfloat16], equal_nan=True)
    assert got.isnan().nonzero()[:, 0].tolist() == [0, 2, 4]  # NaN, +inf, -inf only
    assert got[6] == float("inf") and torch.isfinite(grad[6]).all()  # -inf at the target
    assert grad[8, 0, (targets[1, 0] + 1) % 5003] == 0 and got[10] == 0 and (grad[10] == 0).all()
    assert got[12] == 0 and grad[12].isnan().all()
    assert next_token_nll(logits, targets).isnan().tolist() == [True, False]


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match=r"logits \[B, L, V\] and targets \[B, L\]"):
        next_token_nll(torch.randn(4, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got \(2, 3, 7\) and \(2, 4\)"):
        next_token_nll(torch.randn(2, 3, 7), torch.zeros(2, 4, dtype=torch.long))


def test_target_out_of_range_raises():
    with pytest.raises((IndexError, RuntimeError)):
        next_token_nll(torch.randn(2, 3, 7), torch.full((2, 3), 7))


class _Allocations(TorchDispatchMode):
    """The bytes and dtype of every tensor an op returns in new memory (not a view of, or written
    into, one of its inputs)."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.made.append((str(func), t.untyped_storage().nbytes(), t.dtype))
        return out


def test_memory_the_graph_keeps_and_the_temporaries(small_chunks, device):
    # What made F.cross_entropy(logits.float()) cost 6x the bfloat16 logits on top of them: a float32
    # copy, a saved float32 log-softmax, float32 gradients. Here the graph keeps the logits (the head's
    # backward does not) and a few numbers per position; the one full-size tensor made is d(logits).
    logits, targets, weight = make_inputs((2, 113, 5003), torch.bfloat16, seed=4, device=device)
    n = targets.numel()
    x = logits.clone().requires_grad_()
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with _Allocations() as forward, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        nll = next_token_nll(x, targets)
    assert sum(saved.values()) <= x.nbytes + n * (4 + 8 + 1)  # lse float32, targets int64, ignored mask
    with _Allocations() as backward:
        (nll * weight).sum().backward()
    chunk = 4 * 5003 * 2
    assert max(nbytes for _, nbytes, _ in forward.made) <= chunk
    big = [(op, nbytes, dtype) for op, nbytes, dtype in backward.made if nbytes > chunk]
    assert [(nbytes, dtype) for _, nbytes, dtype in big] == [(x.nbytes, torch.bfloat16)], big
    assert x.grad.dtype == torch.bfloat16


def _peak_bytes(fn, device):
    """The most bytes that torch's allocator held at once during fn() beyond what it held before."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for e in sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def test_peak_memory_is_the_gradient_and_one_chunk(device, monkeypatch):
    chunk = 4 * 5003 * 8
    monkeypatch.setattr(next_token, "_CHUNK_BYTES", chunk)  # 29 chunks
    logits, targets, weight = make_inputs((2, 113, 5003), torch.bfloat16, seed=6, device=device)
    x = logits.requires_grad_()

    def step():
        (next_token_nll(x, targets) * weight).sum().backward()

    peak = _peak_bytes(step, device)
    # beyond d(logits) and one chunk's temporary: the per-position numbers (and the CUDA allocator's
    # 512-byte blocks), less than a second chunk
    assert x.nbytes < peak <= x.nbytes + chunk + 64 * 1024, peak - x.nbytes


def test_torch_compile_fullgraph_forward_and_backward(device, monkeypatch):
    monkeypatch.setattr(next_token, "_CHUNK_BYTES", 4 * 37 * 8)  # 3 chunks of 8, 8 and 5 rows
    logits, targets, weight = make_inputs((3, 7, 37), torch.bfloat16, seed=5, device=device)

    def total(z):
        return (next_token_nll(z, targets) * weight).sum()

    assert_compiled_loss_matches_eager(total, logits)


def test_a_gradient_penalty_differentiates_through_the_gradient(monkeypatch):
    # create_graph=True: the penalty on d(loss)/d(hidden) depends on the softmax's own derivative,
    # which F.cross_entropy's double backward gives; a gradient computed without a graph would
    # leave that term out silently (no error: the incoming gradient requires none)
    monkeypatch.setattr(next_token, "_CHUNK_BYTES", 8 * 7 * 3)
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    head = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 7, (2, 5), generator=gen)
    targets[0, 1] = -100

    def penalised(loss_fn):
        h, w = hidden.clone().requires_grad_(), head.clone().requires_grad_()
        loss = loss_fn(h @ w.T, targets).sum()
        dh, = torch.autograd.grad(loss, h, create_graph=True)
        (loss + dh.pow(2).sum()).backward()
        return w.grad

    def cross_entropy(logits, t):
        return F.cross_entropy(logits.flatten(0, 1), t.flatten(), reduction="none").view(t.shape).sum(-1)

    torch.testing.assert_close(penalised(next_token_nll), penalised(cross_entropy), rtol=1e-12, atol=1e-12)
    logits = (torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: next_token_nll(x, targets[:, :3]), (logits,))


def test_a_vocabulary_larger_than_one_threads_chunk_budget():
    """On a CPU running one thread a chunk holds 512 KB of float32: a vocabulary above 131072 (Qwen's and
    Dream's 151936 ...) is one row a chunk, not zero rows (range() with step 0)."""
    v = 151936
    g = torch.Generator().manual_seed(9)
    logits = (torch.randn(2, 3, v, generator=g) * 3).requires_grad_()
    targets = torch.randint(0, v, (2, 3), generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = next_token_nll(logits, targets)
        got.sum().backward()
    finally:
        torch.set_num_threads(threads)
    x = logits.detach().double().requires_grad_()
    want = F.cross_entropy(x.flatten(0, 1), targets.flatten(), reduction="none").view(2, 3).sum(-1)
    want.sum().backward()
    torch.testing.assert_close(got.double(), want.detach(), rtol=2e-6, atol=1e-5)
    torch.testing.assert_close(logits.grad.double(), x.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [-1, -2, -99, -101])
def test_a_negative_target_other_than_minus_100_raises(bad):
    """Only -100 is F.cross_entropy's ignore_index; any other negative target is out of range, not
    token 0 (nor an ignored position)."""
    g = torch.Generator().manual_seed(bad + 1000)
    targets = torch.randint(0, 7, (2, 3), generator=g)
    targets[1, 2] = bad
    with pytest.raises((IndexError, RuntimeError)):
        next_token_nll(torch.randn(2, 3, 7, generator=g), targets)
