"""Packed token streams in a memory-mapped cache, and a resumable batch order over them.

Documents are concatenated with an end-of-text id after each one and cut into fixed-length
windows (no padding). The token files are written once per (corpus hash, tokenizer) and then
memory-mapped, so a second run skips the tokenizing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .._atomic import replaced_atomically
from .corpus import Corpus, load_corpus
from .tokenizer import BPETokenizer, load_tokenizer, token_byte_lengths, train_bpe

log = logging.getLogger("dllm")


# Part of a token cache's name: raised when the same tokenizer file encodes differently (v2: special
# tokens written as text stay text), so that no cache of the old encoding is reused.
TOKEN_CACHE_VERSION = "v2"


def default_cache_dir() -> Path:
    return Path(os.environ.get("DLLM_CACHE", Path.home() / ".cache" / "dllm"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with replaced_atomically(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class TokenCache:
    """``train.bin`` / ``val.bin`` (uint16 or uint32) and ``meta.json`` in one folder per corpus and tokenizer."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    @property
    def ready(self) -> bool:
        """A complete cache: meta.json readable and each token file as long as it records. A cut-short
        or deleted file (a full disk, a cleanup) would otherwise train on part of the data, silently."""
        if not (self.dir / "meta.json").is_file():
            return False
        try:
            meta = self.meta()
            itemsize = np.dtype(meta["dtype"]).itemsize
            complete = all((self.dir / f"{split}.bin").stat().st_size == meta[f"{split}_tokens"] * itemsize
                           for split in ("train", "val"))
        except (OSError, ValueError, KeyError, TypeError):
            complete = False
        if not complete:
            log.warning("the token cache %s is incomplete or damaged; tokenizing again", self.dir)
        return complete

    def build(self, corpus: Corpus, tok, *, progress: bool = True) -> None:
        from tqdm.auto import tqdm

        self.dir.mkdir(parents=True, exist_ok=True)
        dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
        meta = {"corpus_hash": corpus.hash, "tokenizer": tok.fingerprint, "dtype": np.dtype(dtype).name}
        bar = tqdm(total=len(corpus.train) + len(corpus.val), desc="tokenizing", unit="file", dynamic_ncols=True,
                   disable=not progress)
        for split, docs in (("train", corpus.train), ("val", corpus.val)):
            texts = [t for _, t in docs]
            encoded = []
            for i in range(0, len(texts), 64):  # chunks for the bar; each is still encoded in parallel
                chunk = texts[i:i + 64]
                encoded += tok.encode_batch(chunk) if isinstance(tok, BPETokenizer) else [tok.encode(t) for t in chunk]
                bar.update(len(chunk))
            eos = np.array([tok.eos_id], dtype=np.int64)
            ids = np.concatenate([p for e in encoded for p in (e, eos)]) if encoded else np.zeros(0, np.int64)
            atomic_write_bytes(self.dir / f"{split}.bin", ids.astype(dtype).tobytes())
            meta[f"{split}_tokens"] = int(ids.size)
            meta[f"{split}_bytes"] = sum(len(t.encode("utf-8")) for t in texts)
            meta[f"{split}_files"] = len(texts)
        bar.close()
        # meta.json last: its presence marks a complete cache.
        atomic_write_bytes(self.dir / "meta.json", json.dumps(meta, indent=1).encode())

    def meta(self) -> dict:
        return json.loads((self.dir / "meta.json").read_text())

    def tokens(self, split: str) -> np.ndarray:
        m = self.meta()
        if m[f"{split}_tokens"] == 0:
            return np.zeros(0, dtype=m["dtype"])
        return np.memmap(self.dir / f"{split}.bin", dtype=m["dtype"], mode="r")


class PackedDataset:
    """Non-overlapping windows of ``seq_len`` tokens over one split's token stream."""

    def __init__(self, tokens: np.ndarray, seq_len: int, *, split: str = "the split",
                 fix: str = "use a larger corpus or a shorter --seq-len"):
        if len(tokens) < seq_len:
            raise ValueError(f"{split} has {len(tokens)} tokens, fewer than one sequence of {seq_len}; {fix}")
        self.tokens = tokens
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.tokens) // self.seq_len

    def get(self, indices) -> torch.Tensor:
        """The windows ``indices`` (in ``[0, len(self))``) as int64 ``[len(indices), seq_len]``."""
        L, n = self.seq_len, len(self)
        bad = [int(i) for i in indices if not 0 <= i < n]
        if bad:  # a slice past the stream would give a short or empty row, not an error
            raise IndexError(f"window index {bad[0]} is outside [0, {n}): the split holds {n} windows of {L} tokens")
        rows = [np.asarray(self.tokens[i * L:(i + 1) * L], dtype=np.int64) for i in indices]
        return torch.from_numpy(np.stack(rows))


