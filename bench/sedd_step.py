"""Benchmark: dllm.ops.sedd_step against SEDD's sampler glue in eager PyTorch and torch.compile.

The peer is the plain-PyTorch reference (dllm.sedd.reference.sedd_step: SEDD's score
post-processing, staggered score times transposed transition or the reverse rate, and a Gumbel
race), run in float32 on the same logits, as SEDD's sampler does after its bf16 network. Every
position is masked by default (--mask-frac), so dllm reads every row: the absorbing graph's
skipping of unmasked rows is not counted in its favour.

  python bench/sedd_step.py --device cuda --out bench/results/<name>/sedd_step
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import dllm
from common import (DTYPES, Results, copy_bandwidth_gbps, machine, measure_against, peak_extra_mb,
                    unmeasured_row)
from dllm.sedd import reference as ref



def eager(logits, x, sigma, dsig, graph, method):
    return ref.sedd_step(logits.float(), x, sigma, dsig, graph=graph, method=method, scale_by_sigma=graph == "absorb")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu or cuda (default: cuda when there is one)")
    ap.add_argument("--shapes", default=None, help="comma-separated BxLxK (default depends on the device)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="logits dtype (default: bf16)")
    ap.add_argument("--cases", default="absorb:analytic,absorb:euler,uniform:analytic", help="graph:method list")
    ap.add_argument("--mask-frac", type=float, default=1.0, help="fraction of masked positions (absorb)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    ap.add_argument("--compile-all", action="store_true",
                    help="time the torch.compile peer for every shape and case (default: the first shape's first "
                         "case only; each compile takes seconds to tens of seconds)")
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and summary.md")
    args = ap.parse_args()

    device = args.device
    cuda = device.startswith("cuda")
    default = "16x1024x50258,1x1024x50258,64x128x50258" if cuda else "2x256x50258"
    shapes = [tuple(int(v) for v in s.split("x")) for s in (args.shapes or default).split(",")]
    dtype = DTYPES[args.dtype]
    floor_gbps = copy_bandwidth_gbps(device, (1 << 30) if cuda else (1 << 28))
    reps = {} if cuda else {"warmup": 1, "reps": 5}
    cases = [tuple(c.split(":")) for c in args.cases.split(",")]

    meta = machine(device) | {"floor_gbps": floor_gbps, "mask_frac": args.mask_frac}
    title = "sedd_step: fused SEDD sampler step (score transform + predictor + exact draw)"
    rows = Results(args.out, title, meta)
    for b, l, k in shapes:
        gen = torch.Generator(device=device).manual_seed(0)  # drawn on the device: GB of logits
        logits = (torch.randn(b, l, k, generator=gen, device=device) * 2).to(dtype)
        nbytes = logits.numel() * logits.element_size() + b * l * 16  # logits, x in, x_next out
        shape = f"{b}x{l}x{k}"
        for graph, method in cases:
            x = torch.randint(0, k, (b, l), generator=gen, device=device)
            if graph == "absorb":
                x = torch.where(torch.rand(b, l, generator=gen, device=device) < args.mask_frac, torch.full_like(x, k - 1), x)
            sigma = torch.full((b,), 0.7, device=device)
            dsig = sigma if method == "denoise" else torch.full((b,), 0.01, device=device)
            op = f"sedd_step {graph}/{method}"
            ours_fn = lambda: dllm.ops.sedd_step(logits, x, sigma, dsig, graph=graph, method=method,  # noqa: E731
                                                 scale_by_sigma=graph == "absorb")
            failed = []
            impls = [("dllm", ours_fn), ("eager reference (SEDD math, fp32)", lambda: eager(logits, x, sigma, dsig, graph, method))]
            if not args.no_compile and (args.compile_all or ((graph, method) == cases[0] and (b, l, k) == shapes[0])):
                torch._dynamo.reset()  # a fresh compile each time: past 8 recompiles dynamo silently runs eager
                compiled = torch.compile(eager, dynamic=False)
                t0 = time.perf_counter()
                try:
                    compiled(logits, x, sigma, dsig, graph, method)
                    compile_s = time.perf_counter() - t0
                    impls.append((f"torch.compile reference ({compile_s:.0f} s compile)",
                                  lambda: compiled(logits, x, sigma, dsig, graph, method)))
                except Exception as e:  # noqa: BLE001  (report, do not hide, a peer that fails)
                    failed.append(unmeasured_row(op, shape, args.dtype, "torch.compile reference", nbytes,
                                                 f"failed: {type(e).__name__}"))
            measured = measure_against(op, shape, args.dtype, impls, device, nbytes, floor_gbps, **reps)
            for row, (_, fn) in zip(measured, impls):
                if row.median_ms == row.median_ms:  # not out of memory
                    row.extra["peak_extra_mb"] = peak_extra_mb(fn, device)
                    if cuda:
                        row.note = f"peak extra memory {row.extra['peak_extra_mb']:.1f} MB"
            ours = measured[0]
            if not cuda:
                ours.note = "reads each row once"
            for row in measured + failed:
                rows.append(row)
            print(f"{shape} {graph}/{method}: dllm {ours.median_ms:.3f} ms ({ours.pct_floor:.0f}% of floor); " + ", ".join(
                f"{r.impl} {r.median_ms:.3f} ms ({r.ratio_vs_dllm:.1f}x)" for r in rows
                if r.shape == shape and r.op == op and r.impl != "dllm"), flush=True)

    rows.finish()


if __name__ == "__main__":
    main()
