"""The ops a sampler step dispatches besides the network's. Without CUDA graphs each one but a view is
a kernel launch on a GPU (5-10 us of host time), and on the CPU a few microseconds of a small
model's step; pinned per sampler, so that an op added to every step is a decision, not an accident.
Counted with a model that dispatches none."""

import collections

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import dllm
from autograd_kernels import python_autograd_kernels
from dllm.sedd import Absorbing

V, MASK, BATCH, PROMPT, GEN = 30, 29, 2, 3, 24


class FixedLogits(nn.Module):
    """Random logits for every span a sampler may feed (cfg's doubled batch, a KV cache's spans),
    sliced before the count starts: its forward dispatches no op."""

    def __init__(self, *, cache=False, **attributes):
        super().__init__()
        length = PROMPT + GEN
        table = torch.randn(2 * BATCH, length, V, generator=torch.Generator().manual_seed(0)) * 3
        self.spans = {(rows, start, size): table[:rows, start:start + size] for rows in (BATCH, 2 * BATCH)
                      for start in range(length) for size in range(1, length - start + 1)}
        self.mask_id = MASK
        for name, value in attributes.items():
            setattr(self, name, value)
        if cache:
            self.new_kv_cache = lambda batch, length: {}

    def forward(self, x, sigma=None, attention_mask=None, cache=None, start=0):
        return self.spans[(x.shape[0], start, x.shape[1])]


class FixedScores(FixedLogits):
    def __init__(self):
        super().__init__()
        del self.mask_id
        self.graph = Absorbing(V - 1)


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def ops_per_step(model, prompt_length=PROMPT, **kwargs) -> list[collections.Counter]:
    """The ops of each step but the first and the last (which may set up or finish a call): those
    dispatched after the previous step's callback, up to and including its own."""
    prompt = torch.randint(0, MASK, (BATCH, prompt_length), generator=torch.Generator().manual_seed(1))
    marks = []
    with OpLog() as log:
        dllm.generate(model, prompt, gen_length=GEN, generator=torch.Generator().manual_seed(0),
                      callback=lambda step, x, logits: marks.append(len(log.names)), **kwargs)
    return [collections.Counter(log.names[a:b]) for a, b in zip(marks, marks[1:])][:-1]


PREDICT, COMMIT, SYNC = "dllm::predict_masked", "dllm::commit_tokens", "aten::_local_scalar_dense"
TIME = ["aten::mul", "aten::log1p", "aten::neg"]  # the log-linear sigma of a time
CANVAS_TIME = ["aten::eq", "aten::sum", "aten::div", *TIME]  # ... at the canvas's masked fraction
K = ["aten::eq", "aten::sum", "aten::mul_", "aten::_to_copy"]  # dream's floor(n_masked * rate)
SPAN = ["aten::index_select", "aten::index_copy_"]  # a cached fast-dllm step's fed span
LEFT = ["aten::eq", "aten::sum", SYNC]  # fast-dllm: the block's masks left, read once a step

STEPS = [  # (sampler, model attributes, generate options, the ops of a step)
    ("mdlm", {}, {}, ["aten::full", PREDICT, COMMIT, "aten::any", SYNC]),
    ("mdlm", {"time_conditioned": True}, {}, ["aten::full", "aten::full", *TIME, PREDICT, COMMIT, "aten::any"]),
    ("first-hitting", {}, {}, ["aten::eq", "aten::sum", "aten::clamp", "aten::rand", "aten::reciprocal", "aten::pow",
                               "aten::mul_", PREDICT, COMMIT]),
    ("llada", {}, {}, [PREDICT, COMMIT]),
    ("llada:random", {}, {}, [PREDICT, COMMIT]),
    ("llada", {}, {"cfg_scale": 1.0}, ["aten::masked_fill", "aten::cat", "aten::split", "aten::lerp", PREDICT, COMMIT]),
    ("llada", {"time_conditioned": True}, {}, [*CANVAS_TIME, PREDICT, COMMIT]),
    ("dream:origin", {}, {}, ["aten::full", PREDICT, COMMIT]),
    ("dream", {}, {}, ["aten::full", PREDICT, *K, COMMIT]),
    ("dream:topk_margin", {"logits_shift": 1}, {}, ["aten::full", PREDICT, *K, COMMIT]),
    ("fast-dllm", {}, {}, [PREDICT, COMMIT, *LEFT]),
    ("fast-dllm", {"cache": True}, {"cache": "prefix"}, [*SPAN, PREDICT, COMMIT, *LEFT]),
    ("fast-dllm", {"cache": True}, {"cache": "dual"}, [*SPAN, PREDICT, COMMIT, *LEFT]),
]


@pytest.mark.parametrize("sampler, attributes, options, expected", STEPS,
                         ids=[f"{s}-{i}" for i, (s, *_) in enumerate(STEPS)])
def test_each_masked_sampler_step_dispatches_only_its_own_ops(sampler, attributes, options, expected):
    # one block (llada, fast-dllm), so that no step but the first sets one up
    block = {"block_length": GEN} if sampler.startswith(("llada", "fast-dllm")) else {}
    steps = ops_per_step(FixedLogits(**attributes), sampler=sampler, steps=12, temperature=1.0, **block, **options)
    assert len(steps) >= 9 and all(step == collections.Counter(expected) for step in steps), steps


@pytest.mark.parametrize("method", ["analytic", "euler"])
@pytest.mark.parametrize("prompt_length, write", [(0, "aten::copy_"), (PROMPT, "aten::where")])
def test_a_sedd_step_dispatches_its_fused_step_and_one_write_into_the_canvas(method, prompt_length, write):
    # with a prompt, the write projects the known tokens back
    steps = ops_per_step(FixedScores(), prompt_length, sampler=f"sedd-{method}", steps=12)
    assert len(steps) >= 9 and all(step == collections.Counter(["dllm::sedd_step", write]) for step in steps), steps


def test_the_models_vocab_size_is_read_once_a_call_not_once_a_step():
    # model_protocol's vocab_size_of fails two nn.Module lookups on a model without one: a few
    # microseconds a step when read at every step
    class Counted(FixedLogits):
        reads = 0

        @property
        def vocab_size(self):
            type(self).reads += 1
            return V

    def reads(steps):
        Counted.reads = 0
        ops_per_step(Counted(), sampler="llada", steps=steps, block_length=GEN)
        return Counted.reads

    assert reads(4) == reads(12)


def test_the_masked_samplers_run_no_python_autograd_kernel():
    # generate records no gradient, yet predict_masked's autograd kernel (registered from Python to
    # refuse its gradient) would run in Python at every step, only to pass the call on
    model = FixedLogits()
    with python_autograd_kernels() as entered:
        for sampler in ("mdlm", "first-hitting", "llada", "dream", "fast-dllm"):
            dllm.generate(model, torch.full((BATCH, PROMPT), 1), gen_length=GEN, steps=12, sampler=sampler,
                          temperature=1.0, **({"block_length": 8} if sampler == "fast-dllm" else {}))
    assert not entered


def test_predicting_under_grad_keeps_the_confidences_not_differentiable():
    # predict_masked goes below autograd only where no gradient is recorded
    logits = torch.randn(2, 5, V, requires_grad=True)
    x = torch.full((2, 5), MASK)
    with torch.no_grad():
        fast = dllm.ops.predict_masked(logits, x, mask_id=MASK)
    x0, conf = dllm.ops.predict_masked(logits, x, mask_id=MASK)
    assert torch.equal(fast[0], x0) and torch.equal(fast[1], conf)
    with pytest.raises(RuntimeError, match="not differentiable"):
        conf.sum().backward()
