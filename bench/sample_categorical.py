"""Benchmark: dllm.ops.sample_categorical against what samplers do today.

Peers, timed in the same run on the same logits:
  - softmax + torch.multinomial (the textbook draw);
  - float32 Gumbel race, MDLM/SEDD style (fast but inexact: truncates the tail);
  - float64 Gumbel-argmax, LLaDA's add_gumbel_noise (exact, materialises float64 copies).
On CUDA also "dllm, L2 prefetch" (DLLM_L2_PREFETCH=1) and "dllm, async copies" (DLLM_ASYNC_COPIES=1),
both off by default until measured.

  python bench/sample_categorical.py --device cuda --out bench/results/<name>
"""

from __future__ import annotations

import torch

import dllm
from common import (DTYPES, Results, bench_parser, copy_bandwidth_gbps, dllm_rows, machine, measure_against,
                    parse_bench_args)


def multinomial(logits, t):
    probs = torch.softmax(logits.float() / t, dim=-1)
    return torch.multinomial(probs.view(-1, probs.shape[-1]), 1).view(probs.shape[:-1])


def gumbel_fp32(logits, t):
    u = torch.rand(logits.shape, device=logits.device)
    return (logits.float() / t - torch.log(-torch.log(u + 1e-10) + 1e-10)).argmax(-1)


def gumbel_fp64_llada(logits, t):
    # LLaDA generate.py: exp(logits) / (-log u)^T in float64, then argmax.
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    return (logits.exp() / (-torch.log(noise)) ** t).argmax(-1)


PEERS = {
    "softmax+multinomial": multinomial,
    "fp32 Gumbel (MDLM/SEDD)": gumbel_fp32,
    "fp64 Gumbel (LLaDA)": gumbel_fp64_llada,
}


CUDA_SHAPES, CPU_SHAPES = "16384x50258,1024x50258,1024x126464,64x50258", "256x50258,1024x32000"


def main() -> None:
    ap = bench_parser(__doc__, "ROWSxV", CUDA_SHAPES, CPU_SHAPES, dtype_of="logits")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1)")
    args, shapes, reps = parse_bench_args(ap, cpu=(1, 5))
    if not 0 < args.temperature < float("inf"):  # the op takes 0 (argmax); the peers sample
        ap.error(f"--temperature must be positive and finite, got {args.temperature}")
    device, dtype = args.device, DTYPES[args.dtype]
    floor_gbps = copy_bandwidth_gbps(device)
    t = args.temperature

    meta = machine(device) | reps | {"floor_gbps": floor_gbps, "temperature": t}
    title = "sample_categorical: one exact draw per row"
    rows = Results(args.out, title, meta)
    for n, vocab in shapes:
        logits = (torch.randn(n, vocab, device=device) * 3).to(dtype)
        nbytes = logits.numel() * logits.element_size() + n * (8 + 4)  # read logits, write tokens + logprob
        shape = f"{n}x{vocab}"
        impls = dllm_rows(lambda: dllm.ops.sample_categorical(logits, t), device)
        impls += [(name, lambda peer=peer: peer(logits, t)) for name, peer in PEERS.items()]
        measured = measure_against("sample", shape, args.dtype, impls, device, nbytes, floor_gbps, **reps)
        measured[0].note = "exact, 64-bit-uniform Gumbel tails; also returns logprob"
        rows.report(measured)

    rows.finish()


if __name__ == "__main__":
    main()
