import errno
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import dllm
from dllm.data import train_bpe
from dllm.data.dataset import PackedDataset
from dllm.training import CheckpointError, EMA, MetricsLog, TrainConfig, Trainer, load_checkpoint, lr_at, save_checkpoint
from dllm.training.checkpoint import MAGIC
from dllm.training.evaluation import validation_nll_per_window
from dllm.training.trainer import CHECKPOINT

from _train_helpers import make_corpus, tiny
from stats import chi_square_pvalue


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _losses(out_dir, key="loss"):
    recs = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    return {r["step"]: r[key] for r in recs if key in r}


@pytest.mark.parametrize("objective,extra", [("mdlm", {}), ("sedd", {}), ("sedd", {"graph": "uniform"}),
                                             ("llada", {"kv_heads": 2}), ("ar", {})])
def test_loss_falls_on_a_tiny_model(tmp_path, corpus, objective, extra):
    res = dllm.train(**tiny(tmp_path, corpus, objective=objective, steps=30, ema=0, **extra))
    loss = _losses(tmp_path / "run")
    first = sum(loss[s] for s in range(1, 6)) / 5
    last = sum(loss[s] for s in range(26, 31)) / 5
    assert last < 0.8 * first, (objective, first, last)
    assert res["step"] == 30 and res["val_bpb"] < 8.5 and res["tok_per_s"] > 0
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    model = dllm.models.from_pretrained(tmp_path / "run" / "model")
    assert model.config.arch == {"ar": "ar", "llada": "llada"}.get(objective, "dit")
    assert dllm.data.tokenizer_for_model(tmp_path / "run" / "model").kind == "byte"


def test_random_length_steps_train_on_cut_sequences(tmp_path, corpus, monkeypatch):
    seen, validated = [], []
    llada = dllm.objectives.diffusion.LLaDA
    nll, bound = llada.nll, llada.bound

    def recording(self, model, x0, draws):
        seen.append(x0.shape[1])
        return nll(self, model, x0, draws)

    def recording_bound(self, model, x0, draws):
        validated.append(x0.shape[1])
        return bound(self, model, x0, draws)

    monkeypatch.setattr(llada, "nll", recording)
    monkeypatch.setattr(llada, "bound", recording_bound)
    dllm.train(**tiny(tmp_path, corpus, objective="llada", steps=24, ema=0, random_length=0.5))
    recs = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if '"loss"' in line]
    lengths = [r["seq_len"] for r in recs]
    assert lengths == seen
    assert 4 <= sum(n < 64 for n in lengths) <= 20 and all(1 <= n <= 64 for n in lengths)
    assert len({n for n in lengths if n < 64}) > 1
    assert [r["tokens"] for r in recs] == [8 * sum(lengths[:i + 1]) for i in range(24)]
    assert all(torch.isfinite(torch.tensor([r["loss"] for r in recs])))
    assert validated and set(validated) == {64}  # the validation after the last step sees whole sequences
    # LLaDA trains 1% of its steps at a random length; the other objectives none unless asked
    assert Trainer(TrainConfig(**tiny(tmp_path / "d", corpus, objective="llada"))).random_length == 0.01
    assert Trainer(TrainConfig(**tiny(tmp_path / "e", corpus, objective="mdlm"))).random_length == 0


def test_bpe_run_saves_its_tokenizer_beside_the_model(tmp_path, corpus):
    res = dllm.train(**tiny(tmp_path, corpus, tokenizer="bpe", bpe_vocab_size=300, steps=3))
    tok = dllm.data.tokenizer_for_model(tmp_path / "run" / "model")
    assert tok.vocab_size == 300 and (tmp_path / "run" / "model" / "tokenizer.json").is_file()
    model = dllm.models.from_pretrained(tmp_path / "run" / "model")
    assert model.config.vocab_size == 300
    # bits per byte accounts for the bytes each BPE token covers, so it is below bits per token
    assert res["val_bpb"] < res["val_bits_per_token"]
    assert dllm.data.tokenizer_for_model(tmp_path / "run" / "model").fingerprint == tok.fingerprint


class _Crash(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(tmp_path, corpus, monkeypatch):
    # random_length: the cut steps' lengths come from the saved noise generator too; dropout draws
    # from torch's global one (the DDP test reseeds it every step: only here is its restore seen)
    opts = dict(objective="sedd", steps=10, ckpt_every=4, eval_every=5, ema=0.99, grad_accum=2, random_length=0.4,
                dropout=0.3)
    full = dllm.train(**tiny(tmp_path / "a", corpus, **opts))
    assert 64 > min(_losses(tmp_path / "a" / "run", "seq_len").values())

    real_step = Trainer.train_step

    def crashing(self):
        if self.step == 6:  # dies two steps after the checkpoint at step 4
            raise _Crash()
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", crashing)
    with pytest.raises(_Crash):
        dllm.train(**tiny(tmp_path / "b", corpus, **opts))
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert load_checkpoint(tmp_path / "b" / "run" / CHECKPOINT)["step"] == 4
    torch.manual_seed(12345)  # whatever the process drew since: the resume restores the saved stream
    resumed = dllm.train(**tiny(tmp_path / "b", corpus, **opts))

    a, b = _losses(tmp_path / "a" / "run"), _losses(tmp_path / "b" / "run")
    assert sorted(a) == sorted(b) == list(range(1, 11))  # the crashed run's steps 5-6 were replaced
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-6, abs=1e-7), s
    assert _losses(tmp_path / "b" / "run", "tokens") == _losses(tmp_path / "a" / "run", "tokens")
    assert resumed["val_bpb"] == pytest.approx(full["val_bpb"], rel=1e-6)
    assert resumed["val_bpb_ema"] == pytest.approx(full["val_bpb_ema"], rel=1e-6)
    sa = load_checkpoint(tmp_path / "a" / "run" / CHECKPOINT)
    sb = load_checkpoint(tmp_path / "b" / "run" / CHECKPOINT)
    for k in sa["model"]:
        torch.testing.assert_close(sa["model"][k], sb["model"][k], rtol=1e-6, atol=1e-7)
    record = json.loads((tmp_path / "b" / "run" / "run_config.json").read_text())
    assert len(record["earlier_starts"]) == 1 and record["earlier_starts"][0]["started"] <= record["provenance"]["started"]


@pytest.mark.parametrize("objective,extra", [("sedd", {"graph": "uniform"}), ("ar", {}),
                                             ("llada", {"random_length": 0.5})])
def test_resume_of_every_objective_is_bit_exact(tmp_path, corpus, monkeypatch, objective, extra):
    """The test above on the objectives it does not train, to the bit (the same process and threads):
    the weights, the optimizer's moments, the EMA, the RNG states and the data position."""
    opts = tiny(tmp_path / "a", corpus, objective=objective, steps=4, ckpt_every=2, ema=0.9, hidden=32, layers=1,
                seq_len=32, **extra)
    full = dllm.train(**opts)
    real_step = Trainer.train_step

    def crashing(self):
        if self.step == 3:
            raise _Crash()
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", crashing)
    opts["out_dir"] = str(tmp_path / "b" / "run")
    with pytest.raises(_Crash):
        dllm.train(**opts)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resumed = dllm.train(**opts)

    clock = ("elapsed", "tok_per_s", "train_time", "train_config")
    assert {k: v for k, v in resumed.items() if k not in clock} == {k: v for k, v in full.items() if k not in clock}
    runs = [tmp_path / name / "run" for name in "ab"]
    logged = [[{k: v for k, v in json.loads(line).items() if k not in clock} for line in open(run / "metrics.jsonl")]
              for run in runs]
    assert logged[0] == logged[1]
    saved = [{k: v for k, v in load_checkpoint(run / CHECKPOINT).items() if k not in clock} for run in runs]
    _assert_identical(saved[0], saved[1])


def _assert_identical(a, b, where="checkpoint"):
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, where


def test_resume_refuses_another_corpus(tmp_path, corpus):
    dllm.train(**tiny(tmp_path, corpus, steps=2))
    other = make_corpus(tmp_path / "other")
    (other / "extra.py").write_text("x = 1\n" * 200)
    with pytest.raises(CheckpointError, match="another corpus"):
        dllm.train(**tiny(tmp_path, other, steps=4))


def test_resume_records_changed_options_and_refuses_to_drop_or_retune_the_ema(tmp_path, corpus, caplog):
    dllm.train(**tiny(tmp_path, corpus, steps=2, ema=0.9))
    for ema in (0.0, 0.5):  # dropping the average kept so far, or retuning it behind the record's back
        with pytest.raises(CheckpointError, match="EMA setting"):
            dllm.train(**tiny(tmp_path, corpus, steps=4, ema=ema))
    with caplog.at_level("WARNING"):
        dllm.train(**tiny(tmp_path, corpus, steps=4, ema=0.9, lr=1e-2, beta2=0.99, weight_decay=0.1))
    assert "changed options" in caplog.text and "'lr': [0.003, 0.01]" in caplog.text
    record = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert record["changed_at_resume"] == [{"step": 2, "options": {"lr": [0.003, 0.01], "weight_decay": [0.0, 0.1],
                                                                   "beta2": [0.999, 0.99], "steps": [2, 4]}}]
    assert record["train"]["lr"] == 0.01
    # what the record says changed did change: the saved optimizer groups do not bring the old values back
    group = load_checkpoint(tmp_path / "run" / CHECKPOINT)["optimizer"]["param_groups"][0]
    assert tuple(group["betas"]) == (0.9, 0.99) and group["weight_decay"] == 0.1


