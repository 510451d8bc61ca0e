"""Shared benchmark plumbing: timers, the bandwidth floor, and result files.

Every benchmark with a peer times dllm and the peer a user would otherwise run in the same
process, and reports the ratio and the fraction of the hardware floor: the time to move the op's
bytes at the copy bandwidth measured here, in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dllm.benchmarks.common import (  # noqa: F401 (re-exported)
    ATTENTION_KERNEL_VARIABLES, DTYPES, add_timing_options, at_least, built_in, card, command_line, git_commit, machine,
    null_for_nan, quantile, sync, time_interleaved, time_ms, timing_of, utc_now)


STREAMING_VARIABLES = ("DLLM_L2_PREFETCH", "DLLM_ASYNC_COPIES")


def with_streaming(fn, *switched_on: str):
    """fn with the streaming kernels' switches (STREAMING_VARIABLES) set for each call, those named
    to "1" and the others to "0": the kernels read them at every call, so rows timed in turns each
    run as they say (an unset variable is "0")."""
    unknown = set(switched_on) - set(STREAMING_VARIABLES)
    if unknown:
        raise ValueError(f"not a streaming switch: {sorted(unknown)}")
    values = {name: "1" if name in switched_on else "0" for name in STREAMING_VARIABLES}

    def call():
        os.environ.update(values)
        return fn()
    return call


def dllm_rows(fn, device: str) -> list:
    """dllm's row and, on CUDA, the same call with each of the streaming kernels' switches that are
    off by default until measured: "dllm, L2 prefetch" (DLLM_L2_PREFETCH=1: they ask L2 for their
    rows ahead of their loads) and "dllm, async copies" (DLLM_ASYNC_COPIES=1: their warp-per-group
    passes read through shared memory by cp.async, batches ahead)."""
    rows = [("dllm", with_streaming(fn))]
    if device.startswith("cuda"):
        rows.append(("dllm, L2 prefetch", with_streaming(fn, "DLLM_L2_PREFETCH")))
        rows.append(("dllm, async copies", with_streaming(fn, "DLLM_ASYNC_COPIES")))
    return rows


def parse_shapes(spec: str, shape_format: str) -> list[tuple[int, ...]]:
    """"16x1024x50258,1x2x3" -> [(16, 1024, 50258), (1, 2, 3)]: a --shapes option's value, each
    shape as many positive integers as shape_format ("BxLxV") names."""
    dims = len(shape_format.split("x"))
    shapes = []
    for text in spec.split(","):
        try:
            shape = tuple(int(v) for v in text.split("x"))
        except ValueError:
            shape = ()
        if len(shape) != dims or min(shape) <= 0:
            raise ValueError(f"--shapes: {text!r} is not {shape_format} ({dims} positive integers joined by x)")
        shapes.append(shape)
    return shapes


def bench_parser(description: str, shape_format: str, cuda_shapes: str, cpu_shapes: str, *,
                 dtype_of: str | None = None) -> argparse.ArgumentParser:
    """The options of every kernel benchmark: --device, --shapes (comma-separated shape_format,
    e.g. "BxLxV"; the defaults differ by device), --out, and --dtype (of dtype_of) unless None."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu or cuda (default: cuda when there is one)")
    ap.add_argument("--shapes", default=None,
                    help=f"comma-separated {shape_format} (default: {cuda_shapes} on CUDA, {cpu_shapes} on the CPU)")
    if dtype_of is not None:
        ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help=f"{dtype_of} dtype (default: bf16)")
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and summary.md")
    ap.set_defaults(default_shapes=(cuda_shapes, cpu_shapes), shape_format=shape_format)
    return ap


def parse_bench_args(ap: argparse.ArgumentParser, *, cpu: tuple[int, int]):
    """Adds the timing options (cpu: the CPU's default warm-up and repetitions) and parses:
    (args, shapes, timing keywords of measure / measure_against)."""
    add_timing_options(ap, cpu=cpu, min_warmup=1)  # measure_against's first call of each is untimed
    args = ap.parse_args()
    cuda_shapes, cpu_shapes = args.default_shapes
    try:
        shapes = parse_shapes(args.shapes or (cuda_shapes if args.device.startswith("cuda") else cpu_shapes),
                              args.shape_format)
    except ValueError as e:
        ap.error(str(e))
    return args, shapes, timing_of(args, args.device)


