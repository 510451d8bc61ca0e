"""One call of each streaming sampling kernel at its benchmark shape, for a profiler to attach to.

    ncu --clock-control none --section WarpStateStats ... -k regex:'sample_categorical|sedd_step|predict_masked' \
        python scripts/profile_streaming.py

The kernels read every logit once but ran at 17-29% of the H200's copy bandwidth (2026-11-30):
the counters say where their warps wait. Each op runs twice; the second call is the warm one.
"""

import torch

import dllm

assert torch.cuda.is_available(), "profiles the CUDA kernels: needs a GPU"
g = torch.Generator(device="cuda").manual_seed(0)


def logits(*shape):
    return (torch.randn(*shape, generator=g, device="cuda") * 2).bfloat16()


z = logits(16 * 1024, 50258)
x = torch.full((16, 1024), 50257, device="cuda")  # absorbing graph, every position masked
sigma = torch.full((16,), 0.5, device="cuda")
for _ in range(2):
    dllm.ops.sample_categorical(z, 1.0)
    dllm.ops.sedd_step(z.view(16, 1024, 50258), x, sigma, sigma, graph="absorb", method="analytic")
del z
z = logits(8, 1024, 126464)
canvas = torch.full((8, 1024), 126336, device="cuda")  # LLaDA's mask id; every position masked
for _ in range(2):
    dllm.ops.predict_masked(z, canvas, mask_id=126336, temperature=1.0)
torch.cuda.synchronize()
print("profiled: sample_categorical 16384x50258, sedd_step absorb 16x1024x50258, predict_masked 8x1024x126464 (bf16)")
