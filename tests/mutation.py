"""The loop both mutation checks share (tests/mutate_cpu.py for the Python API and the CPU kernels,
tests/cuda_emulator/mutate.py for the CUDA kernels): each known bug, planted alone in a temporary
git worktree of HEAD, must make a test fail. The working tree is not touched.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def selected_indices(argv: list[str], count: int, doc: str) -> list[int]:
    """The command line's mutant indices (none: all of them); ``-h``/``--help`` prints ``doc`` and
    exits, anything else that is not an index in ``[0, count)`` exits with a usage error."""
    if any(a in ("-h", "--help") for a in argv):
        print(doc.strip())
        raise SystemExit(0)
    bad = [a for a in argv if not (a.isdigit() and int(a) < count)]
    if bad:
        raise SystemExit(f"error: {' '.join(bad)}: mutant indices are 0 to {count - 1} (none given: all of them)")
    return [int(a) for a in argv]


def run_mutants(mutants: list[tuple[str, str, str, object]], selected: list[int], *,
                pytest_args: Callable[[object], list[str]], prepare: Callable[[Path], dict | None] = lambda tree: None,
                rebuild: Callable[[Path, str], None] = lambda tree, path: None) -> int:
    """Plants ``mutants`` (file, text, replacement, the tests that must catch it) one at a time,
    all of them or the ``selected`` indices, and prints whether each was caught. ``prepare(tree)``
    builds what the tests need and returns their environment; ``rebuild(tree, path)`` follows each
    planting (a ``CalledProcessError``: the mutant does not build, which is no catch). Returns 1 if
    any mutant was missed."""
    missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), "HEAD"], cwd=ROOT, check=True)
        try:
            env = prepare(tree)
            for i, (path, old, new, tests) in enumerate(mutants):
                if selected and i not in selected:
                    continue
                source = tree / path
                original = source.read_text()
                assert original.count(old) == 1, f"mutant {i}: {old!r} is not in {path} exactly once"
                source.write_text(original.replace(old, new))
                try:
                    rebuild(tree, path)
                    run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                          *pytest_args(tests)], cwd=tree, env=env, capture_output=True, text=True)
                    if run.returncode < 0:  # an out-of-bounds access can take the process down
                        summary = f"crashed with signal {-run.returncode}"
                    else:
                        summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-200:]
                    # A failed test or a crash is a catch; an error (the mutant does not compile or
                    # import) or 5 (nothing selected) is not.
                    caught = run.returncode < 0 or (run.returncode == 1 and " failed" in summary
                                                    and " error" not in summary)
                except subprocess.CalledProcessError as e:
                    summary, caught = (e.stderr or b"")[-200:].decode(errors="replace"), False
                finally:
                    source.write_text(original)
                missed += not caught
                print(f"mutant {i} ({path}): {'caught' if caught else 'MISSED'} - {summary}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    return 1 if missed else 0