def copy_bandwidth_gbps(device: str, nbytes: int | None = None) -> float:
    """Measured copy bandwidth, counting bytes read plus bytes written (the floor's unit); by
    default over 1 GiB on a GPU, 256 MiB on a CPU."""
    if nbytes is None:
        nbytes = (1 << 30) if device.startswith("cuda") else (1 << 28)
    # Both written first: on Linux an untouched CPU buffer reads the kernel's shared zero page,
    # which sits in cache and made the copy look 1.5x faster than memory.
    src = torch.full((nbytes // 2,), 7, dtype=torch.uint8, device=device)
    dst = torch.zeros_like(src)
    ms = statistics.median(time_ms(lambda: dst.copy_(src), device, reps=10))
    return nbytes / (ms * 1e-3) / 1e9


def matmul_tflops(device: str, dtype: torch.dtype) -> float:
    """A large square matmul's measured rate: the compute floor of compute-bound ops (attention)."""
    n = 8192 if device.startswith("cuda") else 2048
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    ms = statistics.median(time_ms(lambda: a @ b, device, reps=10))
    return 2 * n**3 / (ms * 1e-3) / 1e12


def replayed(fn):
    """fn as a CUDA graph's replay: captured at the first call (after a warm-up call on a side
    stream, as torch.cuda.graph asks), whose errors the caller sees as fn's own; replayed at every
    call after. The rows it times are the GPU's time without the host's launches, what a loop that
    replays its steps (dllm.generate's, the e2e benchmark's) pays. Not dllm.sampling.cuda_graph's
    GraphedStep, which copies its inputs into the graph at every call: at a few microseconds a
    call, that copy would be a visible part of what is timed."""
    graph = None

    def call():
        nonlocal graph
        if graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            captured = torch.cuda.CUDAGraph()
            with torch.cuda.graph(captured):
                fn()
            graph = captured
        graph.replay()
    return call


def peak_extra_mb(fn, device: str) -> float:
    """CUDA memory fn allocates beyond what was allocated before it, at its peak, in MB (10^6 bytes,
    as the notes and the docs say; NaN on the CPU)."""
    if not device.startswith("cuda"):
        return float("nan")
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 1e6


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    impl: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    bytes: int
    gbps: float
    pct_floor: float
    ratio_vs_dllm: float = 1.0
    note: str = ""
    extra: dict = field(default_factory=dict)


def row_of(op: str, shape: str, dtype: str, impl: str, times: list[float], nbytes: int, floor_gbps: float) -> Row:
    times = sorted(times)
    median = statistics.median(times)
    gbps = nbytes / (median * 1e-3) / 1e9
    return Row(op, shape, dtype, impl, median, quantile(times, 0.2), quantile(times, 0.8), nbytes, gbps,
               100.0 * gbps / floor_gbps)


def measure(op: str, shape: str, dtype: str, impl: str, fn, device: str, nbytes: int, floor_gbps: float, **kw) -> Row:
    return row_of(op, shape, dtype, impl, time_ms(fn, device, **kw), nbytes, floor_gbps)


def unmeasured_row(op: str, shape: str, dtype: str, impl: str, nbytes: int, note: str) -> Row:
    """The row of an implementation that could not be timed; the note says why."""
    nan = float("nan")
    return Row(op, shape, dtype, impl, nan, nan, nan, nbytes, nan, nan, nan, note)


def measure_against(op: str, shape: str, dtype: str, impls: list, device: str, nbytes: int, floor_gbps: float, *,
                    warmup: int = 2, reps: int = 20, refused_by: tuple = (torch.OutOfMemoryError,)) -> list[Row]:
    """One row per (name, fn) of impls, dllm's first, timed in turns (time_interleaved) so that every
    ratio_vs_dllm compares calls that met the same machine. A peer whose first call raises one of
    refused_by (running out of memory; a backend refusing the inputs) gets a row noting why and sits
    out the turns; dllm's own errors propagate, and so does a CUDA error (a RuntimeError too), which
    would otherwise pass for every later peer refusing its inputs."""
    runnable, rows = [], {}
    sticky = getattr(torch, "AcceleratorError", ())
    for i, (name, fn) in enumerate(impls):
        try:
            fn()
            sync(device)
            runnable.append((name, fn))
        except refused_by as e:
            if i == 0 or isinstance(e, sticky):
                raise
            why = "out of memory" if isinstance(e, torch.OutOfMemoryError) else str(e).split("\n")[0][:60]
            rows[name] = unmeasured_row(op, shape, dtype, name, nbytes, why)
            torch.cuda.empty_cache()
    # that first call was the first of the `warmup` untimed ones
    times = time_interleaved([fn for _, fn in runnable], device, warmup=max(0, warmup - 1), reps=reps)
    for (name, _), t in zip(runnable, times):
        rows[name] = row_of(op, shape, dtype, name, t, nbytes, floor_gbps)
    ordered = [rows[name] for name, _ in impls]
    for row in ordered[1:]:
        row.ratio_vs_dllm = row.median_ms / ordered[0].median_ms
    return ordered


def format_table(title: str, meta: dict, rows: list[Row]) -> str:
    lines = [
        f"# {title}",
        "",
        f"{meta['card']} | torch {meta['torch']} | {meta['date']} | commit {meta['commit']}",
        _floor_line(meta),
        f"command: `{meta['command']}`",
        *([f"timing: median of {meta['reps']} calls after {meta['warmup']} untimed, implementations in turns"]
          if "reps" in meta else []),
        *([f"load average (1, 5, 15 min) at the start: {', '.join(f'{x:.2f}' for x in meta['load_average'])}"]
          if "load_average" in meta else []),
        "",
        "| op | shape | dtype | impl | median ms | GB/s | % of floor | dllm speedup | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    has_floor = meta["floor_gbps"] == meta["floor_gbps"] or "matmul_tflops" in meta
    for r in rows:
        moved = r.bytes > 0  # rows of compute-bound ops count no bytes
        speedup = f"{r.ratio_vs_dllm:.2f}x" if r.ratio_vs_dllm == r.ratio_vs_dllm else "-"  # NaN: no peer, or untimed
        lines.append(
            f"| {r.op} | {r.shape} | {r.dtype} | {r.impl} | {r.median_ms:.4f} | {f'{r.gbps:.1f}' if moved and r.gbps == r.gbps else '-'} | "
            f"{f'{r.pct_floor:.1f}' if has_floor and r.pct_floor == r.pct_floor else '-'} | {speedup} | {r.note} |"
        )
    return "\n".join(lines) + "\n"


def _floor_line(meta: dict) -> str:
    if "matmul_tflops" in meta:
        rate = meta["matmul_tflops"]
        rate = f"{rate:.1f} TFLOP/s" if rate >= 1 else f"{rate * 1e3:.0f} GFLOP/s"
        return f"floor: a square matmul's rate measured in this run, {rate} (% of floor: the share of it reached)"
    if meta["floor_gbps"] == meta["floor_gbps"]:
        # CUDA timings flush L2 before each call; the CPU's caches are not flushed
        cached = "" if "sms" in meta else "; no cache is flushed, so inputs that fit in the caches can pass 100%"
        return (f"floor: copy bandwidth measured in this run, {meta['floor_gbps']:.0f} GB/s (bytes read + written"
                f"{cached})")
    return "floor: none"


def write_results(out: Path, title: str, meta: dict, rows: list[Row]) -> str:
    """Writes results.json and summary.md into `out`; returns the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    document = null_for_nan({"meta": meta, "rows": [asdict(r) for r in rows]})
    (out / "results.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    table = format_table(title, meta, rows)
    # UTF-8 under any locale; the command's arguments the locale could not decode, as the bytes they were
    (out / "summary.md").write_text(table, encoding="utf-8", errors="surrogateescape")
    return table


class Results(list):
    """The rows of a run, rewritten into ``out`` (results.json, summary.md) after every append, so
    that a run cut short by a time limit keeps what it measured."""

    def __init__(self, out: Path | None, title: str, meta: dict):
        super().__init__()
        self.out, self.title, self.meta = out, title, meta

    def append(self, row: Row) -> None:
        super().append(row)
        if self.out is not None:
            write_results(self.out, self.title, self.meta, self)

    def report(self, measured: list[Row]) -> None:
        """Appends rows (measure_against's, or a late peer's) and prints them on one line: dllm's
        time and fraction of the floor, each peer's time and ratio."""
        for row in measured:
            self.append(row)
        print(f"{measured[0].shape} {measured[0].op}: " + ", ".join(
            f"{r.impl} {r.median_ms:.3f} ms " + (f"({r.pct_floor:.0f}% of floor)" if r.impl == "dllm" else
                                                f"({r.ratio_vs_dllm:.1f}x)") for r in measured), flush=True)

    def finish(self) -> None:
        """Writes the final rows (notes and ratios filled in after their append) and prints the table."""
        print(write_results(self.out, self.title, self.meta, self) if self.out else format_table(self.title, self.meta, self))
