"""The models' layers (the DiT's adaLN and its gated residuals, in torch and through dllm's ops; LLaDA's RMSNorm)
against their math in float64."""

import pytest
import torch
import torch.nn.functional as F

from dllm.models import build_model, model_config
from dllm.models.layers import ModulatedLayerNorm, RMSNorm
from test_adaln import ARITHMETIC, ROUNDING, adaln_reference
from test_rotary import rotated

# bfloat16 keeps 8 significant bits: one rounding of the result, plus the inputs' own
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
       torch.float64: dict(rtol=1e-12, atol=1e-12)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_modulated_layer_norm_is_adaln_in_float32_or_better(dtype):
    """Both paths round a float32 (or float64) result once to x's dtype, as test_adaln asks of the op."""
    g = torch.Generator().manual_seed(1)
    B, S, d = 3, 37, 71
    norm = ModulatedLayerNorm(d, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(d, generator=g))
    x = (3 + 2 * torch.randn(B, S, d, generator=g)).to(dtype)  # off-centre: the mean matters
    shift, scale = (torch.randn(B, d, generator=g).to(dtype) for _ in range(2))
    want = adaln_reference(x, norm.weight, shift, scale, 1e-5)
    for record in (True, False):  # torch's two passes under autograd, dllm.ops.adaln without (not float64)
        with torch.set_grad_enabled(record):
            out = norm(x, shift, scale)
        assert out.dtype == dtype and out.shape == x.shape
        err = (out.double() - want).abs() / want.abs().clamp(min=1.0)
        assert err.max() <= ROUNDING.get(dtype, 0) + (ARITHMETIC if dtype != torch.float64 else 1e-12), (record, err.max())


@pytest.mark.parametrize("x_dtype, w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                               (torch.float16, torch.float16), (torch.bfloat16, torch.float32)])
def test_rms_norm_is_computed_in_float32_and_rounded_once(x_dtype, w_dtype):
    """Fused (shared dtype) or not (float32 weights under autocast), the same math as LLaMA's RMSNorm."""
    g = torch.Generator().manual_seed(3)
    d, eps = 83, 1e-6
    norm = RMSNorm(d, eps).to(w_dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(d, generator=g))
    x = (0.5 + 4 * torch.randn(3, 29, d, generator=g)).to(x_dtype).requires_grad_()
    out = norm(x)
    x64, w64 = x.detach().double(), norm.weight.detach().double()
    want = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * w64
    assert out.dtype == x_dtype
    # one rounding of a float32 result: within half a unit in the last place of x's dtype, plus float32's error
    torch.testing.assert_close(out.double(), want, rtol=torch.finfo(x_dtype).eps / 2 + 1e-6, atol=1e-6)
    grad = torch.randn(out.shape, generator=g).to(x_dtype)
    dx, dw = torch.autograd.grad(out, (x, norm.weight), grad)
    x64r, w64r = x64.clone().requires_grad_(), w64.clone().requires_grad_()
    ref = x64r * torch.rsqrt(x64r.pow(2).mean(-1, keepdim=True) + eps) * w64r
    dx64, dw64 = torch.autograd.grad(ref, (x64r, w64r), grad.double())
    torch.testing.assert_close(dx.double(), dx64, **TOL.get(x_dtype, dict(rtol=1e-2, atol=1e-2)))
    torch.testing.assert_close(dw.double(), dw64, rtol=1e-2 if w_dtype != torch.float32 else 1e-5, atol=1e-2)


@pytest.mark.parametrize("x_dtype, w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32)])
def test_rms_norm_eps_counts(x_dtype, w_dtype):
    """Inputs whose mean square is about eps, where leaving eps out (or another eps) shows."""
    g = torch.Generator().manual_seed(3)
    d, eps = 83, 1e-6
    norm = RMSNorm(d, eps).to(w_dtype)
    x = (1e-3 * torch.randn(3, 29, d, generator=g)).to(x_dtype)
    x64, w64 = x.double(), norm.weight.double()
    want = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * w64
    torch.testing.assert_close(norm(x).double(), want, rtol=torch.finfo(x_dtype).eps / 2 + 1e-6, atol=1e-6)


def test_the_gated_residual_takes_the_streams_dtype_with_or_without_autograd():
    """A bfloat16 stream with a float32 gate (a time embedding kept in float32): both paths round
    x + gate * update once to bfloat16, as dllm.ops.adaln_residual does."""
    g = torch.Generator().manual_seed(4)
    norm = ModulatedLayerNorm(70).bfloat16()
    x, update = (torch.randn(2, 9, 70, generator=g).bfloat16() for _ in range(2))
    gate, shift, scale = (torch.randn(2, 70, generator=g) for _ in range(3))
    want = (x.double() + gate.double()[:, None] * update.double()).bfloat16()
    for record in (True, False):
        with torch.set_grad_enabled(record):
            x_next, out = norm.residual(x, gate, update, shift, scale)
        assert x_next.dtype == out.dtype == torch.bfloat16, record
        torch.testing.assert_close(x_next, want, rtol=torch.finfo(torch.bfloat16).eps, atol=0)  # one rounding


def test_modulated_layer_norm_keeps_a_float32_stream_float32_under_autocast():
    g = torch.Generator().manual_seed(2)
    norm = ModulatedLayerNorm(40)
    x = torch.randn(2, 9, 40, generator=g)
    shift, scale = (torch.randn(2, 40, generator=g).bfloat16() for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x, shift, scale)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), adaln_reference(x, norm.weight, shift, scale, 1e-5), **TOL[torch.float32])


