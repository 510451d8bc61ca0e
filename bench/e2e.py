"""Diffusion against autoregressive, end to end: `dllm bench e2e` as a script (the logic is dllm.benchmarks.e2e).

  python bench/e2e.py --minutes 10 --size small --out-dir bench/results/<name>/e2e
"""

from __future__ import annotations

import argparse

from dllm.benchmarks import e2e
from dllm.cli import USER_ERRORS, fail

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=e2e.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    e2e.add_arguments(parser)
    ns = parser.parse_args()
    try:
        e2e.run(ns)
    except USER_ERRORS as e:  # as `dllm bench e2e` reports them
        fail(parser, e)
