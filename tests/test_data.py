import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from dllm.data import BatchOrder, ByteTokenizer, load_corpus, load_tokenizer, prepare, train_bpe
from dllm.data.corpus import _is_val
from dllm.data.dataset import PackedDataset
from dllm.data.tokenizer import token_byte_lengths

from _train_helpers import MODULES, STDLIB, make_corpus


@pytest.fixture
def corpus_dir(tmp_path):
    return make_corpus(tmp_path / "corpus")


def _names(corpus):
    return sorted({rel.removesuffix("#val") for rel, _ in corpus.train + corpus.val})


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
    assert not any(r.endswith("#val") for r, _ in c.val)  # whole files: the split committed results used


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


def test_prepare_caches_tokens_and_packs(corpus_dir, tmp_path, capfd):
    quiet = prepare(str(corpus_dir), seq_len=32, cache_dir=str(tmp_path / "quiet"), val_fraction=0.2, progress=False)
    assert "tokenizing" not in capfd.readouterr().err  # --no-progress silences every bar
    p = prepare(str(corpus_dir), seq_len=32, cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    assert "tokenizing" in capfd.readouterr().err
    assert np.array_equal(quiet.train.tokens, p.train.tokens)
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
        if tokenizer == "bpe":  # plain added tokens are text (a code tokenizer's runs of spaces)
            from tokenizers import Tokenizer

            from dllm.data.tokenizer import BPETokenizer

            copy = Tokenizer.from_str(p.tokenizer._tok.to_str())
            copy.add_tokens(["    ", "self", "é"])
            extended = BPETokenizer(copy)
            with_added = token_byte_lengths(extended)
            text = "    def f(self):\n        return 'é'"
            ids = extended.encode(text)
            assert {extended._tok.token_to_id(w) for w in ("    ", "self", "é")} <= set(ids.tolist())
            assert with_added[ids].sum() == len(text.encode())
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
    epoch0, epoch1 = np.concatenate(first + rest)[:10], np.concatenate(first + rest)[10:20]
    # each epoch visits every window once, in an order of its own
    assert sorted(epoch0) == sorted(epoch1) == list(range(10)) and not np.array_equal(epoch0, epoch1)
    with pytest.raises(ValueError, match="another dataset"):
        BatchOrder(11, seed=3).load_state_dict(state)


def test_batch_order_resumes_exactly_in_a_later_epoch():
    a = BatchOrder(10, seed=3)
    a.next(14)  # into the second epoch, whose order is its own
    state = a.state_dict()
    assert state["epoch"] == 1
    rest = [a.next(4) for _ in range(5)]
    b = BatchOrder(10, seed=3)
    b.load_state_dict(state)
    assert all(np.array_equal(x, y) for x, y in zip(rest, [b.next(4) for _ in range(5)]))


@pytest.mark.parametrize("n,batch", [(10, 4), (7, 5), (9, 6), (3, 7)])  # (3, 7): a batch spans epochs
def test_batch_order_does_not_repeat_a_window_in_a_batch_across_epochs(n, batch):
    a = BatchOrder(n, seed=5)
    batches, states = [], []
    for _ in range(12):  # several epoch boundaries, most of them inside a batch
        states.append(a.state_dict())
        batches.append(a.next(batch))
    if batch <= n:
        assert all(len(set(b.tolist())) == batch for b in batches)
    stream = np.concatenate(batches)
    for e in range(len(stream) // n):  # each epoch still visits every window once
        assert sorted(stream[e * n:(e + 1) * n].tolist()) == list(range(n))
    for k, state in enumerate(states):  # and resumes where it stood, a deferral included
        assert len(state["deferred"]) <= n
        b = BatchOrder(n, seed=5)
        b.load_state_dict(state)
        assert all(np.array_equal(x, b.next(batch)) for x in batches[k:])


def test_batch_order_takes_up_a_data_position_saved_before_the_deferral():
    # such a checkpoint's epoch goes on in its plain permutation, as the code that saved it would have
    state = {"epoch": 2, "pos": 3, "num_windows": 10, "seed": 3}
    b = BatchOrder(10, seed=3)
    b.load_state_dict(state)
    plain = np.random.default_rng([3, 2]).permutation(10)
    assert np.array_equal(b.next(7), plain[3:])


def _share(c) -> float:
    return sum(len(t) for _, t in c.val) / sum(len(t) for _, t in c.train + c.val)


@pytest.mark.parametrize("small,big", [("README.md", "data.txt"), ("z_notes.md", "a_data.txt")])
def test_a_tiny_and_a_big_file_hold_out_near_val_fraction(tmp_path, caplog, small, big):
    # Whole files would hold out 98% (the big one) or 2% (the small one); the tail keeps 5%.
    (tmp_path / small).write_text("# notes\n" * 60)
    (tmp_path / big).write_text("".join(f"line {i} of the data\n" for i in range(1400)))
    with caplog.at_level(logging.WARNING, logger="dllm"):
        c = load_corpus(tmp_path, val_fraction=0.05)
    assert _share(c) == pytest.approx(0.05, abs=1e-3)
    assert "holding out the last 5% of the text" in caplog.text
    names = {r for r, _ in c.train + c.val}
    assert f"{big}#val" in names and big in {r for r, _ in c.train}
    assert c.num_files == 2  # a file split between train and validation is one file


def test_whole_files_are_held_out_when_near_val_fraction(corpus_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="dllm"):
        c = load_corpus(corpus_dir, val_fraction=0.05)
    assert not any("#val" in r for r, _ in c.train + c.val) and "holding out" not in caplog.text


def test_files_with_other_suffixes_are_named(tmp_path, corpus_dir, caplog):
    (corpus_dir / "records.jsonl").write_text('{"a": 1}\n')
    with caplog.at_level(logging.WARNING, logger="dllm"):
        load_corpus(corpus_dir, val_fraction=0.2)
    assert "records.jsonl: suffix .jsonl is not read as text" in caplog.text and "rename" in caplog.text
    d = tmp_path / "jsonl"
    d.mkdir()
    for name in ("a.jsonl", "b.log"):
        (d / name).write_text('{"text": "hello"}\n')
    with pytest.raises(ValueError, match=r"no readable UTF-8 text files; skipped .*a\.jsonl: suffix .jsonl.*b\.log"):
        load_corpus(d)


def test_too_short_splits_are_named_with_the_options_to_change(tmp_path):
    f = tmp_path / "f1.py"
    f.write_text("x = 1\n" * 400)
    want = (r"the validation split \(the end of f1\.py\) has 121 tokens, fewer than one sequence of 256; "
            r"raise --val-fraction \(now 0\.05\), add text or lower --seq-len")
    with pytest.raises(ValueError, match=want):
        prepare(str(f), seq_len=256, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"the training split \(f1\.py\) has 2281 tokens.*; add text, lower --seq"):
        prepare(str(f), seq_len=4096, cache_dir=str(tmp_path / "cache"))
    # all but the last characters held out: the training split is what is short
    with pytest.raises(ValueError, match=r"the training split \(f1\.py\) has 3 tokens.*lower --val-fraction "
                                         r"\(now 0\.999\)"):
        prepare(str(f), seq_len=16, val_fraction=0.999, cache_dir=str(tmp_path / "cache"))


def test_a_tokenizer_folder_without_its_json_and_a_bpe_without_texts_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json at"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="needs train_texts"):
        load_tokenizer("bpe")


def test_invalid_tokenizer_json_is_named(tmp_path):
    bad = tmp_path / "bad_tok.json"
    bad.write_text('{"version": "1.0"}')
    with pytest.raises(ValueError, match=r"bad_tok\.json' is not a valid tokenizer\.json"):
        load_tokenizer(bad)


def test_a_cut_short_cached_bpe_is_trained_again(corpus_dir, tmp_path, caplog):
    kw = dict(tokenizer="bpe", bpe_vocab_size=300, seq_len=32, cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    first = prepare(str(corpus_dir), **kw)
    [cached] = (tmp_path / "cache").glob("bpe-*/tokenizer.json")
    cached.write_text(cached.read_text()[:100])
    with caplog.at_level(logging.WARNING, logger="dllm"):
        again = prepare(str(corpus_dir), **kw)
    assert "cached BPE is unreadable" in caplog.text and str(cached) in caplog.text
    assert again.tokenizer.fingerprint == first.tokenizer.fingerprint
    assert load_tokenizer(cached).fingerprint == first.tokenizer.fingerprint


def test_a_bpe_smaller_than_asked_is_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="dllm"):
        tok = train_bpe(["abab abab cdcd\n"] * 3, vocab_size=4096)
    assert tok.vocab_size < 4096 and f"the BPE has {tok.vocab_size} entries, fewer than the 4096 asked" in caplog.text


def test_a_bare_save_pretrained_folder_says_how_to_record_its_tokenizer(tmp_path):
    from dllm.data import tokenizer_for_model
    from dllm.models import build_model, model_config

    build_model(model_config("tiny", hidden=32, layers=1, heads=2)).save_pretrained(tmp_path / "bare")
    where = str(tmp_path / "bare" / "config.json")
    with pytest.raises(ValueError, match=f"^'{where}' records no tokenizer: .*tokenizer=.*tokenizer_config"):
        tokenizer_for_model(tmp_path / "bare")


def test_a_batch_order_over_no_windows_is_refused():
    with pytest.raises(ValueError, match="at least one window"):
        BatchOrder(0, seed=0)  # next() would loop forever


@pytest.mark.parametrize("bad", [0, 1, 1.5, float("nan")])
def test_load_corpus_checks_val_fraction(bad):
    with pytest.raises(ValueError, match="val_fraction must lie in"):
        load_corpus(None, val_fraction=bad)


def test_byte_decode_refuses_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="id 300 is outside the byte tokenizer's vocabulary"):
        ByteTokenizer().decode([104, 300])
    assert ByteTokenizer().decode([104, 256, 257]) == "h<|endoftext|><|mask|>"


def test_bpe_encodes_special_token_text_as_text_and_ignores_truncation_and_padding(corpus_dir, tmp_path):
    texts = [p.read_text() for p in sorted(corpus_dir.iterdir())]
    tok = train_bpe(texts, vocab_size=300)
    source = 'MASK = "<|mask|>"  # then <|endoftext|>\n'
    ids = tok.encode(source)
    assert tok.mask_id not in ids and tok.eos_id not in ids and tok.decode(ids) == source
    assert [list(e) for e in tok.encode_batch([source])] == [list(ids)]
    assert tok.decode([tok.mask_id, tok.eos_id]) == "<|mask|><|endoftext|>"
    # a tokenizer.json made for batched model input: truncation and padding must not touch corpus text
    tok._tok.enable_truncation(8)
    tok._tok.enable_padding(length=64, pad_id=0)
    tok.save(tmp_path / "t")
    again = load_tokenizer(tmp_path / "t" / "tokenizer.json")
    assert list(again.encode(source)) == list(ids)



def _byte_level_tokenizer(extra: dict, added=()):
    """A byte-level BPE tokenizer.json's Tokenizer: the 256 bytes, ``extra`` entries, ``added`` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))} | extra
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.add_tokens(list(added))
    return tok


def test_a_tokenizer_json_listing_the_specials_as_plain_tokens_still_encodes_their_text_as_text(tmp_path):
    from tokenizers import AddedToken

    _byte_level_tokenizer({}, [AddedToken("<|endoftext|>", special=False)]).save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    ids = list(tok.encode("a<|endoftext|>b<|mask|>c"))
    assert tok.eos_id not in ids and tok.mask_id not in ids and tok.decode(ids) == "a<|endoftext|>b<|mask|>c"


def test_a_tokenizer_json_whose_ids_have_gaps_is_refused_or_sized_by_its_largest_id(tmp_path):
    # 256 bytes and "ab" at 257: the library numbers end-of-text 257 too (its count of entries)
    _byte_level_tokenizer({"ab": 257}).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="gives id 257 to two entries"):
        load_tokenizer(tmp_path / "tokenizer.json")
    # a gap that the specials do not land on: the vocabulary reaches the largest id (a uint32 token cache)
    _byte_level_tokenizer({"ab": 70000}).save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.vocab_size == 70001 and tok.decode([70000]) == "ab"

def test_a_damaged_token_cache_is_rebuilt(corpus_dir, tmp_path, caplog):
    first = prepare(str(corpus_dir), seq_len=32, cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    want = np.array(first.train.tokens)  # a copy: the memory map would fault once the file is cut
    del first
    train_bin = next((tmp_path / "cache" / "tokens").glob("*/train.bin"))
    for damage in (lambda: train_bin.write_bytes(train_bin.read_bytes()[:100]), train_bin.unlink,
                   lambda: (train_bin.parent / "meta.json").write_text("")):
        damage()
        with caplog.at_level(logging.WARNING, logger="dllm"):
            again = prepare(str(corpus_dir), seq_len=32, cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
        assert "incomplete or damaged; tokenizing again" in caplog.text
        assert np.array_equal(again.train.tokens, want)
        del again
        caplog.clear()


def test_copies_of_a_file_stay_on_one_side_of_the_split(corpus_dir):
    files = sorted(corpus_dir.iterdir())
    vendor = corpus_dir / "vendor"
    vendor.mkdir()
    for p in files:
        (vendor / p.name).write_text(p.read_text())
    c = load_corpus(corpus_dir, val_fraction=0.3)
    val_texts = {t for _, t in c.val}
    assert val_texts and not val_texts & {t for _, t in c.train}


@pytest.mark.parametrize("val_fraction", [0.05, 0.3])  # 0.05: whole files miss the share, the tail is held out
def test_copies_stay_on_one_side_when_a_tiny_corpus_is_split_by_other_rules(tmp_path, val_fraction):
    import random

    rng = random.Random(1)
    (tmp_path / "a.txt").write_text("".join(rng.choice("abcdefgh \n") for _ in range(3000)))
    copy = "".join(rng.choice("xyz \n") for _ in range(100))
    for name in ("c.txt", "d.txt", "e.txt"):
        (tmp_path / name).write_text(copy)
    c = load_corpus(tmp_path, val_fraction=val_fraction)
    train_texts = {t for _, t in c.train}
    assert c.val and c.train and not any(t in train_texts for _, t in c.val)
    assert not any(copy in t for _, t in c.train) or not any(copy in t for _, t in c.val)


def test_hidden_files_are_not_read_and_linked_folders_are(tmp_path, corpus_dir):
    (corpus_dir / ".env").write_text("SECRET=1\n")
    (corpus_dir / ".gitignore").write_text("build/\n")
    (corpus_dir / ".notes.md").write_text("private\n" * 20)
    git = corpus_dir / ".git"  # a hidden folder: nothing below it is read
    (git / "info").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "info" / "exclude").write_text("*.pyc\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.py").write_text("linked = True\n" * 40)
    (corpus_dir / "pkg").symlink_to(outside, target_is_directory=True)
    (outside / "loop").symlink_to(corpus_dir, target_is_directory=True)  # a link back into the tree
    c = load_corpus(corpus_dir, val_fraction=0.2)
    names = [rel for rel, _ in c.train + c.val]
    assert "pkg/linked.py" in names and not any(".env" in n for n in names)
    assert _names(c) == sorted(MODULES + ["pkg/linked.py"]) and not any(".git" in p for p, _ in c.skipped)
    assert len(names) == len(set(names)) and not any(n.startswith("pkg/loop") for n in names)



def test_a_file_name_that_is_not_utf8_is_read(tmp_path, corpus_dir):
    for f in corpus_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    try:
        with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.py"), "w") as fh:
            fh.write("x = 1\n" * 50)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    corpus = load_corpus(tmp_path)
    assert "caf\udce9.py" in {rel for rel, _ in corpus.train + corpus.val} and corpus.hash

def test_bytes_per_token_of_sentencepiece_style_tokenizers():
    """Metaspace and LLaMA-style decoders drop a token's leading space when it is decoded alone, and
    a lone byte-fallback piece decodes to U+FFFD: neither may shift the byte count."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    from dllm.data.tokenizer import BPETokenizer

    words = ["▁def", "▁return", "▁self", "▁x", "d", "e", "f", "x", "▁", "=", "1", "(", ")", ":"]
    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}, **{w: 257 + i for i, w in enumerate(words)}}
    metaspace = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    metaspace.decoder = decoders.Metaspace()
    llama = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    llama.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    llama.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                       decoders.Strip(" ", 1, 0)])
    for t in (metaspace, llama):
        t.add_tokens(["return"])  # a plain added token is text too
        tok = BPETokenizer(t)
        lengths = token_byte_lengths(tok)
        for text in ("def return self", "x = 1", "def f(x): return é"):
            ids = tok.encode(text)
            # every byte of the text, plus the space the tokenizer put before its first word
            assert lengths[ids].sum() == len(text.encode()) + 1, (text, [t.id_to_token(int(i)) for i in ids])


