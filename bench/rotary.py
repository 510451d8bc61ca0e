"""Benchmark: dllm.ops.rotary against RoPE as models write it in torch, eager and under torch.compile.

The input is q as the DiT takes it: a strided view of a fused [B, S, 3, H, D] qkv projection.
Peers, timed in turns on the same tensors, all with float32 math rounded once to x's dtype:
  - "torch, rotate-half": x * cos + cat(-x2, x1) * sin on float32 copies (dllm's models before
    2026-11-30; the usual way it is written, as in LLaMA's and NeoX's code), with the tables
    widened to D outside the timed call, as those models widened them once a forward for every
    layer's q and k;
  - the same under torch.compile (--no-compile skips it).
The floor is reading x and writing the result once, at the measured copy bandwidth.

  python bench/rotary.py --device cuda --out bench/results/<name>/rotary
"""

from __future__ import annotations

import torch

import dllm
from common import DTYPES, Results, bench_parser, copy_bandwidth_gbps, machine, measure_against, parse_bench_args
from dllm.models.layers import Rotary


def widened(cos, sin):
    """Rotary's cos, sin [S, D / 2] (or [B, S, D / 2]) widened to [S, 1, D] ([B, S, 1, D]), as
    dllm's models before 2026-11-30 made them once a forward."""
    return tuple(torch.cat([t, t], dim=-1)[..., None, :] for t in (cos, sin))


def rotate_half(x, cos, sin):
    """cos, sin: the tables widened (see widened)."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x.float() * cos + torch.cat([-x2, x1], dim=-1).float() * sin).to(x.dtype)


# B x S x H x D: SEDD-small's q (B 16, L 1024, 12 heads of 64), LLaDA-8B's (B 1, 32 heads of 128)
CUDA_SHAPES, CPU_SHAPES = "16x1024x12x64,1x1024x32x128", "4x256x12x64,1x512x16x128"


def main() -> None:
    ap = bench_parser(__doc__, "BxSxHxD", CUDA_SHAPES, CPU_SHAPES, dtype_of="x's")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    args, shapes, reps = parse_bench_args(ap, cpu=(2, 10))
    device, dtype = args.device, DTYPES[args.dtype]
    floor_gbps = copy_bandwidth_gbps(device)
    compiled = None if args.no_compile else torch.compile(rotate_half, dynamic=False)

    rows = Results(args.out, "rotary: rotate-half RoPE of q read from a fused qkv projection",
                   machine(device) | reps | {"floor_gbps": floor_gbps})
    for b, s, h, d in shapes:
        q = torch.randn(b, s, 3, h, d, device=device).to(dtype)[:, :, 0]
        cos, sin = Rotary(d).to(device)(0, s, device)
        nbytes = 2 * q.numel() * q.element_size() + 2 * cos.numel() * 4  # read x and the tables, write out
        shape = f"{b}x{s}x{h}x{d}"
        wide = widened(cos, sin)  # once, untimed: a forward's work shared by its layers
        impls = [("dllm", lambda: dllm.ops.rotary(q, cos, sin)),
                 ("torch, rotate-half", lambda: rotate_half(q, *wide))]
        if compiled is not None:
            impls.append(("torch.compile", lambda: compiled(q, *wide)))
        rows.report(measure_against("rotary", shape, args.dtype, impls, device, nbytes, floor_gbps, **reps))
    rows.finish()


if __name__ == "__main__":
    main()
