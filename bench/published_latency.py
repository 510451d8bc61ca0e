"""Benchmark: sampler step latency and generation throughput of LLaDA-8B and Dream-7B shaped models.

Random weights in the published shapes (LLaDA-8B: d_model 4096, 32 layers, 32 heads, SwiGLU 12288,
vocab 126464; Dream-7B = Qwen2.5-7B: 3584, 28 layers, 28 query / 4 key-value heads, SwiGLU 18944,
vocab 152064, q/k/v biases) in dllm's LLaDAModel, wrapped like a loaded checkpoint, in bf16 on a
GPU. Rows: one sampler step (one forward over prompt + generation, then dllm's predict/commit
ops), and a whole ``dllm.generate`` whose tokens/s is generated tokens over its wall time. There
is no peer in this file: the reference numbers are those LLaDA's and Fast-dLLM's papers report.
--tiny runs the same code at tiny shapes on the CPU, as a smoke test of the script.

  python bench/published_latency.py --device cuda --out bench/results/<name>/published_latency
  python bench/published_latency.py --tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import dllm
from common import Results, at_least, built_in, copy_bandwidth_gbps, machine, measure
from dllm.models import LLaDAModel, ModelConfig
from dllm.models.hub import PublishedModel

# Shapes and special ids as the published config.json files give them.
PUBLISHED = {
    "LLaDA-8B": (dict(arch="llada", vocab_size=126464, hidden=4096, layers=32, heads=32, kv_heads=32, mlp_hidden=12288,
                      rope_base=500000.0, norm_eps=1e-5, max_seq_len=4096),
                 dict(mask_id=126336, pad_id=126081, logits_shift=0), "llada"),
    "Dream-7B": (dict(arch="llada", vocab_size=152064, hidden=3584, layers=28, heads=28, kv_heads=4, mlp_hidden=18944,
                      rope_base=1000000.0, norm_eps=1e-6, max_seq_len=131072, qkv_bias=True),
                 dict(mask_id=151666, pad_id=151643, logits_shift=1), "dream"),
}
# The same families at toy width, for --tiny (GQA kept for Dream); ids inside the toy vocabulary.
TINY = {"hidden": 64, "layers": 2, "heads": 4, "mlp_hidden": 128, "vocab_size": 512}


def build(name: str, tiny: bool, device: str, dtype: torch.dtype) -> tuple[PublishedModel, str, int]:
    shape, ids, sampler = PUBLISHED[name]
    if tiny:
        shape = shape | TINY | {"kv_heads": 2 if shape["kv_heads"] < shape["heads"] else 4}
        ids = ids | {"mask_id": 500, "pad_id": 499}
    with built_in(device, dtype):
        net = LLaDAModel(ModelConfig(**shape))
    # the input embedding is a row lookup: it neither multiplies every token nor is read whole
    # (518M of LLaDA-8B's 8,016M)
    params = sum(p.numel() for p in net.parameters()) - net.embed.weight.numel()
    return PublishedModel(net.eval(), layout=sampler, **ids), sampler, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    ap.add_argument("--tiny", action="store_true", help="toy widths on the CPU (a smoke test, not a measurement "
                                                         "of the published models)")
    ap.add_argument("--models", default="LLaDA-8B,Dream-7B", help="comma-separated, from " + ", ".join(PUBLISHED))
    ap.add_argument("--batch", type=at_least(1), default=1, help="sequences per batch")
    ap.add_argument("--prompt", type=at_least(1), default=None, help="prompt tokens (default 128; 16 with --tiny)")
    ap.add_argument("--gen", type=at_least(1), default=None, help="generated tokens (default 256; 32 with --tiny)")
    ap.add_argument("--steps", type=at_least(1), default=None, help="sampler steps per generation (default: --gen, "
                                                            "one token per step, LLaDA's quality setting)")
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and summary.md")
    args = ap.parse_args()
    device = "cpu" if args.tiny else args.device
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    unknown = set(args.models.split(",")) - set(PUBLISHED)
    if unknown:
        ap.error(f"--models: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PUBLISHED)}")
    P = args.prompt if args.prompt is not None else (16 if args.tiny else 128)
    G = args.gen if args.gen is not None else (32 if args.tiny else 256)
    steps, B = args.steps if args.steps is not None else G, args.batch
    floor_gbps = copy_bandwidth_gbps(device)
    reps = {} if device.startswith("cuda") else {"warmup": 3, "reps": 5, "min_seconds": 0.0}
    meta = machine(device) | {"floor_gbps": floor_gbps}
    title = ("published model shapes (random weights): one sampler step and generate; GB/s = weight bytes read "
             "per forward (all but the input embedding's)")
    rows = Results(args.out, title, meta)
    for name in args.models.split(","):
        model, sampler, params = build(name, args.tiny, device, dtype)
        label = f"{name}{' (tiny)' if args.tiny else ''}"
        weight_bytes = params * torch.finfo(dtype).bits // 8
        prompt = torch.randint(0, model.mask_id, (B, P), device=device, generator=torch.Generator(device).manual_seed(0))
        run = lambda gen_length, n_steps: dllm.generate(model, prompt, gen_length=gen_length, steps=n_steps,  # noqa: E731
                                                        sampler=sampler)
        # One step over the full canvas: generate with steps=1 is exactly one forward plus one predict/commit.
        step = measure("sampler step", f"B{B} L{P + G}", str(dtype).removeprefix("torch."), label, lambda: run(G, 1),
                       device, weight_bytes, floor_gbps, **reps)
        tflops = 2 * params * B * (P + G) / (step.median_ms * 1e-3) / 1e12
        step.note = f"{params / 1e6:,.1f}M params past the embedding; {tflops:.3f} TFLOP/s (2 x params x tokens)"
        step.ratio_vs_dllm = float("nan")  # no peer
        rows.append(step)
        gen = measure("generate", f"B{B} P{P} G{G} steps {steps}", step.dtype, label, lambda: run(G, steps), device,
                      weight_bytes * steps, floor_gbps, warmup=1, reps=2, min_seconds=0.0)
        tokens_per_s = B * G / (gen.median_ms * 1e-3)
        gen.extra["tokens_per_s"] = tokens_per_s
        gen.note = f"{tokens_per_s:.1f} tokens/s"
        gen.ratio_vs_dllm = float("nan")
        if device.startswith("cuda"):
            # an untimed call of its own: the timed ones share the device with the clock's L2-flush buffer
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            run(G, steps)
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            gen.extra["peak_GiB"] = step.extra["peak_GiB"] = peak
            gen.note += f"; peak memory {peak:.1f} GiB"
        rows.append(gen)
        print(f"{label}: step {step.median_ms:.2f} ms, generate {gen.median_ms / 1e3:.2f} s = {tokens_per_s:.1f} tokens/s")
        del model, run  # free one model before building the next
    rows.finish()


if __name__ == "__main__":
    main()
