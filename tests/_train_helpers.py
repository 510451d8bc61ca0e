"""Shared set-up for the training tests: a small corpus of real Python files and tiny-model options."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Single files from 3.10 to 3.15. The last was string.py until 3.14 made string a package: operator.py,
# of about its size, whose name falls on the same side of every validation split the tests ask for, so
# that whole files are held out at val_fraction 0.3 under each version.
MODULES = ["bisect.py", "heapq.py", "textwrap.py", "fnmatch.py", "colorsys.py", "keyword.py", "shlex.py",
           "glob.py", "copy.py", "operator.py"]


def make_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for m in MODULES:
        shutil.copy(STDLIB / m, root / m)
    return root


def ascii_locale() -> dict:
    """The environment of a subprocess under an ASCII locale (C, not coerced to UTF-8): Python's default
    file encoding and stdout are ASCII, and argv's non-ASCII bytes arrive as surrogate escapes."""
    return {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}


def tiny(tmp: Path, corpus: Path, **kw) -> dict:
    opts = dict(data=str(corpus), cache_dir=str(tmp / "cache"), out_dir=str(tmp / "run"), hidden=64, layers=2,
                heads=4, seq_len=64, batch_size=8, steps=20, warmup=2, lr=3e-3, eval_every=0, eval_batches=2,
                ckpt_every=0, log_every=1, progress=False, val_fraction=0.2,
                # The tests compare runs to 1e-5 and to `dllm eval --device cpu`, and run two DDP ranks
                # on one machine: the default "auto" would pick CUDA (bf16 autocast, one GPU) there.
                device="cpu")
    opts.update(kw)
    return opts
