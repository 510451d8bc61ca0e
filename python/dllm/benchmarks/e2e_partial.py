"""A cut-short `dllm bench e2e` sweep goes on where it stopped: its results so far, kept in
partial.json with what identifies the sweep, are taken up by the next call of the same sweep."""

from __future__ import annotations

import argparse
import json
import os
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._atomic import remove_leftovers, replaced_atomically
from .common import ATTENTION_KERNEL_VARIABLES, card, git_commit

if TYPE_CHECKING:
    from .e2e import Models


def sweep_identity(ns: argparse.Namespace, fracs: list[Fraction], models: Models, device: str) -> dict:
    """What decides a sweep's results: a partial.json of another sweep is not taken up. The model
    folders' files by name, size and modification time, since a model retrained into the same
    folder keeps its path and, at a step cap, its step count."""
    return {"commit": git_commit(), "torch": torch.__version__, "card": card(device), "device": device,
            "threads": torch.get_num_threads(),
            "kernels": {name: os.environ.get(name) for name in ATTENTION_KERNEL_VARIABLES},
            "model_dirs": {k: str(d) for k, d in models.dirs.items()},
            "model_files": {k: sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in Path(d).iterdir()
                                      if f.is_file()) for k, d in models.dirs.items()},
            "data": models.data, "val_fraction": models.val_fraction,
            "gen_lengths": ns.gen_lengths, "batch_sizes": ns.batch_sizes, "samplers": ns.samplers,
            "step_fractions": [str(f) for f in fracs], "samples": ns.samples, "temperature": ns.temperature,
            "seed": ns.seed, "nll_windows": ns.nll_windows, "reps": ns.reps}


class Partial:
    """A sweep's results so far, in `path`: the quality rows (in the order of the points), the
    infill scores by (model, sampler, fraction), and the throughput rows by (point, batch). Those of
    an earlier call of the same sweep (`identity`), cut short, are taken up; `resumed` counts them."""

    def __init__(self, path: Path, identity: dict):
        self.path, self.identity = path, identity
        self.quality: list[dict] = []
        self.infill: dict[str, dict] = {}
        self.timed: dict[tuple[int, int], dict] = {}
        self.resumed = None
        remove_leftovers(path)  # a write killed midway (SIGKILL past a time limit's grace)
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(saved, dict) or saved.get("sweep") != identity:
            print(f"[e2e] {path} holds another sweep's results (other models, data, commit, machine or grid): "
                  "starting over")
            return
        self.quality, self.infill = saved["quality"], saved["infill"]
        self.timed = {(i, batch): row for i, batch, row in saved["timed"]}
        self.resumed = {"quality_points": len(self.quality), "throughput_rows": len(self.timed)}
        print(f"[e2e] going on from {path}: {len(self.quality)} quality points and {len(self.timed)} throughput "
              "rows measured by an earlier call")

    def write(self) -> None:
        with replaced_atomically(self.path) as tmp:
            tmp.write_text(json.dumps({
                "sweep": self.identity, "quality": self.quality, "infill": self.infill,
                "timed": [[i, batch, row] for (i, batch), row in self.timed.items()]}, indent=1))
