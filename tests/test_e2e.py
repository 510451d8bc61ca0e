"""`dllm bench e2e`: the quality metrics on hand-made inputs, and a CI-sized run on the CPU with tiny models."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _train_helpers import make_corpus

from dllm.benchmarks.code_quality import (blank_rate, cut_at, exact_match, held_out_functions, parse_rate,
                                          parseable_prefix, parses, unigram_entropy)
from dllm.benchmarks import e2e
from dllm.benchmarks.common import quantile
from dllm.benchmarks.e2e import BLOCK_LENGTH, _diffusion_steps, nll_per_window
from dllm.cli import main
from dllm.data.tokenizer import ByteTokenizer, load_tokenizer
from dllm.models.io import read_config
import numpy as np

GOOD = ["x = 1\n", "def f(a):\n    return a + 1\n", "class A:\n    pass\n", "import os  # a comment\n"]
BAD = ["def f(:\n", "x = (1,\n", "    return 1\n", "if x\n    y\n"]

SMALL_FUNCTIONS = '''

def _e2e_add(a, b):
    """Sum of two numbers."""
    return a + b


def _e2e_twice(x):
    return 2 * x


class _E2E:
    def size(self):
        return len(self.items)
'''


def corpus_with_small_functions(root):
    """make_corpus's files, each ending in SMALL_FUNCTIONS: whichever file is held out has functions short
    enough to infill, whatever the running Python's sources hold (3.13's held-out part has none)."""
    corpus = make_corpus(root)
    for f in corpus.iterdir():
        f.write_text(f.read_text() + SMALL_FUNCTIONS)
    return corpus


def test_parse_rate_of_known_code():
    assert all(parses(t) for t in GOOD) and not any(parses(t) for t in BAD)
    assert parse_rate(GOOD + BAD) == 0.5
    assert parse_rate(["x = 1\x00"]) == 0.0  # a null byte is a failure, not a crash
    assert math.isnan(parse_rate([]))
    blank = ["", "\n" + " " * 60, "# a comment\n"]  # ast.parse accepts them, but they hold no code
    assert parse_rate(blank) == 0.0 and blank_rate(blank + ["x = 1", "def f(:"]) == pytest.approx(3 / 5)


def test_parseable_prefix_counts_whole_lines():
    assert parseable_prefix("x = 1\ny = 2\n") == 1.0
    assert parseable_prefix("x = 1\ny = 2\nz = (") == pytest.approx(2 / 3)
    assert parseable_prefix("def f(:\nx = 1\n") == 0.0
    assert parseable_prefix("") == 0.0 and parseable_prefix("\n\n   \n") == 0.0
    # lines are Python's (\n, \r\n, \r), not str.splitlines' (form feed, \x1c, \u2028, ...): the prefix judged
    # is a prefix of the text, so text that does not parse never earns full credit
    assert parseable_prefix("x = 1\ry = 2\r\n") == 1.0
    assert not parses("x = 1\x0cy = 2") and parseable_prefix("x = 1\x0cy = 2") == 0.0
    assert parseable_prefix("x = 1\ny = 2\u2028z = 3\n") == pytest.approx(1 / 2)


def test_entropy_of_known_distributions():
    assert unigram_entropy([7] * 10) == 0.0 and math.copysign(1, unigram_entropy([7] * 10)) == 1  # no "-0.00"
    assert unigram_entropy([0, 1, 2, 3]) == pytest.approx(2.0)
    assert math.isnan(unigram_entropy([]))  # no samples: no entropy, and no division by zero
    # p = (1/2, 1/4, 1/4): H = 1/2 + 2 * 1/4 * 2 = 1.5 bits
    assert unigram_entropy(torch.tensor([5, 5, 6, 9]).tolist()) == pytest.approx(1.5)
    probs = torch.tensor([3, 1, 1, 5], dtype=torch.float64) / 10
    tokens = [i for i, c in enumerate((3, 1, 1, 5)) for _ in range(c)]
    assert unigram_entropy(tokens) == pytest.approx(-(probs * probs.log2()).sum().item())


def test_exact_match_and_cut():
    assert exact_match(["a", "b ", "c"], ["a", "b", "c"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match(["a", "b"], ["a"])
    assert cut_at([1, 2, 9, 3], 9) == [1, 2] and cut_at([1, 2], 9) == [1, 2]


def test_sample_entropy_pools_the_samples_cut_at_end_of_text():
    """The report judges samples up to their first end-of-text: the token entropy too, not only the text."""
    from types import SimpleNamespace

    from dllm.benchmarks.e2e import _sample_quality

    tok = load_tokenizer("byte")
    eos = tok.eos_id
    code = list(b"x = 1\n")
    rows = [code + [eos] + list(range(100, 100 + 16 - len(code) - 1)),  # a second file after the end-of-text
            [eos] + list(range(200, 215)),                              # nothing before it
            code + [eos] * (16 - len(code))]

    class Runner:
        m = SimpleNamespace(tok=tok)

        def generator(self):
            return None

        def call(self, model, sampler, steps, length, batch, g, first=0):
            return torch.tensor(rows[:batch]), steps

    q = _sample_quality(Runner(), "ar", None, 16, 16, samples=3, chunk=3)
    assert q["parse_rate"] == pytest.approx(2 / 3) and q["blank_rate"] == pytest.approx(1 / 3)
    assert q["entropy"] == pytest.approx(unigram_entropy(code + code))
    assert q["token_counts"] == [4, 2, 2, 2, 2]  # "x = 1\n" twice: the spaces, then x, =, 1 and the newline
    # tokens written: 6, 0 and 6 before each first end-of-text; the standard error of those three
    assert q["written"] == pytest.approx(4.0) and q["written_se"] == pytest.approx(statistics.stdev([6, 0, 6]) / 3 ** 0.5)
    # a point whose samples all end at once wrote no tokens: no diversity, 0 bits (not NaN, which no rule catches)
    rows = [[eos] + list(range(100, 115))] * 3
    assert _sample_quality(Runner(), "ar", None, 16, 16, samples=3, chunk=3)["entropy"] == 0.0


def test_held_out_functions_mask_bodies_after_docstrings():
    tok = load_tokenizer("byte")
    text = "import os\n" + SMALL_FUNCTIONS
    tasks = held_out_functions([("m.py", text)], tok, max_body=40, min_body=4, before=30, after=10, count=10)
    bodies = sorted(t.body_text for t in tasks)
    assert bodies == ["return 2 * x", "return a + b", "return len(self.items)"]
    for t in tasks:
        assert tok.decode(t.before + t.body + t.after) in text and len(t.before) == 30
        assert t.function_parses(t.body_text) and not t.function_parses("return (")
    add = next(t for t in tasks if t.body_text == "return a + b")
    assert not add.function_parses("") and not add.function_parses("\n   ")  # the docstring alone is no fill
    assert tok.decode(add.before).endswith('"""Sum of two numbers."""\n    ')
    assert held_out_functions([("m.py", text)], tok, max_body=11, min_body=4, before=30, after=10, count=10) == []


def test_step_grid():
    assert [_diffusion_steps("mdlm", 64, f) for f in (1, 0.5, 0.125)] == [64, 32, 8]
    assert _diffusion_steps("llada", 128, 1 / 8) == 16       # 4 blocks of 32: a multiple of 4
    assert _diffusion_steps("llada", 96, 1 / 32) == 3        # 3 steps for 3 blocks
    assert _diffusion_steps("fast-dllm", 64, None) == 1


class _Uniform(torch.nn.Module):
    """Logits that ignore the input: every NLL is log(vocab) per predicted token."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, sigma=None):
        return torch.zeros(*x.shape, self.vocab) + self.anchor


def test_nll_bound_against_a_hand_computation():
    from dllm.objectives import get_objective

    tok = load_tokenizer("byte")
    windows = torch.randint(0, 256, (6, 10), generator=torch.Generator().manual_seed(0))
    net = _Uniform(tok.vocab_size)
    kw = dict(seed=3, device="cpu", precision=torch.autocast("cpu", enabled=False))
    ar_nll = nll_per_window(net, get_objective("ar", tok), windows, None, **kw).mean().item()
    assert ar_nll == pytest.approx(math.log(tok.vocab_size))
    # MDLM, T steps: each window draws t = i/T and weights the CE of its masked tokens by 1/t.
    mdlm = get_objective("mdlm", tok)
    for steps in (1, 4):
        g = torch.Generator().manual_seed(3)
        draws = mdlm.draw(6, 10, g)
        stratum = torch.randperm(6, generator=g)  # the strata of the grid, dealt to the windows at random
        i = ((stratum + torch.rand(6, generator=g)) / 6 * steps).floor().clamp(max=steps - 1) + 1
        t = (i / steps).double()
        # the samplers' process: mask rate t (all masked at t = 1), not training's (1 - eps) t
        masked = (draws["u"] < t.float()[:, None]).double().sum(1)
        # SUBS: the mask is no answer, so a uniform model pays log(vocab - 1) per masked token
        expected = (masked / t * math.log(tok.vocab_size - 1)).sum().item() / windows.numel()
        got = nll_per_window(net, mdlm, windows, steps, **kw).mean().item()
        assert expected > 0 and got == pytest.approx(expected, rel=1e-4)
    # T = 1: every token masked at t = 1, so the bound is the uniform model's exact NLL
    assert nll_per_window(net, mdlm, windows, 1, **kw).mean().item() == pytest.approx(math.log(tok.vocab_size - 1))
    # the continuous-time bound is exact for it too: L / k times the log(vocab - 1) of k masked tokens
    got = nll_per_window(net, mdlm, windows, None, **kw)
    torch.testing.assert_close(got, torch.full((6,), math.log(tok.vocab_size - 1), dtype=torch.float64))


