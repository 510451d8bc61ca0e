"""dllm.ops.adaln and adaln_residual: the DiT's modulated LayerNorm (and the gated residual before
it) in one pass, against the float64 math."""

import pytest
import torch

import dllm

pytestmark = pytest.mark.usefixtures("poisoned_empty")  # outputs start as NaN, not zeros

ROUNDING = {torch.float32: 2**-24, torch.bfloat16: 2**-8, torch.float16: 2**-11}  # one rounding, relative
# plus the float32 arithmetic's own error (measured: up to 2.1e-6 relative on the CPU's rows of 1096,
# 1.2e-6 in the emulated CUDA kernels)
ARITHMETIC = 5e-6


def adaln_reference(x, weight, shift, scale, eps):
    x, weight, shift, scale = (t.double() for t in (x, weight, shift, scale))
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight * (1 + scale[:, None]) + shift[:, None]


def inputs(device, dtype, *, batch=3, seq=37, dim=64, seed=0):
    """An off-centre stream (the mean matters), the norm's weight, per-sequence shift / scale /
    gate in bf16 as a bf16 adaLN projection gives them, and an update."""
    g = torch.Generator().manual_seed(seed)
    x = (3 + 2 * torch.randn(batch, seq, dim, generator=g)).to(device=device, dtype=dtype)
    update = torch.randn(batch, seq, dim, generator=g).to(device=device, dtype=dtype)
    weight = (1 + 0.5 * torch.randn(dim, generator=g)).to(device)
    shift, scale, gate = (torch.randn(batch, dim, generator=g).bfloat16().to(device) for _ in range(3))
    return x, update, gate, weight, shift, scale


def check(got, want, dtype):
    assert got.is_contiguous() and got.dtype == dtype and got.shape == want.shape
    err = (got.double() - want).abs() / want.abs().clamp(min=1.0)
    assert err.max() <= ROUNDING[dtype] + ARITHMETIC, err.max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
# 70, 37: rows in no whole 16-byte chunks; 130 and 1096: longer rows than CUDA holds in registers
@pytest.mark.parametrize("dim", [64, 70, 37, 130, 1096])
def test_adaln_is_the_float64_norm_rounded_once(device, dtype, dim):
    x, _, _, weight, shift, scale = inputs(device, dtype, dim=dim)
    check(dllm.ops.adaln(x, weight, shift, scale, eps=1e-5), adaln_reference(x, weight, shift, scale, 1e-5), dtype)
    # the factors in any floating dtype
    check(dllm.ops.adaln(x, weight.double(), shift.double(), scale.double()), adaln_reference(x, weight, shift, scale, 1e-5),
          dtype)
    strided = torch.cat([x, x], dim=-1)[..., :dim]  # a row stride of 2 dim is copied first
    check(dllm.ops.adaln(strided, weight, shift, scale, eps=0.5), adaln_reference(x, weight, shift, scale, 0.5), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [64, 70, 130, 1096])
def test_adaln_residual_normalises_the_stream_as_stored(device, dtype, dim):
    x, update, gate, weight, shift, scale = inputs(device, dtype, dim=dim, seed=1)
    x_next, out = dllm.ops.adaln_residual(x, update, gate, weight, shift, scale)
    check(x_next, x.double() + gate.double()[:, None] * update.double(), dtype)
    # the norm of x_next as rounded: what the next residual adds to
    check(out, adaln_reference(x_next, weight, shift, scale, 1e-5), dtype)
    # an eps large beside the variance, where a kernel or wrapper that dropped it shows
    _, out = dllm.ops.adaln_residual(x, update, gate, weight, shift, scale, eps=0.5)
    check(out, adaln_reference(x_next, weight, shift, scale, 0.5), dtype)


