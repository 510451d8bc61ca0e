"""The emulated CUDA kernels under AddressSanitizer: any read or write past a tensor, a fiber
stack or the dynamic shared memory aborts the run with ASan's report (the kernel's stack and the
tensor's allocation). The emulator is rebuilt with -fsanitize=address (build/cuda_emulator_asan)
and tests/test_cuda_emulated.py runs in a process of its own with libasan preloaded: python does
not link it, and libstdc++ is preloaded beside it for the same reason.

`make test` runs one thread schedule and leaves out the 1023-token attention shapes (14 to 21
minutes on 2 cores, the build included); `make test-asan` (DLLM_EMU_ASAN_ALL=1) runs every
emulated test."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_extension

ROOT = Path(__file__).resolve().parents[1]
SUBSET = "not reverse and not lagging and not 1023"


def gcc_library(name: str) -> str | None:
    try:
        path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return None
    return path if os.path.isabs(path) else None  # gcc echoes the bare name when it has none


TIMEOUT = 2400  # s; the subset under ASan took 14 minutes on 2 cores alone, 19 to 21 beside the rest of the suite


@pytest.mark.timeout(TIMEOUT)
def test_emulated_kernels_stay_inside_their_memory(tmp_path):
    if not cpp_extension.is_ninja_available():
        pytest.skip("the CUDA emulator is built with ninja (pip install ninja)")
    libraries = [gcc_library("libasan.so"), gcc_library("libstdc++.so.6")]
    if None in libraries:
        pytest.skip("gcc's AddressSanitizer runtime (libasan) is not installed")
    env = dict(
        os.environ,
        DLLM_EMU_ASAN="1",
        LD_PRELOAD=" ".join(libraries),
        ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0:halt_on_error=1",
    )
    subset = [] if os.environ.get("DLLM_EMU_ASAN_ALL") == "1" else ["-k", SUBSET]
    report = tmp_path / "report.xml"
    # -s: ASan writes its report as it aborts the process, which would lose a per-test capture.
    # The inner run's first test builds the ASan emulator, which on a loaded 2-core machine (beside
    # `make test`'s other worker and its own emulator build) outlasts pyproject's 900 s per test;
    # this test's own limit bounds the whole run.
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-o", f"timeout={TIMEOUT}",
         f"--junitxml={report}",
         "tests/test_cuda_emulated.py", *subset],
        cwd=ROOT, env=env,
    )
    assert run.returncode == 0, "an emulated test failed or ASan aborted: its report is in the captured output above"
    suite = ET.parse(report).getroot().find("testsuite")
    ran = int(suite.get("tests")) - int(suite.get("skipped"))
    assert ran >= 100, f"only {ran} emulated tests ran under ASan"
