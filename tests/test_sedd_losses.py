"""score_entropy_loss and masked_diffusion_loss: values and gradients against float64 references."""

import pytest
import torch

import dllm
from compile_check import assert_compiled_loss_matches_eager
from dllm.sedd import reference as ref
from threads import assert_same_under_threads

pytestmark = pytest.mark.usefixtures("poisoned_empty")  # outputs start as NaN, not zeros

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, L, K): awkward lengths, a small odd K, and GPT-2's K = 50258 (absorb) / 50257 (uniform).
SHAPES = [(3, 1, 37), (2, 113, 37), (1, 1023, 37), (2, 3, 50258)]


def make_inputs(shape, graph, dtype, device, seed=0):
    b, l, k = shape
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=gen) * 2).to(dtype)
    v = k - 1 if graph == "absorb" else k
    x0 = torch.randint(0, v, (b, l), generator=gen)
    sigma = torch.rand(b, generator=gen) * 3 + 0.05
    dsigma = torch.rand(b, generator=gen) * 2 + 0.1
    if graph == "absorb":
        x_t = torch.where(torch.rand(b, l, generator=gen) < 0.6, torch.full_like(x0, k - 1), x0)
    else:  # about half the positions moved, some of them back onto x0
        x_t = torch.where(torch.rand(b, l, generator=gen) < 0.5, torch.randint(0, k, (b, l), generator=gen), x0)
    return [t.to(device) for t in (logits, x_t, x0, sigma, dsigma)]


def se_ref(logits, x_t, x0, sigma, dsigma, graph, sbs, dtype=torch.float64):
    return ref.score_entropy_loss(logits.to(dtype), x_t, x0, sigma.to(dtype), dsigma.to(dtype), graph=graph,
                                  scale_by_sigma=sbs)


def bound(ours, exact, torch32):
    """Elementwise: kernel error vs float64 within 2x plain PyTorch's float32 error on the same
    values, plus 1e-6 relative (8 float32 ulps): the kernels' vectorised exp has relative
    error up to 2e-7 (libm's: half an ulp) and is followed by up to three float32 roundings
    (scale, product, offset), and elements where PyTorch happens to round exactly would
    otherwise allow no error at all. Measured worst case over many seeds: 5e-7."""
    err = (ours.double() - exact).abs()
    allowed = 2 * (torch32.double() - exact).abs() + 1e-6 * exact.abs() + 1e-6
    assert (err <= allowed).all(), (err.max().item(), (torch32.double() - exact).abs().max().item())


def incoming_gradient(logits):
    """d(total)/d(loss) of each sequence: random, and negative for every other one (the backward
    kernels take its sign apart from its log)."""
    n = logits.shape[0]
    g = (torch.rand(n, generator=torch.Generator().manual_seed(7)) + 0.5) * (1 - 2 * (torch.arange(n) % 2))
    return g.to(logits.device)


def score_entropy_three_ways(logits, x_t, x0, sigma, dsigma, graph, sbs):
    """(loss, d(loss)/d(logits)) from the op, the float64 reference and plain float32 torch, under
    one random incoming gradient (negative for every other sequence)."""
    g_out = incoming_gradient(logits)
    results = []
    for loss_of, leaf, g in (
        (lambda z: dllm.ops.score_entropy_loss(z, x_t, x0, sigma, dsigma, graph=graph, scale_by_sigma=sbs),
         logits.clone(), g_out),
        (lambda z: se_ref(z, x_t, x0, sigma, dsigma, graph, sbs), logits.double(), g_out.double()),
        (lambda z: se_ref(z, x_t, x0, sigma, dsigma, graph, sbs, torch.float32), logits.clone(), g_out),
    ):
        leaf.requires_grad_()
        loss = loss_of(leaf)
        (grad,) = torch.autograd.grad(loss, leaf, g)
        results.append((loss.detach(), grad))
    return results


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("graph, sbs", [("absorb", True), ("uniform", False), ("uniform", True)])
def test_score_entropy_values_and_gradients(device, shape, graph, sbs):
    if graph == "uniform" and shape[2] == 50258:
        shape = shape[:2] + (50257,)
    logits, x_t, x0, sigma, dsigma = make_inputs(shape, graph, torch.float32, device)
    (loss, grad), (exact, exact_grad), (f32, f32_grad) = score_entropy_three_ways(logits, x_t, x0, sigma, dsigma,
                                                                                 graph, sbs)
    assert loss.shape == shape[:1] and loss.dtype == torch.float32
    bound(loss, exact, f32)
    bound(grad, exact_grad, f32_grad)
    if graph == "absorb":  # unmasked positions and the mask column get no gradient
        assert (grad[x_t != shape[2] - 1] == 0).all() and (grad[..., -1] == 0).all()


