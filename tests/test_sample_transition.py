"""dllm.ops.sample_transition: the forward noising of SEDD's graphs, tested statistically."""

import math

import numpy as np
import pytest
import torch

import dllm
from dllm.sedd import reference as ref
from stats import chi_square_pvalue, poisson_z
from threads import assert_same_under_threads

pytestmark = pytest.mark.usefixtures("poisoned_empty")  # outputs start as NaN, not zeros

P_MIN = 1e-4


def test_absorb_masks_at_rate_one_minus_exp_minus_sigma(device):
    k, n = 50258, 1 << 16
    torch.manual_seed(0)
    x0 = torch.randint(0, k - 1, (4, n), device=device)
    sigma = torch.tensor([1e-3, 0.2, 1.0, 4.0], device=device)
    x_t = dllm.ops.sample_transition(x0, sigma, graph="absorb", num_classes=k)
    moved = x_t != x0
    assert (x_t[moved] == k - 1).all()
    for b in range(4):
        p = -math.expm1(-sigma[b].item())
        count = moved[b].sum().item()
        assert abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)), (b, count, n * p)


def test_uniform_moves_to_uniform_tokens(device):
    k, n = 37, 1 << 20
    torch.manual_seed(1)
    x0 = torch.full((1, n), 5, device=device)
    sigma = 0.7
    x_t = dllm.ops.sample_transition(x0, sigma, graph="uniform", num_classes=k)
    p_move = -math.expm1(-sigma)
    probs = np.full(k, p_move / k)
    probs[5] += 1 - p_move
    assert chi_square_pvalue(x_t, probs) > P_MIN


def test_uniform_large_vocab_stays_in_range(device):
    k = 50257
    torch.manual_seed(2)
    x0 = torch.randint(0, k, (2, 1 << 16), device=device)
    x_t = dllm.ops.sample_transition(x0, torch.tensor([5.0, 5.0], device=device), graph="uniform", num_classes=k)
    assert x_t.min() >= 0 and x_t.max() < k
    # Nearly every token moved; destinations fall evenly into 16 bins of the vocabulary (x0 is
    # uniform too, so the stayers do not bias the bins).
    bins = (x_t * 16 // k).flatten()
    p_move = -math.expm1(-5.0)
    stay = (x_t == x0).sum().item()
    n = x0.numel()
    assert abs(poisson_z(stay, n * (1 - p_move + p_move / k))) < 5
    assert chi_square_pvalue(bins, np.full(16, 1 / 16)) > P_MIN


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_huge_sigma_moves_every_token(device, graph):
    # The move probability 1 - exp(-sigma) is 1 in float64 from sigma = 37 on, and stays 1 past
    # 709.78, where expm1(sigma) overflows, up to float32's largest sigmas.
    k, n = 29, 1 << 14
    torch.manual_seed(4)  # the chi-square's draws do not depend on the tests run before
    x0 = torch.full((5, n), 3, device=device)
    sigma = torch.tensor([700.0, 710.0, 1e3, 1e6, 3e38], device=device)
    x_t = dllm.ops.sample_transition(x0, sigma, graph=graph, num_classes=k)
    if graph == "absorb":
        assert (x_t == k - 1).all()
    else:  # uniform destinations, x0 among them
        assert chi_square_pvalue(x_t, np.full(k, 1 / k)) > P_MIN


def test_seeded_and_zero_sigma(device):
    x0 = torch.randint(0, 100, (3, 1000), device=device)
    torch.manual_seed(3)
    a = dllm.ops.sample_transition(x0, 0.5, graph="uniform", num_classes=101)
    b = dllm.ops.sample_transition(x0, 0.5, graph="uniform", num_classes=101)
    torch.manual_seed(3)
    assert torch.equal(a, dllm.ops.sample_transition(x0, 0.5, graph="uniform", num_classes=101))
    assert not torch.equal(a, b)
    assert torch.equal(dllm.ops.sample_transition(x0, 0.0, graph="absorb", num_classes=101), x0)


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_draws_do_not_depend_on_threads(graph):
    # The grain is 65536 / 64 = 1024 positions: 1, 2 and 3 threads split these 3003 differently.
    x0 = torch.randint(0, 5002, (3, 1001), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 1.0, 2.5])
    assert_same_under_threads(
        lambda g: dllm.ops.sample_transition(x0, sigma, graph=graph, num_classes=5003, generator=g))


