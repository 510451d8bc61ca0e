import logging
import os

import numpy as np
import pytest
import torch

from dllm.data import BatchOrder, ByteTokenizer, load_corpus, load_tokenizer, prepare, train_bpe
from dllm.data.dataset import PackedDataset
from dllm.data.tokenizer import token_byte_lengths

from _train_helpers import make_corpus


@pytest.fixture
def corpus_dir(tmp_path):
    return make_corpus(tmp_path / "corpus")


def test_bad_files_are_skipped_with_a_warning(corpus_dir, caplog):
    (corpus_dir / "empty.txt").write_text("")
    (corpus_dir / "blob.txt").write_bytes(b"\x00\x01\x02binary\x00")
    (corpus_dir / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    unreadable = corpus_dir / "secret.txt"
    unreadable.write_text("x = 1\n")
    unreadable.chmod(0)
    try:
        readable_as_root = os.access(unreadable, os.R_OK)
        with caplog.at_level(logging.WARNING, logger="dllm"):
            c = load_corpus(corpus_dir, val_fraction=0.2)
    finally:
        unreadable.chmod(0o644)
    reasons = {os.path.basename(p): r for p, r in c.skipped}
    assert reasons["empty.txt"] == "empty"
    assert reasons["blob.txt"].startswith("binary")
    assert reasons["latin1.txt"].startswith("binary")
    if not readable_as_root:
        assert reasons["secret.txt"].startswith("unreadable")
    assert "skipped" in caplog.text and "blob.txt" in caplog.text
    names = {r for r, _ in c.train + c.val}
    assert "bisect.py" in names and "blob.txt" not in names


def test_corpus_without_text_is_refused(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.bin.txt").write_bytes(b"\x00" * 10)
    (d / "b.txt").write_text("   \n")
    with pytest.raises(ValueError, match="no readable UTF-8 text"):
        load_corpus(d)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(tmp_path / "missing")


def test_validation_holds_out_whole_files_and_hash_tracks_content(corpus_dir):
    c = load_corpus(corpus_dir, val_fraction=0.3)
    train, val = {r for r, _ in c.train}, {r for r, _ in c.val}
    assert train and val and not train & val
    assert train | val == {p.name for p in corpus_dir.iterdir()}
    assert load_corpus(corpus_dir, val_fraction=0.3).hash == c.hash
    (corpus_dir / "bisect.py").write_text((corpus_dir / "bisect.py").read_text() + "\n# edit\n")
    assert load_corpus(corpus_dir, val_fraction=0.3).hash != c.hash


def test_stdlib_is_the_default_corpus():
    c = load_corpus(None)
    names = {r for r, _ in c.train + c.val}
    assert "os.py" in names or "os.py" in {n.split("/")[-1] for n in names}
    assert not any(n.startswith("test/") for n in names)
    assert 5e6 < c.num_bytes < 5e7  # the "about 11 MB"
    assert c.val and len(c.val) < len(c.train)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    s = "def f(x):\n    return 'héllo' + x\n"
    ids = tok.encode(s)
    assert ids.max() < 256 and tok.decode(ids) == s
    assert tok.mask_id == tok.vocab_size - 1 and tok.eos_id == 256


def test_bpe_train_save_load(corpus_dir, tmp_path):
    texts = [p.read_text() for p in sorted(corpus_dir.iterdir())]
    tok = train_bpe(texts, vocab_size=400)
    assert tok.vocab_size == 400 and tok.mask_id == 399
    s = texts[0][:500]
    ids = tok.encode(s)
    assert len(ids) < len(s.encode()) and tok.decode(ids) == s
    tok.save(tmp_path / "t")
    again = load_tokenizer(tmp_path / "t" / "tokenizer.json")
    assert again.fingerprint == tok.fingerprint and list(again.encode(s)) == list(ids)


def test_prepare_caches_tokens_and_packs(corpus_dir, tmp_path):
    p = prepare(str(corpus_dir), seq_len=32, cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    cache_files = list((tmp_path / "cache" / "tokens").glob("*/train.bin"))
    assert len(cache_files) == 1
    mtime = cache_files[0].stat().st_mtime_ns
    p2 = prepare(str(corpus_dir), seq_len=32, cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    assert cache_files[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert isinstance(p2.train.tokens, np.memmap)
    x = p.train.get([0, 1])
    assert x.shape == (2, 32) and x.dtype == torch.int64
    stream = np.asarray(p.train.tokens[:64], dtype=np.int64)
    assert torch.equal(x.flatten(), torch.from_numpy(stream))
    assert p.meta["train_tokens"] == p.meta["train_bytes"] + p.meta["train_files"]  # bytes + one EOS per file
    pb = prepare(str(corpus_dir), tokenizer="bpe", bpe_vocab_size=300, seq_len=32, cache_dir=str(tmp_path / "cache"),
                 val_fraction=0.2)
    assert pb.tokenizer.vocab_size == 300 and pb.meta["train_tokens"] < p.meta["train_tokens"]


def test_bits_per_byte_divides_by_the_bytes_of_the_scored_windows(corpus_dir, tmp_path):
    for tokenizer in ("byte", "bpe"):
        p = prepare(str(corpus_dir), tokenizer=tokenizer, bpe_vocab_size=300, seq_len=32,
                    cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
        lengths = token_byte_lengths(p.tokenizer)
        assert lengths[p.tokenizer.eos_id] == 0 and lengths[p.tokenizer.mask_id] == 0
        for split in ("train", "val"):  # every byte of the files, none for the separators
            tokens = np.asarray(getattr(p, split).tokens, dtype=np.int64)
            assert lengths[tokens].sum() == p.meta[f"{split}_bytes"]
        # three windows: the bytes their own tokens stand for, whatever the split's average
        window = np.asarray(p.val.tokens[:3 * 32], dtype=np.int64)
        assert p.val_bytes_per_token(3) == pytest.approx(lengths[window].sum() / window.size)


def test_packed_dataset_too_short():
    with pytest.raises(ValueError, match="fewer than one sequence"):
        PackedDataset(np.zeros(10, np.uint16), 64)


def test_batch_order_resumes_exactly():
    a = BatchOrder(10, seed=3)
    first = [a.next(4) for _ in range(2)]
    state = a.state_dict()
    rest = [a.next(4) for _ in range(5)]
    b = BatchOrder(10, seed=3)
    b.load_state_dict(state)
    assert all(np.array_equal(x, y) for x, y in zip(rest, [b.next(4) for _ in range(5)]))
    epoch0 = np.concatenate(first + rest)[:10]
    assert sorted(epoch0) == list(range(10))  # each epoch visits every window once
    with pytest.raises(ValueError, match="another dataset"):
        BatchOrder(11, seed=3).load_state_dict(state)
