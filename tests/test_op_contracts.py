"""What every op promises beyond its values: non-contiguous inputs under torch.compile and opcheck,
no silent gradients, and clear errors for inputs of the wrong kind."""

import numpy
import pytest
import torch

from conftest import HAS_CUDA
from dllm import ops

V = 10


def transposed_tokens(B: int, L: int, high: int = V) -> torch.Tensor:
    return torch.randint(0, high, (L, B)).t()  # [B, L] with strides (1, B)


TOKEN_OPS = {
    "sedd_step": (lambda logits, x: ops.sedd_step(logits, x, 1.0, 0.3, graph="uniform", method="euler"),
                  lambda logits, x: (torch.ops.dllm.sedd_step.default, (logits, x, torch.ones(3), torch.full((3,), 0.3)),
                                     {"graph": "uniform", "method": "euler"})),
    "sample_transition": (lambda logits, x: ops.sample_transition(x, 0.5, graph="uniform", num_classes=V),
                          lambda logits, x: (torch.ops.dllm.sample_transition.default, (x, torch.full((3,), 0.5)),
                                             {"graph": "uniform", "num_classes": V})),
    "predict_masked": (lambda logits, x: ops.predict_masked(logits, x, mask_id=V - 1)[0],
                       lambda logits, x: (torch.ops.dllm.predict_masked.default, (logits, x, V - 1), {})),
}


@pytest.mark.parametrize("name", TOKEN_OPS)
def test_non_contiguous_tokens_under_compile_and_opcheck(name):
    call, op_args = TOKEN_OPS[name]
    logits, x = torch.randn(3, 4, V), transposed_tokens(3, 4)
    torch.manual_seed(0)
    eager = call(logits, x)
    torch.manual_seed(0)
    compiled = torch.compile(lambda a, b: call(a, b) + 0, fullgraph=True)(logits, x)
    assert compiled.is_contiguous() and torch.equal(eager, compiled)
    op, args, kwargs = op_args(logits, x)
    torch.library.opcheck(op, args, kwargs, test_utils=("test_schema", "test_faketensor"))


def test_second_derivatives_raise():
    q, k, v = (torch.randn(1, 5, 2, 8, requires_grad=True) for _ in range(3))
    dq, = torch.autograd.grad(ops.attention(q, k, v).square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match=r"gradient of dllm.ops.attention and attention_varlen \(no double backward"):
        torch.autograd.grad(dq.sum(), k)
    logits = torch.randn(2, 3, V, requires_grad=True)
    x_t, x0 = torch.full((2, 3), V - 1), torch.randint(0, V - 1, (2, 3))
    for loss in (ops.score_entropy_loss(logits, x_t, x0, torch.ones(2), torch.ones(2), graph="absorb"),
                 ops.masked_diffusion_loss(logits, x_t, x0, 1.0, mask_id=V - 1)):
        g, = torch.autograd.grad(loss.sum(), logits, create_graph=True)
        with pytest.raises(RuntimeError, match="no double backward"):
            g.square().sum().backward()


def test_log_sum_exp_outputs_are_not_differentiable():
    # attention_forward and masked_diffusion_loss return the log-sum-exp their backward reads; the
    # backward ignores its gradient, so a loss built on it must not silently get zeros (it did).
    q = torch.randn(1, 3, 2, 8, requires_grad=True)
    logits = torch.randn(2, 3, V, requires_grad=True)
    x_t, x0 = torch.full((2, 3), V - 1), torch.randint(0, V - 1, (2, 3))

    def attention_lse(q):
        return torch.ops.dllm.attention_forward(q, q, q, None, None, None, None, 0, 0, 0.3)

    def loss_lse(logits):
        return torch.ops.dllm.masked_diffusion_loss(logits, x_t, x0, torch.ones(2), mask_id=V - 1)

    torch._dynamo.reset()
    for fn, arg in ((attention_lse, q), (loss_lse, logits)):
        for f in (fn, torch.compile(fn, fullgraph=True, dynamic=True)):
            first, lse = f(arg)
            assert first.requires_grad and not lse.requires_grad
            with pytest.raises(RuntimeError, match="does not require grad"):
                lse.sum().backward()
            grad, = torch.autograd.grad(first.sum(), arg)  # the first output keeps its gradient
            assert grad.abs().sum() > 0


def test_sampler_outputs_are_not_differentiable():
    logits = torch.randn(2, 3, V, requires_grad=True)
    _, conf = ops.predict_masked(logits, torch.full((2, 3), V - 1), mask_id=V - 1)
    with pytest.raises(RuntimeError, match="predict_masked .its confidence output. is not differentiable"):
        conf.sum().backward()
    _, logprob = ops.sample_categorical(logits)
    with pytest.raises(RuntimeError, match="sample_categorical .its logprob output. is not differentiable"):
        logprob.sum().backward()


def test_inputs_of_the_wrong_kind_are_named():
    scalar = torch.tensor(5)
    with pytest.raises(ValueError, match="commit_tokens: x must be"):
        ops.commit_tokens(scalar, scalar, torch.tensor(1.0), mask_id=5, num_tokens=1)
    with pytest.raises(ValueError, match="batched inputs"):
        ops.sample_transition(scalar, 1.0, graph="absorb", num_classes=V)
    with pytest.raises(ValueError, match="positive head dimension"):
        ops.attention(*(torch.randn(1, 2, 1, 0) for _ in range(3)))
    x, x0, conf = torch.full((2, 5), V - 1), torch.randint(0, V - 1, (2, 5)), torch.rand(2, 5)
    with pytest.raises(TypeError, match="num_tokens must be an integer tensor, got Bool"):
        ops.commit_tokens(x, x0, conf, mask_id=V - 1, num_tokens=torch.tensor([True, True]))
    with pytest.raises(TypeError, match="window must be an integer tensor, got Float"):
        ops.commit_tokens(x, x0, conf, mask_id=V - 1, num_tokens=1, window=torch.tensor([[0.5, 3.7], [0.0, 5.0]]))
    q = torch.randn(5, 2, 8)
    with pytest.raises(TypeError, match="cu_seqlens must be an integer tensor"):
        ops.attention_varlen(q, q, q, torch.tensor([0.0, 2.5, 5.0]), torch.tensor([0, 2, 5]), 3, 3)
    with pytest.raises(TypeError, match="kv_len must be an integer tensor, got Bool"):
        ops.attention(q[None], q[None], q[None], kv_len=torch.tensor([True]))


