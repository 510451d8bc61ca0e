"""dllm.ops.attention and attention_varlen against a float64 reference (FlashAttention's rule:
the kernel's error is at most ~2x what plain PyTorch makes in the same precision, 3x for
gradients). The tests named *_cuda_kernel_* run only where a GPU and a CUDA build exist; the
shared ones run on both devices (on CUDA, head dimensions other than 64 / 128 take the SDPA
fallback)."""

from types import SimpleNamespace

import pytest
import torch
from conftest import HAS_CUDA

import dllm
from dllm.reference.attention import attention as reference

pytestmark = pytest.mark.usefixtures("poisoned_empty")  # outputs start as NaN, not zeros

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")


@pytest.fixture(params=["mma", "wgmma", "wgmma lock-step", "wgmma atomic-dq"])
def attention_kernel(request, monkeypatch):
    """The CUDA kernels (DLLM_ATTENTION_KERNEL): mma.sync, or Hopper's wgmma where they run, its
    two warpgroups half a tile apart (the default) or in lock step (DLLM_ATTENTION_PINGPONG=0), or
    with dQ added by the dK/dV kernel (DLLM_ATTENTION_DQ=atomic)."""
    kernel, _, variant = request.param.partition(" ")
    if kernel == "wgmma" and not (
        dllm.build_info()["wgmma"] and torch.cuda.get_device_capability() == (9, 0)
    ):
        pytest.skip("the wgmma kernel needs a build for 9.0 and a compute capability 9.0 GPU")
    monkeypatch.setenv("DLLM_ATTENTION_KERNEL", kernel)
    monkeypatch.setenv("DLLM_ATTENTION_PINGPONG", "0" if variant == "lock-step" else "1")
    monkeypatch.setenv("DLLM_ATTENTION_DQ", "atomic" if variant == "atomic-dq" else "separate")
    return request.param


def inputs(B, Sq, Sk, H, Hkv, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype).to(device).requires_grad_()  # noqa: E731
    return mk(B, Sq, H, D), mk(B, Sk, Hkv, D), mk(B, Sk, Hkv, D)


def check(got, ref, low, factor, what, scale=None):
    err = (got.double() - ref).abs().max().item()
    torch_err = (low.double() - ref).abs().max().item()
    # The floor is relative: float32 sums of a few hundred terms differ from PyTorch's blocked
    # GEMM order by ~1e-6 of their magnitude even where PyTorch happens to be nearly exact.
    floor = 1e-5 * max(1.0, ref.abs().max().item() if scale is None else scale)
    assert err <= factor * torch_err + floor, f"{what}: max error {err:.3g} vs plain PyTorch's {torch_err:.3g}"


