"""Train a model for a bounded number of minutes into a folder, or reuse the model already there.

`dllm demo` and `dllm bench e2e` train their diffusion model and its autoregressive baseline this
way: the same size, data, batch and wall-clock budget for both, so the comparison is fair.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .trainer import train


def train_for_minutes(objective: str, out: Path, minutes: float, *, device: str, seq_len: int, size: str = "tiny",
                      data: str | None = None, tokenizer: str = "byte", retrain: bool = False, seed: int = 0,
                      steps: int = 20000, log_prefix: str = "[dllm]") -> Path:
    """Trains ``objective`` into ``out/objective`` (constant lr 1e-3, batch 16, EMA 0.99) until the time
    budget or ``steps`` optimizer steps end; returns the exported model folder. An existing folder is
    reused unless ``retrain``; one trained with another tokenizer is refused."""
    model_dir = out / objective / "model"
    if model_dir.exists() and not retrain:
        run_config = out / objective / "run_config.json"
        trained_with = json.loads(run_config.read_text())["train"]["tokenizer"] if run_config.exists() else tokenizer
        if trained_with != tokenizer:
            raise ValueError(f"{model_dir} was trained with the {trained_with!r} tokenizer, not {tokenizer!r}: "
                             "retrain (--retrain) or choose another output folder")
        print(f"{log_prefix} reusing {model_dir} (--retrain to train again)")
        return model_dir
    if retrain and (out / objective).exists():
        shutil.rmtree(out / objective)
    print(f"{log_prefix} training the {size} {objective} model for {minutes:g} minutes on {device}")
    train(objective=objective, model=size, data=data, tokenizer=tokenizer, seq_len=seq_len, batch_size=16, lr=1e-3,
          schedule="constant", warmup=50, ema=0.99, steps=steps, max_time=minutes * 60, eval_every=0, eval_batches=2,
          ckpt_every=0, out_dir=str(out / objective), device=device, seed=seed)
    return model_dir