def _dit_reference(model, x, sigma):
    """SEDD's DiT written out plainly in float64 from the model's parameters: adaLN, RoPE,
    bidirectional attention, gated residuals, the modulated head."""
    cfg = model.config
    p = {k: v.double().cpu() for k, v in model.state_dict().items()}
    x, sigma = x.cpu(), sigma.cpu()
    half, period = model.sigma_map.freq_dim // 2, model.sigma_map.max_period
    freqs = torch.exp(-torch.log(torch.tensor(period)) * torch.arange(half, dtype=torch.float32) / half)
    args = sigma.float()[:, None] * freqs[None]
    t = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).double()
    t = F.linear(F.silu(F.linear(t, p["sigma_map.mlp.0.weight"], p["sigma_map.mlp.0.bias"])),
                 p["sigma_map.mlp.2.weight"], p["sigma_map.mlp.2.bias"])
    c = F.silu(t)
    h = p["vocab_embed"][x]
    B, S, d = h.shape
    cos, sin = model.rotary(0, S, "cpu")
    for i in range(cfg.layers):
        w = lambda name: p[f"blocks.{i}.{name}"]  # noqa: E731
        mod = F.linear(c, w("adaLN_modulation.weight"), w("adaLN_modulation.bias")).chunk(6, dim=-1)
        a = adaln_reference(h, w("norm1.weight"), mod[0], mod[1], cfg.norm_eps)
        q, k, v = F.linear(a, w("attn_qkv.weight")).view(B, S, 3, cfg.heads, cfg.head_dim).unbind(2)
        q, k = rotated(q, cos, sin), rotated(k, cos, sin)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = h + mod[2][:, None] * F.linear(att.transpose(1, 2).reshape(B, S, d), w("attn_out.weight"))
        a = adaln_reference(h, w("norm2.weight"), mod[3], mod[4], cfg.norm_eps)
        m = F.linear(F.gelu(F.linear(a, w("mlp.0.weight"), w("mlp.0.bias")), approximate="tanh"),
                     w("mlp.2.weight"), w("mlp.2.bias"))
        h = h + mod[5][:, None] * m
    shift, scale = F.linear(c, p["output_layer.adaLN_modulation.weight"],
                            p["output_layer.adaLN_modulation.bias"]).chunk(2, dim=-1)
    h = adaln_reference(h, p["output_layer.norm_final.weight"], shift, scale, cfg.norm_eps)
    return F.linear(h, p["output_layer.linear.weight"], p["output_layer.linear.bias"])


