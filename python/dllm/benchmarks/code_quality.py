"""Quality of generated Python: does it parse, how diverse are its tokens, and held-out functions to infill.

Definitions (the e2e report quotes them):
- parse rate: the fraction of samples whose text, cut at the first end-of-text, ``ast.parse`` accepts whole
  and that hold at least one statement (blank or comment-only text is not code);
- parseable prefix: per sample, the fraction of its lines that form the longest prefix of whole lines
  ``ast.parse`` accepts with at least one statement, averaged over samples (a sample cut off
  mid-statement still earns credit for the complete code before the cut; a blank one earns none);
- blank rate: the fraction of samples with no statement at all (empty, whitespace, comments);
- tokens written: per sample, the tokens before its first end-of-text (all of them if it has none),
  averaged over samples: the text every other metric judges, of the generation length that tokens/s
  counts whole;
- token entropy: the Shannon entropy, in bits, of the empirical unigram distribution of the generated
  tokens before each sample's first end-of-text, pooled over a point's samples (0 if there are none).
  A sampler that lowers it (greedy, over-confident parallel commits) can raise parse rates by
  repeating safe tokens, so every quality number sits beside it.
"""

from __future__ import annotations

import ast
import math
import re
import textwrap
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import torch


_LINE_END = re.compile(r"\r\n|\r|\n")


