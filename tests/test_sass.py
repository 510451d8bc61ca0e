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
def test_no_wgmma_register_operand_is_overwritten_while_its_product_runs():
    """A wgmma with its A operand in registers (P V, dS K, P^T dO, dS^T Q) reads those registers
    until a wait retires it (WARPGROUP.DEPBAR), but ptxas treats the register quads it passes as
    free once the instruction issues. On the H200 the kernels that computed the next tile's
    softmax before that wait lost products: ptxas had used the quads as scratch (94 of the 192
    such wgmmas). So no instruction between one and its wait may write a register of its quad."""
    kernels = {name: sass for name, sass in kernel_sass().items() if "wgmma_kernel" in name}
    # forward, dQ, dK/dV and dK/dV with atomic dQ; bf16 and fp16; D = 64 and 128
    assert len(kernels) == 16
    for name, sass in kernels.items():
        lines = [m.group(1) for m in re.finditer(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", sass)]
        register_sourced = 0
        for k, line in enumerate(lines):
            product = re.match(r"(?:@\S+ )?HGMMA\.\S+ R\d+, R(\d+), gdesc", line)
            if not product:
                continue
            register_sourced += 1
            quad = {f"R{int(product.group(1)) + i}" for i in range(4)}
            for later in lines[k + 1:]:
                if "WARPGROUP.DEPBAR" in later:
                    break
                written = re.match(r"(?:@!?U?P\w+ )?(?!HGMMA)[A-Z0-9.]+ (R\d+)", later)
                assert not (written and written.group(1) in quad), f"{name}: {line} overwritten by {later}"
        assert register_sourced > 0, f"{name}: no register-sourced wgmma found (the pattern went stale)"


def test_no_kernel_spills_or_keeps_a_stack():
    """Registers spilled to local memory, or an array indexed at run time (which lands on the
    stack), cost a round trip through L1 per use: every kernel keeps its state in registers."""
    out = subprocess.run([TOOL, "-res-usage", _C.__file__], capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"Function (\S+):\n\s*(REG:.*)", out))
    assert len(usage) >= 40  # every op's kernels, for each dtype and head dimension
    for name, line in usage.items():
        assert " STACK:0 " in line and " LOCAL:0 " in line, f"{name}: {line}"
