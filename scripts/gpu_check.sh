#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with a GPU and torch already installed:
# builds dllm against that torch, runs every test (CUDA ones included) and the benchmarks, and
# writes logs, results.json and summary.md files into OUT_DIR.
#
#   bash scripts/gpu_check.sh OUT_DIR [ARCHIVE.tar.gz]
#
# With ARCHIVE, OUT_DIR is also packed into that one file, again after every stage, so a run cut
# short by a time limit still brings back what it measured (the device tool brings back at most
# 8 files, so pass ARCHIVE under $OUT and OUT_DIR elsewhere).
#
# Environment: PYTHON (default python3); TORCH_CUDA_ARCH_LIST (default: the visible GPU's);
# DLLM_WHEELS, a folder of wheels (pytest and its dependencies) for a machine without network;
# DLLM_E2E_MINUTES, to also run `dllm bench e2e` with that training budget per model;
# DLLM_TESTS_K, a pytest -k expression narrowing the tests (e.g. "(cuda or gpu or graph) and not
# emulated" for the GPU tests only: the CPU ones, the CUDA emulator's included, run in CI anyway).
#
# Every stage runs under `timeout`, and the Hopper wgmma kernels (never run on a GPU before their
# first check) are tested in a process of their own, before anything benchmarks them: a hang or a
# sticky CUDA error there costs one stage, not the lease or the mma.sync results.
set -uo pipefail
OUT=${1:?usage: bash scripts/gpu_check.sh OUT_DIR [ARCHIVE.tar.gz]}
ARCHIVE=${2:+$(realpath -m "$2")}
PY=${PYTHON:-python3}
# Absolute before the cd's below: a relative OUT_DIR would otherwise move with them (tests.xml into tests/).
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export DLLM_CUDA=ON

pack() {
  [ -z "$ARCHIVE" ] && return 0
  tar czf "$ARCHIVE.partial" -C "$(dirname "$OUT")" "$(basename "$OUT")" && mv "$ARCHIVE.partial" "$ARCHIVE"
}

"$PY" - <<'PYEOF' | tee "$OUT/machine.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
PYEOF

if ! "$PY" -c "import pytest" 2>/dev/null; then
  "$PY" -m pip install --no-index --find-links "${DLLM_WHEELS:-wheels}" pytest numpy >"$OUT/pip-pytest.log" 2>&1 \
    || echo "pytest is missing and no wheel for it was found: tests will not run" | tee -a "$OUT/machine.txt"
fi

echo "== build" | tee "$OUT/status.txt"
start=$(date +%s)
if ! "$PY" -m pip install --no-build-isolation --no-deps -v . >"$OUT/build.log" 2>&1; then
  echo "build FAILED (see build.log)" | tee -a "$OUT/status.txt"
  tail -40 "$OUT/build.log"
  pack
  exit 1
fi
echo "build ok in $(( $(date +%s) - start )) s" | tee -a "$OUT/status.txt"
pack

echo "== tests" | tee -a "$OUT/status.txt"
K=${DLLM_TESTS_K:-}
run_tests() {  # NAME SECONDS EXPRESSION
  (cd tests && timeout "$2" "$PY" -m pytest -q -rs --junitxml="$OUT/tests-$1.xml" -k "$3") >"$OUT/tests-$1.log" 2>&1
  local rc=$?
  echo "tests ($1) exit code $rc: $(tail -1 "$OUT/tests-$1.log")" | tee -a "$OUT/status.txt"
  return $rc
}
run_tests main 300 "${K:+($K) and }not wgmma"
WGMMA_OK=1
if "$PY" -c "import dllm, torch, sys; sys.exit(not (dllm.build_info()['wgmma'] and torch.cuda.get_device_capability() == (9, 0)))"; then
  run_tests wgmma 180 "${K:+($K) and }wgmma" || WGMMA_OK=0
fi
pack

echo "== benchmarks" | tee -a "$OUT/status.txt"
NO_WGMMA=()
[ "$WGMMA_OK" = 1 ] || { NO_WGMMA=(--no-wgmma); echo "wgmma tests failed: benchmarks leave it out" | tee -a "$OUT/status.txt"; }
for bench in bench/sample_categorical.py bench/unmask_step.py bench/attention.py bench/sedd_step.py bench/sedd_losses.py \
             bench/published_latency.py; do
  name=$(basename "$bench" .py)
  extra=(); [ "$name" = attention ] && extra=("${NO_WGMMA[@]}")
  timeout 150 "$PY" "$bench" --device cuda --out "$OUT/$name" "${extra[@]}" >"$OUT/$name.log" 2>&1
  echo "$name exit code $?" | tee -a "$OUT/status.txt"
  cat "$OUT/$name/summary.md" 2>/dev/null
  pack
done
timeout 150 "$PY" bench/attention.py --device cuda --backward --out "$OUT/attention_backward" "${NO_WGMMA[@]}" >"$OUT/attention_backward.log" 2>&1
echo "attention --backward exit code $?" | tee -a "$OUT/status.txt"
cat "$OUT/attention_backward/summary.md" 2>/dev/null
pack
for preset in sedd-small llada-8b; do
  timeout 150 "$PY" -m dllm.cli bench step --preset "$preset" --device cuda --out "$OUT/step_latency-$preset" \
    >"$OUT/step_latency-$preset.log" 2>&1
  echo "step_latency $preset exit code $?" | tee -a "$OUT/status.txt"
  cat "$OUT/step_latency-$preset/summary.md" 2>/dev/null
  pack
done

# The end-to-end report trains two small models first (DLLM_E2E_MINUTES each): opt in, it needs
# more than one device session's budget at the default grid.
if [ -n "${DLLM_E2E_MINUTES:-}" ]; then
  "$PY" -m dllm.cli bench e2e --size small --minutes "$DLLM_E2E_MINUTES" --device cuda --out-dir "$OUT/e2e" \
    >"$OUT/e2e.log" 2>&1
  echo "e2e exit code $?" | tee -a "$OUT/status.txt"
fi

pack && [ -n "$ARCHIVE" ] && echo "packed $OUT into $ARCHIVE"
cat "$OUT/status.txt"
