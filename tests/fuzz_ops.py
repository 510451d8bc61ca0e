"""Differential fuzzing on random calls that no hand-written case combines: vocabularies at and
around the kernels' group and chunk sizes, the mask id anywhere (first, last, at a group boundary),
logits with heavy ties, -inf runs and large offsets, strided layouts, every sampling rule and
confidence, tiny and huge temperatures, attention shapes at and around its tiles, lengths, packed
sequences and every kernel variant, the three emulated thread schedules, L2 prefetch and async
copies on and off.

- dllm's CUDA kernels, run by the emulator (tests/cuda_emulator), against the CPU ops. The sampling
  kernels share Philox keys with the CPU ops, so draws agree one to one; values agree to float32
  accuracy (attention: against float64, test_attention's rule); an input one side rejects, the
  other must reject with the same message.
- The CPU ops (`reference_*`) against the float64 references of what both kernels share: greedy
  proposals, confidences, the deterministic commit rules, the losses and their gradients.

    python fuzz_ops.py --minutes 30                  # random cases until the time is up (from tests/)
    python fuzz_ops.py --ops attention,sedd_step     # only these
    python fuzz_ops.py --case predict_masked:123     # one case again, its choices printed

test_random_calls.py runs the first seeds of each op, and the cases that found bugs, in the suite."""

import argparse
import contextlib
import os
import random
import sys
import time
import traceback

import torch

from cuda_emulator.build import load
from dllm.reference.unmask import above, shifted
from test_cuda_emulated import ATTENTION_VARIABLES, ATTENTION_VARIANTS, DTYPES, SCHEDULES, EmulatedAttention

GROUP = 2048  # kCategoricalGroup: the streaming kernels' group of the vocabulary


class Case:
    """One random call: its choices are drawn from the seed and recorded, so a failure prints them."""

    def __init__(self, op, seed):
        self.op, self.seed = op, seed
        self.rng = random.Random(f"{op}:{seed}")
        self.gen = torch.Generator().manual_seed(seed)
        self.choices = {}

    def pick(self, name, options):
        value = self.rng.choice(options)
        self.choices[name] = value
        return value

    def draw(self, name, value):
        self.choices[name] = value
        return value

    def __str__(self):
        return f"{self.op}:{self.seed} " + ", ".join(f"{k}={v}" for k, v in self.choices.items())


def vocabulary(case, small_only=False):
    """Sizes that end a 16-byte chunk, a 32-element batch or a group exactly or one past."""
    near = [1, 2, 7, 8, 9, 31, 32, 33, 255, 256, 257, GROUP - 1, GROUP, GROUP + 1, 2 * GROUP + 7, 3001]
    if not small_only:
        near += [5 * GROUP, 5 * GROUP + 1, 40009]
    return case.draw("V", case.rng.choice(near) if case.rng.random() < 0.7 else case.rng.randint(2, 5000))


LOGITS = ["randn", "wide", "ties", "flat", "offset", "minus-inf runs", "one spike"]


def logits_values(case, shape, dtype, kinds=LOGITS):
    kind = case.pick("logits", kinds)
    g = case.gen
    if kind == "randn":
        v = torch.randn(shape, generator=g) * 2
    elif kind == "wide":
        v = torch.randn(shape, generator=g) * 30
    elif kind == "ties":
        v = torch.randint(-2, 3, shape, generator=g).float()
    elif kind == "flat":
        v = torch.zeros(shape)
    elif kind == "offset":
        v = torch.randn(shape, generator=g) + case.pick("offset", [1e4, -1e4, 1e7])
    elif kind == "minus-inf runs":
        v = torch.randn(shape, generator=g) * 2
        V = shape[-1]
        a = case.rng.randint(0, V - 1)
        b = case.rng.randint(a, V)
        v[..., a:b] = float("-inf")
        v[..., case.rng.randint(0, V - 1)] = 0.5  # a finite value survives in every row
    else:
        v = torch.randn(shape, generator=g)
        v[..., case.rng.randint(0, shape[-1] - 1)] = 40.0
    return v.to(dtype)


def layout(case, t, name="layout"):
    """t itself, a view of it at an element offset into a wider buffer, or with its leading dims
    transposed in memory; the values are the same."""
    how = case.pick(name, ["contiguous", "offset", "transposed"] if t.dim() >= 2 else ["contiguous"])
    if how == "offset":
        wide = torch.empty(*t.shape[:-1], t.shape[-1] + 3, dtype=t.dtype)
        wide[..., 1:-2] = t
        return wide[..., 1:-2]
    if how == "transposed" and t.dim() >= 3:
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    if how == "transposed":
        return t.t().contiguous().t()
    return t


def draw_tensor(case):
    """A generator for the case's tensors other than its logits, the same stream at every call."""
    return torch.Generator().manual_seed(case.seed * 7919 + 1)


def same(case, run_emu, run_cpu, compare):
    """Runs both; both raise the same error, or both return and compare() accepts the results."""
    try:
        want = run_cpu()
    except Exception as error:  # the reference rejects: the kernel must say the same
        try:
            run_emu()
        except Exception as other:
            assert type(other) is type(error) and str(other) == str(error), f"{case}\nCPU: {error}\nemulated: {other}"
            return
        raise AssertionError(f"{case}\nCPU raised {type(error).__name__}: {error}\nthe emulated op did not")
    before = case.emulator.grids_run()
    got = run_emu()
    assert case.emulator.grids_run() > before, f"{case}\nthe emulated op launched no kernel"
    compare(got, want)