class BatchOrder:
    """A fresh seeded permutation of the windows each epoch; ``state_dict`` is the data position.

    A batch that runs into the next epoch does not take a window twice while that epoch has others:
    the new epoch's permutation puts the windows the batch already holds last, in their order.
    """

    def __init__(self, num_windows: int, seed: int):
        if num_windows < 1:
            raise ValueError(f"BatchOrder needs at least one window, got num_windows={num_windows}")
        self.n, self.seed = num_windows, seed
        self.epoch, self.pos = 0, 0
        self.deferred: list[int] = []  # the windows this epoch puts last
        self._perm = self._permutation()

    def _permutation(self) -> np.ndarray:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        if not self.deferred:
            return perm
        last = np.isin(perm, self.deferred)
        return np.concatenate([perm[~last], perm[last]])

    def next(self, count: int) -> np.ndarray:
        out = []
        while count > 0:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self.deferred = sorted({int(i) for part in out for i in part})
                self._perm = self._permutation()
            take = min(count, self.n - self.pos)
            out.append(self._perm[self.pos:self.pos + take])
            self.pos += take
            count -= take
        return np.concatenate(out)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "num_windows": self.n, "seed": self.seed,
                "deferred": list(self.deferred)}

    def load_state_dict(self, s: dict) -> None:
        if s["num_windows"] != self.n or s["seed"] != self.seed:
            raise ValueError("the checkpoint's data position belongs to another dataset or seed "
                             f"({s['num_windows']} windows, seed {s['seed']}; now {self.n}, seed {self.seed})")
        # checkpoints from before the deferral have none
        self.epoch, self.pos, self.deferred = s["epoch"], s["pos"], list(s.get("deferred", []))
        self._perm = self._permutation()


@dataclass
class Prepared:
    tokenizer: object
    train: PackedDataset
    val: PackedDataset
    meta: dict
    corpus_hash: str

    def val_bytes_per_token(self, sequences: int) -> float:
        """Bytes of text per token in the first ``sequences`` validation windows, the ones validation
        scores: with BPE, the split's average would be off by over 10% for a few windows."""
        n = min(len(self.val), sequences)
        tokens = np.asarray(self.val.tokens[:n * self.val.seq_len], dtype=np.int64)
        return float(self._byte_lengths[tokens].sum()) / tokens.size

    @cached_property
    def _byte_lengths(self) -> np.ndarray:
        return token_byte_lengths(self.tokenizer)


def prepare(data: str | None = None, *, tokenizer: str = "byte", seq_len: int = 256,
            val_fraction: float = 0.05, bpe_vocab_size: int = 4096, cache_dir: str | None = None,
            progress: bool = True) -> Prepared:
    """Load a corpus, build (or reuse) its token cache and return the packed train/val datasets.

    ``tokenizer``: ``"byte"``, ``"bpe"`` (trained on the training split once and cached), or a path
    to a tokenizer.json. ``progress``: bars while a BPE trains and the corpus is tokenized.
    """
    corpus = load_corpus(data, val_fraction=val_fraction)  # (which holds out at least one character)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    if tokenizer == "bpe":
        tok = _cached_bpe(root / f"bpe-{corpus.hash[:16]}-{bpe_vocab_size}", corpus, bpe_vocab_size, progress)
    else:
        tok = load_tokenizer(tokenizer)
    cache = TokenCache(root / "tokens" / f"{corpus.hash[:16]}-{tok.fingerprint}-{TOKEN_CACHE_VERSION}")
    if not cache.ready:
        log.info("tokenizing %d files into %s", corpus.num_files, cache.dir)
        cache.build(corpus, tok, progress=progress)
    meta = cache.meta()
    return Prepared(tok, _packed(cache.tokens("train"), seq_len, "train", corpus, val_fraction),
                    _packed(cache.tokens("val"), seq_len, "val", corpus, val_fraction), meta, corpus.hash)


def _cached_bpe(tok_dir: Path, corpus: Corpus, vocab_size: int, progress: bool):
    path = tok_dir / "tokenizer.json"
    if path.is_file():
        try:
            tok = load_tokenizer(path)
        except ValueError as e:
            # A copy cut short (a crash while writing, a full disk) would otherwise fail every run.
            log.warning("the cached BPE is unreadable (%s); training it again", e)
        else:
            if tok.vocab_size < vocab_size:
                log.warning("the cached BPE %s has %d entries, fewer than the %d asked: the corpus has no "
                            "more merges to learn", path, tok.vocab_size, vocab_size)
            return tok
    log.info("training a %d-entry BPE on %d files", vocab_size, len(corpus.train))
    tok = train_bpe([t for _, t in corpus.train], vocab_size, progress=progress)
    tok.save(tok_dir)
    return tok


def _packed(tokens: np.ndarray, seq_len: int, split: str, corpus: Corpus, val_fraction: float) -> PackedDataset:
    docs = corpus.train if split == "train" else corpus.val
    names = [f"the end of {rel[:-4]}" if rel.endswith("#val") else rel for rel, _ in docs]
    where = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    if split == "train":
        name, fix = "training", f"add text, lower --seq-len or lower --val-fraction (now {val_fraction:g})"
    else:
        name, fix = "validation", f"raise --val-fraction (now {val_fraction:g}), add text or lower --seq-len"
    return PackedDataset(tokens, seq_len, split=f"the {name} split ({where})", fix=fix)
