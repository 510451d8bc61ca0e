# Two commands do all set-up: `make demo` and `make test` (each creates .venv and builds dllm).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A CUDA build of torch, so the CUDA kernels compile and link even where no GPU can run them.
TORCH_SPEC ?= torch==2.14.1

.PHONY: venv build demo test test-asan fuzz aarch64-check gpu-wheels clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" numpy tqdm safetensors tokenizers matplotlib pytest pytest-timeout "pytest-xdist>=3.8" "nvidia-cuda-cuobjdump>=13,<14" "nvidia-cuda-nvdisasm>=13,<14" "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja
	touch $@

venv: $(VENV)/.deps

build: venv
	$(PY) -m pip install -q --no-build-isolation --no-deps .

demo: build
	$(VENV)/bin/dllm demo --out-dir out/demo

test: build
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=10

# Every emulated CUDA kernel test under AddressSanitizer (`make test` runs a subset): any read or write past a tensor, a fiber stack or the dynamic shared memory aborts.
test-asan: build
	DLLM_EMU_ASAN_ALL=1 $(PY) -m pytest -q -s tests/test_cuda_emulated_asan.py

# Random calls of every op (emulated CUDA against CPU, CPU against float64), then of dllm.generate
# (its promises, and each step against a mirror of its sampler), for MINUTES minutes each.
MINUTES ?= 30
fuzz: build
	$(PY) tests/fuzz_ops.py --minutes $(MINUTES)
	$(PY) tests/fuzz_generate.py --minutes $(MINUTES)

# The CPU ops' tests on aarch64 (Grace, Graviton): cross-built, run by qemu (root, Debian 12; docs/testing.md);
# DLLM_AARCH64_CUDA=1 builds the CUDA kernels too, as a GH200 host does.
aarch64-check:
	bash scripts/aarch64_check.sh

# Wheels the GPU machine lacks (it has no network): pass them along with the device tool's
# carry=["wheels"] and run `DLLM_WHEELS=wheels bash scripts/gpu_check.sh OUT`.
gpu-wheels: venv
	$(PY) -m pip download -q -d wheels --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 pytest numpy

clean:
	rm -rf build $(VENV)
