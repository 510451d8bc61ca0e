"""Benchmark: dllm.ops.attention against torch SDPA, with and without per-sequence lengths.

Peers (same run, same inputs): SDPA's default choice and its flash, cuDNN and memory-efficient
backends on a GPU (a boolean key-padding mask for the runs with lengths; flash refuses masks),
SDPA's default CPU path on the CPU. TFLOP/s = 4 * H * D * sum_b(Sq * Sk_b) / time: the runs with
lengths (kv_len uniform in [L/2, L]; every query row is kept, since a sampler's canvas has no
padded queries) count only the keys that exist, whatever a peer spends on masked ones; the note
also gives the rate counting the padded L x L, as the H100 peer numbers behind the targets count masked peers.
Forward + backward counts 3.5x the forward. The hardware floor is a bf16 (CPU: float32) matmul's
rate, measured in the same run: "% of floor" is the fraction of it reached. The default GPU shapes hold the issue's targets:
SEDD-small (B16 H12 L1024 D64) and D = 128 at L >= 2048. On an H100/H200 built for 9.0, both
sets of dllm kernels run: "dllm" (wgmma, the default there), "dllm lock-step" (wgmma with its two
warpgroups in lock step, DLLM_ATTENTION_PINGPONG=0, instead of half a tile apart) and "dllm
mma.sync" (DLLM_ATTENTION_KERNEL=mma, the default elsewhere); the ratios are against the default one.
Forward + backward also runs "dllm atomic dQ" (DLLM_ATTENTION_DQ=atomic: dQ added by the dK/dV
kernel with float32 atomics, no dQ kernel). The runs with lengths also time the same batch packed
(FlashAttention's varlen layout, packed before the timing): "dllm varlen" (`attention_varlen`) and
"SDPA jagged", SDPA on nested tensors of the jagged layout, the maskless ragged path torch offers
(its flash kernel's varlen form on a GPU), given the longest sequence so that no call reads it back.

  python bench/attention.py --device cuda --out bench/results/<name>
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import dllm
from common import ATTENTION_KERNEL_VARIABLES, Results, bench_parser, machine, matmul_tflops, measure_against, parse_bench_args
BACKENDS = {"SDPA default": None, "SDPA flash": SDPBackend.FLASH_ATTENTION, "SDPA cuDNN": SDPBackend.CUDNN_ATTENTION,
            "SDPA mem-efficient": SDPBackend.EFFICIENT_ATTENTION}


CUDA_SHAPES = "16x12x1024x64,4x16x2048x128,2x32x4096x128,1x32x8192x128"
CPU_SHAPES = "16x4x160x32,2x4x512x64,1x4x2048x128"


def timed_call(fn, inputs, backward: bool):
    """The call timed: fn's forward, and with backward its gradients with respect to inputs,
    returned by torch.autograd.grad rather than accumulated into their .grad: q, k and v are leaves
    here (activations in a model), and from the second call on accumulating would add a
    read-modify-write of all three to every timed call, dllm's and the peers' alike. Returns the
    output and the gradients (None without backward), which the tests compare across peers."""
    def call():
        out = fn()
        return out, torch.autograd.grad(out, inputs, torch.ones_like(out)) if backward else None
    return call


def packed(q, k, v, kv_len, backward: bool):
    """The padded batch q, k, v [B, L, H, D] with keys kv_len packed as a varlen batch (every query
    kept): q, k, v [tokens, H, D], fresh leaves when timing the backward, and int32 cu_seqlens."""
    B, L = q.shape[:2]
    cu_q = torch.arange(0, B * L + 1, L, device=q.device, dtype=torch.int32)
    cu_k = F.pad(kv_len.cumsum(0), (1, 0)).to(torch.int32)
    keys = [slice(0, n) for n in kv_len.tolist()]
    qp = q.detach().reshape(B * L, *q.shape[2:]).clone()
    kp, vp = (torch.cat([t.detach()[b, r] for b, r in enumerate(keys)]) for t in (k, v))
    return tuple(t.requires_grad_(backward) for t in (qp, kp, vp)), cu_q, cu_k


def jagged(t, cu_seqlens, lengths: tuple[int, int]):
    """A packed [tokens, H, D] as SDPA's nested [B, H, j, D] (a view), given its shortest and longest
    sequence: read back from the offsets, they would cost a synchronisation a call."""
    nested = torch.nested.nested_tensor_from_jagged(t, cu_seqlens.long(), min_seqlen=lengths[0],
                                                    max_seqlen=lengths[1])
    return nested.transpose(1, 2)


def main() -> None:
    ap = bench_parser(__doc__, "BxHxLxD", CUDA_SHAPES, CPU_SHAPES)
    ap.add_argument("--backward", action="store_true", help="time forward + backward")
    ap.add_argument("--no-wgmma", action="store_true", help="leave out the Hopper wgmma kernels")
    ap.add_argument("--no-atomic-dq", action="store_true",
                    help="leave out the wgmma backward with atomic dQ (DLLM_ATTENTION_DQ=atomic)")
    ap.add_argument("--no-pingpong", action="store_true",
                    help="run the wgmma kernels in lock step only (DLLM_ATTENTION_PINGPONG=0): 'dllm' is lock step")
    args, shapes, reps = parse_bench_args(ap, cpu=(3, 10))
    device = args.device
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    wgmma = cuda and not args.no_wgmma and dllm.build_info()["wgmma"] and torch.cuda.get_device_capability(device) == (9, 0)
    peak = matmul_tflops(device, dtype)
    meta = machine(device) | reps | {"floor_gbps": float("nan"), "matmul_tflops": peak}
    title = "attention (bidirectional), " + ("forward + backward" if args.backward else "forward")
    rows = Results(args.out, title, meta)
    for B, H, L, D in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(B, L, H, D, device=device, dtype=dtype, generator=g).requires_grad_(args.backward)
                   for _ in range(3))
        kv_len = torch.randint(L // 2, L + 1, (B,), device=device, generator=g)
        mask = (torch.arange(L, device=device)[None, :] < kv_len[:, None])[:, None, None, :]
        for masked in (False, True):
            lens = kv_len if masked else None
            keys = int(kv_len.sum()) if masked else B * L
            per_key = 4 * H * L * D * (3.5 if args.backward else 1.0)
            flops = per_key * keys

            def run(fn):
                return timed_call(fn, (q, k, v), args.backward)

            def dllm_call(kernel="wgmma" if wgmma else "mma", pingpong="0" if args.no_pingpong else "1",
                          dq="separate", attend=lambda: dllm.ops.attention(q, k, v, kv_len=lens)):
                def call():
                    # read by the op at every call, the backward's included
                    os.environ.update(DLLM_ATTENTION_KERNEL=kernel, DLLM_ATTENTION_PINGPONG=pingpong,
                                      DLLM_ATTENTION_DQ=dq)
                    return attend()
                return call

            candidates = {"dllm": run(dllm_call())}
            if wgmma:
                if not args.no_pingpong:
                    candidates["dllm lock-step"] = run(dllm_call("wgmma", "0"))
                if args.backward and not args.no_atomic_dq:
                    candidates["dllm atomic dQ"] = run(dllm_call("wgmma", dq="atomic"))
                candidates["dllm mma.sync"] = run(dllm_call("mma"))
            qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            for name, backend in (BACKENDS if cuda else {"SDPA (CPU)": None}).items():
                def sdpa(backend=backend):
                    if backend is None:
                        return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask if masked else None)
                    with sdpa_kernel([backend]):
                        return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask if masked else None)
                candidates[name] = run(sdpa)
            if masked:
                (qp, kp, vp), cu_q, cu_k = packed(q, k, v, kv_len, args.backward)
                q_lengths, k_lengths = (L, L), (int(kv_len.min()), int(kv_len.max()))

                varlen = dllm_call(attend=lambda: dllm.ops.attention_varlen(qp, kp, vp, cu_q, cu_k, L, k_lengths[1]))

                def sdpa_jagged():
                    out = F.scaled_dot_product_attention(jagged(qp, cu_q, q_lengths), jagged(kp, cu_k, k_lengths),
                                                         jagged(vp, cu_k, k_lengths))
                    return out.transpose(1, 2).values()

                candidates["dllm varlen"] = timed_call(varlen, (qp, kp, vp), args.backward)
                candidates["SDPA jagged"] = timed_call(sdpa_jagged, (qp, kp, vp), args.backward)
            shape = f"B{B} H{H} L{L} D{D}" + (" lengths" if masked else "")
            op, dt = "attention" + (" fwd+bwd" if args.backward else " fwd"), str(dtype).removeprefix("torch.")
            # a backend may refuse the inputs (flash with a mask): RuntimeError
            measured = measure_against(op, shape, dt, list(candidates.items()), device, 0, 1.0,
                                       refused_by=(RuntimeError,), **reps)
            for name in ATTENTION_KERNEL_VARIABLES:
                os.environ.pop(name)
            unit, scale = ("TFLOP/s", 1.0) if cuda else ("GFLOP/s", 1e3)
            for r in measured:
                if r.median_ms == r.median_ms:  # timed
                    r.extra["tflops"] = flops / (r.median_ms * 1e-3) / 1e12
                    r.pct_floor = 100.0 * r.extra["tflops"] / peak
                    r.note = f"{r.extra['tflops'] * scale:.1f} {unit}"
                    if masked:
                        r.extra["tflops_padded"] = per_key * B * L / (r.median_ms * 1e-3) / 1e12
                        r.note += f" ({r.extra['tflops_padded'] * scale:.1f} counting the padded L x L)"
                rows.append(r)
            print(shape + ": " + ", ".join(f"{r.impl} {r.median_ms:.3f} ms" for r in rows[-len(candidates):]))
    rows.finish()


if __name__ == "__main__":
    main()
