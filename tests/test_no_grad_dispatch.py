"""Where no gradient is recorded (dllm.generate, evaluation: torch.no_grad), dllm.ops calls each op
below its autograd kernel: that kernel, registered from Python, would only pass the call on, at a
Python round trip a call (several a DiT layer). The outputs must be those of the recorded path,
bit for bit, and torch.compile must still trace the op itself."""

import pytest
import torch

from autograd_kernels import python_autograd_kernels
from dllm import ops
from dllm.models import ARTransformer, DiffusionTransformer, model_config

V, MASK = 11, 10


def _float(*shape):
    # requiring grad, so that no_grad, not the inputs, is what keeps the outputs out of a graph
    return torch.randn(*shape).requires_grad_()


def _tokens():
    return torch.tensor([[MASK, 3, MASK], [MASK, MASK, 0]]), torch.randint(0, MASK, (2, 3))


# name: (inputs, call); the samplers draw from torch's default generator, seeded before each call
CASES = {
    "sample_categorical": (lambda: (_float(3, V),), lambda logits: ops.sample_categorical(logits, 0.7)),
    "sample_categorical_row_temperatures": (lambda: (_float(3, V), torch.rand(3) + 0.5), ops.sample_categorical),
    "predict_masked": (lambda: (_float(2, 5, V), torch.full((2, 5), MASK)),
                       lambda logits, x: ops.predict_masked(logits, x, mask_id=MASK, temperature=1.0)),
    "attention": (lambda: (_float(2, 5, 2, 8), _float(2, 5, 1, 8), _float(2, 5, 1, 8),
                           torch.tensor([5, 3], dtype=torch.int32)),
                  lambda q, k, v, kv_len: ops.attention(q, k, v, kv_len=kv_len)),
    "attention_varlen": (lambda: (_float(7, 2, 8), _float(7, 2, 8), _float(7, 2, 8),
                                  torch.tensor([0, 3, 7], dtype=torch.int32)),
                         lambda q, k, v, cu: ops.attention_varlen(q, k, v, cu, cu, 4, 4)),
    "rotary": (lambda: (_float(2, 5, 2, 8), torch.randn(5, 4), torch.randn(5, 4)), ops.rotary),
    "adaln": (lambda: (_float(2, 5, 16), _float(16), _float(2, 16), _float(2, 16)), ops.adaln),
    "adaln_residual": (lambda: (_float(2, 5, 16), _float(2, 5, 16), _float(2, 16), _float(16), _float(2, 16),
                                _float(2, 16)), ops.adaln_residual),
    "score_entropy_loss": (lambda: (_float(2, 3, V), *_tokens(), torch.rand(2) + 0.5, torch.rand(2)),
                           lambda logits, x_t, x0, sigma, dsigma: ops.score_entropy_loss(logits, x_t, x0, sigma, dsigma,
                                                                                         graph="absorb")),
    "masked_diffusion_loss": (lambda: (_float(2, 3, V), *_tokens(), torch.rand(2) + 0.5),
                              lambda logits, x_t, x0, weight: ops.masked_diffusion_loss(logits, x_t, x0, weight,
                                                                                        mask_id=MASK)),
}


def run(call, inputs) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    out = call(*inputs)
    return out if isinstance(out, tuple) else (out,)


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", CASES)
def test_without_a_gradient_to_record_the_op_runs_below_its_python_autograd_kernel(name):
    make, call = CASES[name]
    inputs = make()
    with python_autograd_kernels() as entered:
        recorded = run(call, inputs)
    assert entered, "the op has a Python autograd kernel, which runs where a gradient is recorded"
    for context in (torch.no_grad, torch.inference_mode):
        with python_autograd_kernels() as entered, context():
            out = run(call, inputs)
        assert not entered, (context, entered)
        assert same(out, recorded) and not any(t.requires_grad for t in out)
        assert all(t.is_inference() == (context is torch.inference_mode) for t in out)


@pytest.mark.parametrize("name", CASES)
def test_compiled_without_a_gradient_to_record(name):
    # the dispatch below autograd is for eager calls: dynamo cannot trace it (an error under fullgraph)
    make, call = CASES[name]
    inputs = make()
    compiled = torch.compile(call, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert same(run(compiled, inputs), run(call, inputs))


def test_a_dit_forward_and_ar_decoding_run_no_python_autograd_kernel():
    torch.manual_seed(0)
    cfg = model_config("tiny", vocab_size=V, layers=2)
    x = torch.randint(0, V, (2, 6))
    padded = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])  # per-row lengths: dllm.ops.attention
    dit, ar = DiffusionTransformer(cfg).eval(), ARTransformer(cfg).eval()
    with python_autograd_kernels() as entered, torch.no_grad():
        dit(x, attention_mask=padded)
        ar.generate(x[:, :2], 3)
    assert not entered


@pytest.mark.parametrize("name", ["attention", "attention_varlen", "rotary", "score_entropy_loss",
                                  "masked_diffusion_loss"])
def test_a_backward_calls_its_kernel_below_the_python_autograd_kernel(name):
    # backward runs without recording a gradient (no create_graph), so its op skips that kernel too
    make, call = CASES[name]
    inputs = make()
    out = run(call, inputs)[0]
    with python_autograd_kernels() as entered:
        out.sum().backward()
    assert not entered and all(t.grad is not None for t in inputs if t.requires_grad)


def test_a_rotary_gradient_recorded_with_create_graph_is_differentiable():
    make, call = CASES["rotary"]
    x, cos, sin = make()
    out = call(x, cos, sin)
    with python_autograd_kernels() as entered:
        (grad,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    assert entered and grad.requires_grad
    (grad_of_grad,) = torch.autograd.grad(grad.sum(), x)
    assert torch.isfinite(grad_of_grad).all()
