"""The training loop: one process or DDP under torchrun, exact resume, periodic validation."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .. import ops
from .._atomic import remove_leftovers
from ..benchmarks.common import card, command_line, git_commit, utc_now
from ..data.dataset import BatchOrder, atomic_write_bytes, prepare
from ..devices import resolve_device
from ..data.tokenizer import ByteTokenizer, tokenizer_config
from ..models import build_model, model_config
from ..models.io import CONFIG_NAME, WEIGHTS_NAME
from ..objectives import OBJECTIVES, get_objective
from .checkpoint import CheckpointError, RunFolderInUse, load_checkpoint, save_checkpoint
from .config import TrainConfig, path_as_recorded, random_length_spelled_out
from .ema import EMA
from .evaluation import nll_metrics, validation_nll
from .metrics import MetricsLog, plot_metrics

log = logging.getLogger("dllm")

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1  # the layout of state_dict(): a change to it makes another format
EXPORT = "model"  # the final weights, a save_pretrained folder
RUN_RECORDS = (CHECKPOINT, "metrics.jsonl", "run_config.json")  # what makes a folder hold a run
NONFINITE_STEP = "nonfinite-step.pt"  # the run before a step whose gradient was not finite (a checkpoint)


@contextlib.contextmanager
def run_folder_lock(folder: Path, enabled: bool = True):
    """One training run per folder at a time: two would interleave their checkpoints and metrics.
    An advisory lock (flock) on ``folder/.lock``, which the system drops when the process dies, so a
    killed run never leaves the folder locked."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        enabled = False
    if not enabled:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            raise RunFolderInUse(f"{str(folder)!r} is in use by another training run{f' (pid {holder})' if holder else ''}: "
                               "wait for it to end, or train into another --out-dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


class _StopAtStepOnInterrupt:
    """Ctrl-C during training stops at the next step boundary, where the state is whole and can be
    checkpointed (mid-step, the optimizer may have moved some weights and not others); a second
    Ctrl-C interrupts at once. Only a single process's main thread owns SIGINT, and a process that
    ignores it (a background job of a non-interactive shell) goes on ignoring it."""

    def __init__(self, enabled: bool):
        self.enabled, self.requested, self.previous = enabled, False, None

    def __enter__(self):
        self.enabled = self.enabled and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        if self.enabled:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)
        log.warning("Ctrl-C: stopping after this step to save a checkpoint; press it again to stop at once "
                    "(the steps since the last checkpoint are then lost)")

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine or constant."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    # the last step (steps - 1) runs at min_lr_ratio * lr, the "final learning rate" of the option,
    # also when it is the cosine's only step (span 0: warmup = steps - 1)
    span = cfg.steps - 1 - cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / span) if span > 0 else 1.0
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# Options that shape the rest of a run: a resume may change them, and the run's record says when.
RESUME_SHAPING = ("lr", "schedule", "warmup", "weight_decay", "beta1", "beta2", "grad_clip", "batch_size", "dropout",
                  "random_length")
COSINE_SHAPING = ("steps", "min_lr_ratio")  # they place the cosine's end; a constant schedule reads neither
STEP_METRICS = ("loss", "nll_per_token", "lr", "grad_norm", "seq_len")  # what train_step returns, and logs


