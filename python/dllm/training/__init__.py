"""Training: ``dllm.train(...)`` and the pieces it is built from."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .ema import EMA
from .metrics import MetricsLog, plot_metrics
from .trainer import Trainer, lr_at, train

__all__ = ["train", "TrainConfig", "Trainer", "EMA", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "MetricsLog", "plot_metrics", "lr_at"]
