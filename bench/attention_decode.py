"""Benchmark: one autoregressive decoding step's attention, dllm.ops.attention against SDPA.

A query per sequence attends over a KV cache of capacity C (the cache's whole buffers
[B, C, Hkv, D]) that holds n keys in every row, as ARTransformer.generate's step does; with
--queries 32, a block of 32 queries does, as a Fast-dLLM cached step's (on CUDA, the tensor-core
forward split into key chunks where one CTA per query tile would leave SMs idle). Peers,
timed in turns on the same tensors:
  - "SDPA, filled prefix": SDPA over the views k[:, :n], v[:, :n] without a mask: the eager loop's
    usual call, whose shapes change with every token (no CUDA graph can replay it);
  - "SDPA, lengths as a mask": SDPA over the whole buffers with a key-padding mask, what a step of
    fixed shapes (a graph) passes SDPA.
dllm takes the whole buffers and n as kv_len (on CUDA: the split-key decoding kernels; on the CPU,
K and V rows read in place). On CUDA, "attention decode, CUDA graph" rows time dllm and the mask
peer again, each replayed from a CUDA graph as the graphed decoding and Fast-dLLM steps run them:
at these sizes an eager call is mostly the host's launch work, which those rows leave out. The
floor is reading the n keys and values and the queries once and writing the output, at the
measured copy bandwidth.

  python bench/attention_decode.py --device cuda --out bench/results/<name>/attention_decode
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import dllm
from common import (DTYPES, Results, bench_parser, copy_bandwidth_gbps, machine, measure_against, parse_bench_args,
                    replayed, unmeasured_row)

# B x H x Hkv x C x n x D: the e2e `small` model at batch 1 and 16 (12 heads of 64, n = 1000 of a
# 1025-position cache), LLaDA-8B's attention shape (32 heads of 128) with 4096 keys
CUDA_SHAPES = "1x12x12x1025x1000x64,16x12x12x1025x1000x64,1x32x32x4097x4096x128"
CPU_SHAPES = "1x12x12x1025x1000x64,16x12x12x257x256x64"


def main() -> None:
    ap = bench_parser(__doc__, "BxHxHkvxCxnxD", CUDA_SHAPES, CPU_SHAPES, dtype_of="q, k and v's")
    ap.add_argument("--queries", default=None, help="comma-separated queries per sequence, each run on every "
                    "shape (default: 1,32 on CUDA, 1 on the CPU)")
    args, shapes, reps = parse_bench_args(ap, cpu=(3, 20))
    device, dtype = args.device, DTYPES[args.dtype]
    if device == "cpu" and dtype != torch.float32:
        print("note: on the CPU SDPA computes bf16 / fp16 in float32 too; --dtype fp32 is what CPU models run")
    floor_gbps = copy_bandwidth_gbps(device)
    try:
        queries = [int(x) for x in (args.queries or ("1,32" if device.startswith("cuda") else "1")).split(",")]
    except ValueError:
        queries = [0]
    if min(queries) <= 0:
        ap.error(f"--queries: comma-separated positive integers, got {args.queries!r}")
    rows = Results(args.out, "attention: a decoding step (or a query block) over a KV cache",
                   machine(device) | reps | {"floor_gbps": floor_gbps})
    for (B, H, Hkv, C, n, D), Sq in ((shape, Sq) for shape in shapes for Sq in queries):
        if not 0 < n <= C or H % Hkv:
            raise SystemExit(f"shape {B}x{H}x{Hkv}x{C}x{n}x{D}: need 0 < n <= C and H a multiple of Hkv")
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(B, Sq, H, D, device=device, generator=g).to(dtype)
        k, v = (torch.randn(B, C, Hkv, D, device=device, generator=g).to(dtype) for _ in range(2))
        kv_len = torch.full((B,), n, dtype=torch.int32, device=device)
        mask = (torch.arange(C, device=device) < n)[None, None, None, :]
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        gqa = H != Hkv
        impls = [("dllm", lambda: dllm.ops.attention(q, k, v, kv_len=kv_len)),
                 ("SDPA, filled prefix", lambda: F.scaled_dot_product_attention(
                     qt, kt[:, :, :n], vt[:, :, :n], enable_gqa=gqa)),
                 ("SDPA, lengths as a mask", lambda: F.scaled_dot_product_attention(
                     qt, kt, vt, attn_mask=mask, enable_gqa=gqa))]
        # read the n keys and values and the queries, write the output
        nbytes = (2 * B * n * Hkv * D + 2 * B * Sq * H * D) * k.element_size()
        shape = f"B{B} Sq{Sq} H{H} Hkv{Hkv} C{C} n{n} D{D}"
        rows.report(measure_against("attention decode", shape, args.dtype, impls, device, nbytes, floor_gbps,
                                    refused_by=(RuntimeError,), **reps))
        if device.startswith("cuda"):  # the filled prefix's shapes change every token: no graph replays it
            graphed = [(name, replayed(fn)) for name, fn in impls if name != "SDPA, filled prefix"]
            try:
                rows.report(measure_against("attention decode, CUDA graph", shape, args.dtype, graphed, device,
                                            nbytes, floor_gbps, refused_by=(RuntimeError,), **reps))
            except RuntimeError as e:  # a capture no GPU has run yet: its failure costs these rows, not the rest
                rows.report([unmeasured_row("attention decode, CUDA graph", shape, args.dtype, "dllm", nbytes,
                                            f"capture failed: {str(e).splitlines()[0][:60]}")])
    rows.finish()


if __name__ == "__main__":
    main()
