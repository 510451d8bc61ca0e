import pytest
import torch

import dllm  # noqa: F401  (registers torch.ops.dllm)

HAS_CUDA = torch.cuda.is_available() and dllm.build_info()["cuda"]

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


# The two longest files start first, one on each of `make test`'s two xdist workers (--dist loadfile,
# in this order), so that neither is left running one of them alone at the end.
LONGEST_FIRST = ("test_cuda_emulated_asan.py", "test_cuda_emulated.py")


def pytest_collection_modifyitems(items):
    # The GPU machine selects its tests with -k "cuda" (scripts/gpu_check.sh): one that needs a CUDA
    # device and lacks cuda in its name or parameters would never run anywhere.
    unreachable = [item.nodeid for item in items if "cuda" not in item.nodeid.lower() and any(
        "CUDA device" in str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif"))]
    if unreachable:
        raise pytest.UsageError("tests that need a CUDA device must have cuda in their names or parameters, "
                                f"which the GPU run selects by: {', '.join(unreachable)}")
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
               else len(LONGEST_FIRST))


@pytest.fixture
def seeded():
    """torch's default generator seeded per test, so that a test's draws (and its statistics) do not
    depend on which tests ran before it on the same worker."""
    torch.manual_seed(0)


@pytest.fixture
def poisoned_empty():
    """Every torch.empty, the ops' outputs included, filled with NaN (integers: their maximum), so
    that a kernel skipping a write cannot pass on memory that happened to hold the right value."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    assert torch.utils.deterministic.fill_uninitialized_memory
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
