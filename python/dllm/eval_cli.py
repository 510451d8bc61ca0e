"""`dllm eval`: the validation loss of a model folder written by `dllm train`, on its corpus's held-out split."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch

from .benchmarks.common import null_for_nan
from .data.dataset import prepare
from .devices import resolve_device
from .data.tokenizer import tokenizer_for_model
from .models import from_pretrained
from .models.io import read_config
from .objectives import get_objective
from .training.config import TrainConfig
from .training.evaluation import nll_metrics, standard_error, validation_nll_per_window


def run_eval(model_dir: str, *, batches: int | None = None, batch_size: int | None = None, device: str = "auto",
             seed: int | None = None, progress: bool = True) -> dict:
    """Validation NLL per token, bits per token and bits per byte of ``model_dir`` (OUT_DIR/model)
    on the first ``batches`` batches of the held-out split of the corpus it was trained on, read from
    OUT_DIR/run_config.json.
    Diffusion models report their NLL bound, autoregressive ones the exact NLL; the ``_se`` keys are
    one standard error over the windows (null for one window), each window's noise draw included.
    Defaults (batches, batch size, seed) are the run's, so the numbers match the trainer's last
    validation of the exported weights (the ``_ema`` ones when the run kept an EMA)."""
    if (batches is not None and batches <= 0) or (batch_size is not None and batch_size <= 0):
        raise ValueError(f"--batches and --batch-size must be positive, got {batches} and {batch_size}")
    if seed is not None and not 0 <= seed < 2**63:  # the range dllm train accepts
        raise ValueError(f"--seed must lie in [0, 2^63), got {seed}")
    model_dir = Path(model_dir)
    config = read_config(model_dir, expected="the model folder of `dllm train` (OUT_DIR/model)")
    run_config = model_dir.parent / "run_config.json"
    if not run_config.is_file():
        raise FileNotFoundError(f"no run_config.json beside {str(model_dir)!r}: `dllm eval` takes the model folder "
                                "of `dllm train` (OUT_DIR/model), whose run records the corpus")
    try:
        cfg = TrainConfig.from_dict(json.loads(run_config.read_text())["train"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{str(run_config)!r} is not the run record `dllm train` writes ({type(e).__name__}: {e}); "
                         "`dllm eval` rebuilds the run's validation split from it") from None
    tok = tokenizer_for_model(model_dir)
    dev = resolve_device(device)
    # before the corpus, whose tokenizing may take a minute: unreadable weights fail at once
    model = from_pretrained(model_dir, map_location=dev).eval()
    data = prepare(cfg.data, tokenizer="byte" if tok.kind == "byte" else str(model_dir / "tokenizer.json"),
                   seq_len=cfg.seq_len, val_fraction=cfg.val_fraction, bpe_vocab_size=cfg.bpe_vocab_size,
                   cache_dir=cfg.cache_dir, progress=progress)
    if data.corpus_hash != config.get("corpus_hash"):
        raise ValueError(f"the corpus {cfg.data or 'standard library'!r} changed since {str(model_dir)!r} was trained "
                         "(its hash differs); its held-out split is no longer the one the run used")
    objective = get_objective(cfg.objective, tok, graph=cfg.graph, noise=cfg.noise)
    if objective.config() != config.get("objective"):
        raise ValueError(f"{str(model_dir)!r} was trained with objective {config.get('objective')}, which `dllm eval` "
                         f"cannot rebuild (got {objective.config()})")
    batches = cfg.eval_batches if batches is None else batches
    batch_size = cfg.batch_size if batch_size is None else batch_size
    seed = cfg.seed if seed is None else seed
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and dev.type == "cuda" else nullcontext()
    sequences = min(len(data.val), batches * batch_size)
    per_window = validation_nll_per_window(model, objective, data.val, sequences=sequences, batch_size=batch_size,
                                           seed=seed, device=dev, amp=amp, progress=progress)
    bytes_per_token = data.val_bytes_per_token(sequences)
    return null_for_nan({
        "model": str(model_dir), "objective": cfg.objective, "nll": "exact" if cfg.objective == "ar" else "bound",
        "weights": config.get("weights", "model"), "step": config.get("step"), "sequences": sequences,
        "seq_len": cfg.seq_len, "seed": seed, "device": str(dev),
        **nll_metrics(per_window.mean().item(), bytes_per_token),
        **nll_metrics(standard_error(per_window), bytes_per_token, "_se")})
