"""What every tokenizer shares: special tokens, and the interface the model library uses.

A kind (BPE, char, ...) only knows its plain vocabulary; the base class adds special tokens
on top of it, so they are handled the same way everywhere: appended after the plain ids,
recognised in text only when asked (`allow_special=True`), never produced by training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar, Self

import regex

ENDOFTEXT = "<|endoftext|>"
UNKNOWN = "<|unk|>"  # what closed-vocabulary kinds (word, regex) encode unknown pieces as
VOCAB_FILE, MERGES_FILE, SPECIALS_FILE = "vocab.json", "merges.txt", "special_tokens.json"
CHARS_FILE = "chars.json"
# 256 byte tokens is the smallest byte-level vocabulary; token ids are stored as uint16.
MIN_BPE_VOCAB, MAX_VOCAB = 256, 65535


class UnknownCharacterError(ValueError):
    """Text holds a character the tokenizer's vocabulary cannot spell."""

    def __init__(self, character: str) -> None:
        super().__init__(f"character {character!r} is not in the vocabulary")
        self.character = character


def _check_specials(special_tokens: Iterable[str]) -> list[str]:
    """Special tokens in order, duplicates dropped; empty strings refused."""
    specials = list(dict.fromkeys(special_tokens))
    if any(not s for s in specials):
        raise ValueError("special tokens must be non-empty strings")
    return specials


def _append_specials(current: dict[str, int], tokens: Iterable[str],
                     next_id: int) -> dict[str, int]:
    """current plus the new tokens, numbered from next_id; known tokens keep their ids."""
    specials = dict(current)
    for token in _check_specials(tokens):
        if token not in specials:
            specials[token] = next_id
            next_id += 1
    return specials


def _split_on_specials(text: str, specials: dict[str, int]) -> list[tuple[str, int | None]]:
    """Cut text into (plain text, None) and (special token, id) pieces, longest match first."""
    if not specials:
        return [(text, None)]
    alternatives = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
    pieces: list[tuple[str, int | None]] = []
    last = 0
    for match in regex.finditer(alternatives, text):
        if match.start() > last:
            pieces.append((text[last:match.start()], None))
        pieces.append((match.group(), specials[match.group()]))
        last = match.end()
    if last < len(text):
        pieces.append((text[last:], None))
    return pieces


class Tokenizer(ABC):
    """A plain vocabulary (the subclass's) plus special tokens (handled here).

    A subclass implements `_encode_plain`, `_plain_token_bytes`, `_plain_vocab_size` and
    `_with_specials` for its plain tokens, and `train`, `save`, `load`; it lists in `FILES`
    the files whose presence in a folder means "this kind was saved here".
    """

    FILES: ClassVar[tuple[str, ...]] = ()

    def __init__(self, special_tokens: dict[str, int] | None = None) -> None:
        self.special_tokens = dict(special_tokens or {})
        self._id_to_special = {i: s for s, i in self.special_tokens.items()}
        # Encoded once: token_bytes is called per generated token while streaming.
        self._special_bytes = {i: s.encode() for i, s in self._id_to_special.items()}

    # -- what a kind provides ---------------------------------------------------------------

    @classmethod
    @abstractmethod
    def train(cls, text: str, vocab_size: int,
              special_tokens: Iterable[str] = (ENDOFTEXT,)) -> Self:
        """Learn a vocabulary of at most vocab_size tokens (specials included) from text."""

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the tokenizer's files (`FILES` among them) into directory."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> Self:
        """Read a tokenizer written by `save`."""

    @abstractmethod
    def _encode_plain(self, text: str) -> list[int]:
        """Ids for text that holds no special tokens (a new list: callers may mutate it)."""

    @abstractmethod
    def _plain_token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes of a plain (non-special) token."""

    @property
    @abstractmethod
    def _plain_vocab_size(self) -> int:
        """How many plain tokens there are; special ids start here."""

    @abstractmethod
    def _with_specials(self, special_tokens: dict[str, int]) -> Self:
        """The same plain vocabulary with these special tokens."""

    # -- shared -----------------------------------------------------------------------------

    @classmethod
    def is_saved_in(cls, directory: str | Path) -> bool:
        """Whether directory holds every file that identifies this kind."""
        return bool(cls.FILES) and all((Path(directory) / f).exists() for f in cls.FILES)

    @property
    def vocab_size(self) -> int:
        return self._plain_vocab_size + len(self.special_tokens)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids for text; special tokens are recognised only with allow_special=True.

        Without it a special token's text is encoded as ordinary text, so user input can
        never forge one.
        """
        if not allow_special:
            return self._encode_plain(text)
        ids: list[int] = []
        for piece, special_id in _split_on_specials(text, self.special_tokens):
            if special_id is not None:
                ids.append(special_id)
            else:
                ids.extend(self._encode_plain(piece))
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        """A token's UTF-8 bytes; a token may hold part of a character (byte-level kinds)."""
        special = self._special_bytes.get(token_id)
        return special if special is not None else self._plain_token_bytes(token_id)

    def decode(self, ids: Iterable[int]) -> str:
        """Text for ids; bytes that do not form whole characters become U+FFFD."""
        specials, plain = self._special_bytes, self._plain_token_bytes
        return b"".join(specials[i] if i in specials else plain(i) for i in ids).decode(
            "utf-8", errors="replace")

    def with_special_tokens(self, tokens: Iterable[str]) -> Self:
        """A copy that also knows tokens (appended after the current vocabulary).

        Tokens it already knows keep their ids, so ids a model was trained on stay valid.
        """
        return self._with_specials(_append_specials(self.special_tokens, tokens,
                                                    self.vocab_size))
