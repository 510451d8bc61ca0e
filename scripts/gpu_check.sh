#!/usr/bin/env bash
# The GPU check, for a machine with a GPU and torch already installed: installs dllm (a wheel
# built elsewhere for that torch and Python, or a build from this source), runs the GPU tests and
# the benchmarks, and writes logs, results.json and summary.md files into OUT_DIR.
#
#   bash scripts/gpu_check.sh OUT_DIR [ARCHIVE.tar.gz]
#
# With ARCHIVE, OUT_DIR is also packed into that one file, again after every stage, so a run cut
# short by a time limit still brings back what it measured (the device tool brings back at most
# 8 files, so pass ARCHIVE under $OUT and OUT_DIR elsewhere). Benchmarks rewrite their results
# after every row (dllm bench step: every preset case) for the same reason.
#
# Environment:
#   DLLM_GPU_STAGES  comma-separated stages to run, in this order: install, tests, bench, steps, ncu,
#                    e2e (default install,tests,bench,steps; ncu: Nsight Compute's counters on the
#                    streaming kernels into ncu.txt, 150 s, their instructions executed by basic
#                    block into ncu-streaming-sass.md, 120 s, and the wgmma attention's counters into
#                    ncu-attention.txt, 90 s; e2e also needs DLLM_E2E_MINUTES: its two
#                    models train in the background from the end of install, beside the tests, which time
#                    nothing, and the benchmarks wait for them; the sweep runs last; a training
#                    stopped by a non-finite gradient has that step replayed (e2e-replay-*.txt:
#                    python -m dllm.training.replay) and trains again, before the sweep, with SDPA's
#                    cuDNN backend off, into OUT_DIR.e2e-models-no-cudnn). The
#                    stages' limits: install 480 s, tests 240 + 90 + 120 + 60 s, bench 11 x 75 s + 120 s (sedd_step
#                    compiles its peer once per shape), steps 180 s (sedd-small, with its network
#                    also under torch.compile) + 90 s (llada-8b) + 60 s (ar-small).
#                    These caps add up to far more than a 10-minute device call (bench alone 945 s;
#                    install's 480 s is for a build here, a wheel installs in seconds): set
#                    DLLM_GPU_SECONDS, which cuts each stage to what is left. On the H200 (2026-11-30)
#                    the tests took about 1 minute and bench plus steps about 3, so install (a wheel),
#                    tests, bench and steps fit 520 s when nothing hangs (what each benchmark measured
#                    is packed as it ends). A benchmark that ended by itself leaves
#                    BENCH.done in OUT_DIR, and a later call into the same OUT_DIR (on a machine still
#                    warm) skips it: so a second, shorter call goes on where a cut-short one stopped.
#   DLLM_WHEEL       a dllm wheel built for this machine's torch and Python (scripts/device_wheel.sh
#                    builds one): installed instead of building here. A glob (wheels/dllm-*.whl) is
#                    resolved here, to one file.
#   DLLM_BUILD_COMMIT  the commit of this source (the machine's copy has no .git): stamps the build
#                    and the results, and skips the build when the installed dllm is that commit;
#                    with DLLM_WHEEL, a wheel of another commit stops the run after install.
#   DLLM_TESTS_K     pytest -k expression (default: the GPU tests, "cuda and not emulated": every one
#                    has cuda in its name or parameters; the CPU ones, the CUDA emulator's included,
#                    run in CI; "" runs all).
#   DLLM_GPU_BENCHES the benchmarks of stage bench, space-separated (default: all twelve, in the
#                    order below).
#   DLLM_NO_WGMMA    1: the benchmarks leave the Hopper wgmma kernels out, and the step latencies run
#                    on mma.sync (set it in a later call when an earlier call's wgmma tests failed;
#                    within one call, or into the same OUT_DIR, that happens by itself).
#   DLLM_E2E_MINUTES training budget per model of `dllm bench e2e` (stage e2e).
#   DLLM_E2E_ARGS    more flags of `dllm bench e2e`, for training and sweep alike (e.g. --gen-lengths 256
#                    --train-steps 1500: a step cap keeps the budgets equal when one model trains beside
#                    the tests and the other alone).
#   DLLM_GPU_SECONDS the whole run's time: each stage's limit is cut to what is left of it (less a
#                    margin for packing), and a stage with too little left is skipped and says so.
#                    For a device call with a hard limit: a stage cut short this way still writes
#                    and packs what it measured, where a kill from outside would lose it.
#   DLLM_WHEELS      a folder of wheels (pytest and its dependencies) for a machine without them.
#   PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default: the visible GPU's).
#
# Every stage runs under `timeout` (SIGINT first, so pytest still writes its report and the
# benchmarks their rows), and the Hopper wgmma kernels (which the CUDA emulator cannot fully check:
# on the H200 their first build lost products to a ptxas register reuse) are tested in a process of
# their own, before anything else runs them (they are the default attention on 9.0): a hang or a
# sticky CUDA error there costs one stage, not the lease or the mma.sync results.
set -uo pipefail
OUT=${1:?usage: bash scripts/gpu_check.sh OUT_DIR [ARCHIVE.tar.gz]}
ARCHIVE=${2:+$(realpath -m "$2")}
PY=${PYTHON:-python3}
# Absolute (the test stage runs from tests/), but not resolved: a venv's python is a symlink.
[[ "$PY" == */* ]] && PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
STAGES=${DLLM_GPU_STAGES:-install,tests,bench,steps}
K=${DLLM_TESTS_K-cuda and not emulated}
# Absolute before the cd's below: a relative OUT_DIR would otherwise move with them (tests.xml into tests/).
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
if [ -n "${DLLM_WHEEL:-}" ]; then
  # An assignment does not expand a glob: resolve it here, or pip gets the pattern itself.
  wheel=$(compgen -G "$DLLM_WHEEL" | head -1)
  [ -n "$wheel" ] || { echo "DLLM_WHEEL: no file matches $DLLM_WHEEL" | tee "$OUT/status.txt"; exit 1; }
  DLLM_WHEEL=$(realpath "$wheel")
fi
cd "$(dirname "$0")/.."
export DLLM_CUDA=ON

stage() { [[ ",$STAGES," == *",$1,"* ]]; }
DEADLINE=${DLLM_GPU_SECONDS:+$(( $(date +%s) + DLLM_GPU_SECONDS ))}
# LIMIT -> LIMIT cut to the time left before DEADLINE, less 15 s for the kill grace and the packing
limit_left() {
  local left=$(( ${DEADLINE:-0} - $(date +%s) - 15 ))
  # at least 1: `timeout 0` would mean no limit at all
  if [ -z "$DEADLINE" ] || (( left >= $1 )); then echo "$1"; else echo $(( left > 1 ? left : 1 )); fi
}
note() { echo "$*" | tee -a "$OUT/status.txt"; }
pack() {
  [ -z "$ARCHIVE" ] && return 0
  # exit code 1: a file changed while read (the background e2e training's log), packed as it was
  tar czf "$ARCHIVE.partial" --warning=no-file-changed -C "$(dirname "$OUT")" "$(basename "$OUT")"
  (( $? <= 1 )) && mv "$ARCHIVE.partial" "$ARCHIVE"
}
installed_commit() { "$PY" -c "import dllm; print(dllm.build_info()['commit'])" 2>/dev/null; }

# appended to: a later call into the same OUT_DIR (a warm machine) adds its stages to the earlier ones
date -u "+%F %T UTC" >>"$OUT/status.txt"
"$PY" - <<'PYEOF' | tee "$OUT/machine.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("device", *((torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)) if torch.cuda.is_available()
                  else ("none visible",)))
PYEOF
note "stages: $STAGES"

if stage install; then
  start=$(date +%s)
  commit=${DLLM_BUILD_COMMIT:-}
  if [ -n "${DLLM_WHEEL:-}" ]; then
    how="wheel $(basename "$DLLM_WHEEL")"
    # a failed install must not leave an older dllm to be tested under this commit's name
    timeout -k 10 480 "$PY" -m pip install --no-deps --force-reinstall "$DLLM_WHEEL" >"$OUT/install.log" 2>&1 \
      || "$PY" -m pip uninstall -y dllm >>"$OUT/install.log" 2>&1
  elif [ -n "$commit" ] && [[ "$commit" != *-dirty ]] && [ "$(installed_commit)" = "$commit" ]; then
    how="already installed"
  else
    how="build"
    timeout -k 10 480 "$PY" -m pip install --no-build-isolation --no-deps -v . >"$OUT/install.log" 2>&1 \
      || "$PY" -m pip uninstall -y dllm >>"$OUT/install.log" 2>&1
  fi
  if ! "$PY" -c "import dllm; print('dllm', dllm.build_info())" >>"$OUT/machine.txt" 2>>"$OUT/install.log"; then
    note "install ($how) FAILED (see install.log)"
    tail -40 "$OUT/install.log"
    pack
    exit 1
  fi
  note "install ($how) ok in $(( $(date +%s) - start )) s: $(tail -1 "$OUT/machine.txt")"
  # a wheel left from an earlier commit would measure old kernels under rows named for new ones
  if [ -n "${DLLM_WHEEL:-}" ] && [ -n "$commit" ] && [ "$(installed_commit)" != "$commit" ]; then
    note "the wheel is of commit $(installed_commit), not DLLM_BUILD_COMMIT $commit: rebuild it (scripts/device_wheel.sh)"
    pack
    exit 1
  fi
  pack
fi

E2E=()
if stage e2e && [ -n "${DLLM_E2E_MINUTES:-}" ]; then
  # the trained models (GBs of checkpoints) stay outside OUT_DIR, which is packed
  E2E_FLAGS=(bench e2e --size small --minutes "$DLLM_E2E_MINUTES" --device cuda --out-dir "$OUT/e2e")
  E2E=("$PY" -m dllm.cli "${E2E_FLAGS[@]}" --train-dir "$OUT.e2e-models" ${DLLM_E2E_ARGS:-})
  train_limit=$(limit_left "$(awk -v m="$DLLM_E2E_MINUTES" 'BEGIN { printf "%d", m * 120 + 60 }')")
  timeout -s INT -k 10 "$train_limit" "${E2E[@]}" --train-only >"$OUT/e2e-train.log" 2>&1 &
  E2E_TRAINING=$!
  note "e2e models training in the background (limit $train_limit s)"
fi
# the benchmarks and step latencies time alone: they wait for the e2e training
wait_for_e2e_training() {
  [ -n "${E2E_TRAINING:-}" ] || return 0
  local start; start=$(date +%s)
  wait "$E2E_TRAINING"
  E2E_TRAINED=$?
  note "e2e training exit code $E2E_TRAINED (waited $(( $(date +%s) - start )) s): $(tail -c 400 "$OUT/e2e-train.log" | tr '\r' '\n' | tail -1)"
  E2E_TRAINING=
  pack
}

WGMMA_OK=1
# an earlier call on this (still warm) machine into the same OUT_DIR may have found them failing
[ "${DLLM_NO_WGMMA:-0}" = 1 ] || [ -e "$OUT/wgmma_failed" ] && WGMMA_OK=0
# wgmma is the default attention on 9.0: without it, the models of `dllm bench step` take mma.sync
wgmma_off() { WGMMA_OK=0; export DLLM_ATTENTION_KERNEL=mma; }
[ "$WGMMA_OK" = 1 ] || wgmma_off
# ping-pong (the default) with lock step's results; without it, everything runs the wgmma kernels in lock step
pingpong_off() { export DLLM_ATTENTION_PINGPONG=0; }
[ -e "$OUT/pingpong_failed" ] && pingpong_off
if stage tests; then
  if ! "$PY" -c "import pytest" 2>/dev/null; then
    "$PY" -m pip install --no-index --find-links "${DLLM_WHEELS:-wheels}" pytest numpy >"$OUT/pip-pytest.log" 2>&1 \
      || note "pytest is missing and no wheel for it was found: tests will not run"
  fi
  opts=(-q -rs --continue-on-collection-errors)
  # Processes per test file: a sticky CUDA error fails one file's tests, not every later one.
  "$PY" -c "import xdist" 2>/dev/null && opts+=(-n 4 --dist loadfile)
  "$PY" -c "import pytest_timeout" 2>/dev/null && opts+=(--timeout 120)
  run_tests() {  # NAME SECONDS EXPRESSION
    local limit; limit=$(limit_left "$2")
    (( limit >= 20 )) || { note "tests ($1) skipped: DLLM_GPU_SECONDS spent"; return 0; }
    (cd tests && timeout -s INT -k 15 "$limit" "$PY" -m pytest "${opts[@]}" --junitxml="$OUT/tests-$1.xml" -k "$3") \
      >"$OUT/tests-$1.log" 2>&1
    local rc=$?
    note "tests ($1) exit code $rc: $(tail -1 "$OUT/tests-$1.log")"
    (( rc == 5 )) && return 0  # no test selected (a narrow DLLM_TESTS_K): nothing failed
    return $rc
  }
  # wgmma's own tests first: the other tests' models take the default attention, wgmma on 9.0 (mma.sync
  # once lock step's tests failed, lock step once ping-pong's did)
  if "$PY" -c "import dllm, torch, sys; sys.exit(not (dllm.build_info()['wgmma'] and torch.cuda.get_device_capability() == (9, 0)))"; then
    # Lock step first (the kernels as the last GPU run had them, but for later changes), then the
    # default ping-pong, then the opt-in atomic dQ: a failure in a later group drops only that variant
    # (its benchmark rows; with ping-pong failing, everything after runs lock step).
    run_tests wgmma-lock-step 90 "${K:+($K) and }wgmma and lock-step" || { wgmma_off; : >"$OUT/wgmma_failed"; }
    [ "$WGMMA_OK" = 1 ] && { run_tests wgmma 120 "${K:+($K) and }wgmma and not atomic and not lock-step" \
      || { pingpong_off; : >"$OUT/pingpong_failed"; }; }
    [ "$WGMMA_OK" = 1 ] && { run_tests wgmma-atomic-dq 60 "${K:+($K) and }wgmma and atomic" || : >"$OUT/atomic_dq_failed"; }
  fi
  run_tests main 240 "${K:+($K) and }not wgmma"
  pack
fi

if stage bench; then
  wait_for_e2e_training
  no_wgmma=()
  [ "$WGMMA_OK" = 1 ] || { no_wgmma=(--no-wgmma); note "wgmma tests failed or DLLM_NO_WGMMA=1: benchmarks leave it out"; }
  [ -e "$OUT/atomic_dq_failed" ] && { no_wgmma+=(--no-atomic-dq); note "atomic dQ tests failed: benchmarks leave it out"; }
  [ -e "$OUT/pingpong_failed" ] && { no_wgmma+=(--no-pingpong); note "ping-pong tests failed: benchmarks run lock step"; }
  for bench in ${DLLM_GPU_BENCHES:-attention attention_decode sedd_step unmask_step sample_categorical sedd_losses rotary adaln vocab_head published_latency attention_backward train_step}; do
    # a later call on the same (still warm) machine into the same OUT_DIR goes on from the first unfinished one
    [ -e "$OUT/$bench.done" ] && continue
    args=(--device cuda --out "$OUT/$bench")
    [ "$bench" = attention ] || [ "$bench" = attention_backward ] && args+=(${no_wgmma[@]+"${no_wgmma[@]}"})
    [ "$bench" = attention_backward ] && args+=(--backward)
    limit=75
    [ "$bench" = sedd_step ] && limit=120
    limit=$(limit_left "$limit")
    (( limit >= 20 )) || { note "$bench skipped: DLLM_GPU_SECONDS spent"; continue; }
    timeout -s INT -k 10 "$limit" "$PY" "bench/${bench%_backward}.py" "${args[@]}" >"$OUT/$bench.log" 2>&1
    rc=$?
    note "$bench exit code $rc"
    [ "$rc" = 0 ] && : >"$OUT/$bench.done"
    cat "$OUT/$bench/summary.md" 2>/dev/null
    pack
  done
  # the opt-in switches against the defaults, over every benchmark of OUT_DIR so far
  "$PY" bench/switches.py "$OUT" --out "$OUT/switches.md" || note "bench/switches.py exit code $?"
  pack
fi

if stage steps; then
  wait_for_e2e_training
  for preset in sedd-small llada-8b ar-small; do
    [ -e "$OUT/step_latency-$preset.done" ] && continue
    # SEDD-small's network also under torch.compile: issue 7's target is missed by the eager network;
    # the profile splits each network's time into matmuls, dllm's kernels, SDPA's attention and the rest. ar-small: the
    # e2e baseline's decoding step (issue 8), eager and graphed
    extra=(--profile) && limit=90
    [ "$preset" = ar-small ] && limit=60
    [ "$preset" = sedd-small ] && extra+=(--compile) && limit=180
    limit=$(limit_left "$limit")
    (( limit >= 20 )) || { note "step_latency $preset skipped: DLLM_GPU_SECONDS spent"; continue; }
    timeout -s INT -k 10 "$limit" "$PY" -m dllm.cli bench step --preset "$preset" --device cuda "${extra[@]}" \
      --out "$OUT/step_latency-$preset" >"$OUT/step_latency-$preset.log" 2>&1
    rc=$?
    note "step_latency $preset exit code $rc"
    [ "$rc" = 0 ] && : >"$OUT/step_latency-$preset.done"
    cat "$OUT/step_latency-$preset/summary.md" 2>/dev/null
    pack
  done
fi

# Nsight Compute on the warm calls of SCRIPT's kernels matching REGEX, into OUT/FILE: the hardware
# counters were read on the Firecracker machines, not on gVisor (the device tool's KINDS.md)
profile() {  # FILE SECONDS REGEX SCRIPT
  local limit; limit=$(limit_left "$2")
  if ! command -v ncu >/dev/null; then
    note "ncu skipped ($1): not on PATH"
  elif (( limit < 30 )); then
    note "ncu skipped ($1): DLLM_GPU_SECONDS spent"
  else
    timeout -s INT -k 10 "$limit" ncu --clock-control none --profile-from-start off \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
      -k regex:"$3" "$PY" "$4" >"$OUT/$1" 2>&1
    note "ncu exit code $? ($1)"
  fi
}
# The same kernels' instructions executed, instruction by instruction (SourceCounters), summed into
# basic blocks by scripts/ncu_sass_summary.py into OUT/NAME-sass.md (and the executed rows into
# NAME-sass.csv); the report and the whole export stay in OUT_DIR.ncu/, outside the archive
profile_sass() {  # NAME SECONDS REGEX SCRIPT
  local limit; limit=$(limit_left "$2")
  if ! command -v ncu >/dev/null || (( limit < 30 )); then
    note "ncu source counters skipped ($1): ncu not on PATH or DLLM_GPU_SECONDS spent"
    return 0
  fi
  local rep="$OUT.ncu/$1"
  mkdir -p "$OUT.ncu"
  timeout -s INT -k 10 "$limit" ncu --clock-control none --profile-from-start off --section SourceCounters \
    --section InstructionStats -k regex:"$3" -f -o "$rep" "$PY" "$4" >"$OUT/$1-capture.log" 2>&1
  note "ncu source counters exit code $? ($1)"
  ncu -i "$rep.ncu-rep" --page source --csv --print-source sass >"$rep-sass.csv" 2>>"$OUT/$1-capture.log"
  "$PY" scripts/ncu_sass_summary.py "$rep-sass.csv" --markdown "$OUT/$1-sass.md" --compact "$OUT/$1-sass.csv" \
    >>"$OUT/$1-capture.log" 2>&1
  note "ncu source export and summary exit code $? ($1-sass.md)"
  gzip -f "$rep-sass.csv"
}
if stage ncu; then
  wait_for_e2e_training
  profile ncu.txt 150 'sample_categorical|sedd_step|predict_masked|loss_' scripts/profile_streaming.py
  profile_sass ncu-streaming 120 'sample_categorical|sedd_step|predict_masked|loss_' scripts/profile_streaming.py
  # the wgmma attention's kernels, ping-pong and lock step, and with atomic dQ
  [ -e "$OUT/atomic_dq_failed" ] && export DLLM_PROFILE_ATOMIC_DQ=0
  [ "$WGMMA_OK" = 1 ] && [ ! -e "$OUT/pingpong_failed" ] && profile ncu-attention.txt 90 'attention_(fwd|dq|dkdv)_wgmma|attention_delta|dq_from_accum' \
    scripts/profile_attention.py
  pack
fi

if [ ${#E2E[@]} -gt 0 ]; then
  wait_for_e2e_training
  if [ "${E2E_TRAINED:-0}" != 0 ] && grep -q "gradient norm became" "$OUT/e2e-train.log"; then
    # First the stopped step itself, taken again as trained, without SDPA's cuDNN backend and in
    # float32, with the first module and backward op that went non-finite (dllm.training.replay)
    for step in "$OUT".e2e-models/*/nonfinite-step.pt; do
      [ -f "$step" ] || continue
      name=$(basename "$(dirname "$step")")
      timeout -s INT -k 10 "$(limit_left 120)" "$PY" -m dllm.training.replay "$step" --json "$OUT/e2e-replay-$name.json" \
        >"$OUT/e2e-replay-$name.txt" 2>&1
      note "e2e replay of the $name model's stopped step exit code $?: $(grep -c . "$OUT/e2e-replay-$name.txt") lines"
    done
    pack
    # SDPA's cuDNN backward is the suspect of the small MDLM's NaN gradients
    # (bench/results/h200-2026-12-04/e2e-training-nan/): train again from scratch with that backend
    # off; passing names the culprit, and the sweep takes these models
    E2E=("$PY" -c 'import sys, torch; torch.backends.cuda.enable_cudnn_sdp(False); from dllm.cli import main; sys.exit(main())'
         "${E2E_FLAGS[@]}" --train-dir "$OUT.e2e-models-no-cudnn" ${DLLM_E2E_ARGS:-})
    note "e2e training stopped on a non-finite gradient: training again with SDPA's cuDNN backend off"
    timeout -s INT -k 10 "$(limit_left "$train_limit")" "${E2E[@]}" --train-only >"$OUT/e2e-train-no-cudnn.log" 2>&1
    E2E_TRAINED=$?
    note "e2e training without cuDNN SDPA exit code $E2E_TRAINED: $(tail -c 400 "$OUT/e2e-train-no-cudnn.log" | tr '\r' '\n' | tail -1)"
    pack
  fi
  if [ "${E2E_TRAINED:-0}" != 0 ]; then
    note "e2e sweep skipped: its training failed (e2e-train*.log); the sweep would train again"
  else
    # the sweep, on the models trained above (its points are kept in e2e/partial.json as they finish,
    # and a later call on the still-warm machine with stage e2e goes on from there)
    timeout -s INT -k 10 "$(limit_left 600)" "${E2E[@]}" >"$OUT/e2e.log" 2>&1
    note "e2e exit code $?"
  fi
fi

pack && [ -n "$ARCHIVE" ] && echo "packed $OUT into $ARCHIVE"
cat "$OUT/status.txt"