def test_resume_names_a_change_of_precision_and_reads_checkpoints_that_do_not_record_it(tmp_path, corpus, caplog):
    """A resume may change the precision (a GPU's run moved to a CPU, where amp is ignored): accepted,
    and said. The checkpoint records the precision the run trained in, not the option."""
    path = tmp_path / "run" / CHECKPOINT
    dllm.train(**tiny(tmp_path, corpus, steps=2, ema=0))
    saved = load_checkpoint(path)
    assert saved["amp"] == "off"  # amp=True, the default, is ignored on the CPU
    save_checkpoint({**saved, "amp": "bf16"}, path)  # as a run on CUDA writes it
    with caplog.at_level("WARNING"):
        assert dllm.train(**tiny(tmp_path, corpus, steps=3, ema=0))["step"] == 3
    assert caplog.text.count("resuming with amp=off; the checkpoint was trained with amp=bf16") == 1
    assert load_checkpoint(path)["amp"] == "off"
    caplog.clear()
    with caplog.at_level("WARNING"):
        dllm.train(**tiny(tmp_path, corpus, steps=4, ema=0, amp=False))  # the same precision: off
        saved = load_checkpoint(path)
        del saved["amp"]  # a checkpoint of this format written before it was recorded: unknown
        save_checkpoint(saved, path)
        assert dllm.train(**tiny(tmp_path, corpus, steps=5, ema=0))["step"] == 5
    assert "amp=" not in caplog.text
    # the run's record names the change beside the other options', and neither silent resume
    record = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert record["changed_at_resume"] == [{"step": 2, "options": {"steps": [2, 3], "amp": ["bf16", "off"]}},
                                           {"step": 3, "options": {"steps": [3, 4]}},
                                           {"step": 4, "options": {"steps": [4, 5]}}]


def test_resume_records_random_length_by_its_value_not_its_spelling(tmp_path, corpus):
    dllm.train(**tiny(tmp_path, corpus, steps=2, objective="llada"))  # random_length left to LLaDA's 1%
    dllm.train(**tiny(tmp_path, corpus, steps=3, objective="llada", random_length=0.01))
    dllm.train(**tiny(tmp_path, corpus, steps=4, objective="llada", random_length=0.5))
    record = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert record["changed_at_resume"] == [{"step": 2, "options": {"steps": [2, 3]}},  # (the cosine's end)
                                           {"step": 3, "options": {"random_length": [0.01, 0.5], "steps": [3, 4]}}]


def test_resume_never_removes_the_previous_checkpoint_first(tmp_path, corpus, monkeypatch, caplog):
    # A run started over that dies before its first checkpoint must not leave the old run's for the
    # next plain run to resume.
    dllm.train(**tiny(tmp_path, corpus, steps=2))

    def killed(self):
        raise RuntimeError("killed")

    monkeypatch.setattr(Trainer, "train_step", killed)
    with caplog.at_level("WARNING"), pytest.raises(RuntimeError, match="killed"):
        dllm.train(**tiny(tmp_path, corpus, steps=4, resume="never"))
    assert "removed the previous run's" in caplog.text and not (tmp_path / "run" / CHECKPOINT).exists()
    # nor its exported weights, which `dllm eval` would score under the new run's record
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "loss.png").exists()
    # a folder that held no run keeps its model/ (the user's); a link to weights elsewhere is unlinked, not followed
    mine = tmp_path / "mine" / "run" / "model"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="killed"):
        dllm.train(**tiny(tmp_path / "mine", corpus, steps=4, resume="never"))
    assert (mine / "notes.txt").read_text() == "mine"
    (tmp_path / "run" / "model").symlink_to(mine, target_is_directory=True)
    with pytest.raises(RuntimeError, match="killed"):
        dllm.train(**tiny(tmp_path, corpus, steps=4, resume="never"))
    assert not (tmp_path / "run" / "model").is_symlink() and (mine / "notes.txt").exists()


def test_resuming_another_folders_run_refuses_a_folder_holding_a_run(tmp_path, corpus, monkeypatch):
    dllm.train(**tiny(tmp_path / "a", corpus, steps=2, ckpt_every=1))
    dllm.train(**tiny(tmp_path / "b", corpus, steps=2, hidden=32))
    checkpoint = tmp_path / "a" / "run" / CHECKPOINT
    with pytest.raises(ValueError, match=r"holds a run of its own \(checkpoint.pt, metrics.jsonl, run_config.json\)"
                                         r".*--resume auto to continue"):
        dllm.train(**tiny(tmp_path / "b", corpus, steps=3, resume=str(checkpoint)))
    # into a new folder it continues, also when its first start stopped before a checkpoint
    train_step = Trainer.train_step

    def killed(self):
        raise RuntimeError("killed")

    monkeypatch.setattr(Trainer, "train_step", killed)
    with pytest.raises(RuntimeError, match="killed"):
        dllm.train(**tiny(tmp_path / "c", corpus, steps=3, resume=str(checkpoint)))
    with pytest.raises(ValueError, match="run_config.json.*remove that folder's records"):
        dllm.train(**tiny(tmp_path / "c", corpus, steps=3, resume=str(tmp_path / "b" / "run" / CHECKPOINT)))
    monkeypatch.setattr(Trainer, "train_step", train_step)
    assert dllm.train(**tiny(tmp_path / "c", corpus, steps=3, resume=str(checkpoint)))["step"] == 3
    # a copy of the folder's own checkpoint rewinds its records
    copy = tmp_path / "c" / "run" / "at-step-3.pt"
    copy.write_bytes((tmp_path / "c" / "run" / CHECKPOINT).read_bytes())
    assert dllm.train(**tiny(tmp_path / "c", corpus, steps=4, resume=str(copy)))["step"] == 4
    records = [json.loads(line) for line in open(tmp_path / "c" / "run" / "metrics.jsonl")]
    assert [r["step"] for r in records if "loss" in r] == [3, 4]


def test_one_run_at_a_time_trains_into_a_folder(tmp_path, corpus):
    from dllm.training.trainer import run_folder_lock

    with run_folder_lock(tmp_path / "run"):  # another run holds the folder
        with pytest.raises(RuntimeError, match=rf"in use by another training run \(pid {os.getpid()}\)"):
            dllm.train(**tiny(tmp_path, corpus, steps=2))
        assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert dllm.train(**tiny(tmp_path, corpus, steps=2))["step"] == 2  # released, even by a run that failed


def test_a_refused_resume_leaves_no_output_folder(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        dllm.train(**tiny(tmp_path, corpus, steps=2, resume=str(tmp_path / "missing.pt")))
    assert not (tmp_path / "run").exists()
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is a folder: it takes the checkpoint file \(did you mean '.*earlier/checkpoint\.pt'\?\)"):
        dllm.train(**tiny(tmp_path, corpus, steps=2, resume=str(tmp_path / "earlier")))
    assert not (tmp_path / "run").exists()


def test_a_finished_run_started_again_logs_nothing_twice(tmp_path, corpus):
    first = dllm.train(**tiny(tmp_path, corpus, steps=3, eval_every=3))
    again = dllm.train(**tiny(tmp_path, corpus, steps=3, eval_every=3))
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in records if "val_bpb" in r] == [3]
    # and returns what the run returned: its last step's training metrics (the loss...) and validation
    assert again == first


def test_a_finished_run_started_again_with_other_validation_windows_validates_again(tmp_path, corpus):
    """Its record then names the new --eval-batches, so `dllm eval` must find the numbers it promises."""
    from dllm.eval_cli import run_eval

    first = dllm.train(**tiny(tmp_path, corpus, steps=3, ema=0))
    again = dllm.train(**tiny(tmp_path, corpus, steps=3, ema=0, eval_batches=3))
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [(r["step"], r["val_sequences"]) for r in records if "val_bpb" in r] == [(3, 16), (3, 24)]
    assert again["val_bpb"] != first["val_bpb"]
    got = run_eval(tmp_path / "run" / "model", device="cpu", progress=False)
    assert got["val_bpb"] == pytest.approx(again["val_bpb"], rel=1e-5)
    # back to the first windows: validated again (the log's last validation is the record's), same numbers
    back = dllm.train(**tiny(tmp_path, corpus, steps=3, ema=0))
    assert back["val_bpb"] == first["val_bpb"] and back["val_sequences"] == 16
    path = tmp_path / "run" / "metrics.jsonl"
    assert [r["val_sequences"] for r in map(json.loads, open(path)) if "val_bpb" in r] == [16, 24, 16]
    # a record written before validations named their windows is validated again
    path.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "val_sequences"}) + "\n"
                            for line in open(path)))
    dllm.train(**tiny(tmp_path, corpus, steps=3, ema=0))
    assert [r.get("val_sequences") for r in map(json.loads, open(path)) if "val_bpb" in r] == [None] * 3 + [16]


def test_a_finished_run_whose_final_validation_was_lost_validates_when_started_again(tmp_path, corpus):
    """Only a validation of the current step counts as done: a run killed during its final
    validation (after its last checkpoint; here its record is removed) validates when started
    again, although earlier steps were validated."""
    first = dllm.train(**tiny(tmp_path, corpus, steps=4, eval_every=2))
    path = tmp_path / "run" / "metrics.jsonl"
    records = [json.loads(line) for line in open(path)]
    assert [r["step"] for r in records if "val_bpb" in r] == [2, 4]
    path.write_text("".join(json.dumps(r) + "\n" for r in records if not (r["step"] == 4 and "val_bpb" in r)))
    again = dllm.train(**tiny(tmp_path, corpus, steps=4, eval_every=2))
    assert again["step"] == 4 and again["val_bpb"] == pytest.approx(first["val_bpb"], rel=1e-6)
    records = [json.loads(line) for line in open(path)]
    assert [r["step"] for r in records if "val_bpb" in r] == [2, 4]