def _module(text: str) -> ast.Module | None:
    """The parsed text, or None where ``ast.parse`` refuses it (syntax warnings silenced, recursion and null
    bytes count as failures)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def parses(text: str) -> bool:
    """Whether the text is Python code: ``ast.parse`` accepts it and it holds at least one statement."""
    tree = _module(text)
    return tree is not None and len(tree.body) > 0


def parse_rate(texts: list[str]) -> float:
    return sum(parses(t) for t in texts) / len(texts) if texts else math.nan


def blank_rate(texts: list[str]) -> float:
    """The fraction of texts with no statement: empty, whitespace or comments only."""
    return sum(tree is not None and not tree.body for tree in map(_module, texts)) / len(texts) if texts else math.nan


def parseable_prefix(text: str) -> float:
    r"""The fraction of the text's lines in its longest prefix of whole lines that parses with at least one
    statement (1.0: all of it; 0.0 for blank text). Lines end where Python's do (\n, \r\n, \r), not at
    str.splitlines' other breaks (form feed, \x1c-\x1e, \x85, \u2028...), which Python reads inside a line:
    split there, the prefix rejoined with \n would not be the text's, and text that fails to parse could
    earn full credit."""
    lines = _LINE_END.split(text)
    if lines[-1] == "":
        lines.pop()  # the text ends with a newline (or is empty): no line after it
    for k in range(len(lines), 0, -1):
        if parses("\n".join(lines[:k])):
            return k / len(lines)
    return 0.0


def unigram_entropy(tokens: Iterable[int]) -> float:
    """Entropy in bits of the empirical distribution of the tokens (0 for one repeated token)."""
    counts = Counter(int(t) for t in tokens)
    n = sum(counts.values())
    if n == 0:
        return math.nan
    return sum(c / n * math.log2(n / c) for c in counts.values())  # terms >= 0: one token gives 0.0, not -0.0


def rarefied_entropy(counts: list[int], size: int) -> float:
    """The expected :func:`unigram_entropy` of ``size`` tokens drawn without replacement from a pool
    holding each token ``counts`` times (hypergeometric counts, summed exactly): the pool's entropy
    as a sample of ``size`` tokens reads it. Plug-in entropy reads low on few tokens (by about
    (K - 1) / (2 N ln 2) bits for K distinct ones, more when tokens are about as many as their
    kinds), so two pools are compared at the smaller one's size."""
    pool = sum(counts)
    if not 0 < size <= pool:
        raise ValueError(f"size must be in [1, {pool}] (the pool's tokens), got {size}")

    def log_choose(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    total, rest = 0.0, log_choose(pool, size)
    for c in counts:
        for k in range(max(1, size - (pool - c)), min(c, size) + 1):
            p = math.exp(log_choose(c, k) + log_choose(pool - c, size - k) - rest)
            total -= p * (k / size) * math.log2(k / size)
    return total


def exact_match(predictions: list[str], references: list[str]) -> float:
    """The fraction of predictions equal to their reference, character for character."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return sum(p == r for p, r in zip(predictions, references)) / len(references) if references else math.nan


def cut_at(ids: list[int], stop_id: int) -> list[int]:
    """The ids before the first ``stop_id`` (all of them if it does not occur)."""
    return ids[:ids.index(stop_id)] if stop_id in ids else ids


@dataclass
class InfillTask:
    """One held-out function: its body is the hole, the file's text around it the context."""

    name: str
    before: list[int]   # context tokens up to the body (the signature, the docstring, the body's indentation)
    body: list[int]     # the hole's true tokens
    after: list[int]    # context tokens after the body
    body_text: str
    header_text: str    # from the start of the def line to the body: header_text + body parses (after dedent)

    def _statements(self, body_text: str) -> int:
        """Statements in the function made of the header and this body; -1 if it does not parse."""
        tree = _module(textwrap.dedent(self.header_text + body_text))
        if tree is None or not tree.body or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
            return -1
        return len(tree.body[0].body)

    def function_parses(self, body_text: str) -> bool:
        """Whether the def line plus the fill parses with a statement of the fill's own (a blank fill of a
        documented function parses: its docstring is a statement)."""
        return self._statements(body_text) > self._statements("pass") - 1


def _byte_offsets(text: bytes) -> list[int]:
    starts = [0]
    for i, b in enumerate(text):
        if b == 0x0A:
            starts.append(i + 1)
    return starts


def held_out_functions(files: list[tuple[str, str]], tok, *, max_body: int, before: int, after: int,
                       count: int, min_body: int = 8, seed: int = 0) -> list[InfillTask]:
    """Up to ``count`` functions from ``files`` ((name, text) pairs, e.g. the held-out split) whose body is
    ``min_body``..``max_body`` tokens, chosen by a seeded permutation; ``before``/``after`` context tokens
    around the hole. The body is what follows the docstring. Functions whose own text does not parse on its
    own (after dedent) are skipped."""
    tasks: list[InfillTask] = []
    for name, text in files:
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        raw = text.encode("utf-8")
        starts = _byte_offsets(raw)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.end_lineno is None:
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1:
                body = body[1:]  # the docstring stays in the context: it says what the body should do
            first, last = body[0], body[-1]
            head = starts[node.lineno - 1]
            lo = starts[first.lineno - 1] + first.col_offset
            hi = starts[last.end_lineno - 1] + last.end_col_offset
            body_text, header_text = raw[lo:hi].decode("utf-8"), raw[head:lo].decode("utf-8")
            body = [int(i) for i in tok.encode(body_text)]
            if not min_body <= len(body) <= max_body or not parses(textwrap.dedent(header_text + body_text)):
                continue
            # A token spans at most a few bytes, so 8 bytes a token is plenty of text to cut the context from.
            near_before = raw[max(0, lo - 8 * before):lo].decode("utf-8", errors="ignore")
            near_after = raw[hi:hi + 8 * after].decode("utf-8", errors="ignore")
            ctx_before = [int(i) for i in tok.encode(near_before)][-before:] if before else []
            ctx_after = [int(i) for i in tok.encode(near_after)][:after] if after else []
            tasks.append(InfillTask(f"{name}:{node.lineno} {node.name}", ctx_before, body, ctx_after, body_text,
                                    header_text))
    order = torch.randperm(len(tasks), generator=torch.Generator().manual_seed(seed)).tolist()
    return [tasks[i] for i in order[:count]]
