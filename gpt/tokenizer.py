"""Tokenizers: a byte-level BPE in the GPT-2 format, and a character-level one.

Both share one interface (`encode`, `decode`, `token_bytes`, `vocab_size`, `save`), so the
model, trainer and sampler never care which one they got.

BPE files are GPT-2's: `vocab.json` maps a token's printable form (every byte shown through
GPT-2's byte-to-unicode table) to its id, `merges.txt` lists the merges in rank order. Hugging
Face `tokenizers` loads them and encodes exactly as we do; the tests hold us to that.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Protocol

import regex

# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, punctuation runs, whitespace.
# A merge never crosses a chunk boundary, so " the" and "the," stay separate words.
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
_SPLIT_RE = regex.compile(GPT2_SPLIT_PATTERN)

ENDOFTEXT = "<|endoftext|>"
VOCAB_FILE, MERGES_FILE, SPECIALS_FILE = "vocab.json", "merges.txt", "special_tokens.json"
CHARS_FILE = "chars.json"
MIN_BPE_VOCAB, MAX_VOCAB = 256, 65535


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable unicode character.

    Printable Latin-1 bytes map to themselves; the rest (control bytes, space, ...) are shifted
    to code points from 256 up, so every token has a visible, whitespace-free spelling.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def _printable(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def _unprintable(text: str) -> bytes:
    inverse = {c: b for b, c in bytes_to_unicode().items()}
    return bytes(inverse[c] for c in text)


def split_pretokens(text: str) -> list[str]:
    """Split text into the chunks that BPE merges within."""
    return _SPLIT_RE.findall(text)


class Tokenizer(Protocol):
    """What the model library needs from a tokenizer."""

    special_tokens: dict[str, int]

    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str, allow_special: bool = False) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def token_bytes(self, token_id: int) -> bytes: ...
    def save(self, directory: str | Path) -> None: ...


def _check_specials(special_tokens: Iterable[str]) -> list[str]:
    specials = list(dict.fromkeys(special_tokens))
    if any(not s for s in specials):
        raise ValueError("special tokens must be non-empty strings")
    return specials


def _append_specials(current: dict[str, int], tokens: Iterable[str],
                     next_id: int) -> dict[str, int]:
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


# ---------------------------------------------------------------------------------------------
# Byte-level BPE
# ---------------------------------------------------------------------------------------------

Pair = tuple[int, int]


class BPETokenizer:
    """Byte-level BPE: 256 byte tokens, learned merges, then special tokens."""

    def __init__(self, vocab: dict[int, bytes], merges: list[Pair],
                 special_tokens: dict[str, int] | None = None) -> None:
        self._bytes = vocab
        self.merges = merges
        # A merge's rank is its position in the list: lower ranks are applied first.
        self._ranks: dict[Pair, int] = {pair: rank for rank, pair in enumerate(merges)}
        self._merged_id: dict[Pair, int] = {}
        by_bytes = {b: i for i, b in vocab.items()}
        for a, b in merges:
            self._merged_id[(a, b)] = by_bytes[vocab[a] + vocab[b]]
        self._byte_ids = [by_bytes[bytes([b])] for b in range(256)]
        self.special_tokens = dict(special_tokens or {})
        self._id_to_special = {i: s.encode() for s, i in self.special_tokens.items()}
        self._cache: dict[str, list[int]] = {}

    # -- training ---------------------------------------------------------------------------

    @classmethod
    def train(cls, text: str, vocab_size: int,
              special_tokens: Iterable[str] = (ENDOFTEXT,)) -> BPETokenizer:
        """Learn merges from text until the vocabulary (bytes + merges + specials) is full.

        Unique chunks are counted once; pair counts are then kept up to date only where a
        merge touches, and a lazy max-heap finds the most frequent pair.
        """
        specials = _check_specials(special_tokens)
        if not MIN_BPE_VOCAB + len(specials) <= vocab_size <= MAX_VOCAB:
            raise ValueError(f"vocab_size must be between {MIN_BPE_VOCAB + len(specials)} "
                             f"and {MAX_VOCAB} for a byte-level BPE, got {vocab_size}")
        chunk_counts = Counter(split_pretokens(text))
        words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
        counts = list(chunk_counts.values())
        merges = _learn_merges(words, counts, vocab_size - MIN_BPE_VOCAB - len(specials))
        vocab = {i: bytes([i]) for i in range(256)}
        for new_id, (a, b) in enumerate(merges, start=256):
            vocab[new_id] = vocab[a] + vocab[b]
        first_special = len(vocab)
        return cls(vocab, merges, {s: first_special + k for k, s in enumerate(specials)})

    # -- encoding ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._bytes) + len(self.special_tokens)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids for text; special tokens are recognised only with allow_special=True."""
        pieces = _split_on_specials(text, self.special_tokens) if allow_special else [(text, None)]
        ids: list[int] = []
        cache = self._cache
        for piece, special_id in pieces:
            if special_id is not None:
                ids.append(special_id)
                continue
            for chunk in split_pretokens(piece):
                encoded = cache.get(chunk)
                if encoded is None:
                    encoded = cache[chunk] = self._encode_chunk(chunk)
                ids.extend(encoded)
        return ids

    def _encode_chunk(self, chunk: str) -> list[int]:
        """Apply merges to one chunk, lowest rank first, as GPT-2 does."""
        ids = [self._byte_ids[b] for b in chunk.encode("utf-8")]
        ranks = self._ranks
        while len(ids) > 1:
            best = min(pairwise(ids), key=lambda p: ranks.get(p, len(ranks)))
            if best not in ranks:
                break
            ids = _replace_pair(ids, best, self._merged_id[best])
        return ids

    # -- decoding ---------------------------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self._id_to_special:
            return self._id_to_special[token_id]
        return self._bytes[token_id]

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def with_special_tokens(self, tokens: Iterable[str]) -> BPETokenizer:
        """A copy that also knows tokens (appended after the current vocabulary)."""
        return BPETokenizer(self._bytes, self.merges,
                            _append_specials(self.special_tokens, tokens, self.vocab_size))

    # -- files ------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write vocab.json, merges.txt (GPT-2 format) and special_tokens.json."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        vocab = {_printable(b): i for i, b in self._bytes.items()}
        vocab.update(self.special_tokens)
        (out / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        lines = ["#version: 0.2"] + [
            f"{_printable(self._bytes[a])} {_printable(self._bytes[b])}" for a, b in self.merges]
        (out / MERGES_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        (out / SPECIALS_FILE).write_text(json.dumps(self.special_tokens, ensure_ascii=False),
                                         encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> BPETokenizer:
        """Read a tokenizer written by `save` (or any GPT-2 style vocab.json + merges.txt)."""
        src = Path(directory)
        vocab_json: dict[str, int] = json.loads((src / VOCAB_FILE).read_text(encoding="utf-8"))
        specials_path = src / SPECIALS_FILE
        specials = (json.loads(specials_path.read_text(encoding="utf-8"))
                    if specials_path.exists() else {})
        vocab = {i: _unprintable(s) for s, i in vocab_json.items() if s not in specials}
        by_printable = {s: i for s, i in vocab_json.items() if s not in specials}
        merges = []
        for line in (src / MERGES_FILE).read_text(encoding="utf-8").splitlines():
            if line.startswith("#version") or not line.strip():
                continue
            a, b = line.split(" ")
            merges.append((by_printable[a], by_printable[b]))
        return cls(vocab, merges, specials)


def _replace_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of pair, left to right."""
    out: list[int] = []
    i, n = 0, len(ids)
    first, second = pair
    while i < n:
        if i + 1 < n and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _count_pairs(words: list[list[int]], counts: list[int]
                 ) -> tuple[dict[Pair, int], dict[Pair, set[int]]]:
    """Pair frequencies over unique words, and which words each pair occurs in."""
    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for index, (word, count) in enumerate(zip(words, counts, strict=True)):
        for pair in pairwise(word):
            pair_counts[pair] += count
            where[pair].add(index)
    return pair_counts, where


def _learn_merges(words: list[list[int]], counts: list[int], n_merges: int) -> list[Pair]:
    """The BPE training loop over unique words, with incrementally updated pair counts.

    Ties between equally frequent pairs go to the smallest (first id, second id), so the
    result is deterministic.
    """
    pair_counts, where = _count_pairs(words, counts)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[Pair] = []
    while len(merges) < n_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count <= 0:
            continue
        if count != -neg_count:  # stale entry: the pair's count fell since it was pushed
            heapq.heappush(heap, (-count, pair))
            continue
        new_id = MIN_BPE_VOCAB + len(merges)
        merges.append(pair)
        touched: set[Pair] = set()
        for index in where.pop(pair, ()):
            word, count_w = words[index], counts[index]
            merged = _replace_pair(word, pair, new_id)
            if len(merged) == len(word):
                continue
            for old in pairwise(word):
                pair_counts[old] -= count_w
                touched.add(old)
            for new in pairwise(merged):
                pair_counts[new] += count_w
                where[new].add(index)
                touched.add(new)
            words[index] = merged
        del pair_counts[pair]
        for p in touched:
            if p != pair and pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
    return merges


# ---------------------------------------------------------------------------------------------
# Character level
# ---------------------------------------------------------------------------------------------


class CharTokenizer:
    """One token per character seen in training: the simplest tokenizer there is."""

    def __init__(self, chars: list[str], special_tokens: dict[str, int] | None = None) -> None:
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}
        self.special_tokens = dict(special_tokens or {})
        self._id_to_special = {i: s for s, i in self.special_tokens.items()}

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
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.special_tokens)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        pieces = _split_on_specials(text, self.special_tokens) if allow_special else [(text, None)]
        ids: list[int] = []
        for piece, special_id in pieces:
            if special_id is not None:
                ids.append(special_id)
                continue
            try:
                ids.extend(self._ids[c] for c in piece)
            except KeyError as err:
                raise ValueError(f"character {err.args[0]!r} is not in the vocabulary") from None
        return ids

    def with_special_tokens(self, tokens: Iterable[str]) -> CharTokenizer:
        """A copy that also knows tokens (appended after the current vocabulary)."""
        return CharTokenizer(self.chars,
                             _append_specials(self.special_tokens, tokens, self.vocab_size))

    def token_bytes(self, token_id: int) -> bytes:
        text = self._id_to_special.get(token_id)
        return (text if text is not None else self.chars[token_id]).encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self._id_to_special.get(i) or self.chars[i] for i in ids)

    def save(self, directory: str | Path) -> None:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"chars": self.chars, "special_tokens": self.special_tokens}
        (out / CHARS_FILE).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        payload = json.loads((Path(directory) / CHARS_FILE).read_text(encoding="utf-8"))
        return cls(payload["chars"], payload["special_tokens"])


# ---------------------------------------------------------------------------------------------
# Picking one
# ---------------------------------------------------------------------------------------------

TOKENIZER_KINDS = {"bpe": BPETokenizer, "char": CharTokenizer}


def train_tokenizer(kind: str, text: str, vocab_size: int,
                    special_tokens: Iterable[str] = (ENDOFTEXT,)) -> Tokenizer:
    """Train the tokenizer named by kind ('bpe' or 'char')."""
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; "
                         f"choose one of {sorted(TOKENIZER_KINDS)}")
    return TOKENIZER_KINDS[kind].train(text, vocab_size, special_tokens)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load whichever tokenizer a folder holds."""
    src = Path(directory)
    if (src / VOCAB_FILE).exists() and (src / MERGES_FILE).exists():
        return BPETokenizer.load(src)
    if (src / CHARS_FILE).exists():
        return CharTokenizer.load(src)
    raise FileNotFoundError(f"{src} holds no tokenizer (expected {VOCAB_FILE} + {MERGES_FILE} "
                            f"or {CHARS_FILE})")


def is_tokenizer_dir(directory: str | Path) -> bool:
    src = Path(directory)
    return ((src / VOCAB_FILE).exists() and (src / MERGES_FILE).exists()) or (
        src / CHARS_FILE).exists()