def test_a_rerun_that_trains_nothing_reports_its_own_steps_validation(tmp_path, corpus, monkeypatch):
    """A run that validated step 3 and died before its checkpoint there resumes at step 2; asked for 2
    steps, it trains nothing and must validate step 2, not report step 3's numbers as step 2's."""
    opts = tiny(tmp_path, corpus, steps=4, ckpt_every=2, eval_every=3, log_every=10, schedule="constant",
                hidden=32, layers=1, seq_len=32)
    real_step = Trainer.train_step

    def crashing(self):
        if self.step == 3:  # after step 3's validation
            raise _Crash()
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", crashing)
    with pytest.raises(_Crash):
        dllm.train(**opts)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    result = dllm.train(**{**opts, "steps": 2})
    validations = [r for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if "val_bpb" in r]
    assert [r["step"] for r in validations] == [2] and result["val_bpb"] == validations[0]["val_bpb"]


def test_max_time_is_summed_over_resumes(tmp_path, corpus):
    """A run bounded by max_time stops on its clock and records the seconds it ran; started again
    with the budget it has spent, it trains no further (the budget is not granted again)."""
    opts = tiny(tmp_path, corpus, steps=1_000_000, max_time=1.0, log_every=1)
    first = dllm.train(**opts)
    assert 0 < first["step"] < 1_000_000 and first["elapsed"] > 0.5
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    times = [r["elapsed"] for r in records if "loss" in r]
    # the final validation's seconds are the run's too
    assert len(times) == first["step"] and 0 < times[0] and times == sorted(times) and times[-1] < first["elapsed"]
    # the clock it recorded is the budget: spent at once (max_time itself may be a step's end short of it)
    again = dllm.train(**{**opts, "max_time": first["elapsed"]})
    assert again["step"] == first["step"] and again["elapsed"] == first["elapsed"]


def test_max_time_counts_validations_and_checkpoints(tmp_path, corpus, monkeypatch):
    """The clock stops a run in a validation as well as in a step: the seconds recorded are those the
    clock counted, so the same command run again finds the budget spent."""
    from dllm.training import Trainer

    evaluate = Trainer.evaluate

    def slow(self):  # stands in for many --eval-batches
        time.sleep(0.3)
        return evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", slow)
    opts = tiny(tmp_path, corpus, steps=1_000_000, max_time=1.0, eval_every=1, ckpt_every=1)
    first = dllm.train(**opts)
    assert first["elapsed"] >= 1.0
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["elapsed"] == first["elapsed"]
    again = dllm.train(**opts)
    assert again["step"] == first["step"] and again["elapsed"] == first["elapsed"]


def test_the_record_holds_absolute_paths(tmp_path, corpus, monkeypatch):
    monkeypatch.chdir(corpus.parent)
    monkeypatch.setenv("HOME", str(corpus.parent))
    dllm.train(**tiny(tmp_path, corpus.name, steps=1, cache_dir="~/cache-rel"))  # ~ as left by the shell after --f=
    train = json.loads((tmp_path / "run" / "run_config.json").read_text())["train"]
    assert train["data"] == str(corpus.resolve()) and train["cache_dir"] == str((corpus.parent / "cache-rel").resolve())


