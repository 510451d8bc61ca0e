"""A step stopped by a non-finite gradient is written out (nonfinite-step.pt) and can be taken again
exactly: by dllm.training.replay, which names the op that broke it, and by --resume."""

import contextlib
import json
import math
from types import SimpleNamespace

import pytest
import torch

import dllm
import dllm.models.dit as dit
from dllm.training import load_checkpoint
from dllm.training import replay as replay_module
from dllm.training.replay import describe, main, replay_step
from dllm.training.trainer import CHECKPOINT, NONFINITE_STEP

from _train_helpers import make_corpus, tiny


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _records(out_dir):
    return {r["step"]: r for r in map(json.loads, open(out_dir / "metrics.jsonl")) if "loss" in r}


class NaNGradient(torch.autograd.Function):
    """The identity, whose backward returns NaN: a broken backward behind a finite loss."""

    @staticmethod
    def forward(ctx, a):
        return a.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, corpus):
    """A run whose attention's backward turns NaN from step 3 on, and the clean run's steps."""
    tmp = tmp_path_factory.mktemp("stopped")
    dllm.train(**tiny(tmp, corpus, steps=3, out_dir=str(tmp / "clean")))
    dllm.train(**tiny(tmp, corpus, steps=2, ckpt_every=1))
    with pytest.MonkeyPatch.context() as mp:
        real = dit.attention
        mp.setattr(dit, "attention", lambda *a, **k: NaNGradient.apply(real(*a, **k)))
        with pytest.raises(FloatingPointError) as failed:
            dllm.train(**tiny(tmp, corpus, steps=4, ckpt_every=1))
    return tmp, str(failed.value), _records(tmp / "clean")


def test_the_stopped_step_is_written_as_the_run_found_it(stopped):
    tmp, message, clean = stopped
    path = tmp / "run" / NONFINITE_STEP
    # the loss is the step's own, not a claim: the forward was the clean run's
    assert f"gradient norm became nan at step 3 (its loss was {clean[3]['loss']:.6g}); non-finite" in message
    assert f"{path} holds the run as this step found it: `python -m dllm.training.replay {path}`" in message
    before, last = load_checkpoint(path), load_checkpoint(tmp / "run" / CHECKPOINT)
    assert before["step"] == last["step"] == 2
    # untouched by the step that was not applied
    assert all(torch.equal(before["model"][k], v) for k, v in last["model"].items())
    assert all(torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
               for a, b in zip(before["optimizer"]["state"].values(), last["optimizer"]["state"].values()))
    # the streams are where step 3 started, which is where the step-2 checkpoint left them
    assert before["data"] == last["data"]
    assert all(torch.equal(before["rng"][k], last["rng"][k]) for k in ("torch", "noise"))


def test_replay_takes_the_step_again_and_names_the_broken_backward(stopped, monkeypatch):
    tmp, _, clean = stopped
    real = dit.attention
    monkeypatch.setattr(dit, "attention", lambda *a, **k: NaNGradient.apply(real(*a, **k)))
    replay = replay_step(tmp / "run" / NONFINITE_STEP)
    assert replay["step"] == 3 and replay["device"] == "cpu" and replay["precision"] == "float32"
    [row] = replay["variants"]  # on the CPU: as trained only
    assert row["variant"] == "as trained" and row["loss"] == clean[3]["loss"] and math.isnan(row["grad_norm"])
    assert "blocks.0.attn_qkv.weight" in row["nonfinite_gradients"] and row["first_nonfinite_module"] is None
    assert row["backward_op"] == "NaNGradientBackward"
    assert row["forward_line"].startswith("dllm/models/dit.py:") and ": a = attention(q, k, v," in row["forward_line"]
    text = "\n".join(describe(replay))
    assert "first backward op that returned NaN: NaNGradientBackward, from dllm/models/dit.py:" in text
    bad = row["nonfinite_gradients"]
    assert f"non-finite gradients in {len(bad)} parameters (the last: {bad[-1]})" in text and bad[0] != bad[-1]


def test_replay_without_the_broken_op_gives_the_clean_runs_step_every_time(stopped, monkeypatch):
    tmp, _, clean = stopped
    # twice in one replay, as the variants on CUDA: each takes the step from where it started
    monkeypatch.setattr(replay_module, "_variants", lambda trainer: [("as trained", contextlib.nullcontext, True)] * 2)
    rows = replay_step(tmp / "run" / NONFINITE_STEP)["variants"]
    for row in rows:
        assert (row["loss"], row["grad_norm"]) == (clean[3]["loss"], clean[3]["grad_norm"])
        assert row["nonfinite_gradients"] == [] and row["backward_op"] is None


