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
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
               else len(LONGEST_FIRST))