@pytest.mark.parametrize("graph, sbs", [("absorb", True), ("absorb", False), ("uniform", False), ("uniform", True)])
def test_score_entropy_at_huge_sigma(device, graph, sbs):
    # expm1(sigma) overflows float64 from sigma = 709.78, and a float32 sigma reaches 3.4e38 (a
    # geometric schedule with a huge sigma_max): the loss's terms have finite limits there
    # (expm1 / (expm1 + K) -> 1, r = 1 / expm1 -> 0 with r log(r) -> 0), which were NaN.
    logits, x_t, x0, _, dsigma = make_inputs((7, 37, 29), graph, torch.float32, device, seed=11)
    sigma = torch.tensor([0.3, 700.0, 710.0, 1e3, 1e6, 3e38, 2.0], device=device)
    (loss, grad), (exact, exact_grad), (f32, f32_grad) = score_entropy_three_ways(logits, x_t, x0, sigma, dsigma,
                                                                                 graph, sbs)
    assert exact.isfinite().all() and exact_grad.isfinite().all()
    # uniform, scaled, at 3e38: the mean log-score, about -sigma, puts the loss past float32's range
    want = exact.float()
    assert torch.equal(loss.isinf(), want.isinf()) and (loss[want.isinf()] == want[want.isinf()]).all()
    finite = want.isfinite()
    bound(loss[finite], exact[finite], f32[finite])
    assert grad.isfinite().all()
    bound(grad, exact_grad, f32_grad)


def check_masked_diffusion(logits, x_t, x0, weight, mask_id):
    """Loss and gradient against the float64 reference, under the bound plain float32 torch meets;
    returns the gradient."""
    leaf = logits.clone().requires_grad_()
    loss = dllm.ops.masked_diffusion_loss(leaf, x_t, x0, weight, mask_id=mask_id)
    g_out = incoming_gradient(logits)
    (grad,) = torch.autograd.grad(loss, leaf, g_out)
    exact_leaf = logits.double().requires_grad_()
    exact = ref.masked_diffusion_loss(exact_leaf, x_t, x0, weight.double(), mask_id=mask_id)
    (exact_grad,) = torch.autograd.grad(exact, exact_leaf, g_out.double())
    f32_leaf = logits.clone().requires_grad_()
    f32 = ref.masked_diffusion_loss(f32_leaf, x_t, x0, weight, mask_id=mask_id)
    (f32_grad,) = torch.autograd.grad(f32, f32_leaf, g_out)
    bound(loss, exact.detach(), f32.detach())
    bound(grad, exact_grad, f32_grad)
    return grad


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_masked_diffusion_values_and_gradients(device, shape):
    logits, x_t, x0, sigma, dsigma = make_inputs(shape, "absorb", torch.float32, device, seed=1)
    check_masked_diffusion(logits, x_t, x0, dsigma / torch.expm1(sigma), mask_id=shape[2] - 1)