def test_errors_blame_the_argument_at_fault():
    logits, x = torch.randn(2, 3, V), torch.full((2, 3), V - 1)
    with pytest.raises(ValueError, match=r"sigma\[1\] must be finite and > 0, and dsig\[1\] finite and >= 0"):
        ops.sedd_step(logits, x, torch.ones(2), torch.tensor([0.1, -0.1]), graph="absorb", method="euler")
    x0 = torch.randint(0, V - 1, (2, 3))
    x0[0, 1] = V + 2
    with pytest.raises(ValueError, match=r"position \[0, 1\] is outside the token range \(\[0, K\), K = logits"):
        ops.masked_diffusion_loss(logits, torch.full((2, 3), 3), x0, 1.0, mask_id=3)
    # score entropy's clean data holding the mask: the range of x0 is told apart from that of x_t
    x0[0, 1] = V - 1
    with pytest.raises(ValueError, match=r"x0, the clean data, never the mask: absorb \[0, K - 1\)"):
        ops.score_entropy_loss(logits, x, x0, 1.0, 1.0, graph="absorb")
    with pytest.raises(ValueError, match="threshold is NaN"):
        ops.commit_tokens(x.clone(), x0, torch.rand(2, 3), mask_id=V - 1, threshold=float("nan"))


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")
def test_a_cpu_tensor_beside_cuda_ones_is_named():
    """Dispatch picks the CUDA kernel when any argument is on CUDA, the main tensor (logits, q)
    on the CPU too: the binding names the argument, and the backward checks what it reads."""
    logits = torch.randn(2, 3, V)
    with pytest.raises(RuntimeError, match="temperature is on cuda:0 but logits is on cpu"):
        torch.ops.dllm.sample_categorical(logits.view(6, V), torch.ones(6, device="cuda"), 1.0)
    with pytest.raises(RuntimeError, match="sigma is on cuda:0 but logits is on cpu"):
        torch.ops.dllm.sedd_step(logits, torch.full((2, 3), V - 1), torch.ones(2, device="cuda"), torch.ones(2),
                                 graph="absorb", method="euler")
    q = torch.randn(1, 5, 2, 64, device="cuda", dtype=torch.bfloat16)  # CUDA: head dimension 64 or 128
    out, lse = torch.ops.dllm.attention_forward(q, q, q, None, None, None, None, 0, 0, 0.25)
    args = {"grad_out": torch.ones_like(out), "out": out, "lse": lse}
    for name in args:
        moved = {**args, name: args[name].cpu()}
        with pytest.raises(RuntimeError, match=f"{name} is on cpu but q is on cuda:0"):
            torch.ops.dllm.attention_backward(moved["grad_out"], q, q, q, moved["out"], moved["lse"], None, None, None,
                                              None, 0, 0, 0.25)
    x_t = torch.full((2, 3), V - 1)
    lse = torch.ops.dllm.masked_diffusion_loss(logits, x_t, x_t - 1, torch.ones(2), mask_id=V - 1)[1]
    with pytest.raises(RuntimeError, match="grad_loss is on cuda:0 but logits is on cpu"):
        torch.ops.dllm.masked_diffusion_loss_backward(torch.ones(2, device="cuda"), logits, lse, x_t, x_t - 1,
                                                      torch.ones(2), mask_id=V - 1)
    with pytest.raises(RuntimeError, match="lse is on cuda:0 but logits is on cpu"):
        torch.ops.dllm.masked_diffusion_loss_backward(torch.ones(2), logits, lse.cuda(), x_t, x_t - 1,
                                                      torch.ones(2), mask_id=V - 1)


def test_meta_tensors_are_not_mixed_with_real_ones():
    logits, x = torch.randn(2, 3, V), torch.full((2, 3), V - 1)
    with pytest.raises(RuntimeError, match=r"sedd_step: all tensors must be on one device, got \['cpu', 'meta'\]"):
        ops.sedd_step(logits, x, torch.ones(2, device="meta"), 0.1, graph="absorb", method="analytic")
    with pytest.raises(RuntimeError, match="commit_tokens: all tensors must be on one device"):
        ops.commit_tokens(x.clone(), torch.zeros(2, 3, dtype=torch.long, device="meta"), torch.rand(2, 3),
                          mask_id=V - 1, num_tokens=1)
    meta = ops.sedd_step(logits.to("meta"), x.to("meta"), 1.0, 0.1, graph="absorb", method="analytic")
    assert meta.device.type == "meta" and meta.shape == x.shape  # all on meta: shapes only


