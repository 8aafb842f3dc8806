"""Byte-level BPE in the GPT-2 format.

Files are GPT-2's: `vocab.json` maps a token's printable form (every byte shown through
GPT-2's byte-to-unicode table) to its id, `merges.txt` lists the merges in rank order. Hugging
Face `tokenizers` loads them and encodes exactly as we do; the tests hold us to that.
"""

from __future__ import annotations

import gc
import heapq
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import regex

from gpt.progress import Progress
from gpt.tokenizer.base import (
    ENDOFTEXT,
    MAX_VOCAB,
    MERGES_FILE,
    MIN_BPE_VOCAB,
    SPECIALS_FILE,
    VOCAB_FILE,
    Tokenizer,
    _check_specials,
)

log = logging.getLogger("tinygpt.tokenizer")

# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, punctuation runs, whitespace.
# A merge never crosses a chunk boundary, so " the" and "the," stay separate words.
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
_SPLIT_RE = regex.compile(GPT2_SPLIT_PATTERN)
# The same split for ASCII text, where a letter is [A-Za-z], a digit [0-9], and the `regex`
# module's \s matches what the standard `re` matches under re.ASCII: `re` splits it faster.
_ASCII_SPLIT_RE = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""", re.ASCII
)

Pair = tuple[int, int]


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
    return (_ASCII_SPLIT_RE if text.isascii() else _SPLIT_RE).findall(text)


def safe_slices(text: str, slice_chars: int = 1 << 20) -> Iterator[str]:
    """Consecutive slices of text of about slice_chars, each ending just before a line break
    that follows a non-space character: no chunk spans that point, and the whitespace run
    starting there splits the same with or without what came before, so splitting (and
    encoding) slice by slice gives what the whole text gives."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + slice_chars)
        while end > 0 and text[end - 1].isspace():
            end = text.find("\n", end + 1)
        end = len(text) if end < 0 else end
        yield text[start:end]
        start = end


def count_pretokens(text: str, slice_chars: int = 1 << 20) -> Counter[str]:
    """How often each chunk occurs, counted a slice of text at a time: memory holds the unique
    chunks and one slice's list, never every chunk of a large corpus; the counts equal those
    of the whole text."""
    counts: Counter[str] = Counter()
    for piece in safe_slices(text, slice_chars):
        counts.update(split_pretokens(piece))
    return counts