def test_files_of_one_text_still_leave_text_to_train_on(tmp_path):
    """Every file the same text goes to one side of the split by whole files; the tail split then
    keeps the asked share on each side instead of an empty training split."""
    held_out = [name for name in (f"copy{i}.txt" for i in range(100)) if _is_val(name, 0.6)][:3]
    for name in held_out:  # names whole-file holding out sends to validation
        (tmp_path / name).write_text("the same text in every file\n" * 20)
    corpus = load_corpus(tmp_path, val_fraction=0.6)
    assert corpus.train and corpus.val
    assert sum(len(t) for _, t in corpus.train) > 0


def test_the_standard_librarys_empty_files_are_skipped_without_a_warning(tmp_path, monkeypatch, caplog):
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "mod.py").write_text("x = 1\n" * 50)
    (tmp_path / "other.py").write_text("y = 2\n" * 50)
    monkeypatch.setattr("dllm.data.corpus.stdlib_root", lambda: tmp_path)
    with caplog.at_level("WARNING"):
        corpus = load_corpus(None, val_fraction=0.5)
    assert "skipped" not in caplog.text and corpus.num_files == 2
    with caplog.at_level("WARNING"):
        load_corpus(tmp_path, val_fraction=0.5)  # a folder of the user's own: its empty file is named
    assert "__init__.py: empty" in caplog.text