def _bad_calls():
    """One call per op whose arguments the kernel refuses from their metadata alone."""
    D, lg, x = torch.ops.dllm, torch.randn(2, 3, V), torch.full((2, 3), V - 1)
    q, one, cs = torch.randn(2, 3, 4, 8), torch.ones(2), torch.randn(3, 4)
    h, w = torch.randn(2, 3, 8), torch.randn(8)
    return {
        "sample_categorical temperature shape": (D.sample_categorical, (lg, torch.ones(7), 1.0), {}),
        "predict_masked int32 x": (D.predict_masked, (lg, x.int(), V - 1), {}),
        "predict_masked mask_id": (D.predict_masked, (lg, x, V), {}),
        "predict_masked confidence": (D.predict_masked, (lg, x, V - 1, 0.0, 0, 1.0, "bogus"), {}),
        "commit_tokens no rule": (D.commit_tokens, (x.clone(), x, lg[..., 0], V - 1), {}),
        "commit_tokens num_tokens shape": (D.commit_tokens, (x.clone(), x, lg[..., 0], V - 1, torch.ones(3, dtype=torch.long)), {}),
        "commit_tokens float64 conf": (D.commit_tokens, (x.clone(), x, lg[..., 0].double(), V - 1, None, 0.5), {}),
        "attention float64": (D.attention_forward, (q.double(), q.double(), q.double(), None, None, None, None, 0, 0, 0.3), {}),
        "attention GQA heads": (D.attention_forward, (q, q[:, :, :3], q[:, :, :3], None, None, None, None, 0, 0, 0.3), {}),
        "attention 3-d without cu_seqlens": (D.attention_forward, (q[0], q[0], q[0], None, None, None, None, 0, 0, 0.3), {}),
        "attention kv_len shape": (D.attention_forward, (q, q, q, torch.ones(3, dtype=torch.long), None, None, None, 0, 0, 0.3), {}),
        "attention_backward lse": (D.attention_backward, (q, q, q, q, q, torch.zeros(4, 5), None, None, None, None, 0, 0, 0.3), {}),
        "rotary odd D": (D.rotary, (q[..., :7], cs[:, :3], cs[:, :3]), {}),
        "rotary float64 tables": (D.rotary, (q, cs.double(), cs.double()), {}),
        "adaln weight shape": (D.adaln, (h, w[:7], h[:, 0], h[:, 0], 1e-5), {}),
        "adaln eps": (D.adaln, (h, w, h[:, 0], h[:, 0], 0.0), {}),
        "adaln_residual update dtype": (D.adaln_residual, (h, h.half(), h[:, 0], w, h[:, 0], h[:, 0], 1e-5), {}),
        "sedd_step method": (D.sedd_step, (lg, x, one, one), dict(graph="absorb", method="bogus")),
        "sedd_step sigma shape": (D.sedd_step, (lg, x, torch.ones(3), one), dict(graph="absorb", method="euler")),
        "score_entropy_loss int32 x0": (D.score_entropy_loss, (lg, x, x.int(), one, one), dict(graph="absorb")),
        # two faults: the kernel names the graph (ValueError) before it looks at sigma or grad_loss
        "score_entropy_loss graph and sigma": (D.score_entropy_loss, (lg, x, x, one.long(), one), dict(graph="bogus")),
        "score_entropy_loss_backward graph and grad_loss": (D.score_entropy_loss_backward, (one.long(), lg, x, x, one, one),
                                                            dict(graph="bogus", scale_by_sigma=True)),
        "masked_diffusion_loss mask_id": (D.masked_diffusion_loss, (lg, x, x, one), dict(mask_id=V)),
        "sample_transition num_classes": (D.sample_transition, (x, one), dict(graph="absorb", num_classes=1)),
    }


@pytest.mark.parametrize("name", _bad_calls())
def test_fake_kernels_refuse_what_the_kernels_refuse(name):
    # The fakes serve as the meta kernels and as torch.compile's: a call the CPU kernel refuses from
    # shapes, dtypes or scalar arguments must raise the same kind of error on meta tensors, not
    # return outputs (they returned them for all of these).
    op, args, kwargs = _bad_calls()[name]
    with pytest.raises(Exception) as cpu:
        op(*args, **kwargs)
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(type(cpu.value)):
        op(*meta, **kwargs)


def test_opcheck_of_the_variants_the_per_op_tests_leave_out():
    # The per-op opchecks cover the common calls; these are the argument variants they do not:
    # commit_tokens' prob / window / position_temperature, attention with q_len, Sq != Sk, a
    # non-contiguous q and packed sequences, strided logits for the losses, and empty batches.
    D, g = torch.ops.dllm, torch.Generator().manual_seed(0)
    x, x0, conf = torch.full((2, 6), V - 1), torch.randint(0, V - 1, (2, 6), generator=g), torch.rand(2, 6, generator=g)
    window = torch.tensor([[0, 3], [2, 6]])
    seeded = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(D.commit_tokens.default, (x.clone(), x0, conf, V - 1, None, None, torch.tensor([0.5, 1.0]),
                                                    window), test_utils=seeded)
    torch.library.opcheck(D.commit_tokens.default, (x.clone(), x0, conf, V - 1, torch.tensor([1, 2]), None, None,
                                                    window.int(), 0.5), test_utils=seeded)
    torch.library.opcheck(D.commit_tokens.default, (x[:0].clone(), x0[:0], conf[:0], V - 1, None, 0.5))
    q = torch.randn(2, 4, 5, 8, generator=g).transpose(1, 2).requires_grad_()  # [B, Sq=5, H=4, D], strided
    k, v = (torch.randn(2, 3, 2, 8, generator=g).requires_grad_() for _ in range(2))
    torch.library.opcheck(D.attention_forward.default, (q, k, v, torch.tensor([3, 1]), torch.tensor([2, 5], dtype=torch.int32),
                                                        None, None, 0, 0, 0.3))
    qp, kp = torch.randn(7, 4, 8).requires_grad_(), torch.randn(9, 2, 8).requires_grad_()
    torch.library.opcheck(D.attention_forward.default, (qp, kp, kp, None, None, torch.tensor([0, 3, 7]),
                                                        torch.tensor([0, 4, 9]), 4, 5, 0.3))
    logits = torch.randn(3, 2, V, generator=g).transpose(0, 1).requires_grad_()  # [B=2, L=3, K], strided
    x_t = torch.full((2, 3), V - 1)
    torch.library.opcheck(D.masked_diffusion_loss.default, (logits, x_t, x0[:, :3], torch.ones(2)), {"mask_id": V - 1})
    torch.library.opcheck(D.score_entropy_loss.default, (logits[:0], x_t[:0], x0[:0, :3], torch.ones(0), torch.ones(0)),
                          {"graph": "uniform"})


@torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True)
def test_fake_checks_leave_data_dependent_sizes_to_the_kernels():
    # Rows picked by a mask have a size torch.compile cannot know while tracing: a fake check on
    # it must not ask for its value (a data-dependent guard error) but let the kernel check it.
    logits, keep = torch.randn(2, 6, V), torch.tensor([[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1]], dtype=torch.bool)
    calls = {
        "sample_categorical": lambda lg, m: ops.sample_categorical(lg[m], torch.zeros(2, 6)[m])[0],
        "predict_masked": lambda lg, m: ops.predict_masked(lg[m][None], torch.full((2, 6), V - 1)[m][None],
                                                           mask_id=V - 1)[0],
        # three masks of one count (8): three sizes the trace cannot tell equal
        "rotary": lambda lg, m: ops.rotary(lg[m][None, :, None, :8], torch.ones(2, 6, 4)[m.flip(1)],
                                           torch.zeros(2, 6, 4)[m.flip(0)]),
    }
    for name, call in calls.items():
        torch._dynamo.reset()
        torch.manual_seed(0)
        eager = call(logits, keep)
        torch.manual_seed(0)
        assert torch.equal(torch.compile(call, fullgraph=True)(logits, keep), eager), name


def test_loss_weights_that_require_grad_raise():
    # Differentiable in logits only: a learned schedule's sigma, dsigma or weight must not train on
    # silently without its gradient (torch would leave its .grad None).
    logits = torch.randn(2, 3, V, requires_grad=True)
    x_t, x0 = torch.full((2, 3), V - 1), torch.randint(0, V - 1, (2, 3))
    learned = torch.tensor([0.5, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="masked_diffusion_loss is differentiable in logits only: weight requires grad"):
        ops.masked_diffusion_loss(logits, x_t, x0, learned, mask_id=V - 1).sum().backward()
    with pytest.raises(RuntimeError, match="score_entropy_loss is differentiable in logits only: sigma requires grad"):
        ops.score_entropy_loss(logits, x_t, x0, learned, 1.0, graph="absorb").sum().backward()
    with pytest.raises(RuntimeError, match="only: sigma and dsigma require grad"):
        ops.score_entropy_loss(logits.detach(), x_t, x0, learned, learned * 2, graph="absorb").sum().backward()
    # detached terms still give the logits their gradient
    ops.masked_diffusion_loss(logits, x_t, x0, learned.detach(), mask_id=V - 1).sum().backward()
    assert logits.grad is not None and learned.grad is None


@pytest.mark.parametrize("dynamic", [False, True])
def test_outputs_that_are_not_differentiable_compile_and_raise_in_the_backward(dynamic):
    # torch.compile traces the backward of every output that requires grad: a sampler's conf or
    # logprob (or adaln's output) returned from a compiled function whose inputs require grad must
    # compile as it runs eagerly, and raise only when a gradient is asked of it.
    weight = torch.randn(V, V, requires_grad=True)
    x = torch.full((2, 3), V - 1)

    def predict(x):
        return ops.predict_masked(torch.nn.functional.one_hot(x, V).float() @ weight, x, mask_id=V - 1)

    def sample(x):
        return ops.sample_categorical(torch.nn.functional.one_hot(x, V).float() @ weight, 1.0)

    def norm(h):
        return ops.adaln(h @ weight, torch.ones(V), torch.zeros(2, V), torch.zeros(2, V))

    torch._dynamo.reset()
    for fn, arg, what in ((predict, x, "predict_masked .its confidence output. is not differentiable"),
                          (sample, x, "sample_categorical .its logprob output. is not differentiable"),
                          (norm, torch.randn(2, 3, V), "adaln .models run its math in torch under autograd. is not")):
        compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic)
        torch.manual_seed(0)
        eager = fn(arg)
        torch.manual_seed(0)
        out = compiled(arg)
        for a, b in zip(eager if isinstance(eager, tuple) else (eager,), out if isinstance(out, tuple) else (out,)):
            assert torch.equal(a, b)
        out = out[1] if isinstance(out, tuple) else out  # the float output
        assert out.requires_grad
        with pytest.raises(RuntimeError, match=what):
            out.sum().backward()
    assert weight.grad is None


def test_per_sequence_terms_of_the_wrong_kind_are_named():
    # float() of a list or None says neither the op nor the argument
    logits, x = torch.randn(2, 3, V), torch.full((2, 3), V - 1)
    x0 = torch.randint(0, V - 1, (2, 3))
    with pytest.raises(TypeError, match=r"sedd_step: dsig must be a float or a floating 0-d or \[B\] tensor, got list"):
        ops.sedd_step(logits, x, 1.0, [0.1, 0.1], graph="absorb", method="euler")
    with pytest.raises(TypeError, match="score_entropy_loss: sigma must be a float or a floating 0-d or .B. tensor, got list"):
        ops.score_entropy_loss(logits, x, x0, [1.0, 1.0], 1.0, graph="absorb")
    with pytest.raises(TypeError, match="masked_diffusion_loss: weight must be a float or a floating 0-d or .B. tensor, got NoneType"):
        ops.masked_diffusion_loss(logits, x, x0, None, mask_id=V - 1)
    with pytest.raises(TypeError, match="sample_transition: sigma must be a float"):
        ops.sample_transition(x0, None, graph="absorb", num_classes=V)
    with pytest.raises(TypeError, match="sample_categorical: temperature must be a float or a float tensor, got NoneType"):
        ops.sample_categorical(logits, None)
    # nor text, which float() would parse
    with pytest.raises(TypeError, match="sample_categorical: temperature must be a float or a float tensor, got str"):
        ops.sample_categorical(logits, "1.0")
    with pytest.raises(TypeError, match=r"sedd_step: sigma must be a float or a floating 0-d or \[B\] tensor, got str"):
        ops.sedd_step(logits, x, "1.0", 0.1, graph="absorb", method="euler")
    with pytest.raises(ValueError, match=r"sedd_step: expected batched inputs \(\[B, L, ...\]\), got a 0-d tensor"):
        ops.sedd_step(torch.tensor(1.0), torch.tensor(1), 1.0, 0.1, graph="absorb", method="analytic")


