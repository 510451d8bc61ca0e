"""Runs an op under several CPU thread counts, for tests that its results do not depend on them.

The CPU kernels split their rows into blocks of `grain` rows (set per op in csrc/torch), which
parallel_min_error deals to n threads in turn (rotary, adaln and attention take at::parallel_for's
chunks). Random draws are keyed by the logical (row, index), so 1, 2 and 3 threads (3 > cores still
changes the split) must draw the same numbers; a draw keyed by the block, or a generator read once
per block, would not.
"""

import torch

THREADS = (1, 2, 3)


def under_threads(fn, threads=THREADS, seed=11):
    """fn(generator) under each thread count, with torch.manual_seed(seed) and a generator seeded
    alike; each result (a tensor or a tuple) is followed by the next number of both generators, so
    that a call that consumed more or less of either one differs too."""
    saved = torch.get_num_threads()
    results = []
    try:
        for n in threads:
            torch.set_num_threads(n)
            torch.manual_seed(seed)
            g = torch.Generator().manual_seed(seed)
            out = fn(g)
            results.append((*(out if isinstance(out, tuple) else (out,)), torch.rand(1, generator=g), torch.rand(1)))
    finally:
        torch.set_num_threads(saved)
    return results


def assert_same_under_threads(fn, threads=THREADS, seed=11):
    first, *rest = under_threads(fn, threads, seed)
    for n, out in zip(threads[1:], rest):
        for i, (a, b) in enumerate(zip(first, out)):
            assert torch.equal(a, b), f"result {i} differs between {threads[0]} and {n} threads"
