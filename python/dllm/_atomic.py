"""Files written beside their destination and renamed over it, so that a crash or a full disk
never leaves a cut-short file where a reader expects a whole one."""

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def replaced_atomically(path: Path, hidden: bool = False):
    """Yields the temporary path to write; renames it over ``path`` when the block ends, or deletes
    it when the block fails (a checkpoint's worth of disk, left where the user does not look)."""
    tmp = path.with_name(f"{'.' if hidden else ''}{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_leftovers(path: Path) -> None:
    """Deletes the temporaries of ``path`` that writers killed mid-write (SIGKILL, the OOM killer, a
    preempted job) left: no later write replaces them, each being named by its own process id. Only
    for a caller that alone writes ``path``."""
    for name in (f"{path.name}.tmp", f".{path.name}.tmp"):
        for tmp in path.parent.glob(f"{name}*") if path.parent.is_dir() else ():
            if tmp.name[len(name):].isdigit():
                tmp.unlink(missing_ok=True)