def test_a_gradient_that_overflows_is_not_applied(tmp_path, corpus, monkeypatch):
    dllm.train(**tiny(tmp_path, corpus, steps=2, ckpt_every=1))
    real = torch.nn.utils.get_total_norm

    def overflowed(grads, *args, **kwargs):
        real(grads, *args, **kwargs)
        return torch.tensor(float("inf"))

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", overflowed)
    with pytest.raises(FloatingPointError, match="gradient norm became inf at step 3 .its loss was [0-9.]+.; every "
                       "gradient is finite"):
        dllm.train(**tiny(tmp_path, corpus, steps=4, ckpt_every=1))

    def broken(grads, *args, **kwargs):  # a backward that wrote NaN into two layers' gradients
        for g in grads[2], grads[-2]:
            g[0] = float("nan")
        return real(grads, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", broken)
    with pytest.raises(FloatingPointError) as failed:
        dllm.train(**tiny(tmp_path, corpus, steps=4, ckpt_every=1))
    names = list(load_checkpoint(tmp_path / "run" / CHECKPOINT)["model"])  # the parameters, in model order
    assert f"non-finite gradients in 2 of {len(names)} parameters, the last in model order: {names[2]}, " \
           f"{names[-2]};" in str(failed.value)
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert "the step was not applied, and the last checkpoint holds finite weights" in str(failed.value)
    # a run that has written no checkpoint claims none
    with pytest.raises(FloatingPointError, match="the step was not applied;") as failed:
        dllm.train(**tiny(tmp_path / "unsaved", corpus, steps=4, ckpt_every=0))
    assert "checkpoint holds" not in str(failed.value)


def test_a_damaged_run_record_does_not_block_the_resume(tmp_path, corpus, caplog):
    dllm.train(**tiny(tmp_path, corpus, steps=2, ckpt_every=1))
    record = tmp_path / "run" / "run_config.json"
    record.write_text(record.read_text()[:100])
    with caplog.at_level("WARNING"):
        assert dllm.train(**tiny(tmp_path, corpus, steps=3))["step"] == 3
    assert "run_config.json is damaged" in caplog.text and json.loads(record.read_text())["train"]["steps"] == 3


@pytest.mark.parametrize("options, message", [
    (dict(heads=0), "heads must be positive"), (dict(layers=-1), "layers must be positive"),
    (dict(hidden=0), "hidden must be positive"), (dict(lr=float("inf")), "lr must be finite"),
    (dict(min_lr_ratio=5.0), "min_lr_ratio must lie in"),
    (dict(schedule="constant", min_lr_ratio=0.5), "min_lr_ratio applies to the cosine schedule only"),
    (dict(tokenizer="bpe", bpe_vocab_size=1), "at least 258"),
    (dict(kv_heads=2), "kv_heads applies to the llada architecture only"),
    (dict(objective="sedd", arch="llada"), "takes no time input .the 'sedd' objective conditions on it"),
    (dict(objective="llada", time_conditioning=True), r"takes no time input \(--time-conditioning\)"),
    (dict(objective="ar", time_conditioning=True), "the ar architecture takes no time input"),
    (dict(objective="llada", arch="dit", time_conditioning=True), "the llada objective trains a time-agnostic model"),
    (dict(hidden=12, heads=4), "head dimension hidden / heads = 3 must be even"),
    (dict(seed=-1), r"seed must lie in \[0, 2\^63\)"), (dict(random_length=1.5), r"random_length must lie in \[0, 1\]"),
    (dict(bpe_vocab_size=1000), "bpe_vocab_size applies to --tokenizer bpe only"),
    (dict(objective="mdlm", graph="uniform"), "--graph applies to the sedd objective only"),
    (dict(objective="ar", noise="geometric"), "--noise applies to the sedd and mdlm objectives only"),
    (dict(eval_batches=2.5), "eval_batches must be an int, got 2.5"), (dict(amp="no"), "amp must be a bool, got 'no'"),
    (dict(hidden="64"), "hidden must be an int or None"), (dict(objective="dllm"), "objective must be one of"),
])
def test_nonsense_settings_are_refused(tmp_path, corpus, options, message):
    with pytest.raises(ValueError, match=message):
        dllm.train(**tiny(tmp_path, corpus, steps=1, **options))


def test_corrupt_or_truncated_checkpoint_is_refused(tmp_path, corpus):
    dllm.train(**tiny(tmp_path, corpus, steps=2))
    path = tmp_path / "run" / CHECKPOINT
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.*; delete it to start over"):
        dllm.train(**tiny(tmp_path, corpus, steps=4))
    # another run's checkpoint.pt, given to --resume, is not this run's to delete
    with pytest.raises(CheckpointError, match="truncated.*; pass another checkpoint written by dllm train"):
        dllm.train(**tiny(tmp_path, corpus, steps=4, out_dir=str(tmp_path / "other"), resume=str(path)))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a dllm checkpoint.*; delete it to start over"):
        load_checkpoint(path, own_run=True)
    # a file given to --resume that is no checkpoint at all (exported weights) is not for deleting
    with pytest.raises(CheckpointError, match="not a dllm checkpoint.*; pass another checkpoint written by dllm train"):
        load_checkpoint(tmp_path / "run" / "model" / "model.safetensors")
    with pytest.raises(CheckpointError, match="cannot read checkpoint '.*run': "):
        load_checkpoint(tmp_path / "run")


def test_kill_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.arange(10.0)}, path)
    # A child process starts writing a large checkpoint and is SIGKILLed in the middle of the write.
    script = textwrap.dedent(f"""
        import os, signal, torch
        from dllm.training import checkpoint as ck
        real_write = None
        class Dying:
            def __init__(self, f): self.f = f
            def write(self, b):
                self.f.write(b[: len(b) // 2]); self.f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            def __getattr__(self, n): return getattr(self.f, n)
            def __enter__(self): return self
            def __exit__(self, *a): return self.f.__exit__(*a)
        import builtins
        real_open = builtins.open
        ck.open = lambda *a, **k: Dying(real_open(*a, **k))
        ck.save_checkpoint({{"step": 2, "w": torch.randn(1_000_000)}}, {str(path)!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ckpt.pt"]
    assert leftovers and all(".tmp" in n for n in leftovers)  # the half-written file never replaced the old one
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(10.0))


def test_a_rerun_deletes_the_temporaries_of_a_writer_killed_mid_write(tmp_path, corpus):
    """A writer killed mid-write leaves its temporary (the test above); named by that writer's process
    id, no later write replaces it, so a checkpoint's worth of disk would stay for good. The next run
    into the folder, its only writer, deletes those, and nothing else."""
    opts = tiny(tmp_path, corpus, steps=1, hidden=32, layers=1, seq_len=32)
    dllm.train(**opts)
    run = tmp_path / "run"
    left = [run / ".checkpoint.pt.tmp4242", run / "run_config.json.tmp4242", run / "model" / "model.safetensors.tmp77"]
    others = [run / "checkpoint.pt.tmp-mine", run / "model" / "weights.tmp77", run / "notes.txt"]
    for path in left + others:
        path.write_bytes(b"cut short")
    dllm.train(**{**opts, "steps": 2})
    assert [path.name for path in left if path.exists()] == []
    assert all(path.exists() for path in others)


def test_a_failed_checkpoint_write_leaves_the_previous_one_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.arange(10.0)}, path)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"step": 2, "w": torch.randn(100_000)}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # a full disk keeps no half of a checkpoint
    assert load_checkpoint(path)["step"] == 1


def test_gradient_accumulation_gives_the_same_update(tmp_path, corpus):
    a = dllm.train(**tiny(tmp_path / "a", corpus, objective="mdlm", steps=3, ema=0))
    b = dllm.train(**tiny(tmp_path / "b", corpus, objective="mdlm", steps=3, ema=0, grad_accum=4))
    for key in ("loss", "grad_norm"):  # Adam's update hides a gradient's scale; its norm does not
        la, lb = _losses(tmp_path / "a" / "run", key), _losses(tmp_path / "b" / "run", key)
        assert la.keys() == lb.keys() and len(la) == 3
        for s in la:
            assert lb[s] == pytest.approx(la[s], rel=1e-5)
    assert b["val_bpb"] == pytest.approx(a["val_bpb"], rel=1e-5)


def test_ddp_two_gloo_processes_equal_one_process(tmp_path, corpus):
    def run(out, nproc):
        opts = tiny(tmp_path / out, corpus, objective="sedd", steps=2, ema=0, lr=1e-2, warmup=1)
        args = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items() if not isinstance(v, bool)]
        args.append("--no-progress")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
               if nproc > 1 else [sys.executable]) + ["-m", "dllm.cli", "train", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1]), load_checkpoint(tmp_path / out / "run" / CHECKPOINT)

    one, s1 = run("one", 1)
    two, s2 = run("two", 2)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert two["val_bpb"] == pytest.approx(one["val_bpb"], rel=1e-5)
    for k in s1["model"]:
        torch.testing.assert_close(s2["model"][k], s1["model"][k], rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "two" / "run" / "run_config.json").read_text())["world_size"] == 2


def test_ddp_ranks_resume_another_folders_checkpoint_together(tmp_path, corpus):
    """Every rank checks that --out-dir holds no run of its own before rank 0 writes the new run's
    record: a rank that reached the check late would otherwise find that record and refuse the run."""
    first = tiny(tmp_path / "a", corpus, objective="mdlm", steps=1, ema=0, hidden=32, layers=1, ckpt_every=1)
    dllm.train(**first)
    resumed = {**first, "out_dir": str(tmp_path / "b" / "run"), "steps": 2,
               "resume": str(tmp_path / "a" / "run" / CHECKPOINT)}
    script = tmp_path / "late_rank.py"
    script.write_text(textwrap.dedent(f"""
        import os, time
        import dllm
        from dllm.training.trainer import Trainer

        if os.environ["RANK"] == "1":
            check = Trainer._resume_path

            def late(self):
                time.sleep(1.0)
                return check(self)

            Trainer._resume_path = late
        print(dllm.train(**{resumed!r})["step"])
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
                       capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "".join(r.stdout.split()) == "22"  # each rank's step (two prints may share a line: "22\n\n")
    # rank 0 alone says what it found in the data and the checkpoint
    assert r.stderr.count("with changed options (old, new): {'steps': [1, 2]}") == 1, r.stderr[-3000:]
    assert r.stderr.count("corpus: holding out whole files") == 1, r.stderr[-3000:]


def test_ddp_a_trainer_that_fails_to_build_destroys_its_process_group(tmp_path, corpus):
    """train() destroys the group after the run; a Trainer that raises after creating it (here at the
    batch_size check) has no run, and would leave it to the interpreter's exit (NCCL may hang there)."""
    opts = tiny(tmp_path, corpus, batch_size=3)
    script = tmp_path / "fails.py"
    script.write_text(textwrap.dedent(f"""
        import torch.distributed as dist
        import dllm

        try:
            dllm.train(**{opts!r})
        finally:
            print(f"group left: {{dist.is_initialized()}}", flush=True)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
                       capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode != 0  # with the user's error, not one of the clean-up's
    assert "ValueError: batch_size (3) must be divisible by processes x grad_accum (2 x 1)" in r.stderr, r.stderr[-3000:]
    # each rank's answer (their prints may interleave: "group left: group left: False\nFalse\n")
    assert r.stdout.count("False") == 2 and "True" not in r.stdout, r.stdout


def test_ddp_ranks_draw_their_own_dropout_masks_also_after_a_resume(tmp_path, corpus):
    """Every rank seeds torch from cfg.seed, and a resume restores rank 0's saved state on each: without
    a per-rank stream the two ranks would drop the same units at every step. The resumed step drops
    the units the uninterrupted run's step 2 drops (a stream seeded once, at the step a run starts,
    would make a resumed run drop others)."""
    opts = tiny(tmp_path, corpus, objective="mdlm", steps=1, ema=0, dropout=0.5, ckpt_every=1)
    script = tmp_path / "masks.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch
        from dllm.training.config import TrainConfig
        from dllm.training.trainer import Trainer

        # a fresh run's step, then a resumed run's, then the uninterrupted run's two steps elsewhere
        for name, steps, out in (("1", 1, "run"), ("2", 2, "run"), ("full", 2, "full")):
            trainer = Trainer(TrainConfig(**{{**{opts!r}, "steps": steps, "out_dir": {str(tmp_path)!r} + "/" + out}}))
            seen = []
            trainer.raw_model.blocks[0].dropout.register_forward_hook(lambda m, i, o: seen.append(o == 0))
            trainer.run()
            # the dropout runs twice a block and step: seen[2] is the first of the uninterrupted run's step 2
            torch.save(seen[2 if name == "full" else 0].flatten()[:4096],
                       {str(tmp_path)!r} + f"/mask{{name}}-{{os.environ['RANK']}}.pt")
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
                       capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    for steps in (1, 2):
        rank0, rank1 = (torch.load(tmp_path / f"mask{steps}-{rank}.pt") for rank in (0, 1))
        assert 0.3 < rank0.float().mean() < 0.7 and 0.3 < rank1.float().mean() < 0.7  # dropout at 0.5 ran
        assert (rank0 != rank1).float().mean() > 0.3, f"step {steps}: the ranks drew the same dropout mask"
    for rank in (0, 1):
        resumed, uninterrupted = (torch.load(tmp_path / f"mask{name}-{rank}.pt") for name in ("2", "full"))
        assert torch.equal(resumed, uninterrupted), f"rank {rank}: the resumed step dropped other units"


def test_lr_schedule_and_ema_decay():
    c = TrainConfig(lr=1.0, warmup=10, steps=111, min_lr_ratio=0.1)
    assert lr_at(c, 0) == pytest.approx(0.1) and lr_at(c, 9) == pytest.approx(1.0) and lr_at(c, 10) == 1.0
    assert lr_at(c, 60) == pytest.approx(0.55) and lr_at(c, 110) == pytest.approx(0.1)  # the last step: the final lr
    assert lr_at(TrainConfig(lr=1.0, warmup=10, schedule="constant"), 500) == 1.0
    for steps, warmup in ((10, 9), (2, 1), (1, 0)):  # the cosine's only step is the last one
        c = TrainConfig(lr=1.0, warmup=warmup, steps=steps, min_lr_ratio=0.1)
        assert lr_at(c, steps - 1) == pytest.approx(0.1) and (warmup == 0 or lr_at(c, warmup - 1) == 1.0)
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.9999)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()  # decay min(0.9999, 2/11)
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 9 / 11))
    with ema.applied():
        assert torch.equal(p.detach(), ema.shadow[0])
    assert torch.equal(p.detach(), torch.ones(3))


def test_a_warmup_longer_than_the_run_is_named(tmp_path, corpus, caplog):
    # warmup = steps reaches lr at the last step (lr_at above); one step more never does
    for warmup, warned in ((5, False), (6, True)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            Trainer(TrainConfig(**tiny(tmp_path / str(warmup), corpus, steps=5, warmup=warmup)))
        assert ("the learning rate never reaches lr" in caplog.text) == warned, warmup


def test_cli_help_documents_every_option():
    r = subprocess.run([sys.executable, "-m", "dllm.cli", "train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in r.stdout, f.name
    bad = subprocess.run([sys.executable, "-m", "dllm.cli", "train", "--batch-size", "6", "--grad-accum", "4"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "divisible" in bad.stderr


def test_paths_may_be_path_objects_and_stdlib_stays_a_name(tmp_path, corpus, monkeypatch):
    cfg = TrainConfig(out_dir=tmp_path / "run", data=corpus, lr=1)
    assert cfg.out_dir == str(tmp_path / "run") and cfg.data == str(corpus) and cfg.lr == 1.0
    seen = []

    def prepare(data, **kw):
        seen.append(data)
        raise _Crash()

    monkeypatch.setattr("dllm.training.trainer.prepare", prepare)
    with pytest.raises(_Crash):
        Trainer(TrainConfig(data="stdlib", device="cpu"))
    assert seen == ["stdlib"]  # not resolved into ./stdlib


@pytest.fixture
def sigint(request):
    """Sets SIGINT's handler for one test (pytest runs in the background ignore SIGINT)."""
    previous = signal.getsignal(signal.SIGINT)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    return lambda handler: signal.signal(signal.SIGINT, handler)


def test_ctrl_c_checkpoints_at_a_step_boundary_and_the_resume_is_exact(tmp_path, corpus, monkeypatch, caplog, sigint):
    sigint(signal.default_int_handler)  # as in a terminal
    opts = dict(objective="mdlm", steps=8, ema=0.9)
    full = dllm.train(tiny(tmp_path / "a", corpus, **opts))  # a dict works as the config
    real_step = Trainer.train_step

    def interrupted(self):
        out = real_step(self)
        if self.step == 3:  # Ctrl-C arrives during step 3; the loop stops once it is whole
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
        dllm.train(**tiny(tmp_path / "b", corpus, **opts))
    assert "interrupted at step 3: checkpoint saved" in caplog.text and "run the same command to resume" in caplog.text
    assert "press it again to stop at once" in caplog.text
    assert load_checkpoint(tmp_path / "b" / "run" / CHECKPOINT)["step"] == 3
    # the weights of the stopped step can be sampled, as a --max-time stop's can
    assert json.loads((tmp_path / "b" / "run" / "model" / "config.json").read_text())["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resumed = dllm.train(**tiny(tmp_path / "b", corpus, **opts))
    assert resumed["val_bpb_ema"] == pytest.approx(full["val_bpb_ema"], rel=1e-6)
    assert _losses(tmp_path / "b" / "run") == pytest.approx(_losses(tmp_path / "a" / "run"), rel=1e-6)


def test_an_ignored_sigint_stays_ignored(tmp_path, corpus, monkeypatch, sigint):
    sigint(signal.SIG_IGN)  # a background job of a non-interactive shell
    seen = []
    real_step = Trainer.train_step

    def step(self):
        seen.append(signal.getsignal(signal.SIGINT))
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", step)
    dllm.train(**tiny(tmp_path, corpus, steps=2))
    assert seen == [signal.SIG_IGN] * 2 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_resume_names_what_differs_and_lets_dropout_change(tmp_path, corpus, caplog):
    dllm.train(**tiny(tmp_path, corpus, steps=2))
    with pytest.raises(CheckpointError, match=r"another model \(\{'hidden': 64\} vs now \{'hidden': 32\}\)"):
        dllm.train(**tiny(tmp_path, corpus, steps=4, hidden=32))
    with pytest.raises(CheckpointError, match=r"another seed \(seed=0 vs now seed=1\)"):
        dllm.train(**tiny(tmp_path, corpus, steps=4, seed=1))
    # another objective is named as such, not as the other model (time input) it would imply
    with pytest.raises(CheckpointError, match=r"another objective \("):
        dllm.train(**tiny(tmp_path, corpus, steps=4, objective="sedd"))
    dllm.train(**tiny(tmp_path, corpus, steps=4, dropout=0.1))
    record = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert record["changed_at_resume"][-1]["options"]["dropout"] == [0.0, 0.1] and record["model"]["dropout"] == 0.1
    with caplog.at_level("WARNING"):
        dllm.train(**tiny(tmp_path, corpus, steps=4, dropout=0.1))
    assert "nothing left to train" in caplog.text and "raise --steps" in caplog.text


@pytest.mark.parametrize("options,message", [
    (dict(layers=3), r"another model \(\{'layers': 2\} vs now \{'layers': 3\}\)"),
    (dict(seq_len=32), r"another model \(\{'max_seq_len': 64\} vs now \{'max_seq_len': 32\}\)"),
    (dict(time_conditioning=True), r"another model \(\{'time_conditioning': False\} vs now"),
    (dict(seed=1), r"another seed \(seed=0 vs now seed=1\)"),
    (dict(ema=0.5), r"another EMA setting \(ema=0.9 vs now ema=0.5\)"),
    (dict(objective="sedd", graph="uniform"), r"another objective \("),
    (dict(noise="geometric"), r"another objective \(\{'noise': \{'type': 'loglinear'"),
])
def test_a_resume_of_another_run_is_refused_before_the_data_is_prepared(tmp_path, corpus, monkeypatch, options,
                                                                        message):
    dllm.train(**tiny(tmp_path, corpus, steps=2, ema=0.9))

    def prepare(*args, **kw):  # the corpus's first preparation (a BPE, the tokenizing) takes a minute
        raise _Crash()

    monkeypatch.setattr("dllm.training.trainer.prepare", prepare)
    with pytest.raises(CheckpointError, match=message):
        dllm.train(**tiny(tmp_path, corpus, **{"steps": 4, "ema": 0.9, **options}))


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.update(format=2), "has format 2; this dllm reads format 1"),
    (lambda s: s.pop("rng"), "lacks 'rng'; it was not written by dllm.train"),
])
def test_a_checkpoint_of_another_layout_is_refused(tmp_path, corpus, edit, message):
    dllm.train(**tiny(tmp_path, corpus, steps=2))
    path = tmp_path / "run" / CHECKPOINT
    state = load_checkpoint(path)
    edit(state)
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match=message):
        dllm.train(**tiny(tmp_path, corpus, steps=3))


