"""dllm.ops.rotary: rotate-half RoPE in one pass, against the float64 rotation."""

import pytest
import torch

import dllm
from dllm.models.layers import Rotary

pytestmark = pytest.mark.usefixtures("poisoned_empty")  # outputs start as NaN, not zeros

ROUNDING = {torch.float32: 2e-6, torch.bfloat16: 2**-8, torch.float16: 2**-11}  # one rounding of the output


def rotated(x, cos, sin, inverse=False):
    """The float64 rotation: pairs (i, i + D/2) by the tables' angle (the opposite one if inverse)."""
    half = x.shape[-1] // 2
    x1, x2 = x.double()[..., :half], x.double()[..., half:]
    c, s = cos.double()[..., None, :], sin.double()[..., None, :]
    s = -s if inverse else s
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def inputs(device, dtype, *, batch=3, seq=37, heads=5, dim=70, per_sequence=False, seed=0):
    """x as the q view of a fused [B, S, 3, H, D] projection (strided), tables of far positions."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, seq, 3, heads, dim, generator=g).to(device=device, dtype=dtype)
    positions = torch.randint(0, 5000, (batch, seq) if per_sequence else (seq,), generator=g).to(device)
    cos, sin = Rotary(dim).to(device).at(positions)
    return qkv[:, :, 1], cos, sin


def check(out, want, dtype):
    assert out.is_contiguous() and out.shape == want.shape
    err = (out.double() - want).abs() / want.abs().clamp(min=1.0)
    assert err.max() <= ROUNDING[dtype] + 1e-6, err.max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [64, 70, 128])  # 70: pairs in no whole 16-byte chunk
@pytest.mark.parametrize("per_sequence", [False, True], ids=["shared", "per-sequence"])
def test_rotary_is_the_float64_rotation_rounded_once(device, dtype, dim, per_sequence):
    x, cos, sin = inputs(device, dtype, dim=dim, per_sequence=per_sequence)
    assert not x.is_contiguous()
    out = dllm.ops.rotary(x, cos, sin)
    assert out.dtype == dtype
    check(out, rotated(x, cos, sin), dtype)
    check(torch.ops.dllm.rotary(x, cos, sin, True), rotated(x, cos, sin, inverse=True), dtype)
    check(dllm.ops.rotary(x.contiguous(), cos, sin), rotated(x, cos, sin), dtype)


def test_rotary_gradient_is_the_inverse_rotation(device):
    x, cos, sin = inputs(device, torch.float32, per_sequence=True, seed=1)
    x = x.detach().requires_grad_()
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(device)
    (grad,) = torch.autograd.grad((dllm.ops.rotary(x, cos, sin) * w).sum(), x)
    x64 = x.detach().double().requires_grad_()
    (want,) = torch.autograd.grad((rotated(x64, cos, sin) * w.double()).sum(), x64)
    torch.testing.assert_close(grad.double(), want, rtol=1e-5, atol=1e-5)
    # angles that want a gradient get an error, not a silent None
    angle = torch.randn(cos.shape, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="differentiable in x only"):
        dllm.ops.rotary(x, angle.cos(), angle.sin()).sum().backward()


def test_empty_and_single_position(device):
    x, cos, sin = inputs(device, torch.bfloat16, batch=2, seq=1, heads=1, dim=2)
    check(dllm.ops.rotary(x, cos, sin), rotated(x, cos, sin), torch.bfloat16)
    x, cos, sin = inputs(device, torch.float32, batch=0, seq=4)
    assert dllm.ops.rotary(x, cos, sin).shape == (0, 4, 5, 70)


def test_bad_inputs_are_named(device):
    x, cos, sin = inputs(device, torch.float32, dim=64)
    with pytest.raises(RuntimeError, match=r"x must be \[B, S, H, D\]"):
        dllm.ops.rotary(x[0], cos, sin)
    with pytest.raises(ValueError, match="head dimension must be even"):
        dllm.ops.rotary(x[..., :63], cos, sin)
    with pytest.raises(RuntimeError, match=r"cos and sin must be \[S, D / 2\]"):
        dllm.ops.rotary(x, cos[:, :16], sin[:, :16])
    with pytest.raises(TypeError, match="cos and sin must be float32"):
        dllm.ops.rotary(x, cos.double(), sin.double())
    with pytest.raises(TypeError, match="x must be float32, bfloat16 or float16"):
        dllm.ops.rotary(x.double(), cos, sin)


def test_opcheck_and_compile(device):
    x, cos, sin = inputs(device, torch.bfloat16, dim=64, per_sequence=True)
    for inverse in (False, True):
        torch.library.opcheck(torch.ops.dllm.rotary.default, (x, cos, sin, inverse))
    compiled = torch.compile(lambda t: dllm.ops.rotary(t, cos, sin) + 0, fullgraph=True)
    assert torch.equal(compiled(x), dllm.ops.rotary(x, cos, sin))


def test_a_learned_sin_alone_raises_instead_of_training_without_gradient():
    # cos fixed, sin learned (or the other way round): either table wanting a gradient must raise,
    # not leave that table's .grad None while x gets its gradient.
    g = torch.Generator().manual_seed(11)
    B, S, H, D = 2, 5, 3, 6
    x = torch.randn(B, S, H, D, generator=g, requires_grad=True)
    angle = torch.randn(S, D // 2, generator=g)
    for learned in ("sin", "cos"):
        a = angle.clone().requires_grad_()
        cos = angle.cos() if learned == "sin" else a.cos()
        sin = a.sin() if learned == "sin" else angle.sin()
        with pytest.raises(RuntimeError, match="differentiable in x only"):
            dllm.ops.rotary(x, cos, sin).sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_x_and_tables_of_any_layout(device, dtype):
    # x whose head dimension is not the innermost one (a transposed view), and cos / sin that are
    # views of wider tables: each is read as the values it holds.
    B, S, H, D = 2, 13, 3, 70
    g = torch.Generator().manual_seed(6)
    x = torch.randn(B, S, D, H, generator=g).to(device=device, dtype=dtype).transpose(2, 3)
    assert x.stride(3) != 1
    cos, sin = Rotary(D).to(device).at(torch.randint(0, 5000, (S,), generator=g).to(device))
    wide_cos, wide_sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
    cos_view, sin_view = wide_cos[:, 1:D // 2 + 1], wide_sin[:, 1:D // 2 + 1]
    assert not cos_view.is_contiguous()
    check(dllm.ops.rotary(x, cos, sin), rotated(x, cos, sin), dtype)
    check(dllm.ops.rotary(x.contiguous(), cos_view, sin_view), rotated(x, cos_view, sin_view), dtype)


@pytest.mark.parametrize("dtype, ulp", [(torch.bfloat16, 2**-7), (torch.float16, 2**-10)])
def test_float32_results_halfway_between_two_outputs_round_to_even(device, dtype, ulp):
    # x1 * cos lands exactly halfway between two representable outputs: rounded to the even one,
    # as torch rounds (x1 = 1, 2, -4: down; x1 = 1 + ulp: up), not always away from zero.
    x1 = torch.tensor([1.0, 2.0, -4.0, 1.0 + ulp, 0.5])
    x = torch.stack([x1, torch.zeros(5)], dim=-1).reshape(1, 5, 1, 2).to(device=device, dtype=dtype)
    cos = torch.full((5, 1), 1.0 + ulp / 2, device=device)
    sin = torch.zeros(5, 1, device=device)
    want = (x.float() * torch.cat([cos, cos], -1)[None, :, None]).to(dtype)  # float32 product, torch's rounding
    out = dllm.ops.rotary(x, cos, sin)
    assert torch.equal(out, want), (out.flatten(), want.flatten())
    assert out[0, 0, 0, 0].item() == 1.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("c", [1.0, 2.0, 2.0 + 3 * 2**-11, 0.75, 1.0 + 2**-12])
def test_every_half_precision_value_rounds_as_torch_rounds(device, dtype, c):
    # All 65536 bit patterns as x1 (x2 = 0), scaled by cos = c: the output's rounding on every path
    # (subnormals, halfway cases, overflow to inf past 65504 at c >= 2, inf and NaN) against torch's
    # conversion of the same float32 products. NaN is compared as NaN: its payload is not kept.
    x1 = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(dtype).float()
    x = torch.stack([x1, torch.zeros_like(x1)], -1).reshape(1, -1, 1, 2).to(device=device, dtype=dtype)
    cos = torch.full((x1.numel(), 1), c, device=device)
    sin = torch.zeros_like(cos)
    xf = x.float()
    want = torch.cat([xf[..., :1] * c - xf[..., 1:] * 0.0, xf[..., 1:] * c + xf[..., :1] * 0.0], -1).to(dtype)
    out = dllm.ops.rotary(x, cos, sin)
    nan = want.isnan()
    assert torch.equal(out.isnan(), nan)
    assert torch.equal(out[~nan].view(torch.int16), want[~nan].view(torch.int16))


def test_the_inverse_rotations_gradient_is_the_forward_rotation():
    # the op's inverse=True (the backward's rotation by the opposite angle) is itself differentiable:
    # its gradient rotates back by the original angle, checked against float64 autograd
    g = torch.Generator().manual_seed(8)
    B, S, H, D = 2, 5, 3, 10
    x = torch.randn(B, S, H, D, generator=g, dtype=torch.float64)
    angle = torch.randn(S, D // 2, generator=g, dtype=torch.float64) * 3
    cos, sin = angle.cos().float(), angle.sin().float()
    grad = torch.randn(B, S, H, D, generator=g)

    def rotate_back(t):  # float64 rotation by -angle, rotate-half layout
        c, s = angle.cos()[:, None], angle.sin()[:, None]
        lo, hi = t[..., : D // 2], t[..., D // 2:]
        return torch.cat([lo * c + hi * s, hi * c - lo * s], -1)

    xf = x.float().requires_grad_()
    out = torch.ops.dllm.rotary(xf, cos, sin, True)
    torch.testing.assert_close(out.double(), rotate_back(x), atol=1e-5, rtol=1e-5)
    got, = torch.autograd.grad(out, xf, grad)
    xd = x.clone().requires_grad_()
    want, = torch.autograd.grad(rotate_back(xd), xd, grad.double())
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_second_derivatives_through_rotary_are_those_of_the_rotation():
    # the backward runs the op with inverse=True, under create_graph differentiably: a
    # Hessian-vector product of |rotary(x)|^2 (a rotation keeps norms) is 2u
    g = torch.Generator().manual_seed(12)
    B, S, H, D = 2, 6, 2, 12
    angle = torch.randn(B, S, D // 2, generator=g, dtype=torch.float64) * 3
    cos, sin = angle.cos().float(), angle.sin().float()
    x = torch.randn(B, S, H, D, generator=g).requires_grad_()
    u = torch.randn(B, S, H, D, generator=g)
    grad, = torch.autograd.grad(dllm.ops.rotary(x, cos, sin).square().sum(), x, create_graph=True)
    torch.testing.assert_close(grad, 2 * x.detach(), atol=1e-5, rtol=1e-5)
    hvp, = torch.autograd.grad((grad * u).sum(), x)
    torch.testing.assert_close(hvp, 2 * u, atol=1e-5, rtol=1e-5)