def test_rows_and_sequences_of_one(device):
    x, update, gate, weight, shift, scale = inputs(device, torch.bfloat16, batch=2, seq=1, dim=1)
    # a row of one: the variance is 0 and the output is the shift
    check(dllm.ops.adaln(x, weight, shift, scale), shift.double()[:, None].expand(2, 1, 1), torch.bfloat16)
    x, update, gate, weight, shift, scale = inputs(device, torch.float32, batch=0, seq=5)
    assert dllm.ops.adaln_residual(x, update, gate, weight, shift, scale)[1].shape == (0, 5, 64)


def test_bad_inputs_are_named(device):
    x, update, gate, weight, shift, scale = inputs(device, torch.float32)
    with pytest.raises(RuntimeError, match=r"x must be \[B, S, dim\]"):
        dllm.ops.adaln(x[0], weight, shift, scale)
    with pytest.raises(RuntimeError, match=r"weight must be \[dim\]"):
        dllm.ops.adaln(x, weight[:5], shift, scale)
    with pytest.raises(RuntimeError, match=r"scale must be \[B, dim\]"):
        dllm.ops.adaln(x, weight, shift, scale[:1])
    with pytest.raises(ValueError, match="eps must be positive"):
        dllm.ops.adaln(x, weight, shift, scale, eps=0.0)
    with pytest.raises(TypeError, match="adaln_residual: eps must be a positive float, got str"):  # float() parses it
        dllm.ops.adaln_residual(x, update, gate, weight, shift, scale, eps="1e-5")
    with pytest.raises(TypeError, match="update must have x's dtype"):
        dllm.ops.adaln_residual(x, update.bfloat16(), gate, weight, shift, scale)
    with pytest.raises(RuntimeError, match=r"gate must be \[B, dim\]"):
        dllm.ops.adaln_residual(x, update, gate[:, :3], weight, shift, scale)
    with pytest.raises(TypeError, match="x must be float32, bfloat16 or float16"):
        dllm.ops.adaln(x.double(), weight, shift, scale)
    with pytest.raises(RuntimeError, match="not differentiable"):
        dllm.ops.adaln(x.requires_grad_(), weight, shift, scale).sum().backward()


def test_opcheck_and_compile(device):
    x, update, gate, weight, shift, scale = inputs(device, torch.bfloat16, dim=70)
    torch.library.opcheck(torch.ops.dllm.adaln.default, (x, weight, shift, scale, 1e-5))
    torch.library.opcheck(torch.ops.dllm.adaln_residual.default, (x, update, gate, weight, shift, scale, 1e-5))
    compiled = torch.compile(lambda t: dllm.ops.adaln_residual(t, update, gate, weight, shift, scale)[1] + 0,
                             fullgraph=True)
    assert torch.equal(compiled(x), dllm.ops.adaln_residual(x, update, gate, weight, shift, scale)[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float32_chunks_of_one_modulation_and_a_strided_update(device, dtype):
    # The DiT's adaLN projection in float32, chunked into shift, scale, gate (views with a row
    # stride of 3 dim), and an update that is a view too: each is read as the values it holds.
    batch, seq, dim = 3, 29, 70
    g = torch.Generator().manual_seed(4)
    x = (3 + 2 * torch.randn(batch, seq, dim, generator=g)).to(device=device, dtype=dtype)
    update = torch.randn(batch, dim, seq, generator=g).to(device=device, dtype=dtype).transpose(1, 2)
    weight = (1 + 0.5 * torch.randn(dim, generator=g)).to(device)
    shift, scale, gate = torch.randn(batch, 3 * dim, generator=g).to(device).chunk(3, dim=-1)
    assert not (shift.is_contiguous() or gate.is_contiguous() or update.is_contiguous())
    check(dllm.ops.adaln(x, weight, shift, scale, eps=1e-5), adaln_reference(x, weight, shift, scale, 1e-5), dtype)
    x_next, out = dllm.ops.adaln_residual(x, update, gate, weight, shift, scale)
    check(x_next, x.double() + gate.double()[:, None] * update.double(), dtype)
    check(out, adaln_reference(x_next, weight, shift, scale, 1e-5), dtype)
