"""Builds the CUDA emulator extension: dllm's shipped CUDA bindings (csrc/torch/*_cuda.cpp) and
CUDA kernels (csrc/kernels/*.cu, translated) compiled for the CPU emulator, registered as the
CPU kernels of torch.ops.dllm_emu.<op>, whose schemas are copied from torch.ops.dllm.<op>.

Compiled once into build/cuda_emulator (ninja rebuilds what changed), a few minutes on 2 cores.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import torch
import torch.utils.cpp_extension as cpp_extension

from .translate import translate_tree, write_if_changed

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OPS = (
    "sample_categorical",
    "predict_masked",
    "commit_tokens",
    "sedd_step",
    "sample_transition",
    "score_entropy_loss",
    "score_entropy_loss_backward",
    "masked_diffusion_loss",
    "masked_diffusion_loss_backward",
    "attention_forward",
    "attention_backward",
    "rotary",
    "adaln",
    "adaln_residual",
)
INCLUDE_DIRS = ("include", "torch", "kernels")  # of csrc, after the stand-ins and the translations
BINDINGS = ("sample_categorical", "unmask", "sedd", "attention", "rotary", "adaln")  # csrc/torch/<name>.cpp and <name>_cuda.cpp


def _pattern_init() -> list[str]:
    """Automatic variables start as a 0xfe byte pattern (-1.7e38 as float and bf16, NaN as fp16)
    rather than what the fiber's stack or registers held from the block before, which may be the
    very value a kernel reading an uninitialised local expects (on the GPU it reads garbage).
    GCC 12 and clang 8 have the option; older compilers build without it."""
    flag = "-ftrivial-auto-var-init=pattern"
    compiler = os.environ.get("CXX", "c++")
    try:
        ok = subprocess.run([compiler, flag, "-x", "c++", "-fsyntax-only", "-"], input="int main() {}",
                            capture_output=True, text=True).returncode == 0
    except OSError:
        ok = False
    return [flag] if ok else []


@functools.cache
def load():
    """The compiled extension (its `configure` and `grids_run`); torch.ops.dllm_emu is then live."""
    import dllm.ops  # noqa: F401  (registers the dllm schemas this copies)

    library = torch.library.Library("dllm_emu", "DEF")
    for op in OPS:
        schema = str(getattr(torch.ops.dllm, op).default._schema)
        library.define(schema.removeprefix("dllm::"))
    load.library = library  # the definitions live as long as this object

    asan = os.environ.get("DLLM_EMU_ASAN") == "1"
    build = ROOT / "build" / ("cuda_emulator_asan" if asan else "cuda_emulator")
    build.mkdir(parents=True, exist_ok=True)
    asan_flags = ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"] if asan else []
    kernels = translate_tree(ROOT / "csrc" / "kernels", build / "kernels")
    wrappers = []
    for name in BINDINGS:
        for suffix in ("", "_cuda"):
            wrapper = build / f"bind_{name}{suffix}.cpp"
            write_if_changed(wrapper, f'#include "library_redirect.h"\n#include "{name}{suffix}.cpp"\n')
            wrappers.append(wrapper)
    return cpp_extension.load(
        name="dllm_cuda_emulator_asan" if asan else "dllm_cuda_emulator",
        sources=[str(p) for p in (HERE / "cuda_emulator.cpp", HERE / "emulator_module.cpp",
                                  ROOT / "csrc" / "torch" / "deferred_errors.cpp", *wrappers, *kernels)],
        extra_include_paths=[
            str(p) for p in (HERE / "include", HERE, build / "kernels", *(ROOT / "csrc" / d for d in INCLUDE_DIRS))
        ],
        extra_cflags=["-O1", "-Wno-unknown-pragmas", "-DDLLM_WITH_WGMMA=1", *_pattern_init(), *asan_flags],
        extra_ldflags=asan_flags,
        build_directory=str(build),
        verbose=False,
    )