def test_nll_bound_strata_are_dealt_to_the_windows_at_random():
    """Each window's time lies in one stratum of the grid; the strata must go to the windows at random, or
    the mean over windows estimates a mix of early windows at small t and late ones at large t."""

    class Linear:
        """A window's 'NLL' is its first token times t: its T-step bound is x0[0] (T + 1) / (2 T)."""

        def draw(self, n, length, g):
            return {"t": torch.zeros(n), "u": torch.rand(n, length, generator=g)}

        def step_bound(self, net, x0, draws):
            return x0[:, 0].double() * draws["t"].double() * x0.shape[1]

        def bound_draw(self, n, length, g):
            return self.draw(n, length, g)

        bound = step_bound

    n = steps = 8
    windows = torch.arange(n)[:, None].repeat(1, 4)  # harder windows later, as files of the held-out split may be
    bound = windows[:, 0].double().mean().item() * (steps + 1) / (2 * steps)
    kw = dict(device="cpu", precision=torch.autocast("cpu", enabled=False))
    means = [nll_per_window(None, Linear(), windows, steps, seed=s, **kw).mean().item() for s in range(400)]
    # window k always at t = (k + 1) / 8 gave 2.625 for every seed, against a bound of 1.97
    assert statistics.mean(means) == pytest.approx(bound, abs=0.06) and statistics.stdev(means) > 0

    # The continuous-time bound's draws (the number of masked tokens k, stratified over the windows)
    # deal their strata at random too: one k in each 1/n of {1, ..., L}, in a random order.
    from dllm.objectives.base import draw_mask_counts

    n, L = 8, 64
    ks = torch.stack([draw_mask_counts(n, L, torch.Generator().manual_seed(s))["k"] for s in range(400)])
    assert torch.equal(((ks - 1) * n // L).sort(-1).values, torch.arange(n).expand(400, n))
    first = ks[:, 0].double()  # window 0 meets every stratum: its mean k is (L + 1) / 2, not that of the first
    assert first.mean().item() == pytest.approx((L + 1) / 2, abs=3) and first.min() <= L / n < first.max()


def test_bench_e2e_cpu_run(tmp_path, monkeypatch, capsys):
    load_models = e2e._load_models
    # a folder whose name is not UTF-8 (as a non-ASCII one reaches Python under an ASCII locale): report.md names it
    corpus = corpus_with_small_functions(tmp_path / "corpus caf\udce9")
    monkeypatch.setenv("DLLM_CACHE", str(tmp_path / "cache"))
    # training and loading the models see a load of 9, the sweep 1: the report gives the sweep's
    loaded = []
    monkeypatch.setattr(e2e, "_load_models", lambda *a: loaded.append(1) or load_models(*a))
    monkeypatch.setattr(e2e.os, "getloadavg", lambda: (1.0 if loaded else 9.0, 0.0, 0.0))
    out = tmp_path / "report"
    args = ["bench", "e2e", "--size", "tiny", "--minutes", "0.04", "--data", str(corpus), "--gen-lengths", "16", "32",
            "--batch-sizes", "1", "2", "--step-fractions", "1", "1/2", "--samples", "3", "--reps", "1",
            "--nll-windows", "3", "--device", "cpu", "--threads", "1", "--out-dir", str(out), "--train-dir", str(tmp_path / "models")]
    # --train-only trains both models and stops before the sweep; the full call then reuses them
    assert main(args + ["--train-only"]) == 0
    assert not loaded and not (out / "report.md").exists()
    assert all((tmp_path / "models" / name / "model").is_dir() for name in ("mdlm", "ar"))
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("[e2e] reusing") == 2
    for name in ("report.md", "results.json", "throughput.png", "quality.png", "frontier.png"):
        assert (out / name).stat().st_size > 0
    res = json.loads((out / "results.json").read_text())
    # the grid: per length, AR once, mdlm and llada at both step fractions, fast-dllm once (adaptive)
    expected = {("kv-cache", 16): [16], ("kv-cache", 32): [32], ("mdlm", 16): [16, 8], ("mdlm", 32): [32, 16],
                ("llada", 16): [16, 8], ("llada", 32): [32, 16], ("fast-dllm", 16): [1], ("fast-dllm", 32): [1]}
    got: dict = {}
    for r in res["quality"]:
        got.setdefault((r["sampler"], r["gen_length"]), []).append(r["steps"])
    assert got == expected
    assert sorted((r["sampler"], r["gen_length"], r["steps"], r["batch"]) for r in res["throughput"]) == sorted(
        (s, length, st, b) for (s, length), steps in expected.items() for st in steps for b in (1, 2))
    numbers = [v for r in res["quality"] + res["throughput"] for v in r.values() if isinstance(v, float)]
    assert numbers and all(math.isfinite(v) for v in numbers)
    # infill ran round(fraction x body) steps, the same at both lengths: half the steps at fraction 1/2
    infill = {(r["sampler"], r["fraction"]): r["infill_steps"] for r in res["quality"] if r["gen_length"] == 16}
    assert all(r["infill_steps"] == infill[r["sampler"], r["fraction"]] for r in res["quality"])
    assert infill["mdlm", "1"] == infill["kv-cache", None] > infill["mdlm", "1/2"] >= infill["mdlm", "1"] / 2 - 0.5
    for r in res["quality"]:
        assert 0 <= r["parse_rate"] <= 1 - r["blank_rate"] and 0 <= r["infill_exact"] <= 1
        assert r["entropy"] <= math.log2(258) and r["nll"] > 0 and r["nll_se"] > 0
    assert not (out / "partial.json").exists()  # the interim results give way to the report
    # the tables list each point's batches together, in the order of the quality rows
    assert [(r["sampler"], r["gen_length"], r["steps"]) for r in res["throughput"][::2]] == \
        [(r["sampler"], r["gen_length"], r["steps"]) for r in res["quality"]]
    for r in res["throughput"]:
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * r["gen_length"] / (r["latency_ms"] * 1e-3))
        assert r["spread_ms"][0] <= r["latency_ms"] <= r["spread_ms"][1]
    # each step count has its own bound; fast-dllm's nfe is measured (its blocks here are the whole length)
    nll = {(r["sampler"], r["gen_length"], r["steps"]): r["nll"] for r in res["quality"]}
    assert nll["mdlm", 32, 32] != nll["mdlm", 32, 16] and nll["mdlm", 32, 16] == nll["llada", 32, 16]
    assert all(1 <= r["nfe"] <= r["gen_length"] for r in res["throughput"] if r["sampler"] == "fast-dllm")
    report = (out / "report.md").read_text(encoding="utf-8", errors="surrogateescape")  # the name's bytes, as they were
    assert f"Held-out text: the validation split of {corpus}." in report
    meta = res["meta"]
    assert meta["load_average"] == [1.0, 1.0] and meta["sizes"] == {"mdlm": "tiny", "ar": "tiny"}
    assert meta["torch"] == torch.__version__ and meta["card"].startswith("CPU") and meta["commit"]
    assert f"torch {torch.__version__}" in report and "KV cache" in report and "dllm.ops.predict_masked" in report
    assert "sampling: dllm.ops.sample_categorical (C++ CPU kernel)" in report  # the baseline's kernels, named
    assert len(re.findall(r"^\| diffusion \(mdlm\) \| llada \|", report, flags=re.M)) == 2 * 2 * 2 + 2 * 2  # speed + quality
    assert "latency ms (one run)" in report and " ± " in report
    # one noise draw a window: the report does not read the bounds' order off differences within the noise
    assert "one draw of the noise" in report and "within about two standard errors is no evidence" in report
    # the bounds' window is the training one, which the report names since it is not the generation length
    assert f"held-out windows of {meta['seq_len']} tokens, the training window" in report
    # the answer: a verdict a (length, batch), each naming the baseline's speed and a diffusion point
    assert [(v["gen_length"], v["batch"]) for v in res["verdict"]] == [(16, 1), (16, 2), (32, 1), (32, 2)]
    for v in res["verdict"]:
        ar = next(r for r in res["throughput"] if r["sampler"] == "kv-cache" and r["gen_length"] == v["gen_length"]
                  and r["batch"] == v["batch"])
        assert v["ar_tokens_per_s"] == ar["tokens_per_s"] and v["fastest"]["speedup_vs_ar"] > 0
    assert "## Where diffusion is faster at equal quality" in report and "(length, batch) points" in report
    # the verdict's entropies at equal token counts: every quality row keeps its tokens' counts
    assert all("token_counts" in r for r in res["quality"]) and "at the smaller one's token count" in report
    assert all(r["samples"] == 3 and r["parse_prefix_se"] >= 0 for r in res["quality"])


def test_an_interrupted_sweep_goes_on_from_its_partial_results(tmp_path, monkeypatch, capsys):
    """A sweep cut short (a device call's time limit) keeps its finished points in partial.json; the
    same sweep called again measures only the rest, and one of another grid starts over."""
    corpus = corpus_with_small_functions(tmp_path / "corpus")
    monkeypatch.setenv("DLLM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    args = ["bench", "e2e", "--size", "tiny", "--minutes", "0.02", "--data", str(corpus), "--gen-lengths", "16",
            "--batch-sizes", "1", "2", "--step-fractions", "1", "--samplers", "mdlm", "--samples", "2", "--reps", "1",
            "--nll-windows", "2", "--device", "cpu", "--threads", "1", "--out-dir", str(out),
            "--train-dir", str(tmp_path / "models")]
    assert main(args + ["--train-only"]) == 0
    calls = {"quality": 0, "infill": 0, "throughput": 0}

    def counted(name, fn, stop_at=None):
        def call(*a, **k):
            calls[name] += 1
            if calls[name] == stop_at:
                raise KeyboardInterrupt
            return fn(*a, **k)
        return call

    quality, infill, throughput = e2e._sample_quality, e2e._infill_quality, e2e._throughputs_in_turns
    monkeypatch.setattr(e2e, "_sample_quality", counted("quality", quality))
    monkeypatch.setattr(e2e, "_infill_quality", counted("infill", infill))
    # the second (length, batch) group of timings is interrupted
    monkeypatch.setattr(e2e, "_throughputs_in_turns", counted("throughput", throughput, stop_at=2))
    assert main(args) == 130
    saved = json.loads((out / "partial.json").read_text())
    assert len(saved["quality"]) == 2 and [(i, batch) for i, batch, _ in saved["timed"]] == [(0, 1), (1, 1)]
    assert calls == {"quality": 2, "infill": 2, "throughput": 2}
    capsys.readouterr()

    monkeypatch.setattr(e2e, "_throughputs_in_turns", counted("throughput", throughput))
    assert main(args) == 0
    assert "2 quality points and 2 throughput rows measured by an earlier call" in capsys.readouterr().out
    assert calls == {"quality": 2, "infill": 2, "throughput": 3}  # only the batch-2 group again
    res = json.loads((out / "results.json").read_text())
    assert res["quality"] == saved["quality"] and res["meta"]["resumed"] == {"quality_points": 2, "throughput_rows": 2}
    assert "2 quality points and 2 throughput rows are that call's" in (out / "report.md").read_text()
    assert [(r["sampler"], r["batch"]) for r in res["throughput"]] == [
        ("kv-cache", 1), ("kv-cache", 2), ("mdlm", 1), ("mdlm", 2)]
    assert {r["latency_ms"] for r in res["throughput"] if r["batch"] == 1} == {
        row["latency_ms"] for _, _, row in saved["timed"]}
    assert not (out / "partial.json").exists()

    # another grid's partial results are not taken up, nor those of a model retrained into the same folder
    (out / "partial.json").write_text(json.dumps({**saved, "sweep": {**saved["sweep"], "samples": 3}}))
    assert main(args) == 0
    assert "holds another sweep's results" in capsys.readouterr().out
    assert calls == {"quality": 4, "infill": 4, "throughput": 5}
    assert json.loads((out / "results.json").read_text())["meta"]["resumed"] is None
    assert "went on from an earlier one" not in (out / "report.md").read_text()
    (out / "partial.json").write_text(json.dumps(saved))
    model_dir = Path(saved["sweep"]["model_dirs"]["mdlm"])
    weights = max((f for f in model_dir.iterdir() if f.is_file()), key=lambda f: f.stat().st_size)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert main(args) == 0
    assert "holds another sweep's results" in capsys.readouterr().out and calls["quality"] == 6


def test_e2e_throughput_times_the_points_in_turns():
    from dllm.benchmarks.e2e import _throughputs_in_turns

    calls = []

    class Runner:
        device = "cpu"

        def generator(self):
            return torch.Generator().manual_seed(0)

        def call(self, model, sampler, steps, length, batch, g, first=0):
            calls.append(sampler)
            return None, steps

    points = [("ar", None, 8), ("mdlm", "mdlm", 4), ("mdlm", "llada", 2)]
    rows = _throughputs_in_turns(Runner(), points, length=8, batch=3, reps=2)
    # one warm-up each, then the timed calls alternate: a load that drifts meets every point alike
    assert calls == [None, "mdlm", "llada"] * 3
    assert [r["nfe"] for r in rows] == [8, 4, 2] and all(r["batch"] == 3 for r in rows)
    assert all(r["tokens_per_s"] == pytest.approx(24 / (r["latency_ms"] * 1e-3)) for r in rows)


def test_quality_plot_places_infill_at_the_steps_it_ran():
    import matplotlib.pyplot as plt

    from dllm.benchmarks.e2e_report import INFILL_METRICS, SAMPLE_METRICS, quality_figure

    # infill is shared by the lengths and ran round(fraction x body) steps: 6 and 3 here, whatever the length
    rows = [{"gen_length": length, "sampler": sampler, "steps": steps, "quality_nfe": 2.5 * length,
             "infill_steps": infill_steps, "infill_nfe": 4.5,
             **{key: 0.5 for key, _ in SAMPLE_METRICS + INFILL_METRICS}}
            for length in (16, 32)
            for sampler, steps, infill_steps in (("kv-cache", length, 6.0), ("mdlm", length, 6.0),
                                                 ("mdlm", length // 2, 3.0), ("fast-dllm", 1, 1.0))]
    data = {"parse_prefix": 0.25, "parse_rate": 0.125, "entropy": 4.5}  # the held-out text's, at 16 tokens only
    fig = quality_figure({"meta": {"grid": {"gen_lengths": [16, 32]}, "reference": {"16": data}}, "quality": rows})
    axes = fig.axes

    def xs(ax, label):
        return [list(line.get_xdata()) for line in ax.get_lines() if line.get_label() == label]

    ncols = 3  # two lengths and infill
    for i, (key, label) in enumerate(SAMPLE_METRICS):  # the samples' steps, and fast-dllm's nfe
        assert axes[i * ncols].get_ylabel() == label and axes[i * ncols + 1].get_ylabel() == label
        assert xs(axes[i * ncols + 1], "diffusion, mdlm") == [[32, 16]]
        assert xs(axes[i * ncols + 1], "diffusion, fast-dllm") == [[80.0]]
        held_out = [list(line.get_ydata()) for line in axes[i * ncols].get_lines() if line.get_label() == "held-out text"]
        assert held_out == ([[data[key]] * 2] if key in data else []), key  # the NLL has no held-out value
        assert not xs(axes[i * ncols + 1], "held-out text")
    for i, (key, label) in enumerate(INFILL_METRICS):  # entropy too, and at infill's own steps
        ax = axes[i * ncols + 2]
        assert ax.get_ylabel() == label and xs(ax, "diffusion, mdlm") == [[6.0, 3.0]]
        assert xs(ax, "diffusion, fast-dllm") == [[4.5]] and len(xs(ax, "autoregressive")) == 1
    assert "infill steps" in axes[(len(INFILL_METRICS) - 1) * ncols + 2].get_xlabel()
    assert not axes[-1].axison  # the infill column has a row fewer
    plt.close(fig)


def test_tokens_per_s_axes_carry_numbers_on_short_ranges():
    import matplotlib.pyplot as plt

    from dllm.benchmarks.e2e_report import frontier_figure, throughput_figure

    # 232-579 tokens/s holds no power of ten: matplotlib's log axis alone would label nothing
    speeds = {("kv-cache", 8): 579.0, ("mdlm", 8): 232.0, ("mdlm", 4): 410.0, ("llada", 4): 388.0}
    throughput = [{"batch": 1, "gen_length": 8, "sampler": sampler, "steps": steps, "fraction": f"{steps}/8",
                   "nfe": steps, "tokens_per_s": v, "model": "autoregressive" if sampler == "kv-cache" else
                   "diffusion (mdlm)"} for (sampler, steps), v in speeds.items()]
    quality = [{"sampler": sampler, "gen_length": 8, "steps": steps, "fraction": f"{steps}/8", "nll": 3.0 + steps / 10,
                "parse_prefix": 0.5, "entropy": 4.0} for sampler, steps in speeds]
    results = {"meta": {"grid": {"batch_sizes": [1], "gen_lengths": [8]}, "card": "cpu"},
               "throughput": throughput, "quality": quality}
    for figure, which in ((throughput_figure, "y"), (frontier_figure, "x")):
        fig = figure(results)
        fig.canvas.draw()
        for ax in fig.axes:
            axis, (lo, hi) = (ax.yaxis, ax.get_ylim()) if which == "y" else (ax.xaxis, ax.get_xlim())
            labels = [t.label1.get_text() for t in axis.get_major_ticks()
                      if lo <= t.get_loc() <= hi and t.label1.get_visible()]
            assert len([text for text in labels if text]) >= 2, (figure.__name__, labels)
        plt.close(fig)


def test_bench_e2e_trains_the_missing_baseline_on_the_given_models_data(tmp_path, monkeypatch):
    from dllm.training import train

    from _train_helpers import tiny

    corpus = corpus_with_small_functions(tmp_path / "corpus")
    monkeypatch.setenv("DLLM_CACHE", str(tmp_path / "cache"))
    train(**tiny(tmp_path / "mdlm", corpus, tokenizer="bpe", bpe_vocab_size=300, steps=2, seq_len=64))
    given = tmp_path / "mdlm" / "run" / "model"
    main(["bench", "e2e", "--size", "tiny", "--minutes", "0.02", "--gen-lengths", "16",
          "--batch-sizes", "1", "--step-fractions", "1", "--samplers", "mdlm", "--samples", "1", "--reps", "1",
          "--nll-windows", "1", "--device", "cpu", "--threads", "1", "--model-dir", str(given),
          "--out-dir", str(tmp_path / "report"), "--train-dir", str(tmp_path / "models")])
    baseline = json.loads((tmp_path / "models" / "ar" / "run_config.json").read_text())["train"]
    # the given one's optimisation (batch 8, lr 3e-3, cosine after 2 warm-up steps, EMA 0.9999), window and,
    # without --train-steps, its 2 steps: not the timed runs' batch 16, constant 1e-3 and 20000 steps
    assert (baseline["batch_size"], baseline["lr"], baseline["schedule"], baseline["warmup"], baseline["ema"],
            baseline["seq_len"], baseline["steps"]) == (8, 3e-3, "cosine", 2, 0.9999, 64, 2)
    assert baseline["tokenizer"] == str(given / "tokenizer.json") and baseline["data"] == str(corpus)
    # and the given one's held-out split (tiny's 0.2, not the default 0.05): it trains on none of the text scored
    assert baseline["val_fraction"] == 0.2
    # and its size (64 wide, 2 blocks, 4 heads: no named size, so --size tiny's with those three), not --size's
    assert (baseline["model"], baseline["hidden"], baseline["layers"], baseline["heads"]) == ("tiny", 64, 2, 4)
    ar_model = read_config(tmp_path / "models" / "ar" / "model")["model"]
    assert (ar_model["arch"], ar_model["hidden"], ar_model["layers"], ar_model["heads"]) == ("ar", 64, 2, 4)
    # the report gives each model's own budget (the given one's from its run record) and the held-out corpus
    report = (tmp_path / "report" / "report.md").read_text()
    assert "diffusion trained 2 steps, autoregressive trained 0.02 minutes or 2 steps (optimizer steps: diffusion 2, " \
        "autoregressive 2)" in report
    assert f"Held-out text: the validation split of {corpus}." in report
    assert "Models: the `64x2, 4 heads` MDLM (DiT, bidirectional) and the autoregressive transformer on the same " \
        "backbone" in report
    assert "same data, batch and optimisation, 64-token windows" in report
    # a --data given with both folders is the corpus the held-out split comes from: the models' own, copied elsewhere
    copy = shutil.copytree(corpus, tmp_path / "copy")
    ns = argparse.Namespace(gen_lengths=[16], train_dir=None, out_dir=str(tmp_path / "report"), data=str(copy),
                            model_dir=str(given), ar_dir=str(tmp_path / "models" / "ar" / "model"))
    assert e2e._load_models(ns, "cpu").data == str(copy)
    # and no other: its held-out text may be text they trained on
    (copy / "extra.py").write_text("def other():\n    return 1\n" * 50)
    with pytest.raises(ValueError, match="was trained on another corpus or split than .*copy at --val-fraction 0.2"):
        e2e._load_models(ns, "cpu")
    # nor is a baseline trained beside the given model on another corpus than the one it trained on
    ns_train = argparse.Namespace(gen_lengths=[16], train_dir=str(tmp_path / "other-models"), out_dir=str(tmp_path),
                                  data=str(copy), model_dir=str(given), ar_dir=None, minutes=0.02, size="tiny",
                                  retrain=False, seed=0, train_steps=None)
    with pytest.raises(ValueError, match="was trained on another corpus"):
        e2e._model_dirs(ns_train, "cpu")
    assert not (tmp_path / "other-models").exists()
    ns.data = str(corpus)
    # given models that held out different splits: each one's held-out text holds some the other trained on
    record = tmp_path / "models" / "ar" / "run_config.json"
    run = json.loads(record.read_text())
    run["train"]["val_fraction"] = 0.05
    record.write_text(json.dumps(run))
    with pytest.raises(ValueError, match=r"held out different validation splits \(--val-fraction 0.05 and 0.2\)"):
        e2e._load_models(ns, "cpu")
    # nor is a kept baseline of another split reused beside the given model
    ns = argparse.Namespace(gen_lengths=[16], train_dir=str(tmp_path / "models"), out_dir=str(tmp_path / "report"),
                            data=None, model_dir=str(given), ar_dir=None, minutes=0.02, size="tiny", retrain=False,
                            seed=0, train_steps=2)
    with pytest.raises(ValueError, match="holds a model trained with --val-fraction 0.05, not 0.2"):
        e2e._load_models(ns, "cpu")
    # the two folders given the other way round
    run["train"]["val_fraction"] = 0.2
    record.write_text(json.dumps(run))
    swapped = argparse.Namespace(gen_lengths=[16], train_dir=None, out_dir=str(tmp_path / "report"), data=None,
                                 model_dir=str(tmp_path / "models" / "ar" / "model"), ar_dir=str(given))
    with pytest.raises(ValueError, match="--model-dir must hold a masked-diffusion model and --ar-dir an "
                                         "autoregressive one; got 'ar' and 'masked'"):
        e2e._load_models(swapped, "cpu")


def test_bench_e2e_rejects_bad_arguments(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["bench", "e2e", "--step-fractions", "3/2", "--model-dir", "x", "--ar-dir", "y"])
    assert "--step-fractions must lie in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "e2e", "--gen-lengths", "48", "--model-dir", "x", "--ar-dir", "y"])
    assert "not a multiple of the 32-token blocks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "e2e", "--model-dir", "nowhere", "--ar-dir", "nowhere"])
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):  # an unwritable report folder fails before any model loads
        main(["bench", "e2e", "--model-dir", "nowhere", "--ar-dir", "nowhere", "--out-dir", str(tmp_path / "file" / "r")])
    assert "file" in capsys.readouterr().err
    for args, message in [(["--batch-sizes", "1", "1"], "--batch-sizes lists a value twice: 1 1"),
                          (["--gen-lengths", "32", "64", "32"], "--gen-lengths lists a value twice"),
                          (["--temperature", "-1"], "--temperature must be finite and >= 0"),
                          (["--minutes", "inf"], "--minutes (finite)"),
                          (["--step-fractions", "1/0"], "--step-fractions: '1/0' is not a fraction like 1/4"),
                          (["--step-fractions", "half"], "--step-fractions: 'half' is not a fraction like 1/4"),
                          (["--threads", "0"], "--threads must be positive")]:
        with pytest.raises(SystemExit):  # before any training
            main(["bench", "e2e", *args, "--out-dir", str(tmp_path / "r")])
        assert message in capsys.readouterr().err


def test_bench_e2e_refuses_more_points_in_turns_than_a_model_keeps_graphs(tmp_path, monkeypatch, capsys):
    from dllm.sampling import cuda_graph

    # a model keeps the last MAX_SESSIONS configurations' graphs: one more, called in turns, keeps none of them
    net, gens = torch.nn.Linear(2, 2), [torch.Generator() for _ in range(cuda_graph.MAX_SESSIONS + 1)]
    rounds = [[cuda_graph._kept_session(net, ("point", i), g) for i, g in enumerate(gens)] for _ in range(2)]
    assert not any(a is b for a, b in zip(*rounds))
    # so on CUDA, 8 fractions x (mdlm, llada) + fast-dllm = 17 points a (length, batch) would time captures
    monkeypatch.setattr(e2e, "resolve_device", lambda device: "cuda:0")
    fractions = ["1", "1/2", "1/3", "1/4", "1/5", "1/6", "1/7", "1/8"]
    with pytest.raises(SystemExit):
        main(["bench", "e2e", "--step-fractions", *fractions, "--model-dir", "x", "--ar-dir", "y",
              "--out-dir", str(tmp_path / "r")])
    assert "17 diffusion points a length and batch" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # 16 pass the check (and fail later, on the missing folders)
        main(["bench", "e2e", "--step-fractions", *fractions, "--samplers", "mdlm", "llada", "--model-dir", "x",
              "--ar-dir", "y", "--out-dir", str(tmp_path / "r")])
    assert "diffusion points" not in capsys.readouterr().err


def test_a_kept_model_of_another_size_corpus_seed_or_recipe_is_refused(tmp_path):
    """`dllm bench e2e --seed 1` trains with seed 1: a folder trained with seed 0 is not its model."""
    from dllm.training.timed import train_for_minutes

    (tmp_path / "mdlm" / "model").mkdir(parents=True)
    trained = {"tokenizer": "byte", "seq_len": 160, "model": "tiny", "data": "corpus-a", "seed": 0}
    (tmp_path / "mdlm" / "run_config.json").write_text(json.dumps({"train": trained}))
    for options, message in [(dict(size="small", data="corpus-a"), "--size 'tiny', not 'small'"),
                             (dict(size="tiny", data=None), "--data 'corpus-a', not None")]:
        with pytest.raises(ValueError, match=re.escape(message) + ".*--retrain"):
            train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160, **options)
    # nor one of another optimisation: that of a model given beside it, or the timed runs' own
    (tmp_path / "mdlm" / "run_config.json").write_text(json.dumps({"train": {**trained, "data": None, "batch_size": 16,
                                                                            "warmup": 100}}))
    for options, message in [(dict(recipe={"batch_size": 8}), "--batch-size 16, not 8"),
                             ({}, "--warmup 100, not 50")]:
        with pytest.raises(ValueError, match=re.escape(message) + ".*--retrain"):
            train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160, **options)
    (tmp_path / "mdlm" / "run_config.json").write_text(json.dumps({"train": {**trained, "data": None}}))
    assert train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160, seed=0) == tmp_path / "mdlm" / "model"
    with pytest.raises(ValueError, match=re.escape("--hidden None, not 64") + ".*--retrain"):  # of the size's width
        train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160, shape={"hidden": 64, "layers": 4, "heads": 4})
    with pytest.raises(ValueError, match=re.escape("--seed 0, not 1") + ".*--retrain"):
        train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160, seed=1)
    with pytest.raises(ValueError, match=re.escape("recipe: ['learning_rate'] are not among")):
        train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160, recipe={"learning_rate": 1e-3})