def _read_record(path: Path) -> dict:
    """The record of the run being resumed; a damaged one (the run was killed while writing it,
    before it was written atomically) costs its history of earlier starts, not the resume."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        log.warning("%s is damaged (%s): its record of earlier starts and changes begins afresh", path, e)
        return {}


def sdpa_without_cudnn():
    """A context in which SDPA may take every backend but cuDNN's."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class Trainer:
    def __init__(self, cfg: TrainConfig):
        paths = ("data", "cache_dir", "tokenizer")
        cfg = dataclasses.replace(cfg, **{k: path_as_recorded(k, getattr(cfg, k)) for k in paths})
        self.cfg = cfg
        self.rank, self.world, local_rank = _dist_env()
        self.device = resolve_device(cfg.device, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.owns_process_group = self.world > 1 and not dist.is_initialized()
        if self.owns_process_group:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        try:
            self._set_up()
        except BaseException:
            # train() destroys the group after the run; a construction that fails has none to do it
            if self.owns_process_group:
                dist.destroy_process_group()
            raise

    def _set_up(self) -> None:
        """The rest of __init__, after the process group exists: the checks, the data, the model."""
        cfg = self.cfg
        if cfg.batch_size % (self.world * cfg.grad_accum):
            raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by processes x grad_accum "
                             f"({self.world} x {cfg.grad_accum})")
        self.out = Path(cfg.out_dir)
        self.is_main = self.rank == 0

        # Before the data, whose first preparation (a BPE, the tokenizing) takes a minute: mistakes fail at once,
        # and so does a resume of another model, objective, seed or EMA setting. The checkpoint read for it
        # is kept for the resume (_read_checkpoint): it holds the model and the optimizer, slow to read twice.
        # The model's sizes are checked over the byte tokenizer, standing in for the data's.
        self._objective_and_model(ByteTokenizer())
        self._held = None
        resume = self._resume_path()
        if resume is not None:
            self._held = self._read_checkpoint(resume)
            self._refuse_another_run(self._held[1], str(resume))

        # Rank 0 tokenizes first so that the others find a finished cache instead of racing to write it.
        if self.is_main:
            self.data = self._prepare()
        self._barrier()
        if not self.is_main:
            self.data = self._prepare()
        self.tokenizer = self.data.tokenizer
        if self.is_main:
            self._warn_if_small(len(self.data.train), len(self.data.val))
        self.objective, self.model_cfg = self._objective_and_model(self.tokenizer)

        torch.manual_seed(cfg.seed)
        self.raw_model = build_model(self.model_cfg).to(self.device)
        self.model = (DistributedDataParallel(self.raw_model, device_ids=[self.device] if self.device.type == "cuda" else None)
                      if self.world > 1 else self.raw_model)
        self.params = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                                     weight_decay=cfg.weight_decay)
        self.ema = EMA(self.params, cfg.ema) if cfg.ema > 0 else None
        self.order = BatchOrder(len(self.data.train), cfg.seed)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.random_length = cfg.random_length if cfg.random_length is not None else self.objective.random_length
        self.step = 0
        self.tokens_seen = 0
        self.train_time = 0.0   # seconds spent in optimizer steps (for tokens/s)
        self.elapsed = 0.0      # wall-clock seconds of the run, summed over resumes
        self.metrics = MetricsLog(self.out / "metrics.jsonl")
        self.resume_changes: dict = {}
        if cfg.warmup > cfg.steps and self.is_main:  # lr_at reaches lr at step warmup - 1
            log.warning("warmup (%d steps) > steps (%d): the learning rate never reaches lr (%g)", cfg.warmup, cfg.steps,
                        cfg.lr)
        # the precision the run trains in, as the checkpoint records it: amp is ignored on the CPU
        self.amp_setting = "bf16" if cfg.amp and self.device.type == "cuda" else "off"
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp_setting == "bf16" else nullcontext()
        self.sdpa_without_cudnn_from: int | None = None  # the step from which attention leaves cuDNN's SDPA out

    def _warn_if_small(self, train_windows: int, val_windows: int) -> None:
        cfg = self.cfg
        if train_windows < cfg.batch_size:
            log.warning("the training split holds %d windows of %d tokens, fewer than a batch of %d: every batch "
                        "repeats windows (a larger corpus or a shorter --seq-len gives it more)", train_windows,
                        cfg.seq_len, cfg.batch_size)
        if val_windows < cfg.eval_batches * cfg.batch_size:
            log.warning("validation scores the %d windows the held-out split holds, fewer than --eval-batches x "
                        "--batch-size = %d", val_windows, cfg.eval_batches * cfg.batch_size)

    def _check_options(self, objective) -> tuple[str, bool]:
        """The architecture and time conditioning the options give ``objective`` (its class), or the
        error of a combination that cannot train."""
        cfg = self.cfg
        arch = cfg.arch or objective.arch
        if (arch == "ar") != (cfg.objective == "ar"):
            raise ValueError(f"objective {cfg.objective!r} cannot train arch {arch!r}: the autoregressive objective "
                             "and the causal 'ar' architecture go together")
        tc = cfg.time_conditioning if cfg.time_conditioning is not None else objective.time_conditioning
        if cfg.kv_heads is not None and arch != "llada":
            raise ValueError(f"kv_heads applies to the llada architecture only, not {arch!r}")
        if tc and arch in ("llada", "ar"):
            why = ("--time-conditioning" if cfg.time_conditioning else
                   f"the {cfg.objective!r} objective conditions on it by default")
            raise ValueError(f"the {arch} architecture takes no time input ({why}): use the dit architecture "
                             "(--arch dit) or turn time conditioning off (--no-time-conditioning)")
        if tc and cfg.objective == "llada":
            raise ValueError("the llada objective trains a time-agnostic model (it never passes the time): drop "
                             "--time-conditioning")
        # Options another objective would read: accepted silently, they would be recorded as if they applied.
        if cfg.graph != "absorb" and cfg.objective != "sedd":
            raise ValueError(f"--graph applies to the sedd objective only, not {cfg.objective!r}")
        if cfg.noise != "loglinear" and cfg.objective not in ("sedd", "mdlm"):
            raise ValueError(f"--noise applies to the sedd and mdlm objectives only, not {cfg.objective!r}")
        return arch, tc

    def _objective_and_model(self, tokenizer):
        """The objective and the model config the options give over ``tokenizer``."""
        cfg = self.cfg
        arch, tc = self._check_options(OBJECTIVES[cfg.objective])
        sizes = {k: getattr(cfg, k) for k in ("hidden", "layers", "heads", "kv_heads") if getattr(cfg, k) is not None}
        objective = get_objective(cfg.objective, tokenizer, graph=cfg.graph, noise=cfg.noise)
        return objective, model_config(cfg.model, arch=arch, vocab_size=objective.model_vocab_size,
                                       max_seq_len=cfg.seq_len, time_conditioning=tc, dropout=cfg.dropout, **sizes)

    # -- set-up ------------------------------------------------------------------------------------
    def _prepare(self):
        c = self.cfg
        level = log.level
        if not self.is_main:  # rank 0 prepared the same data first and said what it found
            log.setLevel(logging.ERROR)
        try:
            return prepare(c.data, tokenizer=c.tokenizer, seq_len=c.seq_len, val_fraction=c.val_fraction,
                           bpe_vocab_size=c.bpe_vocab_size, cache_dir=c.cache_dir,
                           progress=c.progress and self.is_main)
        finally:
            log.setLevel(level)

    def _barrier(self):
        if self.world > 1:
            dist.barrier()

    def _resume_path(self) -> Path | None:
        r = self.cfg.resume
        if r == "never":
            return None
        if r == "auto":
            p = self.out / CHECKPOINT
            return p if p.exists() else None
        p = Path(r)
        if not p.exists():
            raise FileNotFoundError(f"--resume {r!r}: no such checkpoint")
        if p.is_dir():
            inside = f" (did you mean {str(p / CHECKPOINT)!r}?)" if (p / CHECKPOINT).is_file() else ""
            raise ValueError(f"--resume {r!r} is a folder: it takes the checkpoint file{inside}")
        held = [name for name in RUN_RECORDS if (self.out / name).exists()]
        if p.resolve().parent != self.out.resolve() and held and not self._restarts_this_resume(p):
            then = ("pass --resume auto to continue the run that folder holds" if CHECKPOINT in held else
                    "remove that folder's records to start its run from this checkpoint")
            raise ValueError(f"--resume {r!r} continues the run of another folder, but {str(self.out)!r} holds a run "
                             f"of its own ({', '.join(held)}), whose records would mix with it: resume into a new "
                             f"--out-dir (or {then})")
        return p

    def _restarts_this_resume(self, p: Path) -> bool:
        """Whether the folder's records are those of this same resume, stopped before its first checkpoint."""
        record = self.out / "run_config.json"
        if (self.out / CHECKPOINT).exists() or not record.is_file():
            return False
        recorded = _read_record(record).get("train", {}).get("resume")
        return isinstance(recorded, str) and recorded not in ("auto", "never") and Path(recorded).resolve() == p.resolve()

    # -- checkpoints -------------------------------------------------------------------------------
    def _read_checkpoint(self, path: Path) -> tuple[tuple, dict]:
        """The file's identity and the checkpoint at ``path``: the one read before the data (``_held``)
        while the path still names that file (a checkpoint is replaced by a rename, which makes it
        another file), else read now. The held one is let go either way: it holds a model and optimizer."""
        st = path.stat()  # before the read: a file replaced during it then differs from what was read
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        held, self._held = self._held, None
        if held is None or held[0] != stamp:
            held = stamp, load_checkpoint(path, own_run=path.resolve() == (self.out / CHECKPOINT).resolve())
        return held

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "train_time": self.train_time,
            "elapsed": self.elapsed,
            "model": self.raw_model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.opt.state_dict(),
            "rng": self._rng_state(),
            "data": self.order.state_dict(),
            "corpus_hash": self.data.corpus_hash,
            "tokenizer": tokenizer_config(self.tokenizer),
            "model_config": self.model_cfg.to_dict(),
            "objective": self.objective.config(),
            "train_config": self.cfg.to_dict(),
            "amp": self.amp_setting,  # optional: checkpoints of this format written before it lack it
            "sdpa_without_cudnn_from": self.sdpa_without_cudnn_from,  # optional too
        }

    def _refuse_another_run(self, s: dict, source: str, data=None) -> None:
        """CheckpointError unless checkpoint ``s`` continues this run. Without ``data`` (before it is
        prepared) the corpus and the tokenizer are left for the resume to compare, and the checkpoint's
        tokenizer stands in for this run's: the objective and the model read its sizes and ids alone."""
        def refuse(what, saved, now):
            if isinstance(saved, dict) and isinstance(now, dict):  # name what differs, not two whole configs
                keys = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
                saved, now = ({k: d.get(k) for k in keys} for d in (saved, now))
            how = ("use another --out-dir or --resume never" if self.cfg.resume == "auto" else
                   "pass a checkpoint of this run to --resume, or --resume never")
            raise CheckpointError(f"checkpoint {source!r} was written for another {what} ({saved} vs now {now}); {how}")

        for key in ("format", "step", "model", "optimizer", "rng", "data", "corpus_hash", "tokenizer", "objective",
                    "model_config", "ema"):
            if key not in s:
                raise CheckpointError(f"checkpoint {source!r} lacks {key!r}; it was not written by dllm.train")
        if s["format"] != CHECKPOINT_FORMAT:  # a later layout, whose keys may mean something else
            raise CheckpointError(f"checkpoint {source!r} has format {s['format']!r}; this dllm reads format "
                                  f"{CHECKPOINT_FORMAT}: resume it with the dllm version that wrote it")
        if data is not None:
            if s["corpus_hash"] != data.corpus_hash:
                refuse("corpus (its files, or --val-fraction, differ)", s["corpus_hash"][:12], data.corpus_hash[:12])
            if s["tokenizer"]["fingerprint"] != data.tokenizer.fingerprint:
                refuse("tokenizer", s["tokenizer"]["fingerprint"], data.tokenizer.fingerprint)
        objective, model_cfg = self._objective_and_model(data.tokenizer if data is not None else
                                                         SimpleNamespace(**s["tokenizer"]))
        # dropout shapes the rest of the run, not the weights: a change is recorded (RESUME_SHAPING)
        # the objective first: another one implies another model (its time input), which would be named instead
        if s["objective"] != objective.config():
            refuse("objective", s["objective"], objective.config())
        saved_model, now_model = ({k: v for k, v in d.items() if k != "dropout"}
                                  for d in (s["model_config"], model_cfg.to_dict()))
        if saved_model != now_model:
            refuse("model", saved_model, now_model)
        if (self.cfg.ema == 0) != (s["ema"] is None) or (s["ema"] and s["ema"]["decay"] != self.cfg.ema):
            # the average kept so far would be dropped, or go on under another decay than the record says
            refuse("EMA setting", f"ema={s['ema']['decay'] if s['ema'] else 0}", f"ema={self.cfg.ema}")
        saved_seed = s.get("train_config", {}).get("seed", self.cfg.seed)
        if saved_seed != self.cfg.seed:  # the data order and the diffusion noise go on from the saved seed's
            refuse("seed", f"seed={saved_seed}", f"seed={self.cfg.seed}")

    def load_state_dict(self, s: dict, source: str) -> None:
        self._refuse_another_run(s, source, self.data)
        self.raw_model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        for g in self.opt.param_groups:  # the saved groups hold the old options; a resume's changes apply
            g["betas"], g["weight_decay"] = (self.cfg.beta1, self.cfg.beta2), self.cfg.weight_decay
        if self.ema is not None:
            self.ema.load_state_dict(s["ema"])
        saved, now = (random_length_spelled_out(o, self.objective.random_length)
                      for o in (s.get("train_config", {}), self.cfg.to_dict()))
        shaping = RESUME_SHAPING + (COSINE_SHAPING if self.cfg.schedule == "cosine" else ())
        self.resume_changes = {k: [saved[k], now[k]] for k in shaping if k in saved and saved[k] != now[k]}
        if self.resume_changes and self.is_main:
            log.warning("resuming %s at step %d with changed options (old, new): %s", source, s["step"],
                        self.resume_changes)
        saved_amp = s.get("amp")  # None: unknown, written before checkpoints recorded it
        if saved_amp not in (None, self.amp_setting):  # legitimate (another device), not silent
            if self.is_main:
                log.warning("resuming with amp=%s; the checkpoint was trained with amp=%s", self.amp_setting, saved_amp)
            # after the "changed options" line, which would say it twice; the precision trained in, not the option
            self.resume_changes["amp"] = [saved_amp, self.amp_setting]
        self.restore_streams(s)
        self.sdpa_without_cudnn_from = s.get("sdpa_without_cudnn_from")
        self.step, self.tokens_seen = s["step"], s["tokens_seen"]
        self.train_time, self.elapsed = s["train_time"], s["elapsed"]

    def _rng_state(self) -> dict:
        return {"torch": torch.get_rng_state(), "noise": self.noise_gen.get_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def restore_streams(self, s: dict) -> None:
        """The data order and the random streams of checkpoint ``s``: the next step draws what its run's did."""
        self.order.load_state_dict(s["data"])
        torch.set_rng_state(s["rng"]["torch"])
        self.noise_gen.set_state(s["rng"]["noise"])
        if s["rng"]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(s["rng"]["cuda"], self.device)

    def _seed_dropout_per_rank(self) -> None:
        """Under DDP every rank would draw the same dropout masks: all start from cfg.seed, and a resume
        restores rank 0's saved state on every rank. Each rank's stream is therefore reseeded from
        (seed, rank, step) before every step, so that a resumed run draws what the uninterrupted one
        drew (seeded once, where a run starts, a resume would start another stream); the diffusion
        noise comes from noise_gen, drawn for the whole batch, and is not touched. A single process
        keeps its stream (and a resume its saved one)."""
        if self.world > 1:
            torch.manual_seed(((self.cfg.seed * 1_000_003 + self.rank) * 1_000_033 + self.step) % 2**64)  # its range

    def save(self) -> None:
        if self.is_main:
            save_checkpoint(self.state_dict(), self.out / CHECKPOINT)
        self._barrier()

    # -- one optimizer step ------------------------------------------------------------------------
    def _nonfinite_gradients(self) -> str:
        """Which parameters' gradients are not finite. The backward runs from the last layer to the
        first, so the last of them in model order sits nearest the op whose backward broke."""
        named = [(name, p) for name, p in self.raw_model.named_parameters() if p.grad is not None]
        bad = [name for name, p in named if not torch.isfinite(p.grad).all()]
        if not bad:
            return "every gradient is finite (their norm overflowed)"
        return (f"non-finite gradients in {len(bad)} of {len(named)} parameters, the last in model order: "
                f"{', '.join(bad[-3:])}")

    def _step_length(self) -> int:
        """The sequence length of this step: seq_len, or a random length in [1, seq_len] for a
        random_length fraction of the steps (drawn from the noise generator, so every process
        cuts alike and a resume goes on as the run would have)."""
        L = self.cfg.seq_len
        if self.random_length == 0:
            return L
        cut = torch.rand((), generator=self.noise_gen) < self.random_length
        length = int(torch.randint(1, L + 1, (), generator=self.noise_gen))
        return length if cut else L

    def gradients(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Draws the next step's batch and noise and runs its forward and backward, leaving the
        gradient in each parameter's ``.grad``; returns the step's length, the NLL summed over this
        process's batch and the gradient norm (before clipping). No parameter changes."""
        cfg = self.cfg
        self._seed_dropout_per_rank()
        B, L = cfg.batch_size, self._step_length()
        idx = self.order.next(B)
        draws = self.objective.draw(B, L, self.noise_gen)
        per = B // self.world
        lo = self.rank * per
        x = self.data.train.get(idx[lo:lo + per])[:, :L].to(self.device)
        draws = {k: v[lo:lo + per] for k, v in draws.items()}
        micro = per // cfg.grad_accum
        self.model.train()
        nll_sum = torch.zeros((), device=self.device)
        for i in range(cfg.grad_accum):
            sl = slice(i * micro, (i + 1) * micro)
            sync = nullcontext() if self.world == 1 or i == cfg.grad_accum - 1 else self.model.no_sync()
            with sync:
                with self.amp, self._sdpa_backends():
                    nll = self.objective.nll(self.model, x[sl], {k: v[sl] for k, v in draws.items()})
                loss = self.objective.train_loss(nll, L) / cfg.grad_accum
                loss.backward()
            nll_sum += nll.detach().sum()
        # the norm before any clipping: clipping by a NaN norm would make every gradient NaN, and the
        # error of a non-finite one names the parameters whose gradients were not finite
        return L, nll_sum, torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])

    def _sdpa_backends(self):
        """SDPA's backends for the step's forward, which picks the backward too: every one but cuDNN's
        once a step's gradient was not finite with it and finite without (_retake_without_cudnn_sdpa)."""
        return nullcontext() if self.sdpa_without_cudnn_from is None else sdpa_without_cudnn()

    def _may_take_cudnn_sdpa(self) -> bool:
        # cuDNN's SDPA takes half precision only: bf16 autocast here
        return (self.amp_setting == "bf16" and self.sdpa_without_cudnn_from is None
                and torch.backends.cuda.cudnn_sdp_enabled())

    def _retake_without_cudnn_sdpa(self, gnorm: float) -> tuple[int, torch.Tensor, torch.Tensor, float]:
        """Takes the step again, from where it started, with SDPA's cuDNN backend left out. Its
        bfloat16 backward has returned NaN gradients from finite losses on H100s and H200s
        (pytorch/pytorch#196678, NVIDIA/cudnn-frontend#1072), as this trainer's small MDLM did on
        an H200 (bench/results/h200-2026-12-04/e2e-training-nan/). A finite gradient without it
        keeps the backend out for the rest of the run (and its resumes); else the step fails as
        it would have. Returns gradients()'s values and the new norm."""
        self.opt.zero_grad(set_to_none=True)
        self.restore_streams(self._step_start)
        self.sdpa_without_cudnn_from = self.step + 1
        L, nll_sum, total = self.gradients()
        retaken = float(total)
        ops.raise_pending_errors()
        if not math.isfinite(retaken):
            self.sdpa_without_cudnn_from = None
        elif self.is_main:
            log.warning("step %d: the gradient norm was %s with SDPA's cuDNN backend and is %.4g without it: "
                        "training goes on without that backend (pytorch/pytorch#196678)", self.step + 1, gnorm,
                        retaken)
        return L, nll_sum, total, retaken

    def step_loss(self, nll_sum: torch.Tensor, L: int, sequences: int | None = None) -> float:
        """The training loss of a step of length ``L`` from the NLL summed over ``sequences`` (by
        default this process's share of the batch, which ``gradients`` sums over)."""
        if sequences is None:
            sequences = self.cfg.batch_size // self.world
        return self.objective.train_loss(torch.full((sequences,), nll_sum.item() / sequences), L).item()

    def _save_before_nonfinite_step(self) -> str:
        """Writes NONFINITE_STEP, the checkpoint of the run as this step found it (the weights and
        optimizer are untouched by a step that is not applied; the data order and random streams go
        back to where it started), and says so for the error's message."""
        if not self.is_main:
            return ""
        path = self.out / NONFINITE_STEP
        try:
            save_checkpoint({**self.state_dict(), **self._step_start}, path)
        except OSError as e:
            return f" (writing {path} to take the step again failed: {e})"
        return (f"; {path} holds the run as this step found it: `python -m dllm.training.replay {path}` takes the "
                f"step again and names the first backward op that returned NaN, and `--resume {path}` trains on "
                f"from it")

    def train_step(self) -> dict:
        cfg = self.cfg
        # where this step starts, for the checkpoint that takes it again should its gradient not be finite
        self._step_start = {"rng": self._rng_state(), "data": self.order.state_dict()}
        L, nll_sum, total = self.gradients()
        # read before the step (the metrics read it anyway): a finite loss can still overflow its backward
        gnorm = float(total)
        ops.raise_pending_errors()  # bad tokens that a CUDA loss found: the wait above was for them too
        retaken = not math.isfinite(gnorm) and self._may_take_cudnn_sdpa()
        if retaken:
            L, nll_sum, total, gnorm = self._retake_without_cudnn_sdpa(gnorm)
        if not math.isfinite(gnorm):
            saved = ", and the last checkpoint holds finite weights" if (self.out / CHECKPOINT).exists() else ""
            again = ", and again when taken without SDPA's cuDNN backend" if retaken else ""
            raise FloatingPointError(f"the gradient norm became {gnorm} at step {self.step + 1}{again} (its loss was "
                                     f"{self.step_loss(nll_sum, L):.6g}); "
                                     f"{self._nonfinite_gradients()}; the step was not applied{saved}"
                                     f"{self._save_before_nonfinite_step()}")
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(self.params, cfg.grad_clip, total)
        lr = lr_at(cfg, self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        if self.world > 1:
            dist.all_reduce(nll_sum)
        B = cfg.batch_size
        nll_tok = nll_sum.item() / (B * L)
        loss_val = self.step_loss(nll_sum, L, B)
        self.step += 1
        self.tokens_seen += B * L
        return {"loss": loss_val, "nll_per_token": nll_tok, "lr": lr, "grad_norm": gnorm, "seq_len": L}

    # -- validation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation NLL (the ELBO bound for diffusion, exact for AR) on fixed sequences and fixed noise."""
        cfg = self.cfg
        model = self.raw_model
        was_training = model.training
        model.eval()
        out = {}
        sequences = cfg.eval_batches * cfg.batch_size
        for suffix, ctx in (("", nullcontext()), ("_ema", self.ema.applied() if self.ema else None)):
            if ctx is None:
                continue
            with ctx:
                nats = validation_nll(model, self.objective, self.data.val, sequences=sequences,
                                      batch_size=max(1, cfg.batch_size // (self.world * cfg.grad_accum)),
                                      seed=cfg.seed, device=self.device, amp=self.amp)
            out.update(nll_metrics(nats, self.data.val_bytes_per_token(sequences), suffix))
        model.train(was_training)
        out["val_sequences"] = sequences  # what a later start compares, to know whether this validation still holds
        out["val_windows"] = min(sequences, len(self.data.val))  # what it scored (a short split has fewer)
        return out

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict:
        with run_folder_lock(self.out, self.is_main):  # rank 0 alone writes the folder
            return self._run()

    def _run(self) -> dict:
        cfg = self.cfg
        resume = self._resume_path()
        if resume is not None:
            self.load_state_dict(self._read_checkpoint(resume)[1], str(resume))
            log.info("resumed from %s at step %d", resume, self.step)
            if self.step >= cfg.steps:
                log.warning("nothing left to train: %s is at step %d of steps=%d (raise --steps to go on)", resume,
                            self.step, cfg.steps)
            elif 0 < cfg.max_time <= self.elapsed:
                log.warning("nothing left to train: the max_time budget (%g s, summed over resumes) is spent "
                            "(%.1f s; raise --max-time to go on)", cfg.max_time, self.elapsed)
        else:
            self._held = None  # the checkpoint read before the data was removed since (--resume never elsewhere)
        # A finished run started again must not validate its last step twice, unless it now validates on
        # other windows (--eval-batches x --batch-size), whose numbers its record would promise. Every rank
        # reads the folder before rank 0 rewrites it.
        sequences = cfg.eval_batches * cfg.batch_size
        records = self.metrics.read()
        validations = [r for r in records if r["step"] == self.step and "val_bpb" in r]
        held = validations[-1] if validations and validations[-1].get("val_sequences") == sequences else None
        # and a start that trains no further step returns the step's training metrics an earlier start logged
        trained = next((r for r in reversed(records) if r["step"] == self.step and "loss" in r), {})
        logged = {k: trained[k] for k in STEP_METRICS if k in trained}
        self._barrier()
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            # the lock makes this run the folder's only writer: a killed one's temporaries are garbage
            for path in (self.out / CHECKPOINT, self.out / NONFINITE_STEP, self.out / "run_config.json",
                         *(self.out / EXPORT / name for name in (WEIGHTS_NAME, CONFIG_NAME, "tokenizer.json"))):
                remove_leftovers(path)
            held_a_run = any((self.out / name).exists() for name in RUN_RECORDS)
            stale = [self.out / name for name in (CHECKPOINT, NONFINITE_STEP, EXPORT, "loss.png") if held_a_run and
                     ((self.out / name).exists() or (self.out / name).is_symlink())]
            if cfg.resume == "never" and stale:
                # left in place, a run that dies before its first checkpoint would leave the old run's
                # checkpoint for the next plain run to resume, and its weights for `dllm eval` to score
                # under the new run's record
                for path in stale:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                log.warning("--resume never: removed the previous run's %s; starting over",
                            ", ".join(str(path) for path in stale))
            self.metrics.truncate_after(self.step)
            record = self.out / "run_config.json"
            before = _read_record(record) if resume and record.is_file() else {}
            changes = before.get("changed_at_resume", [])
            earlier = before.get("earlier_starts", []) + ([before["provenance"]] if "provenance" in before else [])
            if self.resume_changes and self.is_main:
                changes.append({"step": self.step, "options": self.resume_changes})
            atomic_write_bytes(record, json.dumps(
                {"train": cfg.to_dict(), "model": self.model_cfg.to_dict(), "objective": self.objective.config(),
                 "tokenizer": tokenizer_config(self.tokenizer), "corpus_hash": self.data.corpus_hash,
                 "data": self.data.meta, "world_size": self.world, "changed_at_resume": changes,
                 # where and from what this run (or its latest resume) started; the earlier starts' records
                 "provenance": {"started": utc_now(), "card": card(str(self.device)), "torch": torch.__version__,
                                "commit": git_commit(), "command": command_line()},
                 "earlier_starts": earlier}, indent=2).encode())
        from tqdm.auto import tqdm

        # A run bounded by max_time counts seconds on its bar: a count of steps towards cfg.steps would
        # promise an end (and an ETA) that the clock overrides.
        timed = cfg.max_time > 0
        bar = tqdm(total=cfg.max_time if timed else cfg.steps, initial=min(self.elapsed, cfg.max_time) if timed else
                   self.step, unit="s" if timed else "step", disable=not (cfg.progress and self.is_main),
                   dynamic_ncols=True, desc=f"{cfg.objective}",
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}{postfix}]" if timed else None)
        t_run = time.perf_counter() - self.elapsed
        evaluated_at = self.step if held else -1  # a record from before val_sequences validates again
        interrupt = _StopAtStepOnInterrupt(self.world == 1 and threading.current_thread() is threading.main_thread())
        with interrupt:
            self._loop(bar, t_run, interrupt)
        if interrupt.requested:
            bar.close()
            self.elapsed = time.perf_counter() - t_run
            self.save()
            self._export()  # a run stopped to be sampled, as --max-time's is; a resume exports again at its end
            how = ("run the same command to resume" if cfg.resume == "auto" else
                   f"resume with --resume {self.out / CHECKPOINT}")  # the same command would start elsewhere
            log.warning("interrupted at step %d: checkpoint saved to %s, the weights to %s (not validated); %s",
                        self.step, self.out / CHECKPOINT, self.out / EXPORT, how)
            raise KeyboardInterrupt
        if timed:  # --steps may have ended the run before the clock: the bar ends where the run did
            bar.total = bar.n
        bar.close()
        last, evaluated_at = self.last or logged, max(evaluated_at, self.evaluated_at)
        result = {"step": self.step, "tokens": self.tokens_seen, "elapsed": self.elapsed,
                  "tok_per_s": self.tokens_seen / self.train_time if self.train_time else 0.0, **last}
        if self.sdpa_without_cudnn_from is not None:
            result["sdpa_without_cudnn_from"] = self.sdpa_without_cudnn_from
        if evaluated_at != self.step:
            try:
                result.update(self._eval_and_log())
            except KeyboardInterrupt:  # the loop left this step's checkpoint to the end of the run
                if self.world == 1:
                    self.save()
                raise
            self.elapsed = result["elapsed"] = time.perf_counter() - t_run
        else:  # this step's validation on these windows: this run's, or the one an earlier start left
            validated = self.validated if self.evaluated_at == self.step else held
            result.update({k: v for k, v in validated.items() if k.startswith("val_")} if self.is_main else {})
        self.save()
        if self.is_main:
            self._export()
        return result

    def _loop(self, bar, t_run: float, interrupt: _StopAtStepOnInterrupt) -> None:
        """Optimizer steps until steps, max_time or an interrupt; sets self.last (the latest step's
        metrics), self.evaluated_at (the latest validated step, -1 for none) and self.validated (its
        validation's metrics)."""
        cfg, timed = self.cfg, self.cfg.max_time > 0
        win_tokens, win_time = 0, 0.0
        self.last, self.evaluated_at, self.validated = {}, -1, {}
        while self.step < cfg.steps and not interrupt.requested:
            if cfg.max_time > 0 and self._should_stop(time.perf_counter() - t_run):
                break
            t0 = time.perf_counter()
            last = self.last = self.train_step()
            dt = time.perf_counter() - t0
            self.train_time += dt
            win_time += dt
            win_tokens += cfg.batch_size * last["seq_len"]
            self.elapsed = time.perf_counter() - t_run
            if not math.isfinite(last["loss"]):
                raise FloatingPointError(f"training loss became {last['loss']} at step {self.step}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._log_step(bar, win_tokens / win_time)
                win_tokens, win_time = 0, 0.0
            bar.update(min(self.elapsed, cfg.max_time) - bar.n if timed else 1)
            # validations and checkpoints spend the budget too: a rerun must find it as spent as the clock did
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self.validated = self._eval_and_log()
                self.evaluated_at = self.step
                self.elapsed = time.perf_counter() - t_run
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.steps:  # the end saves
                self.save()
                self.elapsed = time.perf_counter() - t_run

        if win_time:  # stopped by the clock or Ctrl-C between two records: the last step is logged too
            self._log_step(bar, win_tokens / win_time)

    def _log_step(self, bar, tok_per_s: float) -> None:
        last = self.last
        if self.is_main:
            self.metrics.write({"step": self.step, **last, "bits_per_token": last["nll_per_token"] / math.log(2),
                                "tokens": self.tokens_seen, "tok_per_s": tok_per_s, "elapsed": self.elapsed})
        bar.set_postfix(step=self.step, loss=f"{last['loss']:.4g}", tok_s=f"{tok_per_s:,.0f}")

    def _should_stop(self, elapsed: float) -> bool:
        stop = torch.tensor([float(elapsed >= self.cfg.max_time)], device=self.device)
        if self.world > 1:
            dist.broadcast(stop, 0)  # rank 0's clock decides, so every rank stops at the same step
        return bool(stop.item())

    def _eval_and_log(self) -> dict:
        res = {}
        if self.is_main:
            res = self.evaluate()
            self.metrics.write({"step": self.step, **res, "tokens": self.tokens_seen, "elapsed": self.elapsed})
            log.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in res.items() if "bpb" in k))
            plot_metrics(self.metrics.path, self.out / "loss.png",
                         title=f"{self.cfg.objective} {self.cfg.model} ({self.model_cfg.arch})")
        self._barrier()
        return res

    def _export(self) -> None:
        """The final weights (EMA when enabled) as a save_pretrained folder, with the tokenizer beside them."""
        extra = {"tokenizer": tokenizer_config(self.tokenizer), "objective": self.objective.config(),
                 "corpus_hash": self.data.corpus_hash, "step": self.step, "weights": "ema" if self.ema else "model"}
        ctx = self.ema.applied() if self.ema else nullcontext()
        with ctx:
            self.raw_model.save_pretrained(self.out / EXPORT, **extra)
        self.tokenizer.save(self.out / EXPORT)


def train(config: TrainConfig | dict | None = None, **overrides) -> dict:
    """Train a model; ``config`` (a ``TrainConfig`` or a dict of its fields) and ``overrides`` are
    ``TrainConfig`` fields. Returns the final step, tokens, tokens/s,
    last training loss and validation metrics (``val_bpb``, ``val_bits_per_token``, and ``_ema`` variants).

    Under ``torchrun`` (``WORLD_SIZE > 1``) it runs data-parallel; rank 0 logs and writes files.
    """
    base = {} if config is None else dict(config) if isinstance(config, dict) else config.to_dict()
    trainer = Trainer(TrainConfig.from_dict({**base, **overrides}))
    try:
        return trainer.run()
    finally:
        if trainer.owns_process_group:
            dist.destroy_process_group()
