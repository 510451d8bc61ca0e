"""Metrics: one JSON object per line, and a loss-curve PNG drawn from that file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("dllm")


class MetricsLog:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)  # its folder is made at the first write: a run refused at start leaves none

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step``: a resumed run rewrites what the interrupted one logged after its checkpoint."""
        if self.path.is_file():  # replaced whole, so that no reader meets it half written
            kept = self.path.with_name(self.path.name + ".tmp")
            kept.write_text("".join(json.dumps(r) + "\n" for r in self.read() if r.get("step", 0) <= step))
            os.replace(kept, self.path)

    def write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if i == len(lines) - 1:  # a write cut short by a kill or a full disk; truncate_after drops it
                    log.warning("%s: ignoring its unfinished last line", self.path)
                    break
                raise ValueError(f"{self.path} line {i + 1} is not JSON ({e})") from None
        return records


def plot_metrics(jsonl: str | os.PathLike, png: str | os.PathLike, title: str = "") -> None:
    """Training loss per step (left) and validation bits per byte (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = MetricsLog(jsonl).read()
    train = [r for r in recs if "loss" in r]
    val = [r for r in recs if "val_bpb" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        a.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.set_yscale("log")
    a.grid(alpha=0.3)
    for key, label in (("val_bpb", "model"), ("val_bpb_ema", "EMA")):
        pts = [(r["step"], r[key]) for r in val if key in r]
        if pts:
            b.plot(*zip(*pts), marker="o", ms=3, label=label)
    b.set_xlabel("step")
    b.set_ylabel("validation bits per byte")
    b.grid(alpha=0.3)
    if val:
        b.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = Path(png).with_name(Path(png).name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)
