"""Text corpora: the running Python's standard library by default, or any file or folder.

Validation holds out whole files (chosen by a hash of the relative path, so the split does not
depend on file order or on the machine; copies of a file follow the first copy), which keeps
near-duplicate lines of one file from leaking across the split. Hidden files and folders are
not read; symlinked folders are. Where whole files cannot come near the asked fraction (one file, or a
few of very different sizes), the tail of the text is held out instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("dllm")

# Test suites and vendored packages are not "the standard library" a reader thinks of, and the
# test folder alone is larger than the rest.
_STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_TEXT_SUFFIXES = {".txt", ".py", ".md", ".rst", ".json", ".c", ".h", ".cpp", ".js", ".html", ".css",
                  ".toml", ".yaml", ".yml", ".csv", ".tex", ".sh", ".ini", ".cfg", ".xml"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass
class Corpus:
    """The readable text documents of a corpus, split into train and validation by whole file."""

    root: str
    train: list[tuple[str, str]] = field(default_factory=list)  # (relative path, text)
    val: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    hash: str = ""

    @property
    def num_files(self) -> int:
        """Files read; one whose tail went to validation (``rel#val``) counts once."""
        return len({rel.removesuffix("#val") for rel, _ in self.train + self.val})

    @property
    def num_bytes(self) -> int:
        return sum(len(t.encode("utf-8")) for _, t in self.train + self.val)


def _candidate_files(path: Path, stdlib: bool) -> tuple[list[Path], list[Path], list[tuple[str, str]]]:
    """The files to read, those left out for their suffix, and the folders that could not be listed."""
    if path.is_file():
        return [path], [], []
    if not path.is_dir():
        if path.exists():
            raise ValueError(f"corpus path {str(path)!r} is neither a file nor a folder")
        raise FileNotFoundError(f"corpus path {str(path)!r} does not exist")
    out, ignored, unlisted = [], [], []
    visited = {os.path.realpath(path)}

    def unlisted_folder(e: OSError) -> None:  # os.walk's default passes over it in silence, files and all
        unlisted.append((e.filename, f"unreadable folder ({e.strerror or e})"))

    # Symlinked folders are read too (a linked-in package is text like any other), each real folder
    # once, so a link back into the tree cannot loop.
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True, onerror=unlisted_folder):
        kept = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if d.startswith(".") or (stdlib and d in _STDLIB_SKIP_DIRS) or real in visited:
                continue
            visited.add(real)
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith("."):  # hidden files (.env, .gitignore) are settings, not corpus text
                continue
            p = Path(dirpath) / name
            if stdlib:
                if p.suffix == ".py":
                    out.append(p)
            elif p.suffix.lower() in _TEXT_SUFFIXES or p.suffix == "":
                out.append(p)
            else:
                ignored.append(p)
    return out, ignored, unlisted


def _read_text(p: Path) -> tuple[str | None, str]:
    """The file's text, or None and the reason it is not usable text."""
    try:
        raw = p.read_bytes()
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"
    if not raw.strip():
        return None, "empty"
    if b"\x00" in raw[:8192]:
        return None, "binary (contains NUL bytes)"
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError:
        return None, "binary (not UTF-8 text)"


def _is_val(rel: str, val_fraction: float) -> bool:
    # surrogateescape: a file name that is not UTF-8 keeps its bytes (and valid names hash as before)
    h = int.from_bytes(hashlib.sha256(rel.encode("utf-8", "surrogateescape")).digest()[:8], "little")
    return (h / 2**64) < val_fraction


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _tail_split(docs: list[tuple[str, str]], val_fraction: float):
    """The last ``val_fraction`` of the concatenated text (in file order) as validation: whole files
    after the cut, and the tail of the file it falls in as ``rel#val``. Copies of a file follow its
    first copy; copies of the file the cut falls in are left out (they would be on both sides)."""
    first: dict[bytes, str] = {}
    unique = [(rel, text) for rel, text in docs if first.setdefault(_text_key(text), rel) == rel]
    total = sum(len(t) for _, t in unique)
    cut = int(total * (1 - val_fraction))
    train, val, side, pos = [], [], {}, 0
    for rel, text in unique:
        k = min(max(cut - pos, 0), len(text))
        if k > 0 or len(unique) == 1:
            train.append((rel, text[:k]))
        if k < len(text) or len(unique) == 1:
            val.append((rel + "#val" if k > 0 or len(unique) == 1 else rel, text[k:]))
        side[rel] = train if k == len(text) else val if k == 0 else None
        pos += len(text)
    for rel, text in docs:
        original = first[_text_key(text)]
        if original != rel and side[original] is not None:
            side[original].append((rel, text))
    return train, val


