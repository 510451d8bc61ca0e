"""dllm.ops.attention and attention_varlen against a float64 reference (FlashAttention's rule:
the kernel's error is at most ~2x what plain PyTorch makes in the same precision, 3x for
gradients)."""

import pytest
import torch

import dllm
from dllm.reference.attention import attention as reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def inputs(B, Sq, Sk, H, Hkv, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype).to(device).requires_grad_()  # noqa: E731
    return mk(B, Sq, H, D), mk(B, Sk, Hkv, D), mk(B, Sk, Hkv, D)


def check(got, ref, low, factor, what):
    err = (got.double() - ref).abs().max().item()
    torch_err = (low.double() - ref).abs().max().item()
    assert err <= factor * torch_err + 1e-5, f"{what}: max error {err:.3g} vs plain PyTorch's {torch_err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B, Sq, Sk, H, Hkv, D",
    [(2, 113, 203, 4, 2, 40), (1, 1, 113, 3, 3, 59), (2, 203, 1, 2, 1, 64), (1, 1023, 1023, 2, 1, 24)],
)
@pytest.mark.parametrize("lengths", [False, True])
def test_forward_and_gradients_match_float64(device, dtype, B, Sq, Sk, H, Hkv, D, lengths):
    if device == "cuda" and dtype == torch.float32:
        pytest.skip("float32 attention is CPU-only")
    q, k, v = inputs(B, Sq, Sk, H, Hkv, D, dtype, device)
    kv_len = q_len = None
    if lengths:  # 0, full and in between
        kv_len = torch.tensor([0, Sk, Sk // 2 + 1][:B] if B > 1 else [Sk // 2 + 1], device=device, dtype=torch.int32)
        q_len = torch.tensor([Sq, max(Sq - 7, 0), 1][:B] if B > 1 else [Sq], device=device, dtype=torch.int32)
    out = dllm.ops.attention(q, k, v, kv_len=kv_len, q_len=q_len)
    ref = reference(q, k, v, kv_len, q_len)
    low = reference(q, k, v, kv_len, q_len, upcast=False)
    check(out, ref, low, 2, "out")
    if q_len is not None:
        for b in range(B):
            assert (out[b, int(q_len[b]):] == 0).all()
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g.double())
    low_grads = torch.autograd.grad(low, (q, k, v), g)
    for name, a, r, l in zip("qkv", grads, ref_grads, low_grads):
        check(a, r, l, 3, f"d{name}")


def test_varlen_equals_padded(device):
    if device == "cuda" and not dllm.ops._has_cuda_kernel("attention_forward"):
        pytest.skip("attention_varlen has no CUDA kernel yet")
    dtype = torch.bfloat16
    lens_q, lens_k = [5, 0, 17, 1], [9, 4, 17, 0]
    B, Sq, Sk, H, Hkv, D = 4, 17, 17, 4, 2, 64
    q, k, v = inputs(B, Sq, Sk, H, Hkv, D, dtype, device, seed=1)
    q_len = torch.tensor(lens_q, device=device)
    kv_len = torch.tensor(lens_k, device=device)
    padded = dllm.ops.attention(q, k, v, kv_len=kv_len, q_len=q_len)
    pack = lambda t, lens: torch.cat([t[b, :n] for b, n in enumerate(lens)])  # noqa: E731
    cu = lambda lens: torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=device)  # noqa: E731
    packed = dllm.ops.attention_varlen(pack(q, lens_q), pack(k, lens_k), pack(v, lens_k), cu(lens_q), cu(lens_k), Sq, Sk)
    assert torch.equal(packed, pack(padded, lens_q))
    # gradients flow through the packed form too
    gq, = torch.autograd.grad(packed.float().sum(), q)
    gq_padded, = torch.autograd.grad(padded.float().sum(), q)
    assert torch.equal(gq, gq_padded)


def test_bad_inputs(device):
    if device == "cuda" and not dllm.ops._has_cuda_kernel("attention_forward"):
        pytest.skip("no CUDA attention kernel yet: SDPA raises its own errors")
    q, k, v = inputs(2, 5, 6, 4, 3, 8, torch.bfloat16, device)
    with pytest.raises(RuntimeError, match="multiple of the number of k/v heads"):
        dllm.ops.attention(q, k, v)
    q, k, v = inputs(2, 5, 6, 4, 2, 8, torch.bfloat16, device)
    with pytest.raises(RuntimeError, match="share the head dimension"):
        dllm.ops.attention(q, k[..., :4], v[..., :4])
    with pytest.raises(RuntimeError, match=r"kv_len must have shape \[2\]"):
        dllm.ops.attention(q, k, v, kv_len=torch.tensor([1], device=device))
    with pytest.raises(TypeError, match="share a dtype"):
        dllm.ops.attention(q, k.half(), v)
    if device == "cpu":
        with pytest.raises(ValueError, match="kv_len must lie in"):
            dllm.ops.attention(q, k, v, kv_len=torch.tensor([1, 7]))


def test_opcheck_and_compile(device):
    if device == "cuda" and not dllm.ops._has_cuda_kernel("attention_forward"):
        pytest.skip("no CUDA attention kernel yet")
    q, k, v = inputs(2, 7, 9, 4, 2, 16, torch.bfloat16, device)
    kv_len = torch.tensor([3, 9], device=device)
    op = torch.ops.dllm.attention_forward.default
    torch.library.opcheck(op, (q, k, v, kv_len, None, None, None, 0, 0, 0.25))
    qd, kd, vd = (t.detach() for t in (q, k, v))  # the backward op itself is not differentiated
    out, lse = op(qd, kd, vd, kv_len, None, None, None, 0, 0, 0.25)
    torch.library.opcheck(torch.ops.dllm.attention_backward.default,
                          (torch.randn_like(out), qd, kd, vd, out, lse, kv_len, None, None, None, 0, 0, 0.25))
    f = lambda q, k, v: dllm.ops.attention(q, k, v, kv_len=kv_len).float().square().sum()  # noqa: E731
    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))
    g1 = torch.autograd.grad(compiled(q, k, v), q)[0]
    g2 = torch.autograd.grad(f(q, k, v), q)[0]
    assert torch.equal(g1, g2)
