"""Character-level tokenizer: one token per character seen in training.

Two options from the 002 write-up: seed the vocabulary with printable ASCII (a user's prompt
may hold a brace the training set never did), and special tokens first (its <PAD>=0, <UNK>=1,
<PROMPT>=2, <CODE>=3, <EOS>=4). With a <|unk|> special token, an unseen character encodes as
it; without one, it is refused."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from gpt.tokenizer.base import (
    CHARS_FILE,
    ENDOFTEXT,
    UNKNOWN,
    Tokenizer,
    UnknownCharacterError,
    _check_specials,
)


class CharTokenizer(Tokenizer):
    """One token per character seen in training: the simplest tokenizer there is."""

    FILES = (CHARS_FILE,)
    PRINTABLE_ASCII = "".join(map(chr, range(32, 127)))

    def __init__(self, chars: list[str], special_tokens: dict[str, int] | None = None,
                 first_id: int = 0) -> None:
        super().__init__(special_tokens)
        self.chars = chars
        self.first_id = first_id  # the characters' ids start here (after specials put first)
        self._ids = {c: first_id + i for i, c in enumerate(chars)}
        self._unknown = self.special_tokens.get(UNKNOWN)

    @classmethod
    def train(cls, text: str, vocab_size: int | None = None,
              special_tokens: Iterable[str] = (ENDOFTEXT,), seed_ascii: bool = False,
              specials_first: bool = False) -> CharTokenizer:
        """Vocabulary = the sorted set of characters in text, and printable ASCII with
        seed_ascii (vocab_size is only a ceiling); special tokens after the characters, or
        before them with specials_first."""
        specials = _check_specials(special_tokens)
        chars = sorted(set(text) | set(cls.PRINTABLE_ASCII if seed_ascii else ""))
        if not chars:
            raise ValueError("cannot train a tokenizer on empty text")
        if vocab_size is not None and len(chars) + len(specials) > vocab_size:
            raise ValueError(f"text has {len(chars)} distinct characters, more than "
                             f"vocab_size={vocab_size} allows")
        first = 0 if specials_first else len(chars)
        return cls(chars, {s: first + k for k, s in enumerate(specials)},
                   first_id=len(specials) if specials_first else 0)

    @property
    def _plain_vocab_size(self) -> int:
        return len(self.chars)

    def _encode_plain(self, text: str) -> list[int]:
        if self._unknown is not None:
            return [self._ids.get(c, self._unknown) for c in text]
        try:
            return [self._ids[c] for c in text]
        except KeyError as err:
            raise UnknownCharacterError(err.args[0]) from None

    def _plain_token_bytes(self, token_id: int) -> bytes:
        return self.chars[token_id - self.first_id].encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        # Every token is whole characters, so joining strings needs no UTF-8 round trip: it is
        # faster, and exact even for strings UTF-8 cannot carry (lone surrogates).
        return "".join(self._id_to_special.get(i) or self.chars[i - self.first_id]
                       for i in ids)

    def _with_specials(self, special_tokens: dict[str, int]) -> CharTokenizer:
        return type(self)(self.chars, special_tokens, self.first_id)

    def save(self, directory: str | Path) -> None:
        """Write chars.json: the characters in id order and the special tokens."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"chars": self.chars, "special_tokens": self.special_tokens,
                   "first_id": self.first_id}
        (out / CHARS_FILE).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        """Read a tokenizer written by `save`."""
        payload = json.loads((Path(directory) / CHARS_FILE).read_text(encoding="utf-8"))
        return cls(payload["chars"], payload["special_tokens"], payload.get("first_id", 0))
