"""Benchmark: the output head of a vocabulary that is not a multiple of 64 (SEDD's and MDLM's 50258),
with the rows padded as the models' VocabProjection pads them at inference on CUDA, against the
plain projection; and dllm.ops.sedd_step reading those logits, padded rows against contiguous ones.

Rows, timed in turns on the same tensors:
  - "dllm (padded rows)": VocabProjection.padded (what the models take at inference on CUDA from
    4096 positions on): the weight copied with zero rows up to a multiple of 64, one GEMM into
    those rows, a view of the first V columns;
  - "F.linear": the plain projection into rows of V (what nn.Linear gives; each bfloat16 row of
    50258 starts 4-byte aligned only);
  - "F.linear, weight padded once": the padded GEMM without the weight's copy (what caching it
    would give).
TFLOP/s = 2 * B * L * D * V / time; "% of floor" is the share of a square bf16 matmul's rate
measured in this run. The sedd_step rows (absorbing graph, analytic step, a fully masked canvas)
count the logits read once; their note gives the share of the copy bandwidth, also measured here.
Default dtype: bf16 on CUDA, fp32 on the CPU.

  python bench/vocab_head.py --device cuda --out bench/results/<name>/vocab_head
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import dllm
from common import (DTYPES, Results, bench_parser, copy_bandwidth_gbps, machine, matmul_tflops, measure_against,
                    parse_bench_args)
from dllm.models.layers import VocabProjection

# B x L x D x V: SEDD-small's step (B 16, L 1024, hidden 768), and at B 4 and 1 (the models pad from
# 4096 positions on: VocabProjection.PADDED_MIN_ROWS, which these rows check)
CUDA_SHAPES, CPU_SHAPES = "16x1024x768x50258,4x1024x768x50258,1x1024x768x50258", "1x256x256x50258"


def main() -> None:
    ap = bench_parser(__doc__, "BxLxDxV", CUDA_SHAPES, CPU_SHAPES)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                    help="the model's dtype (default: bf16 on CUDA, fp32 on the CPU, whose bf16 GEMMs crawl)")
    args, shapes, reps = parse_bench_args(ap, cpu=(1, 5))
    device = args.device
    cuda = device.startswith("cuda")
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    dtype = DTYPES[args.dtype]
    peak, copy_gbps = matmul_tflops(device, dtype), copy_bandwidth_gbps(device)
    meta = machine(device) | reps | {"floor_gbps": float("nan"), "matmul_tflops": peak, "copy_gbps": copy_gbps}
    rows = Results(args.out, "vocab head: padded rows against the plain projection", meta)
    for B, L, D, V in shapes:
        torch.manual_seed(0)
        head = VocabProjection(D, V).to(device, dtype)
        h = torch.randn(B, L, D, device=device, dtype=dtype)
        shape = f"B{B} L{L} D{D} V{V}"
        with torch.no_grad():
            weight, bias = head.padded_parameters()
            gemm = measure_against("head", shape, args.dtype, [
                ("dllm (padded rows)", lambda: head.padded(h)),
                ("F.linear", lambda: F.linear(h, head.weight, head.bias)),
                ("F.linear, weight padded once", lambda: F.linear(h, weight, bias)[..., :V]),
            ], device, 0, 1.0, **reps)
            unit, scale = ("TFLOP/s", 1.0) if cuda else ("GFLOP/s", 1e3)
            for r in gemm:
                tflops = 2 * B * L * D * V / (r.median_ms * 1e-3) / 1e12
                r.pct_floor, r.note = 100.0 * tflops / peak, f"{tflops * scale:.1f} {unit}"
            rows.report(gemm)
            padded, plain = head.padded(h), F.linear(h, head.weight, head.bias)
            x = torch.full((B, L), V - 1, device=device)  # every position masked: every row is read
            sigma, dsig = torch.full((B,), 0.7, device=device), torch.full((B,), 0.01, device=device)
            nbytes = B * L * (V * padded.element_size() + 2 * 8)  # the logits, x read and x_next written

            def step(logits):
                return lambda: dllm.ops.sedd_step(logits, x, sigma, dsig, graph="absorb", method="analytic")

            steps = measure_against("sedd_step", shape, args.dtype, [("dllm, padded rows", step(padded)),
                                                                    ("dllm, contiguous rows", step(plain))],
                                    device, nbytes, copy_gbps, **reps)
            for r in steps:
                r.note, r.pct_floor = f"{r.pct_floor:.1f}% of the copy floor", float("nan")
            rows.report(steps)
    rows.finish()


if __name__ == "__main__":
    main()
