"""Benchmark: per-step latency (network + sampler) with random weights; the logic lives in
dllm.benchmarks.step_latency, also run as `dllm bench step`.

  python bench/step_latency.py --preset sedd-small --out bench/results/<name>/step_latency
"""

from __future__ import annotations

import argparse

from dllm.benchmarks import step_latency
from dllm.cli import USER_ERRORS, fail

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=step_latency.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_latency.add_arguments(parser)
    ns = parser.parse_args()
    try:
        step_latency.run(ns)
    except USER_ERRORS as e:  # as `dllm bench step` reports them
        fail(parser, e)