def test_int_arguments_refuse_bools_and_ints_past_int64():
    # the schemas took True as 1, and past int64 said "found type 'int'" naming no limit
    logits, x = torch.randn(2, 3, V), torch.full((2, 3), V - 1)
    x0, conf, q, cu = torch.randint(0, V - 1, (2, 3)), torch.rand(2, 3), torch.randn(5, 2, 8), torch.tensor([0, 2, 5])
    calls = {
        "predict_masked": (("mask_id", "top_k", "logits_shift"), lambda **kw: ops.predict_masked(
            logits, x, **{"mask_id": V - 1, **kw})),
        "commit_tokens": (("mask_id", "num_tokens"), lambda **kw: ops.commit_tokens(
            x.clone(), x0, conf, **{"mask_id": V - 1, "num_tokens": 1, **kw})),
        "masked_diffusion_loss": (("mask_id",), lambda **kw: ops.masked_diffusion_loss(logits, x, x0, 1.0, **kw)),
        "sample_transition": (("num_classes",), lambda **kw: ops.sample_transition(x0, 0.5, graph="uniform", **kw)),
        "attention_varlen": (("max_seqlen_q", "max_seqlen_k"), lambda **kw: ops.attention_varlen(
            q, q, q, cu, cu, **{"max_seqlen_q": 3, "max_seqlen_k": 3, **kw})),
    }
    for op, (names, call) in calls.items():
        for name in names:
            with pytest.raises(TypeError, match=f"{op}: {name} must be an int, got bool"):
                call(**{name: True})
            if name not in ("top_k", "num_tokens"):  # counts past int64 mean all, as int64's largest does
                with pytest.raises(ValueError, match=rf"{op}: {name} = 9223372036854775808 lies outside int64's "
                                                     r"range \[-2\*\*63, 2\*\*63 - 1\]"):
                    call(**{name: 2**63})
                with pytest.raises(ValueError, match=rf"{op}: {name} = -9223372036854775809 lies outside"):
                    call(**{name: -2**63 - 1})
    # what the schema takes as before: NumPy ints, a 0-d tensor, counts past int64, and the bools
    # that are bools (scale_by_sigma)
    want = ops.predict_masked(logits, x, mask_id=V - 1)[0]
    assert torch.equal(ops.predict_masked(logits, x, mask_id=numpy.int64(V - 1), top_k=2**64)[0], want)
    assert torch.equal(ops.predict_masked(logits, x, mask_id=torch.tensor(V - 1))[0], want)
    assert ops.commit_tokens(x.clone(), x0, conf, mask_id=V - 1, num_tokens=2**64).tolist() == [3, 3]
    ops.score_entropy_loss(logits, x, x0, 1.0, 1.0, graph="absorb", scale_by_sigma=False)


def test_float_arguments_refuse_bools():
    # float() and the schemas' float arguments took True as 1.0 and False as 0.0
    logits, x = torch.randn(2, 3, V), torch.full((2, 3), V - 1)
    x0, conf, q, cu = torch.randint(0, V - 1, (2, 3)), torch.rand(2, 3), torch.randn(5, 2, 8), torch.tensor([0, 2, 5])
    h, w, bd = torch.randn(2, 3, 8), torch.ones(8), torch.zeros(2, 8)
    commit = lambda **kw: ops.commit_tokens(x.clone(), x0, conf, mask_id=V - 1, **kw)  # noqa: E731
    calls = [
        ("sample_categorical", "temperature", lambda v: ops.sample_categorical(logits, v)),
        ("predict_masked", "temperature", lambda v: ops.predict_masked(logits, x, mask_id=V - 1, temperature=v)),
        ("predict_masked", "top_p", lambda v: ops.predict_masked(logits, x, mask_id=V - 1, top_p=v)),
        ("commit_tokens", "threshold", lambda v: commit(threshold=v)),
        ("commit_tokens", "prob", lambda v: commit(prob=v)),
        ("commit_tokens", "position_temperature", lambda v: commit(num_tokens=1, position_temperature=v)),
        ("attention", "softmax_scale", lambda v: ops.attention(q[None], q[None], q[None], softmax_scale=v)),
        ("attention_varlen", "softmax_scale", lambda v: ops.attention_varlen(q, q, q, cu, cu, 3, 3, softmax_scale=v)),
        ("adaln", "eps", lambda v: ops.adaln(h, w, bd, bd, eps=v)),
        ("adaln_residual", "eps", lambda v: ops.adaln_residual(h, h, bd, w, bd, bd, eps=v)),
        ("sedd_step", "sigma", lambda v: ops.sedd_step(logits, x, v, 0.1, graph="absorb", method="euler")),
        ("sedd_step", "dsig", lambda v: ops.sedd_step(logits, x, 1.0, v, graph="absorb", method="euler")),
        ("score_entropy_loss", "sigma", lambda v: ops.score_entropy_loss(logits, x, x0, v, 1.0, graph="absorb")),
        ("score_entropy_loss", "dsigma", lambda v: ops.score_entropy_loss(logits, x, x0, 1.0, v, graph="absorb")),
        ("masked_diffusion_loss", "weight", lambda v: ops.masked_diffusion_loss(logits, x, x0, v, mask_id=V - 1)),
        ("sample_transition", "sigma", lambda v: ops.sample_transition(x0, v, graph="uniform", num_classes=V)),
    ]
    for op, name, call in calls:
        for flag in (True, numpy.False_):
            with pytest.raises(TypeError, match=f"{op}: {name} must be .*, got bool"):
                call(flag)
        call(1)  # an int is a float argument's number, as before
    # NumPy floats, 0-d tensors and the ints of the defaults pass as before
    want = ops.predict_masked(logits, x, mask_id=V - 1, top_p=0.5)[0]
    assert torch.equal(ops.predict_masked(logits, x, mask_id=V - 1, temperature=0, top_p=numpy.float32(0.5))[0], want)
    assert commit(prob=numpy.float64(1.0)).tolist() == commit(prob=torch.tensor(1.0)).tolist() == [3, 3]
    ops.sedd_step(logits, x, numpy.float32(1.0), torch.tensor(0.1), graph="absorb", method="euler")