def close(a, b, case, what, rtol=1e-5, atol=1e-6):
    try:
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError as e:
        raise AssertionError(f"{case}\n{what}: {e}") from None


def equal(a, b, case, what):
    if not torch.equal(a, b):
        where = (a != b).nonzero()[:5].tolist()
        raise AssertionError(f"{case}\n{what} differ at {where}: got {a.flatten()[:8].tolist()}..., "
                             f"want {b.flatten()[:8].tolist()}...")


def temperature_value(case):
    return case.pick("temperature", [0.0, 0.0, 1.0, 1.0, 0.7, 2.5, 1e-3, 1e-30, 1e-40, 1e30])


# ---- the ops ----------------------------------------------------------------------------------


def fuzz_predict_masked(case, EMU, CPU):
    V = vocabulary(case)
    B, L = case.draw("B", case.rng.randint(1, 3)), case.draw("L", case.rng.randint(1, 12))
    dtype = case.pick("dtype", DTYPES)
    logits = layout(case, logits_values(case, (B, L, V), dtype))
    mask = case.pick("mask_id", sorted({0, V - 1, min(GROUP, V - 1), min(GROUP - 1, V - 1), V // 2}))
    g = draw_tensor(case)
    x = torch.randint(0, V, (B, L), generator=g)
    x[torch.rand(B, L, generator=g) < case.rng.choice([0.0, 0.5, 1.0])] = mask
    if case.pick("bad token", [False] * 9 + [True]) and L > 0:
        x[0, 0] = case.rng.choice([V, -1])
    x = layout(case, x, "x layout")
    temperature = temperature_value(case)
    top_k = case.pick("top_k", [0, 0, 1, 2, 50, V - 1, V + 5])
    top_p = case.pick("top_p", [1.0, 1.0, 0.9, 0.5, 1e-6, 0.9999, 0.999999])
    confidence = case.pick("confidence", ["prob", "margin", "entropy", "random"])
    shift = case.pick("shift", [0, 1])
    source = case.pick("confidence_from", ["model", "proposal"])
    args = (logits, x, mask, temperature, top_k, top_p, confidence, shift, source)
    seed = case.rng.randint(0, 2**31)
    if top_p < 1.0 and top_p_margin(shifted(logits, shift)[x == mask], mask, temperature or 1.0, top_p) < 1e-6:
        return  # the two sides' float32 sums decide whether a token whose mass above is that close stays

    def compare(got, want):
        equal(got[0], want[0], case, "x0")
        close(got[1], want[1], case, "conf")

    same(case, lambda: EMU.predict_masked(*args, generator=torch.Generator().manual_seed(seed)),
         lambda: CPU.predict_masked(*args, generator=torch.Generator().manual_seed(seed)), compare)


def fuzz_sample_categorical(case, EMU, CPU):
    V = vocabulary(case)
    R = case.draw("rows", case.rng.randint(1, 9))
    dtype = case.pick("dtype", DTYPES)
    logits = layout(case, logits_values(case, (R, V), dtype))
    per_row = case.pick("per-row temperature", [False, True])
    scalar = temperature_value(case)
    temperature = None
    if per_row:
        temperature = torch.rand(R, generator=draw_tensor(case)) * 2
        temperature[:: case.rng.randint(1, 3)] = 0.0
    seed = case.rng.randint(0, 2**31)

    def compare(got, want):
        equal(got[0], want[0], case, "tokens")
        close(got[1], want[1], case, "logprob")

    same(case, lambda: EMU.sample_categorical(logits, temperature, scalar, generator=torch.Generator().manual_seed(seed)),
         lambda: CPU.sample_categorical(logits, temperature, scalar, generator=torch.Generator().manual_seed(seed)),
         compare)


def sedd_inputs(case, kinds=LOGITS):
    K = case.draw("K", case.rng.choice([2, 3, 37, GROUP, GROUP + 1, 3001, 50258]))
    B, L = case.draw("B", case.rng.randint(1, 3)), case.draw("L", case.rng.randint(1, 9))
    dtype = case.pick("dtype", DTYPES)
    logits = layout(case, logits_values(case, (B, L, K), dtype, kinds))
    graph = case.pick("graph", ["absorb", "uniform"])
    g = draw_tensor(case)
    x = torch.randint(0, K, (B, L), generator=g)
    if graph == "absorb":
        x[torch.rand(B, L, generator=g) < 0.6] = K - 1
    sigma = torch.rand(B, generator=g) * case.rng.choice([0.1, 3.0, 30.0]) + 1e-4
    dsig = torch.rand(B, generator=g) * case.rng.choice([0.01, 1.0, 20.0])
    return logits, x, sigma, dsig, graph


def fuzz_sedd_step(case, EMU, CPU):
    logits, x, sigma, dsig, graph = sedd_inputs(case)
    method = case.pick("method", ["analytic", "euler", "denoise"])
    sbs = case.pick("scale_by_sigma", [True, False])
    seed = case.rng.randint(0, 2**31)

    def run(ops):
        return ops.sedd_step(logits, x, sigma, dsig, graph=graph, method=method, scale_by_sigma=sbs,
                             generator=torch.Generator().manual_seed(seed))

    same(case, lambda: run(EMU), lambda: run(CPU), lambda got, want: equal(got, want, case, "tokens"))


def fuzz_score_entropy_loss(case, EMU, CPU):
    logits, x_t, sigma, dsigma, graph = sedd_inputs(case)
    x0 = torch.randint(0, logits.shape[-1] - (graph == "absorb"), x_t.shape, generator=draw_tensor(case))
    if graph == "uniform":
        x_t = torch.where(torch.rand(x_t.shape, generator=draw_tensor(case)) < 0.5, x0, x_t)
    sbs = case.pick("scale_by_sigma", [True, False])
    grad = torch.rand(logits.shape[0], generator=draw_tensor(case)) + 0.5

    def run(ops):
        loss = ops.score_entropy_loss(logits, x_t, x0, sigma, dsigma, graph=graph, scale_by_sigma=sbs)
        dlogits = ops.score_entropy_loss_backward(grad, logits, x_t, x0, sigma, dsigma, graph=graph, scale_by_sigma=sbs)
        return loss, dlogits

    def compare(got, want):
        close(got[0], want[0], case, "loss", rtol=1e-4, atol=1e-4)
        # a batch whose loss overflowed has gradients at float32's edge, inf on one side or not
        finite = torch.isfinite(want[0])
        close(got[1][finite].float(), want[1][finite].float(), case, "dlogits",
              rtol=2e-2 if logits.dtype != torch.float32 else 1e-4, atol=1e-4)

    same(case, lambda: run(EMU), lambda: run(CPU), compare)


def fuzz_masked_diffusion_loss(case, EMU, CPU):
    V = vocabulary(case, small_only=True)
    B, L = case.draw("B", case.rng.randint(1, 3)), case.draw("L", case.rng.randint(1, 12))
    dtype = case.pick("dtype", DTYPES)
    logits = layout(case, logits_values(case, (B, L, V), dtype))
    mask = case.pick("mask_id", sorted({0, V - 1, V // 2}))
    g = draw_tensor(case)
    x0 = torch.randint(0, V, (B, L), generator=g)
    x_t = torch.where(torch.rand(B, L, generator=g) < 0.6, torch.full_like(x0, mask), x0)
    weight = torch.rand(B, generator=g) * 3
    grad = torch.rand(B, generator=g) + 0.5

    def run(ops):
        loss, lse = ops.masked_diffusion_loss(logits, x_t, x0, weight, mask_id=mask)
        return loss, lse, ops.masked_diffusion_loss_backward(grad, logits, lse, x_t, x0, weight, mask_id=mask)

    def compare(got, want):
        close(got[0], want[0], case, "loss", rtol=1e-4, atol=1e-4)
        close(got[1], want[1], case, "lse", rtol=1e-5, atol=1e-5)
        close(got[2].float(), want[2].float(), case, "dlogits", rtol=2e-2 if dtype != torch.float32 else 1e-4, atol=1e-4)

    same(case, lambda: run(EMU), lambda: run(CPU), compare)


def commit_inputs(case, longest):
    """x with a random share masked (mask id 7), proposals x0, confidences with or without ties."""
    B, L = case.draw("B", case.rng.randint(1, 4)), case.draw("L", case.rng.randint(1, longest))
    g = draw_tensor(case)
    x = torch.randint(0, 50, (B, L), generator=g)
    x[torch.rand(B, L, generator=g) < case.rng.choice([0.0, 0.3, 1.0])] = 7
    x0 = torch.randint(100, 200, (B, L), generator=g)
    conf = torch.rand(B, L, generator=g)
    if case.pick("ties", [True, False]):
        levels = case.pick("levels", [1, 4, 64])
        conf = (conf * levels).round() / levels
    return x, x0, conf, g


def fuzz_commit_tokens(case, EMU, CPU):
    x, x0, conf, g = commit_inputs(case, 1100)
    (B, L), mask = x.shape, 7
    rule_name = case.pick("rule", ["num_tokens", "threshold", "prob"])
    rule = {}
    if rule_name == "num_tokens":
        rule["num_tokens"] = torch.randint(0, L + 3, (B,), generator=g)
        rule["position_temperature"] = case.pick("position_temperature", [0.0, 0.0, 0.3, 5.0, 1e-40])
    elif rule_name == "threshold":
        rule["threshold"] = case.pick("threshold", [0.0, 0.5, 0.9, 1.0, 2.0])
    else:
        rule["prob"] = (torch.rand(B, generator=g) * case.rng.choice([0.0, 1.0, 2.0])).clamp(max=1.0)
    if case.pick("window", [False, True]):
        start = torch.randint(0, L + 1, (B,), generator=g)
        end = start + torch.randint(0, L + 1, (B,), generator=g)
        rule["window"] = torch.stack([start, end.clamp(max=L)], 1)
    x0, conf = layout(case, x0, "x0 layout"), layout(case, conf, "conf layout")
    seed = case.rng.randint(0, 2**31)
    x_emu, x_cpu = x.clone(), x.clone()

    def compare(got, want):
        equal(got, want, case, "committed")
        equal(x_emu, x_cpu, case, "x")

    same(case, lambda: EMU.commit_tokens(x_emu, x0, conf, mask, generator=torch.Generator().manual_seed(seed), **rule),
         lambda: CPU.commit_tokens(x_cpu, x0, conf, mask, generator=torch.Generator().manual_seed(seed), **rule),
         compare)


def fuzz_sample_transition(case, EMU, CPU):
    K = case.draw("K", case.rng.choice([2, 3, 37, 50258]))
    B, L = case.draw("B", case.rng.randint(1, 4)), case.draw("L", case.rng.randint(1, 300))
    graph = case.pick("graph", ["absorb", "uniform"])
    g = draw_tensor(case)
    x0 = torch.randint(0, K - (graph == "absorb"), (B, L), generator=g)
    sigma = torch.rand(B, generator=g) * case.rng.choice([0.01, 1.0, 50.0])
    seed = case.rng.randint(0, 2**31)

    def run(ops):
        return ops.sample_transition(x0, sigma, graph=graph, num_classes=K, generator=torch.Generator().manual_seed(seed))

    same(case, lambda: run(EMU), lambda: run(CPU), lambda got, want: equal(got, want, case, "x_t"))


def fuzz_rotary(case, EMU, CPU):
    """Bit for bit as the CPU op: both round the float32 rotation once."""
    from dllm.models.layers import Rotary

    B, S, H = case.draw("B", case.rng.randint(1, 3)), case.draw("S", case.rng.randint(1, 40)), case.draw(
        "H", case.rng.randint(1, 9))
    D = case.draw("D", case.rng.choice([2, 8, 64, 70, 128, 2 * case.rng.randint(1, 80)]))
    dtype = case.pick("dtype", DTYPES)
    g = draw_tensor(case)
    how = case.pick("x", ["contiguous", "fused qkv", "misaligned"])
    if how == "fused qkv":
        x = torch.randn(B, S, 3, H, D, generator=g).to(dtype)[:, :, 1]
    elif how == "misaligned":
        x = torch.randn(B, S, H, D + 1, generator=g).to(dtype)[..., 1:]
    else:
        x = torch.randn(B, S, H, D, generator=g).to(dtype)
    per_sequence = case.pick("per-sequence tables", [False, True])
    positions = torch.randint(0, 5000, (B, S) if per_sequence else (S,), generator=g)
    cos, sin = Rotary(D).at(positions)
    inverse = case.pick("inverse", [False, True])
    same(case, lambda: EMU.rotary(x, cos, sin, inverse), lambda: CPU.rotary(x, cos, sin, inverse),
         lambda got, want: equal(got, want, case, "rotated"))


def fuzz_adaln(case, EMU, CPU):
    """The residual stream bit for bit as the CPU op's; the norm against float64."""
    from test_adaln import ARITHMETIC, ROUNDING, adaln_reference

    B, S = case.draw("B", case.rng.randint(1, 3)), case.draw("S", case.rng.randint(1, 20))
    dim = case.draw("dim", case.rng.choice([1, 2, 37, 64, 70, 130, 256, 1096, case.rng.randint(1, 1500)]))
    dtype = case.pick("dtype", DTYPES)
    g = draw_tensor(case)
    x = (case.pick("offset", [0.0, 3.0, 1e3]) + 2 * torch.randn(B, S, dim, generator=g)).to(dtype)
    update = torch.randn(B, S, dim, generator=g).to(dtype)
    weight = 1 + 0.5 * torch.randn(dim, generator=g)
    shift, scale, gate = (torch.randn(B, dim, generator=g).to(case.pick(f"{n} dtype", [torch.bfloat16, torch.float32]))
                          for n in ("shift", "scale", "gate"))
    eps = case.pick("eps", [1e-6, 1e-5, 0.5])
    residual = case.pick("op", ["adaln", "adaln_residual"]) == "adaln_residual"

    def run(ops):
        if residual:
            return ops.adaln_residual(x, update, gate, weight, shift, scale, eps)
        return (x, ops.adaln(x, weight, shift, scale, eps))

    def compare(got, want):
        equal(got[0], want[0], case, "x_next")
        # float32's own error grows with a row's max |x| over its spread (an offset of 1e3, two
        # nearly equal elements) and, as sums of dim terms round, with sqrt(dim): per row, test_adaln's
        # bound plus that
        rows = got[0].double()
        spread = (rows.var(-1, unbiased=False) + eps).sqrt()
        bound = ROUNDING[dtype] + ARITHMETIC + 4 * 2**-24 * rows.abs().amax(-1) / spread * dim**0.5
        exact = adaln_reference(got[0], weight, shift, scale, eps)
        error = ((got[1].double() - exact).abs() / exact.abs().clamp(min=1.0)).amax(-1)
        assert got[1].dtype == dtype and (error <= bound).all(), f"{case}\nnorm: error {(error / bound).max():.3g}x the bound"
    same(case, lambda: run(EMU), lambda: run(CPU), compare)


def tensor_core_rounding(q, k, v, g, kv_len, q_len, scale):
    """Per element of dq, dk, dv, what rounding P and dS to q's dtype adds to them: the kernels'
    tensor-core products take those as bfloat16 / float16 operands (FlashAttention-2's), and where
    the products cancel (dq small beside |dS| |K|) that rounding is what remains. float64."""
    B, Sq, H, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    qf, kf, vf, gf = (t.detach().double().transpose(1, 2) for t in (q, k, v, g))
    kf, vf = kf.repeat_interleave(H // Hkv, 1), vf.repeat_interleave(H // Hkv, 1)
    s = (qf * scale) @ kf.transpose(-1, -2)
    if kv_len is not None:
        keep = torch.arange(Sk)[None, :] < kv_len[:, None]
        s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
        vf = vf.masked_fill(~keep[:, None, :, None], 0)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    if q_len is not None:  # output rows past q_len are constant: no gradient flows from them
        gf = gf * (torch.arange(Sq)[None, :] < q_len[:, None])[:, None, :, None]
    ds = (p * (gf @ vf.transpose(-1, -2) - (gf * (p @ vf)).sum(-1, keepdim=True))).abs()
    u = 2.0**-8 if q.dtype == torch.bfloat16 else 2.0**-11
    fold = lambda t: t.unflatten(1, (Hkv, H // Hkv)).sum(2)  # noqa: E731 (GQA: a kv head's query heads)
    dq = u * scale * (ds @ kf.abs())
    dk = u * scale * fold(ds.transpose(-1, -2) @ qf.abs())
    dv = u * fold(p.transpose(-1, -2) @ gf.abs())
    return [t.transpose(1, 2) for t in (dq, dk, dv)]


def attention_gradients_agree(out, want, yardsticks, inputs, lengths, softmax_scale):
    """dq, dk, dv within 3x the larger float64 error of plain PyTorch and of the CPU op, plus twice
    the rounding of the tensor cores' operands. The CPU op's backward is the kernels' algorithm:
    delta = rowsum(dO * O) from the output as stored (FlashAttention's), so in nearly one-hot rows
    (a large scale times |q| |k|) dq and dk carry the output's rounding, which PyTorch's softmax
    backward does not; and it keeps P and dS in float32, where the kernels round them for the
    tensor cores, which shows where dq or dk cancel. test_attention keeps to inputs where neither
    shows."""
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    grads = torch.autograd.grad(out, inputs, g)
    ref_grads = torch.autograd.grad(want, inputs, g.double(), retain_graph=True)  # the packed layout's turn next
    other = [torch.autograd.grad(y, inputs, g.to(y.dtype), retain_graph=True) for y in yardsticks]
    rounding = tensor_core_rounding(*inputs, g, *lengths, softmax_scale)
    # the floor relative to the largest gradient (test_attention's), and to the scores' scale:
    # with one key dk is a cancellation of dP - delta, exactly 0, whose terms grow with it
    floor = 1e-5 * max(1.0, max(r.abs().max().item() for r in ref_grads)) * max(1.0, softmax_scale * out.shape[-1] ** 0.5)
    for i, name in enumerate("qkv"):
        err = (grads[i].double() - ref_grads[i]).abs()
        worst = max((o[i].double() - ref_grads[i]).abs().max().item() for o in other)
        excess = (err - 3 * worst - floor - 2 * rounding[i]).max().item()
        assert excess <= 0, f"d{name}: max error {err.max():.3g}, plain PyTorch's or the CPU op's {worst:.3g}"


def fuzz_attention(case, EMU, CPU):
    """Forward and backward against float64 under FlashAttention's rule (test_attention.check),
    and the packed layout's forward."""
    from test_attention import EXTREME_SCORES, check
    import dllm
    from dllm.reference.attention import attention as reference

    B, Hkv = case.draw("B", case.rng.randint(1, 3)), case.draw("Hkv", case.rng.randint(1, 2))
    H = case.draw("H", Hkv * case.rng.randint(1, 3))
    Sq = case.draw("Sq", case.rng.choice([1, 2, 4, 5, 17, 64, 65, 130, case.rng.randint(1, 200)]))
    # past 256 keys, 5 to 64 queries split the keys into chunks
    Sk = case.draw("Sk", case.rng.choice([1, 63, 64, 65, 128, 129, 700, case.rng.randint(1, 300)]))
    D, dtype = case.pick("D", [64, 128]), case.pick("dtype", [torch.bfloat16, torch.float16])
    scores = case.pick("scores", ["random", "random", *EXTREME_SCORES])
    if scores == "random":
        g = draw_tensor(case)
        q, k, v = (torch.randn(B, S, h, D, generator=g).to(dtype) for S, h in ((Sq, H), (Sk, Hkv), (Sk, Hkv)))
    else:
        q, k, v = (t.detach() for t in EXTREME_SCORES[scores](B, Sq, Sk, H, Hkv, D, dtype, "cpu"))
    kv_len = q_len = None
    if case.pick("lengths", [False, True]):
        g = draw_tensor(case)
        kv_len = torch.randint(0, Sk + 1, (B,), generator=g, dtype=torch.int32)
        q_len = torch.randint(1, Sq + 1, (B,), generator=g, dtype=torch.int32)
    scale = case.pick("scale", [D**-0.5, 0.9 * D**-0.5, 1.0])
    variant = case.pick("kernel", list(ATTENTION_VARIANTS))
    with environment(**dict(zip(ATTENTION_VARIABLES, ATTENTION_VARIANTS[variant]))):
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        before = case.emulator.grids_run()
        out = EmulatedAttention.apply(q, k, v, kv_len, q_len, None, None, Sq, Sk, scale)
        assert case.emulator.grids_run() > before, f"{case}\nthe emulated op launched no kernel"
        want = reference(q, k, v, kv_len, q_len, softmax_scale=scale)
        low = reference(q, k, v, kv_len, q_len, softmax_scale=scale, upcast=False)
        cpu_out = dllm.ops.attention(q, k, v, kv_len=kv_len, q_len=q_len, softmax_scale=scale)
        try:
            check(out, want, low, 2, "out")
            attention_gradients_agree(out, want, (low, cpu_out), (q, k, v), (kv_len, q_len), scale)
            if kv_len is not None:  # the same sequences packed (attention_varlen), forward and backward
                rows, keys = q_len.tolist(), kv_len.tolist()
                # packed rows that no sequence holds, before the first (cu_seqlens[0] > 0) and after the last
                lead, tail = case.pick("lead", [0, 0, 2]), case.pick("tail", [0, 0, 3])
                g = draw_tensor(case)
                starts = lambda n: torch.tensor([lead, *(lead + torch.tensor(n).cumsum(0)).tolist()], dtype=torch.int32)  # noqa: E731
                spare = lambda n, t: torch.randn(n, *t.shape[2:], generator=g).to(t.dtype)  # noqa: E731
                pack = lambda t, n: torch.cat([spare(lead, t), *(t[b, :m] for b, m in enumerate(n)), spare(tail, t)])  # noqa: E731
                inputs = pack(q, rows), pack(k, keys), pack(v, keys)
                packed = EmulatedAttention.apply(*inputs, None, None, starts(rows), starts(keys), Sq, Sk, scale)
                grads = torch.autograd.grad(packed, inputs, torch.randn(packed.shape, generator=g).to(packed),
                                            retain_graph=True)
                outside = lambda t: torch.cat([t[:lead], t[len(t) - tail:]])  # noqa: E731
                assert all(outside(t).eq(0).all() for t in (packed, *grads)), "rows of no sequence are not zero"
                # back in the padded layout, zeros past q_len as the reference has them
                unpacked = torch.stack([torch.cat([part, part.new_zeros(Sq - n, H, D)])
                                        for part, n in zip(packed[lead:len(packed) - tail].split(rows), rows)])
                check(unpacked, want, low, 2, "packed out")
                attention_gradients_agree(unpacked, want, (low, cpu_out), (q, k, v), (kv_len, q_len), scale)
        except AssertionError as e:
            raise AssertionError(f"{case}\n{e}") from None


@contextlib.contextmanager
def environment(**values):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---- the CPU ops against their float64 references ------------------------------------------------
# (a rule both kernels share, in dllm/*.h, would agree with itself above)


def within_float32(case, what, got, exact, float32, floor=1e-6):
    """got within twice plain PyTorch's float32 error of the float64 value, plus a floor."""
    if got.numel() == 0:
        return
    err = (got.double() - exact).abs().max().item()
    torch_err = (float32.double() - exact).abs().max().item()
    assert err <= 2 * torch_err + floor, f"{case}\n{what}: error {err:.3g} against plain PyTorch's {torch_err:.3g}"


def top_p_margin(rows, mask_id, temperature, top_p):
    """How close to top_p the float64 mass above any token of the rows comes."""
    z = rows.double().clone()
    z[:, mask_id] = float("-inf")
    z = z / temperature
    mass = above(z)[2][torch.isfinite(z)]
    return (mass - top_p).abs().min().item() if mass.numel() else float("inf")


def fuzz_reference_predict_masked(case, EMU, CPU):
    """Greedy proposals exactly; the model's confidence, or the (tempered, filtered) proposal's."""
    from dllm.reference import unmask as ref

    V = max(2, vocabulary(case, small_only=True))
    B, L = case.draw("B", case.rng.randint(1, 3)), case.draw("L", case.rng.randint(1, 12))
    dtype = case.pick("dtype", DTYPES)
    logits = layout(case, logits_values(case, (B, L, V), dtype))
    mask = case.pick("mask_id", sorted({0, V - 1, V // 2}))
    x = torch.randint(0, V, (B, L), generator=draw_tensor(case))
    x[torch.rand(B, L, generator=draw_tensor(case)) < 0.7] = mask
    kind = case.pick("confidence", ["prob", "margin", "entropy"])
    shift = case.pick("shift", [0, 1])
    source = case.pick("confidence_from", ["model", "proposal"])
    temperature, top_k, top_p = 0.0, 0, 1.0
    if source == "proposal":
        temperature = case.pick("temperature", [0.0, 0.5, 1.0, 1.3])
        top_k = case.pick("top_k", [0, 1, 5, V + 1])
        top_p = case.pick("top_p", [1.0, 0.9, 0.5])
    if (logits.isnan() | (logits == float("inf"))).any():
        return  # an offset past float16's range: an error, which the emulated cases compare
    rows = ref.shifted(logits, shift)
    masked = x == mask
    if (rows[masked].float().index_fill(-1, torch.tensor([mask]), float("-inf")) == float("-inf")).all(-1).any():
        return  # a masked position with nothing to propose: an error, which the emulated cases compare
    if top_p < 1.0 and top_p_margin(rows[masked], mask, temperature or 1.0, top_p) < 1e-6:
        return  # float32 sums decide whether a token whose mass above is that close to top_p stays
    x0, conf = CPU.predict_masked(logits, x, mask, temperature, top_k, top_p, kind, shift, source,
                                  generator=torch.Generator().manual_seed(case.seed))
    equal(x0[~masked], x[~masked], case, "unmasked x0")
    assert (conf[~masked] == float("-inf")).all() and not (x0[masked] == mask).any(), case
    if source == "model":
        rx0, rconf = ref.predict_masked_greedy(logits, x, mask, kind, shift)
        equal(x0, rx0, case, "greedy x0")
        float32 = ref.confidence(rows.float(), rx0, mask, kind)
    else:
        rconf = ref.proposal_confidence(rows, x0, mask, kind, temperature, top_k, top_p)
        float32 = ref.proposal_confidence(rows.float(), x0, mask, kind, temperature, top_k, top_p)
    # float32 math against float64, over values up to 1 / temperature times larger
    floor = 1e-5 * max(1.0, 1.0 / temperature if temperature else 1.0)
    within_float32(case, "conf", conf[masked], rconf[masked], float32[masked], floor)


def fuzz_reference_commit_tokens(case, EMU, CPU):
    """The deterministic rules (top-k, threshold; windows) exactly as LLaDA's and Fast-dLLM's loops."""
    from dllm.reference import unmask as ref

    x, x0, conf, g = commit_inputs(case, 300)
    (B, L), mask = x.shape, 7
    rule = {}
    if case.pick("rule", ["num_tokens", "threshold"]) == "num_tokens":
        rule["num_tokens"] = torch.randint(0, L + 3, (B,), generator=g)
    else:
        rule["threshold"] = case.pick("threshold", [0.0, 0.5, 0.9, 1.0, 2.0])
    if case.pick("window", [False, True]):
        start = torch.randint(0, L + 1, (B,), generator=g)
        rule["window"] = torch.stack([start, (start + torch.randint(0, L + 1, (B,), generator=g)).clamp(max=L)], 1)
    want = ref.commit_tokens(x, x0, conf, mask, **rule)
    got = x.clone()
    committed = CPU.commit_tokens(got, x0, conf, mask, **rule)
    equal(got, want, case, "x")
    equal(committed, (want != x).sum(1), case, "committed")


def fuzz_reference_losses(case, EMU, CPU):
    """Both losses and their gradients (the backward ops) against float64 autograd of the references."""
    from dllm.sedd import reference as ref

    # Not near 1e7: the log-sum-exp the MDLM backward reuses is a float32, whose spacing there (1)
    # moves every probability of the gradient by up to e^0.5 (and at 1e4, by 1e-3 of itself).
    kinds = [kind for kind in LOGITS if kind != "offset"]
    kind = case.pick("loss", ["score_entropy", "masked_diffusion"])
    if kind == "score_entropy":
        logits, x_t, sigma, dsigma, graph = sedd_inputs(case, kinds)
        x0 = torch.randint(0, logits.shape[-1] - (graph == "absorb"), x_t.shape, generator=draw_tensor(case))
        sbs = case.pick("scale_by_sigma", [True, False])
        loss = lambda ops, lg: ops.score_entropy_loss(lg, x_t, x0, sigma, dsigma, graph=graph, scale_by_sigma=sbs)  # noqa: E731
        grad = lambda ops, g, lg: ops.score_entropy_loss_backward(g, lg, x_t, x0, sigma, dsigma, graph=graph,  # noqa: E731
                                                                   scale_by_sigma=sbs)
        exact = lambda lg: ref.score_entropy_loss(lg, x_t, x0, sigma.double(), dsigma.double(), graph=graph,  # noqa: E731
                                                  scale_by_sigma=sbs)
    else:
        V = max(2, vocabulary(case, small_only=True))
        B, L = case.draw("B", case.rng.randint(1, 3)), case.draw("L", case.rng.randint(1, 12))
        logits = layout(case, logits_values(case, (B, L, V), case.pick("dtype", DTYPES), kinds))
        mask = case.pick("mask_id", sorted({0, V - 1, V // 2}))
        g = draw_tensor(case)
        x0 = torch.randint(0, V, (B, L), generator=g).masked_fill_(torch.rand(B, L, generator=g) < 0.1, (mask + 1) % V)
        x0[x0 == mask] = (mask + 1) % V
        x_t = torch.where(torch.rand(B, L, generator=g) < 0.6, torch.full_like(x0, mask), x0)
        weight = torch.rand(B, generator=g) * 3
        loss = lambda ops, lg: ops.masked_diffusion_loss(lg, x_t, x0, weight, mask_id=mask)[0]  # noqa: E731
        grad = lambda ops, g, lg: ops.masked_diffusion_loss_backward(  # noqa: E731
            g, lg, ops.masked_diffusion_loss(lg, x_t, x0, weight, mask_id=mask)[1], x_t, x0, weight, mask_id=mask)
        exact = lambda lg: ref.masked_diffusion_loss(lg, x_t, x0, weight.double(), mask_id=mask)  # noqa: E731
    got = loss(CPU, logits)
    rows = logits.double().requires_grad_()
    want = exact(rows)
    if not torch.isfinite(want).all():
        return  # exp(logits) past float64 (wide logits): no reference
    # The kernels sum a row's K terms in a few float32 lanes, PyTorch pairwise: a relative 1e-4 of
    # the largest value bounds the first's rounding at K = 50258; a wrong term or branch is O(1).
    float32 = exact(logits.float())
    within_float32(case, "loss", got, want.detach(), float32, 1e-4 * max(1.0, want.abs().max().item()))
    if kind == "score_entropy" and ref.log_score(logits.double(), x_t, sigma.double(), sbs).max() > 88.0:
        return  # a score past float32's range: the kernels' gradients, the score times a weight, are inf
    g = torch.rand(logits.shape[0], generator=draw_tensor(case)) + 0.5
    (want_grad,) = torch.autograd.grad(want, rows, g.double())
    float32_rows = logits.float().requires_grad_()
    (float32_grad,) = torch.autograd.grad(exact(float32_rows), float32_rows, g)
    got_grad = grad(CPU, g, logits)
    # stored in the logits' dtype: one rounding more, and past the dtype's range an infinity
    # (autograd's NaN at a -inf logit, 0 * inf, is no reference: those entries are left out)
    known = ~want_grad.isnan()
    got_grad, want_grad, float32_grad = got_grad[known], want_grad[known], float32_grad[known]
    beyond = want_grad.to(logits.dtype).isinf()
    equal(got_grad[beyond], want_grad[beyond].to(logits.dtype), case, "gradients past the dtype's range")
    got_grad, want_grad, float32_grad = got_grad[~beyond].double(), want_grad[~beyond], float32_grad[~beyond].double()
    if want_grad.numel() == 0:
        return
    rounding = {torch.float32: 0.0, torch.bfloat16: 2**-8, torch.float16: 2**-11}[logits.dtype]
    err = ((got_grad - want_grad).abs() - rounding * want_grad.abs()).max().item()
    finite = float32_grad.isfinite()  # PyTorch's float32 overflows where float64 does not
    torch_err = (float32_grad - want_grad)[finite].abs().max().item() if finite.any() else 0.0
    floor = 1e-4 * max(1.0, want_grad.abs().max().item())
    assert err <= 2 * torch_err + floor, f"{case}\ngradient: error {err:.3g} against plain PyTorch's {torch_err:.3g}"


OPS = {name[len("fuzz_"):]: f for name, f in globals().items() if name.startswith("fuzz_")}


def run_case(emulator, op, seed, EMU, CPU):
    """One case; emulator None for the reference_* ops, which run no CUDA kernel."""
    case = Case(op, seed)
    case.emulator = emulator
    schedule = case.pick("schedule", list(SCHEDULES))
    prefetch = case.pick("L2 prefetch", ["0", "1"])
    # apart from the case's stream, so that the cases found before this switch keep their inputs
    async_copies = case.draw("async copies", random.Random(f"{op}:{seed}:async").choice(["0", "1"]))
    if emulator is None:
        assert op.startswith("reference_"), f"{op} runs in the emulator"
        OPS[op](case, EMU, CPU)
        return case
    emulator.configure(*SCHEDULES[schedule], seed)
    try:
        with environment(DLLM_L2_PREFETCH=prefetch, DLLM_ASYNC_COPIES=async_copies):
            OPS[op](case, EMU, CPU)
    finally:
        emulator.configure(0, True, 0, 0)
    return case


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--case", help="op:seed, one case again")
    args = parser.parse_args()
    ops = [args.case.split(":")[0]] if args.case else args.ops.split(",")
    emulator = None if all(op.startswith("reference_") for op in ops) else load()
    # Every torch.empty filled with NaN (integers: their maximum), as the emulated tests' poisoned_empty
    # does: an output row no kernel writes cannot pass on memory that happened to hold the right value.
    torch.use_deterministic_algorithms(True, warn_only=True)
    EMU, CPU = (torch.ops.dllm_emu if emulator else None), torch.ops.dllm
    run = lambda op, seed: run_case(None if op.startswith("reference_") else emulator, op, seed, EMU, CPU)  # noqa: E731
    if args.case:
        print(run(ops[0], int(args.case.split(":")[1])), "passed")
        return
    fuzz_for(args.minutes, args.seed, lambda i, seed: run(ops[i % len(ops)], seed),
             lambda i, seed: f"{ops[i % len(ops)]}:{seed}")


def fuzz_for(minutes, first_seed, run_one, label):
    """Runs run_one(i, first_seed + i) for i = 0, 1, ... until the time is up, printing each
    failure under label(i, seed); exits 1 if any failed."""
    deadline, runs, failures = time.time() + 60 * minutes, 0, 0
    while time.time() < deadline:
        try:
            run_one(runs, first_seed + runs)
        except Exception:
            failures += 1
            print(f"FAILED {label(runs, first_seed + runs)}\n{traceback.format_exc()}", flush=True)
        runs += 1
    print(f"{runs} cases, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