def test_a_resume_reads_its_checkpoint_once_and_again_if_it_was_replaced(tmp_path, corpus, monkeypatch, caplog):
    dllm.train(**tiny(tmp_path, corpus, steps=2))
    path = tmp_path / "run" / CHECKPOINT
    at_step_2 = tmp_path / "at-step-2.pt"
    at_step_2.write_bytes(path.read_bytes())
    reads = []
    real = dllm.training.trainer.load_checkpoint
    monkeypatch.setattr("dllm.training.trainer.load_checkpoint", lambda *a, **kw: reads.append(a) or real(*a, **kw))
    # the options that shape the rest of the run may change, and what the options leave implicit may be spelled out
    assert dllm.train(**tiny(tmp_path, corpus, steps=3, lr=1e-2, arch="dit", time_conditioning=False))["step"] == 3
    assert len(reads) == 1  # the read that checked the options before the data is the one resumed
    # a checkpoint replaced between the check and the resume (another run's save, a copy) is read again
    trainer = Trainer(TrainConfig(**tiny(tmp_path, corpus, steps=4)))
    at_step_2.replace(path)
    caplog.clear()
    with caplog.at_level("INFO"):
        assert trainer.run()["step"] == 4
    assert len(reads) == 3 and "at step 2" in caplog.text  # the replacement's step, not the checked one's (3)