def test_a_non_finite_float_loss_weight_is_named():
    # masked_diffusion_loss's kernel reads its weight unchecked (a tensor's check would sync with
    # the device): an infinite float weight gave an infinite loss, NaN a NaN one
    logits, x = torch.randn(2, 3, V), torch.full((2, 3), V - 1)
    x0 = torch.randint(0, V - 1, (2, 3))
    for weight in (float("inf"), -float("inf"), float("nan")):
        with pytest.raises(ValueError, match=f"masked_diffusion_loss: weight must be finite, got {weight}"):
            ops.masked_diffusion_loss(logits, x, x0, weight, mask_id=V - 1)
        # score entropy's kernel checks its per-sequence terms, floats or tensors
        for terms in ((weight, 1.0), (1.0, weight), (1.0, torch.tensor(weight))):
            with pytest.raises(ValueError, match="sigma.0. must be finite and > 0, and dsigma.0. finite"):
                ops.score_entropy_loss(logits, x, x0, *terms, graph="absorb")


def test_per_sequence_floats_outside_float32_are_named():
    # torch.full's "value cannot be converted to type float without overflow" named neither, and
    # 1e-50 became a 0 that was blamed for being <= 0
    logits, x = torch.randn(2, 3, V), torch.full((2, 3), V - 1)
    x0 = torch.randint(0, V - 1, (2, 3))
    with pytest.raises(ValueError, match=r"sedd_step: sigma = 1e\+39 lies outside float32's range"):
        ops.sedd_step(logits, x, 1e39, 0.1, graph="absorb", method="euler")
    with pytest.raises(ValueError, match=r"score_entropy_loss: dsigma = -1e\+39 lies outside"):
        ops.score_entropy_loss(logits, x, x0, 1.0, -1e39, graph="absorb")
    with pytest.raises(ValueError, match=r"sample_transition: sigma = 1e-50 lies outside float32's range"):
        ops.sample_transition(x0, 1e-50, graph="absorb", num_classes=V)
    with pytest.raises(ValueError, match=r"masked_diffusion_loss: weight = 1000+ lies outside"):  # past float64
        ops.masked_diffusion_loss(logits, x, x0, 10**400, mask_id=V - 1)
    # what float32 holds passes, its subnormals included; infinities keep the ops' own error
    ops.sample_transition(x0, 1e-45, graph="absorb", num_classes=V)
    ops.masked_diffusion_loss(logits, x, x0, 3.4e38, mask_id=V - 1)
    with pytest.raises(ValueError, match=r"sigma\[0\] must be finite and > 0"):
        ops.sedd_step(logits, x, float("inf"), 0.1, graph="absorb", method="euler")
    # the check compares only, so a float that torch.compile makes symbolic traces
    loss = torch.compile(lambda w: ops.masked_diffusion_loss(logits, x, x0, w, mask_id=V - 1), dynamic=True,
                         fullgraph=True)
    for w in (0.5, 0.7, 3.4e38):
        torch.testing.assert_close(loss(w), ops.masked_diffusion_loss(logits, x, x0, w, mask_id=V - 1))


def test_a_0d_per_sequence_term_serves_every_sequence():
    # what a schedule returns for one t: the same draws as that float, and as the [B] tensor of it
    logits, x = torch.randn(3, 5, V), torch.full((3, 5), V - 1)
    x0 = torch.randint(0, V - 1, (3, 5))
    sigma, dsig = torch.tensor(0.8), torch.tensor(0.05)
    for terms in ((sigma, dsig), (0.8, 0.05), (sigma.expand(3), dsig.expand(3))):
        torch.manual_seed(0)
        draws = [ops.sedd_step(logits, x, *terms, graph="absorb", method="analytic"),
                 ops.sample_transition(x0, terms[0], graph="absorb", num_classes=V)]
        losses = [ops.score_entropy_loss(logits, x, x0, *terms, graph="absorb"),
                  ops.masked_diffusion_loss(logits, x, x0, terms[1], mask_id=V - 1)]
        if terms[0] is sigma:
            want = draws, losses
        else:
            assert all(torch.equal(a, b) for a, b in zip(draws, want[0]))
            assert all(torch.equal(a, b) for a, b in zip(losses, want[1]))


# Rows, tokens and heads more than 2^31 elements (2^32 bytes) apart: an offset computed in 32 bits
# wraps. Views into storage reserved by torch.empty, of which only the entries read are written,
# so they cost a few MB of memory whatever their address range (one 4 GiB reserve at a time).
FAR = (1 << 31) + 4096  # elements, a multiple of 16 bytes


