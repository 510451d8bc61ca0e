"""Per-step latency of a diffusion sampler (network + sampler step), random weights: dllm against the eager step.

Each preset builds a model with random weights and times one sampler step on a fully masked
canvas: the network forward, then either the eager reference step users run today (SEDD's
score transform + Tweedie step + Gumbel draw, dllm.sedd.reference; LLaDA's generate.py step:
float64 Gumbel noise, float64 softmax confidence, a per-row topk with its host sync, the
scatter) or dllm's step (dllm.ops.sedd_step; predict_masked + commit_tokens), and on a GPU also
dllm's step replayed from a CUDA graph (dllm.sampling.cuda_graph.GraphedStep, what
generate(..., cuda_graph=True) uses). The network alone is timed too, and with --compile the
network under torch.compile, alone and under dllm's step (on an H200 the eager network took 31 of
a 33 ms SEDD-small step, before its elementwise glue went from 37.6 GB a forward to 6.5 GB:
scripts/model_traffic.py counts it); --profile splits one network call and one step into matmuls,
dllm's kernels and the rest, by kernel. Presets: sedd-small (DiT 12 x 768, 12 heads, V 50258, B 16,
L 1024), llada-8b (32 x 4096, 32 heads, MLP 12288, V 126464, B 1, L 1024; about 16 GB of bf16
weights), ar-small (the autoregressive baseline of `dllm bench e2e --size small`, byte tokens: one
decoding step at position 1023 of its KV cache, B 1 and 16, eager and as a CUDA graph, the
speedups relative to the eager step), tiny (all three kinds at toy sizes, seconds on a CPU).

  dllm bench step --preset sedd-small --out bench/results/<name>/step_latency
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..devices import DEVICE_HELP, resolve_device
from .common import DTYPES, add_timing_options, built_in, machine, quantile, time_interleaved, timing_of


@dataclass(frozen=True)
class Case:
    kind: str     # "sedd" (a score model and SEDD's analytic step) or "llada" (a masked LM and LLaDA's step)
    model: dict   # ModelConfig fields
    batch: int
    length: int


PRESETS = {
    "sedd-small": [Case("sedd", dict(arch="dit", hidden=768, layers=12, heads=12, cond_dim=128, vocab_size=50258,
                                     time_conditioning=True), 16, 1024)],
    "llada-8b": [Case("llada", dict(arch="llada", hidden=4096, layers=32, heads=32, mlp_hidden=12288,
                                    vocab_size=126464), 1, 1024)],
    # The autoregressive baseline of `dllm bench e2e --size small` (byte tokens): one decoding step
    # at the last position of a 1024-token KV cache
    "ar-small": [Case("ar", dict(arch="ar", hidden=768, layers=12, heads=12, cond_dim=128, vocab_size=258), b, 1024)
                 for b in (1, 16)],
    "tiny": [Case("sedd", dict(arch="dit", hidden=64, layers=2, heads=4, cond_dim=32, vocab_size=258,
                               time_conditioning=True), 2, 64),
             Case("llada", dict(arch="llada", hidden=64, layers=2, heads=4, vocab_size=258), 2, 64),
             Case("ar", dict(arch="ar", hidden=64, layers=2, heads=4, cond_dim=32, vocab_size=258), 2, 64)],
}


def reference_impl(kind: str) -> str:
    """The row the speedups are relative to: the eager sampler step, or for the autoregressive
    model its eager decoding step (ARTransformer.generate's loop, dllm's kernels included)."""
    return "decode step" if kind == "ar" else "eager reference step"


@dataclass
class Row:
    preset: str
    model: str
    shape: str
    dtype: str
    impl: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    speedup_vs_eager: float = float("nan")
    extra: dict = field(default_factory=dict)


def llada_eager_step(logits, x, num_transfer, temperature: float, mask_id: int) -> torch.Tensor:
    """LLaDA's generate.py step, written out faithfully: float64 Gumbel noise on the logits, argmax,
    float64 softmax for the confidence, then per row a topk of ``num_transfer[j]`` (an int that a
    tensor entry turns into a host sync, as in LLaDA) and the scatter. Returns the new canvas."""
    mask_index = x == mask_id
    if temperature > 0:
        z = logits.to(torch.float64)
        noise = torch.rand_like(z, dtype=torch.float64)
        noisy = z.exp() / (-torch.log(noise)) ** temperature
    else:
        noisy = logits
    x0 = torch.argmax(noisy, dim=-1)
    p = torch.softmax(logits.to(torch.float64), dim=-1)
    x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -torch.inf)
    transfer = torch.zeros_like(x0, dtype=torch.bool)
    for j in range(confidence.shape[0]):
        _, select = torch.topk(confidence[j], k=int(num_transfer[j]))
        transfer[j, select] = True
    x = x.clone()
    x[transfer] = x0[transfer]
    return x


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


def _random_model(case: Case, device: torch.device, dtype: torch.dtype):
    from ..models import build_model
    from ..models.config import ModelConfig

    # Counted on the meta device first: the llada-8b preset in float32 on a CPU would otherwise
    # end in the kernel's out-of-memory kill, not in an error that names the fix
    with built_in("meta", dtype):
        weights = sum(p.numel() for p in build_model(ModelConfig(max_seq_len=case.length, **case.model)).parameters())
    need, free = weights * dtype.itemsize, _free_bytes(device)
    if free is not None and need > free:
        raise ValueError(f"the {case.kind} model's weights alone take {need / 2**30:.1f} GiB in {dtype}, more than the "
                         f"{free / 2**30:.1f} GiB free on {device}: choose a smaller --preset or --dtype bf16")
    with built_in(device, dtype):
        model = build_model(ModelConfig(max_seq_len=case.length, **case.model))
    with torch.no_grad():
        for p in model.parameters():
            if not bool(p.any()):  # the DiT's zero-initialised adaLN and head would give constant logits
                p.normal_(0, 0.02)
    return model.eval()


def _steps(case: Case, model, device: torch.device, temperature: float, graphs: bool, compiled=None) -> dict:
    """The timed callables of one case: the network alone, the eager step, dllm's step (and graphed);
    with `compiled` (the model under torch.compile), the network and dllm's step on it too."""
    from .. import ops
    from ..sampling.cuda_graph import GraphedStep
    from ..sedd import reference

    B, L, V = case.batch, case.length, case.model["vocab_size"]
    if case.kind == "ar":
        return _decode_steps(model, B, L, device, temperature, graphs)
    mask_id = V - 1
    canvas = torch.full((B, L), mask_id, dtype=torch.int64, device=device)  # a fresh, fully masked canvas
    if case.kind == "sedd":
        sigma = torch.full((B,), 0.7, device=device)
        dsig = torch.full((B,), 0.01, device=device)
        step_args = dict(graph="absorb", method="analytic", scale_by_sigma=True)

        def network(net):
            return net(canvas, sigma)

        def eager():
            return reference.sedd_step(model(canvas, sigma).float(), canvas, sigma, dsig, **step_args)

        def ours(net, x):
            out = ops.sedd_step(net(x, sigma), x, sigma, dsig, **step_args)
            x.copy_(out)
            return out
    else:
        k = torch.full((B,), max(1, L // 64), dtype=torch.int64, device=device)  # LLaDA's L / 64 tokens per step

        def network(net):
            return net(canvas)

        def eager():
            return llada_eager_step(model(canvas), canvas, k, temperature, mask_id)

        def ours(net, x):
            logits = net(x)
            x0, conf = ops.predict_masked(logits, x, mask_id=mask_id, temperature=temperature)
            ops.commit_tokens(x, x0, conf, mask_id=mask_id, num_tokens=k)
            return logits

    steps = {"network only": lambda: network(model), "eager reference step": eager,
             "dllm step": lambda: ours(model, canvas.clone())}
    if graphs:
        graphed = GraphedStep(lambda x: ours(model, x), None)
        steps["dllm step, CUDA graph"] = lambda: graphed(canvas.clone())
    if compiled is not None:
        steps["network only, torch.compile"] = lambda: network(compiled)
        steps["dllm step, torch.compile network"] = lambda: ours(compiled, canvas.clone())
    return steps


def _decode_steps(model, B: int, L: int, device: torch.device, temperature: float, graphs: bool) -> dict:
    """One autoregressive decoding step at position L - 1 of a KV cache filled with L - 1 random
    tokens: the one-token forward alone, and the forward with its draw, eager and (graphs) replayed
    from a CUDA graph, as ARTransformer.generate(cuda_graph=...) runs it."""
    from ..sampling.cuda_graph import GraphedStep

    cache = model.new_cache(B, L)
    g = torch.Generator(device=device).manual_seed(0)
    model(torch.randint(0, model.config.vocab_size, (B, L - 1), device=device, generator=g), cache=cache, start=0)
    token = torch.zeros(B, 1, dtype=torch.int64, device=device)

    def step(x, at):
        return model.decode_step(x, cache, at, temperature=temperature)

    # eager decoding passes an int position, which on the CPU attends over the filled prefix with SDPA;
    # a graphed step reads it from a tensor, so that one graph serves every position
    steps = {"network only": lambda: model(token, cache=cache, start=L - 1),
             "decode step": lambda: step(token.clone(), L - 1)}
    if graphs:
        graphed, position = GraphedStep(step, None), torch.tensor(L - 1, device=device)
        steps["decode step, CUDA graph"] = lambda: graphed(token.clone(), position)
    return steps


def format_table(meta: dict, rows: list[Row]) -> str:
    load = meta.get("load_average")
    lines = [f"# Sampler step latency (network + sampler step), random weights, temperature {meta['temperature']}", "",
             f"{meta['card']} | torch {meta['torch']} | {meta['date']} | commit {meta['commit']}",
             f"command: `{meta['command']}`",
             *([f"machine load average (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in load)}"] if load else []),
             "",
             "| preset | model | B x L x V | dtype | impl | median ms/step | p20 | p80 | speedup vs eager |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.preset} | {r.model} | {r.shape} | {r.dtype} | {r.impl} | {r.median_ms:.3f} | "
                     f"{r.p20_ms:.3f} | {r.p80_ms:.3f} | {r.speedup_vs_eager:.2f}x |")
    return "\n".join(lines) + "\n"


# Kernel (CUDA) or aten op (CPU) names that are matrix products.
_MATMUL_NAMES = ("gemm", "gemv", "cutlass", "xmma", "nvjet", "cublas", "aten::mm", "aten::addmm", "aten::bmm",
                 "aten::baddbmm", "aten::_addmm_activation")


# Attention kernels of SDPA's backends (flash, cuDNN, memory-efficient; the CPU's aten ops), which
# the models take for full self-attention
_SDPA_NAMES = ("flash", "fmha", "sdpa", "scaled_dot_product", "attention", "attn")


def _category(name: str) -> str:
    lowered = name.lower()
    if "dllm" in lowered:
        return "dllm's kernels"
    if any(a in lowered for a in _SDPA_NAMES):  # before the matmuls: memory-efficient's are cutlass kernels
        return "SDPA's attention"
    if any(m in lowered for m in _MATMUL_NAMES):
        return "matmuls"
    return "the rest (elementwise, norms, copies, ...)"


def profile_report(title: str, fns: dict, device: torch.device) -> str:
    """One profiled call of each fn: self time by category, and the top kernels (CPU: aten ops), with
    dllm's own below them wherever they rank (on a loaded CPU a stalled op can push them out of the top)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    lines = [f"# Profile: {title}", "",
             "Self time of one call, by " + ("CUDA kernel" if cuda else "aten op (CPU)") + ", torch.profiler.", ""]
    for label, fn in fns.items():
        for _ in range(2):  # the first profiled call pays the profiler's start-up: the second is kept
            with profile(activities=activities) as prof:
                fn()
                if cuda:
                    torch.cuda.synchronize(device)
        self_us = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
        events = [e for e in prof.key_averages() if self_us(e) > 0 and (not cuda or e.device_type.name == "CUDA")]
        events.sort(key=self_us, reverse=True)
        total = sum(self_us(e) for e in events)
        by_category: dict[str, float] = {}
        for e in events:
            by_category[_category(e.key)] = by_category.get(_category(e.key), 0.0) + self_us(e)
        lines += [f"## {label}: {total / 1e3:.3f} ms", "", "| category | ms | share |", "|---|---|---|"]
        lines += [f"| {c} | {t / 1e3:.3f} | {t / max(total, 1e-9):.0%} |" for c, t in sorted(by_category.items())]
        lines += ["", f"| {'kernel' if cuda else 'op'} | calls | ms | share |", "|---|---|---|---|"]
        lines += [f"| `{e.key[:90]}` | {e.count} | {self_us(e) / 1e3:.3f} | {self_us(e) / max(total, 1e-9):.1%} |"
                  for e in events[:25] + [e for e in events[25:] if _category(e.key) == "dllm's kernels"]]
        lines.append("")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                   help="model and shape: sedd-small, llada-8b, ar-small (GPU sizes) or tiny (seconds on a CPU) "
                        "(default: tiny)")
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                   help="weights and activations (default: bf16 on a GPU, fp32 on a CPU)")
    p.add_argument("--temperature", type=float, default=1.0, help="LLaDA-step temperature, 0 = greedy (default: 1)")
    p.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph replay of dllm's step (GPU only)")
    p.add_argument("--compile", action="store_true",
                   help="also time the network under torch.compile, alone and under dllm's step (it compiles "
                        "once a case, untimed; the time it took is printed)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one network call and one dllm step a case (torch.profiler): the kernels by "
                        "self time, summed into matmuls, dllm's kernels, SDPA's attention and the rest "
                        "(profile-<kind>-b<batch>.md in --out)")
    add_timing_options(p, cpu=(3, 10), cuda=(3, 10))
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and draws (default: 0)")
    p.add_argument("--out", type=Path, default=None, help="folder for results.json and summary.md (default: print only)")


def run(ns: argparse.Namespace) -> list[Row]:
    from tqdm.auto import tqdm

    device = resolve_device(ns.device)
    if ns.out is not None:  # an unwritable folder fails now, not after the measurements
        ns.out.mkdir(parents=True, exist_ok=True)
    dtype_name = ns.dtype if ns.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if not 0 <= ns.temperature < float("inf"):
        raise ValueError(f"--temperature must be finite and >= 0, got {ns.temperature}")
    timing = timing_of(ns, str(device))
    dtype = DTYPES[dtype_name]
    amp = torch.autocast("cuda", dtype=dtype) if device.type == "cuda" and dtype != torch.float32 else nullcontext()
    torch.manual_seed(ns.seed)
    rows: list[Row] = []
    meta = machine(str(device)) | {"preset": ns.preset, "temperature": ns.temperature, **timing}

    def write() -> str:
        """Rewritten after every case, so that a run cut short keeps the cases it measured."""
        if "load_average" in meta:  # the CPU's, at the latest case's end
            meta["load_average"] = os.getloadavg()
        table = format_table(meta, rows)
        if ns.out is not None:
            (ns.out / "results.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]},
                                                            indent=2) + "\n")
            # surrogateescape: the command's arguments that the locale could not decode are written back
            # as the bytes they were (a UTF-8 path under an ASCII locale: the same file as under a UTF-8 one)
            (ns.out / "summary.md").write_text(table, encoding="utf-8", errors="surrogateescape")
        return table

    cases = PRESETS[ns.preset]
    graphs = device.type == "cuda" and not ns.no_graph
    timed = sum(2 + graphs if case.kind == "ar" else 3 + graphs + 2 * ns.compile for case in cases)
    bar = tqdm(total=timed, desc="bench step", dynamic_ncols=True)
    for case in cases:
        model = _random_model(case, device, dtype)
        name = f"{case.kind} {case.model['layers']}x{case.model['hidden']}"
        shape = f"{case.batch}x{case.length}x{case.model['vocab_size']}"
        case_rows = []
        with torch.no_grad(), amp:
            compiled = None
            if ns.compile and case.kind != "ar":  # (the decoding step's position is a tensor: not compiled here)
                compiled = torch.compile(model)
                start = time.perf_counter()
                bar.set_postfix_str(f"{name}: compiling")
                _steps(case, compiled, device, ns.temperature, graphs=False)["network only"]()  # compiles
                print(f"{name}: torch.compile took {time.perf_counter() - start:.1f} s", flush=True)
            steps = _steps(case, model, device, ns.temperature, graphs=graphs, compiled=compiled)
            bar.set_postfix_str(name)
            # in turns, so that a drift in the machine's load hits every implementation alike
            for impl, times in zip(steps, time_interleaved(list(steps.values()), str(device), **timing)):
                times = sorted(times)
                case_rows.append(Row(ns.preset, name, shape, dtype_name, impl, statistics.median(times),
                                     quantile(times, 0.2), quantile(times, 0.8)))
            bar.update(len(steps))
        eager = next(r.median_ms for r in case_rows if r.impl == reference_impl(case.kind))
        for r in case_rows:
            r.speedup_vs_eager = eager / r.median_ms
        rows += case_rows
        write()
        if ns.profile:
            with torch.no_grad(), amp:
                profiled = ("network only", "decode step" if case.kind == "ar" else "dllm step")
                report = profile_report(f"{name} {shape}", {k: steps[k] for k in profiled}, device)
            if ns.out is not None:
                (ns.out / f"profile-{case.kind}-b{case.batch}.md").write_text(report, encoding="utf-8")
            print(report, flush=True)
        print(f"{name} {shape}: " + ", ".join(f"{r.impl} {r.median_ms:.3f} ms/step ({r.speedup_vs_eager:.2f}x)"
                                              for r in case_rows), flush=True)
        del model, compiled, steps
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    print(write())
    return rows
