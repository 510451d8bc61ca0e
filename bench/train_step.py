"""Benchmark: one training step (forward, backward, gradient clipping, AdamW) of a masked
objective, as `dllm train` runs it, with the output head on the masked positions only (dllm's
objectives: `loss_at_masked`) against the full head (the same model behind a forward without
`logits_at`: the objectives before 2026-12-01, and what MDLM's and SEDD's own trainers do).

The floor is a square matmul's rate (bf16 on CUDA, float32 on the CPU), measured in the same run;
"% of floor" counts the full step's model FLOPs for both: 6 x the per-token matmul weights (the
head's included, the per-sequence adaLN modulation not) per token, and the attention's 12 x
layers x L^2 x hidden per sequence. On CUDA the step runs under bfloat16 autocast (the trainer's
default there). Each implementation keeps its own copy of the model and optimizer, so the turns
do not feed each other's updates; the noise is drawn once and reused.

  python bench/train_step.py --device cuda --out bench/results/<name>/train_step
"""

from __future__ import annotations

import contextlib
import copy
import types

import torch

from common import Results, bench_parser, machine, matmul_tflops, measure_against, parse_bench_args
from dllm.models import build_model, model_config
from dllm.objectives import LLaDA, MDLM, SEDD

# B x L x V: SEDD-small's training batch and GPT-2's vocabulary with the mask; the demo's tiny model
CUDA_SHAPES, CPU_SHAPES = "16x1024x50258", "16x129x4096"
OBJECTIVES = {"mdlm": MDLM, "sedd": lambda tok: SEDD(tok, graph="absorb"), "llada": LLaDA}


class FullHead(torch.nn.Module):
    """The network behind a forward without ``logits_at``: the objectives compute every position's logits."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, sigma=None):
        return self.net(x, sigma)


def model_flops(net: torch.nn.Module, batch: int, length: int) -> float:
    """Forward + backward FLOPs of the full step (see the module's docstring)."""
    cfg = net.config
    per_token = sum(m.weight.numel() for name, m in net.named_modules()
                    if isinstance(m, torch.nn.Linear) and "adaLN" not in name and "sigma_map" not in name)
    return 6.0 * per_token * batch * length + 12.0 * cfg.layers * batch * length**2 * cfg.hidden


def main() -> None:
    ap = bench_parser(__doc__, "BxLxV", CUDA_SHAPES, CPU_SHAPES)
    ap.add_argument("--model", default=None, help="model size (default: small on CUDA, tiny on the CPU)")
    ap.add_argument("--objectives", default="mdlm,sedd", help=f"comma-separated, of {', '.join(OBJECTIVES)} "
                    "(default: mdlm,sedd)")
    args, shapes, reps = parse_bench_args(ap, cpu=(2, 10))
    device = args.device
    size = args.model or ("small" if device.startswith("cuda") else "tiny")
    unknown = set(args.objectives.split(",")) - set(OBJECTIVES)
    if unknown:
        ap.error(f"unknown objective(s) {', '.join(sorted(unknown))}; expected some of {', '.join(OBJECTIVES)}")
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    peak = matmul_tflops(device, dtype)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    rows = Results(args.out, f"training step (forward, backward, AdamW), model {size}",
                   machine(device) | reps | {"floor_gbps": float("nan"), "matmul_tflops": peak})
    for b, length, vocab in shapes:
        tok = types.SimpleNamespace(mask_id=vocab - 1, eos_id=0, vocab_size=vocab)
        for name in args.objectives.split(","):
            obj = OBJECTIVES[name](tok)
            torch.manual_seed(0)
            net = build_model(model_config(size, arch=obj.arch, vocab_size=obj.model_vocab_size, max_seq_len=length,
                                           time_conditioning=obj.time_conditioning)).to(device)
            g = torch.Generator().manual_seed(1)
            x0 = torch.randint(0, vocab - 1, (b, length), generator=g).to(device)
            draws = {k: v.to(device) for k, v in obj.draw(b, length, g).items()}

            def trainer(model: torch.nn.Module):
                params = list(model.parameters())
                opt = torch.optim.AdamW(params, lr=1e-4)

                def step():
                    opt.zero_grad(set_to_none=True)
                    with autocast():
                        nll = obj.nll(model, x0, draws)
                    obj.train_loss(nll, length).backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                return step

            impls = [("dllm (head on masked positions)", trainer(net)),
                     ("full head", trainer(FullHead(copy.deepcopy(net))))]
            measured = measure_against(f"{name} train step", f"{b}x{length}x{vocab}", "bf16 autocast" if cuda else "fp32",
                                       impls, device, 0, float("nan"), **reps)
            flops = model_flops(net, b, length)
            for r in measured:
                tflops = flops / (r.median_ms * 1e-3) / 1e12
                r.pct_floor = 100.0 * tflops / peak
                r.note = f"{b * length / (r.median_ms * 1e-3):,.0f} tokens/s"
            rows.report(measured)
            del net
    rows.finish()


if __name__ == "__main__":
    main()
