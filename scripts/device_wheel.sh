#!/usr/bin/env bash
# A dllm wheel for the GPU machine, built here: its Python and torch (3.12, torch 2.11.0+cu130)
# differ from this checkout's .venv, and an extension loads only under the torch it was built
# against. Building here spends no device time and finds compile errors before the device does.
#
#   bash scripts/device_wheel.sh [WHEEL_DIR]      (default: wheels/)
#
# then, on the device: DLLM_WHEEL=wheels/dllm-*.whl bash scripts/gpu_check.sh OUT_DIR.
# Environment: DEVICE_PYTHON (default python3.12), DEVICE_TORCH (default torch==2.11.0),
# DEVICE_VENV (default .venv-device), TORCH_CUDA_ARCH_LIST (default 9.0: the H100/H200).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-wheels}
VENV=${DEVICE_VENV:-.venv-device}
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  base=${DEVICE_PYTHON:-python3.12}
  # a pyenv shim answers to python3.X but fails unless 3.X is selected: take pyenv's own then
  if ! "$base" -c '' 2>/dev/null; then
    version=${base#python}
    pyenv_python=$(compgen -G "$HOME/.pyenv/versions/$version*/bin/$base" | tail -1 || true)
    [ -n "$pyenv_python" ] || { echo "device_wheel.sh: $base does not run and pyenv has no $version; set DEVICE_PYTHON" >&2; exit 1; }
    base=$pyenv_python
  fi
  "$base" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "${DEVICE_TORCH:-torch==2.11.0}" "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja
fi
mkdir -p "$DEST"
rm -f "$DEST"/dllm-*.whl
DLLM_CUDA=ON TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
  "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$DEST" \
  .
"$PY" -c "import torch; print('built against torch', torch.__version__)"
# what to pass gpu_check.sh as DLLM_BUILD_COMMIT, which then refuses a wheel of another commit
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- || echo -dirty)"
ls -l "$DEST"/dllm-*.whl