def lse_reference(q, k, kv_len, scale):
    """float64 log-sum-exp of the scaled scores over each row's keys, [heads, B * Sq] as the op's lse."""
    B, Sq, H, _ = q.shape
    scores = torch.einsum("bqhd,bkhd->hbqk", q.double() * scale, k.double().repeat_interleave(H // k.shape[2], 2))
    keep = torch.arange(k.shape[1], device=k.device) < kv_len[:, None]
    return scores.masked_fill(~keep[None, :, None, :], float("-inf")).logsumexp(-1).reshape(H, B * Sq)


def check_gradients(out, ref, low, inputs):
    """dq, dk, dv within 3x plain PyTorch's error, for a fixed random output gradient."""
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    grads = torch.autograd.grad(out, inputs, g)
    ref_grads = torch.autograd.grad(ref, inputs, g.double())
    low_grads = torch.autograd.grad(low, inputs, g)
    # With one key the softmax is constant and dk is exactly 0: a cancellation of dP - delta, terms
    # as large as the other gradients, which PyTorch's order happens to make exact. So the floor is
    # relative to the largest gradient (on the H200, 1.3e-5 to 3.7e-5 at S = 1023 x 1).
    scale = max(r.abs().max().item() for r in ref_grads)
    for name, a, r, l in zip("qkv", grads, ref_grads, low_grads):
        check(a, r, l, 3, f"d{name}", scale)


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
    check_gradients(out, ref, low, (q, k, v))


@pytest.mark.parametrize("D, softmax_scale", [(128, None), (48, 0.1)])
def test_sharp_softmax_gradients_with_a_scale_that_is_not_a_power_of_two(device, D, softmax_scale):
    # The backward must recompute the forward's scores exactly: a scale applied elsewhere rounds
    # differently, which a peaked softmax turns into gradient errors far above PyTorch's.
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    g = torch.Generator().manual_seed(3)
    q, k, v = (4 * torch.randn(1, 256, 2, D, generator=g)).to(dtype).to(device).requires_grad_(), \
        (4 * torch.randn(1, 256, 2, D, generator=g)).to(dtype).to(device).requires_grad_(), \
        torch.randn(1, 256, 2, D, generator=g).to(dtype).to(device).requires_grad_()
    out = dllm.ops.attention(q, k, v, softmax_scale=softmax_scale)
    ref = reference(q, k, v, softmax_scale=softmax_scale)
    low = reference(q, k, v, softmax_scale=softmax_scale, upcast=False)
    check(out, ref, low, 2, "out")
    check_gradients(out, ref, low, (q, k, v))


def test_keys_past_kv_len_are_never_read(device):
    # NaN in the padding of k and v (a KV-cache buffer's unwritten tail) must not reach the output
    # or the gradients: 0 * NaN is NaN, so a kernel that reads them under a -inf score fails here
    q, k, v = (t.detach() for t in inputs(3, 9, 70, 4, 2, 64, torch.bfloat16, device, seed=5))
    kv_len = torch.tensor([70, 33, 0], device=device)
    keep = torch.arange(70, device=device)[None, :] < kv_len[:, None]
    k_nan, v_nan = (t.masked_fill(~keep[:, :, None, None], float("nan")).requires_grad_() for t in (k, v))
    q.requires_grad_()
    out = dllm.ops.attention(q, k_nan, v_nan, kv_len=kv_len)
    ref = reference(q, k, v, kv_len)
    check(out, ref, reference(q, k, v, kv_len, upcast=False), 2, "out")
    grads = torch.autograd.grad(out.float().square().sum(), (q, k_nan, v_nan))
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[1][~keep] == 0).all() and (grads[2][~keep] == 0).all()


@pytest.mark.parametrize("D", [64, 128])
def test_varlen_equals_padded(device, D):
    dtype = torch.bfloat16
    lens_q, lens_k = [5, 0, 17, 1], [9, 4, 17, 0]
    B, Sq, Sk, H, Hkv = 4, 17, 17, 4, 2
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


def test_varlen_rows_past_the_last_sequence_are_zero(device):
    """Packed rows after cu_seqlens[-1] (a buffer sized for more tokens than this batch holds) are in
    no sequence: zeros in the output and in all three gradients."""
    q, k, v = (t[0].detach().requires_grad_() for t in inputs(1, 20, 24, 4, 2, 64, torch.bfloat16, device, seed=2))
    cu_q, cu_k = (torch.tensor(cu, dtype=torch.int32, device=device) for cu in ([0, 6, 15], [0, 10, 21]))
    out = dllm.ops.attention_varlen(q, k, v, cu_q, cu_k, 9, 11)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert out[15:].eq(0).all() and dq[15:].eq(0).all() and dk[21:].eq(0).all() and dv[21:].eq(0).all()
    assert out[:15].ne(0).any(-1).all() and dv[:21].ne(0).any(-1).all()


def copies_made(fn) -> set[str]:
    """The copy ops that fn dispatches (inside dllm's ops too)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()} & {"aten::copy_", "aten::clone", "aten::contiguous"}


def test_views_of_a_fused_projection_are_read_in_place(device):
    # The DiT slices q, k, v from one [B, S, 3, H, D] projection: the forward reads those views in
    # place and computes what it computes on contiguous copies. Layouts whose tokens do not flatten
    # to one stride ([B, H, S, D] transposed, B > 1) or whose rows are not 16-byte aligned are copied.
    B, S, H, D = 3, 37, 4, 64
    g = torch.Generator().manual_seed(7)
    qkv = torch.randn(B, S, 3, H, D, generator=g).to(device, torch.bfloat16)
    q, k, v = qkv.unbind(2)
    kv_len = torch.tensor([37, 5, 20], device=device)
    expected = dllm.ops.attention(q.contiguous(), k.contiguous(), v.contiguous(), kv_len=kv_len)
    assert torch.equal(dllm.ops.attention(q, k, v, kv_len=kv_len), expected)
    assert not copies_made(lambda: dllm.ops.attention(q, k, v))
    heads_first = q.transpose(1, 2).contiguous().transpose(1, 2)  # [B, S, H, D] at [B, H, S, D] strides
    assert torch.equal(dllm.ops.attention(heads_first, k, v), dllm.ops.attention(q.contiguous(), k, v))
    assert copies_made(lambda: dllm.ops.attention(heads_first, k, v))
    one = heads_first[1:2]  # one sequence: a token stride of D and a head stride of S * D, read in place
    assert torch.equal(dllm.ops.attention(one, k[1:2], v[1:2]), dllm.ops.attention(q[1:2].contiguous(), k[1:2], v[1:2]))
    assert not copies_made(lambda: dllm.ops.attention(one, k[1:2], v[1:2]))
    cu = torch.tensor([0, 37, 74, 111], dtype=torch.int32, device=device)
    packed = qkv.flatten(0, 1).unbind(1)  # varlen views [T, H, D]
    assert torch.equal(dllm.ops.attention_varlen(*packed, cu, cu, S, S), dllm.ops.attention(q, k, v).flatten(0, 1))
    # gradients are those of the contiguous inputs
    qkv.requires_grad_()
    grad_out = torch.randn(B, S, H, D, generator=g).to(device, torch.bfloat16)
    grad, = torch.autograd.grad(dllm.ops.attention(*qkv.unbind(2)), qkv, grad_out)
    leaves = [t.detach().contiguous().requires_grad_() for t in qkv.unbind(2)]
    assert torch.equal(grad, torch.stack(torch.autograd.grad(dllm.ops.attention(*leaves), leaves, grad_out), 2))


def far_negative_inputs(B, Sq, Sk, H, Hkv, D, dtype, device, shift=12.0):
    """q, k whose every score sits near -shift^2 (about -144, times the scale): then exp(-lse) is
    past float32's range, which the backward must never multiply by a padded key."""
    q, k, v = (t.detach() for t in inputs(B, Sq, Sk, H, Hkv, D, dtype, device, seed=4))
    q[..., 0] += shift
    k[..., 0] -= shift
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_()


def growing_scores_inputs(B, Sq, Sk, H, Hkv, D, dtype, device, reach=8.0):
    """q, k whose scores climb along the keys by about reach^2 (64, times the scale): every key
    tile's row maximum far above the last one's, so P relative to a stale maximum would overflow
    float16 (the kernels must rescale)."""
    q, k, v = (t.detach() for t in inputs(B, Sq, Sk, H, Hkv, D, dtype, device, seed=6))
    q[..., 0] = reach
    k[..., 0] = torch.linspace(-reach, reach, Sk, device=device).to(dtype)[None, :, None]
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_()


EXTREME_SCORES = {"far_negative": far_negative_inputs, "climbing": growing_scores_inputs}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scores", list(EXTREME_SCORES))
@pytest.mark.parametrize("cuda_kernel", ["mma", "wgmma"])
def test_extreme_scores_with_a_softmax_scale(device, cuda_kernel, scores, dtype, monkeypatch):
    """A scale other than 1/sqrt(D) (the CUDA kernels fold it into the exponent), with scores whose
    exp(-lse) overflows float32 or whose row maxima climb from key tile to key tile."""
    if cuda_kernel == "wgmma" and not (device == "cuda" and dllm.build_info()["wgmma"]
                                       and torch.cuda.get_device_capability() == (9, 0)):
        pytest.skip("the wgmma kernels run on a compute capability 9.0 GPU only")
    monkeypatch.setenv("DLLM_ATTENTION_KERNEL", cuda_kernel)
    q, k, v = EXTREME_SCORES[scores](2, 113, 203, 4, 2, 64, dtype, device)
    kv_len = torch.tensor([203, 102], device=device, dtype=torch.int32)  # a partial last key tile
    out = dllm.ops.attention(q, k, v, kv_len=kv_len, softmax_scale=0.9)
    ref = reference(q, k, v, kv_len, None, softmax_scale=0.9)
    low = reference(q, k, v, kv_len, None, softmax_scale=0.9, upcast=False)
    check(out, ref, low, 2, "out")
    check_gradients(out, ref, low, (q, k, v))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Sq", [1, 4, 5])
@pytest.mark.parametrize("scores", ["random", *EXTREME_SCORES])
@pytest.mark.parametrize("D", [64, 37])
def test_a_decoding_step_over_whole_kv_cache_buffers(device, dtype, Sq, scores, D):
    """A decoding step: up to four queries (CUDA answers them with its split-key kernels, five take
    the tiles; the CPU kernel reads K and V rows in place for one, the tiles from two on) over a KV
    cache's whole buffers, each row's filled length as kv_len (empty, one key, partial, full), with
    GQA. The log-sum-exp the backward reads is checked too."""
    B, Sk, H, Hkv = 4, 203, 6, 2
    make = inputs if scores == "random" else EXTREME_SCORES[scores]
    q, k, v = (t.detach() for t in make(B, Sq, Sk, H, Hkv, D, dtype, device))
    kv_len = torch.tensor([0, 1, 77, Sk], device=device, dtype=torch.int32)
    out = dllm.ops.attention(q, k, v, kv_len=kv_len)
    check(out, reference(q, k, v, kv_len), reference(q, k, v, kv_len, upcast=False), 2, "out")
    assert (out[0] == 0).all()
    if device == "cpu" or dllm.ops.cuda_kernel_supports(q):
        _, lse = torch.ops.dllm.attention_forward(q, k, v, kv_len, None, None, None, 0, 0, D**-0.5)
        scores_ = torch.einsum("bqhd,bkhd->bhqk", q.double() * D**-0.5, k.double().repeat_interleave(H // Hkv, 2))
        keep = torch.arange(Sk, device=device) < kv_len[:, None]
        expected = scores_.masked_fill(~keep[:, None, None, :], float("-inf")).logsumexp(-1)  # [B, H, Sq]
        torch.testing.assert_close(lse.view(H, B, Sq).permute(1, 0, 2).double(), expected, rtol=1e-5, atol=1e-5)
        if scores == "random" and D == 64:  # the op's registration holds on this path too
            torch.library.opcheck(torch.ops.dllm.attention_forward.default,
                                  (q, k, v, kv_len, None, None, None, 0, 0, D**-0.5))


def test_bad_inputs(device):
    # D = 64, so that on CUDA the checks are dllm's, not the SDPA fallback's.
    q, k, v = inputs(2, 5, 6, 4, 3, 64, torch.bfloat16, device)
    with pytest.raises(RuntimeError, match="multiple of the number of k/v heads"):
        dllm.ops.attention(q, k, v)
    q, k, v = inputs(2, 5, 6, 4, 2, 64, torch.bfloat16, device)
    with pytest.raises(RuntimeError, match="share the head dimension"):
        dllm.ops.attention(q, k[..., :4], v[..., :4])
    with pytest.raises(RuntimeError, match=r"kv_len must have shape \[2\]"):
        dllm.ops.attention(q, k, v, kv_len=torch.tensor([1], device=device))
    with pytest.raises(TypeError, match="share a dtype"):
        dllm.ops.attention(q, k.half(), v)
    for scale in (0.0, -0.125, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="softmax_scale must be positive and finite"):
            dllm.ops.attention(q, k, v, softmax_scale=scale)
        with pytest.raises(ValueError, match="softmax_scale must be positive and finite"):
            torch.ops.dllm.attention_forward(q, k, v, None, None, None, None, 0, 0, scale)
    for scale in (1e39, 10**400):  # the kernels' float32 scale would be inf: NaN out
        with pytest.raises(ValueError, match="softmax_scale = 1.* lies outside float32's range"):
            dllm.ops.attention(q, k, v, softmax_scale=scale)
    with pytest.raises(TypeError, match="softmax_scale must be a float or None, got str"):
        dllm.ops.attention(q, k, v, softmax_scale="0.125")
    if device == "cpu":
        with pytest.raises(ValueError, match="kv_len must lie in"):
            dllm.ops.attention(q, k, v, kv_len=torch.tensor([1, 7]))


def test_opcheck_and_compile(device):
    q, k, v = inputs(2, 7, 9, 4, 2, 64, torch.bfloat16, device)
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


def test_a_changing_softmax_scale_compiles_without_a_graph_break():
    # the second value makes the scale a symbolic float, which math.isfinite could not take
    q = torch.randn(1, 5, 2, 8)
    f = torch.compile(lambda s: dllm.ops.attention(q, q, q, softmax_scale=s), fullgraph=True, backend="aot_eager")
    for scale in (0.5, 0.7, 1.3):
        torch.testing.assert_close(f(scale), dllm.ops.attention(q, q, q, softmax_scale=scale))


# ---- the CUDA tensor-core kernels ---------------------------------------------------------------
# Sizes cross every tile boundary the kernels have: 128-query CTAs, 64-key tiles (forward, dQ),
# 128-key CTAs with 32/64-query tiles (dK/dV); S = 1 and 1023 = 16 * 64 - 1 leave one row / key
# in a tile. B = 3 sequences take kv_len (0, full, partial) and q_len (full, partial, 1).


def lengths_for(Sq, Sk, device):
    kv_len = torch.tensor([0, Sk, max(Sk // 2 - 3, 1)], device=device, dtype=torch.int32)
    q_len = torch.tensor([Sq, max(Sq - 7, 1), 1], device=device, dtype=torch.int32)
    return kv_len, q_len


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize(
    "B, Sq, Sk, H, Hkv, lengths",
    [(2, 113, 203, 4, 2, False), (3, 203, 113, 2, 2, True), (1, 1, 1023, 4, 1, False), (3, 1023, 1, 2, 1, True),
     (3, 1023, 1023, 2, 1, True), (1, 300, 1023, 3, 3, False)],
)
def test_cuda_kernel_matches_float64(attention_kernel, dtype, D, B, Sq, Sk, H, Hkv, lengths):
    q, k, v = inputs(B, Sq, Sk, H, Hkv, D, dtype, "cuda", seed=Sq + Sk + D)
    assert dllm.ops.cuda_kernel_supports(q)
    kv_len, q_len = lengths_for(Sq, Sk, "cuda") if lengths else (None, None)
    out = dllm.ops.attention(q, k, v, kv_len=kv_len, q_len=q_len)
    ref = reference(q, k, v, kv_len, q_len)
    low = reference(q, k, v, kv_len, q_len, upcast=False)
    check(out, ref, low, 2, "out")
    if lengths:
        assert (out[0] == 0).all()  # no keys
        for b in range(B):
            assert (out[b, int(q_len[b]):] == 0).all()
    check_gradients(out, ref, low, (q, k, v))


@cuda_only
@pytest.mark.parametrize("D", [64, 128])
def test_cuda_kernel_lse_and_determinism(attention_kernel, D):
    q, k, v = inputs(2, 150, 77, 4, 2, D, torch.bfloat16, "cuda", seed=3)
    kv_len = torch.tensor([77, 40], device="cuda", dtype=torch.int32)
    q_len = torch.tensor([150, 99], device="cuda", dtype=torch.int32)
    qd, kd, vd = (t.detach() for t in (q, k, v))
    out, lse = torch.ops.dllm.attention_forward(qd, kd, vd, kv_len, q_len, None, None, 0, 0, 0.3)
    scores = torch.einsum("bqhd,bkhd->bhqk", qd.double(), kd.double().repeat_interleave(2, 2)) * 0.3
    scores[1, :, :, 40:] = float("-inf")
    ref_lse = scores.logsumexp(-1)  # [B, H, Sq]
    got = lse.view(4, 2, 150).transpose(0, 1)
    torch.testing.assert_close(got[0].double(), ref_lse[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(got[1, :, :99].double(), ref_lse[1, :, :99], atol=1e-3, rtol=0)
    assert (got[1, :, 99:] == float("-inf")).all()
    # no atomics: the backward gives identical bits on every run; with atomic dQ, dQ's float32 sums
    # take their terms in any order, which may move a rounded element by an ulp
    go = torch.randn_like(out)
    args = (go, qd, kd, vd, out, lse, kv_len, q_len, None, None, 0, 0, 0.3)
    first = torch.ops.dllm.attention_backward(*args)
    for i, (a, b) in enumerate(zip(first, torch.ops.dllm.attention_backward(*args))):
        if i == 0 and attention_kernel == "wgmma atomic-dq":
            torch.testing.assert_close(a, b, rtol=2**-7, atol=1e-6)
        else:
            assert torch.equal(a, b)


@cuda_only
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("Sq", [33, 64])
def test_cuda_kernel_splits_a_query_block_over_many_keys(attention_kernel, D, Sq):
    """5 to 64 queries over >= 256 keys on few (sequence, head) pairs, a Fast-dLLM cached block:
    the forward splits the keys into chunks that the decoding merge kernel joins (12 pairs here,
    far below a 132-SM card's). The CPU twin is test_cuda_emulated's
    test_attention_query_block_splits_the_keys; this runs the path on the GPU itself."""
    B, Sk, H, Hkv = 3, 600, 4, 2
    q, k, v = (t.detach() for t in inputs(B, Sq, Sk, H, Hkv, D, torch.bfloat16, "cuda", seed=Sq + D))
    kv_len = torch.tensor([600, 0, 150], device="cuda", dtype=torch.int32)  # full, no keys, inside one chunk
    q_len = torch.tensor([Sq, Sq, Sq - 3], device="cuda", dtype=torch.int32)
    scale = 0.9 * D**-0.5
    out, lse = torch.ops.dllm.attention_forward(q, k, v, kv_len, q_len, None, None, 0, 0, scale)
    check(out, reference(q, k, v, kv_len, q_len, softmax_scale=scale),
          reference(q, k, v, kv_len, q_len, softmax_scale=scale, upcast=False), 2, "out")
    rows = (torch.arange(Sq, device="cuda")[None, :] < q_len[:, None]).flatten()
    torch.testing.assert_close(lse.double()[:, rows], lse_reference(q, k, kv_len, scale)[:, rows], atol=1e-3, rtol=0)


@cuda_only
def test_cuda_kernel_reads_strided_and_unaligned_inputs(attention_kernel):
    B, S, H, D = 2, 70, 4, 128
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(B, S, 3, H, D, generator=g).to("cuda", torch.bfloat16)
    q, k, v = qkv.unbind(2)  # non-contiguous views
    flat = torch.randn(B * S * H * D + 1, generator=g).to("cuda", torch.bfloat16)
    q_odd = flat[1:].view(B, S, H, D)  # contiguous, 2 bytes off a 16-byte boundary
    expected = dllm.ops.attention(q.contiguous(), k.contiguous(), v.contiguous())
    assert torch.equal(dllm.ops.attention(q, k, v), expected)
    assert torch.equal(dllm.ops.attention(q_odd, k, v), dllm.ops.attention(q_odd.clone(), k, v))


@cuda_only
def test_cuda_kernel_errors_and_fallback():
    q, k, v = inputs(1, 4, 4, 2, 2, 32, torch.bfloat16, "cuda")
    cu = torch.tensor([0, 4], device="cuda", dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="head dimension 64 or 128, got 32"):
        dllm.ops.attention_varlen(q[0], k[0], v[0], cu, cu, 4, 4)
    q, k, v = inputs(1, 4, 4, 2, 2, 64, torch.float32, "cuda")
    with pytest.raises(NotImplementedError, match="bfloat16 and float16"):
        dllm.ops.attention_varlen(q[0], k[0], v[0], cu, cu, 4, 4)
    # attention() itself falls back to SDPA for these
    assert not dllm.ops.cuda_kernel_supports(q)
    out = dllm.ops.attention(q, k, v)
    torch.testing.assert_close(out.double(), reference(q, k, v), atol=1e-4, rtol=1e-4)


def test_the_sdpa_fallback_checks_and_clamps_lengths_as_the_kernels_do():
    # CUDA float32 and other head sizes take SDPA; the function is device-agnostic, so the CPU runs it.
    q, k, v = inputs(3, 9, 11, 2, 1, 24, torch.float32, "cpu")
    fallback = lambda kv_len, q_len=None: dllm.ops.sdpa_attention(q, k, v, kv_len, q_len, 24 ** -0.5)  # noqa: E731
    with pytest.raises(RuntimeError, match=r"kv_len must have shape \[3\]"):
        fallback(torch.tensor([5]))
    with pytest.raises(TypeError, match="kv_len must be an integer tensor"):
        fallback(torch.tensor([2.5, 11.0, 7.0]))
    with pytest.raises(RuntimeError, match="q_len is on meta"):
        fallback(None, torch.zeros(3, dtype=torch.int32, device="meta"))
    # the kernels' messages, not SDPA's (which raises a RuntimeError for disagreeing dtypes)
    with pytest.raises(TypeError, match="^attention: q, k, v must share a dtype"):
        dllm.ops.sdpa_attention(q, k.double(), v, None, None, 0.2)
    with pytest.raises(RuntimeError, match="^attention: the number of q heads must be a multiple"):
        dllm.ops.sdpa_attention(k, q, q, None, None, 0.2)
    out = fallback(torch.tensor([-4, 30, 7]), torch.tensor([9, -1, 12]))
    want = reference(q, k, v, torch.tensor([0, 11, 7]), torch.tensor([9, 0, 9]))
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_the_kernels_take_bf16_and_fp16_at_d64_and_128_on_sm80_and_newer(monkeypatch):
    """The kernels refuse compute capability < 8.0 (mma.sync, cp.async) and float32, so attention()
    must send such inputs, and other head sizes, to SDPA. A meta tensor stands in for the CUDA one."""
    q = torch.empty(1, 4, 2, 64, dtype=torch.bfloat16, device="meta")
    monkeypatch.setattr(dllm.ops._attention, "_HAS_CUDA_ATTENTION", True)
    for major, supported in ((7, False), (8, True), (9, True)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, m=major: SimpleNamespace(major=m))
        assert dllm.ops.cuda_kernel_supports(q) is supported
    for dtype, D, supported in ((torch.float16, 128, True), (torch.float32, 64, False), (torch.float32, 128, False),
                                (torch.float64, 64, False), (torch.bfloat16, 96, False), (torch.float16, 256, False),
                                (torch.bfloat16, 32, False)):
        q = torch.empty(2, 3, 4, D, dtype=dtype, device="meta")
        assert dllm.ops.cuda_kernel_supports(q) is supported, (dtype, D)


@cuda_only
def test_cuda_kernel_never_synchronises(attention_kernel):
    # A CUDA graph capture fails on any host synchronisation; lengths are clamped, not checked.
    q, k, v = inputs(2, 40, 50, 4, 2, 64, torch.bfloat16, "cuda")
    q, k, v = (t.detach() for t in (q, k, v))
    kv_len = torch.tensor([50, 9], device="cuda")
    eager = dllm.ops.attention(q, k, v, kv_len=kv_len)  # also loads the kernels before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = dllm.ops.attention(q, k, v, kv_len=kv_len)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)
    # the backward too (atomic dQ allocates and zero-fills its float32 sums inside the capture)
    out, lse = torch.ops.dllm.attention_forward(q, k, v, kv_len, None, None, None, 0, 0, 0.125)
    args = (torch.randn_like(out), q, k, v, out, lse, kv_len, None, None, None, 0, 0, 0.125)
    eager = torch.ops.dllm.attention_backward(*args)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = torch.ops.dllm.attention_backward(*args)
    graph.replay()
    torch.cuda.synchronize()
    atomic = attention_kernel == "wgmma atomic-dq"  # dQ's float32 sums in any order (see above)
    for a, b in zip(captured, eager):
        torch.testing.assert_close(a, b, rtol=2**-7 if atomic else 0, atol=1e-6 if atomic else 0)


def test_varlen_with_tight_unequal_max_seqlens_equals_padded():
    # a short query block over a longer context (decoding), max_seqlen_q != max_seqlen_k, each the
    # true longest length: each bound must apply to its own side
    g = torch.Generator().manual_seed(7)
    lens_q, lens_k = [3, 1, 2], [11, 6, 0]
    B, Sq, Sk, H, Hkv, D = 3, max(lens_q), max(lens_k), 4, 2, 16
    q = torch.randn(B, Sq, H, D, generator=g)
    k, v = torch.randn(B, Sk, Hkv, D, generator=g), torch.randn(B, Sk, Hkv, D, generator=g)
    padded = dllm.ops.attention(q, k, v, kv_len=torch.tensor(lens_k), q_len=torch.tensor(lens_q))
    pack = lambda t, lens: torch.cat([t[b, :n] for b, n in enumerate(lens)])  # noqa: E731
    cu = lambda lens: torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)  # noqa: E731
    packed = dllm.ops.attention_varlen(pack(q, lens_q), pack(k, lens_k), pack(v, lens_k), cu(lens_q), cu(lens_k),
                                       Sq, Sk)
    assert torch.equal(packed, pack(padded, lens_q))


@pytest.mark.parametrize("name", ["kv_len", "q_len"])
def test_negative_lengths_are_refused_on_the_cpu(name):
    # The documented contract: lengths outside [0, S] raise on the CPU (CUDA clamps them); a
    # negative one is not silently taken as 0 (an all-zero output for that sequence).
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 2, 16, generator=g) for _ in range(3))
    lengths = {name: torch.tensor([3, -1])}
    with pytest.raises(ValueError, match=f"{name} must lie in"):
        dllm.ops.attention(q, k, v, **lengths)


@pytest.mark.parametrize("case", ["too_long_q", "too_long_k", "not_from_0", "decreasing", "past_the_tokens"])
def test_malformed_cu_seqlens_are_refused_on_the_cpu(case):
    # attention_varlen's contract on the CPU: cu_seqlens start at 0, never decrease, end within the
    # packed tokens, and no sequence is longer than max_seqlen_*; anything else raises ValueError
    # (a silently clamped sequence would attend to fewer keys or leave queries at zero).
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(9, 2, 16, generator=g) for _ in range(3))
    cu_q, cu_k, max_q, max_k = torch.tensor([0, 4, 9]), torch.tensor([0, 3, 9]), 5, 6
    assert dllm.ops.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k).shape == q.shape  # the valid call
    if case == "too_long_q":
        max_q = 4
    elif case == "too_long_k":
        max_k = 5
    elif case == "not_from_0":
        cu_k = torch.tensor([1, 3, 9])
    elif case == "decreasing":
        cu_q = torch.tensor([0, 5, 4])
    else:  # 7 keys (within max_seqlen_k) from key 3, of 9
        cu_k, max_k = torch.tensor([0, 3, 10]), 7
    with pytest.raises(ValueError, match="^attention_varlen: (cu_seqlens must start at 0|.*longer than max_seqlen)"):
        dllm.ops.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k)


@pytest.mark.parametrize("where", ["device", "meta"])
def test_errors_name_the_op_called(device, where):
    """attention_varlen's errors say attention_varlen, attention's say attention: from the kernels' checks
    and from the fake ones that torch.compile traces with (meta tensors)."""
    on = device if where == "device" else "meta"
    q = torch.randn(9, 2, 16, device=on, dtype=torch.bfloat16)
    cu = torch.tensor([0, 4, 9], device=on)
    with pytest.raises(TypeError, match="^attention_varlen: q, k, v must share a dtype"):
        dllm.ops.attention_varlen(q, q.float(), q, cu, cu, 5, 5)
    with pytest.raises(RuntimeError, match=r"^attention_varlen: the number of q heads \(2\) must be a multiple"
                                           if where == "device" else "^attention_varlen: the number of q heads"):
        dllm.ops.attention_varlen(q, q[:, :1].expand(9, 3, 16), q[:, :1].expand(9, 3, 16), cu, cu, 5, 5)
    with pytest.raises(TypeError, match="^attention: q, k, v must share a dtype"):
        dllm.ops.attention(q[None], q[None].float(), q[None])


def test_reference_never_reads_keys_or_values_past_kv_len():
    # dllm.reference.attention, like the op, must ignore a KV-cache buffer's unwritten tail: NaN
    # there (0 * NaN is NaN in probs @ v) must leave the output equal to that of a clean buffer.
    g = torch.Generator().manual_seed(17)
    B, Sq, Sk, H, Hkv, D = 3, 5, 37, 4, 2, 24
    q, k, v = (torch.randn(B, s, h, D, generator=g) for s, h in ((Sq, H), (Sk, Hkv), (Sk, Hkv)))
    kv_len = torch.tensor([Sk, 19, 0])
    pad = torch.arange(Sk)[None, :] >= kv_len[:, None]
    k_nan, v_nan = (t.masked_fill(pad[:, :, None, None], float("nan")) for t in (k, v))
    for upcast in (True, False):
        clean = reference(q, k, v, kv_len, upcast=upcast)
        got = reference(q, k_nan, v_nan, kv_len, upcast=upcast)
        assert got.isfinite().all() and torch.equal(got, clean)
        assert (clean[2] == 0).all()  # a row with no key is zero


def test_reference_takes_an_explicit_scale_of_zero_as_given():
    # softmax_scale=0.0 is a scale (every key weighs the same: the mean of the values), not "use the default"
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(2, 7, 2, 16, generator=g), torch.randn(2, 11, 1, 16, generator=g), torch.randn(2, 11, 1, 16, generator=g)
    out = reference(q, k, v, softmax_scale=0.0)
    want = v.double().mean(1, keepdim=True).expand(2, 7, 2, 16)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [0.0, -0.0])
def test_a_softmax_scale_of_zero_is_refused_by_the_wrapper_on_every_path(device, scale):
    # 0 is no scale (every key would weigh the same): the wrapper refuses it, naming the op, before
    # any kernel, on CUDA float32 / other head sizes (which go to SDPA, unchecked) as on the CPU
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 5, 2, 24, generator=g).to(device) for _ in range(3))
    with pytest.raises(ValueError, match=r"^attention: softmax_scale must be positive and finite, got -?0\.0$"):
        dllm.ops.attention(q, k, v, softmax_scale=scale)
    cu = torch.tensor([0, 2, 5], device=device)
    with pytest.raises(ValueError, match=r"^attention_varlen: softmax_scale must be positive and finite, got -?0\.0$"):
        dllm.ops.attention_varlen(q[0], k[0], v[0], cu, cu, 3, 3, softmax_scale=scale)
