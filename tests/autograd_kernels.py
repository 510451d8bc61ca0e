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
            entered.append(str(_op_of(frame.f_locals)))

    sys.setprofile(profiler)
    try:
        yield entered
    finally:
        sys.setprofile(None)


def _op_of(scope: dict):
    """The op an autograd_impl frame serves: a local of it in newer torch; in torch 2.11 only a free
    variable of forward_no_grad, which autograd_impl calls."""
    if "op" in scope:
        return scope["op"]
    fn = scope["forward_no_grad"]
    return dict(zip(fn.__code__.co_freevars, (cell.cell_contents for cell in fn.__closure__)))["op"]
