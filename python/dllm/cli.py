"""The ``dllm`` command line: ``dllm demo``, ``train``, ``sample``, ``eval`` and ``bench`` (``--help`` on each lists
every option)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import os
import platform
import sys
import typing

from ._extension import build_info
from .devices import DEVICE_HELP
from .training.checkpoint import CheckpointError, RunFolderInUse
from .training.config import TrainConfig

# `dllm bench NAME`: each module has add_arguments(parser) and run(ns); its docstring is the help.
BENCHMARKS = {"step": "dllm.benchmarks.step_latency", "e2e": "dllm.benchmarks.e2e"}


# Mistakes a user can fix, found once the command runs: reported in one line, without a traceback.
USER_ERRORS = (ValueError, OSError, CheckpointError, FloatingPointError, RunFolderInUse)


def user_error_text(error: Exception) -> str:
    if isinstance(error, (FileExistsError, NotADirectoryError)) and error.filename:  # mkdir's "[Errno 17] File exists"
        return f"{error.filename!r} (or a folder above it) is a file, not a folder: choose another folder"
    return str(error)


def fail(parser: argparse.ArgumentParser, error: Exception) -> typing.NoReturn:
    """Ends the command with a one-line error (a user's mistake, found once it runs)."""
    # parser.error would print the usage block too, which says nothing about an error found at run time
    parser.exit(2, f"{parser.prog}: error: {user_error_text(error)}\n")


def _flag_type(field: dataclasses.Field):
    hints = typing.get_type_hints(TrainConfig)
    t = hints[field.name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args else t


def _seed(text: str) -> int:
    """A sampling or evaluation --seed, in the range dllm train takes (torch's generators would
    wrap a negative or a too-large one silently)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2^63), got {value}")
    return value


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="JSON", help="a JSON file of options (as in OUT_DIR/run_config.json's "
                   "'train' entry); flags given on the command line override it")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        default = f.default
        # A None default means "derived": the help text says from what.
        help_text = meta["help"] if default is None else f"{meta['help']} (default: {default})"
        typ = _flag_type(f)
        if typ is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            p.add_argument(flag, dest=f.name, type=typ, default=None, choices=meta.get("choices"),
                           metavar=None if meta.get("choices") else f.name.upper(), help=help_text)


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    base = {}
    if ns.config:
        with open(ns.config, encoding="utf-8") as fh:  # JSON is UTF-8 whatever the locale
            try:
                base = json.load(fh)
            except json.JSONDecodeError as e:
                raise ValueError(f"--config {ns.config!r} is not valid JSON: {e}") from None
        base = base.get("train", base) if isinstance(base, dict) else base
        if not isinstance(base, dict):
            raise ValueError(f"--config {ns.config!r} must hold a JSON object of training options (or a run_config.json)")
    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig) if getattr(ns, f.name) is not None}
    return TrainConfig.from_dict({**base, **given})


def main(argv: list[str] | None = None) -> int:
    # Model text may hold characters stdout's encoding lacks (a byte-level model emits any code point):
    # printed escaped, not a UnicodeEncodeError ending the command (a C locale's surrogateescape only
    # passes undecodable bytes through, and fails on them too)
    if getattr(sys.stdout, "errors", None) in ("strict", "surrogateescape") and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C: an interrupted training has already said what it saved and how to resume
        print("dllm: interrupted", file=sys.stderr)
        return 130


def version_text() -> str:
    """`dllm --version`: build_info() in one line, the first thing a bug report needs."""
    info = build_info()
    if info["cuda"]:
        kernels = "CUDA kernels for " + ", ".join(f"sm_{a}" for a in info["cuda_archs"])
        kernels += " (with the Hopper wgmma attention)" if info["wgmma"] else ""
    else:
        kernels = "CPU kernels only"
    return (f"dllm {info['version']} (commit {info['commit']}), torch {info['torch']}, "
            f"Python {platform.python_version()}; {kernels}")


class _PrintVersion(argparse.Action):
    # argparse's own "version" action wraps the line at the terminal's width
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="dllm", description="dllm: discrete diffusion language models")
    parser.add_argument("--version", action=_PrintVersion, help="print dllm's version and build, then exit")
    sub = parser.add_subparsers(dest="command", required=True)
    tp = sub.add_parser("train", help="train a model (MDLM, SEDD, LLaDA or autoregressive)",
                        description="Train a diffusion or autoregressive LM. Default corpus: the running Python's "
                        "standard-library sources. Run under `torchrun --nproc_per_node N` for data parallelism.")
    add_train_arguments(tp)
    dp = sub.add_parser("demo", help="train a tiny code model for a few minutes, then watch it denoise",
                        description="Train a tiny MDLM and its autoregressive baseline on the standard library "
                        "(bounded by --minutes each), then show samples, a completion, an infill, the denoising "
                        "step by step and tokens/s; outputs go to --out-dir.")
    dp.add_argument("--minutes", type=float, default=3.0, help="training time per model (default: 3)")
    dp.add_argument("--out-dir", default="out/demo", help="output folder (default: out/demo)")
    dp.add_argument("--gen-length", type=int, default=128,
                    help="tokens per sample, a multiple of 8, at least 16 (default: 128)")
    dp.add_argument("--steps", type=int, default=64, help="sampler steps for the unconditional samples (default: 64)")
    dp.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")
    dp.add_argument("--retrain", action="store_true", help="train again even if the output folder has models")
    dp.add_argument("--seed", type=_seed, default=0, help="sampling seed (default: 0)")
    dp.add_argument("--tokenizer", choices=("bpe", "byte"), default="bpe",
                    help="a 4096-entry BPE trained on the corpus once and cached, or UTF-8 bytes (default: bpe)")
    sp = sub.add_parser("sample", help="generate from a model folder written by `dllm train` or a published checkpoint",
                        description="Generate with a trained model: masked-diffusion models take dllm.generate's "
                        "samplers, SEDD models the SEDD samplers, autoregressive models their KV cache. Published "
                        "SEDD, MDLM, LLaDA and Dream folders load too (they need their tokenizer.json).")
    sp.add_argument("model", help="a model folder (OUT_DIR/model of `dllm train`) or a published checkpoint folder")
    sp.add_argument("--prompt", default="", help="text to continue (default: none)")
    sp.add_argument("--gen-length", type=int, default=128, help="tokens to generate (default: 128)")
    sp.add_argument("--steps", type=int, default=64, help="sampler steps (default: 64; fast-dllm and "
                    "first-hitting choose their own, autoregressive models take one per token)")
    sp.add_argument("--sampler", default=None, help="a dllm.generate sampler (default: sedd-analytic for SEDD "
                    "models, the family's own for published MDLM, LLaDA and Dream, else llada); an error for "
                    "autoregressive models")
    sp.add_argument("--temperature", type=float, default=None, help="sampling temperature, 0 = greedy (default: "
                    "0.8; an error for the SEDD samplers, which draw from the reverse process itself)")
    sp.add_argument("--block-length", type=int, default=None, help="semi-autoregressive block of the llada and "
                    "fast-dllm samplers (default: llada the whole --gen-length, fast-dllm 32)")
    sp.add_argument("--num-samples", type=int, default=1, help="samples to draw (default: 1)")
    sp.add_argument("--seed", type=_seed, default=0, help="sampling seed (default: 0)")
    sp.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")
    sp.add_argument("--show-steps", action="store_true", help="print the canvas after every step (diffusion "
                    "samplers)")
    sp.add_argument("--cache", choices=("prefix", "dual"), default=None, help="Fast-dLLM's approximate KV cache, "
                    "refreshed once per block (with --sampler fast-dllm only; default: none)")
    sp.add_argument("--cuda-graph", action="store_true", help="replay each sampler step as a CUDA graph "
                    "(every sampler, fast-dllm without --cache prefix, and autoregressive models' decoding; "
                    "on CUDA only)")
    ep = sub.add_parser("eval", help="validation loss of a model folder written by `dllm train`",
                        description="The NLL of a trained model on the first --batches batches of the held-out split "
                        "of its corpus (the bound for diffusion models, exact for autoregressive ones), in nats and "
                        "bits per token and bits per byte, with one standard error over the windows (the _se keys), "
                        "as JSON. Defaults are the run's, so the numbers match its last validation of the weights "
                        "the folder holds: the EMA's (val_bpb_ema) when the run kept one, as \"weights\" says.")
    ep.add_argument("model", help="a model folder (OUT_DIR/model of `dllm train`)")
    ep.add_argument("--batches", type=int, default=None, help="validation batches (default: the run's --eval-batches)")
    ep.add_argument("--batch-size", type=int, default=None,
                    help="sequences per batch; the windows scored are --batches x --batch-size (default: the run's)")
    ep.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")
    ep.add_argument("--seed", type=_seed, default=None, help="seed of the diffusion noise (default: the run's --seed)")
    ep.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                    help="progress bars on stderr (tokenizing, validation; default: on)")
    bp = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS),
                        description="Benchmarks: step times dllm's sampler step against the eager step users "
                                    "run today; e2e compares a diffusion LM with its autoregressive baseline end "
                                    "to end.")
    bench_sub = bp.add_subparsers(dest="benchmark", required=True)
    bench_parsers = {}
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or name).strip().splitlines()[0]
        bench_parsers[name] = bench_sub.add_parser(name, help=summary, description=module.__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(bench_parsers[name])
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if ns.command == "demo":
        from .demo import run_demo

        if not 0 < ns.minutes < math.inf or ns.gen_length < 16 or ns.gen_length % 8 or ns.steps <= 0:
            dp.error("--minutes (finite) and --steps must be positive and --gen-length a multiple of 8, at least 16")
        try:
            run_demo(ns.out_dir, ns.minutes, ns.gen_length, ns.steps, ns.device, ns.retrain, ns.seed, ns.tokenizer)
        except USER_ERRORS as e:
            fail(dp, e)
        return 0
    if ns.command == "sample":
        from .sample_cli import run_sample

        if ns.gen_length <= 0 or ns.steps <= 0 or ns.num_samples <= 0:
            sp.error("--gen-length, --steps and --num-samples must be positive")
        try:
            run_sample(ns.model, prompt=ns.prompt, gen_length=ns.gen_length, steps=ns.steps, sampler=ns.sampler,
                       temperature=ns.temperature, block_length=ns.block_length, num_samples=ns.num_samples,
                       seed=ns.seed, device=ns.device, show_steps=ns.show_steps, cache=ns.cache,
                       cuda_graph=ns.cuda_graph)
        except USER_ERRORS as e:
            fail(sp, e)
        return 0
    if ns.command == "eval":
        from .eval_cli import run_eval

        try:
            result = run_eval(ns.model, batches=ns.batches, batch_size=ns.batch_size, device=ns.device, seed=ns.seed,
                              progress=ns.progress)
        except USER_ERRORS as e:
            fail(ep, e)
        print(json.dumps(result, indent=2))
        return 0
    if ns.command == "bench":
        try:
            importlib.import_module(BENCHMARKS[ns.benchmark]).run(ns)
        except USER_ERRORS as e:
            fail(bench_parsers[ns.benchmark], e)
        return 0
    if ns.command == "train":
        from .training import train

        try:
            cfg = config_from_args(ns)
        except (ValueError, OSError) as e:
            tp.error(str(e))
        try:
            result = train(cfg)
        except USER_ERRORS as e:
            fail(tp, e)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