class BPETokenizer(Tokenizer):
    """Byte-level BPE: 256 byte tokens, learned merges, then special tokens."""

    FILES = (VOCAB_FILE, MERGES_FILE)

    def __init__(self, vocab: dict[int, bytes], merges: list[Pair],
                 special_tokens: dict[str, int] | None = None) -> None:
        super().__init__(special_tokens)
        self._bytes = vocab
        self.merges = merges
        # A merge's rank is its position in the list: lower ranks are applied first.
        self._ranks: dict[Pair, int] = {pair: rank for rank, pair in enumerate(merges)}
        self._merged_id: dict[Pair, int] = {}
        by_bytes = {b: i for i, b in vocab.items()}
        for a, b in merges:
            self._merged_id[(a, b)] = by_bytes[vocab[a] + vocab[b]]
        self._byte_ids = [by_bytes[bytes([b])] for b in range(256)]
        # Natural text repeats its chunks (" the", ",\n") endlessly: encode each once.
        self._cache: dict[str, list[int]] = {}

    # -- training ---------------------------------------------------------------------------

    @classmethod
    def train(cls, text: str, vocab_size: int,
              special_tokens: Iterable[str] = (ENDOFTEXT,)) -> BPETokenizer:
        """Learn merges from text until the vocabulary (bytes + merges + specials) is full."""
        return cls.from_counts(count_pretokens(text), vocab_size, special_tokens)

    @classmethod
    def from_counts(cls, chunk_counts: Counter[str], vocab_size: int,
                    special_tokens: Iterable[str] = (ENDOFTEXT,)) -> BPETokenizer:
        """Learn merges from how often each chunk occurs (counted a piece of the corpus at a
        time, anywhere: the counts of the pieces add up).

        Unique chunks are counted once; pair counts are then kept up to date only where a
        merge touches, and a lazy max-heap finds the most frequent pair.
        """
        specials = _check_specials(special_tokens)
        if not MIN_BPE_VOCAB + len(specials) <= vocab_size <= MAX_VOCAB:
            raise ValueError(f"vocab_size must be between {MIN_BPE_VOCAB + len(specials)} "
                             f"and {MAX_VOCAB} for a byte-level BPE, got {vocab_size}")
        with _cyclic_gc_paused():
            words = [chunk.encode("utf-8").decode("latin-1") for chunk in chunk_counts]
            counts = list(chunk_counts.values())
            merges = _learn_merges(words, counts, vocab_size - MIN_BPE_VOCAB - len(specials))
        vocab = {i: bytes([i]) for i in range(256)}
        for new_id, (a, b) in enumerate(merges, start=256):
            vocab[new_id] = vocab[a] + vocab[b]
        first_special = len(vocab)
        return cls(vocab, merges, {s: first_special + k for k, s in enumerate(specials)})

    # -- plain tokens -----------------------------------------------------------------------

    @property
    def _plain_vocab_size(self) -> int:
        return len(self._bytes)

    def _encode_plain(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for chunk in split_pretokens(text):
            encoded = cache.get(chunk)
            if encoded is None:
                encoded = cache[chunk] = self._encode_chunk(chunk)
            ids.extend(encoded)
        return ids

    def _encode_chunk(self, chunk: str) -> list[int]:
        """Apply merges to one chunk, lowest rank first, as GPT-2 does.

        One occurrence at a time, the leftmost first, with each pair's rank kept beside it
        and only the two pairs around a merge looked up again. That equals GPT-2's merging
        of every occurrence at once: a pair with the new token always ranks after the merge
        that made it, so the next occurrence of the same pair still comes first."""
        ids = [self._byte_ids[b] for b in chunk.encode("utf-8")]
        ranks, none = self._ranks, len(self._ranks)
        pair_ranks = [ranks.get(pair, none) for pair in pairwise(ids)]
        while pair_ranks:
            best = min(pair_ranks)
            if best == none:
                break
            i = pair_ranks.index(best)
            ids[i:i + 2] = [self._merged_id[ids[i], ids[i + 1]]]
            del pair_ranks[i]
            if i > 0:
                pair_ranks[i - 1] = ranks.get((ids[i - 1], ids[i]), none)
            if i < len(pair_ranks):
                pair_ranks[i] = ranks.get((ids[i], ids[i + 1]), none)
        return ids

    def _plain_token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def _with_specials(self, special_tokens: dict[str, int]) -> BPETokenizer:
        return type(self)(self._bytes, self.merges, special_tokens)

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


# -- training helpers -----------------------------------------------------------------------


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Training allocates millions of small lists and tuples and makes no reference cycles;
    each allocation burst would trigger the cyclic collector, which walks every object of the
    process (many, once torch is imported)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _count_pairs(words: list[str], counts: list[int]
                 ) -> tuple[dict[str, int], dict[str, set[int]]]:
    """Pair frequencies over unique words, and which words each pair occurs in."""
    pair_counts: dict[str, int] = defaultdict(int)
    where: dict[str, set[int]] = defaultdict(set)
    for index, (word, count) in enumerate(zip(words, counts, strict=True)):
        for first, second in pairwise(word):
            pair = first + second
            pair_counts[pair] += count
            where[pair].add(index)
    return pair_counts, where


def _learn_merges(words: list[str], counts: list[int], n_merges: int) -> list[Pair]:
    """The BPE training loop over unique words, with incrementally updated pair counts.

    A word is a string of one character per token (byte b is chr(b), merge k makes
    chr(256 + k)) and a pair a string of two, so finding and merging a pair in a word is
    C's work (`in`, `str.replace`). Ties between equally frequent pairs go to the smallest
    (first id, second id), the smaller string, so the result is deterministic.
    """
    pair_counts, where = _count_pairs(words, counts)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[str] = []
    with Progress(log, "BPE training", n_merges, "merges") as progress:
        while len(merges) < n_merges and heap:
            neg_count, pair = heapq.heappop(heap)
            count = pair_counts.get(pair, 0)
            if count <= 0:
                continue
            if count != -neg_count:  # stale entry: the pair's count fell since it was pushed
                heapq.heappush(heap, (-count, pair))
                continue
            new = chr(MIN_BPE_VOCAB + len(merges))
            merges.append(pair)
            progress.update(len(merges))
            born = _merge_everywhere(words, counts, pair, new, pair_counts, where)
            del pair_counts[pair]
            # Only the pairs with the new token gained counts; the others only lost some, and
            # their heap entries, now too high, are corrected when they come out on top.
            for p in born:
                heapq.heappush(heap, (-pair_counts[p], p))
    return [(ord(first), ord(second)) for first, second in merges]


def _merge_everywhere(words: list[str], counts: list[int], pair: str, new: str,
                      pair_counts: dict[str, int], where: dict[str, set[int]]) -> set[str]:
    """Merge every non-overlapping occurrence of pair, left to right, in each word that
    `where` says holds it (it keeps stale entries), and move each word's count from the pairs
    around each merge to the pairs with new that replace them (the merged pair's own count
    is the caller's to drop). Returns those new pairs, also noted in `where`. One loop over
    the words, not a call per word: Python's calls cost more than most words' merging."""
    first, second = pair
    born: set[str] = set()
    for index in where.pop(pair, ()):
        word = words[index]
        if pair not in word:
            continue
        merged = words[index] = word.replace(pair, new)
        count = counts[index]
        last = len(merged) - 1
        at = merged.find(new)  # new is a new token: it stands only where this merge put it
        while at >= 0:
            if at > 0:  # (left, first) becomes (left, new): left may be the merge just made
                left = merged[at - 1]
                pair_counts[(second if left == new else left) + first] -= count
                gained = left + new
                pair_counts[gained] += count
                where[gained].add(index)
                born.add(gained)
            if at < last and merged[at + 1] != new:  # (second, right) becomes (new, right)
                right = merged[at + 1]
                pair_counts[second + right] -= count
                gained = new + right
                pair_counts[gained] += count
                where[gained].add(index)
                born.add(gained)
            at = merged.find(new, at + 1)
    return born
