"""Properties of the compiled CUDA kernels that no CPU run can show and that a refactor can silently
lose: read from the machine code (SASS) of the built extension with cuobjdump, so they hold
wherever the kernels compile, GPU or not."""

import glob
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dllm
from dllm import _C


def cuobjdump() -> str | None:
    """cuobjdump from PATH or the nvidia-cuda-cuobjdump wheel (whose -sass needs nvdisasm beside it:
    nvidia-cuda-nvdisasm)."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    wheel = sorted(glob.glob(str(Path(sys.prefix) / "lib/python*/site-packages/nvidia/cu*/bin/cuobjdump")))
    return wheel[-1] if wheel else None


TOOL = cuobjdump()
pytestmark = [
    pytest.mark.skipif(not dllm.build_info()["cuda"], reason="a CPU-only build has no CUDA kernels"),
    pytest.mark.skipif(TOOL is None, reason="cuobjdump not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)"),
]


def kernel_sass() -> dict[str, str]:
    """Kernel name -> its SASS in the built extension."""
    out = subprocess.run([TOOL, "-sass", _C.__file__], capture_output=True, text=True, check=True).stdout
    return {m.group(1): m.group(2) for m in re.finditer(r"Function : (\S+)\n(.*?)(?=\n\s*Function : |\Z)", out, re.S)}


@pytest.mark.skipif(not dllm.build_info()["wgmma"], reason="the build has no sm_90a kernels")
def test_wgmma_kernels_overlap_exponentials_with_the_previous_tiles_products():
    """The wgmma forward computes a key tile's softmax while the previous tile's P V runs, and the
    backward kernels compute a tile's P and dS while the previous tile's dQ (or dK and dV)
    products run. The SASS shows whether they do: an exponential (MUFU.EX2) issued after a wait
    that leaves groups in flight (WARPGROUP.DEPBAR.LE gsb0, 0x1 or 0x2) and before the wait for
    all of them (0x0) overlaps. Only the first tile's, about half of the code's, cannot."""
    kernels = {name: sass for name, sass in kernel_sass().items() if "wgmma_kernel" in name}
    assert len(kernels) == 12  # forward, dQ and dK/dV; bf16 and fp16; D = 64 and 128
    for name, sass in kernels.items():
        in_flight, overlapped, total = False, 0, 0
        for line in sass.splitlines():
            wait = re.search(r"DEPBAR\.LE gsb0, (0x[0-9a-f]+)", line)
            if wait:
                in_flight = int(wait.group(1), 16) > 0
            elif "MUFU.EX2" in line:
                total += 1
                overlapped += in_flight
        assert total > 0 and overlapped >= 0.45 * total, f"{name}: {overlapped} of {total} exponentials overlap"


def test_no_kernel_spills_or_keeps_a_stack():
    """Registers spilled to local memory, or an array indexed at run time (which lands on the
    stack), cost a round trip through L1 per use: every kernel keeps its state in registers."""
    out = subprocess.run([TOOL, "-res-usage", _C.__file__], capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"Function (\S+):\n\s*(REG:.*)", out))
    assert len(usage) >= 40  # every op's kernels, for each dtype and head dimension
    for name, line in usage.items():
        assert " STACK:0 " in line and " LOCAL:0 " in line, f"{name}: {line}"
