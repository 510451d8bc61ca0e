"""`dllm demo`: train a tiny code model on the standard library, then watch it denoise.

Trains a masked-diffusion model (MDLM) and the autoregressive baseline of the same architecture
for a bounded few minutes each on the running Python's standard-library sources, then shows
unconditional samples, a completion, an infill, the denoising step by step, and the tokens/s of
both models at equal length. Everything lands in the output folder; a rerun reuses the cached
corpus and trained models unless --retrain is given.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import torch

from .benchmarks.common import time_interleaved
from .devices import resolve_device
from .sampling import generate
from .sampling.pretrained import load_for_sampling
from .training.timed import train_for_minutes

COMPLETION_PROMPT = "def is_even(n):\n    "
INFILL_BEFORE = "def add(a, b):\n    "
INFILL_AFTER = "\n\n\ndef sub(a, b):\n    return a - b\n"


MASK_GLYPH = "\u2591"  # a light shade: code has underscores, so they cannot stand for masks


def show(tok, ids: torch.Tensor) -> str:
    """Decoded text with mask tokens drawn as MASK_GLYPH (the text "<|mask|>", which the tokenizers
    encode as plain characters, stays text)."""
    pieces, run = [], []
    for i in ids.tolist():
        if i == tok.mask_id:
            pieces += [tok.decode(run), MASK_GLYPH]
            run = []
        else:
            run.append(i)
    return "".join(pieces) + tok.decode(run)


def _trajectory_png(history: list[torch.Tensor], mask_id: int, path: Path) -> None:
    """Which step committed each position: one row per step, masked positions dark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = torch.stack([(h[0] != mask_id).float() for h in history]).cpu().numpy()
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("position")
    ax.set_ylabel("step")
    ax.set_title("denoising trajectory (bright: committed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _tokens_per_second(fns: list, tokens: int, device: str) -> list[float]:
    """Each fn's tokens/s, from the median of three calls made in turns with the others', so a
    shared machine's drifting load meets both models alike."""
    return [tokens / (statistics.median(t) * 1e-3) for t in time_interleaved(fns, device, warmup=1, reps=3)]


def run_demo(out_dir: str = "out/demo", minutes: float = 3.0, gen_length: int = 128, steps: int = 64,
             device: str = "auto", retrain: bool = False, seed: int = 0, tokenizer: str = "bpe") -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device(device))
    # One position more than a sample, as the cached models and docs/demo.md's records were trained
    # (the autoregressive model's start token and gen_length tokens after it need gen_length positions)
    seq_len = max(gen_length, 128) + 1
    dirs = {obj: train_for_minutes(obj, out, minutes, device=device, seq_len=seq_len, tokenizer=tokenizer,
                                   retrain=retrain, log_prefix="[demo]")
            for obj in ("mdlm", "ar")}
    diffusion, tok, _ = load_for_sampling(dirs["mdlm"], device)
    ar, _, _ = load_for_sampling(dirs["ar"], device)
    g = torch.Generator(device=device).manual_seed(seed)
    report: list[str] = []

    def section(title: str, text: str) -> None:
        print(f"\n=== {title} ===\n{text}")
        report.append(f"## {title}\n\n```\n{text}\n```\n")

    samples = generate(diffusion, torch.empty(2, 0, dtype=torch.int64), gen_length=gen_length, steps=steps,
                       sampler="mdlm", temperature=1.0, generator=g, return_history=True)
    section(f"two unconditional samples (mdlm sampler, {steps} steps)",
            "\n\n--- next sample ---\n\n".join(show(tok, row) for row in samples.sequences))

    prompt = torch.as_tensor(tok.encode(COMPLETION_PROMPT), device=device)
    done = generate(diffusion, prompt, gen_length=gen_length // 2, steps=gen_length // 2, sampler="llada",
                    block_length=gen_length // 8, temperature=0.8, generator=g)
    section(f"completion of a signature (llada sampler, blocks of {gen_length // 8}, one token a step, "
            "temperature 0.8)",
            show(tok, done.sequences[0]))

    before, after = tok.encode(INFILL_BEFORE), tok.encode(INFILL_AFTER)
    hole = gen_length // 4
    template = torch.cat([torch.as_tensor(before), torch.full((hole,), tok.mask_id), torch.as_tensor(after)])
    filled = generate(diffusion, gen_length=template.numel(), steps=hole, sampler="llada", infill=template.to(device),
                      temperature=0.8, generator=g)
    section(f"infill of a {hole}-token function body (llada sampler, temperature 0.8)", show(tok, filled.sequences[0]))

    watch = generate(diffusion, gen_length=gen_length // 2, steps=8, sampler="llada", generator=g,
                     return_history=True, temperature=1.0)
    lines = [f"step {i + 1}: {show(tok, h[0])!r}" for i, h in enumerate(watch.history)]
    section(f"denoising step by step (8 steps, masks as {MASK_GLYPH})", "\n".join(lines))
    _trajectory_png(samples.history, tok.mask_id, out / "trajectory.png")

    length = gen_length
    bos = torch.full((1, 1), tok.eos_id, device=device)
    # both sample at temperature 1, so neither saves the draw that the other pays for
    # On a GPU both replay their step from a CUDA graph: a small model's step is otherwise launch-bound
    graphs = device.startswith("cuda")
    diff_tps, ar_tps = _tokens_per_second(
        [lambda: generate(diffusion, gen_length=length, steps=length // 4, sampler="llada", temperature=1.0, generator=g,
                          cuda_graph=graphs),
         lambda: ar.generate(bos, length, temperature=1.0, generator=g, cuda_graph=graphs)], length, device)
    speed = {"length": length, "diffusion_steps": length // 4, "diffusion_tokens_per_s": diff_tps,
             "ar_tokens_per_s": ar_tps, "temperature": 1.0, "timing": "median of 3 calls each, in turns",
             "device": device, "cuda_graph": graphs}
    section("tokens/s at equal length (batch 1, temperature 1, median of 3 calls each, in turns)",
            f"diffusion (llada sampler, {length} tokens in {length // 4} steps): {diff_tps:,.0f} tokens/s\n"
            f"autoregressive (KV cache, {length} steps): {ar_tps:,.0f} tokens/s")

    curves = []
    for obj in dirs:  # the trainer draws its curve at each validation: named only where one was drawn
        if (out / obj / "loss.png").exists():
            shutil.copy(out / obj / "loss.png", out / f"loss_{obj}.png")
            curves.append(f"loss_{obj}.png")
    (out / "samples.md").write_text("# dllm demo\n\n" + "\n".join(report), encoding="utf-8")
    (out / "speed.json").write_text(json.dumps(speed, indent=2) + "\n")
    print(f"\n[demo] wrote {out}/samples.md, trajectory.png, {', '.join(curves + ['speed.json'])}")
    return speed