@pytest.mark.parametrize("size, lr", [("tiny", 1e-3), ("small", 3e-4), ("medium", 3e-4)])
def test_timed_training_takes_a_learning_rate_by_size(tmp_path, monkeypatch, size, lr):
    from dllm.training import timed

    calls = []
    monkeypatch.setattr(timed, "train", lambda **kw: calls.append(kw))
    timed.train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160, size=size)
    assert calls[0]["lr"] == lr and calls[0]["model"] == size and calls[0]["schedule"] == "constant"
    assert (calls[0]["hidden"], calls[0]["layers"], calls[0]["heads"]) == (None, None, None)  # the size's own


def test_an_unfinished_run_that_cannot_continue_points_to_retrain(tmp_path, monkeypatch):
    from dllm.training import timed
    from dllm.training.checkpoint import CheckpointError

    def damaged(**kw):
        raise CheckpointError("checksum mismatch")

    monkeypatch.setattr(timed, "train", damaged)
    with pytest.raises(CheckpointError, match=re.escape(f"the unfinished run in {tmp_path / 'mdlm'} cannot continue "
                                                        "(checksum mismatch); --retrain starts it over")):
        timed.train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160)


def test_a_kept_model_of_another_budget_is_reused_and_says_so(tmp_path, capsys):
    from dllm.training.timed import train_for_minutes

    (tmp_path / "mdlm" / "model").mkdir(parents=True)
    trained = {"tokenizer": "byte", "seq_len": 160, "model": "tiny", "data": None, "seed": 0, "max_time": 180.0,
               "steps": 20000}
    (tmp_path / "mdlm" / "run_config.json").write_text(json.dumps({"train": trained}))
    assert train_for_minutes("mdlm", tmp_path, 3.0, device="cpu", seq_len=160) == tmp_path / "mdlm" / "model"
    assert "budget" not in capsys.readouterr().out
    for minutes, steps in ((5.0, 20000), (3.0, 100)):
        train_for_minutes("mdlm", tmp_path, minutes, device="cpu", seq_len=160, steps=steps)
        assert (f"reusing {tmp_path / 'mdlm' / 'model'}, trained with a budget of 3 minutes or 20000 steps, not "
                f"{minutes:g} or {steps} (--retrain") in capsys.readouterr().out


