"""Train a model for a bounded number of minutes into a folder, or reuse the model already there.

`dllm demo` and `dllm bench e2e` train their diffusion model and its autoregressive baseline this
way: the same size, data, batch and wall-clock budget for both, so the comparison is fair.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from ..objectives import OBJECTIVES
from .checkpoint import CheckpointError
from .config import TrainConfig, path_as_recorded, random_length_spelled_out
from .trainer import train

SHAPE_KEYS = ("hidden", "layers", "heads")  # what makes two models of one architecture the same size
# How a run optimises (TrainConfig fields): a model trained to be compared with another takes that one's.
RECIPE_KEYS = ("batch_size", "grad_accum", "lr", "schedule", "min_lr_ratio", "warmup", "weight_decay", "beta1",
               "beta2", "grad_clip", "ema", "dropout", "random_length", "amp")


def default_recipe(size: str) -> dict:
    """A timed run's optimisation: batch 16, a constant learning rate after 50 warm-up steps (1e-3 for tiny,
    3e-4 for the larger sizes), EMA 0.99, TrainConfig's defaults for the rest."""
    # tiny keeps the 1e-3 of the committed CPU reports; the larger sizes take SEDD's and MDLM's 3e-4
    # (at 1e-3 the small MDLM's gradient norm became NaN after about 90 steps on an H200,
    # bench/results/h200-2026-12-04/e2e-training-nan/)
    defaults = TrainConfig()
    return {**{k: getattr(defaults, k) for k in RECIPE_KEYS}, "batch_size": 16, "lr": 1e-3 if size == "tiny" else 3e-4,
            "schedule": "constant", "warmup": 50, "ema": 0.99}


def recipe_of(train: dict) -> dict:
    """The RECIPE_KEYS among a run's training settings (a run record's "train"), random_length None
    spelled out as its objective's own: None leaves it to the objective, whose defaults differ
    (LLaDA cuts 1% of its steps to a random length, the others none)."""
    recipe = {k: train[k] for k in RECIPE_KEYS if k in train}
    objective = OBJECTIVES.get(train.get("objective"))
    return random_length_spelled_out(recipe, objective.random_length) if objective else recipe


def train_for_minutes(objective: str, out: Path, minutes: float, *, device: str, seq_len: int, size: str = "tiny",
                      shape: dict | None = None, data: str | None = None, tokenizer: str = "byte",
                      retrain: bool = False, seed: int = 0, steps: int = 20000, log_prefix: str = "[dllm]",
                      val_fraction: float = TrainConfig.val_fraction, recipe: dict | None = None) -> Path:
    """Trains ``objective`` into ``out/objective`` with ``default_recipe(size)`` until the time budget or
    ``steps`` optimizer steps end; returns the exported model folder. An existing folder is reused unless
    ``retrain``; one trained with another tokenizer, data, size, seed, split or recipe is refused.
    ``shape``: ``hidden``, ``layers`` and ``heads`` overriding the size's; ``val_fraction`` and ``recipe``
    (``RECIPE_KEYS``, overriding the default's): those of the model it is compared with, whose held-out
    text it must not train on and whose optimisation it shares."""
    shape = {k: (shape or {}).get(k) for k in SHAPE_KEYS}
    unknown = set(recipe or {}) - set(RECIPE_KEYS)
    if unknown:
        raise ValueError(f"recipe: {sorted(unknown)} are not among {RECIPE_KEYS}")
    recipe = {**default_recipe(size), **(recipe or {})}
    model_dir = out / objective / "model"
    run_config = out / objective / "run_config.json"
    if retrain and (out / objective).exists():
        shutil.rmtree(out / objective)
    elif run_config.exists():  # a finished run, or an interrupted one that train() resumes
        try:
            trained = json.loads(run_config.read_text())["train"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{run_config} is damaged ({e!r}): retrain (--retrain) or choose another output "
                             "folder") from None
        if trained["tokenizer"] != path_as_recorded("tokenizer", tokenizer):
            raise ValueError(f"{out / objective} holds a model trained with the {trained['tokenizer']!r} tokenizer, "
                             f"not {tokenizer!r}: retrain (--retrain) or choose another output folder")
        for key, want in (("model", size), ("data", path_as_recorded("data", data)), *shape.items()):
            if trained.get(key) != want:
                flag = {"model": "--size"}.get(key, f"--{key}")
                raise ValueError(f"{out / objective} holds a model trained with {flag} {trained.get(key)!r}, not "
                                 f"{want!r}: retrain (--retrain) or choose another output folder")
        held_out = trained.get("val_fraction", TrainConfig.val_fraction)  # a record written by hand may lack it
        if held_out != val_fraction:
            raise ValueError(f"{out / objective} holds a model trained with --val-fraction {held_out}, not "
                             f"{val_fraction}: retrain (--retrain) or choose another output folder")
        kept = recipe_of({**trained, "objective": objective})
        for key, want in recipe_of({**recipe, "objective": objective}).items():
            if key in kept and kept[key] != want:  # a record of before a key existed kept its default
                raise ValueError(f"{out / objective} holds a model trained with --{key.replace('_', '-')} "
                                 f"{kept[key]!r}, not {want!r}: retrain (--retrain) or choose another output folder")
        if trained.get("seed") != seed:  # `dllm bench e2e --seed` seeds the training too
            raise ValueError(f"{out / objective} holds a model trained with --seed {trained.get('seed')}, not {seed}: "
                             "retrain (--retrain) or choose another output folder")
        if trained["seq_len"] < seq_len:
            raise ValueError(f"{out / objective} holds a model trained on {trained['seq_len']}-token windows, "
                             f"shorter than the {seq_len} needed: retrain (--retrain) or choose another output folder")
        if model_dir.exists():
            print(f"{log_prefix} reusing {model_dir}{_other_budget(trained, minutes, steps)} (--retrain to train "
                  "again)")
            return model_dir
    resized = ", ".join(f"{k} {v}" for k, v in shape.items() if v is not None)
    print(f"{log_prefix} training the {size} {objective} model{f' ({resized})' if resized else ''} for {minutes:g} "
          f"minutes on {device}")
    try:
        train(objective=objective, model=size, data=data, tokenizer=tokenizer, seq_len=seq_len, steps=steps,
              max_time=minutes * 60, eval_every=0, eval_batches=2, ckpt_every=0, out_dir=str(out / objective),
              device=device, seed=seed, val_fraction=val_fraction, **recipe, **shape)
    except CheckpointError as e:
        raise CheckpointError(f"the unfinished run in {out / objective} cannot continue ({e}); --retrain starts "
                              "it over") from e
    return model_dir


def _other_budget(trained: dict, minutes: float, steps: int) -> str:
    """A kept model is reused whatever budget is asked now (the demo's rerun is meant to be quick), so the
    difference is said rather than refused."""
    if "max_time" not in trained or "steps" not in trained:  # written by hand or by another tool
        return ""
    was_minutes, was_steps = trained["max_time"] / 60, trained["steps"]
    if math.isclose(was_minutes, minutes) and was_steps == steps:
        return ""
    return f", trained with a budget of {was_minutes:g} minutes or {was_steps} steps, not {minutes:g} or {steps}"
