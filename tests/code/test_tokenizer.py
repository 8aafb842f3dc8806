"""Our BPE against Hugging Face `tokenizers`, and against a naive reference trainer."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from gpt.tokenizer import (
    ENDOFTEXT,
    BPETokenizer,
    CharTokenizer,
    load_tokenizer,
    split_pretokens,
    train_tokenizer,
)

HOSTILE = [
    "Hello 👋🏽 world 🧑‍🚀 family 👨‍👩‍👧‍👦",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "e\u0301 a\u0308 Z\u0335\u0321\u0322 combining marks",
    "مرحبا بالعالم שלום עולם \u200f\u202e reversed",
    "control \x01\x02\x07\x1b[31m\x7f chars \x0b\x0c",
    "windows\r\nline\r\nendings\r\n\r\n",
    "spaces" + " " * 40 + "then\t\t\ttabs   \n   \n",
    "digits 1234567890 3.14159 1,000,000 ٣٤٥",
    "apostrophes don't won't I'm you're we've they'll he'd 'quoted' ’curly’",
    "<|endoftext|> is plain text here",
    "",
    " ",
    "\n\n\n",
]


def hf_from_files(folder: Path) -> Tokenizer:
    hf = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


@pytest.fixture(scope="module")
def hostile_bpe(shakespeare: str) -> BPETokenizer:
    """Trained on Shakespeare plus hostile text, so merges exist inside multi-byte characters."""
    return BPETokenizer.train(shakespeare[:200_000] + "".join(HOSTILE) * 20, 2048)


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory, hostile_bpe):
    folder = tmp_path_factory.mktemp("bpe")
    hostile_bpe.save(folder)
    return hostile_bpe, hf_from_files(folder)


def test_hf_encodes_whole_shakespeare_exactly_as_we_do(shakespeare, bpe_1k, tmp_path):
    bpe_1k.save(tmp_path)
    ours = bpe_1k.encode(shakespeare)
    assert hf_from_files(tmp_path).encode(shakespeare).ids == ours
    assert bpe_1k.decode(ours) == shakespeare


@pytest.mark.parametrize("text", HOSTILE)
def test_hf_agrees_on_hostile_text(hf_pair, text):
    ours, hf = hf_pair
    ids = ours.encode(text)
    assert hf.encode(text).ids == ids
    assert ours.decode(ids) == text


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_hf_agrees_and_round_trips_on_arbitrary_text(hf_pair, text):
    ours, hf = hf_pair
    ids = ours.encode(text)
    assert ours.decode(ids) == text
    assert hf.encode(text).ids == ids


def naive_merges(text: str, n_merges: int) -> list[tuple[int, int]]:
    """minbpe-style reference: recount every pair before every merge (slow, obviously right)."""
    words = Counter(split_pretokens(text))
    seqs = {w: list(w.encode()) for w in words}
    merges = []
    for new_id in range(256, 256 + n_merges):
        counts: Counter = Counter()
        for w, seq in seqs.items():
            for pair in pairwise(seq):
                counts[pair] += words[w]
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for w, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
    return merges


def test_incremental_training_learns_the_same_merges_as_naive_recounting(shakespeare):
    text = shakespeare[:20_000]
    fast = BPETokenizer.train(text, 256 + 150 + 1)
    assert fast.merges == naive_merges(text, 150)


def test_special_tokens_are_matched_only_when_asked(bpe_1k):
    eot = bpe_1k.special_tokens[ENDOFTEXT]
    text = f"hello{ENDOFTEXT}world"
    plain = bpe_1k.encode(text)
    assert eot not in plain and bpe_1k.decode(plain) == text
    special = bpe_1k.encode(text, allow_special=True)
    assert special.count(eot) == 1 and bpe_1k.decode(special) == text


def test_special_tokens_are_never_produced_by_merges(shakespeare):
    tok = BPETokenizer.train(shakespeare[:50_000] + ENDOFTEXT * 500, 600)
    special_ids = set(tok.special_tokens.values())
    assert all(a not in special_ids and b not in special_ids for a, b in tok.merges)
    assert tok.vocab_size == 600 and max(special_ids) == 599


def test_save_and_load_round_trip(bpe_1k, shakespeare, tmp_path):
    bpe_1k.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer)
    assert loaded.vocab_size == bpe_1k.vocab_size
    assert loaded.special_tokens == bpe_1k.special_tokens
    sample = shakespeare[:5000]
    assert loaded.encode(sample) == bpe_1k.encode(sample)


@pytest.mark.parametrize("size", [100, 256, 65536, 100_000])
def test_bpe_vocab_size_out_of_range_is_refused(size):
    with pytest.raises(ValueError, match="vocab_size must be between"):
        BPETokenizer.train("some text", size)


def test_char_tokenizer_round_trips_and_refuses_unknown_characters(shakespeare, tmp_path):
    tok = train_tokenizer("char", shakespeare, 100)
    assert isinstance(tok, CharTokenizer) and tok.vocab_size == 65 + 1
    text = shakespeare[1000:2000]
    assert tok.decode(tok.encode(text)) == text
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("日本")
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode(text) == tok.encode(text)


def test_unknown_tokenizer_kind_and_empty_folder_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        train_tokenizer("wordpiece", "text", 300)
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