def test_an_unfinished_metrics_line_does_not_block_the_rerun(tmp_path, corpus, caplog):
    dllm.train(**tiny(tmp_path, corpus, steps=2))
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 4.')  # a kill in the middle of a write
    with caplog.at_level("WARNING"):
        res = dllm.train(**tiny(tmp_path, corpus, steps=3))
    assert res["step"] == 3 and "unfinished last line" in caplog.text
    assert [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")][-1] == 3


def test_cli_config_file_errors_name_the_file(tmp_path, capsys):
    from dllm.cli import main

    for text, message in (("[1, 2]", "must hold a JSON object"), ("{bad", "is not valid JSON"),
                          ('{"train": null}', "must hold a JSON object"),
                          ('{"train": ["x"]}', "must hold a JSON object")):
        path = tmp_path / "c.json"
        path.write_text(text)
        with pytest.raises(SystemExit):
            main(["train", "--config", str(path)])
        err = capsys.readouterr().err
        assert message in err and str(path) in err


def test_option_mistakes_fail_before_the_corpus_is_read(tmp_path):
    """A mix-up of options, or a --resume that does not exist, is named before the data (a BPE, the
    tokenizing: a minute on the standard library) is prepared; here the corpus does not even exist."""
    missing = str(tmp_path / "no-corpus")
    with pytest.raises(ValueError, match="the llada objective trains a time-agnostic model"):
        dllm.train(**tiny(tmp_path, missing, objective="llada", arch="dit", time_conditioning=True))
    with pytest.raises(ValueError, match="--graph applies to the sedd objective only"):
        dllm.train(**tiny(tmp_path, missing, objective="mdlm", graph="uniform"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        dllm.train(**tiny(tmp_path, missing, resume=str(tmp_path / "gone.pt")))
    with pytest.raises(ValueError, match=r"hidden \(100\) must be a multiple of heads \(3\)"):
        dllm.train(**tiny(tmp_path, missing, hidden=100, heads=3))
    assert not (tmp_path / "cache").exists()


def test_the_last_checkpoint_is_written_once_and_the_last_step_always_logged(tmp_path, corpus, monkeypatch):
    import dllm.training.trainer as trainer_module

    saved = []
    real_save = trainer_module.save_checkpoint
    monkeypatch.setattr(trainer_module, "save_checkpoint", lambda state, path: saved.append(state["step"]) or
                        real_save(state, path))
    dllm.train(**tiny(tmp_path / "a", corpus, steps=4, ckpt_every=2, log_every=3))
    assert saved == [2, 4]
    assert sorted(_losses(tmp_path / "a" / "run")) == [3, 4]
    # Ctrl-C during the final validation, which the end of the run does before its checkpoint: saved still
    real_evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self: (_ for _ in ()).throw(KeyboardInterrupt)
                        if self.step == 4 else real_evaluate(self))
    with pytest.raises(KeyboardInterrupt):
        dllm.train(**tiny(tmp_path / "c", corpus, steps=4, ckpt_every=2, eval_every=3))
    assert load_checkpoint(tmp_path / "c" / "run" / CHECKPOINT)["step"] == 4
    # stopped by the clock between two records (log_every 2, stopped after step 3): step 3 is logged too
    monkeypatch.setattr(Trainer, "_should_stop", lambda self, elapsed: self.step >= 3)
    dllm.train(**tiny(tmp_path / "b", corpus, steps=8, log_every=2, max_time=1e6))
    assert sorted(_losses(tmp_path / "b" / "run")) == [2, 3]


def test_a_corpus_smaller_than_a_batch_warns(tmp_path, caplog):
    small = tmp_path / "small"
    small.mkdir()
    (small / "text.txt").write_text("".join(f"line {i} of a short corpus\n" for i in range(100)))  # 2,590 bytes
    with caplog.at_level("WARNING"):
        result = dllm.train(**tiny(tmp_path, small, steps=1, batch_size=64, eval_batches=1))
    assert "holds 32 windows of 64 tokens, fewer than a batch of 64: every batch repeats windows" in caplog.text
    scored = int(caplog.text.split("validation scores the ")[1].split()[0])
    assert "fewer than --eval-batches x --batch-size = 64" in caplog.text
    # the record says what was scored beside what was asked (which decides whether a rerun validates again)
    assert result["val_windows"] == scored < result["val_sequences"] == 64



def test_grad_clip_0_is_off_not_a_zero_gradient(tmp_path, corpus):
    """--grad-clip 0 means no clipping: the step equals one with a clip no gradient reaches."""
    after = {}
    for clip in (0.0, 1e30):
        t = Trainer(TrainConfig(**tiny(tmp_path / str(clip), corpus, objective="mdlm", hidden=32, layers=1, heads=2,
                                       seq_len=24, batch_size=6, ema=0, grad_clip=clip, cache_dir=str(tmp_path / "c"))))
        before = [p.detach().clone() for p in t.params]
        out = t.train_step()
        assert out["grad_norm"] > 0
        after[clip] = [p.detach().clone() for p in t.params]
        assert max((a - b).abs().max().item() for a, b in zip(after[clip], before)) > 1e-4  # lr 3e-3 steps of Adam
    for a, b in zip(after[0.0], after[1e30]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("objective", ["llada", "mdlm"])
def test_a_cut_steps_nll_per_token_counts_the_tokens_it_trained_on(tmp_path, corpus, objective):
    """nll_per_token of a step cut to a random length L is its summed NLL over B * L; for the objectives
    whose loss is the mean NLL per token it equals the loss."""
    t = Trainer(TrainConfig(**tiny(tmp_path, corpus, objective=objective, hidden=32, layers=1, heads=2, seq_len=40,
                                   batch_size=6, ema=0, random_length=1.0)))
    cut = []
    for _ in range(4):
        out = t.train_step()
        assert 1 <= out["seq_len"] <= 40
        cut.append(out["seq_len"] < 40)
        assert out["nll_per_token"] == pytest.approx(out["loss"], rel=1e-5)
    assert any(cut)


def test_random_lengths_are_uniform_on_1_to_seq_len(tmp_path, corpus):
    """A cut step's length is uniform on [1, seq_len], seq_len included (LLaDA's "random length in [1, 4096]")."""
    L = 3
    t = Trainer(TrainConfig(**tiny(tmp_path, corpus, objective="llada", hidden=16, layers=1, heads=2, seq_len=L,
                                   batch_size=2, ema=0, random_length=1.0, steps=1000)))
    n = 240
    lengths = torch.tensor([t.train_step()["seq_len"] for _ in range(n)])
    assert lengths.min() >= 1 and lengths.max() <= L
    assert chi_square_pvalue(lengths - 1, np.full(L, 1 / L)) > 5e-5


def test_cli_flags_override_the_config_file_and_a_run_config_is_read_by_its_train_entry(tmp_path):
    import argparse

    from dllm.cli import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    for text in ('{"dropout": 0.25, "graph": "uniform", "hidden": 40}',
                 '{"train": {"dropout": 0.25, "graph": "uniform", "hidden": 40}, "model": {"arch": "dit"}}'):
        path = tmp_path / "c.json"
        path.write_text(text)
        cfg = config_from_args(parser.parse_args(["--config", str(path), "--dropout", "0.125", "--graph", "absorb"]))
        assert (cfg.dropout, cfg.graph, cfg.hidden) == (0.125, "absorb", 40)  # flags win; the rest from the file


@pytest.mark.parametrize("options, message", [
    (dict(beta2=1.0), r"beta2 must lie in \[0, 1\)"),
    (dict(val_fraction=0.0), r"val_fraction must lie in \(0, 1\)"),
])
def test_train_config_refuses_the_open_ends(options, message):
    """beta2 = 1 zeroes Adam's bias correction (NaN steps); val_fraction = 0 holds nothing out."""
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


def test_train_config_takes_the_closed_ends():
    """random_length = 1 (every step cut) and min_lr_ratio = 1 (a flat cosine) lie in [0, 1]."""
    assert TrainConfig(random_length=1.0).random_length == 1.0
    assert TrainConfig(min_lr_ratio=1.0, schedule="cosine").min_lr_ratio == 1.0


class _NoiseObjective:
    """Each window's 'bound' is its token sum times its own uniform draw: the result shows which draw
    and which window every row got."""

    def bound_draw(self, batch, seq_len, generator):
        return {"u": torch.rand(batch, generator=generator, dtype=torch.float64)}

    def bound(self, model, x, draws):
        assert x.shape[0] == draws["u"].shape[0]
        return x.double().sum(1) * draws["u"]


def test_validation_draws_its_noise_apart_from_training_and_for_all_windows_at_once():
    from dllm.data.dataset import PackedDataset
    from dllm.training.evaluation import EVAL_SEED_OFFSET, validation_nll, validation_nll_per_window

    assert EVAL_SEED_OFFSET != 0  # the run's seed itself draws the training noise
    L, windows, seed = 7, 11, 123
    tokens = np.random.default_rng(0).integers(0, 50, size=L * windows + 3)
    val = PackedDataset(tokens, L)
    n = 9
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET), dtype=torch.float64)
    sums = torch.tensor([tokens[i * L:(i + 1) * L].sum() for i in range(n)], dtype=torch.float64)
    want = sums * u / L
    for batch_size in (1, 4, 5, 9, 20):
        got = validation_nll_per_window(None, _NoiseObjective(), val, sequences=n, batch_size=batch_size, seed=seed,
                                        device=torch.device("cpu"))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        assert validation_nll(None, _NoiseObjective(), val, sequences=n, batch_size=batch_size, seed=seed,
                              device=torch.device("cpu")) == pytest.approx(want.mean().item(), rel=1e-12)
    assert validation_nll_per_window(None, _NoiseObjective(), val, sequences=100, batch_size=3, seed=seed,
                                     device=torch.device("cpu")).numel() == windows
    with pytest.raises(ValueError, match="no validation sequences"):
        validation_nll_per_window(None, _NoiseObjective(), val, sequences=0, batch_size=3, seed=seed,
                                  device=torch.device("cpu"))


def test_nll_metrics_are_nats_bits_per_token_and_bits_per_byte():
    from dllm.training.evaluation import nll_metrics

    g = np.random.default_rng(11)
    for suffix in ("", "_ema", "_se"):
        nats, bytes_per_token = g.uniform(0.3, 6.0), g.uniform(1.0, 4.5)
        bits = nats / math.log(2)
        assert nll_metrics(nats, bytes_per_token, suffix) == pytest.approx(
            {f"val_nll_per_token{suffix}": nats, f"val_bits_per_token{suffix}": bits,
             f"val_bpb{suffix}": bits / bytes_per_token}, rel=1e-12)


class _PrecisionObjective:
    """A bound that records the autocast state it ran under and returns its matmul's dtype size."""

    def __init__(self):
        self.seen = []

    def bound_draw(self, batch, seq_len, generator):
        return {"u": torch.rand(batch, generator=generator, dtype=torch.float64)}

    def bound(self, model, x, draws):
        y = x.float() @ torch.ones(x.shape[1], 3)
        self.seen.append((torch.is_autocast_enabled("cpu"), y.dtype))
        return x.double().sum(1) * draws["u"]


def test_validation_runs_the_bound_under_the_trainings_precision():
    """The trainer and `dllm eval` pass their autocast (bf16 on CUDA): every batch's bound runs under it."""
    val = PackedDataset(np.random.default_rng(2).integers(0, 50, size=7 * 11 + 3), 7)
    obj = _PrecisionObjective()
    validation_nll_per_window(None, obj, val, sequences=9, batch_size=4, seed=5, device=torch.device("cpu"),
                              amp=torch.autocast("cpu", dtype=torch.bfloat16))
    assert obj.seen == [(True, torch.bfloat16)] * 3
    obj.seen.clear()
    validation_nll_per_window(None, obj, val, sequences=9, batch_size=4, seed=5, device=torch.device("cpu"))
    assert obj.seen == [(False, torch.float32)] * 3


@pytest.mark.parametrize("options, message", [
    # would train the whole run, then fail at its final validation ("no validation sequences")
    (dict(eval_batches=0), "eval_batches must be positive"),
    # the EMA would barely move: the exported model/ holds weights near initialisation
    (dict(ema=1.0), r"ema must lie in \[0, 1\)"),
    # a negative clip is read as "off" (grad_clip > 0) without a word
    (dict(grad_clip=-0.5), "grad_clip must not be negative"),
    (dict(max_time=math.inf), "max_time must be finite"),
    # torch's generators wrap a seed past 2^63 silently
    (dict(seed=2**63), r"seed must lie in \[0, 2\^63\)"),
    # a boolean is not a count: steps=True would run one step
    (dict(steps=True), "steps must be an int, got True"),
    (dict(eval_every=False), "eval_every must be an int, got False"),
    # AdamW takes lr = 0 and trains nothing, without a word
    (dict(lr=0.0), "lr must be positive"),
    (dict(lr=-3e-4), "lr must be positive"),
    # a negative warm-up would start the cosine part-way through, below the peak
    (dict(warmup=-5), "warmup must not be negative"),
    # a boolean is no rate: lr=True would train at 1.0
    (dict(lr=True), "lr must be a float, got True"),
    (dict(dropout=False), "dropout must be a float, got False"),
])
def test_train_config_refuses_more_nonsense(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


def test_train_config_takes_the_least_bpe_vocabulary_and_the_largest_seed():
    """258 entries (256 bytes, end-of-text and mask) is the least a byte-level BPE can have, and is taken."""
    from dllm.training.config import BPE_MIN_VOCAB, TrainConfig

    assert TrainConfig(tokenizer="bpe", bpe_vocab_size=BPE_MIN_VOCAB).bpe_vocab_size == 258
    assert TrainConfig(seed=2**63 - 1, ema=0.0, grad_clip=0.0).seed == 2**63 - 1


def test_from_dict_names_unknown_options():
    """A run_config.json or --config key that is no option (a typo) is a ValueError naming it."""
    with pytest.raises(ValueError, match=r"unknown training options: \['stpes'\]"):
        TrainConfig.from_dict({"steps": 3, "stpes": 4})


def test_train_config_takes_every_path_as_a_path_object(tmp_path):
    """Paths may be os.PathLike (pathlib.Path): each path option is kept as its string."""
    names = ("data", "tokenizer", "cache_dir", "out_dir", "resume")
    cfg = TrainConfig(**{k: tmp_path / k for k in names})
    assert [getattr(cfg, k) for k in names] == [str(tmp_path / k) for k in names]


_RAN = []


def _side_effect(what):
    _RAN.append(what)
    return what


class _Payload:
    def __reduce__(self):
        return _side_effect, ("code ran while loading",)


def test_a_checkpoint_runs_no_code_while_it_loads(tmp_path):
    """The payload loads with weights_only=True: a checkpoint.pt (or a path given to --resume, or a
    nonfinite-step.pt handed to the replay) whose pickle calls a function is refused, not run,
    even when its header and SHA-256 are whole."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.arange(3.0), "evil": _Payload()}, path)
    assert path.read_bytes().startswith(MAGIC)
    _RAN.clear()
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    assert _RAN == []


def test_resume_refuses_another_tokenizer_of_the_same_size(tmp_path, corpus):
    """Two tokenizer.json files with the same vocabulary size (so the model and the objective match)
    but other merges: the checkpoint's weights learnt the first one's ids."""
    texts = [p.read_text() for p in sorted(corpus.iterdir())]
    paths = []
    for name, part in (("a", texts[:5]), ("b", texts[5:])):
        tok = train_bpe(part, vocab_size=300, progress=False)
        tok.save(tmp_path / name)
        paths.append(str(tmp_path / name / "tokenizer.json"))
    opts = dict(hidden=32, layers=1, seq_len=512, batch_size=2)  # as many windows under either
    dllm.train(**tiny(tmp_path, corpus, steps=1, tokenizer=paths[0], **opts))
    with pytest.raises(CheckpointError, match="another tokenizer"):
        dllm.train(**tiny(tmp_path, corpus, steps=2, tokenizer=paths[1], **opts))


def test_a_damaged_metrics_line_before_the_last_is_an_error_not_the_end_of_the_log(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        log.write({"step": step, "loss": 1.0 / step})
    lines = log.path.read_text().splitlines()
    lines[2] = lines[2][:7]  # cut short in the middle of the file: not a write interrupted at the end
    log.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 3 is not JSON"):
        log.read()
    with pytest.raises(ValueError, match="line 3 is not JSON"):
        log.truncate_after(4)  # a resume must not rewrite the log without the records after it
    assert len(log.path.read_text().splitlines()) == 5


def test_ema_applied_puts_the_weights_back_when_the_block_fails():
    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(7, generator=g))]
    ema = EMA(params, decay=0.5)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g))
    ema.update()
    trained = [p.detach().clone() for p in params]
    assert not any(torch.equal(s, p) for s, p in zip(ema.shadow, trained))
    with pytest.raises(KeyboardInterrupt):
        with ema.applied():
            assert all(torch.equal(p, s) for p, s in zip(params, ema.shadow))
            raise KeyboardInterrupt  # Ctrl-C during the EMA's validation
    assert all(torch.equal(p.detach(), t) for p, t in zip(params, trained))


def test_ema_refuses_the_state_of_another_parameter_list():
    a = EMA([torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(2))], decay=0.9)
    b = EMA([torch.nn.Parameter(torch.randn(4))], decay=0.9)
    for src, dst in ((a, b), (b, a)):
        before = [s.clone() for s in dst.shadow]
        with pytest.raises(ValueError, match="does not match"):
            dst.load_state_dict(src.state_dict())
        assert all(torch.equal(s, t) for s, t in zip(dst.shadow, before))


def test_a_checkpoint_write_interrupted_by_ctrl_c_leaves_the_previous_one_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.arange(10.0)}, path)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "w": torch.randn(1000)}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert load_checkpoint(path)["step"] == 1


def test_each_logged_step_counts_its_own_tokens_in_bits_and_per_second(tmp_path, corpus, monkeypatch):
    """metrics.jsonl: bits_per_token is nll_per_token in bits; tokens and tok_per_s count the tokens
    the step trained on (batch_size x its seq_len, which random_length cuts), not seq_len's."""
    import types

    import dllm.training.trainer as trainer_module

    ticks = iter(range(10**6))  # a clock whose every reading is one second after the last
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    B, L = 6, 48
    dllm.train(**tiny(tmp_path, corpus, objective="mdlm", steps=7, ema=0, hidden=32, layers=1, seq_len=L,
                      batch_size=B, random_length=1.0))
    recs = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 8))
    assert len({r["seq_len"] for r in steps}) > 1 and all(r["seq_len"] <= L for r in steps)
    tokens = 0
    for r in steps:
        tokens += B * r["seq_len"]
        assert r["bits_per_token"] == pytest.approx(r["nll_per_token"] / math.log(2), rel=1e-12)
        assert r["tokens"] == tokens
        assert r["tok_per_s"] == pytest.approx(B * r["seq_len"])  # one step of one (fake) second per record


