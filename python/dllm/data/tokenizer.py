"""Tokenizers: byte-level (the default, nothing to train) and BPE through the ``tokenizers`` library.

Every tokenizer has an end-of-text id (it separates packed documents and starts autoregressive
sequences) and a mask id (the absorbing state of masked diffusion), both real vocabulary entries.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from .._atomic import replaced_atomically

log = logging.getLogger("dllm")

MASK_TOKEN = "<|mask|>"
EOS_TOKEN = "<|endoftext|>"


def read_tokenizer_json(path: Path):
    """The ``tokenizers.Tokenizer`` a tokenizer.json holds; a malformed one is a ValueError naming it.
    Read by Python, not the library's ``from_file``: that takes the path as UTF-8 text, which a path
    that is not (non-ASCII bytes under an ASCII locale arrive as surrogate escapes) cannot be."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as e:  # the tokenizers library raises a bare Exception for a malformed file
        raise ValueError(f"{str(path)!r} is not a valid tokenizer.json ({e})") from e


def _in_vocabulary(ids: Iterable[int], tok) -> list[int]:
    """``ids`` as ints, or a ValueError naming the first outside ``tok``'s vocabulary."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise ValueError(f"id {bad[0]} is outside the {tok.kind} tokenizer's vocabulary (0 to {tok.vocab_size - 1})")
    return ids


class ByteTokenizer:
    """UTF-8 bytes 0..255, then end-of-text (256), then mask (257): 258 entries."""

    kind = "byte"

    def __init__(self):
        self.eos_id = 256
        self.mask_id = 257
        self.vocab_size = 258

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        out, chunk = [], bytearray()
        for i in _in_vocabulary(ids, self):
            if i < 256:
                chunk.append(i)
                continue
            out.append(chunk.decode("utf-8", errors="replace"))
            chunk = bytearray()
            out.append(EOS_TOKEN if i == self.eos_id else MASK_TOKEN)
        out.append(chunk.decode("utf-8", errors="replace"))
        return "".join(out)

    def save(self, directory: str | os.PathLike) -> None:
        """Nothing to write: the byte tokenizer is recorded by name in config files."""

    @property
    def fingerprint(self) -> str:
        return "byte-v1"


class BPETokenizer:
    """A ``tokenizers.Tokenizer`` with an end-of-text and a mask token (added if the file lacks them)."""

    kind = "bpe"

    def __init__(self, tok):
        self._tok = tok
        # Text is text: "<|mask|>" written in a source file must not encode as the mask id (a
        # diffusion loss then refuses the data) nor "<|endoftext|>" as a document boundary.
        tok.encode_special_tokens = True
        # A tokenizer.json made for batched model input may truncate or pad every encode: a corpus
        # file would silently lose its tail or gain pad ids.
        tok.no_truncation()
        tok.no_padding()
        # Added if missing, and marked special if the file lists them as plain added tokens, which
        # encode_special_tokens would not protect.
        tok.add_special_tokens([EOS_TOKEN, MASK_TOKEN])
        self.eos_id = tok.token_to_id(EOS_TOKEN)
        self.mask_id = tok.token_to_id(MASK_TOKEN)
        # The library numbers a new token after its count of entries, which a vocabulary with gaps in
        # its ids has already given to a text token: refused, as two tokens of one id corrupt the data.
        ids = list(tok.get_vocab(with_added_tokens=True).values())
        if len(set(ids)) != len(ids):
            shared = min(i for i, n in collections.Counter(ids).items() if n > 1)
            raise ValueError(f"the tokenizer gives id {shared} to two entries: a vocabulary whose ids have gaps "
                             f"(largest {max(ids)}, {len(set(ids))} distinct) cannot take the end-of-text and mask "
                             f"tokens dllm adds; number its entries 0..N-1 or add both tokens to it")
        self.vocab_size = max(ids) + 1

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "BPETokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {str(path)!r}")
        return cls(read_tokenizer_json(path))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        # The library would drop an id past the vocabulary in silence (and overflow on a negative one).
        return self._tok.decode(_in_vocabulary(ids, self), skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        # Written beside and renamed, so a crash never leaves a cut-short tokenizer.json to be reused.
        # The bytes Tokenizer.save writes, written by Python: see read_tokenizer_json
        with replaced_atomically(Path(directory) / "tokenizer.json") as tmp:
            tmp.write_bytes(self._tok.to_str(pretty=True).encode("utf-8"))

    @property
    def fingerprint(self) -> str:
        return "bpe-" + hashlib.sha256(self._tok.to_str().encode()).hexdigest()[:16]


class PublishedTokenizer(BPETokenizer):
    """A published checkpoint's ``tokenizers.Tokenizer`` with the model's own special ids: nothing is
    added to the vocabulary, and the mask id decodes as ``<|mask|>`` even where the file has no such
    entry (GPT-2's tokenizer for SEDD and MDLM, whose mask is the id after its vocabulary); SEDD's
    uniform graph has no mask (``mask_id=None``)."""

    kind = "published"

    def __init__(self, tok, *, mask_id: int | None, eos_id: int | None = None):
        self._tok, self.mask_id = tok, mask_id
        tok.no_truncation()  # as BPETokenizer: a prompt is never cut or padded by the file's batching settings
        tok.no_padding()
        self.eos_id = eos_id if eos_id is not None else tok.token_to_id(EOS_TOKEN)
        self.vocab_size = max(tok.get_vocab_size(with_added_tokens=True), -1 if mask_id is None else mask_id + 1)

    def decode(self, ids: Iterable[int]) -> str:
        out, chunk = [], []
        for i in (int(i) for i in ids):
            if i != self.mask_id:
                chunk.append(i)
                continue
            out += [self._tok.decode(chunk, skip_special_tokens=False), MASK_TOKEN]
            chunk = []
        out.append(self._tok.decode(chunk, skip_special_tokens=False))
        return "".join(out)


def token_byte_lengths(tok) -> np.ndarray:
    """Bytes of text each id stands for, int64 ``[vocab_size]``: 0 for end-of-text, mask and other special
    tokens, which are not text (plain added tokens, such as a code tokenizer's runs of spaces, are).
    Bits per byte divide by the sum over the tokens scored."""
    lengths = np.zeros(tok.vocab_size, dtype=np.int64)
    if tok.kind == "byte":
        lengths[:256] = 1
        return lengths
    t = tok._tok
    added = t.get_added_tokens_decoder()
    text_ids = [i for i in range(t.get_vocab_size(with_added_tokens=True))
                if not (i in added and added[i].special) and i != tok.mask_id]
    if type(t.decoder).__name__ == "ByteLevel":  # each character of a vocabulary entry is one byte
        # (an added token's entry is its text as written)
        lengths[text_ids] = [len(added[i].content.encode()) if i in added else len(t.id_to_token(i)) for i in text_ids]
        return lengths
    # Other decoders (SentencePiece's Metaspace, LLaMA's Replace + ByteFallback) strip a leading space
    # from the text's first token: each token is decoded after one that decodes to plain text, and
    # its bytes are what it adds to that
    lead = next((i for i in text_ids if t.decode([i]).isalnum()), None)
    base = len(t.decode([lead]).encode("utf-8")) if lead is not None else 0
    for i in text_ids:
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t.id_to_token(i)):  # a byte-fallback piece: one byte, not U+FFFD
            lengths[i] = 1
        else:
            lengths[i] = len(t.decode([i] if lead is None else [lead, i]).encode("utf-8")) - base
    return lengths


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, *, progress: bool = True) -> BPETokenizer:
    """Train a byte-level BPE (``vocab_size`` entries including end-of-text and mask) on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # the mask token is appended after training, so it is the last id
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,  # a bar on the terminal (tens of seconds on the standard library)
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    out = BPETokenizer(tok)
    if out.vocab_size < vocab_size:
        log.warning("the BPE has %d entries, fewer than the %d asked: the training text has no more merges "
                    "to learn", out.vocab_size, vocab_size)
    return out


def load_tokenizer(spec: str | os.PathLike = "byte", *, train_texts: Iterable[str] | None = None,
                   vocab_size: int = 4096):
    """``"byte"``; ``"bpe"`` (trained on ``train_texts``); or a path to a tokenizer.json or its folder."""
    if str(spec) == "byte":
        return ByteTokenizer()
    if str(spec) == "bpe":
        if train_texts is None:
            raise ValueError("load_tokenizer('bpe') needs train_texts to train on")
        return train_bpe(train_texts, vocab_size)
    path = Path(spec).expanduser()  # as load_corpus's path
    if not path.exists():  # a mistyped kind ("bytes") would be reported as a missing file alone
        raise FileNotFoundError(f"tokenizer {str(spec)!r} is neither 'byte', 'bpe' nor the path of a tokenizer.json "
                                "or of its folder")
    return BPETokenizer.from_file(path)


def tokenizer_config(tok) -> dict:
    return {"kind": tok.kind, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "mask_id": tok.mask_id,
            "fingerprint": tok.fingerprint}


def tokenizer_for_model(directory: str | os.PathLike):
    """The tokenizer a model folder written by ``dllm.train`` was trained with (recorded in its config.json)."""
    from ..models.io import read_config  # its errors name the file (a missing folder, invalid JSON)

    config = Path(directory) / "config.json"
    cfg = read_config(directory).get("tokenizer")
    if cfg is None:
        raise ValueError(f"{str(config)!r} records no tokenizer: save the model with save_pretrained(dir, "
                         "tokenizer=dllm.data.tokenizer.tokenizer_config(tok), objective=objective.config()) and "
                         "tok.save(dir), or use the model/ folder that dllm train writes")
    tok = ByteTokenizer() if cfg["kind"] == "byte" else BPETokenizer.from_file(Path(directory) / "tokenizer.json")
    if tok.fingerprint != cfg["fingerprint"]:
        raise ValueError(f"the tokenizer in {str(directory)!r} is not the one the model was trained with")
    return tok
