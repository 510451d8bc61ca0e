"""Benchmark: one masked-diffusion unmasking step, dllm against LLaDA's eager step.

The peer is LLaDA's generate.py step written out faithfully: float64 Gumbel noise on the logits,
argmax, float64 softmax for the confidence, masking, then a per-row torch.topk loop (with its
implicit host sync per row) and the scatter. dllm does the same with predict_masked +
commit_tokens, eagerly and (CUDA) replayed from a CUDA graph. Memory is the peak allocated during
the step, beyond its inputs (CUDA only). On CUDA the rows "dllm, L2 prefetch" and "dllm, async copies" are the eager
step with DLLM_L2_PREFETCH=1 (predict_masked asks L2 for its rows ahead of its loads) and with
DLLM_ASYNC_COPIES=1 (its fused pass reads through shared memory by cp.async, batches ahead), both
off by default until measured; the others run with both off.

  python bench/unmask_step.py --device cuda --out bench/results/<name>
"""

from __future__ import annotations

import torch

import dllm
from common import (Results, bench_parser, copy_bandwidth_gbps, dllm_rows, machine, measure_against, parse_bench_args,
                    peak_extra_mb, with_streaming)
from dllm.benchmarks.step_latency import llada_eager_step
from dllm.sampling.cuda_graph import GraphedStep

LLADA_MASK = 126336  # LLaDA's mask id, in its vocabulary of 126464


def mask_id_for(vocab: int) -> int:
    """LLaDA's mask id where the vocabulary holds it, else the last token (shapes given by --shapes)."""
    return LLADA_MASK if vocab > LLADA_MASK else vocab - 1


def llada_step(logits, x, num_transfer, temperature):
    return llada_eager_step(logits, x, num_transfer, temperature, mask_id_for(logits.shape[-1]))


def dllm_step(logits, x, num_transfer, temperature):
    x = x.clone()
    commit_in_place(logits, x, num_transfer, temperature)
    return x


def commit_in_place(logits, x, num_transfer, temperature):
    mask_id = mask_id_for(logits.shape[-1])
    x0, conf = dllm.ops.predict_masked(logits, x, mask_id=mask_id, temperature=temperature)
    dllm.ops.commit_tokens(x, x0, conf, mask_id=mask_id, num_tokens=num_transfer)
    return x


CUDA_SHAPES, CPU_SHAPES = "1x1024x126464,8x1024x126464,1x4096x126464", "1x512x126464"


def main() -> None:
    ap = bench_parser(__doc__, "BxLxV", CUDA_SHAPES, CPU_SHAPES)
    ap.add_argument("--temperature", type=float, default=1.0, help="LLaDA's Gumbel temperature (default 1; 0: greedy)")
    args, shapes, reps = parse_bench_args(ap, cpu=(1, 3))
    device = args.device
    floor_gbps = copy_bandwidth_gbps(device)
    t = args.temperature
    meta = machine(device) | reps | {"floor_gbps": floor_gbps, "temperature": t}
    title = f"unmasking step (predict_masked + commit_tokens), temperature {t}"
    rows = Results(args.out, title, meta)
    for B, L, V in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        logits = (torch.randn(B, L, V, device=device, generator=g) * 3).bfloat16()
        x = torch.full((B, L), mask_id_for(V), device=device)  # a fresh canvas: every position masked
        k = torch.full((B,), max(1, L // 64), device=device)  # L / 64 tokens per step
        nbytes = logits.numel() * 2 + x.numel() * 8 * 2  # read the logits once, read + write x
        shape = f"{B}x{L}x{V}"
        # the peer gets the counts as a tensor, as LLaDA's get_num_transfer_tokens makes them: one host sync a row
        impls = [*dllm_rows(lambda: dllm_step(logits, x, k, t), device), ("LLaDA eager", lambda: llada_step(logits, x, k, t))]
        if device.startswith("cuda"):
            # The same step replayed from a CUDA graph: no host work between the kernels. The
            # eager step no longer waits for its error checks (dllm.ops.raise_pending_errors), so
            # it is queued while the clock's L2 flush runs: its gap to this row is the host work
            # that the flush does not hide.
            graphed = GraphedStep(lambda x: commit_in_place(logits, x, k, t), None)
            impls.append(("dllm, CUDA graph", with_streaming(lambda: graphed(x.clone()))))
        measured = measure_against("unmask step", shape, "bf16", impls, device, nbytes, floor_gbps, **reps)
        for row, (_, fn) in zip(measured, impls):
            if row.median_ms == row.median_ms:  # not out of memory
                row.extra["peak_extra_mb"] = peak_extra_mb(fn, device)
                if device.startswith("cuda"):
                    row.note = f"peak extra memory {row.extra['peak_extra_mb']:.0f} MB"
        rows.report(measured)
    rows.finish()


if __name__ == "__main__":
    main()
