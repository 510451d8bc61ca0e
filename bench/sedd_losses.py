"""Benchmark: score_entropy_loss and masked_diffusion_loss, forward + backward, against eager.

The peers are the plain-PyTorch references (dllm.sedd.reference: SEDD's score entropy, MDLM's
SUBS loss) with autograd, in float32 on the same logits. The floor is reading the logits of the
masked positions (all of them by default, --mask-frac 1) and writing the whole gradient once at the
measured copy bandwidth; dllm's fused kernels read those logits twice (forward, backward) and write
the gradient once. dllm's forward and backward kernels are also timed alone, each against its own
floor (the forward reads the masked rows; the backward reads them and writes the whole gradient),
to say which of the two keeps fwd+bwd from the floor; on CUDA the forward also with
DLLM_ASYNC_COPIES=1 ("dllm, async copies", off by default until measured).

  python bench/sedd_losses.py --device cuda --out bench/results/<name>/sedd_losses
"""

from __future__ import annotations

import torch

import dllm
from common import (DTYPES, Results, bench_parser, copy_bandwidth_gbps, machine, measure_against, parse_bench_args,
                    peak_extra_mb, with_streaming)
from dllm.sedd import reference as ref


def fwd_bwd(loss_fn, logits):
    leaf = logits.detach().requires_grad_()
    loss = loss_fn(leaf)
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    return grad


def main() -> None:
    ap = bench_parser(__doc__, "BxLxK", "16x1024x50258", "2x256x50258", dtype_of="logits")
    ap.add_argument("--mask-frac", type=float, default=1.0,
                    help="fraction of masked positions (default 1: only masked rows count, and dllm reads no other)")
    args, shapes, reps = parse_bench_args(ap, cpu=(1, 5))
    device, dtype = args.device, DTYPES[args.dtype]
    cuda = device.startswith("cuda")
    floor_gbps = copy_bandwidth_gbps(device)

    meta = machine(device) | reps | {"floor_gbps": floor_gbps, "mask_frac": args.mask_frac}
    title = "SEDD / MDLM losses: forward + backward"
    rows = Results(args.out, title, meta)
    for b, l, k in shapes:
        gen = torch.Generator(device=device).manual_seed(0)  # drawn on the device: GB of logits
        logits = (torch.randn(b, l, k, generator=gen, device=device) * 2).to(dtype)
        x0 = torch.randint(0, k - 1, (b, l), generator=gen, device=device)
        masked = torch.rand(b, l, generator=gen, device=device) < args.mask_frac
        x_t = torch.where(masked, torch.full_like(x0, k - 1), x0)
        sigma = torch.full((b,), 0.7, device=device)
        dsigma = torch.full((b,), 1.3, device=device)
        weight = dsigma / torch.expm1(sigma)
        # read the masked rows' logits (the others do not enter either loss), write all of d(logits)
        nbytes = (int(masked.sum()) * k + logits.numel()) * logits.element_size()
        shape = f"{b}x{l}x{k}"
        read_bytes = int(masked.sum()) * k * logits.element_size()
        ones = torch.ones(b, device=device)
        lse = torch.ops.dllm.masked_diffusion_loss(logits, x_t, x0, weight, mask_id=k - 1)[1]
        cases = {
            "score_entropy_loss absorb": (
                lambda z: dllm.ops.score_entropy_loss(z, x_t, x0, sigma, dsigma, graph="absorb"),
                lambda z: ref.score_entropy_loss(z.float(), x_t, x0, sigma, dsigma, graph="absorb"),
                lambda: torch.ops.dllm.score_entropy_loss_backward(ones, logits, x_t, x0, sigma, dsigma, graph="absorb",
                                                                   scale_by_sigma=True)),
            "masked_diffusion_loss": (
                lambda z: dllm.ops.masked_diffusion_loss(z, x_t, x0, weight, mask_id=k - 1),
                lambda z: ref.masked_diffusion_loss(z.float(), x_t, x0, weight, mask_id=k - 1),
                lambda: torch.ops.dllm.masked_diffusion_loss_backward(ones, logits, lse, x_t, x0, weight,
                                                                      mask_id=k - 1)),
        }
        for op, (ours_fn, peer_fn, backward_fn) in cases.items():
            for part, fn, part_bytes in (("fwd", lambda: ours_fn(logits), read_bytes), ("bwd", backward_fn, nbytes)):
                if part_bytes == 0:  # no masked row: the forward reads nothing, and has no floor
                    continue
                impls = [("dllm", with_streaming(fn))]
                if cuda and part == "fwd":
                    impls.append(("dllm, async copies", with_streaming(fn, "DLLM_ASYNC_COPIES")))
                for alone in measure_against(f"{op} {part} alone", shape, args.dtype, impls, device, part_bytes,
                                             floor_gbps, **reps):
                    alone.note = f"{alone.median_ms / (part_bytes / floor_gbps / 1e6):.2f}x its floor"
                    rows.append(alone)
            impls = [("dllm", with_streaming(lambda: fwd_bwd(ours_fn, logits))),
                     ("eager reference (fp32)", lambda: fwd_bwd(peer_fn, logits))]
            ours, peer = measure_against(op + " fwd+bwd", shape, args.dtype, impls, device, nbytes, floor_gbps, **reps)
            ours.note = f"{ours.median_ms / (nbytes / floor_gbps / 1e6):.2f}x the floor"
            if cuda:  # the peak beyond the inputs, the returned gradient (one B x L x K tensor) included
                for row, (_, fn) in zip((ours, peer), impls):
                    if row.median_ms == row.median_ms:  # not out of memory
                        row.extra["peak_extra_mb"] = peak_extra_mb(fn, device)
                        row.note += ("; " if row.note else "") + f"peak extra memory {row.extra['peak_extra_mb']:.1f} MB"
            rows.append(ours)
            rows.append(peer)
            print(f"{shape} {op}: " + ", ".join(f"{r.impl} {r.median_ms:.2f} ms" for r in rows[-2:]), flush=True)

    rows.finish()


if __name__ == "__main__":
    main()
