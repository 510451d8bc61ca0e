"""CPU predict_masked with the options session 30 rewrote (confidence "entropy" and "margin", top-k and
top-p filtering), B1 L512 V126464 bf16, every position masked, 2 threads: dllm's kernel against
eager PyTorch doing the same proposal and confidence (float32 softmax, torch.topk / a sorted
top-p cut, torch.multinomial). The median of 5 calls after 1. Run once per build of the
extension (the kernel before the change, 938c972, and after it, 881c035), the builds in turns:

    python bench/results/cpu-2core-2026-12-01/predict_masked_options/predict_masked_options.py LABEL
"""

import statistics
import sys
import time

import torch

import dllm

torch.set_num_threads(2)
B, L, V = 1, 512, 126464
MASK = V - 1
g = torch.Generator().manual_seed(0)
logits = (torch.randn(B, L, V, generator=g) * 3).bfloat16()
x = torch.full((B, L), MASK)


def eager(temperature=0.0, top_k=0, top_p=1.0, confidence="prob"):
    z = logits.float()
    z[..., MASK] = float("-inf")
    p = z.softmax(-1)
    if temperature == 0.0:
        tokens = z.argmax(-1)
    else:
        w = z / temperature
        if top_k:
            kth = w.topk(top_k, -1).values[..., -1:]
            w = w.masked_fill(w < kth, float("-inf"))
        if top_p < 1.0:
            sw, order = w.sort(-1, descending=True)
            cut = sw.softmax(-1).cumsum(-1) - sw.softmax(-1) > top_p
            w = w.scatter(-1, order, sw.masked_fill(cut, float("-inf")))
        tokens = torch.multinomial(w.softmax(-1).view(-1, V), 1, generator=g).view(B, L)
    if confidence == "entropy":
        return tokens, (p * p.clamp_min(1e-30).log()).sum(-1)
    if confidence == "margin":
        top2 = p.topk(2, -1).values
        return tokens, top2[..., 0] - top2[..., 1]
    return tokens, p.gather(-1, tokens[..., None])[..., 0]


def median_ms(fn, reps=5):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


CASES = [dict(temperature=0.0, confidence="entropy"), dict(temperature=0.0, confidence="margin"),
         dict(temperature=1.0, top_k=50), dict(temperature=1.0, top_p=0.9), dict(temperature=1.0)]
label = sys.argv[1] if len(sys.argv) > 1 else "dllm"
for case in CASES:
    ours = median_ms(lambda: dllm.ops.predict_masked(logits, x, mask_id=MASK, generator=g, **case))
    peer = median_ms(lambda: eager(**case))
    print(f"{label} {case}: dllm {ours:.1f} ms, eager {peer:.1f} ms ({peer / ours:.1f}x)", flush=True)