def test_replay_names_the_first_module_whose_forward_is_not_finite(stopped, monkeypatch, tmp_path, capsys):
    tmp, _, _ = stopped
    real = dit.attention
    monkeypatch.setattr(dit, "attention", lambda *a, **k: real(*a, **k) * float("nan"))
    out = tmp_path / "replay.json"
    assert main([str(tmp / "run" / NONFINITE_STEP), "--json", str(out)]) == 0
    assert "first module with a non-finite output (forward): blocks.0.attn_out" in capsys.readouterr().out
    [row] = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))["variants"]
    assert row["loss"] == "nan" and row["grad_norm"] == "nan" and row["first_nonfinite_module"] == "blocks.0.attn_out"


def test_resume_from_the_stopped_step_trains_it_as_the_clean_run_did(stopped, tmp_path, corpus):
    tmp, _, clean = stopped
    dllm.train(**tiny(tmp_path, corpus, steps=3, resume=str(tmp / "run" / NONFINITE_STEP)))
    again = _records(tmp_path / "run")[3]
    assert (again["loss"], again["grad_norm"]) == (clean[3]["loss"], clean[3]["grad_norm"])


def _nan_gradient_with_cudnn_sdpa(monkeypatch, always: bool = False):
    """Attention whose backward returns NaN where the forward ran with SDPA's cuDNN backend allowed
    (or ``always``), and a trainer that takes that backend on the CPU too."""
    real = dit.attention

    def attention(*a, **k):
        out = real(*a, **k)
        return NaNGradient.apply(out) if always or torch.backends.cuda.cudnn_sdp_enabled() else out

    monkeypatch.setattr(dit, "attention", attention)
    monkeypatch.setattr(dllm.training.trainer.Trainer, "_may_take_cudnn_sdpa",
                        lambda self: self.sdpa_without_cudnn_from is None)


def test_a_nan_gradient_with_cudnn_sdpa_only_is_retaken_without_it(stopped, tmp_path, corpus, monkeypatch, caplog):
    """cuDNN's SDPA backward has returned NaN from finite losses (pytorch/pytorch#196678): the step
    is taken again from where it started without that backend, which then stays out."""
    _, _, clean = stopped
    _nan_gradient_with_cudnn_sdpa(monkeypatch)
    result = dllm.train(**tiny(tmp_path, corpus, steps=2, ckpt_every=1))
    assert result["sdpa_without_cudnn_from"] == 1
    assert "step 1: the gradient norm was nan with SDPA's cuDNN backend and is " in caplog.text
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["sdpa_without_cudnn_from"] == 1
    result = dllm.train(**tiny(tmp_path, corpus, steps=3))  # the resume keeps the backend out
    assert result["sdpa_without_cudnn_from"] == 1
    steps = _records(tmp_path / "run")
    assert all((steps[i]["loss"], steps[i]["grad_norm"]) == (clean[i]["loss"], clean[i]["grad_norm"]) for i in (1, 2, 3))


def test_a_nan_gradient_without_cudnn_sdpa_too_stops_the_run(tmp_path, corpus, monkeypatch):
    _nan_gradient_with_cudnn_sdpa(monkeypatch, always=True)
    with pytest.raises(FloatingPointError, match=r"gradient norm became nan at step 1, and again when taken without "
                                                 r"SDPA's cuDNN backend \(its loss was"):
        dllm.train(**tiny(tmp_path, corpus, steps=2))
    assert load_checkpoint(tmp_path / "run" / NONFINITE_STEP)["sdpa_without_cudnn_from"] is None


def test_starting_over_removes_the_stopped_step(stopped, tmp_path, corpus):
    tmp, _, _ = stopped
    run = tmp_path / "run"
    run.mkdir()
    for name in (CHECKPOINT, NONFINITE_STEP, "metrics.jsonl"):
        (run / name).write_bytes((tmp / "run" / name).read_bytes())
    dllm.train(**tiny(tmp_path, corpus, steps=1, resume="never"))
    assert not (run / NONFINITE_STEP).exists()