def test_masked_diffusion_mask_anywhere(device):
    # MDLM's mask id need not be the last index: the value and the gradient (whose mask column is
    # 0, and whose last column is not) follow the given id, not K - 1.
    logits, x_t, x0, _, w = make_inputs((2, 50, 29), "uniform", torch.float32, device, seed=2)
    mask_id = 7
    x0 = torch.where(x0 == mask_id, torch.zeros_like(x0), x0)
    x_t = torch.where(torch.rand(x0.shape, generator=torch.Generator().manual_seed(4)).to(device) < 0.5,
                      torch.full_like(x0, mask_id), x0)
    grad = check_masked_diffusion(logits, x_t, x0, w, mask_id)
    masked = x_t == mask_id
    assert (grad[..., mask_id] == 0).all() and (grad[~masked] == 0).all()
    assert (grad[masked][:, -1] != 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss_name", ["score_entropy_absorb", "score_entropy_uniform", "masked_diffusion"])
def test_half_precision_logits(device, dtype, loss_name):
    # The kernels compute in float32 from the half-precision values; the gradient is rounded
    # once to the logits' dtype.
    graph = "uniform" if loss_name.endswith("uniform") else "absorb"
    logits, x_t, x0, sigma, dsigma = make_inputs((2, 67, 1031), graph, dtype, device, seed=3)
    leaf = logits.clone().requires_grad_()
    exact_leaf = logits.double().requires_grad_()
    if loss_name == "masked_diffusion":
        loss = dllm.ops.masked_diffusion_loss(leaf, x_t, x0, dsigma, mask_id=1030)
        exact = ref.masked_diffusion_loss(exact_leaf, x_t, x0, dsigma.double(), mask_id=1030)
    else:
        loss = dllm.ops.score_entropy_loss(leaf, x_t, x0, sigma, dsigma, graph=graph, scale_by_sigma=graph == "absorb")
        exact = se_ref(exact_leaf, x_t, x0, sigma, dsigma, graph, graph == "absorb")
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    (exact_grad,) = torch.autograd.grad(exact.sum(), exact_leaf)
    assert grad.dtype == dtype
    torch.testing.assert_close(loss.double(), exact.detach(), rtol=2e-6, atol=1e-5)
    ulp = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    err = (grad.double() - exact_grad).abs()
    assert (err <= ulp * exact_grad.abs() + 1e-6).all(), err.max()


@pytest.mark.parametrize("loss_name", ["score_entropy_absorb", "score_entropy_uniform", "masked_diffusion"])
def test_loss_and_gradient_do_not_depend_on_threads(loss_name):
    # One thread computes each position's loss and gradient row, and one sums a sequence's
    # positions in double, so a run trains alike on any thread count (a training-reproducibility
    # property; docs/api.md promises thread independence only for the draws). The grain is
    # 65536 / K = 32 rows: 1, 2 and 3 threads split these 602 differently.
    graph = "uniform" if loss_name.endswith("uniform") else "absorb"
    logits, x_t, x0, sigma, dsigma = make_inputs((2, 301, 2003), graph, torch.float32, "cpu", seed=5)

    def loss_and_grad(_):
        leaf = logits.clone().requires_grad_()
        if loss_name == "masked_diffusion":
            loss = dllm.ops.masked_diffusion_loss(leaf, x_t, x0, dsigma, mask_id=2002)
        else:
            loss = dllm.ops.score_entropy_loss(leaf, x_t, x0, sigma, dsigma, graph=graph)
        (grad,) = torch.autograd.grad(loss, leaf, torch.tensor([1.0, -0.3]))
        return loss.detach(), grad

    assert_same_under_threads(loss_and_grad)


def test_loss_of_a_long_sequence_does_not_depend_on_threads():
    """torch's CPU sum splits a row of 32768 or more among threads, and the order of a double sum
    can tip the float32 loss. Positions whose losses are exactly 2^24, 1 and four of 2^-30 (b - a
    where exp(a - b) underflows, times 2^-60): in order, each 2^-30 is below half an ulp of 2^24 + 1
    and the float32 tie rounds to 2^24; summed apart first they add 2^-28 and it rounds up."""
    length = 40000
    logits = torch.zeros(1, length, 3)
    x0 = torch.zeros(1, length, dtype=torch.int64)
    x_t = x0.clone()
    for pos, gap in [(0, 2.0**84), (1, 2.0**60)] + [(length - 1 - i, 2.0**30) for i in range(4)]:
        logits[0, pos, 1] = gap
        x_t[0, pos] = 2
    weight = torch.tensor([2.0**-60])
    assert_same_under_threads(lambda _: dllm.ops.masked_diffusion_loss(logits, x_t, x0, weight, mask_id=2))


def test_non_finite_logits_propagate(device):
    logits, x_t, x0, sigma, dsigma = make_inputs((2, 5, 11), "absorb", torch.float32, device)
    x_t[0, 2] = 10
    logits[0, 2, 3] = float("nan")
    loss = dllm.ops.score_entropy_loss(logits, x_t, x0, sigma, dsigma, graph="absorb")
    assert loss[0].isnan() and loss[1].isfinite()


SKIPPED_COLUMN_CASES = ["masked_diffusion", "absorb", "uniform_moved", "uniform_kept"]


def skipped_column_inputs(case, value, device):
    """Inputs with `value` in the column each position's loss leaves out: the mask (MDLM's loss,
    and absorb at masked positions) or x_t (uniform; where x_t == x0 that is x0's column too)."""
    graph = "uniform" if case.startswith("uniform") else "absorb"
    logits, x_t, x0, sigma, dsigma = make_inputs((2, 9, 13), graph, torch.float32, device, seed=3)
    if case == "uniform_kept":
        x_t = x0.clone()
    elif case == "uniform_moved":
        x_t = (x0 + 1 + torch.arange(9, device=device) % 12) % 13
    skip = x_t if graph == "uniform" else torch.full_like(x_t, 12)
    return logits.scatter(-1, skip[..., None], value), x_t, x0, sigma, dsigma


def skipped_column_loss(case, logits, x_t, x0, sigma, dsigma, reference=False):
    graph = "uniform" if case.startswith("uniform") else "absorb"
    if case == "masked_diffusion":
        op = ref.masked_diffusion_loss if reference else dllm.ops.masked_diffusion_loss
        return op(logits, x_t, x0, dsigma.to(logits.dtype), mask_id=12)
    if reference:
        return se_ref(logits, x_t, x0, sigma, dsigma, graph, True)
    return dllm.ops.score_entropy_loss(logits, x_t, x0, sigma, dsigma, graph=graph)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("case", SKIPPED_COLUMN_CASES)
def test_the_column_a_loss_leaves_out_may_hold_anything(device, case, value):
    # A model that bans tokens with -inf (or a NaN in the mask column it never trains) must not
    # turn a loss that never reads that logit into NaN, on either device.
    logits, x_t, x0, sigma, dsigma = skipped_column_inputs(case, value, device)
    leaf = logits.clone().requires_grad_()
    loss = skipped_column_loss(case, leaf, x_t, x0, sigma, dsigma)
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    exact_leaf = logits.double().requires_grad_()
    exact = skipped_column_loss(case, exact_leaf, x_t, x0, sigma, dsigma, reference=True)
    (exact_grad,) = torch.autograd.grad(exact.sum(), exact_leaf)
    assert exact.isfinite().all() and loss.isfinite().all() and grad.isfinite().all(), (loss, exact)
    torch.testing.assert_close(loss.double(), exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), exact_grad, rtol=1e-5, atol=1e-6)