def far_apart(shapes, far_dim, generator):
    """[(view, compact)] per shape: bfloat16 views with the values of `compact`, their dimension
    far_dim (of size 2) FAR elements apart and the rest packed, all in one reserve; None where the
    reserve fails."""
    compacts = [(torch.randn(shape, generator=generator) * 3).to(torch.bfloat16) for shape in shapes]
    try:
        storage = torch.empty(FAR + sum(c.numel() // 2 for c in compacts), dtype=torch.bfloat16)
    except RuntimeError:  # an address space without overcommit
        return None
    pairs, offset = [], 0
    for compact in compacts:
        assert compact.shape[far_dim] == 2
        strides, step = [0] * compact.dim(), 1
        for d in reversed([d for d in range(compact.dim()) if d != far_dim]):
            strides[d], step = step, step * compact.shape[d]
        strides[far_dim] = FAR
        view = storage.as_strided(compact.shape, strides, offset)
        view.copy_(compact)
        pairs.append((view, compact))
        offset += step
    return pairs


def check_far_apart_offsets(OPS):
    """Each op reads the far views in place (the bindings take any row stride, and the token and
    head strides the attention kernels address) and gives the compact copies' result."""
    g = torch.Generator().manual_seed(0)
    pairs = far_apart([(1, 2, 5000)], 1, g)  # rows FAR apart
    if pairs is None:
        pytest.skip("no 4 GiB address range to reserve")
    (far, compact), = pairs
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b)) if isinstance(a, tuple) else torch.equal(a, b)

    t = torch.tensor
    uniform = {"graph": "uniform", "scale_by_sigma": True}
    calls = {
        "sample_categorical": lambda z: OPS.sample_categorical(z[0], None, 1.0, generator=gen()),
        "predict_masked": lambda z: OPS.predict_masked(z, torch.full((1, 2), 7), 7, 0.8, 40, 0.9, "entropy", 1,
                                                       "proposal", generator=gen()),
        "sedd_step": lambda z: OPS.sedd_step(z, t([[3, 9]]), torch.ones(1), torch.full((1,), 0.1), method="analytic",
                                             generator=gen(), **uniform),
        "score_entropy_loss": lambda z: OPS.score_entropy_loss(z, t([[4, 9]]), t([[3, 9]]), torch.ones(1),
                                                               torch.ones(1), **uniform),
        "score_entropy_loss_backward": lambda z: OPS.score_entropy_loss_backward(
            torch.ones(1), z, t([[4, 9]]), t([[3, 9]]), torch.ones(1), torch.ones(1), **uniform),
        "masked_diffusion_loss": lambda z: OPS.masked_diffusion_loss(z, t([[7, 1]]), t([[3, 1]]), torch.ones(1),
                                                                     mask_id=7),
    }
    for name, call in calls.items():
        assert same(call(far), call(compact)), name
    del far, pairs
    (far, compact), = far_apart([(1, 2, 4, 64)], 1, g)  # tokens FAR apart
    cos, sin = torch.randn(2, 32, generator=g), torch.randn(2, 32, generator=g)
    assert torch.equal(OPS.rotary(far, cos, sin, False), OPS.rotary(compact, cos, sin, False)), "rotary"
    del far
    for queries in (1, 8, 130):  # on CUDA: the decoding step, the key split, the one-pass forward
        shapes = [(1, queries, 2, 64), (1, 300, 2, 64), (1, 300, 2, 64)]
        (qf, qc), (kf, kc), (vf, vc) = far_apart(shapes, 2, g)  # heads FAR apart
        got = OPS.attention_forward(qf, kf, vf, None, None, None, None, queries, 300, 0.125)
        want = OPS.attention_forward(qc, kc, vc, None, None, None, None, queries, 300, 0.125)
        assert same(got, want), f"attention_forward, {queries} queries"
        del qf, kf, vf


def test_offsets_past_32_bits_are_read_in_place():
    check_far_apart_offsets(torch.ops.dllm)


def test_commit_tokens_bumps_the_version_autograd_checks():
    """commit_tokens writes x in place: autograd must see it, as it sees x[0, 1] = 2, when it saved
    x (an embedding's indices); else the backward would use the new ids, silently."""
    emb = torch.nn.Embedding(10, 3)
    x = torch.full((1, 4), 9)
    x[0, 0] = 1
    out = emb(x)
    version = x._version
    ops.commit_tokens(x, torch.tensor([[1, 2, 3, 4]]), torch.tensor([[0.0, 1.0, 0.5, 0.2]]), mask_id=9,
                      num_tokens=2)
    assert x._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_negative_top_k_and_counts_are_refused_on_any_device(device):
    """A negative top_k (predict_masked) or a negative count for every row (commit_tokens) raises
    before any output exists, on the CPU and on meta tensors alike (torch.compile's tracing runs the
    fake): the meta call does not return outputs for a call the kernel refuses."""
    B, L, V, mask = 3, 7, 11, 10
    logits = torch.randn(B, L, V).to(device)
    x = torch.full((B, L), mask, dtype=torch.int64).to(device)
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        ops.predict_masked(logits, x, mask_id=mask, temperature=1.0, top_k=-1)
    x0, conf = ops.predict_masked(logits, x, mask_id=mask)  # top_k 0 (off) passes
    assert x0.shape == conf.shape == (B, L)
    before = x.clone()
    with pytest.raises(ValueError, match="num_tokens must be >= 0, got -1"):
        ops.commit_tokens(x, x0, conf, mask_id=mask, num_tokens=-1)
    if device == "cpu":
        assert torch.equal(x, before)  # refused before the op: no row committed


