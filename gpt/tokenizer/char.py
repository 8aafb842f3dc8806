"""Character-level tokenizer: one token per character seen in training."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from gpt.tokenizer.base import (
    CHARS_FILE,
    ENDOFTEXT,
    Tokenizer,
    UnknownCharacterError,
    _check_specials,
)


class CharTokenizer(Tokenizer):
    """One token per character seen in training: the simplest tokenizer there is."""

    FILES = (CHARS_FILE,)

    def __init__(self, chars: list[str], special_tokens: dict[str, int] | None = None) -> None:
        super().__init__(special_tokens)
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str, vocab_size: int | None = None,
              special_tokens: Iterable[str] = (ENDOFTEXT,)) -> CharTokenizer:
        """Vocabulary = the sorted set of characters in text (vocab_size is only a ceiling)."""
        specials = _check_specials(special_tokens)
        chars = sorted(set(text))
        if not chars:
            raise ValueError("cannot train a tokenizer on empty text")
        if vocab_size is not None and len(chars) + len(specials) > vocab_size:
            raise ValueError(f"text has {len(chars)} distinct characters, more than "
                             f"vocab_size={vocab_size} allows")
        return cls(chars, {s: len(chars) + k for k, s in enumerate(specials)})

    @property
    def _plain_vocab_size(self) -> int:
        return len(self.chars)

    def _encode_plain(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as err:
            raise UnknownCharacterError(err.args[0]) from None

    def _plain_token_bytes(self, token_id: int) -> bytes:
        return self.chars[token_id].encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        # Every token is whole characters, so joining strings needs no UTF-8 round trip: it is
        # faster, and exact even for strings UTF-8 cannot carry (lone surrogates).
        return "".join(self._id_to_special.get(i) or self.chars[i] for i in ids)

    def _with_specials(self, special_tokens: dict[str, int]) -> CharTokenizer:
        return type(self)(self.chars, special_tokens)

    def save(self, directory: str | Path) -> None:
        """Write chars.json: the characters in id order and the special tokens."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"chars": self.chars, "special_tokens": self.special_tokens}
        (out / CHARS_FILE).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        """Read a tokenizer written by `save`."""
        payload = json.loads((Path(directory) / CHARS_FILE).read_text(encoding="utf-8"))
        return cls(payload["chars"], payload["special_tokens"])
