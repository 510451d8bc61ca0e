"""One call of each streaming kernel at its benchmark shape, for a profiler to attach to.

    ncu --clock-control none --section WarpStateStats ... \
        -k regex:'sample_categorical|sedd_step|predict_masked|loss_' python scripts/profile_streaming.py

(scripts/gpu_check.sh's stage ncu runs that, with --profile-from-start off.) The kernels read
every logit once but ran at 17-29% of the H200's copy bandwidth (2026-11-30), issue-bound at 20-30
instructions an element; the counters say where their warps wait. Each op runs twice; the second
call, the warm one, runs between cudaProfilerStart and Stop.
"""

import os

import torch
from profiler_range import warm_call_profiled as twice

import dllm

assert torch.cuda.is_available(), "profiles the CUDA kernels: needs a GPU"
g = torch.Generator(device="cuda").manual_seed(0)


def logits(*shape):
    return (torch.randn(*shape, generator=g, device="cuda") * 2).bfloat16()


z = logits(16 * 1024, 50258)
x = torch.full((16, 1024), 50257, device="cuda")  # absorbing graph, every position masked
sigma = torch.full((16,), 0.5, device="cuda")
twice(lambda: dllm.ops.sample_categorical(z, 1.0))
twice(lambda: dllm.ops.sedd_step(z.view(16, 1024, 50258), x, sigma, sigma, graph="absorb", method="analytic"))
del z
z = logits(16, 1024, 50258).requires_grad_()
twice(lambda: torch.autograd.grad(dllm.ops.masked_diffusion_loss(z, x, torch.zeros_like(x), sigma, mask_id=50257).sum(),
                                  z))
del z
z = logits(8, 1024, 126464)
canvas = torch.full((8, 1024), 126336, device="cuda")  # LLaDA's mask id; every position masked
twice(lambda: dllm.ops.predict_masked(z, canvas, mask_id=126336, temperature=1.0))
os.environ["DLLM_L2_PREFETCH"] = "1"  # the same call asking L2 for its rows ahead: which counters move
twice(lambda: dllm.ops.predict_masked(z, canvas, mask_id=126336, temperature=1.0))
os.environ["DLLM_L2_PREFETCH"] = "0"
os.environ["DLLM_ASYNC_COPIES"] = "1"  # and reading through shared memory by cp.async, batches ahead
twice(lambda: dllm.ops.predict_masked(z, canvas, mask_id=126336, temperature=1.0))
os.environ["DLLM_ASYNC_COPIES"] = "0"
twice(lambda: dllm.ops.predict_masked(z[:1], canvas[:1], mask_id=126336))  # greedy B1 L1024: 3.9 waves at 2 blocks an SM
print("profiled: sample_categorical 16384x50258, sedd_step absorb 16x1024x50258, masked_diffusion_loss fwd+bwd "
      "16x1024x50258, predict_masked 8x1024x126464 at temperature 1 (without, then with DLLM_L2_PREFETCH=1, then with "
      "DLLM_ASYNC_COPIES=1) and "
      "1x1024x126464 greedy (bf16)")
