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
