"""Takes again a training step that a non-finite gradient stopped, to find the op that broke it.

``dllm train`` stops at a step whose gradient norm is not finite and writes ``nonfinite-step.pt``
beside its checkpoint: the run as that step found it (weights, optimizer, data order and random
streams). This takes the step's forward and backward again from there, applying nothing, once as
trained and once under each variant that could change the outcome (on CUDA: SDPA without its cuDNN
backend, and float32 instead of bfloat16 autocast), and for each reports the loss, the gradient
norm, the parameters whose gradients were not finite, the first module whose forward output was
not finite and the first backward op that returned NaN (autograd's anomaly mode, with the line of
the forward call behind it).

    python -m dllm.training.replay RUN/nonfinite-step.pt [--device cuda:1] [--json replay.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch

from .. import ops
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .trainer import Trainer, sdpa_without_cudnn

_ANOMALY = re.compile(r"Function '(\w+)' returned nan values")


def _variants(trainer: Trainer) -> list[tuple[str, Callable[[], contextlib.AbstractContextManager], bool]]:
    """(name, a new context of the step, whether it keeps the trained precision) for each replay."""
    out = [("as trained", contextlib.nullcontext, True)]
    if trainer.device.type == "cuda" and trainer.sdpa_without_cudnn_from is None:  # else "as trained" is it
        out.append(("SDPA without cuDNN", sdpa_without_cudnn, True))
        if trainer.amp_setting != "off":
            out.append(("float32", contextlib.nullcontext, False))
    return out


@contextlib.contextmanager
def _first_nonfinite_output(model: torch.nn.Module, found: list[str]):
    """Appends to ``found`` the name of the first module (in call order) whose forward returned a
    non-finite floating tensor."""
    def check(name):
        def hook(_module, _args, output):
            outs = output if isinstance(output, (tuple, list)) else (output,)
            if not found and any(isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()
                                 for t in outs):
                found.append(name or type(model).__name__)
        return hook

    handles = [m.register_forward_hook(check(name)) for name, m in model.named_modules()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


_PACKAGE = Path(__file__).resolve().parents[1]
_FRAME = re.compile(r'^File "([^"]+)", line (\d+), in (\S+)$')


def _forward_line(messages: list[str]) -> str | None:
    """The innermost frame in dllm's package of the forward call that anomaly mode reports with its
    error, as ``dllm/FILE:LINE (FUNCTION): CODE``."""
    for text in messages:
        lines = [ln.strip() for ln in text.splitlines()]
        frames = [(i, m) for i, m in ((i, _FRAME.match(ln)) for i, ln in enumerate(lines))
                  if m and Path(m.group(1)).resolve().is_relative_to(_PACKAGE)]
        if frames:
            i, m = frames[-1]
            where = f"{Path(m.group(1)).resolve().relative_to(_PACKAGE.parent)}:{m.group(2)} ({m.group(3)})"
            code = lines[i + 1] if i + 1 < len(lines) and not _FRAME.match(lines[i + 1]) else ""
            return f"{where}: {code}" if code else where
    return None


def _take(trainer: Trainer, state: dict, context, keep_precision: bool, anomaly: bool) -> dict:
    """One pass over the step from where it started; the gradients it leaves are cleared after it."""
    trainer.restore_streams(state)
    amp = trainer.amp
    if not keep_precision:
        trainer.amp = contextlib.nullcontext()
    try:
        if not anomaly:
            forward: list[str] = []
            with context(), _first_nonfinite_output(trainer.raw_model, forward):
                L, nll_sum, total = trainer.gradients()
                ops.raise_pending_errors()  # this take's own errors (a CUDA loss's bad tokens), not the next one's
            return {"loss": trainer.step_loss(nll_sum, L), "grad_norm": float(total),
                    "nonfinite_gradients": [n for n, p in trainer.raw_model.named_parameters()
                                            if p.grad is not None and not torch.isfinite(p.grad).all()],
                    "first_nonfinite_module": forward[0] if forward else None}
        with (context(), warnings.catch_warnings(record=True) as caught,
              torch.autograd.detect_anomaly(check_nan=True)):
            warnings.simplefilter("always")
            try:
                trainer.gradients()
            except RuntimeError as e:
                match = _ANOMALY.search(str(e))
                if match is None:
                    raise
                return {"backward_op": match.group(1), "forward_line": _forward_line([str(w.message) for w in caught])}
        return {"backward_op": None, "forward_line": None}
    finally:
        trainer.amp = amp
        trainer.opt.zero_grad(set_to_none=True)


def replay_step(path: str | Path, *, device: str | None = None) -> dict:
    """Replays the step that ``path`` (a ``nonfinite-step.pt``) starts, as trained and under each
    variant; returns {"step", "device", "precision", "variants": [{"variant", "loss", "grad_norm",
    "nonfinite_gradients", "first_nonfinite_module", "backward_op", "forward_line"}, ...]}."""
    path = Path(path)
    state = load_checkpoint(path)
    # loaded below rather than resumed, which would read the file again
    options = {**state["train_config"], "resume": "never", "progress": False}
    if device is not None:
        options["device"] = device
    with tempfile.TemporaryDirectory(prefix="dllm-replay-") as tmp:
        trainer = Trainer(TrainConfig.from_dict({**options, "out_dir": tmp}))
        trainer.load_state_dict(state, str(path))
        results = []
        for name, context, keep in _variants(trainer):
            row = {"variant": name, **_take(trainer, state, context, keep, anomaly=False)}
            finite = math.isfinite(row["grad_norm"])
            row.update({"backward_op": None, "forward_line": None} if finite else
                       _take(trainer, state, context, keep, anomaly=True))
            results.append(row)
        return {"step": state["step"] + 1, "device": str(trainer.device),
                "precision": "bfloat16 autocast" if trainer.amp_setting == "bf16" else "float32",
                "variants": results}


def describe(replay: dict) -> list[str]:
    """``replay_step``'s results as lines of text."""
    lines = [f"step {replay['step']} on {replay['device']} in {replay['precision']}:"]
    for r in replay["variants"]:
        bad = r["nonfinite_gradients"]
        what = (f"  {r['variant']}: loss {r['loss']:.6g}, gradient norm {r['grad_norm']:.6g}, "
                + (f"non-finite gradients in {len(bad)} parameters (the last: {bad[-1]})" if bad else "every gradient finite"))
        lines.append(what)
        if r["first_nonfinite_module"]:
            lines.append(f"    first module with a non-finite output (forward): {r['first_nonfinite_module']}")
        if r["backward_op"]:
            lines.append(f"    first backward op that returned NaN: {r['backward_op']}"
                         + (f", from {r['forward_line']}" if r["forward_line"] else ""))
        elif bad:
            lines.append("    no backward op returned NaN (the non-finite gradients are infinite)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dllm.training.replay", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="the nonfinite-step.pt a stopped training run wrote")
    ap.add_argument("--device", default=None, help="where to take the step (default: where it was trained)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    replay = replay_step(args.checkpoint, device=args.device)
    print("\n".join(describe(replay)))
    if args.json:  # strict JSON: a non-finite number as its name
        for r in replay["variants"]:
            r.update({k: str(r[k]) for k in ("loss", "grad_norm") if not math.isfinite(r[k])})
        Path(args.json).write_text(json.dumps(replay, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
