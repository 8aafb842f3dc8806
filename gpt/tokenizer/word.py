"""Word-level tokenizers: one token per word, punctuation mark or whitespace run seen in
training, and `<|unk|>` for every piece the vocabulary lacks.

`WordTokenizer` keeps the pieces frequent enough in the training text (HF `WordLevel`'s
idea, but whitespace is kept as tokens, so decode(encode(s)) == s up to unknown pieces).
`RegexTokenizer` splits with the rule of a from-scratch GPT write-up (004): the punctuation
marks , . : ; ? _ ! " ( ) ' and "--", and every whitespace character on its own.

With `drop_whitespace` (the 004 book's tokenizer, `item.strip()`), whitespace is no token:
decode puts one space between tokens, none before , . ? ! " ( ) ', as the book's decoder does.

Both are closed vocabularies: text the model never saw decodes as `<|unk|>`, which is why
real GPTs moved to byte-level BPE. They exist to be compared with it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import regex

from gpt.tokenizer.base import ENDOFTEXT, UNKNOWN, Tokenizer, _check_specials

# With drop_whitespace, decode puts a space before every token but these (the book's rule).
CLOSE_UP = frozenset(',.?!"()\'')


class WordTokenizer(Tokenizer):
    """Words (`\\w+`), single punctuation marks and whitespace runs, by training frequency."""

    FILES: ClassVar[tuple[str, ...]] = ("words.json",)
    # Alternatives that cover every character, so the pieces always add up to the text.
    PATTERN: ClassVar[str] = r"\w+|\s+|[^\w\s]"

    def __init__(self, pieces: list[str], special_tokens: dict[str, int],
                 drop_whitespace: bool = False) -> None:
        if UNKNOWN not in special_tokens:
            raise ValueError(f"a {type(self).__name__} needs the {UNKNOWN} special token")
        super().__init__(special_tokens)
        self.pieces = pieces
        self.drop_whitespace = drop_whitespace
        self._ids = {p: i for i, p in enumerate(pieces)}
        self._unknown = special_tokens[UNKNOWN]
        self._splitter = regex.compile(self.PATTERN)

    def split(self, text: str) -> list[str]:
        """The pieces text is cut into before lookup (they concatenate back to text, unless
        whitespace is dropped)."""
        pieces = self._splitter.findall(text)
        return [p for p in pieces if not p.isspace()] if self.drop_whitespace else pieces

    @classmethod
    def train(cls, text: str, vocab_size: int,
              special_tokens: Iterable[str] = (ENDOFTEXT,), min_frequency: int = 1,
              drop_whitespace: bool = False) -> WordTokenizer:
        """The most frequent pieces seen at least min_frequency times, at most vocab_size
        tokens with the specials (`<|unk|>` always among them); ties break alphabetically.
        drop_whitespace: whitespace is no piece at all."""
        specials = _check_specials([*special_tokens, UNKNOWN])
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        room = vocab_size - len(specials)
        if room < 1:
            raise ValueError(f"vocab_size={vocab_size} leaves no room for words beside "
                             f"{len(specials)} special tokens")
        counts = Counter(p for p in regex.findall(cls.PATTERN, text)
                         if not (drop_whitespace and p.isspace()))
        if not counts:
            raise ValueError("cannot train a tokenizer on empty text")
        ranked = sorted((c, p) for p, c in counts.items() if c >= min_frequency)
        ranked.sort(key=lambda cp: -cp[0])  # stable: equal counts stay alphabetical
        pieces = [p for _, p in ranked[:room]]
        return cls(pieces, {s: len(pieces) + k for k, s in enumerate(specials)},
                   drop_whitespace)

    @property
    def _plain_vocab_size(self) -> int:
        return len(self.pieces)

    def _encode_plain(self, text: str) -> list[int]:
        ids, unknown = self._ids, self._unknown
        return [ids.get(p, unknown) for p in self.split(text)]

    def _plain_token_bytes(self, token_id: int) -> bytes:
        return self._text_of(token_id).encode("utf-8")

    def _text_of(self, token_id: int) -> str:
        """A token as decoded text: its piece, after a space when whitespace was dropped."""
        piece = self._id_to_special.get(token_id) or self.pieces[token_id]
        return f" {piece}" if self.drop_whitespace and piece not in CLOSE_UP else piece

    def decode(self, ids: Iterable[int]) -> str:
        # Whole pieces: join strings, no UTF-8 round trip (as the char kind does).
        text = "".join(self._text_of(i) for i in ids)
        return text.removeprefix(" ") if self.drop_whitespace else text

    def _with_specials(self, special_tokens: dict[str, int]) -> WordTokenizer:
        return type(self)(self.pieces, special_tokens, self.drop_whitespace)

    def save(self, directory: str | Path) -> None:
        """Write the pieces in id order and the special tokens as JSON."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"pattern": self.PATTERN, "pieces": self.pieces,
                   "special_tokens": self.special_tokens,
                   "drop_whitespace": self.drop_whitespace}
        (out / self.FILES[0]).write_text(json.dumps(payload, ensure_ascii=False),
                                         encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> WordTokenizer:
        """Read a tokenizer written by `save`; a file written by another rule is refused."""
        path = Path(directory) / cls.FILES[0]
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload["pattern"] != cls.PATTERN:
            raise ValueError(f"{path} was written with the split rule {payload['pattern']!r},"
                             f" not {cls.__name__}'s")
        return cls(payload["pieces"], payload["special_tokens"],
                   payload.get("drop_whitespace", False))


class RegexTokenizer(WordTokenizer):
    """The 004 write-up's rule: words, its punctuation set and "--", each whitespace char."""

    FILES: ClassVar[tuple[str, ...]] = ("regex_words.json",)
    PATTERN: ClassVar[str] = r'--|[,.:;?_!"()\']|\s|(?:[^,.:;?_!"()\'\s-]|-(?!-))+'
