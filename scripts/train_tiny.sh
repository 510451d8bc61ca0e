#!/usr/bin/env bash
# The tiny-model training comparison (docs/benchmarks.md: bench/train_summary.py): MDLM, SEDD and
# the autoregressive model, each trained for the same wall-clock budget on the same BPE data, one
# after another, then summarised into OUT_DIR (summary.md, val_bpb.png, each run's metrics).
#
#   bash scripts/train_tiny.sh OUT_DIR [SECONDS]      # SECONDS per model, default 600
#
# The runs share the machine with nothing else only if you make it so: the budget is wall clock,
# so a loaded machine trains fewer steps. PYTHON (default .venv/bin/python) runs everything.
set -euo pipefail
OUT=${1:?usage: scripts/train_tiny.sh OUT_DIR [SECONDS]}
SECONDS_PER_MODEL=${2:-600}
PYTHON=${PYTHON:-.venv/bin/python}
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT

for objective in mdlm sedd ar; do
  "$PYTHON" -m dllm.cli train --objective "$objective" --model tiny --tokenizer bpe --bpe-vocab-size 4096 \
    --seq-len 256 --batch-size 16 --lr 1e-3 --schedule constant --warmup 100 --steps 100000 \
    --max-time "$SECONDS_PER_MODEL" --eval-every 200 --no-progress --out-dir "$RUNS/$objective"
done
"$PYTHON" bench/train_summary.py "$RUNS/mdlm" "$RUNS/sedd" "$RUNS/ar" --out "$OUT" \
  --note "Conditions: nothing else ran on the machine during the three runs, which ran one after another (scripts/train_tiny.sh)."
