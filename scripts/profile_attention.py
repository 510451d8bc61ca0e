"""One forward + backward of the wgmma attention at two benchmark shapes, ping-pong and lock step,
and ping-pong with atomic dQ (DLLM_ATTENTION_DQ=atomic: no dQ kernel), for a profiler to attach to.

    ncu --clock-control none --section WarpStateStats ... \
        -k regex:'attention_(fwd|dq|dkdv)_wgmma|attention_delta' python scripts/profile_attention.py

(scripts/gpu_check.sh's stage ncu runs that, with --profile-from-start off.) On the H200
(2026-12-04, lock step) the backward at SEDD-small's shape took about 1.26 ms against about 0.6
for SDPA flash's, and the forward 166 TFLOP/s against the 250 the issue asks: the counters say
whether the tensor cores, the exponentials, shared memory or the barriers hold each kernel back.
Each configuration runs twice; the second call, the warm one, runs between cudaProfilerStart and Stop.
DLLM_PROFILE_ATOMIC_DQ=0 leaves out the atomic-dQ configuration (gpu_check.sh sets it when its tests failed).
"""

import os

import torch
from profiler_range import warm_call_profiled

import dllm

assert torch.cuda.is_available(), "profiles the CUDA kernels: needs a GPU"
assert torch.cuda.get_device_capability() == (9, 0) and dllm.build_info()["wgmma"], \
    "profiles the wgmma kernels: needs a compute capability 9.0 GPU and a build for 9.0"
g = torch.Generator(device="cuda").manual_seed(0)
os.environ["DLLM_ATTENTION_KERNEL"] = "wgmma"
CONFIGS = [("1", "separate"), ("0", "separate")]  # (DLLM_ATTENTION_PINGPONG, DLLM_ATTENTION_DQ)
if os.environ.get("DLLM_PROFILE_ATOMIC_DQ") != "0":
    CONFIGS.append(("1", "atomic"))

for B, L, H, D in ((16, 1024, 12, 64), (2, 4096, 32, 128)):  # SEDD-small; D = 128 at L = 4096
    q, k, v = (torch.randn(B, L, H, D, generator=g, device="cuda").bfloat16().requires_grad_() for _ in range(3))
    for pingpong, dq in CONFIGS:
        # read by the op at every call
        os.environ.update(DLLM_ATTENTION_PINGPONG=pingpong, DLLM_ATTENTION_DQ=dq)

        def step():
            out = dllm.ops.attention(q, k, v)
            torch.autograd.grad(out, (q, k, v), torch.ones_like(out))

        warm_call_profiled(step)
        print(f"profiled: attention fwd+bwd B{B} L{L} H{H} D{D} bf16, ping-pong {pingpong}, dQ {dq}")
