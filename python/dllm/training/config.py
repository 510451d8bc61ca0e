"""The training configuration: one dataclass, the source of the CLI flags and of the JSON saved with a run."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..devices import DEVICE_HELP


BPE_MIN_VOCAB = 258  # a byte-level BPE starts from the 256 bytes, plus end-of-text and mask


def path_as_recorded(key: str, value: str | None) -> str | None:
    """``data``, ``cache_dir`` or a tokenizer.json path as a run records it: absolute, ``~`` expanded,
    so that `dllm eval` finds it from any folder and a rerun from another folder recognises it."""
    named = ("byte", "bpe") if key == "tokenizer" else ("stdlib",)
    return value if not value or value in named else str(Path(value).expanduser().resolve())


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # what to train
    objective: str = _f("mdlm", "training objective", choices=["mdlm", "sedd", "llada", "ar"])
    graph: str = _f("absorb", "SEDD forward process", choices=["absorb", "uniform"])
    noise: str = _f("loglinear", "noise schedule of SEDD/MDLM", choices=["loglinear", "geometric"])
    model: str = _f("tiny", "model size", choices=["tiny", "small", "medium"])
    arch: str | None = _f(None, "architecture (default: the objective's: dit for sedd/mdlm, ar for ar, llada for llada)",
                          choices=["dit", "ar", "llada"])
    time_conditioning: bool | None = _f(None, "condition the DiT on sigma (default: on for SEDD, off for MDLM)")
    dropout: float = _f(0.0, "dropout in the transformer blocks")
    hidden: int | None = _f(None, "override the size's hidden width")
    layers: int | None = _f(None, "override the size's number of blocks")
    heads: int | None = _f(None, "override the size's attention heads")
    kv_heads: int | None = _f(None, "key/value heads of the llada architecture (grouped-query attention; default: heads)")
    # data
    data: str | None = _f(None, "corpus: a text file or folder (default: this Python's standard-library sources)")
    tokenizer: str = _f("byte", "'byte', 'bpe' (trained on the corpus and cached), or a path to a tokenizer.json")
    bpe_vocab_size: int = _f(4096, "vocabulary size of a trained BPE (end-of-text and mask included)")
    val_fraction: float = _f(0.05, "fraction of the text held out for validation (whole files while that stays near "
                                   "it, else the tail of the text)")
    cache_dir: str | None = _f(None, "token cache folder (default: $DLLM_CACHE or ~/.cache/dllm)")
    seq_len: int = _f(256, "tokens per packed sequence")
    random_length: float | None = _f(None, "fraction of optimizer steps whose batch is cut to a random length in [1, "
                                           "seq_len], so that shorter canvases are not new to the model at sampling "
                                           "(default: 0.01 for llada, as LLaDA trains; else 0)")
    # optimisation
    batch_size: int = _f(32, "sequences per optimizer step, summed over processes and accumulation steps")
    grad_accum: int = _f(1, "micro-batches per optimizer step (per process)")
    steps: int = _f(1000, "optimizer steps")
    max_time: float = _f(0.0, "stop after this many wall-clock seconds (validations and checkpoints included), summed "
                              "over resumes (0: no limit); the cosine schedule is still placed by --steps; checkpoints "
                              "and evaluates at the stop")
    lr: float = _f(3e-4, "peak learning rate (AdamW)")
    min_lr_ratio: float = _f(0.1, "cosine schedule: final learning rate as a fraction of --lr")
    schedule: str = _f("cosine", "learning rate after warm-up", choices=["cosine", "constant"])
    warmup: int = _f(100, "linear warm-up steps")
    weight_decay: float = _f(0.0, "AdamW weight decay (decoupled)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.999, "AdamW beta2")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0: off)")
    ema: float = _f(0.9999, "EMA decay, with warm-up min(decay, (1+n)/(10+n)) (0: no EMA)")
    # run
    out_dir: str = _f("out/train", "folder for checkpoint.pt, metrics.jsonl, loss.png and model/")
    seed: int = _f(0, "seed of initialisation, data order and diffusion noise")
    device: str = _f("auto", DEVICE_HELP)
    amp: bool = _f(True, "bfloat16 autocast on CUDA (ignored on the CPU)")
    eval_every: int = _f(200, "validate every N steps (and at the end; 0: only at the end)")
    eval_batches: int = _f(8, "validation batches of --batch-size sequences: the held-out split's first ones (fixed "
                              "sequences and noise)")
    ckpt_every: int = _f(500, "checkpoint every N steps (and at the end; 0: only at the end)")
    log_every: int = _f(10, "append training metrics every N steps")
    resume: str = _f("auto", "'auto' (resume from OUT_DIR/checkpoint.pt if present), 'never' (start over, "
                         "removing the previous run's checkpoint, model/ and loss.png), or a checkpoint path (one of "
                         "another folder only into an --out-dir that holds no run, or only this same resume "
                         "stopped before its first checkpoint)")
    progress: bool = _f(True, "show progress bars (BPE training, tokenizing, training)")

    def __post_init__(self):
        self._check_types()
        positive = ("batch_size", "grad_accum", "seq_len", "steps", "log_every", "eval_batches", "bpe_vocab_size", "lr")
        not_negative = ("max_time", "warmup", "eval_every", "ckpt_every", "weight_decay", "grad_clip", "min_lr_ratio")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in not_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "grad_clip", "max_time"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}"
                                 + (" (0: no limit)" if name == "max_time" else ""))
        for name in ("hidden", "layers", "heads", "kv_heads"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("dropout", "ema", "beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.random_length is not None and not 0 <= self.random_length <= 1:
            raise ValueError(f"random_length must lie in [0, 1], got {self.random_length}")
        if self.min_lr_ratio > 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.schedule == "constant" and self.min_lr_ratio != type(self).min_lr_ratio:
            raise ValueError("min_lr_ratio applies to the cosine schedule only, not to --schedule constant")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must lie in [0, 2^63), got {self.seed}")
        if self.tokenizer != "bpe" and self.bpe_vocab_size != type(self).bpe_vocab_size:
            raise ValueError(f"bpe_vocab_size applies to --tokenizer bpe only, not {self.tokenizer!r}")
        if self.tokenizer == "bpe" and self.bpe_vocab_size < BPE_MIN_VOCAB:
            raise ValueError(f"bpe_vocab_size must be at least {BPE_MIN_VOCAB} (256 bytes, end-of-text and mask), got "
                             f"{self.bpe_vocab_size}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")

    def _check_types(self) -> None:
        """Values from a --config file or dllm.train(...) meet the types the flags would have parsed:
        a string "no" would turn amp on, and 2.5 steps would silently run 3. Paths may be os.PathLike."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, os.PathLike) and f.name in ("data", "tokenizer", "cache_dir", "out_dir", "resume"):
                value = os.fspath(value)
                setattr(self, f.name, value)
            args = typing.get_args(hints[f.name])  # (T, NoneType) for "T | None"
            optional = type(None) in args
            kind = next(a for a in args if a is not type(None)) if args else hints[f.name]
            if value is None and optional:
                continue
            ok = (isinstance(value, bool) if kind is bool else
                  isinstance(value, numbers.Integral) and not isinstance(value, bool) if kind is int else
                  isinstance(value, numbers.Real) and not isinstance(value, bool) if kind is float else
                  isinstance(value, kind))
            if not ok:
                raise ValueError(f"{f.name} must be {'an' if kind is int else 'a'} {kind.__name__}"
                                 f"{' or None' if optional else ''}, got {value!r}")
            if kind is float:
                setattr(self, f.name, float(value))
            elif kind is int:
                setattr(self, f.name, int(value))
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ValueError(f"{f.name} must be one of {choices}, got {value!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training options: {sorted(unknown)}")
        return cls(**d)


def random_length_spelled_out(options: dict, objective_default: float) -> dict:
    """options (TrainConfig fields) with random_length None, which leaves it to the objective,
    replaced by that objective's ``objective_default``: spelling it out changes nothing."""
    if "random_length" in options and options["random_length"] is None:
        return {**options, "random_length": objective_default}
    return options