def test_save_checkpoint_makes_its_folder(tmp_path):
    path = tmp_path / "runs" / "a" / "ckpt.pt"
    w = torch.randn(7, 3, dtype=torch.float64)
    save_checkpoint({"step": 5, "w": w}, path)
    state = load_checkpoint(path)
    assert state["step"] == 5 and torch.equal(state["w"], w)
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]


def test_train_config_takes_random_length_0():
    """random_length = 0 (no step cut) is how a llada run turns off its default of 0.01."""
    assert TrainConfig(objective="llada", random_length=0.0).random_length == 0.0
    assert TrainConfig(random_length=0).random_length == 0.0


def test_train_config_keeps_numbers_as_python_ints_and_floats():
    """Counts and rates given as numpy scalars (or a rate as an int) are stored as the int and float
    the flags would have parsed, so the run's record is plain JSON."""
    cfg = TrainConfig(steps=np.int64(7), seq_len=np.int32(48), lr=np.float32(0.5), warmup=np.int64(2), ema=0,
                      dropout=np.float64(0.25))
    assert [type(getattr(cfg, k)) for k in ("steps", "seq_len", "lr", "warmup", "ema", "dropout")] == [int, int, float,
                                                                                                    int, float, float]
    assert (cfg.steps, cfg.seq_len, cfg.lr, cfg.warmup, cfg.ema) == (7, 48, 0.5, 2, 0.0)
    assert json.loads(json.dumps(cfg.to_dict()))["lr"] == 0.5


def test_validation_without_progress_prints_no_bar(capfd):
    class Sums:
        def bound_draw(self, batch, seq_len, generator):
            return {}

        def bound(self, model, x, draws):
            return x.double().sum(1)

    val = PackedDataset(np.random.default_rng(3).integers(0, 50, size=5 * 9 + 2), 5)
    capfd.readouterr()
    validation_nll_per_window(None, Sums(), val, sequences=9, batch_size=2, seed=1, device=torch.device("cpu"))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    validation_nll_per_window(None, Sums(), val, sequences=9, batch_size=2, seed=1, device=torch.device("cpu"),
                              progress=True)
    assert "eval" in capfd.readouterr().err


def _small(tmp_path, corpus, **kw):
    return TrainConfig(**tiny(tmp_path, corpus, **{**dict(objective="mdlm", hidden=16, layers=1, heads=2, seq_len=24,
                                                          batch_size=6, ema=0), **kw}))


def _recording_steps(trainer):
    """Wraps the optimizer's step: records (its lr, float64 copies of the gradients it applies)."""
    seen, real = [], trainer.opt.step

    def step(*a, **k):
        seen.append((trainer.opt.param_groups[0]["lr"], [p.grad.double().clone() for p in trainer.params]))
        return real(*a, **k)

    trainer.opt.step = step
    return seen


