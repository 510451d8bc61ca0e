"""Benchmark: dllm.ops.sedd_step against SEDD's sampler glue in eager PyTorch and torch.compile.

The peer is the plain-PyTorch reference (dllm.sedd.reference.sedd_step: SEDD's score
post-processing, staggered score times transposed transition or the reverse rate, and a Gumbel
race), run in float32 on the same logits, as SEDD's sampler does after its bf16 network. Every
position is masked by default (--mask-frac), so dllm reads every row: the absorbing graph's
skipping of unmasked rows is not counted in its favour. The torch.compile peer (each shape's first
case; --compile-all: every case) is compiled and timed after every eager row is written, in turns
with dllm again, so a slow cold compile cannot cost the other rows. On CUDA also "dllm, L2
prefetch" (DLLM_L2_PREFETCH=1) and "dllm, async copies" (DLLM_ASYNC_COPIES=1), both off by default
until measured.

  python bench/sedd_step.py --device cuda --out bench/results/<name>/sedd_step
"""

from __future__ import annotations

import time

import torch

import dllm
from common import (DTYPES, Results, bench_parser, copy_bandwidth_gbps, dllm_rows, machine, measure_against,
                    parse_bench_args, peak_extra_mb, unmeasured_row, with_streaming)
from dllm.sedd import reference as ref


def eager(logits, x, sigma, dsig, graph, method):
    return ref.sedd_step(logits.float(), x, sigma, dsig, graph=graph, method=method, scale_by_sigma=graph == "absorb")


CUDA_SHAPES, CPU_SHAPES = "16x1024x50258,1x1024x50258,64x128x50258", "2x256x50258"
CASES = "absorb:analytic,absorb:euler,uniform:analytic"


def ours(logits, x, sigma, dsig, graph, method):
    return dllm.ops.sedd_step(logits, x, sigma, dsig, graph=graph, method=method, scale_by_sigma=graph == "absorb")


def measure_case(case, impls, device: str, dtype: str, floor_gbps: float, reps: dict):
    """dllm and its peers in turns on one case's inputs, each with its peak memory (CUDA)."""
    op, shape, nbytes, _ = case
    measured = measure_against(op, shape, dtype, impls, device, nbytes, floor_gbps, **reps)
    for row, (_, fn) in zip(measured, impls):
        if row.median_ms == row.median_ms and device.startswith("cuda"):  # timed (not out of memory)
            row.extra["peak_extra_mb"] = peak_extra_mb(fn, device)
            row.note = f"peak extra memory {row.extra['peak_extra_mb']:.1f} MB"
    return measured


def main() -> None:
    ap = bench_parser(__doc__, "BxLxK", CUDA_SHAPES, CPU_SHAPES, dtype_of="logits")
    ap.add_argument("--cases", default=CASES, help=f"graph:method list (default: {CASES})")
    ap.add_argument("--mask-frac", type=float, default=1.0,
                    help="fraction of masked positions under the absorbing graph (default: 1); dllm reads only "
                         "the masked rows' logits, and the floor counts only those")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    ap.add_argument("--compile-all", action="store_true",
                    help="time the torch.compile peer for every case (default: each shape's first case only; each "
                         "compile takes seconds to tens of seconds)")
    args, shapes, reps = parse_bench_args(ap, cpu=(1, 5))
    device, dtype = args.device, DTYPES[args.dtype]
    cuda = device.startswith("cuda")
    floor_gbps = copy_bandwidth_gbps(device)
    cases = [tuple(c.split(":")) for c in args.cases.split(",")]
    known = {(g, m) for g in ("absorb", "uniform") for m in ("analytic", "euler", "denoise")}
    if not set(cases) <= known:
        ap.error(f"--cases: each case is graph:method, graph absorb or uniform, method analytic, euler or denoise; "
                 f"got {args.cases!r}")

    meta = machine(device) | reps | {"floor_gbps": floor_gbps, "mask_frac": args.mask_frac}
    title = "sedd_step: fused SEDD sampler step (score transform + predictor + exact draw)"
    rows = Results(args.out, title, meta)
    to_compile = []  # the torch.compile peer runs after every eager row is written: a cold compile may take a minute
    for b, l, k in shapes:
        gen = torch.Generator(device=device).manual_seed(0)  # drawn on the device: GB of logits
        logits = (torch.randn(b, l, k, generator=gen, device=device) * 2).to(dtype)
        shape = f"{b}x{l}x{k}"
        for graph, method in cases:
            x = torch.randint(0, k, (b, l), generator=gen, device=device)
            rows_read = b * l
            if graph == "absorb":  # unmasked positions stay: their logits are never read
                x = torch.where(torch.rand(b, l, generator=gen, device=device) < args.mask_frac, torch.full_like(x, k - 1), x)
                rows_read = int((x == k - 1).sum())
            nbytes = rows_read * k * logits.element_size() + b * l * 16  # logits read, x in, x_next out
            sigma = torch.full((b,), 0.7, device=device)
            dsig = sigma if method == "denoise" else torch.full((b,), 0.01, device=device)
            case = (f"sedd_step {graph}/{method}", shape, nbytes, (logits, x, sigma, dsig, graph, method))
            impls = [*dllm_rows(lambda: ours(*case[3]), device),
                     ("eager reference (SEDD math, fp32)", lambda: eager(*case[3]))]
            measured = measure_case(case, impls, device, args.dtype, floor_gbps, reps)
            if not cuda:
                measured[0].note = "reads each row it needs once"
            rows.report(measured)
            if not args.no_compile and (args.compile_all or (graph, method) == cases[0]):
                to_compile.append(case)
    for case in to_compile:
        op, shape, nbytes, inputs = case
        torch._dynamo.reset()  # a fresh compile each time: past 8 recompiles dynamo silently runs eager
        compiled = torch.compile(eager, dynamic=False)
        t0 = time.perf_counter()
        try:
            compiled(*inputs)
        except Exception as e:  # noqa: BLE001  (report, do not hide, a peer that fails)
            rows.append(unmeasured_row(op, shape, args.dtype, "torch.compile reference", nbytes, f"failed: {type(e).__name__}"))
            continue
        name = f"torch.compile reference ({time.perf_counter() - t0:.0f} s compile)"
        # timed in turns with dllm again, so its ratio compares calls that met the same machine
        _, peer = measure_case(case, [("dllm", with_streaming(lambda: ours(*inputs))),
                                      (name, lambda: compiled(*inputs))], device, args.dtype, floor_gbps, reps)
        rows.report([peer])
    rows.finish()


if __name__ == "__main__":
    main()
