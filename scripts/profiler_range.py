"""The profiled range of the profile_*.py scripts."""

import torch


def warm_call_profiled(step) -> None:
    """A cold call of step, then a warm one between cudaProfilerStart and Stop (what ncu
    --profile-from-start off measures)."""
    step()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    step()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
