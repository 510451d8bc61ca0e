"""The Python autograd kernels that run: those torch.library.register_autograd installs (torch's
torch/_library/autograd.py). Each is a Python round trip a call, even where no gradient is recorded
and it only passes the call on."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def python_autograd_kernels():
    """Yields the list of ops (``"dllm.rotary.default"``) whose Python autograd kernel ran inside the block."""
    entered = []

    def profiler(frame, event, arg):
        code = frame.f_code
        if event == "call" and code.co_name == "autograd_impl" and \
                code.co_filename.replace("\\", "/").endswith("torch/_library/autograd.py"):
            entered.append(str(frame.f_locals["op"]))

    sys.setprofile(profiler)
    try:
        yield entered
    finally:
        sys.setprofile(None)