# d(loss)/d(l_y) = ga * exp(l_y - shift), with ga = dsigma / K = 1.7e-4 here:
# - near exp's edge: exp is finite in float32 up to 88.72, but the CPU's vectorised exp built 2^n
#   and overflowed from 127.5 ln 2 = 88.38 on, so logits in between got an inf gradient of a finite
#   loss;
# - past it: exp(95) = 1.8e41 is past float32's range but the product, 3e37, is finite; taken
#   apart, exp overflowed to inf first (a fuzzed K = 3001 row found it on the edge, at 88.72).
@pytest.mark.parametrize("row,x_t", [([88.0, 88.4, 88.5, 88.7, 0.0, 1.0], 4), ([95.0, 90.0, 88.5, 0.0, 1.0, 2.0], 3)],
                         ids=["near-exp-overflow", "past-exp-range"])
def test_gradient_at_float32_exp_range_is_finite_where_the_product_is(device, row, x_t):
    logits = torch.tensor([[row]], device=device, requires_grad=True)
    x_t, x0 = torch.tensor([[x_t]], device=device), torch.tensor([[5]], device=device)
    sigma, dsigma = torch.ones(1, device=device), torch.full((1,), 1e-3, device=device)
    loss = dllm.ops.score_entropy_loss(logits, x_t, x0, sigma, dsigma, graph="uniform", scale_by_sigma=False)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    exact_logits = logits.detach().double().requires_grad_()
    (exact,) = torch.autograd.grad(se_ref(exact_logits, x_t, x0, sigma, dsigma, "uniform", False).sum(), exact_logits)
    assert loss.isfinite().all() and grad.isfinite().all() and exact.abs().max() < 3.4e38, (grad, exact)
    # exp_poly rounds x log2(e) to float first: ~3e-6 relative at |x| = 88 (2e-7 holds near 0)
    torch.testing.assert_close(grad.double(), exact, rtol=1e-5, atol=1e-6)


