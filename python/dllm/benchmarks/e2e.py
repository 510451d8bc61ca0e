"""`dllm bench e2e`: can a diffusion LM outrun the autoregressive baseline of the same size?

Trains (or loads) an MDLM and the causal transformer on the same backbone, data, recipe and budget,
then sweeps batch size x generation length x sampler steps x sampler, measuring throughput
(tokens/s, latency per call) and, at every point, quality: the validation NLL (a T-step bound for
diffusion), the parse rate of samples, the parse rate and exact match of infilled held-out function
bodies, and the token entropy beside each. Writes report.md, results.json and PNG plots to --out-dir.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import warnings
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.corpus import load_corpus
from ..devices import DEVICE_HELP, resolve_device
from ..models.config import SIZES
from ..models.io import read_config
from ..objectives import get_objective
from ..ops import cuda_kernel_supports
from ..sampling import generate
from ..sampling.cuda_graph import MAX_SESSIONS
from ..sampling.pretrained import load_for_sampling
from ..training.config import TrainConfig
from ..training.evaluation import standard_error
from ..training.timed import RECIPE_KEYS, SHAPE_KEYS, recipe_of, train_for_minutes
from .code_quality import (blank_rate, cut_at, exact_match, held_out_functions, parse_rate, parseable_prefix,
                           unigram_entropy)
from .common import card, command_line, git_commit, quantile, time_interleaved, utc_now
from .e2e_partial import Partial, sweep_identity
from .e2e_verdict import verdicts

# Fast-dLLM's KV cache for dllm.generate(cache=...): "dual", its fastest (the prefix and the suffix of
# the current block are cached, each step feeds only the block).
FAST_DLLM_CACHE = "dual"
SAMPLERS = ("mdlm", "llada", "fast-dllm")
SAMPLER_NAMES = {"mdlm": "mdlm", "llada": "llada:low_confidence", "fast-dllm": "fast-dllm"}
BLOCK_LENGTH = 32        # llada and fast-dllm: semi-autoregressive blocks of 32 tokens (Fast-dLLM's default, LLaDA's example; LLaDA's generate() defaults to 128)
FAST_DLLM_THRESHOLD = 0.9
MIN_BODY = 4             # tokens: the shortest function body worth infilling
PROMPT_TOKENS = 16       # of a held-out file's end, before the end-of-text that samples follow (file_start_prompts)
DEFAULT_TRAIN_STEPS = 20000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="out/bench-e2e", help="report folder (default: out/bench-e2e)")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="training time per model when a model folder is not given (default: 10)")
    p.add_argument("--model-dir", default=None, help="a trained MDLM model folder to reuse (OUT_DIR/model of `dllm train`)")
    p.add_argument("--ar-dir", default=None, help="a trained autoregressive model folder to reuse")
    p.add_argument("--train-dir", default=None, help="where to train the models (default: OUT_DIR/models); "
                   "models already there are reused unless --retrain")
    p.add_argument("--train-steps", type=int, default=None,
                   help="optimizer steps per model, the other cap beside --minutes: equal steps keep the budgets equal "
                   "on a machine shared with other work (default: those of --model-dir / --ar-dir when given, else "
                   f"{DEFAULT_TRAIN_STEPS})")
    p.add_argument("--retrain", action="store_true", help="train again even if --train-dir has models")
    p.add_argument("--train-only", action="store_true",
                   help="train (or find) both models in --train-dir and stop; a later call with the same flags "
                        "reuses them and runs the sweep (on a GPU, training can then overlap work that times nothing)")
    p.add_argument("--size", default="small", choices=sorted(SIZES), help="model size preset (default: small)")
    p.add_argument("--data", default=None,
                   help="corpus: a text file or folder (default: that of --model-dir / --ar-dir when given, else the "
                        "standard library)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="batch sizes (default: 1 16)")
    p.add_argument("--gen-lengths", type=int, nargs="+", default=[256, 1024],
                   help="generated tokens per sequence (default: 256 1024)")
    p.add_argument("--step-fractions", nargs="+", default=["1", "1/2", "1/4", "1/8"],
                   help="diffusion steps as fractions of the generation length (default: 1 1/2 1/4 1/8)")
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS,
                   help="diffusion samplers (default: mdlm llada fast-dllm)")
    p.add_argument("--samples", type=int, default=32,
                   help="generated samples and infilled functions per quality point (default: 32)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of both models (default: 1)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per throughput point, after one warm-up (default: 3)")
    p.add_argument("--nll-windows", type=int, default=64, help="held-out windows for the validation NLL (default: 64)")
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is steadier on a busy machine)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and sampling (default: 0)")


@dataclass
class Models:
    diffusion: torch.nn.Module   # MaskedLM: what dllm.generate takes
    ar: torch.nn.Module          # ARTransformer
    tok: object
    dirs: dict
    seq_len: int                 # the window both were trained on
    data: str | None
    val_fraction: float
    sizes: dict                  # each model's size_label
    differences: tuple[str, ...] = ()  # what else the two runs did not share (batch, window, model settings)


def _check(ns) -> list[Fraction]:
    fracs = []
    for s in ns.step_fractions:
        try:
            f = Fraction(s)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"--step-fractions: {s!r} is not a fraction like 1/4") from None
        if not 0 < f <= 1:
            raise ValueError(f"--step-fractions must lie in (0, 1], got {s}")
        fracs.append(f)
    if min(ns.batch_sizes) <= 0 or min(ns.gen_lengths) <= 0 or ns.samples <= 0 or ns.reps <= 0 or ns.nll_windows <= 0:
        raise ValueError("--batch-sizes, --gen-lengths, --samples, --reps and --nll-windows must be positive")
    for flag, values in (("--batch-sizes", ns.batch_sizes), ("--gen-lengths", ns.gen_lengths),
                         ("--samplers", ns.samplers)):
        if len(set(values)) < len(values):
            raise ValueError(f"{flag} lists a value twice: {' '.join(map(str, values))}")
    if (ns.model_dir is None or ns.ar_dir is None) and not (0 < ns.minutes < math.inf and
                                                            (ns.train_steps is None or ns.train_steps > 0)):
        raise ValueError("--minutes (finite) and --train-steps must be positive when models are trained")
    if not 0 <= ns.temperature < math.inf:
        raise ValueError(f"--temperature must be finite and >= 0, got {ns.temperature}")
    if ns.threads is not None and ns.threads <= 0:
        raise ValueError("--threads must be positive")
    for length in ns.gen_lengths:
        if length > BLOCK_LENGTH and length % BLOCK_LENGTH and {"llada", "fast-dllm"} & set(ns.samplers):
            raise ValueError(f"--gen-lengths: {length} is not a multiple of the {BLOCK_LENGTH}-token blocks of "
                             "llada and fast-dllm")
    return sorted(set(fracs), reverse=True)


def _run_record(model_dir: Path) -> dict:
    run_config = model_dir.parent / "run_config.json"
    return json.loads(run_config.read_text()) if run_config.is_file() else {}


def _training_config(model_dir: Path) -> dict:
    return _run_record(model_dir).get("train", {})


def _check_corpus(model_dirs, data: str | None, val_fraction: float) -> None:
    """Refuses a model whose run record names another corpus or split than the held-out text's: that
    text may then be text it trained on, and the two models would not share their data."""
    recorded = {d: _run_record(d).get("corpus_hash") for d in model_dirs}
    if not any(recorded.values()):
        return
    held_out = load_corpus(data, val_fraction=val_fraction).hash
    for d, h in recorded.items():
        if h is not None and h != held_out:
            raise ValueError(f"{d} was trained on another corpus or split than {data or 'the standard library'} at "
                             f"--val-fraction {val_fraction} (corpus hash {h[:12]}): both models must train on the "
                             "data whose validation split scores them; leave out --data to take that model's own")


# model settings that differ between the two by design
_ARCH_KEYS = {"arch", "time_conditioning"}


def _differences(dirs: dict) -> tuple[str, ...]:
    """Optimisation (batch, learning rate, ...), window (max_seq_len) and model settings in which the two
    runs differ (each side's value)."""
    train = {k: _training_config(d) for k, d in dirs.items()}
    recipe = {k: recipe_of(t) for k, t in train.items()}
    model = {k: read_config(d)["model"] for k, d in dirs.items()}
    pairs = []
    if train["mdlm"] and train["ar"]:  # a folder without a run record says nothing of its optimisation
        # dropout is a model setting too, compared below; a key a record lacks (written before it existed) is unknown
        pairs += [(key, recipe["mdlm"][key], recipe["ar"][key]) for key in RECIPE_KEYS
                  if key != "dropout" and key in recipe["mdlm"] and key in recipe["ar"]]
        if train["mdlm"].get("schedule") == "cosine" == train["ar"].get("schedule"):  # the steps place its decay
            pairs.append(("cosine schedule's steps", train["mdlm"].get("steps"), train["ar"].get("steps")))
    # None is a setting too (kv_heads None: as many as heads), unlike a key one architecture lacks
    pairs += [(key, model["mdlm"][key], model["ar"][key])
              for key in sorted((set(model["mdlm"]) & set(model["ar"])) - _ARCH_KEYS - set(SHAPE_KEYS))]
    return tuple(f"{key} {a} and {b}" for key, a, b in pairs if a != b)


def _model_dirs(ns, device: str) -> dict:
    """The two model folders: the ones given, the others trained (or found) in --train-dir."""
    if ns.model_dir and ns.ar_dir:
        return {"mdlm": Path(ns.model_dir), "ar": Path(ns.ar_dir)}
    max_gen = max(ns.gen_lengths)
    # Room for the prompt (PROMPT_TOKENS of a file and an end-of-text) and the infill context.
    seq_len = max_gen + max(32, max_gen // 4)
    train_dir = Path(ns.train_dir or Path(ns.out_dir) / "models")
    # A model trained here beside a given one takes that one's corpus, tokenizer and held-out split (the
    # same data, and none of the other's held-out text to train on), its window, its optimisation and,
    # unless --train-steps says otherwise, its number of steps: the same budget.
    data, tokenizer, val_fraction, recipe = ns.data, "byte", TrainConfig.val_fraction, None
    steps = ns.train_steps or DEFAULT_TRAIN_STEPS
    given = Path(ns.model_dir or ns.ar_dir) if ns.model_dir or ns.ar_dir else None
    if given:
        trained = _training_config(given)
        data = ns.data if ns.data is not None else trained.get("data")
        tokenizer = str(given / "tokenizer.json") if (given / "tokenizer.json").is_file() else "byte"
        val_fraction = trained.get("val_fraction", val_fraction)
        seq_len = int(read_config(given)["model"]["max_seq_len"])
        _check_window(seq_len, max_gen)
        recipe = recipe_of(trained)
        if ns.train_steps is None:
            steps = _trained_steps(given) or trained.get("steps") or DEFAULT_TRAIN_STEPS
        if ns.data is not None:  # before training the other model on it
            _check_corpus([given], data, val_fraction)
        said = ", ".join(f"{k} {v}" for k, v in recipe.items())
        print(f"[e2e] the model trained beside {given} takes its recipe" + (f" ({said})" if recipe else
              " (it has no run record: the default one)") + f", {seq_len}-token windows and {steps} steps "
              f"(or --minutes {ns.minutes:g}, whichever ends first)")
    dirs = {}
    for objective, path in (("mdlm", ns.model_dir), ("ar", ns.ar_dir)):
        if path:
            dirs[objective] = Path(path)
            continue
        # and the given one's size: the comparison is of models of one size, whatever --size says
        size, shape = _size_and_shape(read_config(given)["model"], ns.size) if given else (ns.size, None)
        dirs[objective] = train_for_minutes(
            objective, train_dir, ns.minutes, device=device, seq_len=seq_len, size=size, shape=shape, data=data,
            tokenizer=tokenizer, retrain=ns.retrain, seed=ns.seed, steps=steps, log_prefix="[e2e]",
            val_fraction=val_fraction, recipe=recipe)
        reached = _trained_steps(dirs[objective]) if given else None
        if reached is not None and reached < steps:
            warnings.warn(f"the {objective} model trained beside {given} stopped at step {reached} of its {steps} "
                          f"(--minutes {ns.minutes:g}): the report compares models of unequal training; a larger "
                          "--minutes (or --retrain with one) gives it the given model's steps", stacklevel=2)
    return dirs


def _check_window(window: int, max_gen: int) -> None:
    if window < max_gen + PROMPT_TOKENS + 1:
        raise ValueError(f"the models take {window} tokens; generating {max_gen} after a "
                         f"{PROMPT_TOKENS + 1}-token prompt needs {max_gen + PROMPT_TOKENS + 1}: train with a longer "
                         "window or pass shorter --gen-lengths")


def _size_and_shape(model: dict, fallback: str) -> tuple[str, dict | None]:
    """The named size of a model config, or ``fallback`` with the config's hidden, layers and heads."""
    shape = {k: model[k] for k in SHAPE_KEYS}
    named = next((name for name, preset in SIZES.items() if all(preset[k] == v for k, v in shape.items())), None)
    return (named, None) if named else (fallback, shape)


def size_label(model: dict) -> str:
    """``tiny`` / ``small`` / ``medium``, or ``hidden x layers, N heads`` for a model of no named size."""
    size, shape = _size_and_shape(model, "")
    return f"{model['hidden']}x{model['layers']}, {model['heads']} heads" if shape else size


def _load_models(ns, device: str) -> Models:
    dirs = _model_dirs(ns, device)
    max_gen = max(ns.gen_lengths)
    fractions = {_training_config(d).get("val_fraction") for d in dirs.values()} - {None}
    if len(fractions) > 1:
        raise ValueError(f"the models held out different validation splits (--val-fraction "
                         f"{' and '.join(map(str, sorted(fractions)))}): the held-out text of one holds text the other "
                         "trained on; pass models trained with the same --val-fraction")
    diffusion, tok, kind = load_for_sampling(dirs["mdlm"], device)
    ar, ar_tok, ar_kind = load_for_sampling(dirs["ar"], device)
    if kind != "masked" or ar_kind != "ar":
        raise ValueError(f"--model-dir must hold a masked-diffusion model and --ar-dir an autoregressive one; "
                         f"got {kind!r} and {ar_kind!r}")
    if tok.fingerprint != ar_tok.fingerprint:
        raise ValueError("the diffusion and autoregressive models use different tokenizers")
    configs = {k: read_config(d)["model"] for k, d in dirs.items()}
    windows = {int(c["max_seq_len"]) for c in configs.values()}
    _check_window(min(windows), max_gen)
    cfg = _training_config(dirs["mdlm"])
    # the held-out split: of the corpus asked for, else of the one the diffusion model trained on
    data, val_fraction = ns.data if ns.data is not None else cfg.get("data"), cfg.get("val_fraction", 0.05)
    _check_corpus(dirs.values(), data, val_fraction)
    return Models(diffusion, ar, tok, {k: str(v) for k, v in dirs.items()}, min(windows), data, val_fraction,
                  {k: size_label(c) for k, c in configs.items()}, _differences(dirs))


def _val_windows(models: Models, count: int) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """The first ``count`` packed windows of the held-out files, and those files."""
    corpus = load_corpus(models.data, val_fraction=models.val_fraction)
    ids: list[int] = []
    need = count * models.seq_len
    for _, text in corpus.val:
        ids.extend(int(i) for i in models.tok.encode(text))
        ids.append(models.tok.eos_id)
        if len(ids) >= need:
            break
    n = len(ids) // models.seq_len
    if n == 0:
        raise ValueError(f"the held-out split has fewer than {models.seq_len} tokens")
    return torch.tensor(ids[:min(n, count) * models.seq_len]).view(-1, models.seq_len), corpus.val


@torch.no_grad()
def nll_per_window(net, objective, windows: torch.Tensor, steps: int | None, *, seed: int, device: str,
                   precision) -> torch.Tensor:
    """Held-out NLL of each window in nats per token, float64 ``[n]``: exact for the autoregressive
    objective; for MDLM the bound of the T-step masked process (``steps=T``) or the continuous-time bound
    (``steps=None``), each window's estimate from one draw of the noise.

    The T-step bound is that of the samplers' process (mask rate t, all-masked at t = 1, so the prior
    term is 0): ``sum_i E[(alpha_s - alpha_t) / (1 - alpha_t) * CE_masked]`` over t = i/T, s = (i-1)/T
    with alpha_t = 1 - t, whose weight is 1/(T t): the CE of the tokens masked at rate t weighted by
    1/t, t drawn uniformly from the grid {1/T, ..., 1} (``objective.step_bound``, stratified over the
    windows). The continuous-time bound is ``objective.bound`` (over mask rates [0, 1], stratified by
    the number of masked tokens). The n strata go to the windows in a random order: dealt in the
    windows' order, the first windows (the first held-out files) would always meet small t and the
    last ones large t, and the mean would not estimate the mean of the windows' bounds."""
    n, length = windows.shape
    g = torch.Generator().manual_seed(seed)
    if steps is None:
        draws, estimate = objective.bound_draw(n, length, g), objective.bound
    else:
        draws, estimate = objective.draw(n, length, g), objective.step_bound
        stratum = torch.randperm(n, generator=g)
        i = ((stratum + torch.rand(n, generator=g)) / n * steps).floor().clamp(max=steps - 1) + 1
        draws["t"] = (i / steps).float()
    per_window = []
    for lo in range(0, n, 16):
        rows = slice(lo, min(n, lo + 16))
        with precision:
            nll = estimate(net, windows[rows].to(device), {k: v[rows] for k, v in draws.items()})
        per_window.append(nll.double().cpu() / length)
    return torch.cat(per_window)


def _diffusion_steps(sampler: str, length: int, frac: Fraction | None) -> int:
    """The grid's steps for a sampler; llada's round up to a multiple of its blocks (1 for fast-dllm, which adapts)."""
    if frac is None:
        return 1
    steps = max(1, round(length * frac))
    if sampler == "llada":
        blocks = length // min(BLOCK_LENGTH, length)
        steps = -(-steps // blocks) * blocks
    return steps


def _diffusion_kwargs(sampler: str, steps: int, length: int) -> dict:
    kw = dict(sampler=SAMPLER_NAMES[sampler], steps=steps)
    if sampler != "mdlm":
        kw["block_length"] = min(BLOCK_LENGTH, length)
    if sampler == "fast-dllm":
        kw.update(threshold=FAST_DLLM_THRESHOLD, cache=FAST_DLLM_CACHE)
    return kw


def _with_dtype(models: Models, dtype) -> Models:
    if dtype == torch.float32:
        return models
    return replace(models, diffusion=copy.deepcopy(models.diffusion).to(dtype), ar=copy.deepcopy(models.ar).to(dtype))


def file_start_prompts(val_files: list[tuple[str, str]], tok, count: int) -> torch.Tensor:
    """``[count, PROMPT_TOKENS + 1]``: the last PROMPT_TOKENS tokens of held-out files (of at least that
    many) and an end-of-text, so that a file starts next. That is what both models saw before every
    file start in training. A lone end-of-text at position 0 they almost never saw (the training
    windows start anywhere in a file): from it the autoregressive model of
    bench/results/cpu-2core-2026-12-06/e2e-bpe-tiny/ wrote the middle of a file, indented, and
    parsed nowhere (parseable prefix 0.03), against 0.31 after such a prompt."""
    tails = []
    for _, text in val_files:
        ids = [int(i) for i in tok.encode(text)]
        if len(ids) >= PROMPT_TOKENS:
            tails.append(ids[-PROMPT_TOKENS:] + [tok.eos_id])
        if len(tails) == count:
            break
    if not tails:
        raise ValueError(f"no held-out file has the {PROMPT_TOKENS} tokens a prompt takes from its end")
    return torch.tensor([tails[i % len(tails)] for i in range(count)])


class Runner:
    """Generation with either model (in its weights' dtype), always after the same prompts: row i of a
    call that starts at sample ``first`` continues ``prompts[first + i]`` (cyclically)."""

    def __init__(self, models: Models, device: str, temperature: float, seed: int, prompts: torch.Tensor):
        self.m, self.device, self.temperature, self.seed = models, device, temperature, seed
        self.prompts = prompts.to(device)
        # On a GPU both sides replay their steps from CUDA graphs (kernels() says which).
        self.cuda_graph = device.startswith("cuda")

    def generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)

    def prompt(self, batch: int, first: int) -> torch.Tensor:
        rows = torch.arange(first, first + batch, device=self.device) % self.prompts.shape[0]
        return self.prompts[rows]

    def diffusion(self, sampler: str, steps: int, length: int, prompt: torch.Tensor, g: torch.Generator):
        out = generate(self.m.diffusion, prompt, gen_length=length, temperature=self.temperature, generator=g,
                       cuda_graph=self.cuda_graph, **_diffusion_kwargs(sampler, steps, length))
        return out.sequences[:, prompt.shape[1]:], out.nfe

    def ar(self, length: int, prompt: torch.Tensor, g: torch.Generator):
        seq = self.m.ar.generate(prompt, length, temperature=self.temperature, generator=g, cuda_graph=self.cuda_graph)
        return seq[:, prompt.shape[1]:], length

    def call(self, model: str, sampler: str | None, steps: int, length: int, batch: int, g, first: int = 0):
        prompt = self.prompt(batch, first)
        if model == "ar":
            return self.ar(length, prompt, g)
        return self.diffusion(sampler, steps, length, prompt, g)


def _judged(rows: list[list[int]], tok) -> dict:
    """The sample metrics of token rows, each judged up to its first end-of-text."""
    tokens, texts, written = [], [], []
    for row in rows:
        row = cut_at(row, tok.eos_id)  # the text and its tokens alike: what follows is another file
        tokens.extend(row)
        texts.append(tok.decode(row))
        written.append(float(len(row)))
    prefixes = [parseable_prefix(t) for t in texts]
    return {"samples": len(texts), "parse_rate": parse_rate(texts), "parse_prefix": statistics.mean(prefixes),
            "parse_prefix_se": standard_error(torch.tensor(prefixes, dtype=torch.float64)),
            "written": statistics.mean(written), "written_se": standard_error(torch.tensor(written, dtype=torch.float64)),
            # no token before any end-of-text: no diversity, 0 bits (unigram_entropy's NaN would pass every rule)
            "blank_rate": blank_rate(texts), "entropy": unigram_entropy(tokens) if tokens else 0.0,
            "token_counts": sorted(Counter(tokens).values(), reverse=True),  # the verdict's equal-count entropy
            "example": texts[0]}


def _sample_quality(runner: Runner, model: str, sampler, steps: int, length: int, samples: int, chunk: int) -> dict:
    g = runner.generator()
    rows, nfes = [], []
    for lo in range(0, samples, chunk):
        ids, nfe = runner.call(model, sampler, steps, length, min(chunk, samples - lo), g, first=lo)
        nfes.append(nfe)
        rows += ids.tolist()
    return {**_judged(rows, runner.m.tok), "quality_nfe": statistics.mean(nfes)}


def held_out_quality(val_files: list[tuple[str, str]], tok, length: int, count: int) -> dict:
    """The sample metrics of the first ``count`` held-out files' own first ``length`` tokens (a shorter
    file whole), judged as the samples are, which start where a file starts: what a model that wrote
    like the data would score at this length. ``count`` is the samples' count, since the plug-in entropy
    grows with the tokens it is taken over. Short windows cut most files inside their docstring or first
    statement, so the data's own parse rate at 64 tokens is far below 1."""
    files = val_files[:count]
    if not files:
        raise ValueError("the held-out split has no files")
    rows = [[int(i) for i in tok.encode(text)[:length]] + [tok.eos_id] for _, text in files]
    return {k: v for k, v in _judged(rows, tok).items() if k != "example"}


def _infill_quality(runner: Runner, tasks, model: str, sampler, frac) -> dict:
    """Diffusion: the body is masked between its context and filled with ``round(len(body) * frac)`` steps.
    Autoregressive: completion from the context before the body only (it cannot see the suffix).
    ``infill_steps``: those steps (autoregressive: tokens) averaged over the tasks, the x of the plots."""
    g = runner.generator()
    fills, tokens, nfes, steps = [], [], [], []
    mask_id = runner.m.tok.mask_id
    for task in tasks:
        n = len(task.body)
        if model == "ar":
            prompt = torch.tensor([task.before], device=runner.device)
            hole = runner.m.ar.generate(prompt, n, temperature=runner.temperature, generator=g)[0, len(task.before):]
            nfes.append(n)
            steps.append(n)
        else:
            template = torch.tensor(task.before + [mask_id] * n + task.after, device=runner.device)
            steps.append(max(1, round(n * frac)) if frac is not None else 1)
            kw = _diffusion_kwargs(sampler, steps[-1], template.numel())
            if "block_length" in kw:
                kw["block_length"] = template.numel()  # one block: the hole sits between known context
            out = generate(runner.m.diffusion, gen_length=template.numel(), infill=template,
                           temperature=runner.temperature, generator=g, **kw)
            hole = out.sequences[0, len(task.before):len(task.before) + n]
            nfes.append(out.nfe)
        ids = hole.tolist()
        tokens.extend(ids)
        fills.append(runner.m.tok.decode(ids))
    return {"infill_parse": sum(t.function_parses(f) for t, f in zip(tasks, fills)) / len(tasks),
            "infill_exact": exact_match(fills, [t.body_text for t in tasks]),
            "infill_entropy": unigram_entropy(tokens), "infill_steps": statistics.mean(steps),
            "infill_nfe": statistics.mean(nfes)}


def _throughputs_in_turns(runner: Runner, points: list[tuple], length: int, batch: int, reps: int) -> list[dict]:
    """Times every point at one (length, batch) in turns, the autoregressive baseline among them, so
    that a load drifting over the sweep moves all of them alike and their ratios hold."""
    nfes: list[list[int]] = [[] for _ in points]

    def caller(i: int, model: str, sampler, steps: int):
        g = runner.generator()
        return lambda: nfes[i].append(runner.call(model, sampler, steps, length, batch, g)[1])

    fns = [caller(i, model, sampler, steps) for i, (model, sampler, steps) in enumerate(points)]
    rows = []
    for times, nfe in zip(time_interleaved(fns, runner.device, warmup=1, reps=reps), nfes):
        times = sorted(times)
        median = statistics.median(times)
        # p20-p80 of five or more runs, min-max of fewer (the report's header says which)
        spread = (quantile(times, 0.2), quantile(times, 0.8)) if len(times) >= 5 else (times[0], times[-1])
        # every call's time kept, so that a reader can put an interval on a speedup after the run
        rows.append({"batch": batch, "latency_ms": median, "spread_ms": spread, "times_ms": times,
                     "tokens_per_s": batch * length / (median * 1e-3), "nfe": statistics.mean(nfe[1:])})
    return rows


def _sdpa_backends(device: str, dtype, heads: int, head_dim: int, q_len: int, causal: bool) -> list[str]:
    """The SDPA backends that accept this call (PyTorch takes the first of its priority order)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, heads, q_len, head_dim, device=device, dtype=dtype)
    kv = torch.randn(1, heads, 16, head_dim, device=device, dtype=dtype)  # keys and values
    ok = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        try:
            with warnings.catch_warnings(), sdpa_kernel([backend]):
                warnings.simplefilter("ignore")
                F.scaled_dot_product_attention(q, kv, kv, is_causal=causal)
            ok.append(backend.name.lower())
        except RuntimeError:
            pass
    return ok


def kernels(models: Models, device: str, dtype) -> dict:
    cfg = models.ar.config
    probe = torch.empty(1, 1, cfg.heads, cfg.head_dim, device=device, dtype=dtype)
    cuda = device.startswith("cuda")
    fused = cuda and cuda_kernel_supports(probe)  # the op's CUDA kernels cover this model's attention
    where = "CUDA" if cuda else "C++ CPU"
    dense = _sdpa_backends(device, dtype, cfg.heads, cfg.head_dim, 16, False)
    prefill = _sdpa_backends(device, dtype, cfg.heads, cfg.head_dim, 16, True)
    attention = (f"SDPA, bidirectional, over whole canvases (eligible backends: {', '.join(dense)}); a fast-dllm "
                 f"block's queries over the cached rest: dllm.ops.attention" if fused else
                 f"SDPA, bidirectional (eligible backends: {', '.join(dense)}; dllm's fused attention covers "
                 f"bf16/fp16 head dims 64 and 128 on CUDA, this is {str(dtype).removeprefix('torch.')} head dim "
                 f"{cfg.head_dim} on {device})")
    decode = ("SDPA over the cache's filled prefix (eager, int positions)" if not cuda else
              "dllm.ops.attention's split-key decoding kernels over the cache's whole buffers with each row's "
              "filled length" if fused else "SDPA over the whole buffers with the lengths as a key mask")
    return {
        "precision": ("bfloat16 weights (the NLL: bfloat16 autocast)" if dtype == torch.bfloat16 else "float32"),
        "diffusion": f"sampler steps: dllm.ops.predict_masked + dllm.ops.commit_tokens ({where} kernels); "
                     f"attention: {attention}; fast-dllm KV cache: {FAST_DLLM_CACHE}; "
                     + ("CUDA graph: every sampler's steps, captured by a point's warm-up call and replayed by its "
                        "timed calls (one a step shape: mdlm's with and without the network, fast-dllm's refresh "
                        "and cached block)" if cuda
                        else "no CUDA graph (CPU)"),
        "ar": f"KV cache (one token a forward); attention: SDPA, causal prefill (eligible: {', '.join(prefill)}); "
              f"decode, one query: {decode}; "
              f"sampling: dllm.ops.sample_categorical ({where} kernel); "
              + ("CUDA graph: the one-token step, captured by a point's warm-up call and replayed by its timed "
                 "calls" if cuda else
                 "no CUDA graph (CPU)"),
    }


def run(ns: argparse.Namespace) -> dict:
    """Runs the whole sweep and writes the report; returns what results.json holds."""
    from tqdm.auto import tqdm

    from .e2e_report import write_report

    fracs = _check(ns)
    Path(ns.out_dir).mkdir(parents=True, exist_ok=True)  # an unwritable folder fails now, not after the sweep
    device = str(resolve_device(ns.device))
    timed_in_turns = sum(1 if sampler == "fast-dllm" else len(fracs) for sampler in ns.samplers)
    if device.startswith("cuda") and timed_in_turns > MAX_SESSIONS:
        # each point's graphs are a session of the diffusion model, which keeps the last MAX_SESSIONS: timed
        # in turns, more points than that evict every session before its next call, which captures again
        raise ValueError(f"{timed_in_turns} diffusion points a length and batch, timed in turns, exceed the "
                         f"{MAX_SESSIONS} CUDA-graph configurations a model keeps: every timed call would capture "
                         "its graphs again; pass fewer --step-fractions or --samplers")
    if ns.threads:
        torch.set_num_threads(ns.threads)
    torch.manual_seed(ns.seed)
    if ns.train_only:
        dirs = _model_dirs(ns, device)
        print(f"[e2e] models ready: {', '.join(str(d) for d in dirs.values())}")
        return {"model_dirs": {k: str(d) for k, d in dirs.items()}}
    models = _load_models(ns, device)
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    precision = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    # Generation on a GPU runs bfloat16 copies of the weights, as an inference server does, not
    # autocast: its cast weights would end with each call, and with them the CUDA graphs that
    # later calls replay (the NLL keeps autocast over the float32 weights).
    windows, val_files = _val_windows(models, ns.nll_windows)
    runner = Runner(_with_dtype(models, dtype), device, ns.temperature, ns.seed,
                    file_start_prompts(val_files, models.tok, ns.samples))
    # The infill template (context, hole, context) fits the window the models were trained on.
    hole = min(128, models.seq_len // 3)
    before = models.seq_len // 2
    tasks = held_out_functions(val_files, models.tok, max_body=hole, min_body=MIN_BODY, before=before,
                               after=models.seq_len - before - hole, count=ns.samples, seed=ns.seed)
    if not tasks:
        raise ValueError(f"no held-out function has a body of {MIN_BODY}-{hole} tokens to infill (the hole is a third of "
                         f"the models' {models.seq_len}-token window): pass longer --gen-lengths, or a corpus of "
                         "Python files with small functions")

    objectives = {}
    for name, d in models.dirs.items():
        cfg = read_config(d)["objective"]
        if name == "mdlm" and (cfg.get("name") != "mdlm" or cfg.get("noise", {}).get("type") != "loglinear"):
            raise ValueError("the T-step NLL bound is implemented for MDLM on the log-linear schedule; "
                             f"--model-dir holds {cfg}")
        objectives[name] = get_objective(cfg["name"], models.tok)
    nets = {"mdlm": models.diffusion.model, "ar": models.ar}
    for net in nets.values():
        net.eval()
    nll_cache: dict = {}

    def nll(model: str, steps: int | None) -> tuple[float, float]:
        """The mean over the windows and its standard error."""
        key = (model, steps if model == "mdlm" else None)
        if key not in nll_cache:
            per = nll_per_window(nets[model], objectives[model], windows, key[1], seed=ns.seed, device=device,
                                 precision=precision)
            nll_cache[key] = (per.mean().item(), standard_error(per))
        return nll_cache[key]

    points = []  # (model, sampler, length, frac)
    for length in ns.gen_lengths:
        points.append(("ar", None, length, None))
        for sampler in ns.samplers:
            points += [("mdlm", sampler, length, f) for f in ([None] if sampler == "fast-dllm" else fracs)]
    described = []  # (point row, steps) in the order of points
    for model, sampler, length, frac in points:
        steps = length if model == "ar" else _diffusion_steps(sampler, length, frac)
        point = {"model": "diffusion (mdlm)" if model == "mdlm" else "autoregressive", "sampler": sampler or "kv-cache",
                 "gen_length": length, "fraction": str(frac) if frac is not None else None, "steps": steps}
        described.append((point, steps))
    chunk = max(ns.batch_sizes)
    # What is measured so far survives an interrupted sweep (partial.json, which the report replaces
    # at the end), and a later call of the same sweep on the same models goes on from there.
    partial = Partial(Path(ns.out_dir) / "partial.json", sweep_identity(ns, fracs, models, device))
    # partial's own containers, filled in place: each write() saves them as they stand
    quality, infill_cache, timed = partial.quality, partial.infill, partial.timed
    # taken after the models trained and loaded: the report gives the load the sweep itself ran under
    load_at_start = os.getloadavg()[0]
    for i in tqdm(range(len(quality), len(points)), desc="e2e quality", dynamic_ncols=True, initial=len(quality),
                  total=len(points)):
        (model, sampler, length, frac), (point, steps) = points[i], described[i]
        q = _sample_quality(runner, model, sampler, steps, length, ns.samples, chunk)
        infill_key = f"{model} {sampler} {frac}"
        if infill_key not in infill_cache:
            infill_cache[infill_key] = _infill_quality(runner, tasks, model, sampler, frac)
        bound_steps = None if sampler == "fast-dllm" else steps
        mean, se = nll(model, bound_steps)
        q.update(infill_cache[infill_key], nll=mean, nll_se=se,
                 nll_kind=("exact" if model == "ar" else f"{bound_steps}-step bound" if bound_steps else
                           "continuous-time bound"))
        quality.append({**point, **q})
        partial.write()
    groups = [(length, batch) for length in ns.gen_lengths for batch in ns.batch_sizes]
    for length, batch in tqdm(groups, desc="e2e throughput", dynamic_ncols=True):
        at = [i for i, point in enumerate(points) if point[2] == length]
        if all((i, batch) in timed for i in at):
            continue
        rows = _throughputs_in_turns(runner, [(points[i][0], points[i][1], described[i][1]) for i in at], length,
                                     batch, ns.reps)
        timed.update({(i, batch): {**described[i][0], **row} for i, row in zip(at, rows)})
        partial.write()
    # the report lists each point's batches together, in the order of points
    speed = [timed[i, batch] for i in range(len(points)) for batch in ns.batch_sizes]
    for row in speed:
        ar_row = next(r for r in speed if r["model"] == "autoregressive" and r["gen_length"] == row["gen_length"]
                      and r["batch"] == row["batch"])
        row["speedup_vs_ar"] = row["tokens_per_s"] / ar_row["tokens_per_s"]
    reference = {str(length): held_out_quality(val_files, models.tok, length, ns.samples) for length in ns.gen_lengths}
    meta = {"command": command_line(), "card": card(device), "torch": torch.__version__, "commit": git_commit(),
            "date": utc_now(), "device": device, "seq_len": models.seq_len, "prompt_tokens": PROMPT_TOKENS,
            "sizes": models.sizes, "differences": models.differences,
            "model_dirs": models.dirs, "budgets": {k: _budget(Path(d)) for k, d in models.dirs.items()},
            "data": models.data,
            "train_steps": {k: _trained_steps(Path(d)) for k, d in models.dirs.items()},
            "load_average": [load_at_start, os.getloadavg()[0]], "cpus": os.cpu_count(),
            "resumed": partial.resumed,
            "threads": torch.get_num_threads(),
            "temperature": ns.temperature, "samples": ns.samples, "infill_tasks": len(tasks), "reps": ns.reps,
            "nll_windows": int(windows.shape[0]), "continuous_bound": nll("mdlm", None)[0],
            "reference": reference, "kernels": kernels(models, device, dtype),
            "fast_dllm": {"threshold": FAST_DLLM_THRESHOLD, "block_length": BLOCK_LENGTH, "cache": FAST_DLLM_CACHE},
            "grid": {"batch_sizes": ns.batch_sizes, "gen_lengths": ns.gen_lengths,
                     "step_fractions": [str(f) for f in fracs], "samplers": ns.samplers}}
    results = {"meta": meta, "throughput": speed, "quality": quality}
    results["verdict"] = verdicts(results)
    out = Path(ns.out_dir)
    write_report(out, results)
    partial.path.unlink(missing_ok=True)
    print(f"[e2e] wrote {out}/report.md, results.json, throughput.png, quality.png, frontier.png")
    return results


def _budget(model_dir: Path) -> dict | None:
    """The time (minutes, None when unlimited) and step cap a model was trained with, from its run
    record (a reused folder's own, not this call's flags); None for a folder without one."""
    cfg = _training_config(model_dir)
    return {"minutes": cfg.get("max_time", 0) / 60 or None, "steps": cfg.get("steps")} if cfg else None


def _trained_steps(model_dir: Path) -> int | None:
    step = read_config(model_dir).get("step")
    return int(step) if step is not None else None

