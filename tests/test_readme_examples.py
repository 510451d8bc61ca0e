"""The Python examples of the README and docs/ as a contract: each block is found by its content and
run as written, after the few textual substitutions declared here (GPU to CPU, sizes a CPU runs in
seconds, paths into tmp_path). Every substitution asserts that its text is still in the block, so an
edit of the docs fails here until this file follows it. Fragments get the names the prose defines (a model,
a prompt, a canvas) from a small prelude, and the outputs the blocks' comments state are checked.
Every block, runnable or not, uses only dllm names that exist, called with parameters they take."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import itertools
import re
from pathlib import Path

import pytest
import torch

import dllm
from dllm.sampling.pretrained import MaskedLM

from _train_helpers import make_corpus, tiny

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [block for doc in DOCS
          for block in re.findall(r"^```python\n(.*?)^```", doc.read_text(encoding="utf-8"), re.S | re.M)]

# each block by a text only it contains
MARKERS = {
    "build_info": "dllm.build_info()",
    "llada_step": "linear_transfer_counts(",
    "op_loop": "dllm.ops.raise_pending_errors()",
    "generate": "out.sequences, out.nfe, out.step_times",
    "fast_dllm_cache": 'cache="dual"',
    "sedd_loop": "dllm.sedd.Absorbing(",
    "published": '"LLaDA-8B-Instruct"',
    "train": "dllm.train(",
}


def block(name: str) -> str:
    found = [b for b in BLOCKS if MARKERS[name] in b]
    assert len(found) == 1, f"{len(found)} python blocks of the docs contain {MARKERS[name]!r}"
    return found[0]


def substitute(code: str, *edits: tuple[str, str]) -> str:
    for old, new in edits:
        assert old in code, f"the docs' block no longer contains {old!r}: update {Path(__file__).name}"
        code = code.replace(old, new)
    return code


def run(name: str, code: str, **context) -> dict:
    """Executes a block with ``torch``, ``dllm`` and ``context`` defined, as the docs' prose has them."""
    namespace = {"torch": torch, "dllm": dllm, **context}
    exec(compile(code, f"docs ({name})", "exec"), namespace)
    return namespace


def masked_model(vocab_size: int, max_seq_len: int):
    """A tiny LLaDA-architecture network with the mask id the samplers need (and the KV-cache interface)."""
    cfg = dllm.models.model_config("tiny", arch="llada", vocab_size=vocab_size, hidden=32, heads=4, layers=1,
                                   max_seq_len=max_seq_len)
    return MaskedLM(dllm.models.build_model(cfg).eval(), vocab_size - 1)


def comment(code: str, statement: str) -> str:
    """The comment on the block's line that holds ``statement``."""
    (line,) = [line for line in code.splitlines() if statement in line]
    return line.split("#", 1)[1]


def gen_length(code: str) -> int:
    (n,) = re.findall(r"gen_length=(\d+)", code)
    return int(n)


def test_every_python_block_is_covered_once():
    names = [[name for name, marker in MARKERS.items() if marker in code] for code in BLOCKS]
    assert sorted(names) == sorted([name] for name in MARKERS), "a python block of the docs this file does not run"


# dllm functions that take another object's fields as keywords (**overrides)
KEYWORDS_OF = {dllm.train: {f.name for f in dataclasses.fields(dllm.TrainConfig)}}