def test_minus_inf_logits_get_exactly_zero_gradient(device):
    # A banned token (logit -inf) has probability 0, so its gradient is 0, not exp's smallest normal.
    logits, x_t, x0, sigma, dsigma = make_inputs((2, 5, 11), "absorb", torch.float32, device)
    banned = (torch.arange(11, device=device) % 3 == 1) & (torch.arange(11, device=device) != 10)
    banned = banned & (torch.nn.functional.one_hot(x0, 11) == 0)
    logits = logits.masked_fill(banned, float("-inf")).requires_grad_()
    losses = (dllm.ops.score_entropy_loss(logits, x_t, x0, sigma, dsigma, graph="absorb"),
              dllm.ops.masked_diffusion_loss(logits, x_t, x0, dsigma, mask_id=10))
    for loss in losses:
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        assert loss.isfinite().all() and grad[~banned].abs().sum() > 0
        assert (grad[banned] == 0).all()


@pytest.mark.parametrize(
    "op, change, match",
    [
        ("se", dict(x0=lambda t: t.index_fill(1, torch.tensor([1], device=t.device), 10)), r"x_t or x0 at position \[0, 1\] is outside"),
        ("se", dict(x_t=lambda t: t.index_fill(1, torch.tensor([2], device=t.device), 11)), r"x_t or x0 at position \[0, 2\]"),
        ("se", dict(sigma=lambda t: t.index_fill(0, torch.tensor([1], device=t.device), -1.0)), r"sigma\[1\] must be finite and > 0"),
        ("md", dict(x0=lambda t: t.index_fill(1, torch.tensor([3], device=t.device), 10)), r"x0\[0, 3\] is the mask id"),
        ("md", dict(x_t=lambda t: t.index_fill(1, torch.tensor([0], device=t.device), -2)), r"x_t or x0 at position \[0, 0\]"),
    ],
)
def test_bad_values_raise_clear_errors(device, op, change, match):
    logits, x_t, x0, sigma, dsigma = make_inputs((2, 5, 11), "absorb", torch.float32, device)
    x_t[:] = 10  # every position masked
    args = dict(logits=logits, x_t=x_t, x0=x0, sigma=sigma, dsigma=dsigma)
    for key, f in change.items():
        args[key] = f(args[key])
    with pytest.raises(ValueError, match=match):
        if op == "se":
            dllm.ops.score_entropy_loss(**args, graph="absorb")
        else:
            dllm.ops.masked_diffusion_loss(args["logits"], args["x_t"], args["x0"], args["dsigma"], mask_id=10)
        dllm.ops.raise_pending_errors()  # CUDA raises the kernel's finds at a later call, or here


def backward_calls(device, graph, dtype=torch.float32, ops=torch.ops.dllm):
    """The two loss backward ops (public schemas; `ops`: dllm's or the CUDA emulator's) on
    half-masked inputs, as functions of (x_t, x0)."""
    logits, x_t, x0, sigma, dsigma = make_inputs((2, 5, 11), graph, dtype, device)
    x_t[:, ::2] = 10
    x0[x0 == 10] = 9  # the MDLM loss refuses the mask as clean data
    g = torch.ones(2, device=device)
    lse = torch.ops.dllm.masked_diffusion_loss(logits, x_t, x0, dsigma, mask_id=10)[1]
    calls = [
        lambda a, b: ops.score_entropy_loss_backward(g, logits, a, b, sigma, dsigma, graph=graph, scale_by_sigma=True),
        lambda a, b: ops.masked_diffusion_loss_backward(g, logits, lse, a, b, dsigma, mask_id=10),
    ]
    return x_t, x0, calls


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
@pytest.mark.parametrize("bad_token", [-3, 11, 10**9])
@pytest.mark.parametrize("which", ["x_t", "x0"])
def test_backward_ops_never_index_with_tokens_out_of_range(device, graph, bad_token, which):
    """Called directly, on tokens no forward checked: the CPU raises the forward's error; CUDA,
    which does not sync in the backward, fills the row with NaN. Neither writes at the token."""
    x_t, x0, calls = backward_calls(device, graph)
    for row in (0, 1):  # masked and unmasked
        tokens = {"x_t": x_t.clone(), "x0": x0.clone()}
        tokens[which][0, row] = bad_token  # sequence 0 only: sequence 1 stays the valid call's
        for call in calls:
            if device == "cpu":
                with pytest.raises(ValueError, match=rf"x_t or x0 at position \[0, {row}\] is outside the token range"):
                    call(tokens["x_t"], tokens["x0"])
                continue
            want, got = call(x_t, x0), call(tokens["x_t"], tokens["x0"])
            assert got[0, row].isnan().all()
            got[0, row] = want[0, row]
            assert torch.equal(got, want)