def test_each_optimizer_step_runs_at_its_own_scheduled_learning_rate(tmp_path, corpus):
    """Step k (1-based) of a warm-up of W runs at lr * k / W; the cosine then runs from lr at step W + 1
    down to lr * min_lr_ratio at the last step. Checked on the lr the step logs, the lr the optimizer
    steps with, and the weights' first move (Adam's first update is lr * sign(grad))."""
    lr, warmup, steps, ratio = 2e-3, 3, 8, 0.25
    t = Trainer(_small(tmp_path, corpus, lr=lr, warmup=warmup, steps=steps, min_lr_ratio=ratio, grad_clip=0))
    seen = _recording_steps(t)
    span = steps - 1 - warmup
    want = [lr * k / warmup for k in range(1, warmup + 1)] + \
           [lr * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * j / span))) for j in range(span + 1)]
    assert want[warmup] == pytest.approx(lr) and want[-1] == pytest.approx(lr * ratio)
    before = [p.detach().double().clone() for p in t.params]
    logged = []
    for k in range(steps):
        logged.append(t.train_step()["lr"])
        if k == 0:
            moved = torch.cat([(p.detach().double() - b).abs().flatten() for p, b in zip(t.params, before)])
            grads = torch.cat([g.abs().flatten() for g in seen[0][1]])
            big = grads > 1e-5  # Adam's eps (1e-8) is negligible beside these
            assert big.sum() > 100
            torch.testing.assert_close(moved[big], torch.full_like(moved[big], lr / warmup), rtol=1e-3, atol=0)
    assert logged == pytest.approx(want, rel=1e-12)
    assert [lr_used for lr_used, _ in seen] == pytest.approx(want, rel=1e-12)


def test_the_gradient_is_clipped_to_grad_clip_keeping_its_direction(tmp_path, corpus):
    """A clip below the step's gradient norm scales the applied gradient to that norm; a clip above it
    leaves it as it is. grad_norm is the norm before clipping."""
    applied, norms = {}, {}
    for clip in (0.0, 1e-3, 1e6):
        t = Trainer(_small(tmp_path / str(clip), corpus, grad_clip=clip, cache_dir=str(tmp_path / "c")))
        seen = _recording_steps(t)
        norms[clip] = t.train_step()["grad_norm"]
        applied[clip] = seen[0][1]
    full = torch.cat([g.flatten() for g in applied[0.0]])
    assert norms[1e-3] == norms[0.0] == pytest.approx(full.norm().item(), rel=1e-5) and norms[0.0] > 1e-2
    clipped = torch.cat([g.flatten() for g in applied[1e-3]])
    assert clipped.norm().item() == pytest.approx(1e-3, rel=1e-4)
    torch.testing.assert_close(clipped, full * (1e-3 / full.norm()), rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(torch.cat([g.flatten() for g in applied[1e6]]), full, rtol=0, atol=0)


def test_a_constant_schedule_warms_up_too():
    """--schedule constant still takes --warmup's linear ramp (the timed runs train that way: warmup 50)."""
    from dllm.training import lr_at

    lr, warmup = 0.37, 5
    c = TrainConfig(lr=lr, warmup=warmup, steps=40, schedule="constant")
    assert [lr_at(c, s) for s in range(warmup)] == pytest.approx([lr * (s + 1) / warmup for s in range(warmup)], rel=1e-12)
    assert all(lr_at(c, s) == lr for s in range(warmup, 40))


def test_validation_runs_the_model_without_dropout(tmp_path, corpus):
    """Validation scores the model in eval mode: with dropout 0.5 it gives the same numbers whatever torch's
    generator holds, those of the model put in eval mode by hand, and the model is left training."""
    from dllm.training.evaluation import validation_nll

    t = Trainer(_small(tmp_path, corpus, dropout=0.5, ema=0.9, eval_batches=1))
    for _ in range(3):  # the blocks' gates start at zero: a step or two make the dropped branches count
        t.train_step()
    x = t.data.val.get(range(2))
    with torch.no_grad():
        assert not torch.equal(t.raw_model(x, None), t.raw_model(x, None))  # dropout is on in training
    torch.manual_seed(1)
    first = t.evaluate()
    torch.manual_seed(2)
    second = t.evaluate()
    assert first == second and t.raw_model.training
    t.raw_model.eval()
    nats = validation_nll(t.raw_model, t.objective, t.data.val, sequences=6, batch_size=6, seed=t.cfg.seed,
                          device=torch.device("cpu"))
    assert first["val_nll_per_token"] == pytest.approx(nats, rel=1e-6)


def test_a_resumed_run_counts_the_training_seconds_of_the_steps_before_it(tmp_path, corpus, monkeypatch):
    """tok_per_s and the checkpoint's train_time cover every step of the run, those before the resume too."""
    import types

    import dllm
    import dllm.training.trainer as trainer_module
    from dllm.training import load_checkpoint

    ticks = iter(range(10**6))  # every reading of the clock is one second after the last: a step takes 1 s
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    B, L = 6, 24
    opts = tiny(tmp_path, corpus, objective="mdlm", hidden=16, layers=1, heads=2, seq_len=L, batch_size=B, ema=0,
                eval_batches=1)
    first = dllm.train(**{**opts, "steps": 2})
    assert first["tok_per_s"] == pytest.approx(B * L)
    resumed = dllm.train(**{**opts, "steps": 5})
    assert resumed["step"] == 5 and resumed["tokens"] == 5 * B * L
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["train_time"] == pytest.approx(5.0)
    assert resumed["tok_per_s"] == pytest.approx(B * L)


def test_the_ema_averages_the_weights_each_step_leaves(tmp_path, corpus):
    """After optimizer step n the EMA is d_n * EMA + (1 - d_n) * the weights that step produced,
    d_n = min(decay, (1 + n) / (10 + n)): the last step's weights are in it, not left to the next update."""
    decay = 0.5
    t = Trainer(_small(tmp_path, corpus, ema=decay, lr=1e-2))
    shadow = [p.detach().double().clone() for p in t.params]
    for n in range(1, 4):
        t.train_step()
        d = min(decay, (1 + n) / (10 + n))
        shadow = [d * s + (1 - d) * p.detach().double() for s, p in zip(shadow, t.params)]
        for s, got in zip(shadow, t.ema.shadow):
            torch.testing.assert_close(got.double(), s, rtol=1e-5, atol=1e-7)
    assert max((s - p.detach().double()).abs().max().item() for s, p in zip(shadow, t.params)) > 1e-3


def test_validation_runs_under_the_runs_autocast(tmp_path, corpus):
    """evaluate() scores under the precision the run trains in (bf16 autocast on CUDA; a CPU autocast
    stands in for it here), as `dllm eval` does: the model's and the EMA's numbers both."""
    from dllm.training.evaluation import validation_nll

    t = Trainer(_small(tmp_path, corpus, ema=0.9, eval_batches=1))
    for _ in range(2):
        t.train_step()
    t.amp = torch.autocast("cpu", dtype=torch.bfloat16)
    got = t.evaluate()
    t.raw_model.eval()
    kw = dict(sequences=6, batch_size=6, seed=t.cfg.seed, device=torch.device("cpu"))
    bf16 = validation_nll(t.raw_model, t.objective, t.data.val, amp=torch.autocast("cpu", dtype=torch.bfloat16), **kw)
    fp32 = validation_nll(t.raw_model, t.objective, t.data.val, **kw)
    assert abs(bf16 - fp32) > 1e-6 * fp32  # the two precisions tell apart (by far more than rel=1e-9 below)
    assert got["val_nll_per_token"] == pytest.approx(bf16, rel=1e-9)
    with t.ema.applied():
        ema_bf16 = validation_nll(t.raw_model, t.objective, t.data.val,
                                  amp=torch.autocast("cpu", dtype=torch.bfloat16), **kw)
    assert got["val_nll_per_token_ema"] == pytest.approx(ema_bf16, rel=1e-9)


def test_a_second_ctrl_c_interrupts_at_once():
    """The first Ctrl-C asks for a stop at the step's end; a second one raises KeyboardInterrupt at once."""
    import os
    import signal

    from dllm.training.trainer import _StopAtStepOnInterrupt

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with _StopAtStepOnInterrupt(True) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(100):  # the handler runs between bytecodes
                    time.sleep(0.001)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_training_forward_runs_under_the_runs_autocast(tmp_path, corpus):
    """Every micro-batch's forward runs under the run's autocast (bf16 on CUDA; a CPU autocast stands in
    for it here): the output of each of the three micro-batches is bfloat16."""
    dtypes = []
    t = Trainer(_small(tmp_path, corpus, grad_accum=3))
    t.raw_model.output_layer.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    t.amp = torch.autocast("cpu", dtype=torch.bfloat16)
    t.train_step()
    assert dtypes == [torch.bfloat16] * 3


def test_ddp_accumulation_all_reduces_the_gradient_once_after_the_last_micro_batch(tmp_path, corpus, monkeypatch):
    """Under DDP the micro-batches before the last run in no_sync() (their gradients accumulate locally)
    and the last one's backward all-reduces the sum: a sync on another micro-batch would leave every
    rank with gradients of its own. A stand-in for DDP's wrapper records which forwards ran in no_sync."""
    import contextlib

    t = Trainer(_small(tmp_path, corpus, grad_accum=3))  # batch 6: 2 processes x 3 micro-batches of 1

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.syncing, self.forwards = module, True, []

        def forward(self, *args, **kwargs):
            self.forwards.append(self.syncing)
            return self.module(*args, **kwargs)

        @contextlib.contextmanager
        def no_sync(self):
            self.syncing = False
            try:
                yield
            finally:
                self.syncing = True

    t.model, t.world = Wrapper(t.raw_model), 2
    reduced = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor, *a, **k: reduced.append(tensor.clone()))
    out = t.train_step()
    assert t.model.forwards == [False, False, True]
    assert len(reduced) == 1 and math.isfinite(out["loss"])