def test_a_kept_model_is_reused_from_a_relative_data_path(tmp_path, monkeypatch):
    from dllm.training.timed import train_for_minutes

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mdlm" / "model").mkdir(parents=True)
    trained = {"tokenizer": "byte", "seq_len": 160, "model": "tiny", "data": str(tmp_path / "corpus"),  # as recorded
               "seed": 0}
    (tmp_path / "mdlm" / "run_config.json").write_text(json.dumps({"train": trained}))
    kept = train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160, data="corpus")
    assert kept == tmp_path / "mdlm" / "model"
    (tmp_path / "mdlm" / "run_config.json").write_text('{"train": {"tok')  # killed while written
    with pytest.raises(ValueError, match="run_config.json is damaged .*--retrain"):
        train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160, data="corpus")


def test_the_benchmark_runs_fast_dllm_and_llada_as_its_report_says():
    """The report and results.json's meta state fast-dllm's cache, threshold and block: the calls use them."""
    kw = e2e._diffusion_kwargs("fast-dllm", 1, 64)
    assert kw["cache"] == e2e.FAST_DLLM_CACHE == "dual" and kw["threshold"] == e2e.FAST_DLLM_THRESHOLD
    assert kw["block_length"] == min(e2e.BLOCK_LENGTH, 64)
    assert e2e._diffusion_kwargs("llada", 8, 16)["block_length"] == 16
    assert "cache" not in e2e._diffusion_kwargs("llada", 8, 64)
    assert "block_length" not in e2e._diffusion_kwargs("mdlm", 8, 64)


def test_llada_grid_steps_round_up_to_a_multiple_of_its_blocks():
    """llada needs a step count that its blocks divide: the grid's round(length * fraction) is
    rounded up to the next multiple (never down, which would give the point fewer steps than its
    fraction says, and a lower quality than it would have)."""
    for length, frac in ((160, Fraction(1, 8)), (96, Fraction(1, 2) + Fraction(1, 96)), (224, Fraction(3, 16)),
                         (20, Fraction(1, 3))):
        blocks = length // min(BLOCK_LENGTH, length)
        want = max(1, round(length * frac))
        steps = _diffusion_steps("llada", length, frac)
        assert steps % blocks == 0 and want <= steps < want + blocks, (length, frac, steps)
    assert _diffusion_steps("llada", 160, Fraction(1, 8)) == 20  # 5 blocks of 32: 20 steps, not 15


def test_sample_quality_reports_the_standard_error_of_the_mean_prefix():
    """parse_prefix_se is the standard error of the mean parseable prefix (the sample deviation over
    sqrt(n)), which the verdict compares differences with; not the per-sample deviation."""
    from types import SimpleNamespace

    from dllm.benchmarks.code_quality import parseable_prefix
    from dllm.benchmarks.e2e import _sample_quality

    texts = ["x = 1\ny = (\n", "a = 2\n", "def (\n", "b = 3\nc = 4\nd = [\n", "pass\n", ")\n", "e = 5\n)\n"]
    vocab = {t: i + 1 for i, t in enumerate(texts)}  # one token a text; 0 ends a sample

    class Tok:
        eos_id = 0

        def decode(self, ids):
            return "".join(texts[i - 1] for i in ids)

    def call(model, sampler, steps, length, batch, g, first=0):
        rows = [[vocab[texts[(call.next + i) % len(texts)]], 0, 0] for i in range(batch)]
        call.next += batch
        return torch.tensor(rows), 4.0

    call.next = 0
    runner = SimpleNamespace(call=call, m=SimpleNamespace(tok=Tok()), generator=lambda: None)
    got = _sample_quality(runner, "diffusion", "mdlm", 4, 3, samples=7, chunk=3)
    prefixes = [parseable_prefix(t) for t in texts]
    assert got["samples"] == 7 and got["parse_prefix"] == statistics.mean(prefixes)
    assert math.isclose(got["parse_prefix_se"], statistics.stdev(prefixes) / math.sqrt(7), rel_tol=1e-12)
    assert got["quality_nfe"] == 4.0


def test_the_frontier_of_a_lower_is_better_metric():
    """The Pareto frontier keeps the points that no faster point beats on quality: for NLL (lower is
    better) a faster point with a lower NLL hides a slower one with a higher NLL."""
    from dllm.benchmarks.e2e_report import _pareto

    points = [(10.0, 2.0), (5.0, 1.5), (3.0, 1.8), (1.0, 1.0), (8.0, 2.5)]  # (tokens/s, NLL)
    assert _pareto(points, higher_is_better=False) == [(1.0, 1.0), (5.0, 1.5), (10.0, 2.0)]
    # (tokens/s, parse rate): higher is better
    assert _pareto([(10.0, 0.2), (5.0, 0.5), (3.0, 0.4), (1.0, 0.9)], higher_is_better=True) == \
        [(1.0, 0.9), (5.0, 0.5), (10.0, 0.2)]


def test_a_kept_model_needs_windows_as_long_and_the_same_held_out_fraction(tmp_path):
    """A kept model trained on shorter windows, or holding out another fraction of the corpus (the
    baseline's held-out text), is refused; longer windows than needed are fine."""
    from dllm.training.config import TrainConfig
    from dllm.training.timed import train_for_minutes

    (tmp_path / "mdlm" / "model").mkdir(parents=True)
    trained = {"tokenizer": "byte", "seq_len": 160, "model": "tiny", "data": None, "seed": 0}
    (tmp_path / "mdlm" / "run_config.json").write_text(json.dumps({"train": trained}))
    assert train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=96) == tmp_path / "mdlm" / "model"
    with pytest.raises(ValueError, match=re.escape("160-token windows, shorter than the 161 needed") + ".*--retrain"):
        train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=161)
    other = TrainConfig.val_fraction / 2
    with pytest.raises(ValueError, match=re.escape(f"--val-fraction {TrainConfig.val_fraction}, not {other}")):
        train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=96, val_fraction=other)
    (tmp_path / "mdlm" / "run_config.json").write_text(json.dumps({"train": {**trained, "val_fraction": other}}))
    assert train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=96, val_fraction=other).name == "model"


