"""Memory traffic of a model forward outside its matmuls and attention: every non-view aten kernel's
input and output bytes, by kernel, as the GPU would move them (its elementwise glue is memory-bound).

    python scripts/model_traffic.py --preset sedd-small [--layers 1]

It runs on the CPU in bf16 at batch 1 and scales by the preset's batch (the glue is linear in the
tokens), so it needs no GPU: a count, not a timing. Subtract a 1-layer from a 2-layer count for
the per-block traffic. The layers' passes it counts are what dllm.models' eager forward runs;
copies made inside an op are not seen (dllm.ops.attention reads the DiT's q, k, v views in place).
"""

import argparse
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dllm.benchmarks.step_latency import PRESETS
from dllm.models import build_model
from dllm.models.config import ModelConfig

COMPUTE_BOUND = {"mm", "addmm", "bmm", "baddbmm", "embedding", "_scaled_dot_product_flash_attention_for_cpu",
                 "attention_forward"}


class Traffic(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.kernels, self.bytes = defaultdict(int), defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if func.is_view or name in ("_unsafe_view", "empty", "lift_fresh", "promote_types"):
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        given = [t for t in tree_flatten((kwargs or {}).get("out"))[0] if isinstance(t, torch.Tensor)]
        # an out= tensor comes back as the result: counted once, as written
        tensors = inputs + [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and
                            not any(t is g for g in given)]
        key = "matmul / attention" if name in COMPUTE_BOUND else name
        self.kernels[key] += 1
        self.bytes[key] += sum(t.numel() * t.element_size() for t in tensors)
        return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="sedd-small")
    p.add_argument("--layers", type=int, default=None, help="override the preset's depth (default: the preset's)")
    ns = p.parse_args()
    torch.manual_seed(0)
    for case in PRESETS[ns.preset]:
        fields = dict(case.model, **({"layers": ns.layers} if ns.layers else {}))
        model = build_model(ModelConfig(max_seq_len=case.length, **fields)).to(torch.bfloat16).eval()
        x = torch.randint(0, fields["vocab_size"], (1, case.length))
        with torch.no_grad(), Traffic() as t:
            model(x, torch.rand(1))
        scale = case.batch
        print(f"{case.kind} {fields['layers']}x{fields['hidden']}, B {case.batch} x L {case.length}, bf16:")
        for k in sorted(t.bytes, key=t.bytes.get, reverse=True):
            print(f"  {k:28s} {t.kernels[k]:5d} kernels {scale * t.bytes[k] / 1e9:9.3f} GB")
        glue = sum(v for k, v in t.bytes.items() if k != "matmul / attention")
        print(f"  glue (all but matmul / attention): {scale * glue / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