def load_corpus(path: str | os.PathLike | None = None, *, val_fraction: float = 0.05) -> Corpus:
    """Read a corpus: ``None`` (or ``"stdlib"``) for the running Python's standard-library sources,
    else a text file or a folder of text files.

    Empty, binary and unreadable files, folders that cannot be listed, and in a folder files whose
    suffix is not a known text suffix, are skipped with a warning naming them (the standard
    library's empty files silently); a corpus with no usable text raises ``ValueError``. Whole files
    are held out (at least one when there are two or more) while that puts between half and twice
    ``val_fraction`` of the text in validation; otherwise, and for a single file, the last
    ``val_fraction`` of the text is. ``Corpus.hash`` is a SHA-256 over the
    paths and texts of both splits.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if path is not None and not str(path):
        # "" is the working folder to Path: --data "$CORPUS" with the variable unset would read whatever is there.
        raise ValueError("the corpus path is empty: give a text file or folder, or leave --data out for the "
                         "standard library")
    stdlib = path is None or str(path) == "stdlib"
    root = stdlib_root() if stdlib else Path(path).expanduser()
    files, ignored, unlisted = _candidate_files(root, stdlib)
    corpus = Corpus(root=str(root))
    corpus.skipped += unlisted + [(str(p), f"suffix {p.suffix} is not read as text") for p in ignored]
    docs = []
    for p in files:
        text, reason = _read_text(p)
        rel = p.name if p == root else str(p.relative_to(root))
        if text is None:
            if not (stdlib and reason == "empty"):  # the standard library's empty __init__.py: nothing to act on
                corpus.skipped.append((str(p), reason))
            continue
        docs.append((rel, text))
    if corpus.skipped:
        shown = "; ".join(f"{p}: {r}" for p, r in corpus.skipped[:5])
        more = f" (and {len(corpus.skipped) - 5} more)" if len(corpus.skipped) > 5 else ""
        hint = ("; a folder's files are read only with no suffix or a text one (.txt, .py, .md, .json, ...): "
                "rename the others to .txt to include them") if ignored else ""
        log.warning("corpus: skipped %d file(s): %s%s%s", len(corpus.skipped), shown, more, hint)
    if not docs:
        named = f"; skipped {shown}{more}" if corpus.skipped else ""
        raise ValueError(f"corpus {str(root)!r} has no readable UTF-8 text files{named}")
    side_of_text: dict[bytes, bool] = {}
    for rel, text in docs:
        # A copy of a file (a vendored folder, a linked alias) goes where its first copy went: the
        # same text on both sides of the split would understate the validation loss.
        is_val = side_of_text.setdefault(_text_key(text), _is_val(rel, val_fraction))
        (corpus.val if is_val else corpus.train).append((rel, text))
    # Tiny corpora (tests) still need both splits: one text moves over, with its copies.
    for source, dest, pick in ((corpus.train, corpus.val, -1), (corpus.val, corpus.train, 0)):
        if not dest and len({_text_key(t) for _, t in source}) > 1:
            key = _text_key(source[pick][1])
            dest += [d for d in source if _text_key(d[1]) == key]
            source[:] = [d for d in source if _text_key(d[1]) != key]
    share = sum(len(t) for _, t in corpus.val) / sum(len(t) for _, t in docs)
    if len(docs) == 1 or not corpus.train or not val_fraction / 2 <= share <= 2 * val_fraction:
        # Whole files that far off the asked share starve training, or leave validation shorter than
        # one window; a tail keeps the share, and still no text is on both sides of the split.
        if len(docs) > 1:  # (every file the same text puts them all on one side)
            log.warning("corpus: holding out whole files would put %.0f%% of the text in validation "
                        "(val_fraction %g); holding out the last %g%% of the text instead",
                        100 * share, val_fraction, 100 * val_fraction)
        corpus.train, corpus.val = _tail_split(docs, val_fraction)
    h = hashlib.sha256()
    for split, items in (("train", corpus.train), ("val", corpus.val)):
        for rel, text in items:
            h.update(f"{split}\0{rel}\0".encode("utf-8", "surrogateescape"))
            h.update(text.encode("utf-8"))
            h.update(b"\0")
    corpus.hash = h.hexdigest()
    return corpus
