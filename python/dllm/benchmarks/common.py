"""Timing and provenance shared by the benchmarks (the bench/ scripts import them through bench/common.py)."""

from __future__ import annotations

import datetime
import platform
import subprocess
import time
from pathlib import Path

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn, device: str, *, warmup: int = 3, reps: int = 20, min_seconds: float = 0.2) -> list[float]:
    """Per-call times in ms. CUDA: events around each call, with L2 flushed in between so the
    op reads its input from HBM, as it does in a sampling loop. CPU: wall clock."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    if device.startswith("cuda"):
        flush = torch.empty(256 << 20, dtype=torch.uint8, device=device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t_end = time.perf_counter() + min_seconds
        while len(times) < reps or time.perf_counter() < t_end and len(times) < 20 * reps:
            flush.zero_()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        t_end = time.perf_counter() + min_seconds
        while len(times) < reps or time.perf_counter() < t_end and len(times) < 20 * reps:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def git_commit(cwd: str | Path | None = None) -> str:
    """The short commit of the checkout (``-dirty`` with uncommitted changes), or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=cwd)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=cwd)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