def test_bad_shapes_raise_clear_errors(device):
    logits, x_t, x0, sigma, dsigma = make_inputs((2, 5, 11), "absorb", torch.float32, device)
    with pytest.raises(RuntimeError, match=r"x0 must have shape \[B, L\]"):
        dllm.ops.score_entropy_loss(logits, x_t, x0[:, :4], sigma, dsigma, graph="absorb")
    with pytest.raises(RuntimeError, match=r"dsigma must have shape \[B\]"):
        dllm.ops.score_entropy_loss(logits, x_t, x0, sigma, dsigma[:1], graph="absorb")
    with pytest.raises(ValueError, match="mask_id must be in"):
        dllm.ops.masked_diffusion_loss(logits, x_t, x0, dsigma, mask_id=11)
    with pytest.raises(ValueError, match="graph must be"):
        dllm.ops.score_entropy_loss(logits, x_t, x0, sigma, dsigma, graph="absorbing")


def test_opcheck(device):
    logits, x_t, x0, sigma, dsigma = make_inputs((2, 7, 53), "absorb", torch.float32, device)
    logits.requires_grad_()
    torch.library.opcheck(torch.ops.dllm.score_entropy_loss.default, (logits, x_t, x0, sigma, dsigma),
                          dict(graph="absorb", scale_by_sigma=True))
    torch.library.opcheck(torch.ops.dllm.score_entropy_loss.default, (logits, x_t, x0, sigma, dsigma),
                          dict(graph="uniform", scale_by_sigma=False))
    torch.library.opcheck(torch.ops.dllm.masked_diffusion_loss.default, (logits, x_t, x0, dsigma), dict(mask_id=52))
    g = torch.ones(2, device=device)
    torch.library.opcheck(torch.ops.dllm.score_entropy_loss_backward.default,
                          (g, logits.detach(), x_t, x0, sigma, dsigma), dict(graph="absorb", scale_by_sigma=True))
    lse = torch.ops.dllm.masked_diffusion_loss(logits.detach(), x_t, x0, dsigma, mask_id=52)[1]
    torch.library.opcheck(torch.ops.dllm.masked_diffusion_loss_backward.default,
                          (g, logits.detach(), lse, x_t, x0, dsigma), dict(mask_id=52))


def test_torch_compile_fullgraph_forward_and_backward(device):
    logits, x_t, x0, sigma, dsigma = make_inputs((2, 9, 61), "absorb", torch.float32, device)

    def total(z):
        se = dllm.ops.score_entropy_loss(z * 0.5, x_t, x0, sigma, dsigma, graph="absorb")
        md = dllm.ops.masked_diffusion_loss(z, x_t, x0, dsigma, mask_id=60)
        return (se + md).sum()

    assert_compiled_loss_matches_eager(total, logits)


