"""Sampling options, reproducibility, stop conditions and UTF-8-safe streaming."""

from __future__ import annotations

import pytest
import torch

from gpt.generate import (
    SamplingParams,
    apply_repetition_penalty,
    decode_stream,
    filter_top_p,
    generate_ids,
    generate_text,
    stream_text,
)
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import BPETokenizer


@pytest.fixture(scope="module")
def byte_tokenizer() -> BPETokenizer:
    """No merges: every byte is its own token, so multi-byte characters span tokens."""
    return BPETokenizer.train("x", 257)


@pytest.fixture
def byte_model(byte_tokenizer) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=byte_tokenizer.vocab_size, block_size=64, n_layer=1,
                         n_head=2, n_embd=32))


def test_same_seed_same_sample_and_different_seed_differs(byte_model, byte_tokenizer):
    def sample(seed):
        return generate_text(byte_model, byte_tokenizer, "Hi", SamplingParams(
            max_new_tokens=40, temperature=1.0, top_k=50, top_p=0.9, seed=seed))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_top_k_of_one_is_greedy(byte_model):
    idx = torch.tensor([[72, 105]])
    greedy = generate_ids(byte_model, idx, 15, temperature=0)
    top1 = generate_ids(byte_model, idx, 15, temperature=1.5, top_k=1, seed=3)
    assert torch.equal(greedy, top1)


@pytest.mark.parametrize("window", [5, 64, None])  # a few tokens; the block; the default
def test_each_token_is_predicted_from_the_last_context_tokens_only(byte_model, window):
    """Against nanoGPT's loop without a cache: crop to the window, run it all, take the
    argmax. Past the window (and past the block, 64) the cached sampler must agree."""
    idx = torch.tensor([[72, 105, 33, 10, 72, 105, 33]])
    crop = window or byte_model.config.block_size
    expected = idx
    byte_model.eval()
    with torch.no_grad():
        for _ in range(80):
            logits, _ = byte_model(expected[:, -crop:])
            expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    got = generate_ids(byte_model, idx, 80, temperature=0, context_tokens=window)
    assert torch.equal(got, expected)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_top_p(logits, 0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    assert filter_top_p(logits, 0.1).isfinite().tolist() == [[True, False, False, False]]


def test_repetition_penalty_pushes_seen_tokens_down():
    logits = torch.tensor([[2.0, -1.0, 3.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0]]


def test_generation_stops_at_a_stop_token(byte_model):
    idx = torch.tensor([[72, 105]])
    first = generate_ids(byte_model, idx, 1, temperature=0)[0, -1].item()
    out = generate_ids(byte_model, idx, 30, temperature=0, stop_ids=(first,))
    assert out.shape[1] == 3


def test_streamed_pieces_never_split_a_character(byte_tokenizer):
    text = "héllo 世界 😀 ok"
    ids = byte_tokenizer.encode(text)
    assert len(ids) == len(text.encode())  # multi-byte characters span several tokens
    pieces = list(decode_stream(ids, byte_tokenizer))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "世" in pieces and "😀" in pieces


def test_stop_strings_end_the_stream_and_are_not_shown(byte_tokenizer):
    ids = byte_tokenizer.encode("first line\nEND of it")
    assert "".join(decode_stream(ids, byte_tokenizer, stop=["\nEND"])) == "first line"
    # A partial match that turns out not to be the stop string is released.
    ids = byte_tokenizer.encode("a\nENx")
    assert "".join(decode_stream(ids, byte_tokenizer, stop=["\nEND"])) == "a\nENx"


def test_stream_text_joins_to_the_full_generation(byte_model, byte_tokenizer):
    params = SamplingParams(max_new_tokens=30, temperature=0.8, seed=5)
    pieces = list(stream_text(byte_model, byte_tokenizer, "Hello", params))
    assert len(pieces) > 1
    assert "".join(pieces) == generate_text(byte_model, byte_tokenizer, "Hello", params)


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", -0.1), ("top_k", 0), ("top_p", 1.5), ("repetition_penalty", 0.0),
    ("max_new_tokens", -1), ("context_tokens", 0),
])
def test_nonsense_sampling_parameters_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})