def test_graph_object_and_errors(device):
    graph = dllm.sedd.Absorbing(100)
    x0 = torch.randint(0, 100, (2, 50), device=device)
    assert ((graph.sample_transition(x0, 50.0) == 100)).all()
    with pytest.raises(ValueError, match=r"x0 at position \[1, 3\]"):
        bad = x0.clone()
        bad[1, 3] = 101
        dllm.ops.sample_transition(bad, 0.5, graph="absorb", num_classes=101)
        dllm.ops.raise_pending_errors()  # CUDA raises the kernel's finds at a later call, or here
    with pytest.raises(ValueError, match=r"sigma\[0\] must be finite and >= 0"):
        dllm.ops.sample_transition(x0, torch.tensor([-1.0, 1.0], device=device), graph="absorb", num_classes=101)
        dllm.ops.raise_pending_errors()
    with pytest.raises(RuntimeError, match="num_classes must be"):
        dllm.ops.sample_transition(x0, 0.5, graph="uniform", num_classes=1)


def test_opcheck_and_compile(device):
    x0 = torch.randint(0, 30, (2, 40), device=device)
    sigma = torch.full((2,), 0.5, device=device)
    torch.library.opcheck(torch.ops.dllm.sample_transition.default, (x0, sigma), dict(graph="absorb", num_classes=31),
                          test_utils=("test_schema", "test_faketensor"))
    compiled = torch.compile(lambda x: dllm.ops.sample_transition(x, sigma, graph="uniform", num_classes=30) + 0,
                             fullgraph=True)
    torch.manual_seed(0)
    got = compiled(x0)
    torch.manual_seed(0)
    assert torch.equal(got, dllm.ops.sample_transition(x0, sigma, graph="uniform", num_classes=30))


@pytest.mark.parametrize("graph", [dllm.sedd.Absorbing(40), dllm.sedd.Uniform(41)], ids=["absorb", "uniform"])
def test_graph_objects_draw_from_the_generator_they_are_given(graph):
    x0 = torch.randint(0, 40, (3, 517), generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.2, 1.0, 3.0])
    want = dllm.ops.sample_transition(x0, sigma, graph=graph.name, num_classes=graph.num_classes,
                                      generator=torch.Generator().manual_seed(7))
    for seed in (0, 1):  # the default stream is not the one drawn from
        torch.manual_seed(seed)
        assert torch.equal(graph.sample_transition(x0, sigma, generator=torch.Generator().manual_seed(7)), want)
    assert (want != x0).any()


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_reference_forward_process_moves_at_rate_one_minus_exp_minus_sigma(graph):
    # dllm.sedd.reference.sample_transition (ALGORITHMS.md: with probability 1 - e^-sigma a token
    # moves, to the mask or to a uniform token, itself included) was tested nowhere: draws of one
    # clean token per sigma against the exact law, computed here from the formula.
    k, n = 13, 1 << 16
    sigma = torch.tensor([0.15, 1.3, 4.0], dtype=torch.float64)
    x0 = torch.full((3, n), 5)
    x_t = ref.sample_transition(x0, sigma, graph=graph, num_classes=k, generator=torch.Generator().manual_seed(3))
    assert x_t.dtype == torch.int64 and x_t.shape == x0.shape
    again = ref.sample_transition(x0, sigma, graph=graph, num_classes=k, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, x_t)  # a seeded generator reproduces the draws
    for b in range(3):
        p_move = -math.expm1(-sigma[b].item())
        probs = np.zeros(k)
        if graph == "absorb":
            probs[k - 1] = p_move
        else:
            probs[:] = p_move / k
        probs[5] += 1 - p_move
        assert chi_square_pvalue(x_t[b], probs) > P_MIN, b


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_num_classes_past_int32_is_refused_on_meta_too(device):
    x0 = torch.randint(0, 5, (2, 3)).to(device)
    with pytest.raises(RuntimeError, match=r"num_classes must be in \[2, 2\^31\).*got 2147483648"):
        dllm.ops.sample_transition(x0, 0.5, graph="uniform", num_classes=2**31)
    out = dllm.ops.sample_transition(x0, 0.5, graph="uniform", num_classes=2**31 - 1)
    assert out.shape == (2, 3) and out.dtype == torch.int64