def test_schedules_weight_the_loss_like_sedd(device):
    # LogLinear: P(masked) = (1 - eps) t, and MDLM's weight dsigma / expm1(sigma) equals 1 / t.
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    sigma, dsigma = dllm.sedd.LogLinear()(t)
    torch.testing.assert_close(-torch.expm1(-sigma), (1 - 1e-3) * t)
    torch.testing.assert_close(dsigma / torch.expm1(sigma), 1 / t)
    sigma, dsigma = dllm.sedd.Geometric(1e-4, 20.0)(t)
    h = 1e-6
    up, _ = dllm.sedd.Geometric(1e-4, 20.0)(t + h)
    torch.testing.assert_close(dsigma, (up - sigma) / h, rtol=1e-4, atol=0)
    graph = dllm.sedd.Absorbing(36)
    logits, x_t, x0, s, d = make_inputs((2, 5, 37), "absorb", torch.float32, device)
    torch.testing.assert_close(graph.loss(logits, x_t, x0, s, d),
                               dllm.ops.score_entropy_loss(logits, x_t, x0, s, d, graph="absorb"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_extra_memory_is_o_of_b_l():
    # Forward + backward allocate the gradient and O(B * L) more, never a second [B, L, K].
    logits, x_t, x0, sigma, dsigma = make_inputs((4, 256, 50258), "absorb", torch.bfloat16, "cuda")
    leaf = logits.requires_grad_()
    grad_bytes = leaf.numel() * leaf.element_size()
    for fn in (lambda z: dllm.ops.score_entropy_loss(z, x_t, x0, sigma, dsigma, graph="absorb"),
               lambda z: dllm.ops.masked_diffusion_loss(z, x_t, x0, dsigma, mask_id=50257)):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        (g,) = torch.autograd.grad(fn(leaf).sum(), leaf)
        torch.cuda.synchronize()
        assert torch.cuda.max_memory_allocated() - base <= grad_bytes + (1 << 20)
        del g


def _largest_allocation(fn) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max([e.self_cpu_memory_usage for e in prof.events()] + [0])


def test_cpu_ops_allocate_no_b_l_k_temporary():
    # Every [B, L, K] tensor of at least one byte an element would show up as an allocation of
    # >= B * L * K bytes; only the backward's gradient may be that large.
    b, l, k = 2, 64, 5003
    logits, x_t, x0, sigma, dsigma = make_inputs((b, l, k), "absorb", torch.float32, "cpu")
    mask = torch.full_like(x_t, k - 1)
    forward = [
        lambda: dllm.ops.sedd_step(logits, mask, sigma, dsigma, graph="absorb", method="analytic"),
        lambda: dllm.ops.sedd_step(logits, x0, sigma, dsigma, graph="uniform", method="analytic"),
        lambda: dllm.ops.score_entropy_loss(logits, x_t, x0, sigma, dsigma, graph="absorb"),
        lambda: dllm.ops.masked_diffusion_loss(logits, x_t, x0, dsigma, mask_id=k - 1),
        lambda: dllm.ops.sample_transition(x0, sigma, graph="uniform", num_classes=k),
    ]
    for fn in forward:
        assert _largest_allocation(fn) < b * l * k
    g = torch.ones(b)
    lse = torch.ops.dllm.masked_diffusion_loss(logits, x_t, x0, dsigma, mask_id=k - 1)[1]
    backward = [
        lambda: torch.ops.dllm.score_entropy_loss_backward(g, logits, x_t, x0, sigma, dsigma, graph="absorb",
                                                           scale_by_sigma=True),
        lambda: torch.ops.dllm.masked_diffusion_loss_backward(g, logits, lse, x_t, x0, dsigma, mask_id=k - 1),
    ]
    for fn in backward:
        assert _largest_allocation(fn) == logits.numel() * logits.element_size()
    # The check can fail: the eager reference does allocate [B, L, K] temporaries.
    assert _largest_allocation(lambda: ref.score_entropy_loss(logits, x_t, x0, sigma, dsigma, graph="absorb")) >= b * l * k


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_losses_are_float32_under_opcheck_and_compile(device, dtype):
    # The losses are float32 [B] whatever the logits' dtype: the fake kernels that torch.compile
    # traces with must say so too.
    B, L, K = 2, 7, 53
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(B, L, K, generator=g) * 2).to(dtype).to(device)
    x0 = torch.randint(0, K - 1, (B, L), generator=g).to(device)
    x_t = torch.where(torch.rand(B, L, generator=g).to(device) < 0.6, K - 1, x0)
    sigma, dsigma = (torch.rand(B, generator=g) + 0.1).to(device), (torch.rand(B, generator=g) + 0.1).to(device)
    torch.library.opcheck(torch.ops.dllm.score_entropy_loss.default, (logits, x_t, x0, sigma, dsigma),
                          dict(graph="absorb", scale_by_sigma=True))
    torch.library.opcheck(torch.ops.dllm.masked_diffusion_loss.default, (logits, x_t, x0, dsigma), dict(mask_id=K - 1))
    se = torch.compile(lambda z: dllm.ops.score_entropy_loss(z, x_t, x0, sigma, dsigma, graph="absorb") * 1, fullgraph=True)
    md = torch.compile(lambda z: dllm.ops.masked_diffusion_loss(z, x_t, x0, dsigma, mask_id=K - 1) * 1, fullgraph=True)
    for compiled, eager in ((se, dllm.ops.score_entropy_loss(logits, x_t, x0, sigma, dsigma, graph="absorb")),
                            (md, dllm.ops.masked_diffusion_loss(logits, x_t, x0, dsigma, mask_id=K - 1))):
        got = compiled(logits)
        assert eager.dtype == torch.float32 and got.dtype == torch.float32
        torch.testing.assert_close(got, eager)
