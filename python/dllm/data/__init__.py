"""Corpora, tokenizers and packed, memory-mapped token datasets."""

from .corpus import Corpus, load_corpus, stdlib_root
from .tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer, tokenizer_for_model, train_bpe
from .dataset import BatchOrder, PackedDataset, TokenCache, prepare

__all__ = [
    "Corpus", "load_corpus", "stdlib_root",
    "ByteTokenizer", "BPETokenizer", "load_tokenizer", "tokenizer_for_model", "train_bpe",
    "BatchOrder", "PackedDataset", "TokenCache", "prepare",
]
