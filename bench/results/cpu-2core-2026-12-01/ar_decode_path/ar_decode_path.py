"""Eager CPU decoding of the e2e `tiny` autoregressive model (random weights, byte vocabulary, a
129-position cache), 64 tokens after one start token, along the two paths KVCache.decode has:
a tensor position (the whole buffers and the lengths, dllm.ops.attention: what a graphed step runs)
and an int position (the filled prefix, SDPA: what ARTransformer.generate runs eagerly on the CPU).
The median of 22 calls each, after 2, in turns.

    python bench/results/cpu-2core-2026-12-01/ar_decode_path/ar_decode_path.py
"""

import statistics
import time

import torch

from dllm import ops
from dllm.models import build_model, model_config

torch.set_num_threads(1)
torch.manual_seed(0)
net = build_model(model_config("tiny", arch="ar", vocab_size=258, max_seq_len=129)).eval()
g = torch.Generator().manual_seed(0)


def decode(prompt: torch.Tensor, n: int, int_positions: bool) -> None:
    B, P = prompt.shape
    cache = net.new_cache(B, P + n)
    token = ops.sample_categorical(net(prompt, cache=cache, start=0)[:, -1], 1.0, generator=g)[0][:, None]
    positions = torch.arange(P, P + n)
    for i in range(n - 1):
        token = token.clone()
        net.decode_step(token, cache, P + i if int_positions else positions[i], temperature=1.0, generator=g)


print(f"torch {torch.__version__}, 1 thread")
with torch.no_grad():
    for batch in (1, 4):
        prompt = torch.zeros(batch, 1, dtype=torch.int64)
        times = {"whole buffers + dllm.ops.attention": [], "filled prefix + SDPA": []}
        for _ in range(24):
            for name in times:
                start = time.perf_counter()
                decode(prompt, 64, int_positions=name.startswith("filled"))
                times[name].append((time.perf_counter() - start) * 1e3)
        medians = {name: statistics.median(t[2:]) for name, t in times.items()}
        whole, prefix = medians.values()
        print(f"B {batch}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in medians.items())
              + f"; prefix {whole / prefix:.2f}x faster")
