"""The package surface: build_info, import-time behaviour, op registration."""

import os
import subprocess
import sys

import torch

import dllm


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_build_info_describes_this_build():
    info = dllm.build_info()
    assert info["version"] == dllm.__version__
    assert info["torch"] == torch.__version__
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["torch_cuda"] == torch.version.cuda
        assert info["cuda_archs"] and all(a[:2].isdigit() for a in info["cuda_archs"])
    else:
        assert info["cuda_archs"] == []
    if os.environ.get("DLLM_CUDA") == "ON":  # CI forces the CUDA build: it must have happened
        assert info["cuda"]


def test_import_never_touches_torch_cuda():
    result = run_python(
        "import torch\n"
        "def refuse(*a, **k): raise RuntimeError('torch.cuda touched at import')\n"
        "for name in ('is_available', 'device_count', '_lazy_init', 'current_device', 'get_device_properties'):\n"
        "    setattr(torch.cuda, name, refuse)\n"
        "import dllm, dllm.ops\n"
        "print(dllm.ops.sample_categorical(torch.randn(2, 9), 0.0)[0].tolist())\n"
    )
    assert result.returncode == 0, result.stderr


def test_import_under_another_torch_names_both_versions_and_the_fix():
    result = run_python("import torch\ntorch.__version__ = '1.2.3'\nimport dllm\n")
    assert result.returncode != 0
    assert "built against torch " + torch.__version__ in result.stderr
    assert "torch 1.2.3 is installed" in result.stderr
    assert "pip install --no-build-isolation" in result.stderr


def test_every_op_has_cpu_and_cuda_kernels():
    # Fake kernels are exercised by the opcheck test of each op.
    for name in ("sample_categorical", "sedd_step", "sample_transition", "score_entropy_loss",
                 "score_entropy_loss_backward", "masked_diffusion_loss", "masked_diffusion_loss_backward"):
        op = getattr(torch.ops.dllm, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU")
        if dllm.build_info()["cuda"]:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA")