def test_a_folder_that_cannot_be_listed_is_named(corpus_dir, monkeypatch, caplog):
    locked = corpus_dir / "locked"
    locked.mkdir()
    (locked / "inside.py").write_text("x = 1\n" * 50)
    scandir, refused = os.scandir, {str(locked)}

    def refuse(path="."):  # chmod 0 would not stop root, who runs some test machines
        if os.fspath(path) in refused:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with caplog.at_level(logging.WARNING, logger="dllm"):
        c = load_corpus(corpus_dir, val_fraction=0.2)
    assert (str(locked), "unreadable folder (Permission denied)") in c.skipped
    assert f"{locked}: unreadable folder" in caplog.text
    refused.add(str(corpus_dir))  # the corpus folder itself
    with pytest.raises(ValueError, match=f"no readable UTF-8 text files; skipped {corpus_dir}: unreadable folder"):
        load_corpus(corpus_dir)


def test_an_empty_corpus_path_is_refused_not_read_as_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "unrelated.txt").write_text("not a corpus\n" * 50)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="corpus path is empty: .* leave --data out"):
        load_corpus("")  # --data "$CORPUS" with the variable unset


def test_a_mistyped_tokenizer_names_the_choices_and_a_path_may_start_with_home(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer 'bytes' is neither 'byte', 'bpe' nor the path of a"):
        load_tokenizer("bytes")
    tok = train_bpe([p.read_text() for p in sorted(corpus_dir.iterdir())], vocab_size=300, progress=False)
    tok.save(tmp_path / "home" / "t")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~ is expanded as in load_corpus
    assert load_tokenizer("~/t/tokenizer.json").fingerprint == tok.fingerprint


def test_bpe_decode_refuses_ids_outside_the_vocabulary(corpus_dir):
    tok = train_bpe([p.read_text() for p in sorted(corpus_dir.iterdir())], vocab_size=300, progress=False)
    assert tok.decode([tok.vocab_size - 1]) == "<|mask|>"
    for bad in (tok.vocab_size, -1):  # the library dropped the first in silence and overflowed on the second
        with pytest.raises(ValueError, match=f"id {bad} is outside the bpe tokenizer's vocabulary \\(0 to 299\\)"):
            tok.decode([104, bad])


@pytest.mark.parametrize("n,batch", [(7, 3), (11, 5), (5, 2), (13, 4)])
def test_every_epoch_visits_every_window_whatever_the_batch(n, batch):
    order = BatchOrder(n, seed=n * 31 + batch)
    drawn = np.concatenate([order.next(batch) for _ in range(-(-4 * n // batch))])[:4 * n]
    epochs = drawn.reshape(4, n)
    for e in epochs:  # no window skipped at an epoch's end, none repeated
        assert sorted(e.tolist()) == list(range(n))
    assert len({tuple(e) for e in epochs}) > 1


@pytest.mark.parametrize("n", [6, 9])
def test_batch_order_resumed_at_an_epochs_end_starts_the_next_epoch(n):
    a = BatchOrder(n, seed=5)
    epoch0 = a.next(n)  # exactly one epoch: the state holds pos == n
    state = a.state_dict()
    rest = np.concatenate([a.next(4) for _ in range(3)])
    b = BatchOrder(n, seed=5)
    b.load_state_dict(state)
    assert np.array_equal(rest, np.concatenate([b.next(4) for _ in range(3)]))
    assert not np.array_equal(rest[:n], epoch0[:len(rest[:n])])  # the next epoch, not epoch 0 again


@pytest.mark.parametrize("windows,extra", [(3, 0), (5, 0), (4, 6), (1, 0)])
def test_packed_dataset_keeps_every_whole_window(windows, extra):
    L = 7
    tokens = np.arange(windows * L + extra, dtype=np.uint16)
    ds = PackedDataset(tokens, L)
    assert len(ds) == windows
    got = ds.get(range(len(ds)))
    assert got.dtype == torch.int64 and got.shape == (windows, L)
    assert np.array_equal(got.numpy().reshape(-1), np.arange(windows * L))  # the tail short of a window is dropped
    for outside in (windows, -1):  # the tail, or nothing, would come back as a short row
        with pytest.raises(IndexError, match=f"window index {outside} is outside \\[0, {windows}\\)"):
            ds.get([0, outside])


def test_moving_a_file_across_the_split_never_reuses_the_old_token_cache(tmp_path):
    """Files hashed at 0.515 (a2.txt), 0.342 (b31.txt) and 0.150 (c3.txt): --val-fraction 0.2 holds out
    c3, 0.4 holds out b31 and c3, the same texts in the same order: the corpus hash must tell the splits
    apart, or the second run trains on b31 from the first run's cached train.bin."""
    d = tmp_path / "corpus"
    d.mkdir()
    texts = {"a2.txt": "alpha " * 10, "b31.txt": "beta " * 4, "c3.txt": "gamma" * 4}
    for name, text in texts.items():
        (d / name).write_text(text)
    c1, c2 = load_corpus(d, val_fraction=0.2), load_corpus(d, val_fraction=0.4)
    assert [r for r, _ in c1.val] == ["c3.txt"] and [r for r, _ in c2.val] == ["b31.txt", "c3.txt"]
    assert c1.hash != c2.hash
    first = prepare(str(d), val_fraction=0.2, seq_len=4, cache_dir=str(tmp_path / "cache"), progress=False)
    second = prepare(str(d), val_fraction=0.4, seq_len=4, cache_dir=str(tmp_path / "cache"), progress=False)
    assert len(first.train.tokens) == 60 + 20 + 2 and len(first.val.tokens) == 21
    assert len(second.train.tokens) == 61 and len(second.val.tokens) == 42


def test_text_suffixes_are_read_in_any_case(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    names = ["NOTES.TXT", "Guide.Md", "main.PY", "plain.txt", "photo.PNG"]
    for i, name in enumerate(names):
        (d / name).write_text(f"text number {i} " * (5 + 3 * i))
    c = load_corpus(d, val_fraction=0.3)
    read = sorted(rel.removesuffix("#val") for rel, _ in c.train + c.val)
    assert read == sorted(["NOTES.TXT", "Guide.Md", "main.PY", "plain.txt"])
    assert [os.path.basename(p) for p, _ in c.skipped] == ["photo.PNG"]


def test_a_model_folder_refuses_a_tokenizer_json_it_was_not_trained_with(corpus_dir, tmp_path):
    from dllm.data import tokenizer_for_model
    from dllm.data.tokenizer import tokenizer_config
    from dllm.models import build_model, model_config

    texts = [p.read_text() for p in sorted(corpus_dir.iterdir())]
    tok = train_bpe(texts[:5], vocab_size=300, progress=False)
    other = train_bpe(texts[5:], vocab_size=300, progress=False)  # same size, other merges
    assert other.fingerprint != tok.fingerprint
    folder = tmp_path / "model"
    build_model(model_config("tiny", vocab_size=300, hidden=32, layers=1, heads=2)).save_pretrained(
        folder, tokenizer=tokenizer_config(tok))
    tok.save(folder)
    assert tokenizer_for_model(folder).fingerprint == tok.fingerprint
    other.save(folder)  # a tokenizer.json copied over from another run
    with pytest.raises(ValueError, match="is not the one the model was trained with"):
        tokenizer_for_model(folder)


def test_a_cached_bpe_belongs_to_its_corpus(tmp_path):
    """Two corpora sharing a cache folder and a --bpe-vocab-size each train their own BPE."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d, modules in ((a, MODULES[:5]), (b, MODULES[5:])):
        d.mkdir()
        for m in modules:
            (d / m).write_text((STDLIB / m).read_text())
    kw = dict(tokenizer="bpe", bpe_vocab_size=300, seq_len=16, cache_dir=str(tmp_path / "cache"), val_fraction=0.3,
              progress=False)
    pa, pb = prepare(str(a), **kw), prepare(str(b), **kw)
    own = train_bpe([t for _, t in load_corpus(b, val_fraction=0.3).train], 300, progress=False)
    assert pb.tokenizer.fingerprint == own.fingerprint != pa.tokenizer.fingerprint


def test_files_without_a_suffix_are_read(corpus_dir):
    (corpus_dir / "README").write_text("A readme with no suffix.\n" * 30)
    (corpus_dir / "sub").mkdir()
    (corpus_dir / "sub" / "Makefile").write_text("all:\n\techo hi\n" * 30)
    c = load_corpus(corpus_dir, val_fraction=0.2)
    assert _names(c) == sorted(MODULES + ["README", "sub/Makefile"]) and not c.skipped


def test_a_folder_linked_twice_or_into_itself_is_read_once(tmp_path, corpus_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.py").write_text("linked = True\n" * 40)
    (outside / "self").symlink_to(outside, target_is_directory=True)  # a cycle below the corpus folder
    (corpus_dir / "pkg").symlink_to(outside, target_is_directory=True)
    (corpus_dir / "zz_alias").symlink_to(outside, target_is_directory=True)
    c = load_corpus(corpus_dir, val_fraction=0.2)
    names = _names(c)
    assert names == sorted(MODULES + ["pkg/linked.py"])


def test_a_file_with_a_nul_byte_past_its_start_is_binary(corpus_dir):
    (corpus_dir / "data.txt").write_bytes(b"header line of text\n" * 50 + b"\x00\x01\x02 payload")
    c = load_corpus(corpus_dir, val_fraction=0.2)
    assert "data.txt" not in _names(c)
    assert [(os.path.basename(p), r) for p, r in c.skipped] == [("data.txt", "binary (contains NUL bytes)")]


def test_the_standard_library_leaves_out_every_test_and_vendored_folder(tmp_path, monkeypatch):
    for d in ("", "tests", "idle_test", "site-packages/pkg", "dist-packages", "email", "test"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
        (tmp_path / d / f"mod_{d.replace('/', '_') or 'top'}.py").write_text(f"# {d}\n" + "x = 1\n" * 40)
    monkeypatch.setattr("dllm.data.corpus.stdlib_root", lambda: tmp_path)
    c = load_corpus(None, val_fraction=0.3)
    assert _names(c) == ["email/mod_email.py", "mod_top.py"]


def test_a_corpus_path_may_start_with_home(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_corpus("~/corpus", val_fraction=0.2).hash == load_corpus(corpus_dir, val_fraction=0.2).hash


def test_a_cut_short_validation_token_file_is_rebuilt(corpus_dir, tmp_path, caplog):
    kw = dict(seq_len=16, cache_dir=str(tmp_path / "cache"), val_fraction=0.2, progress=False)
    want = np.array(prepare(str(corpus_dir), **kw).val.tokens)
    val_bin = next((tmp_path / "cache" / "tokens").glob("*/val.bin"))
    val_bin.write_bytes(val_bin.read_bytes()[:64])
    with caplog.at_level(logging.WARNING, logger="dllm"):
        again = prepare(str(corpus_dir), **kw)
    assert "incomplete or damaged; tokenizing again" in caplog.text
    assert np.array_equal(again.val.tokens, want)


def test_a_batch_order_refuses_the_position_of_another_seed():
    a = BatchOrder(9, seed=4)
    a.next(5)
    with pytest.raises(ValueError, match="another dataset or seed"):
        BatchOrder(9, seed=5).load_state_dict(a.state_dict())


@pytest.mark.parametrize("share,whole_files", [(0.04, False), (0.06, True), (0.19, True), (0.25, False)])
def test_whole_files_are_held_out_between_half_and_twice_val_fraction(tmp_path, caplog, share, whole_files):
    held = next(n for n in (f"v{i}.txt" for i in range(200)) if _is_val(n, 0.1))
    kept = next(n for n in (f"t{i}.txt" for i in range(200)) if not _is_val(n, 0.1))
    total = 4000
    (tmp_path / held).write_text("v" * round(share * total))
    (tmp_path / kept).write_text("t" * (total - round(share * total)))
    with caplog.at_level(logging.WARNING, logger="dllm"):
        c = load_corpus(tmp_path, val_fraction=0.1)
    got = sum(len(t) for _, t in c.val) / total
    if whole_files:
        assert [r for r, _ in c.val] == [held] and got == pytest.approx(share) and "holding out" not in caplog.text
    else:
        assert got == pytest.approx(0.1, abs=1e-3) and "holding out the last 10% of the text" in caplog.text


@pytest.mark.parametrize("vocab_size", [40000, 65536, 65537, 70001])
def test_the_token_cache_keeps_every_id_of_a_large_vocabulary(tmp_path, vocab_size):
    """uint16 holds ids up to 65535 (a 65536-entry vocabulary), uint32 beyond: no id wraps or turns negative."""
    from dllm.data import Corpus
    from dllm.data.dataset import TokenCache

    rng = np.random.default_rng(vocab_size)

    class WideTokenizer:  # the high ids of a large vocabulary, one per character
        kind, eos_id, mask_id, fingerprint = "wide", vocab_size - 1, vocab_size - 2, f"wide-{vocab_size}"  # eos last

        def encode(self, text):
            return np.array([vocab_size - 3 - (ord(ch) * 7919) % 30000 for ch in text], dtype=np.int64)

    tok = WideTokenizer()
    tok.vocab_size = vocab_size
    texts = ["".join(chr(c) for c in rng.integers(32, 127, size=n)) for n in (37, 53)]
    corpus = Corpus(root="wide", train=[("a.txt", texts[0])], val=[("b.txt", texts[1])], hash="0" * 64)
    cache = TokenCache(tmp_path / "cache")
    cache.build(corpus, tok, progress=False)
    for split, text in (("train", texts[0]), ("val", texts[1])):
        want = np.concatenate([tok.encode(text), [tok.eos_id]])
        assert np.array_equal(np.asarray(cache.tokens(split), dtype=np.int64), want)


@pytest.mark.parametrize("sub", ["test", "tests", "site-packages", "__pycache__"])
def test_a_users_folder_reads_the_folders_only_the_standard_library_leaves_out(tmp_path, sub):
    """The standard library's test and vendored folders are left out of it alone: a corpus of the
    user's own with a tests/ (or site-packages/) folder is read whole."""
    rng = np.random.default_rng()
    (tmp_path / sub).mkdir()
    for i, d in enumerate(("", sub)):
        (tmp_path / d / f"m{i}.py").write_text("x = %d\n" % rng.integers(1000) * int(rng.integers(30, 80)))
    c = load_corpus(tmp_path, val_fraction=0.3)
    assert _names(c) == sorted(["m0.py", f"{sub}/m1.py"])


def test_num_bytes_counts_utf8_bytes_not_characters(tmp_path):
    rng = np.random.default_rng()
    texts = ["".join(rng.choice(list("aé€😀 \n"), size=int(rng.integers(50, 200)))) for _ in range(3)]
    for i, t in enumerate(texts):
        (tmp_path / f"f{i}.txt").write_text(t, encoding="utf-8")
    c = load_corpus(tmp_path, val_fraction=0.3)
    assert c.num_bytes == sum(len(t.encode("utf-8")) for t in texts) > sum(len(t) for t in texts)


def test_two_bpe_tokenizers_of_one_corpus_keep_their_own_token_caches(tmp_path):
    """The token cache belongs to the tokenizer that wrote it: a second tokenizer.json on the same
    corpus and cache folder must not read the first one's ids."""
    corpus = make_corpus(tmp_path / "corpus")
    texts = [p.read_text() for p in sorted(corpus.iterdir())]
    paths = []
    for size in (300, 420):
        tok = train_bpe(texts, vocab_size=size, progress=False)
        tok.save(tmp_path / f"tok{size}")
        paths.append(tmp_path / f"tok{size}" / "tokenizer.json")
    for path in paths:
        p = prepare(str(corpus), tokenizer=str(path), seq_len=32, val_fraction=0.2, cache_dir=str(tmp_path / "cache"),
                    progress=False)
        tok = load_tokenizer(path)
        want = np.concatenate([x for _, t in load_corpus(corpus, val_fraction=0.2).train
                               for x in (tok.encode(t), [tok.eos_id])])
        assert np.array_equal(np.asarray(p.train.tokens), want)


def test_load_tokenizer_trains_a_bpe_of_the_size_asked():
    from _train_helpers import MODULES, STDLIB

    texts = [(STDLIB / m).read_text() for m in MODULES[:4]]
    size = int(np.random.default_rng().integers(300, 420))
    tok = load_tokenizer("bpe", train_texts=texts, vocab_size=size)
    assert tok.vocab_size == size and tok.mask_id == size - 1


def test_byte_decode_shows_broken_utf8_as_replacement_characters():
    """A sampled byte sequence need not be valid UTF-8: each broken sequence decodes as U+FFFD, not
    silently dropped, around special tokens too."""
    tok = ByteTokenizer()
    e = list("é".encode())
    ids = [104, e[0], 256, e[1], 105, 0xFF, 257, 106, e[0]]
    assert tok.decode(ids) == "h\ufffd<|endoftext|>\ufffdi\ufffd<|mask|>j\ufffd"


def test_the_token_cache_follows_dllm_cache(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus")
    monkeypatch.setenv("DLLM_CACHE", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    prepare(str(corpus), seq_len=32, val_fraction=0.2, progress=False)
    assert list((tmp_path / "elsewhere" / "tokens").iterdir()) and not (tmp_path / "home").exists()


@pytest.mark.parametrize("edge", [False, True])
def test_a_nul_byte_anywhere_in_a_files_first_8_kib_makes_it_binary(tmp_path, edge):
    at = 8191 if edge else int(np.random.default_rng().integers(1100, 8000))  # 8191: the 8 KiB's last byte
    head = ("line of text\n" * 700).encode()[:at]
    (tmp_path / "data.txt").write_bytes(head + b"\x00 rest\n")
    (tmp_path / "a.txt").write_text("text\n" * 40)
    (tmp_path / "b.txt").write_text("more\n" * 40)
    c = load_corpus(tmp_path, val_fraction=0.3)
    assert _names(c) == ["a.txt", "b.txt"]
    assert [r for p, r in c.skipped] == ["binary (contains NUL bytes)"]


def test_a_published_tokenizer_decodes_its_special_tokens_as_text():
    """A sampled end-of-text (a special token of the published tokenizer.json) shows in the text, as the
    mask id does, wherever it falls."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from dllm.data.tokenizer import PublishedTokenizer

    rng = np.random.default_rng()
    n = int(rng.integers(20, 60))
    t = Tokenizer(WordLevel({f"w{i}": i for i in range(n)}, unk_token="w0"))
    t.pre_tokenizer = Whitespace()
    t.add_special_tokens(["<|endoftext|>"])
    tok = PublishedTokenizer(t, mask_id=n + 1)
    assert tok.eos_id == n and tok.vocab_size == n + 2
    words = [int(i) for i in rng.integers(1, n, size=6)]
    out = tok.decode(words[:2] + [n] + words[2:4] + [n + 1] + words[4:] + [n])
    assert out.count("<|endoftext|>") == 2 and out.count("<|mask|>") == 1
    assert all(f"w{w}" in out for w in words)


def test_the_batch_orders_of_two_seeds_are_not_shifted_copies():
    """Seed s's second epoch is not seed s+1's first: runs of neighbouring seeds see unrelated data orders."""
    from dllm.data import BatchOrder

    n = int(np.random.default_rng().integers(50, 200))
    for s in range(4):
        a, b = BatchOrder(n, seed=s), BatchOrder(n, seed=s + 1)
        a.next(n)
        assert not np.array_equal(a.next(n), b.next(n))


def test_a_bpe_encodes_characters_its_training_text_never_held():
    """Byte-level BPE starts from all 256 bytes: a prompt's characters the training text lacked (an accent,
    an emoji, another script) still encode, and decode back, instead of vanishing."""
    rng = np.random.default_rng()
    texts = ["".join(rng.choice(list("abcdef xyz\n()=:"), size=int(rng.integers(150, 300)))) for _ in range(5)]
    tok = train_bpe(texts, vocab_size=300, progress=False)
    unseen = "".join(chr(int(c)) for c in rng.integers(0xA0, 0x2FFF, size=int(rng.integers(5, 30)))) + "QZ\u00e9\U0001F600"
    ids = tok.encode("def " + unseen)
    assert tok.decode(ids) == "def " + unseen


def _held_big_file_name(val_fraction):
    # first in file order and held out whole: whole files would put ~75% in validation, so the tail is held out
    return next(n for n in (f"a{i}.txt" for i in range(500)) if _is_val(n, val_fraction))


def _check_every_character_once(c, files):
    """Each file's text is its training part then its validation part, each entry named once, none empty."""
    names = [rel for rel, _ in c.train + c.val]
    assert len(names) == len(set(names)) and all(t for _, t in c.train + c.val)
    train, val = dict(c.train), dict(c.val)
    for rel, text in files.items():
        assert train.get(rel, "") + val.get(rel + "#val", val.get(rel, "")) == text, rel
    assert {rel.removesuffix("#val") for rel in names} == set(files)


def test_the_tail_split_keeps_a_file_after_the_cut_whole(tmp_path):
    """The cut falls in m.txt; z.txt, longer than the rest of m.txt, lies wholly after it and is held out
    whole (not cut to its last characters)."""
    rng = np.random.default_rng()
    vf = 0.2
    sizes = {_held_big_file_name(vf): 3000, "m.txt": 300, "z.txt": 700}
    files = {n: "".join(rng.choice(list("abcdefgh \n"), size=s)) for n, s in sizes.items()}
    for n, t in files.items():
        (tmp_path / n).write_text(t)
    c = load_corpus(tmp_path, val_fraction=vf)
    _check_every_character_once(c, files)
    assert sum(len(t) for _, t in c.val) == pytest.approx(vf * 4000, abs=1)
    assert dict(c.val)["z.txt"] == files["z.txt"] and "m.txt#val" in dict(c.val)


def test_copies_follow_their_first_copy_once_when_the_tail_is_held_out(tmp_path):
    """A copy of a training file and a copy of a held-out file, in a corpus split by its tail: each copy
    is read once, on its first copy's side, and the held-out share counts each text once; a copy of the
    file the cut falls in would put its text on both sides, and is left out."""
    rng = np.random.default_rng()
    vf = 0.2
    big = _held_big_file_name(vf)
    files = {big: "".join(rng.choice(list("abcdefgh \n"), size=3000)),
             "m.txt": "".join(rng.choice(list("ijklmn \n"), size=300)),
             "z.txt": "".join(rng.choice(list("opqrst \n"), size=700))}
    files["n.txt"], files["zz.txt"] = files[big], files["z.txt"]  # copies, after their first copies
    for n, t in files.items():
        (tmp_path / n).write_text(t)
    (tmp_path / "mm.txt").write_text(files["m.txt"])  # a copy of the file the cut falls in: on neither side
    c = load_corpus(tmp_path, val_fraction=vf)
    _check_every_character_once(c, files)
    assert not any(a in b for _, a in c.train for _, b in c.val) and not any(a in b for _, a in c.val for _, b in c.train)
    train_names, val_names = {r for r, _ in c.train}, {r for r, _ in c.val}
    assert {big, "n.txt"} <= train_names and {"z.txt", "zz.txt"} <= val_names
    assert sum(len(t) for r, t in c.val if r != "zz.txt") == pytest.approx(vf * 4000, abs=1)


def test_the_standard_library_corpus_reads_python_sources_only(tmp_path, monkeypatch):
    rng = np.random.default_rng()
    for name in ("mod.py", "other.py", "notes.txt", "README", "data.json", "guide.md"):
        (tmp_path / name).write_text("x = %d\n" % rng.integers(1000) * int(rng.integers(30, 80)))
    monkeypatch.setattr("dllm.data.corpus.stdlib_root", lambda: tmp_path)
    c = load_corpus(None, val_fraction=0.3)
    assert sorted({r.removesuffix("#val") for r, _ in c.train + c.val}) == ["mod.py", "other.py"]
    assert not c.skipped


def test_a_bpe_of_another_size_is_trained_not_taken_from_the_cache(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    kw = dict(tokenizer="bpe", seq_len=16, val_fraction=0.2, cache_dir=str(tmp_path / "cache"), progress=False)
    sizes = [int(s) for s in np.random.default_rng().choice(np.arange(290, 420), size=2, replace=False)]
    for size in sizes:
        assert prepare(str(corpus), bpe_vocab_size=size, **kw).tokenizer.vocab_size == size
    assert prepare(str(corpus), bpe_vocab_size=sizes[0], **kw).tokenizer.vocab_size == sizes[0]


def test_a_bpe_of_the_size_asked_is_not_reported_as_smaller(corpus_dir_texts, caplog):
    with caplog.at_level(logging.WARNING, logger="dllm"):
        tok = train_bpe(corpus_dir_texts, vocab_size=300, progress=False)
    assert tok.vocab_size == 300 and "fewer than" not in caplog.text


@pytest.fixture
def corpus_dir_texts(tmp_path):
    return [p.read_text() for p in sorted(make_corpus(tmp_path / "corpus").iterdir())]


def test_the_token_cache_holds_every_file_of_a_corpus_of_many_files(tmp_path):
    """Corpora are tokenized in chunks of files (for the progress bar): with over a hundred files, every
    file's tokens and its end-of-text are in the stream, in order."""
    rng = np.random.default_rng()
    d = tmp_path / "corpus"
    d.mkdir()
    n = int(rng.integers(140, 200))
    for i in range(n):
        (d / f"f{i:03d}.txt").write_text("".join(rng.choice(list("abc \n\u00e9"), size=int(rng.integers(5, 40)))) + "x")
    p = prepare(str(d), seq_len=4, val_fraction=0.1, cache_dir=str(tmp_path / "cache"), progress=False)
    c, tok = load_corpus(d, val_fraction=0.1), ByteTokenizer()
    for split, docs in (("train", c.train), ("val", c.val)):
        want = np.concatenate([x for _, t in docs for x in (tok.encode(t), [tok.eos_id])])
        assert np.array_equal(np.asarray(getattr(p, split).tokens, dtype=np.int64), want), split
        assert p.meta[f"{split}_files"] == len(docs)


def test_a_tokenizer_json_that_adds_a_start_token_encodes_text_alone(tmp_path):
    """A tokenizer.json whose post-processor puts <s> before every input (LLaMA-style templates): corpus
    files, prompts and infill contexts are text alone, with no <s> in the middle of a packed stream."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer, t.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    t.add_special_tokens(["<s>"])
    bos = t.token_to_id("<s>")
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    t.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    rng = np.random.default_rng()
    texts = ["".join(rng.choice(list("def x():\n\u00e9"), size=int(rng.integers(3, 40)))) for _ in range(3)]
    for text, batched in zip(texts, tok.encode_batch(texts)):
        ids = tok.encode(text)
        assert bos not in ids.tolist() and list(batched) == list(ids) and tok.decode(ids) == text


@pytest.mark.parametrize("meta", ["{}", "[]", "null", '{"dtype": "uint16", "train_tokens": null, "val_tokens": 1}'])
def test_a_token_cache_whose_meta_json_is_valid_json_of_another_shape_is_rebuilt(tmp_path, caplog, meta):
    corpus = make_corpus(tmp_path / "corpus")
    kw = dict(seq_len=16, cache_dir=str(tmp_path / "cache"), val_fraction=0.2, progress=False)
    want = np.array(prepare(str(corpus), **kw).train.tokens)
    meta_json = next((tmp_path / "cache" / "tokens").glob("*/meta.json"))
    meta_json.write_text(meta)
    with caplog.at_level(logging.WARNING, logger="dllm"):
        again = prepare(str(corpus), **kw)
    assert "incomplete or damaged; tokenizing again" in caplog.text
    assert np.array_equal(np.asarray(again.train.tokens), want)


def _terminal_output(code: str) -> str:
    """What ``python -c code`` writes to a terminal (a pseudo-terminal: progress bars draw only on one)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    main, child = os.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=120) == 0, out[-2000:]
    return out.decode("utf-8", "replace")


@pytest.mark.parametrize("progress", [False, True])
def test_no_progress_silences_the_bpe_trainers_bars_on_a_terminal(tmp_path, progress):
    corpus = make_corpus(tmp_path / "corpus")
    out = _terminal_output("from dllm.data import prepare\n"
                           f"prepare({str(corpus)!r}, tokenizer='bpe', bpe_vocab_size=300, seq_len=16, "
                           f"val_fraction=0.2, cache_dir={str(tmp_path / 'cache')!r}, progress={progress})\n")
    assert ("merges" in out) == progress  # the trainer's "Compute merges" bar


def test_the_name_stdlib_is_the_standard_library_not_a_folder_of_that_name(tmp_path, monkeypatch):
    """``--data stdlib`` names the standard library (as leaving --data out does), even where the working
    folder holds a folder called stdlib."""
    rng = np.random.default_rng()
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("mod.py", "other.py", "third.py"):
        (lib / name).write_text("x = %d\n" % rng.integers(1000) * int(rng.integers(30, 80)))
    monkeypatch.setattr("dllm.data.corpus.stdlib_root", lambda: lib)
    work = tmp_path / "work"
    (work / "stdlib").mkdir(parents=True)
    (work / "stdlib" / "unrelated.txt").write_text("not the standard library\n" * 40)
    monkeypatch.chdir(work)
    named, default = load_corpus("stdlib", val_fraction=0.3), load_corpus(None, val_fraction=0.3)
    assert named.hash == default.hash and named.root == str(lib)
