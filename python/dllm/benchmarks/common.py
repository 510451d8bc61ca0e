"""Timing and provenance shared by the benchmarks (the bench/ scripts import them through bench/common.py)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from .._extension import build_info
from ..devices import made_current


# The attention kernels a call runs (and so the bits of its samples) follow these variables, which
# the extension reads at each call.
ATTENTION_KERNEL_VARIABLES = ("DLLM_ATTENTION_KERNEL", "DLLM_ATTENTION_PINGPONG", "DLLM_ATTENTION_DQ")


def null_for_nan(value):
    """NaN (what was not measured) as JSON's null: NaN is not JSON, and strict readers refuse it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: null_for_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [null_for_nan(v) for v in value]
    return value


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


class _Clock:
    """Times one call in ms. CUDA: events around it, with L2 flushed first so the op reads its
    input from HBM, as it does in a sampling loop. CPU: wall clock."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        if self.cuda:
            self.flush = torch.empty(256 << 20, dtype=torch.uint8, device=device)
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def __call__(self, fn) -> float:
        if self.cuda:
            self.flush.zero_()
            self.start.record()
            fn()
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def time_ms(fn, device: str, *, warmup: int = 3, reps: int = 20, min_seconds: float = 0.2) -> list[float]:
    """Per-call times in ms (see _Clock): at least reps calls, more until min_seconds have passed.
    The device is made current throughout: CUDA events record on the current device's stream."""
    with made_current(torch.device(device)):
        for _ in range(warmup):
            fn()
        sync(device)
        clock, times = _Clock(device), []
        t_end = time.perf_counter() + min_seconds
        while len(times) < reps or time.perf_counter() < t_end and len(times) < 20 * reps:
            times.append(clock(fn))
    return times


def time_interleaved(fns: list, device: str, *, warmup: int = 2, reps: int = 10) -> list[list[float]]:
    """Per-call times in ms of each of fns, called in turns (fn 0, fn 1, ..., fn 0, ...) so that all
    of them meet the same machine: on a shared CPU the load drifts over seconds, and timing one
    after the other turns that drift into error in their ratio. The device is made current, as in
    time_ms."""
    with made_current(torch.device(device)):
        for fn in fns:
            for _ in range(warmup):
                fn()
        sync(device)
        clock, times = _Clock(device), [[] for _ in fns]
        for _ in range(reps):
            for fn, t in zip(fns, times):
                t.append(clock(fn))
    return times


def quantile(times: list[float], f: float) -> float:
    """The ``f`` quantile of sorted ``times``, nearest rank on (n - 1): p20 and p80 lie equally far
    from the median (``times[int(f * n)]`` read one rank slow at the top)."""
    return times[round(f * (len(times) - 1))]


def at_least(minimum: int):
    """An argparse type: an int >= minimum."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def add_timing_options(p: argparse.ArgumentParser, *, cpu: tuple[int, int], cuda: tuple[int, int] = (2, 20),
                       min_warmup: int = 0) -> None:
    """--warmup (at least ``min_warmup``), --reps (default: ``cpu`` or ``cuda``, each (warmup, reps))
    and --threads; read them with :func:`timing_of`."""
    def default(i: int) -> str:
        return f"{cuda[i]}" if cpu[i] == cuda[i] else f"{cuda[i]} on CUDA, {cpu[i]} on the CPU"

    floor_note = f"; at least {min_warmup}: the first call also checks that an implementation runs" if min_warmup else ""
    p.add_argument("--warmup", type=at_least(min_warmup), default=None,
                   help=f"untimed calls of each implementation first (default: {default(0)}{floor_note})")
    p.add_argument("--reps", type=at_least(1), default=None,
                   help=f"timed calls of each implementation, in turns (default: {default(1)})")
    p.add_argument("--threads", type=at_least(0), default=0,
                   help="CPU threads for torch (default 0: torch's choice); 1 keeps timings steady on a busy machine")
    p.set_defaults(timing_defaults={"cpu": cpu, "cuda": cuda})


def timing_of(ns: argparse.Namespace, device: str) -> dict:
    """``{"warmup", "reps"}`` from add_timing_options' flags, for the device; sets the thread count
    (before :func:`machine` records it)."""
    if ns.threads:
        torch.set_num_threads(ns.threads)
    warmup, reps = ns.timing_defaults["cuda" if device.startswith("cuda") else "cpu"]
    return {"warmup": warmup if ns.warmup is None else ns.warmup, "reps": reps if ns.reps is None else ns.reps}


def command_line() -> str:
    """The command as it was typed: ``dllm ...``, ``python -m dllm.cli ...`` or ``python bench/NAME.py ...``."""
    prog = Path(sys.argv[0])
    if prog.name == "dllm":
        head = ["dllm"]
    elif prog.name == "cli.py" and prog.parent.name == "dllm":
        head = ["python", "-m", "dllm.cli"]
    else:
        head = ["python", os.path.relpath(prog)]
    return " ".join(head + sys.argv[1:])


def git_commit() -> str:
    """The short commit the installed dllm was built from (``-dirty`` with uncommitted changes), or
    "unknown": the code that ran, wherever the benchmark is started from."""
    return build_info()["commit"]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess where that file does not exist)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def card(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()}, {torch.get_num_threads()} threads"


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@contextlib.contextmanager
def built_in(device, dtype: torch.dtype):
    """Modules built inside are created on ``device`` in ``dtype``: an 8B model in bf16 never exists
    as a float32 copy, nor on the CPU."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def machine(device: str) -> dict:
    """Provenance of a run: date, torch, dllm's build, commit, command, Python and the card."""
    info = {"date": utc_now(), "torch": torch.__version__, "dllm": build_info(), "commit": git_commit(),
            "command": command_line(), "python": platform.python_version(), "card": card(device)}
    if device.startswith("cuda"):
        info.update(sms=torch.cuda.get_device_properties(device).multi_processor_count, cuda=torch.version.cuda)
    else:
        info.update(load_average=os.getloadavg())  # other processes on the machine skew CPU timings
    return info


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
