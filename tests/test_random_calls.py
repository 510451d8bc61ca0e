"""The first seeds of fuzz_ops.py's random calls of every op and of fuzz_generate.py's random calls
of dllm.generate, and the cases that once found a bug (`python tests/fuzz_ops.py --minutes N`,
`python tests/fuzz_generate.py --minutes N` run as many as time allows)."""

import pytest
import torch

import fuzz_generate
import fuzz_ops
from test_cuda_emulated import emulator  # noqa: F401 (the fixture)

pytestmark = pytest.mark.usefixtures("poisoned_empty")  # outputs start as NaN, not zeros

# op: seeds past the first ones that once found a bug (sedd_step's raw log-weights near 1e7; the
# score-entropy gradient's exp overflowing before its small factor; both fixed 2026-12-06)
FOUND = {"sedd_step": [178, 2782, 9264], "score_entropy_loss": [1796586993]}
EMULATED = sorted(op for op in fuzz_ops.OPS if not op.startswith("reference_"))
REFERENCE = sorted(op for op in fuzz_ops.OPS if op.startswith("reference_"))


@pytest.mark.parametrize("op", EMULATED)
def test_emulated_kernels_agree_with_the_cpu_ops(emulator, op):  # noqa: F811
    for seed in [*range(40 if op == "attention" else 200), *FOUND.get(op, [])]:
        fuzz_ops.run_case(emulator, op, seed, torch.ops.dllm_emu, torch.ops.dllm)


@pytest.mark.parametrize("op", REFERENCE)
def test_cpu_ops_agree_with_the_float64_references(op):
    for seed in range(300):
        fuzz_ops.run_case(None, op, seed, None, torch.ops.dllm)


def test_generate_keeps_its_promises_on_random_calls():
    for seed in range(1000):
        fuzz_generate.run_case(seed)
