"""Tokenizers: a byte-level BPE in the GPT-2 format, a character-level one, and two word-level
ones (a vocabulary by frequency, and the 004 write-up's regex rule) with `<|unk|>`.

Every kind is a `Tokenizer` (base.py: special tokens and the shared interface) that adds one
idea (bpe.py, char.py, word.py), so the model, trainer and sampler never care which one they got. A
new kind drops in by subclassing `Tokenizer` and being registered in `TOKENIZER_KINDS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from gpt.tokenizer.base import (
    CHARS_FILE,
    ENDOFTEXT,
    MAX_VOCAB,
    MERGES_FILE,
    MIN_BPE_VOCAB,
    SPECIALS_FILE,
    UNKNOWN,
    VOCAB_FILE,
    Tokenizer,
    UnknownCharacterError,
)
from gpt.tokenizer.bpe import (
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
    bytes_to_unicode,
    count_pretokens,
    split_pretokens,
)
from gpt.tokenizer.char import CharTokenizer
from gpt.tokenizer.word import RegexTokenizer, WordTokenizer

__all__ = [
    "CHARS_FILE", "ENDOFTEXT", "FREQUENCY_KINDS", "GPT2_SPLIT_PATTERN", "MAX_VOCAB", "MERGES_FILE",
    "MIN_BPE_VOCAB", "SPECIALS_FILE", "TOKENIZER_KINDS", "UNKNOWN",
    "VOCAB_FILE", "BPETokenizer", "CharTokenizer", "RegexTokenizer", "Tokenizer",
    "UnknownCharacterError", "WordTokenizer", "bytes_to_unicode", "count_pretokens",
    "is_tokenizer_dir",
    "load_tokenizer", "split_pretokens", "train_tokenizer",
]

# Order matters to load_tokenizer: the first kind whose files are present wins.
TOKENIZER_KINDS: dict[str, type[Tokenizer]] = {
    "bpe": BPETokenizer, "char": CharTokenizer, "word": WordTokenizer, "regex": RegexTokenizer}
# The kinds whose vocabulary is a cap and a minimum frequency over the training pieces.
FREQUENCY_KINDS = ("word", "regex")


def train_tokenizer(kind: str, text: str, vocab_size: int,
                    special_tokens: Iterable[str] = (ENDOFTEXT,),
                    min_frequency: int = 1, drop_whitespace: bool = False,
                    seed_ascii: bool = False, specials_first: bool = False) -> Tokenizer:
    """Train the tokenizer named by kind (a key of TOKENIZER_KINDS); min_frequency applies to
    the FREQUENCY_KINDS only, drop_whitespace to regex only (the 004 book's tokenizer),
    seed_ascii and specials_first to char only (the 002 write-up's)."""
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; "
                         f"choose one of {sorted(TOKENIZER_KINDS)}")
    if drop_whitespace and kind != "regex":
        raise ValueError(f"drop_whitespace applies to the regex kind, not {kind}")
    if (seed_ascii or specials_first) and kind != "char":
        raise ValueError(f"seed_ascii and specials_first apply to the char kind, not {kind}")
    if kind in FREQUENCY_KINDS:
        options = {"drop_whitespace": True} if drop_whitespace else {}
        return TOKENIZER_KINDS[kind].train(text, vocab_size, special_tokens,
                                           min_frequency=min_frequency, **options)
    if min_frequency != 1:
        raise ValueError(f"min_frequency applies to the {' and '.join(FREQUENCY_KINDS)} "
                         f"kinds, not {kind}")
    if kind == "char":
        return CharTokenizer.train(text, vocab_size, special_tokens, seed_ascii=seed_ascii,
                                   specials_first=specials_first)
    return TOKENIZER_KINDS[kind].train(text, vocab_size, special_tokens)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load whichever tokenizer a folder holds."""
    src = Path(directory)
    for cls in TOKENIZER_KINDS.values():
        if cls.is_saved_in(src):
            return cls.load(src)
    expected = " or ".join(" + ".join(cls.FILES) for cls in TOKENIZER_KINDS.values())
    raise FileNotFoundError(f"{src} holds no tokenizer (expected {expected})")


def is_tokenizer_dir(directory: str | Path) -> bool:
    """Whether a folder holds a tokenizer of any registered kind."""
    return any(cls.is_saved_in(directory) for cls in TOKENIZER_KINDS.values())
