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
    """Per-call times in ms (see _Clock): at least reps calls, more until min_seconds have passed."""
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
    after the other turns that drift into error in their ratio."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync(device)
    clock, times = _Clock(device), [[] for _ in fns]
    for _ in range(reps):
        for fn, t in zip(fns, times):
            t.append(clock(fn))
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