def test_the_cuda_variants_change_the_attention_backend_and_the_precision():
    trainer = SimpleNamespace(device=torch.device("cuda"), amp_setting="bf16", sdpa_without_cudnn_from=None)
    variants = replay_module._variants(trainer)
    assert [(name, keep) for name, _, keep in variants] == [("as trained", True), ("SDPA without cuDNN", True),
                                                             ("float32", False)]
    for _ in range(2):  # a context for each of a variant's two passes
        with variants[1][1]():
            assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
        assert torch.backends.cuda.cudnn_sdp_enabled()
    assert [name for name, _, _ in replay_module._variants(SimpleNamespace(device=torch.device("cuda"), amp_setting="off",
                                                                           sdpa_without_cudnn_from=None))] == \
        ["as trained", "SDPA without cuDNN"]
    # a run that left cuDNN's SDPA out at some step replays without it "as trained" already
    trainer.sdpa_without_cudnn_from = 90
    assert [name for name, _, _ in replay_module._variants(trainer)] == ["as trained"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_replay_on_cuda_takes_the_step_under_every_variant(tmp_path, corpus, monkeypatch):
    opts = dict(device="cuda", steps=2, ckpt_every=1)
    dllm.train(**tiny(tmp_path, corpus, **opts))
    real = dit.attention
    monkeypatch.setattr(dit, "attention", lambda *a, **k: NaNGradient.apply(real(*a, **k)))
    with pytest.raises(FloatingPointError, match="gradient norm became nan at step 3"):
        dllm.train(**tiny(tmp_path, corpus, **{**opts, "steps": 3}))
    replay = replay_step(tmp_path / "run" / NONFINITE_STEP)
    assert replay["precision"] == "bfloat16 autocast"
    assert [r["variant"] for r in replay["variants"]] == ["as trained", "SDPA without cuDNN", "float32"]
    for r in replay["variants"]:
        assert math.isfinite(r["loss"]) and math.isnan(r["grad_norm"]) and r["backward_op"] == "NaNGradientBackward"
    as_trained, _, full = replay["variants"]
    assert as_trained["loss"] != full["loss"]  # float32 is another forward


def test_replay_takes_the_step_on_the_device_asked_for(stopped):
    tmp, _, clean = stopped
    # the device is the caller's (--device), not the one recorded in the run: one that is not here is refused
    with pytest.raises(ValueError, match="cuda:99"):
        replay_step(tmp / "run" / NONFINITE_STEP, device="cuda:99")
    replay = replay_step(tmp / "run" / NONFINITE_STEP, device="cpu")
    assert replay["device"] == "cpu" and replay["variants"][0]["loss"] == clean[3]["loss"]


def test_describe_says_when_no_backward_op_returned_nan():
    row = dict(variant="as trained", loss=2.5, grad_norm=math.inf, nonfinite_gradients=["a.weight", "b.bias"],
               first_nonfinite_module=None, backward_op=None, forward_line=None)
    lines = describe({"step": 7, "device": "cpu", "precision": "float32", "variants": [row]})
    assert lines[0] == "step 7 on cpu in float32:"
    assert "non-finite gradients in 2 parameters (the last: b.bias)" in lines[1]
    assert lines[2:] == ["    no backward op returned NaN (the non-finite gradients are infinite)"]
    clean = {**row, "grad_norm": 1.0, "nonfinite_gradients": []}
    assert describe({"step": 7, "device": "cpu", "precision": "float32", "variants": [clean]})[1:] == \
        ["  as trained: loss 2.5, gradient norm 1, every gradient finite"]


def test_the_float32_variant_takes_the_step_without_the_runs_autocast_and_gives_it_back():
    """A variant that does not keep the trained precision runs the step's forward outside the run's
    autocast (bf16 on CUDA; a CPU autocast stands in for it); the others under it. Either way the
    trainer's autocast and clean gradients are back afterwards."""
    g = torch.Generator().manual_seed(4)
    net = torch.nn.Linear(5, 3)
    x = torch.randn(7, 5, generator=g)
    amp = torch.autocast("cpu", dtype=torch.bfloat16)
    dtypes = []

    def gradients():
        with trainer.amp:
            y = net(x)
        dtypes.append(y.dtype)
        y.float().sum().backward()
        return 5, y.detach().double().sum(), torch.tensor(1.5)

    trainer = SimpleNamespace(amp=amp, restore_streams=lambda state: None, gradients=gradients, raw_model=net,
                              step_loss=lambda nll_sum, L: nll_sum.item() / L,
                              opt=torch.optim.SGD(net.parameters(), lr=0.1))
    rows = {}
    for keep in (True, False):
        rows[keep] = replay_module._take(trainer, {}, contextlib.nullcontext, keep, anomaly=False)
        assert trainer.amp is amp and all(p.grad is None for p in net.parameters())
    assert dtypes == [torch.bfloat16, torch.float32]
    want = (x.double() @ net.weight.detach().double().T + net.bias.detach().double()).sum().item() / 5
    assert abs(rows[False]["loss"] - want) < 1e-5 * abs(want) + 1e-6
    assert rows[True]["loss"] != rows[False]["loss"]  # bf16's forward is another
