"""Which shared-memory elements the Hopper wgmma attention forward reads, on a GPU.

On the H200 (2026-11-30) the wgmma kernels failed their tests: the log-sum-exp (S = Q K^T, both
operands K-major) was right, the output (O = P V, V an MN-major operand, P from registers) NaN or
wrong whenever a tile held more than one key. This runs the forward under both kernels on inputs
whose outputs name what was read: P one-hot (query i puts all its weight on key i) or uniform,
and V[k, d] = k or = d (exact in float16). Where wgmma's out[i, d] differs from mma.sync's, the
two values say which key row and which column P V read instead.

    python scripts/wgmma_probe.py OUT.pt      (needs a GPU of compute capability 9.0)

Prints a line per case and saves every output to OUT.pt for a session without a GPU to study.
"""

import os
import sys

import torch

import dllm  # noqa: F401 (registers torch.ops.dllm)


def forward(kernel: str, q, k, v):
    os.environ["DLLM_ATTENTION_KERNEL"] = kernel
    n = torch.tensor([k.shape[1]], device="cuda", dtype=torch.int32)
    m = torch.tensor([q.shape[1]], device="cuda", dtype=torch.int32)
    out, _ = torch.ops.dllm.attention_forward(q, k, v, n, m, None, None, 0, 0, 1.0)
    return out[0, :, 0].float().cpu()  # [Sq, D]


def cases():
    for dim in (64, 128):
        for keys in (16, 64, 128, 200):
            for weights in ("one-hot", "uniform"):
                yield dim, keys, weights


def main(path: str) -> None:
    assert torch.cuda.get_device_capability() == (9, 0), "the wgmma kernels run on compute capability 9.0 only"
    results = {}
    for dim, keys, weights in cases():
        queries = 128
        q = torch.zeros(1, queries, 1, dim)
        if weights == "one-hot":  # query i scores key i at 30, every other key at 0
            q[0, torch.arange(queries), 0, torch.arange(queries) % dim] = 30.0
        k = torch.zeros(1, keys, 1, dim)
        k[0, torch.arange(keys), 0, torch.arange(keys) % dim] = 1.0
        rows = torch.arange(keys, dtype=torch.float32)[:, None].expand(keys, dim)
        cols = torch.arange(dim, dtype=torch.float32)[None, :].expand(keys, dim)
        for name, v in (("v=key", rows), ("v=column", cols)):
            args = [t.to("cuda", torch.float16) for t in (q, k, v[None, :, None, :].contiguous())]
            want, got = forward("mma", *args), forward("wgmma", *args)
            key = f"D{dim} keys{keys} {weights} {name}"
            results[key] = {"mma": want, "wgmma": got}
            bad = ~torch.isclose(got, want, atol=1e-2, rtol=1e-3)
            line = f"{key}: {int(bad.sum())}/{bad.numel()} differ, NaN {int(got.isnan().sum())}"
            if bad.any():
                where = bad.nonzero()[:4].tolist()
                line += " | first (query, column): want -> got " + ", ".join(
                    f"({i},{d}) {want[i, d]:.2f}->{got[i, d]:.2f}" for i, d in where)
            print(line, flush=True)
    torch.save(results, path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "wgmma_probe.pt")
