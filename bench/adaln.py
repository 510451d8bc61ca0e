"""Benchmark: dllm.ops.adaln and adaln_residual against the DiT's modulated LayerNorm in torch.

adaln is ``layer_norm(x) * weight * (1 + scale) + shift`` with per-sequence shift and scale;
adaln_residual first adds a gated update to the residual stream (``x + gate * update``) and
returns that sum and its adaLN. Peers, timed in turns on the same tensors:
  - "torch, SEDD": the math as SEDD's DiT writes it (a float32 LayerNorm times its weight, then
    ``x * (1 + scale) + shift``; the gated residual as one more pass before it);
  - "torch, 2 passes": dllm's own torch path (used when autograd records): layer_norm, then one
    multiply-add with the weight folded into the scale;
  - SEDD's math under torch.compile (--no-compile skips it).
The floor is reading x (and update) and writing the outputs once, at the measured copy bandwidth.

  python bench/adaln.py --device cuda --out bench/results/<name>/adaln
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import dllm
from common import DTYPES, Results, bench_parser, copy_bandwidth_gbps, machine, measure_against, parse_bench_args
from dllm.models.layers import ModulatedLayerNorm


def sedd_adaln(x, weight, shift, scale):
    with torch.autocast(x.device.type, enabled=False):
        y = F.layer_norm(x.float(), [x.shape[-1]]) * weight[None, None, :]
    return (y * (1 + scale[:, None]) + shift[:, None]).to(x.dtype)


def sedd_adaln_residual(x, update, gate, weight, shift, scale):
    x = x + gate[:, None].to(x.dtype) * update
    return x, sedd_adaln(x, weight, shift, scale)


# B x S x dim: SEDD-small's residual stream (B 16, L 1024, 768) and a wider one
CUDA_SHAPES, CPU_SHAPES = "16x1024x768,4x1024x2048", "4x256x768,1x512x2048"


def main() -> None:
    ap = bench_parser(__doc__, "BxSxdim", CUDA_SHAPES, CPU_SHAPES, dtype_of="x's")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile peers")
    args, shapes, reps = parse_bench_args(ap, cpu=(2, 10))
    device, dtype = args.device, DTYPES[args.dtype]
    floor_gbps = copy_bandwidth_gbps(device)
    compiled = torch.compile(sedd_adaln, dynamic=False)  # compiled lazily: unused under --no-compile
    compiled_residual = torch.compile(sedd_adaln_residual, dynamic=False)

    rows = Results(args.out, "adaln: the DiT's modulated LayerNorm, alone and after the gated residual",
                   machine(device) | reps | {"floor_gbps": floor_gbps})
    for b, s, dim in shapes:
        x, update = (torch.randn(b, s, dim, device=device).to(dtype) for _ in range(2))
        gate, shift, scale = (torch.randn(b, dim, device=device) for _ in range(3))
        norm = ModulatedLayerNorm(dim).to(device)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
        weight = norm.weight.detach()
        two_passes = torch.enable_grad()(norm.forward)  # the weight requires grad: torch's path
        two_passes_residual = torch.enable_grad()(norm.residual)
        stream = x.numel() * x.element_size()
        shape = f"{b}x{s}x{dim}"
        cases = {
            "adaln": (2 * stream, [
                ("dllm", lambda: dllm.ops.adaln(x, weight, shift, scale)),
                ("torch, SEDD", lambda: sedd_adaln(x, weight, shift, scale)),
                ("torch, 2 passes", lambda: two_passes(x, shift, scale))]),
            "adaln_residual": (4 * stream, [
                ("dllm", lambda: dllm.ops.adaln_residual(x, update, gate, weight, shift, scale)),
                ("torch, SEDD", lambda: sedd_adaln_residual(x, update, gate, weight, shift, scale)),
                ("torch, 2 passes", lambda: two_passes_residual(x, gate, update, shift, scale))]),
        }
        if not args.no_compile:
            cases["adaln"][1].append(("torch.compile", lambda: compiled(x, weight, shift, scale)))
            cases["adaln_residual"][1].append(
                ("torch.compile", lambda: compiled_residual(x, update, gate, weight, shift, scale)))
        for op, (nbytes, impls) in cases.items():
            rows.report(measure_against(op, shape, args.dtype, impls, device, nbytes, floor_gbps, **reps))
    rows.finish()


if __name__ == "__main__":
    main()