def test_e2e_throughput_rows_take_the_median_the_sorted_spread_and_the_timed_calls_nfe(monkeypatch):
    """latency_ms is the median of the timed calls (not their mean), the spread their sorted p20-p80
    (min-max under five calls), nfe the mean over the timed calls (not the warm-up's)."""
    rng = random.Random(3)
    timings = [[rng.choice([1.0, 2.5, 40.0]) * rng.uniform(1, 9) for _ in range(7)], [9.0, 1.0, 4.0]]
    nfe_draws = [[rng.randrange(1, 50) for _ in range(8)], [rng.randrange(1, 50) for _ in range(4)]]

    for times, draws in zip(timings, nfe_draws):
        calls = iter(draws)

        class Runner:
            device = "cpu"

            def generator(self):
                return None

            def call(self, model, sampler, steps, length, batch, g, first=0):
                return None, next(calls)

        def fake_interleaved(fns, device, *, warmup, reps, times=times):
            for _ in range(warmup + reps):
                fns[0]()
            return [list(times)]

        monkeypatch.setattr(e2e, "time_interleaved", fake_interleaved)
        (row,) = e2e._throughputs_in_turns(Runner(), [("mdlm", "fast-dllm", 1)], length=24, batch=3, reps=len(times))
        ordered = sorted(times)
        assert row["latency_ms"] == pytest.approx(ordered[len(times) // 2])  # odd counts: the middle one
        want = (quantile(ordered, 0.2), quantile(ordered, 0.8)) if len(times) >= 5 else (ordered[0], ordered[-1])
        assert tuple(row["spread_ms"]) == want and want[0] <= row["latency_ms"] <= want[1]
        assert row["nfe"] == pytest.approx(statistics.mean(draws[1:]))  # the first call is the untimed warm-up
        assert row["tokens_per_s"] == pytest.approx(3 * 24 / (row["latency_ms"] * 1e-3))


@pytest.mark.parametrize("args, message", [
    (["--reps", "0"], "must be positive"),
    (["--samples", "0"], "must be positive"),
    (["--step-fractions", "0"], "--step-fractions must lie in (0, 1]"),
])
def test_bench_e2e_refuses_counts_and_fractions_of_zero_before_any_training(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["bench", "e2e", *args, "--model-dir", "nowhere", "--ar-dir", "nowhere", "--out-dir", str(tmp_path / "r")])
    assert message in capsys.readouterr().err


def test_bench_e2e_takes_any_length_when_no_sampler_has_blocks(capsys, tmp_path):
    """Only llada and fast-dllm run 32-token blocks: mdlm alone takes a length of 48."""
    with pytest.raises(SystemExit):  # passes the checks, and fails on the missing folders
        main(["bench", "e2e", "--samplers", "mdlm", "--gen-lengths", "48", "--model-dir", "nowhere", "--ar-dir",
              "nowhere", "--out-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert "nowhere" in err and "multiple" not in err


def test_step_grid_keeps_at_least_one_step():
    for sampler, length in (("mdlm", 64), ("llada", 96), ("mdlm", 33)):
        for frac in (Fraction(1, 256), Fraction(1, 3 * length)):
            assert e2e._diffusion_steps(sampler, length, frac) >= 1


def test_the_models_window_holds_the_prompt_and_the_infill_context(monkeypatch, tmp_path):
    """Trained models get max_gen + max(32, max_gen / 4) tokens; loaded ones need max_gen + the prompt
    (PROMPT_TOKENS and an end-of-text)."""
    seen = []
    monkeypatch.setattr(e2e, "train_for_minutes", lambda objective, train_dir, minutes, **kw: seen.append(kw["seq_len"])
                        or tmp_path / objective)
    for lengths, want in (([16], 48), ([256, 1024], 1280), ([200, 96], 250)):
        ns = argparse.Namespace(gen_lengths=lengths, train_dir=str(tmp_path), out_dir=str(tmp_path), data=None,
                                model_dir=None, ar_dir=None, minutes=1.0, size="tiny", retrain=False, seed=0,
                                train_steps=2)
        seen.clear()
        e2e._model_dirs(ns, "cpu")
        assert seen == [want, want]

    tok = SimpleNamespace(fingerprint="same")
    monkeypatch.setattr(e2e, "_model_dirs", lambda ns, device: {"mdlm": tmp_path / "m", "ar": tmp_path / "a"})
    monkeypatch.setattr(e2e, "load_for_sampling", lambda d, device: (None, tok, "masked" if d.name == "m" else "ar"))
    for window, ok in ((23, False), (24 + e2e.PROMPT_TOKENS, False), (25 + e2e.PROMPT_TOKENS, True)):
        monkeypatch.setattr(e2e, "read_config", lambda d, window=window: {"model": {"max_seq_len": window, "hidden": 8,
                                                                                    "layers": 1, "heads": 2}})
        ns = argparse.Namespace(gen_lengths=[24, 8], data=None)
        if ok:
            assert e2e._load_models(ns, "cpu").seq_len == window
        else:
            with pytest.raises(ValueError, match=f"after a {e2e.PROMPT_TOKENS + 1}-token prompt needs "
                                                  f"{25 + e2e.PROMPT_TOKENS}"):
                e2e._load_models(ns, "cpu")


def test_a_baseline_trained_beside_a_given_model_takes_its_recipe_window_and_steps(monkeypatch, tmp_path):
    """Batch 8 at lr 3e-3 for 40 steps on 96-token windows: the baseline too, not the timed runs' batch 16 at 1e-3
    for --train-steps' default; one that stops short of those steps is said to."""
    given = tmp_path / "mdlm" / "model"
    record = {"batch_size": 8, "grad_accum": 2, "lr": 3e-3, "schedule": "cosine", "warmup": 4, "ema": 0.999,
              "steps": 50, "data": None, "val_fraction": 0.1, "seed": 0}
    model = {"arch": "dit", "hidden": 64, "layers": 2, "heads": 4, "max_seq_len": 96}
    monkeypatch.setattr(e2e, "_training_config", lambda d: record if d == given else {})
    monkeypatch.setattr(e2e, "read_config", lambda d: {"model": model, "step": 40 if d == given else 12})
    calls = []
    monkeypatch.setattr(e2e, "train_for_minutes", lambda objective, train_dir, minutes, **kw: calls.append(kw)
                        or tmp_path / objective / "model")
    ns = argparse.Namespace(gen_lengths=[16], train_dir=str(tmp_path), out_dir=str(tmp_path), data=None,
                            model_dir=str(given), ar_dir=None, minutes=0.5, size="small", retrain=False, seed=0,
                            train_steps=None)
    with pytest.warns(UserWarning, match=r"the ar model trained beside .* stopped at step 12 of its 40 \(--minutes "
                                         r"0.5\): the report compares models of unequal training"):
        assert e2e._model_dirs(ns, "cpu") == {"mdlm": given, "ar": tmp_path / "ar" / "model"}
    kw = calls[0]
    assert (kw["seq_len"], kw["steps"], kw["val_fraction"], kw["size"]) == (96, 40, 0.1, "small")
    assert kw["recipe"] == {"batch_size": 8, "grad_accum": 2, "lr": 3e-3, "schedule": "cosine", "warmup": 4,
                            "ema": 0.999}
    # --train-steps, given, is the budget; a window too short for the generation is refused before training
    ns.train_steps = 12
    calls.clear()
    e2e._model_dirs(ns, "cpu")
    assert calls[0]["steps"] == 12
    model["max_seq_len"] = 32
    calls.clear()
    with pytest.raises(ValueError, match="the models take 32 tokens; generating 16 after a 17-token prompt needs 33"):
        e2e._model_dirs(ns, "cpu")
    assert not calls


def test_the_report_names_the_settings_the_two_runs_did_not_share(monkeypatch):
    """kv_heads None (as many as heads) against 2 is grouped-query attention on one side only: said, not
    dropped as unknown; a folder without a run record says nothing of its batch."""
    model = {"arch": "dit", "hidden": 64, "layers": 2, "heads": 4, "kv_heads": None, "max_seq_len": 64}
    configs = {"m": model, "a": {**model, "arch": "ar", "kv_heads": 2, "max_seq_len": 48}}
    records = {"m": {"batch_size": 8, "grad_accum": 1}, "a": {"batch_size": 16, "grad_accum": 1}}
    monkeypatch.setattr(e2e, "read_config", lambda d: {"model": configs[d.name]})
    monkeypatch.setattr(e2e, "_training_config", lambda d: records[d.name])
    dirs = {"mdlm": Path("m"), "ar": Path("a")}
    assert e2e._differences(dirs) == ("batch_size 8 and 16", "kv_heads None and 2", "max_seq_len 64 and 48")
    # the optimisation, and where both decay by a cosine, the steps that place it (a record's missing key is unknown)
    records = {"m": {"batch_size": 8, "lr": 3e-3, "schedule": "cosine", "steps": 100, "ema": 0.99},
               "a": {"batch_size": 8, "lr": 1e-3, "schedule": "cosine", "steps": 40}}
    assert e2e._differences(dirs) == ("lr 0.003 and 0.001", "cosine schedule's steps 100 and 40", "kv_heads None and 2",
                                      "max_seq_len 64 and 48")
    records["a"] = {}
    assert e2e._differences(dirs) == ("kv_heads None and 2", "max_seq_len 64 and 48")


def test_random_length_left_to_the_objective_is_compared_and_passed_on_as_the_objectives(monkeypatch, tmp_path):
    """None leaves random_length to the objective: 0.01 for LLaDA, 0 for the others. A baseline beside a
    LLaDA-objective model trains at 0.01, the report says LLaDA's None and the baseline's None differ and MDLM's
    None and the baseline's 0.0 do not, and a kept baseline of None is the one 0.0 asks for."""
    from dllm.training.timed import recipe_of, train_for_minutes

    assert recipe_of({"objective": "llada", "random_length": None, "lr": 1e-3}) == {"lr": 1e-3, "random_length": 0.01}
    assert recipe_of({"objective": "mdlm", "random_length": None}) == {"random_length": 0.0}
    assert recipe_of({"objective": "llada", "random_length": 0.5}) == {"random_length": 0.5}
    assert recipe_of({"random_length": None}) == {"random_length": None}  # whose, a record without objective does not say

    model = {"arch": "llada", "hidden": 64, "layers": 2, "heads": 4, "max_seq_len": 64}
    records = {"m": {"objective": "llada", "random_length": None}, "a": {"objective": "ar", "random_length": None}}
    monkeypatch.setattr(e2e, "read_config", lambda d: {"model": {**model, "arch": "ar"} if d.name == "a" else model})
    monkeypatch.setattr(e2e, "_training_config", lambda d: records[d.name])
    dirs = {"mdlm": Path("m"), "ar": Path("a")}
    assert e2e._differences(dirs) == ("random_length 0.01 and 0.0",)
    records["m"]["objective"], records["a"]["random_length"] = "mdlm", 0.0
    assert e2e._differences(dirs) == ()

    records["m"]["objective"] = "llada"
    calls = []
    monkeypatch.setattr(e2e, "train_for_minutes", lambda objective, train_dir, minutes, **kw: calls.append(kw)
                        or tmp_path / objective / "model")
    ns = argparse.Namespace(gen_lengths=[16], train_dir=str(tmp_path), out_dir=str(tmp_path), data=None,
                            model_dir="m", ar_dir=None, minutes=0.5, size="tiny", retrain=False, seed=0, train_steps=2)
    e2e._model_dirs(ns, "cpu")
    assert calls[0]["recipe"] == {"random_length": 0.01}

    (tmp_path / "ar" / "model").mkdir(parents=True)
    kept = {"tokenizer": "byte", "seq_len": 64, "model": "tiny", "data": None, "seed": 0, "objective": "ar",
            "random_length": None}
    (tmp_path / "ar" / "run_config.json").write_text(json.dumps({"train": kept}))
    assert train_for_minutes("ar", tmp_path, 1.0, device="cpu", seq_len=64, recipe={"random_length": 0.0}) == \
        tmp_path / "ar" / "model"
    with pytest.raises(ValueError, match=re.escape("--random-length 0.0, not 0.01") + ".*--retrain"):
        train_for_minutes("ar", tmp_path, 1.0, device="cpu", seq_len=64, recipe={"random_length": 0.01})


def test_the_report_names_each_models_size():
    """A model of a named size's hidden width, blocks and heads is that size (a baseline trained beside it takes
    the name, with its learning rate); any other is named by those three, which a baseline trained beside it
    takes over --size's. Models of two sizes are no comparison of one backbone, and the report says so."""
    from dllm.benchmarks.e2e_report import _models_and_sizes

    tiny = {"arch": "dit", "hidden": 128, "layers": 4, "heads": 4, "cond_dim": 64, "max_seq_len": 256}
    assert e2e._size_and_shape(tiny, "small") == ("tiny", None) and e2e.size_label(tiny) == "tiny"
    wide = {**tiny, "heads": 8}
    assert e2e._size_and_shape(wide, "small") == ("small", {"hidden": 128, "layers": 4, "heads": 8})
    assert e2e.size_label(wide) == "128x4, 8 heads"
    assert _models_and_sizes({"sizes": {"mdlm": "tiny", "ar": "tiny"}}) == \
        "the `tiny` MDLM (DiT, bidirectional) and the autoregressive transformer on the same backbone"
    assert _models_and_sizes({"sizes": {"mdlm": "tiny", "ar": "128x4, 8 heads"}}) == \
        "the `tiny` MDLM (DiT, bidirectional) and a `128x4, 8 heads` autoregressive transformer (not the same size)"
    assert _models_and_sizes({"size": "small"}).startswith("the `small` MDLM")  # results of before 2026-12-06


def test_held_out_windows_end_each_file_with_end_of_text(tmp_path):
    """Held-out files are packed one after the other, each followed by end-of-text, into whole windows."""
    from dllm.benchmarks.e2e import Models
    from dllm.data.corpus import load_corpus

    rng = random.Random(9)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in range(12):
        (corpus / f"m{k}.py").write_text("".join(f"x{j} = {rng.randrange(1000)}\n" for j in range(rng.randrange(2, 9))))
    tok = load_tokenizer("byte")
    val = load_corpus(str(corpus), val_fraction=0.3).val
    assert len(val) >= 2
    stream = []
    for _, text in val:
        stream += list(tok.encode(text)) + [tok.eos_id]
    for seq_len, count in ((7, 1000), (13, 3)):
        windows, files = e2e._val_windows(Models(None, None, tok, {}, seq_len, str(corpus), 0.3, {}), count)
        n = min(count, len(stream) // seq_len)
        assert windows.shape == (n, seq_len) and windows.flatten().tolist() == stream[:n * seq_len]
        assert files == val


TINY = {"mdlm": "tiny", "ar": "tiny"}  # the sizes of Models built by hand


def model_folders(root) -> dict:
    """Empty model folders for a sweep whose loading is stubbed (its identity lists their files)."""
    for name in ("m", "a"):
        (root / name).mkdir(exist_ok=True)
    return {"mdlm": str(root / "m"), "ar": str(root / "a")}


def test_speedups_compare_each_batch_with_the_baseline_of_that_batch(monkeypatch, tmp_path):
    """run() divides each row's tokens/s by the autoregressive row's of the same length and batch."""
    speeds = {}
    rng = random.Random(5)

    def throughputs(runner, points, length, batch, reps):
        rows = []
        for model, sampler, steps in points:
            speeds[model, sampler, steps, length, batch] = rng.uniform(10, 1000)
            rows.append({"batch": batch, "latency_ms": 1.0, "spread_ms": (1.0, 1.0), "nfe": float(steps),
                         "tokens_per_s": speeds[model, sampler, steps, length, batch]})
        return rows

    quality = {"samples": 2, "parse_rate": 0.5, "parse_prefix": 0.5, "parse_prefix_se": 0.1, "blank_rate": 0.0,
               "entropy": 3.0, "token_counts": [3, 3], "quality_nfe": 4.0, "example": "x = 1"}
    infill = {"infill_parse": 0.5, "infill_exact": 0.0, "infill_entropy": 2.0, "infill_steps": 3.0, "infill_nfe": 3.0}
    net = torch.nn.Linear(1, 1)
    models = e2e.Models(SimpleNamespace(model=net), net, ByteTokenizer(), model_folders(tmp_path), 64, None, 0.05,
                        TINY)
    written = {}
    monkeypatch.setattr(e2e, "_load_models", lambda ns, device: models)
    monkeypatch.setattr(e2e, "_val_windows",
                        lambda models, count: (torch.zeros(2, 64, dtype=torch.int64), [("a.py", "x = 1\n" * 4)]))
    monkeypatch.setattr(e2e, "held_out_functions", lambda *a, **kw: [object()])
    monkeypatch.setattr(e2e, "read_config", lambda d: {"objective": {"name": "mdlm", "noise": {"type": "loglinear"}}})
    monkeypatch.setattr(e2e, "get_objective", lambda name, tok: None)
    monkeypatch.setattr(e2e, "nll_per_window", lambda *a, **kw: torch.tensor([1.0, 2.0], dtype=torch.float64))
    monkeypatch.setattr(e2e, "_sample_quality", lambda *a: dict(quality))
    monkeypatch.setattr(e2e, "_infill_quality", lambda *a: dict(infill))
    monkeypatch.setattr(e2e, "_throughputs_in_turns", throughputs)
    monkeypatch.setattr(e2e, "kernels", lambda *a: {})
    monkeypatch.setattr(e2e, "_budget", lambda d: None)
    monkeypatch.setattr(e2e, "_trained_steps", lambda d: None)
    import dllm.benchmarks.e2e_report as report

    monkeypatch.setattr(report, "write_report", lambda out, results: written.update(results))
    ns = argparse.Namespace(step_fractions=["1", "1/2"], batch_sizes=[1, 3, 2], gen_lengths=[8, 16],
                            samplers=["mdlm", "fast-dllm"], samples=2, reps=1, nll_windows=2, model_dir="m", ar_dir="a",
                            minutes=1.0, train_steps=1, temperature=1.0, threads=None, out_dir=str(tmp_path / "r"),
                            device="cpu", seed=0, train_only=False, size="tiny")
    res = e2e.run(ns)
    assert res["throughput"] and written["throughput"] is res["throughput"]
    for r in res["throughput"]:
        model = "ar" if r["model"] == "autoregressive" else "mdlm"
        sampler = None if model == "ar" else r["sampler"]
        want = (speeds[model, sampler, r["steps"], r["gen_length"], r["batch"]]
                / speeds["ar", None, r["gen_length"], r["gen_length"], r["batch"]])
        assert r["speedup_vs_ar"] == pytest.approx(want, rel=1e-12)
    for v in res["verdict"]:
        assert v["ar_tokens_per_s"] == speeds["ar", None, v["gen_length"], v["gen_length"], v["batch"]]


def _cells(table: list[str], first: str) -> list[dict]:
    """The rows of a markdown table whose header starts with ``| first |``, as {header: cell}."""
    at = next(i for i, line in enumerate(table) if line.startswith(f"| {first} |"))
    names = [c.strip() for c in table[at].strip("|").split("|")]
    out = []
    for line in table[at + 2:]:
        if not line.startswith("|"):
            break
        out.append(dict(zip(names, (c.strip() for c in line.strip("|").split("|")))))
    return out


def test_throughput_table_columns_and_spread_header():
    """Each column holds its own field, the latency's spread its two ends, and the header names the spread
    the rows hold: p20-p80 from five timed calls on (as _throughputs_in_turns takes it), min-max below."""
    from dllm.benchmarks.e2e_report import _throughput_table

    rng = random.Random(11)
    rows = []
    for sampler in ("kv-cache", "mdlm", "llada", "fast-dllm"):
        lo = rng.uniform(10, 50)
        rows.append({"model": "autoregressive" if sampler == "kv-cache" else "diffusion (mdlm)", "sampler": sampler,
                     "gen_length": 32, "steps": rng.randrange(2, 32), "batch": rng.randrange(1, 9),
                     "nfe": rng.uniform(1, 32), "latency_ms": lo + 1.5, "spread_ms": (lo, lo + rng.uniform(3, 9)),
                     "tokens_per_s": rng.uniform(100, 9000), "speedup_vs_ar": rng.uniform(0.2, 4)})
    rows.append({**rows[1], "gen_length": 64})  # another length's table
    for reps, spread in ((1, "one run"), (2, "min-max"), (4, "min-max"), (5, "p20-p80"), (9, "p20-p80")):
        table = _throughput_table(rows, 32, reps)
        got = _cells(table, "model")
        assert len(got) == 4 and f"latency ms ({spread})" in got[0]
        for r, cells in zip(rows, got):
            assert cells[f"latency ms ({spread})"] == \
                f"{r['latency_ms']:.1f} ({r['spread_ms'][0]:.1f}-{r['spread_ms'][1]:.1f})"
            assert (cells["sampler"], cells["batch"], cells["nfe"]) == (r["sampler"], str(r["batch"]), f"{r['nfe']:.1f}")
            assert cells["tokens/s"] == f"{r['tokens_per_s']:,.0f}" and cells["vs AR"] == f"{r['speedup_vs_ar']:.2f}x"


def _quality_row(rng, sampler, length=32):
    keys = ("nll", "nll_se", "parse_rate", "blank_rate", "parse_prefix", "entropy", "infill_parse", "infill_exact",
            "infill_entropy", "infill_steps", "infill_nfe", "quality_nfe")
    return {"model": "autoregressive" if sampler == "kv-cache" else "diffusion (mdlm)", "sampler": sampler,
            "gen_length": length, "steps": rng.randrange(2, 32), "nll_kind": "exact", "example": "x = 1\n",
            **{k: rng.uniform(0.01, 0.99) * (10 if "nfe" in k or "steps" in k else 1) for k in keys}}


def test_quality_table_columns_hold_their_own_metrics():
    from dllm.benchmarks.e2e_report import _quality_table

    rng = random.Random(12)
    rows = [_quality_row(rng, s) for s in ("kv-cache", "mdlm", "llada")]
    names = {"parse": "parse_rate", "blank": "blank_rate", "parseable prefix": "parse_prefix", "entropy, bits": "entropy",
             "infill parse": "infill_parse", "infill exact": "infill_exact", "infill entropy, bits": "infill_entropy"}
    data = {"samples": 17, **{k: rng.uniform(0.01, 0.99) for k in ("parse_rate", "blank_rate", "parse_prefix", "entropy")}}
    got = _cells(_quality_table(rows, 32, data), "model")
    assert len(got) == 4
    held_out = got.pop(0)  # the data's own row comes first, with the samples' metrics only
    assert (held_out["model"], held_out["sampler"]) == ("held-out text", "first 32 tokens of 17 files")
    for column, key in names.items():
        assert held_out[column] == (f"{data[key]:.2f}" if key in data else "-"), column
    for r, cells in zip(rows, got):
        for column, key in names.items():
            assert cells[column] == f"{r[key]:.2f}", column
        assert cells["val NLL (± s.e.)"] == f"{r['nll']:.3f} ± {r['nll_se']:.3f}"
        assert cells["nfe"] == f"{r['quality_nfe']:.1f}" and cells["infill nfe"] == f"{r['infill_nfe']:.1f}"
        assert cells["infill steps"] == f"{r['infill_steps']:.1f}"


def test_a_sample_holding_a_code_fence_cannot_end_the_reports_code_block():
    from dllm.benchmarks.e2e_report import _examples

    row = {"model": "diffusion (mdlm)", "sampler": "mdlm", "gen_length": 16, "steps": 16,
           "example": 'x = 1\n```\n# Heading\ny = """```"""\n'}
    lines = "\n".join(_examples([row], 16)).splitlines()
    fences = [i for i, line in enumerate(lines) if line.lstrip().startswith("```")]
    # one block, opened before the sample's first line and closed after its last, not inside it
    assert len(fences) == 2 and lines[fences[0] + 1] == "x = 1" and fences[1] - fences[0] == 6


def _meta(load, threads):
    return {"card": "CPU", "torch": "t", "commit": "c", "date": "d", "command": "dllm bench e2e", "cpus": 8,
            "load_average": load, "threads": threads, "size": "tiny", "seq_len": 48, "model_dirs": {}, "data": None,
            "budgets": {"mdlm": None, "ar": None}, "train_steps": {"mdlm": 1, "ar": 1},
            "kernels": {"precision": "p", "diffusion": "d", "ar": "a"}, "temperature": 1.0, "samples": 2,
            "infill_tasks": 1, "reps": 1, "fast_dllm": {"block_length": 32, "threshold": 0.9}, "nll_windows": 2,
            "continuous_bound": 1.0, "grid": {"gen_lengths": []}, "reference": {}}


def test_the_report_says_when_other_work_shared_the_cores():
    """Either end of the sweep under a load above the threads used makes the timings noisy."""
    from dllm.benchmarks.e2e_report import markdown

    noisy = "other work shared the cores"
    for load, threads, shared in (([0.5, 1.0], 1, False), ([3.0, 0.2], 1, True), ([0.2, 3.0], 1, True),
                                  ([4.4, 4.4], 4, False), ([2.0, 6.1], 4, True)):
        text = markdown({"meta": _meta(load, threads), "quality": [], "throughput": [], "verdict": []})
        assert (noisy in text) == shared, (load, threads)


def test_the_nll_frontier_keeps_the_fast_points_of_lowest_nll():
    """The frontier plot's NLL row (lower is better): a point is on it when no faster point has an NLL as
    low; the parseable prefix row (higher is better) the other way round. Checked against brute force."""
    import matplotlib.pyplot as plt

    from dllm.benchmarks.e2e_report import frontier_figure

    rng = random.Random(13)
    fracs = [f"1/{k}" for k in range(1, 9)]
    throughput = [{"batch": 1, "gen_length": 8, "sampler": "kv-cache", "steps": 8, "fraction": None, "nfe": 8,
                   "tokens_per_s": 300.0, "model": "autoregressive"}]
    quality = [{"sampler": "kv-cache", "gen_length": 8, "fraction": None, "nll": 2.0, "parse_prefix": 0.5, "entropy": 4.0}]
    for f in fracs:
        throughput.append({"batch": 1, "gen_length": 8, "sampler": "mdlm", "steps": 8, "fraction": f, "nfe": 8,
                           "tokens_per_s": rng.uniform(100, 900), "model": "diffusion (mdlm)"})
        quality.append({"sampler": "mdlm", "gen_length": 8, "fraction": f, "nll": rng.uniform(1, 5),
                        "parse_prefix": rng.uniform(0, 1), "entropy": 4.0})
    results = {"meta": {"grid": {"batch_sizes": [1], "gen_lengths": [8]}, "card": "cpu"},
               "throughput": throughput, "quality": quality}
    fig = frontier_figure(results)
    for ax, key, better in ((fig.axes[0], "nll", min), (fig.axes[1], "parse_prefix", max)):
        pts = [(s["tokens_per_s"], q[key]) for s, q in zip(throughput[1:], quality[1:])]
        # on the front: every faster point is strictly worse
        want = sorted(p for p in pts if all(better(o[1], p[1]) == p[1] for o in pts if o[0] > p[0]))
        assert len(want) >= 2  # the seed's points draw a line
        (line,) = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert list(zip(line.get_xdata(), line.get_ydata())) == want, key
    plt.close(fig)


def test_the_frontier_leaves_out_points_whose_samples_collapsed():
    """A point failing the verdict's entropy test is drawn hollow and is not on the diffusion frontier,
    however well it parses (a sampler writing whitespace parses)."""
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    from dllm.benchmarks.e2e_report import _pareto, frontier_figure

    rng = random.Random(17)
    throughput = [{"batch": 1, "gen_length": 8, "sampler": "kv-cache", "steps": 8, "fraction": None, "nfe": 8,
                   "tokens_per_s": 300.0, "model": "autoregressive"}]
    quality = [{"sampler": "kv-cache", "gen_length": 8, "fraction": None, "nll": 2.0, "parse_prefix": 0.5,
                "entropy": 4.0}]
    for k in range(1, 9):
        throughput.append({"batch": 1, "gen_length": 8, "sampler": "mdlm", "steps": 8, "fraction": f"1/{k}", "nfe": 8,
                           "tokens_per_s": 100.0 * k, "model": "diffusion (mdlm)"})
        # every other point collapsed, and parses best, as whitespace would; the others trade speed for parses
        collapsed = k % 2 == 0
        quality.append({"sampler": "mdlm", "gen_length": 8, "fraction": f"1/{k}", "nll": rng.uniform(1, 5),
                        "parse_prefix": 0.95 if collapsed else 0.9 - 0.1 * k,
                        "entropy": 1.0 if collapsed else rng.uniform(3.6, 5)})
    results = {"meta": {"grid": {"batch_sizes": [1], "gen_lengths": [8]}, "card": "cpu"},
               "throughput": throughput, "quality": quality}
    fig = frontier_figure(results)
    kept = [(s["tokens_per_s"], q["parse_prefix"]) for s, q in zip(throughput[1:], quality[1:]) if q["entropy"] > 3]
    ax = fig.axes[1]
    (line,) = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert list(zip(line.get_xdata(), line.get_ydata())) == _pareto(kept, higher_is_better=True) == sorted(kept)
    hollow = sorted(float(p.get_xdata()[0]) for p in ax.get_lines() if p.get_linestyle() != ":"
                    and mcolors.to_rgba(p.get_markerfacecolor())[3] == 0)
    assert hollow == [100.0 * k for k in range(2, 9, 2)]
    plt.close(fig)


def _record(tmp_path, **kw):
    trained = {"tokenizer": "byte", "seq_len": 160, "model": "tiny", "data": None, "seed": 0, **kw}
    (tmp_path / "mdlm").mkdir(parents=True, exist_ok=True)
    (tmp_path / "mdlm" / "run_config.json").write_text(json.dumps({"train": trained}))


def test_timed_training_passes_its_seed_split_batch_and_ema_on(tmp_path, monkeypatch):
    """The fair comparison's settings reach train(): the seed and held-out fraction asked, batch 16,
    EMA 0.99, a constant lr and no checkpoint before the end."""
    from dllm.training import timed

    calls = []
    monkeypatch.setattr(timed, "train", lambda **kw: calls.append(kw))
    rng = np.random.default_rng()
    seed, frac, minutes = int(rng.integers(1, 2**31)), float(rng.uniform(0.06, 0.4)), float(rng.uniform(0.5, 3))
    out = timed.train_for_minutes("ar", tmp_path, minutes, device="cpu", seq_len=96, seed=seed, val_fraction=frac)
    assert out == tmp_path / "ar" / "model" and len(calls) == 1
    kw = calls[0]
    assert (kw["seed"], kw["val_fraction"], kw["batch_size"], kw["ema"]) == (seed, frac, 16, 0.99)
    assert (kw["objective"], kw["seq_len"], kw["ckpt_every"], kw["out_dir"]) == ("ar", 96, 0, str(tmp_path / "ar"))
    assert kw["max_time"] == pytest.approx(minutes * 60)


def test_retrain_starts_over_and_an_unfinished_run_is_trained_not_reused(tmp_path, monkeypatch):
    from dllm.training import timed

    calls = []
    monkeypatch.setattr(timed, "train", lambda **kw: calls.append(sorted(p.name for p in (tmp_path / "mdlm").iterdir())
                                                                 if (tmp_path / "mdlm").exists() else None))
    # an interrupted run: its record, a checkpoint, no model/ yet: train() is called (and resumes it)
    _record(tmp_path)
    (tmp_path / "mdlm" / "checkpoint.pt").write_bytes(b"x")
    assert timed.train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160) == tmp_path / "mdlm" / "model"
    assert calls == [["checkpoint.pt", "run_config.json"]]
    # --retrain: a finished run's folder is removed before training again
    (tmp_path / "mdlm" / "model").mkdir()
    timed.train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160, retrain=True)
    assert calls[1] is None


def test_a_kept_model_is_reused_from_a_relative_tokenizer_path(tmp_path, monkeypatch):
    """The run records a tokenizer.json path absolute: the same file named relatively is the same tokenizer."""
    from dllm.training import timed

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    _record(tmp_path, tokenizer=str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "mdlm" / "model").mkdir()
    monkeypatch.setattr(timed, "train", lambda **kw: pytest.fail("trained again"))
    assert timed.train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160,
                                   tokenizer="tok/tokenizer.json") == tmp_path / "mdlm" / "model"
    with pytest.raises(ValueError, match="tokenizer"):
        timed.train_for_minutes("mdlm", tmp_path, 1.0, device="cpu", seq_len=160, tokenizer="byte")


def test_e2e_throughput_spread_is_p20_p80_from_five_calls(monkeypatch):
    """The report's header says p20-p80 from five timed calls on (e2e_report._throughput_table):
    the rows hold p20-p80 there too, not min-max."""
    rng = random.Random(5)
    for n in (4, 5, 6):
        times = [rng.uniform(1, 50) for _ in range(n)]

        class Runner:
            device = "cpu"

            def generator(self):
                return None

            def call(self, model, sampler, steps, length, batch, g, first=0):
                return None, 4

        def fake_interleaved(fns, device, *, warmup, reps, times=times):
            for _ in range(warmup + reps):
                fns[0]()
            return [list(times)]

        monkeypatch.setattr(e2e, "time_interleaved", fake_interleaved)
        (row,) = e2e._throughputs_in_turns(Runner(), [("mdlm", "mdlm", 4)], length=8, batch=1, reps=n)
        ordered = sorted(times)
        want = (quantile(ordered, 0.2), quantile(ordered, 0.8)) if n >= 5 else (ordered[0], ordered[-1])
        assert tuple(row["spread_ms"]) == pytest.approx(want), n
        assert row["times_ms"] == ordered  # every timed call, for an interval on a speedup


# SMALL_FUNCTIONS with one more method, whose body has two lines
_FUNCTIONS = SMALL_FUNCTIONS + '''
    def first(self):
        head = self.items[0]
        return head
'''


def test_the_runner_returns_the_generated_tokens_without_the_prompt(monkeypatch):
    """Both models generate after the same prompts, row i of a call from sample ``first`` after prompt
    first + i (cyclically); the samples the report judges (cut at their first end-of-text) are the
    tokens after it: with the prompt and its end-of-text left in, every sample would be empty."""
    rng = random.Random(21)
    batch, length = rng.randrange(2, 6), rng.randrange(5, 13)
    tok = SimpleNamespace(eos_id=rng.randrange(200, 256))
    made = {}

    temperature = rng.uniform(0.2, 0.9)
    temperatures, prompts_seen = [], []
    prompts = torch.randint(0, 200, (3, e2e.PROMPT_TOKENS + 1))
    prompts[:, -1] = tok.eos_id

    def fake_generate(model, prompt, *, gen_length, **kw):
        temperatures.append(kw.get("temperature"))
        prompts_seen.append(prompt)
        made["mdlm"] = torch.randint(0, 200, (prompt.shape[0], gen_length))
        return SimpleNamespace(sequences=torch.cat([prompt, made["mdlm"]], 1), nfe=7)

    def ar_generate(prompt, n, **kw):
        temperatures.append(kw.get("temperature"))
        prompts_seen.append(prompt)
        made["ar"] = torch.randint(0, 200, (prompt.shape[0], n))
        return torch.cat([prompt, made["ar"]], 1)

    monkeypatch.setattr(e2e, "generate", fake_generate)
    models = e2e.Models(None, SimpleNamespace(generate=ar_generate), tok, {}, 64, None, 0.05, TINY)
    runner = e2e.Runner(models, "cpu", temperature, 0, prompts)
    for model, sampler in (("mdlm", "mdlm"), ("mdlm", "llada"), ("ar", None)):
        ids, nfe = runner.call(model, sampler, 4, length, batch, runner.generator(), first=2)
        assert ids.shape == (batch, length) and torch.equal(ids, made[model]), (model, sampler)
        assert nfe == (length if model == "ar" else 7)
        assert torch.equal(prompts_seen.pop(), prompts[[(2 + i) % 3 for i in range(batch)]])
    assert temperatures == [temperature] * 3  # both models sample at the benchmark's temperature


def test_prompts_end_held_out_files_and_are_followed_by_a_file_start():
    """file_start_prompts: the last PROMPT_TOKENS tokens of each held-out file that has them, then an
    end-of-text (what both models saw before every file start in training), cycled to ``count`` rows."""
    tok = load_tokenizer("byte")
    k = e2e.PROMPT_TOKENS
    files = [("a.py", "x = 1\n" * 5), ("short.py", "y\n"), ("b.py", "import os\n" * 3)]
    got = e2e.file_start_prompts(files, tok, 3)
    want = [list(("x = 1\n" * 5).encode())[-k:], list(("import os\n" * 3).encode())[-k:]]
    assert got.tolist() == [want[0] + [tok.eos_id], want[1] + [tok.eos_id], want[0] + [tok.eos_id]]
    with pytest.raises(ValueError, match=f"no held-out file has the {k} tokens"):
        e2e.file_start_prompts([("short.py", "y\n")], tok, 2)


def test_sample_quality_reports_the_mean_nfe_of_its_calls_and_the_first_sample():
    """quality_nfe: the network evaluations per generate call, averaged over the point's calls (fast-dllm's
    vary); the example: the first sample, as the report's heading says."""
    tok = load_tokenizer("byte")
    nfes = iter([5, 11, 8])
    texts = ["a = 1\n", "b = 2\n", "c = (\n", "d = 4\n", "e = 5\n", "f = 6\n"]
    firsts = []

    class Runner:
        m = SimpleNamespace(tok=tok)

        def generator(self):
            return None

        def call(self, model, sampler, steps, length, batch, g, first=0):
            firsts.append(first)
            rows = [list(texts.pop(0).encode()) + [tok.eos_id] for _ in range(batch)]
            return torch.tensor(rows), next(nfes)

    q = e2e._sample_quality(Runner(), "mdlm", "fast-dllm", 1, 7, samples=6, chunk=2)
    assert firsts == [0, 2, 4]  # each call's rows follow the next samples' prompts
    assert q["quality_nfe"] == pytest.approx(8.0) and q["example"] == "a = 1\n"
    assert q["samples"] == 6 and q["parse_rate"] == pytest.approx(5 / 6)


class _InfillRunner:
    """Fills each hole with a text of the body's length: the true body for some tasks, an edited one
    for the others; records the temperature each call got."""

    def __init__(self, tasks, tok, right, temperature):
        self.tasks, self.right, self.temperature, self.device = tasks, right, temperature, "cpu"
        self.temperatures = []
        self.m = SimpleNamespace(tok=tok, diffusion=None, ar=SimpleNamespace(generate=self.ar_generate))

    def generator(self):
        return torch.Generator().manual_seed(0)

    def fill(self, before, n):
        task = next(t for t in self.tasks if t.before == before and len(t.body) == n)
        if task.body_text in self.right:
            return list(task.body)
        wrong = list(task.body)
        wrong[-1] = ord("(")  # an open bracket for the last character: the same length, and no longer parses
        return wrong

    def ar_generate(self, prompt, n, *, temperature=1.0, generator=None):
        self.temperatures.append(temperature)
        before = prompt[0].tolist()
        return torch.tensor([before + self.fill(before, n)])

    def diffusion_generate(self, model, *, gen_length, infill, temperature=1.0, **kw):
        self.temperatures.append(temperature)
        ids = infill.tolist()
        lo = ids.index(self.m.tok.mask_id)
        n = ids.count(self.m.tok.mask_id)
        ids[lo:lo + n] = self.fill(ids[:lo], n)
        assert len(ids) == gen_length
        return SimpleNamespace(sequences=torch.tensor([ids]), nfe=n + 1)


@pytest.mark.parametrize("model, sampler, frac", [("ar", None, None), ("mdlm", "mdlm", Fraction(1, 2)),
                                                  ("mdlm", "llada", Fraction(1, 3))])
def test_infill_quality_scores_each_hole_against_its_own_body(monkeypatch, model, sampler, frac):
    """infill exact: the fraction of holes filled with their body character for character; infill parse:
    the def line plus the fill parses; the entropy: that of all the fills' tokens; the steps: round(frac x
    body) per task (the autoregressive model: the body's tokens), at the benchmark's temperature."""
    tok = load_tokenizer("byte")
    tasks = held_out_functions([("m.py", "import os\n" + _FUNCTIONS)], tok, max_body=40, min_body=4, before=20,
                               after=8, count=10, seed=3)
    assert len(tasks) == 4
    right = {tasks[0].body_text, tasks[2].body_text}
    temperature = random.Random(5).uniform(0.3, 0.9)
    runner = _InfillRunner(tasks, tok, right, temperature)
    monkeypatch.setattr(e2e, "generate", runner.diffusion_generate)
    q = e2e._infill_quality(runner, tasks, model, sampler, frac)
    fills = [runner.fill(t.before, len(t.body)) for t in tasks]
    assert q["infill_exact"] == pytest.approx(2 / 4)
    texts = [tok.decode(f) for f in fills]
    assert q["infill_parse"] == pytest.approx(sum(t.function_parses(f) for t, f in zip(tasks, texts)) / 4)
    assert q["infill_parse"] == pytest.approx(2 / 4)
    assert q["infill_entropy"] == pytest.approx(unigram_entropy([i for f in fills for i in f]))
    want = [len(t.body) if model == "ar" else max(1, round(len(t.body) * frac)) for t in tasks]
    assert q["infill_steps"] == pytest.approx(sum(want) / 4)
    assert q["infill_nfe"] == pytest.approx(sum(len(t.body) + (model != "ar") for t in tasks) / 4)
    assert runner.temperatures == [temperature] * 4


def test_bench_e2e_defaults_are_the_issues_grid():
    """The defaults its --help states: batch 1 and 16, lengths 256 and 1024, L..L/8 steps, three samplers."""
    p = argparse.ArgumentParser()
    e2e.add_arguments(p)
    ns = p.parse_args([])
    assert (ns.batch_sizes, ns.gen_lengths) == ([1, 16], [256, 1024])
    assert [Fraction(f) for f in ns.step_fractions] == [1, Fraction(1, 2), Fraction(1, 4), Fraction(1, 8)]
    assert ns.samplers == ["mdlm", "llada", "fast-dllm"] and ns.samples == 32 and ns.reps == 3
    assert ns.nll_windows == 64 and ns.temperature == 1.0
    for flag, value in (("--batch-sizes", "1 16"), ("--gen-lengths", "256 1024"),
                        ("--step-fractions", "1 1/2 1/4 1/8"), ("--samplers", "mdlm llada fast-dllm")):
        assert f"(default: {value})" in " ".join(next(a for a in p._actions if flag in a.option_strings).help.split())


def test_run_pairs_each_point_with_its_own_bound_infill_and_reference(monkeypatch, tmp_path):
    """run(): fast-dllm's NLL is the continuous-time bound (its step count is adaptive), mdlm and llada
    take the T-step bound of their steps; each sampler keeps its own infill; meta holds the infill task
    count, the held-out windows scored, the continuous bound's mean and each length's reference: the held-out
    files' own first `length` tokens, judged as samples."""
    rng = random.Random(17)
    nll_means = {}

    def nll_per_window(net, objective, windows, steps, **kw):
        key = (net is models.ar, steps)
        if key not in nll_means:
            nll_means[key] = rng.uniform(1, 5)
        return torch.tensor([nll_means[key] - 0.5, nll_means[key] + 0.5], dtype=torch.float64)

    def throughputs(runner, points, length, batch, reps):
        return [{"batch": batch, "latency_ms": 1.0, "spread_ms": (1.0, 1.0), "nfe": float(steps),
                 "tokens_per_s": rng.uniform(10, 1000)} for model, sampler, steps in points]

    quality = {"samples": 2, "parse_rate": 0.5, "parse_prefix": 0.5, "parse_prefix_se": 0.1, "blank_rate": 0.0,
               "entropy": 3.0, "token_counts": [3, 3], "quality_nfe": 4.0, "example": "x = 1"}
    infills = {}

    def infill_quality(runner, tasks, model, sampler, frac):
        infills[sampler, frac] = {"infill_parse": rng.random(), "infill_exact": rng.random(),
                                  "infill_entropy": rng.uniform(1, 4), "infill_steps": 3.0, "infill_nfe": 3.0}
        return dict(infills[sampler, frac])

    net = torch.nn.Linear(1, 1)
    models = e2e.Models(SimpleNamespace(model=torch.nn.Linear(1, 1)), net, ByteTokenizer(), model_folders(tmp_path),
                        48, None, 0.05, TINY)
    windows = torch.randint(0, 50, (3, 48), generator=torch.Generator().manual_seed(2))
    windows[:, 16:] = torch.randint(50, 250, (3, 32), generator=torch.Generator().manual_seed(3))
    tasks = [object()] * 5
    held_out = []
    loads = iter([1.5, 2.5])
    written = {}
    monkeypatch.setattr(e2e, "_load_models", lambda ns, device: models)
    # 16 bytes cut the first file's docstring and end the second's comments; 32 hold both whole
    val_files = [("a.py", 'import os\n"""A docstring."""\n'), ("b.py", "# one\n# two\n# three\nx = 1\n")]
    monkeypatch.setattr(e2e, "_val_windows", lambda models, count: (windows, val_files))
    monkeypatch.setattr(e2e, "held_out_functions", lambda files, tok, **kw: held_out.append(kw) or tasks)
    monkeypatch.setattr(e2e.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    monkeypatch.setattr(e2e, "read_config", lambda d: {"objective": {"name": "mdlm", "noise": {"type": "loglinear"}}})
    monkeypatch.setattr(e2e, "get_objective", lambda name, tok: None)
    monkeypatch.setattr(e2e, "nll_per_window", nll_per_window)
    monkeypatch.setattr(e2e, "_sample_quality", lambda *a: dict(quality))
    monkeypatch.setattr(e2e, "_infill_quality", infill_quality)
    monkeypatch.setattr(e2e, "_throughputs_in_turns", throughputs)
    monkeypatch.setattr(e2e, "kernels", lambda *a: {})
    monkeypatch.setattr(e2e, "_budget", lambda d: None)
    monkeypatch.setattr(e2e, "_trained_steps", lambda d: None)
    import dllm.benchmarks.e2e_report as report

    monkeypatch.setattr(report, "write_report", lambda out, results: written.update(results))
    ns = argparse.Namespace(step_fractions=["1", "1/4"], batch_sizes=[2], gen_lengths=[16, 32],
                            samplers=["mdlm", "llada", "fast-dllm"], samples=2, reps=1, nll_windows=7, model_dir="m",
                            ar_dir="a", minutes=1.0, train_steps=1, temperature=1.0, threads=None,
                            out_dir=str(tmp_path / "r"), device="cpu", seed=11, train_only=False, size="tiny")
    res = e2e.run(ns)
    # the infill template fits the 48-token window: a third of it for the body, half before, the rest after
    assert held_out == [dict(max_body=16, min_body=e2e.MIN_BODY, before=24, after=8, count=2, seed=11)]
    for r in res["quality"]:
        if r["sampler"] == "kv-cache":
            assert (r["nll"], r["nll_kind"]) == (pytest.approx(nll_means[True, None]), "exact")
        elif r["sampler"] == "fast-dllm":
            assert (r["nll"], r["nll_kind"]) == (pytest.approx(nll_means[False, None]), "continuous-time bound")
        else:
            assert (r["nll"], r["nll_kind"]) == (pytest.approx(nll_means[False, r["steps"]]), f"{r['steps']}-step bound")
        frac = None if r["fraction"] is None else Fraction(r["fraction"])
        sampler = None if r["sampler"] == "kv-cache" else r["sampler"]
        assert {k: r[k] for k in infills[sampler, frac]} == infills[sampler, frac], (r["sampler"], frac)
    meta = res["meta"]
    assert meta["infill_tasks"] == 5 and meta["samples"] == 2 and meta["nll_windows"] == 3
    assert meta["continuous_bound"] == pytest.approx(nll_means[False, None])
    assert meta["load_average"] == [1.5, 2.5]  # the sweep's start and its end
    short, whole = meta["reference"]["16"], meta["reference"]["32"]
    assert (short["samples"], short["parse_rate"], short["blank_rate"], short["parse_prefix"]) == (2, 0.0, 0.5, 0.25)
    assert (whole["samples"], whole["parse_rate"], whole["blank_rate"], whole["parse_prefix"]) == (2, 1.0, 0.0, 1.0)
    assert short["entropy"] == pytest.approx(unigram_entropy(list(b'import os\n"""A d# one\n# two\n# th')))


def test_the_report_states_its_lengths_counts_and_loads():
    from dllm.benchmarks.e2e_report import markdown

    meta = {"card": "CPU", "torch": "t", "commit": "c", "date": "d", "command": "dllm bench e2e", "cpus": 8,
            "load_average": [0.3, 2.7], "threads": 4, "size": "tiny", "seq_len": 48, "model_dirs": {}, "data": None,
            "budgets": {"mdlm": None, "ar": None}, "train_steps": {"mdlm": 1, "ar": 1},
            "kernels": {"precision": "p", "diffusion": "d", "ar": "a"}, "temperature": 1.0, "samples": 13,
            "infill_tasks": 7, "reps": 1, "fast_dllm": {"block_length": 32, "threshold": 0.9}, "nll_windows": 2,
            "continuous_bound": 1.0, "grid": {"gen_lengths": [16, 32, 64]},
            "reference": {str(n): {"samples": 5, "parse_rate": 0.1, "blank_rate": 0.2, "parse_prefix": p, "entropy": 4.0,
                                   "written": 0.9 * n} for n, p in ((16, 0.25), (32, 0.5), (64, 0.75))}}
    del meta["reference"]["64"]["written"]  # results of before 2026-12-07
    text = markdown({"meta": meta, "quality": [], "throughput": [], "verdict": []})
    for length, data in meta["reference"].items():
        table = text.split(f"### Quality, {length} generated tokens\n")[1].split("###")[0]
        written = f"{data['written']:.1f}" if "written" in data else "-"
        assert (f"| held-out text | first {length} tokens of 5 files | - | - | - | - | 0.10 | 0.20 | "
                f"{data['parse_prefix']:.2f} | {written} | 4.00 |") in table
    assert "13 samples per quality point, 7 infilled functions" in text
    assert "at the start and the end of the sweep: 0.3 and 2.7 on 8 cores, 4 used by this run." in text


def test_plots_keep_each_batch_to_its_own_panel():
    """throughput.png and frontier.png have a panel per (length, batch): each holds that batch's points only."""
    import matplotlib.pyplot as plt

    from dllm.benchmarks.e2e_report import frontier_figure, throughput_figure

    rng = random.Random(19)
    throughput, quality = [], []
    for sampler, fraction, steps in (("kv-cache", None, 8), ("mdlm", "1", 8), ("mdlm", "1/2", 4), ("llada", "1/2", 4),
                                     ("fast-dllm", None, 1)):
        model = "autoregressive" if sampler == "kv-cache" else "diffusion (mdlm)"
        quality.append({"sampler": sampler, "gen_length": 8, "fraction": fraction, "steps": steps,
                        "nll": rng.uniform(1, 5), "parse_prefix": rng.random(), "entropy": 4.0})
        for batch in (1, 3):
            throughput.append({"batch": batch, "gen_length": 8, "sampler": sampler, "fraction": fraction,
                               "steps": steps, "nfe": steps if sampler != "fast-dllm" else rng.uniform(1.5, 3),
                               "tokens_per_s": rng.uniform(100, 900) * batch, "model": model})
    results = {"meta": {"grid": {"batch_sizes": [1, 3], "gen_lengths": [8]}, "card": "cpu"},
               "throughput": throughput, "quality": quality}
    fig = throughput_figure(results)
    for ax, batch in zip(fig.axes, (1, 3)):
        got = sorted((x, y) for line in ax.get_lines() for x, y in zip(line.get_xdata(), line.get_ydata()))
        assert got == sorted((r["nfe"], r["tokens_per_s"]) for r in throughput if r["batch"] == batch)
    plt.close(fig)
    fig = frontier_figure(results)
    axes = fig.axes  # metrics x (length, batch): row 0 nll, row 1 parse_prefix
    for j, batch in enumerate((1, 3)):
        ax = axes[j]
        got = sorted(float(line.get_xdata()[0]) for line in ax.get_lines() if line.get_linestyle() != ":")
        assert got == sorted(r["tokens_per_s"] for r in throughput if r["batch"] == batch)
    plt.close(fig)


def test_nll_per_window_scores_every_window_once():
    """The windows go through the network in chunks (of 16): each window's NLL is its own, none is left out
    or scored twice, whatever the count."""

    class First:
        """A window's 'bound' is its first token (per token: divided by the window's length)."""

        def draw(self, n, length, g):
            return {"t": torch.zeros(n), "u": torch.rand(n, length, generator=g)}

        bound_draw = draw

        def step_bound(self, net, x0, draws):
            assert x0.shape[0] == draws["u"].shape[0] == draws["t"].shape[0]
            return x0[:, 0].double() * x0.shape[1]

        bound = step_bound

    kw = dict(seed=1, device="cpu", precision=torch.autocast("cpu", enabled=False))
    for n in (15, 16, 17, 37):
        windows = torch.randint(0, 1000, (n, 5), generator=torch.Generator().manual_seed(n))
        for steps in (None, 4):
            got = e2e.nll_per_window(None, First(), windows, steps, **kw)
            assert torch.equal(got, windows[:, 0].double()), (n, steps)


def test_examples_take_each_lengths_own_first_sample():
    from dllm.benchmarks.e2e_report import _examples

    rows = [{"model": "diffusion (mdlm)", "sampler": s, "gen_length": length, "steps": length,
             "example": f"x_{s.replace('-', '_')}_{length} = 1\n"} for length in (16, 32) for s in ("mdlm", "fast-dllm")]
    text = "\n".join(_examples(rows, 32))
    assert "x_mdlm_32 = 1" in text and "x_fast_dllm_32 = 1" in text and "_16 = 1" not in text


class _Triples:
    """A tokenizer whose tokens span three characters (as BPE's span several bytes)."""

    def encode(self, text):
        return [hash(text[i:i + 3]) % 10007 for i in range(0, len(text), 3)]


def test_held_out_functions_cut_bodies_and_contexts_in_tokens_of_non_ascii_files():
    """ast's col_offset counts UTF-8 bytes: a body after non-ASCII text is cut at its bytes; the body's
    bounds and the context's lengths are counted in the tokenizer's tokens, not in characters."""
    text = ("# caf\u00e9 \u2713 \u00fcber \u65e5\u672c\n" * 30 + "import os\n" * 5 + "def f(x):\n    y = '\u00e9\u00e9'\n"
            "    return x + y\n\n\n" + "z = 1  # \u2713\n" * 20)
    tok = load_tokenizer("byte")
    (task,) = held_out_functions([("m.py", text)], tok, max_body=60, min_body=4, before=40, after=12, count=5)
    assert task.body_text == "y = '\u00e9\u00e9'\n    return x + y" and task.header_text == "def f(x):\n    "
    assert tok.decode(task.before + task.body + task.after) in text and len(task.before) == 40
    # 25 characters, 27 bytes: 9 tokens of three characters
    (task,) = held_out_functions([("m.py", text)], _Triples(), max_body=9, min_body=4, before=40, after=12, count=5)
    assert len(task.body) == 9 and len(task.before) == 40 and len(task.after) == 12
    assert held_out_functions([("m.py", text)], _Triples(), max_body=8, min_body=4, before=40, after=12, count=5) == []


def test_held_out_functions_draw_the_tasks_at_random():
    """The infill tasks are a seeded random draw of the eligible functions, not the first ones of the
    first files: different seeds draw different functions."""
    tok = load_tokenizer("byte")
    files = [(f"m{k}.py", "".join(f"def f{k}_{j}(x):\n    return x + {k * j}\n\n" for j in range(6))) for k in range(5)]
    kw = dict(max_body=40, min_body=4, before=8, after=4, count=4)
    drawn = [[t.name for t in held_out_functions(files, tok, seed=seed, **kw)] for seed in range(12)]
    assert all(len(d) == len(set(d)) == 4 for d in drawn)
    assert drawn[0] == [t.name for t in held_out_functions(files, tok, seed=0, **kw)]
    assert len({tuple(d) for d in drawn}) >= 10 and len({n for d in drawn for n in d}) >= 20


@pytest.mark.parametrize("flag", ["--nll-windows", "--batch-sizes", "--gen-lengths"])
def test_bench_e2e_refuses_zero_windows_batches_and_lengths_before_any_training(flag, capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["bench", "e2e", flag, "0", "--model-dir", "nowhere", "--ar-dir", "nowhere", "--out-dir", str(tmp_path / "r")])
    assert "must be positive" in capsys.readouterr().err


def test_only_a_docstring_stays_in_the_context():
    """The hole is the body after the docstring: a body that starts with another expression statement (a
    call) is infilled whole."""
    tok = load_tokenizer("byte")
    text = ("def g(x):\n    print(x)\n    return x\n\n\n"
            "def k(z):\n    'doc'\n    return z + 1\n")
    tasks = held_out_functions([("m.py", text)], tok, max_body=40, min_body=4, before=8, after=4, count=5)
    assert sorted(t.body_text for t in tasks) == ["print(x)\n    return x", "return z + 1"]


def test_held_out_quality_scores_the_first_tokens_of_as_many_files_as_samples():
    """The data's own row: each file's first `length` tokens (a shorter file whole, its end an end-of-text),
    judged as samples are, over the first `count` files (the samples' count: plug-in entropy grows with
    the tokens); no files is an error, not a NaN row."""
    tok = ByteTokenizer()
    files = [(f"{i}.py", f"x{i} = {i}\n" + "y = (\n" * 3) for i in range(5)]
    q = e2e.held_out_quality(files, tok, 7, 3)  # "x0 = 0\n": the first statement whole, nothing after it
    assert (q["samples"], q["parse_rate"], q["parse_prefix"], q["blank_rate"]) == (3, 1.0, 1.0, 0.0)
    assert sum(q["token_counts"]) == 3 * 7
    q = e2e.held_out_quality(files, tok, 100, 3)  # whole files, whose open brackets never close
    assert (q["parse_rate"], q["parse_prefix"]) == (0.0, pytest.approx(0.25))
    assert sum(q["token_counts"]) == sum(len(text) for _, text in files[:3])
    with pytest.raises(ValueError, match="no files"):
        e2e.held_out_quality([], tok, 7, 3)