@pytest.mark.parametrize("top_p", [0.0, -0.5, 1.5, float("nan")])
def test_meta_predict_masked_refuses_a_top_p_outside_0_1(top_p):
    # the fake (the meta kernel, torch.compile's) must refuse what the CPU kernel refuses
    logits, x = torch.randn(2, 3, V), torch.full((2, 3), V - 1)
    with pytest.raises(ValueError) as cpu:
        ops.predict_masked(logits, x, mask_id=V - 1, top_p=top_p)
    with pytest.raises(type(cpu.value), match="top_p"):
        ops.predict_masked(logits.to("meta"), x.to("meta"), mask_id=V - 1, top_p=top_p)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_commit_rules_the_kernel_refuses_are_refused_on_meta_too(device):
    # the fake (meta kernel, torch.compile's) refuses what the CPU kernel refuses from scalar
    # arguments: a NaN threshold, and a position temperature beside a rule other than num_tokens
    g = torch.Generator().manual_seed(11)
    B, L, mask = 3, 7, 9
    x = torch.full((B, L), mask)
    x0, conf = torch.randint(0, mask, (B, L), generator=g), torch.rand(B, L, generator=g)
    x, x0, conf = x.to(device), x0.to(device), conf.to(device)
    with pytest.raises(ValueError, match="threshold is NaN"):
        ops.commit_tokens(x.clone(), x0, conf, mask_id=mask, threshold=float("nan"))
    for rule in (dict(threshold=0.5), dict(prob=0.3), dict(prob=torch.full((B,), 0.3, device=device))):
        with pytest.raises(ValueError, match="position_temperature applies only to num_tokens"):
            ops.commit_tokens(x.clone(), x0, conf, mask_id=mask, position_temperature=0.7, **rule)
    counts = ops.commit_tokens(x.clone(), x0, conf, mask_id=mask, num_tokens=2, position_temperature=0.7)
    assert counts.shape == (B,) and counts.dtype == torch.int64


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")
def test_streaming_switches_change_no_result_on_cuda(monkeypatch):
    """DLLM_L2_PREFETCH=1 is a hint to L2, and DLLM_ASYNC_COPIES=1 only changes how the warp-per-group
    passes read (through shared memory, batches ahead): the streaming kernels draw the same tokens
    and compute the same values with either or both, on rows long enough for the prefetch two
    rounds ahead (LLaDA's vocabulary) and more rows than the blocks resident at once (a later row's
    first part prefetched too); sample_categorical also at GPT-2's vocabulary, rows off 16 bytes."""
    g = torch.Generator("cuda").manual_seed(0)
    logits = (torch.randn(2, 700, 126464, device="cuda", generator=g) * 2).bfloat16()
    mask = 126463
    x = torch.where(torch.rand(2, 700, device="cuda", generator=g) < 0.7, mask,
                    torch.randint(0, mask, (2, 700), device="cuda", generator=g))
    gpt2 = logits[..., :50258].contiguous()
    calls = {
        "predict_masked": lambda gen: ops.predict_masked(logits, x, mask_id=mask, temperature=1.0, generator=gen),
        "predict_masked greedy": lambda gen: ops.predict_masked(logits, x, mask_id=mask),
        "sample_categorical": lambda gen: ops.sample_categorical(logits, 0.9, generator=gen),
        "sedd_step": lambda gen: ops.sedd_step(logits, x, 0.8, 0.1, graph="absorb", method="analytic", generator=gen),
        "sample_categorical V50258": lambda gen: ops.sample_categorical(gpt2, 0.9, generator=gen),
    }
    for name, call in calls.items():
        runs = []
        for prefetch, async_copies in (("0", "0"), ("1", "0"), ("0", "1"), ("1", "1")):
            monkeypatch.setenv("DLLM_L2_PREFETCH", prefetch)
            monkeypatch.setenv("DLLM_ASYNC_COPIES", async_copies)
            out = call(torch.Generator("cuda").manual_seed(3))
            runs.append(out if isinstance(out, tuple) else (out,))
        for run in runs[1:]:
            assert all(torch.equal(a, b) for a, b in zip(runs[0], run)), name


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")
def test_async_copies_change_no_loss_on_cuda(monkeypatch):
    """DLLM_ASYNC_COPIES=1 in the losses' forward (a slice of the row a warp, through the ring): the
    same losses, to float32 rounding, since rows off 16-byte boundaries (V = 50258 bf16) sum their
    straddling elements last instead of first; on LLaDA's aligned rows too."""
    g = torch.Generator("cuda").manual_seed(1)
    for V in (126464, 50258):
        logits = (torch.randn(2, 300, V, device="cuda", generator=g) * 2).bfloat16()
        mask = V - 1
        x0 = torch.randint(0, mask, (2, 300), device="cuda", generator=g)
        x = torch.where(torch.rand(2, 300, device="cuda", generator=g) < 0.7, mask, x0)
        sigma = torch.tensor([0.5, 2.0], device="cuda")
        runs = []
        for async_copies in ("0", "1"):
            monkeypatch.setenv("DLLM_ASYNC_COPIES", async_copies)
            runs.append((ops.score_entropy_loss(logits, x, x0, sigma, 0.3 * sigma, graph="absorb"),
                         ops.score_entropy_loss(logits, x, x0, sigma, 0.3 * sigma, graph="uniform"),
                         ops.masked_diffusion_loss(logits, x, x0, 1.0 / sigma, mask_id=mask)))
        for want, got in zip(*runs):
            assert bool(torch.isfinite(want).all())
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build")
def test_cuda_checking_ops_return_before_the_gpu_reaches_them():
    """The ops whose kernels check their inputs' values do not wait for those checks: each returns
    while the stream is still busy (a 50 ms spin queued ahead), and a bad value then raises at a
    later call once the GPU has found it, or at raise_pending_errors, which waits."""
    logits = torch.randn(4, 3, 301, device="cuda")
    x = torch.full((4, 3), 300, device="cuda")
    sigma = torch.ones(4, device="cuda")
    calls = {
        "sample_categorical": lambda lg: ops.sample_categorical(lg, 0.9),
        "predict_masked": lambda lg: ops.predict_masked(lg, x, mask_id=300, temperature=1.0),
        "sedd_step": lambda lg: ops.sedd_step(lg, x, sigma, 0.1 * sigma, graph="absorb", method="analytic"),
        "sample_transition": lambda lg: ops.sample_transition(x.clamp(max=299), sigma, graph="absorb",
                                                              num_classes=301),
        "score_entropy_loss": lambda lg: ops.score_entropy_loss(lg, x, x.clamp(max=299), sigma, sigma,
                                                                graph="absorb"),
        "masked_diffusion_loss": lambda lg: ops.masked_diffusion_loss(lg, x, x.clamp(max=299), 1.0, mask_id=300),
    }
    for call in calls.values():  # kernels loaded and pinned host memory allocated, which may synchronise
        call(logits)
    ops.raise_pending_errors()
    stream = torch.cuda.current_stream()
    for name, call in calls.items():
        torch.cuda._sleep(50_000_000)  # about 50 ms of spinning at 1-2 GHz
        call(logits)
        assert not stream.query(), f"{name} waited for the GPU"
        ops.raise_pending_errors()
    bad = logits.clone()
    bad[2, 1, 7] = float("nan")
    torch.cuda._sleep(50_000_000)
    ops.sample_categorical(bad, 0.9)  # returns; the error is found later
    ops.sample_categorical(bad, 0.9)
    with pytest.raises(ValueError, match=r"sample_categorical: row 7 of logits .* contains NaN.*earlier call returned"):
        ops.raise_pending_errors()  # waits for the spin, and the first call's error
    ops.raise_pending_errors()  # the second call's, the same error, dropped with it