def _random_dit(dtype, device="cpu", head_dim=16, **config):
    torch.manual_seed(4)
    cfg = model_config("tiny", arch="dit", hidden=3 * head_dim, layers=2, heads=3, cond_dim=24, vocab_size=41,
                       max_seq_len=64, time_conditioning=True, **config)
    model = build_model(cfg).eval()
    # 0.3 at hidden 48, scaled by 1/sqrt(fan-in) beyond: the attention scores keep their spread at every
    # head_dim. At hidden 192 a flat 0.3 made them four times wider, a softmax so sharp that bfloat16's
    # roundings moved some logits by 15% in torch's own bfloat16 math (H200, 2026-12-04).
    std = 0.3 * (48 / cfg.hidden) ** 0.5
    with torch.no_grad():
        for prm in model.parameters():  # the zero-initialised adaLN and head too
            prm.copy_(std * torch.randn_like(prm) + (prm if prm.dim() == 1 else 0))
    x, sigma = torch.randint(0, 41, (2, 23)), torch.tensor([0.2, 3.0])
    return model.to(device=device, dtype=dtype), x.to(device), sigma.to(device)


@pytest.mark.parametrize("norm_eps", [None, 0.37, 2.5e-3])  # a config.json may set another than the default
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dit_forward_is_sedds_dit(dtype, norm_eps):
    model, x, sigma = _random_dit(dtype, **({} if norm_eps is None else {"norm_eps": norm_eps}))
    want = _dit_reference(model, x, sigma)
    tol = 1e-3 if dtype == torch.float32 else 1e-10  # float32: 23 bits through two blocks of 0.3-scale weights
    for record in (False, True):  # dllm's adaLN ops, and torch's math under autograd
        with torch.set_grad_enabled(record):
            out = model(x, sigma)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)


def test_dit_bf16_inference_is_sedds_dit(device):
    """The bfloat16 inference path: dllm's RoPE and adaLN kernels (and on CUDA the MLP's GELU in
    cuBLASLt's epilogue, torch._addmm_activation), against the float64 math and torch's path."""
    model, x, sigma = _random_dit(torch.bfloat16, device, head_dim=64)
    want = _dit_reference(model, x, sigma)
    with torch.no_grad():
        out = model(x, sigma)
    torch.testing.assert_close(out.double().cpu(), want, rtol=5e-2, atol=5e-2 * want.abs().max().item())
    torch.testing.assert_close(out, model(x, sigma).detach(), rtol=5e-2, atol=5e-2 * want.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_gated_residuals_norm_takes_the_norms_eps(dtype):
    """A config's norm_eps reaches the adaLN after each gated residual too, with or without autograd
    (dllm.ops.adaln_residual or torch): a stream whose variance is about eps, where the op's default shows."""
    g = torch.Generator().manual_seed(11)
    B, S, d, eps = 3, 13, 53, 0.37
    norm = ModulatedLayerNorm(d, eps=eps).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(d, generator=g))
    x, update = ((0.2 + 0.3 * torch.randn(B, S, d, generator=g)).to(dtype) for _ in range(2))
    gate, shift, scale = (torch.randn(B, d, generator=g).to(dtype) for _ in range(3))
    for record in (True, False):
        with torch.set_grad_enabled(record):
            x_next, out = norm.residual(x, gate, update, shift, scale)
        want_next = x.double() + gate.double()[:, None] * update.double()
        torch.testing.assert_close(x_next.double(), want_next, rtol=torch.finfo(dtype).eps, atol=1e-6)
        want = adaln_reference(x_next, norm.weight, shift, scale, eps)
        torch.testing.assert_close(out.double(), want, **TOL[dtype])