def _dllm_object(node, imported: dict):
    """The dllm object an expression like ``dllm.ops.predict_masked`` names (an AttributeError if it
    does not exist), or None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in imported:
        return None
    obj = imported[node.id]
    for part in reversed(parts):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", list(MARKERS))
def test_blocks_use_existing_dllm_names_with_their_parameters(name):
    tree = ast.parse(block(name))
    imported = {"dllm": dllm}  # as `import dllm` binds it; the fragments use it from the README's first block
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "dllm":
            module = importlib.import_module(node.module)
            imported.update({a.asname or a.name: getattr(module, a.name) for a in node.names})
    checked = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            _dllm_object(node, imported)  # raises for a name that is gone
        if not isinstance(node, ast.Call):
            continue
        fn = _dllm_object(node.func, imported)
        if fn is None:
            continue
        keywords = [k.arg for k in node.keywords]
        assert None not in keywords and not any(isinstance(a, ast.Starred) for a in node.args)
        try:
            inspect.signature(fn).bind(*node.args, **dict.fromkeys(keywords))
        except TypeError as e:
            raise AssertionError(f"docs ({name}): {ast.unparse(node)}: {e}") from None
        if fn in KEYWORDS_OF:
            assert set(keywords) <= KEYWORDS_OF[fn], f"{ast.unparse(node)}: no such option"
        checked += 1
    assert checked  # every block calls dllm


def test_build_info_and_sample_categorical(seeded):
    code = block("build_info")
    ns = run("build_info", substitute(code, ("16, 1024, 50258", "2, 8, 300"), ('device="cuda"', 'device="cpu"')))
    # the comment's dict: its keys, the types of their values, and the version
    after = code.split("dllm.build_info()\n")[1].splitlines()
    text = "".join(line.lstrip("# ") for line in itertools.takewhile(lambda line: line.startswith("#"), after))
    stated = ast.literal_eval(text[text.index("{"):text.index("}") + 1])
    info = dllm.build_info()
    assert list(info) == list(stated)
    assert info["version"] == stated["version"] == dllm.__version__
    for key, value in info.items():
        assert value is None and key == "torch_cuda" or type(value) is type(stated[key]), key
    tokens, logprob = ns["tokens"], ns["logprob"]
    assert tokens.shape == logprob.shape == ns["logits"].shape[:-1]
    assert tokens.dtype == torch.int64 and logprob.dtype == torch.float32


def test_llada_step_over_a_block(seeded):
    # the docs' running example: LLaDA's mask id 126336 in its vocabulary of 126464
    B, L, V, mask = 2, 12, 126464, 126336
    s, e, steps, step = 4, 8, 2, 0
    x = torch.randint(0, 100, (B, L))
    x[:, s:] = mask
    x[1, s] = 7  # a block position already known
    before = x.clone()
    ns = run("llada_step", block("llada_step"), x=x, s=s, e=e, steps=steps, step=step,
             logits=torch.randn(B, L, V))
    assert ns["counts"].shape == (B, steps) and ns["counts"].sum(-1).tolist() == [4, 3]
    committed = (before[:, s:e] == mask).sum(-1) - (x[:, s:e] == mask).sum(-1)
    assert committed.tolist() == ns["counts"][:, step].tolist()
    assert torch.equal(x[:, :s], before[:, :s]) and torch.equal(x[:, e:], before[:, e:])  # only the block


def test_a_loop_of_op_calls_fills_the_canvas_and_raises_a_bad_step(seeded):
    B, L, V, steps = 2, 10, 20, 4
    x = torch.full((B, L), V - 1)
    counts = dllm.unmask_schedule.linear_transfer_counts(torch.full((B,), L), steps)
    ns = run("op_loop", block("op_loop"), x=x, steps=steps, counts=counts, mask_id=V - 1,
             model=lambda x: torch.randn(*x.shape, V))
    assert not (ns["x"] == V - 1).any()
    with pytest.raises(ValueError, match="predict_masked: masked position 0 of sequence 0 has NaN"):
        run("op_loop", block("op_loop"), x=torch.full((B, L), V - 1), steps=steps, counts=counts, mask_id=V - 1,
            model=lambda x: torch.full((*x.shape, V), float("nan")))


@pytest.mark.parametrize("name", ["generate", "fast_dllm_cache"])
def test_generate(seeded, name):
    prompt = torch.tensor([[5, 7, 9, 11]])
    model = masked_model(64, max_seq_len=512)
    code = block(name)
    out = run(name, code, model=model, prompt=prompt)["out"]
    seq = out.sequences
    assert seq.shape == (1, 4 + gen_length(code))
    assert torch.equal(seq[:, :4], prompt) and not (seq == model.mask_id).any()
    assert len(out.step_times) == out.nfe  # one network call a step: no cfg, no reused logits


def test_sedd_sampling_loop(seeded):
    cfg = dllm.models.model_config("tiny", vocab_size=64, hidden=32, heads=4, layers=1, cond_dim=16, max_seq_len=32,
                                   time_conditioning=True)
    model = dllm.models.build_model(cfg).eval()
    code = substitute(block("sedd_loop"), ("Absorbing(50257)", "Absorbing(63)"), ("(16, 1024,", "(2, 32,"),
                      (".expand(16)", ".expand(2)"), ('device="cuda"', 'device="cpu"'))
    with torch.no_grad():
        x = run("sedd_loop", code, model=model)["x"]
    assert x.shape == (2, 32) and x.dtype == torch.int64 and ((0 <= x) & (x < 63)).all()  # denoised: no mask


def test_train_then_load_and_sample(tmp_path, seeded):
    # a tiny run over a small corpus; seq_len 128 holds the docs' prompt + gen_length=64
    options = {k: v for k, v in tiny(tmp_path, make_corpus(tmp_path / "corpus"), seq_len=128).items()
               if k not in ("steps", "out_dir")}
    out_dir = (tmp_path / "out" / "mdlm").as_posix()
    code = block("train")
    ns = run("train", substitute(code, ("steps=2000,", "steps=3, **options,"), ("out/mdlm", out_dir)), options=options)
    assert ns["result"]["step"] == 3
    # what the comments state: the folder's files, the mask, the logits, the kinds
    files = re.fullmatch(r" (\S+) \+ (\S+)\s*", comment(code, "dllm.models.from_pretrained("))
    assert {p.name for p in Path(out_dir, "model").iterdir()} >= set(files.groups())
    mask_id = int(re.search(r"(\d+) is the mask", comment(code, "torch.randint("))[1])
    assert ns["tok"].mask_id == ns["model"].mask_id == mask_id
    shape, dtype = re.match(r" \[([\d, ]+)\] (\w+);", comment(code, "logits = model(x)")).groups()
    assert ns["logits"].shape == tuple(map(int, shape.split(", "))) and ns["logits"].dtype == getattr(torch, dtype)
    assert ns["kind"] == "masked" and '"masked"' in comment(code, "dllm.load_for_sampling(")
    assert ns["out"].sequences.shape == (1, len(ns["tok"].encode("def ")) + gen_length(code))
