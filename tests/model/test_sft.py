"""Fine-tuning: control tokens, masked labels, bucketed batches, vocab growth, datasets."""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt.config import GPT2_BLOCK
from gpt.loss import IGNORE_INDEX
from gpt.model import GPT, GPTConfig
from gpt.sft import (
    COMPLETION,
    CONTROL_TOKENS,
    PAD,
    PROMPT,
    BucketedBatches,
    Example,
    Fallback,
    answer_budget,
    complete,
    degenerate,
    format_record,
    is_code,
    pad_batch,
    prompt_ids,
    same_code,
)
from gpt.sft_data import python_tasks, split_of, verifiable_tasks
from gpt.tokenizer import BPETokenizer, CharTokenizer


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    text = "Write a function to add two numbers.\ndef add(a, b):\n    return a + b\n" * 20
    return BPETokenizer.train(text + PROMPT + COMPLETION, 320, special_tokens=CONTROL_TOKENS)


def test_labels_cover_the_completion_and_end_only(tokenizer):
    inputs, labels = format_record(tokenizer, "add 2 and 3", "5")
    head = prompt_ids(tokenizer, "add 2 and 3")
    assert inputs[:len(head)] == head and inputs[0] == tokenizer.special_tokens[PROMPT]
    answer = [*tokenizer.encode("5"), tokenizer.special_tokens["<|endoftext|>"]]
    assert labels == [IGNORE_INDEX] * (len(head) - 1) + answer
    assert len(inputs) == len(labels)


def test_loss_gradient_is_exactly_zero_at_prompt_and_padding_positions(tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2,
                          n_embd=32))
    pairs = [format_record(tokenizer, "Write a function to add two numbers.",
                           "def add(a, b):\n    return a + b\n"),
             format_record(tokenizer, "add", "a + b")]
    examples = [Example(np.array(x), np.array(y)) for x, y in pairs]
    x, y = pad_batch(examples, tokenizer.special_tokens[PAD])
    logits, _ = model(x)
    logits.retain_grad()
    F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1),
                    ignore_index=IGNORE_INDEX).backward()
    grad = logits.grad.abs().sum(dim=-1)
    masked = y == IGNORE_INDEX
    assert masked.any() and (~masked).any()
    assert torch.all(grad[masked] == 0)          # prompt and padding: exactly zero
    assert torch.all(grad[~masked] > 0)          # every answer position: a gradient
    padding = x == tokenizer.special_tokens[PAD]
    assert padding.any() and torch.all(masked[padding])


def test_control_tokens_are_never_merged_nor_matched_in_plain_text(tokenizer):
    ids = set(tokenizer.special_tokens[t] for t in CONTROL_TOKENS)
    assert not any(a in ids or b in ids for a, b in tokenizer.merges)
    assert not ids & set(tokenizer.encode(f"{PROMPT} hi {COMPLETION}"))


def test_bucketed_batches_group_lengths_cover_everything_and_resume():
    rng = np.random.default_rng(0)
    examples = [Example(np.ones(n, dtype=np.int64), np.ones(n, dtype=np.int64))
                for n in rng.integers(2, 60, size=256)]
    batches = BucketedBatches(examples, batch_size=8, pad_id=0, seed=1, bucket_batches=8)
    epoch = [batches.next() for _ in range(32)]
    seen = sorted(int((y != IGNORE_INDEX).sum(dim=1)[i]) for _, y in epoch for i in range(len(y)))
    assert seen == sorted(len(e.inputs) for e in examples)  # each example exactly once
    padded = sum(int((y == IGNORE_INDEX).sum()) for _, y in epoch)
    padding = padded / sum(y.numel() for _, y in epoch)
    assert padding < 0.15  # random batching of these lengths pads about 45%
    state = batches.get_state()
    expected = [batches.next()[0] for _ in range(5)]
    resumed = BucketedBatches(examples, batch_size=8, pad_id=0, seed=99, bucket_batches=8)
    resumed.set_state(state)
    assert all(torch.equal(resumed.next()[0], e) for e in expected)


def test_adding_control_tokens_to_a_base_model_keeps_its_old_predictions():
    base_tok = CharTokenizer.train("abcdef ", special_tokens=("<|endoftext|>",))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=base_tok.vocab_size, block_size=16, n_layer=1, n_head=2,
                          n_embd=16)).eval()
    idx = torch.tensor([base_tok.encode("abc fed")])
    before = model(idx)[0]
    grown = base_tok.with_special_tokens(CONTROL_TOKENS)
    assert grown.vocab_size == base_tok.vocab_size + 3  # <|endoftext|> was already there
    model.resize_vocab(grown.vocab_size)
    after = model(idx)[0]
    torch.testing.assert_close(after[..., :base_tok.vocab_size], before)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_complete_stops_at_endoftext(tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2,
                          n_embd=32, **GPT2_BLOCK)).eval()
    eot = tokenizer.special_tokens["<|endoftext|>"]
    with torch.no_grad():  # final features all ones, and only <|endoftext|> aligned with them
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[eot] = 5.0
    assert complete(model, tokenizer, "add", max_new_tokens=20) == ""


def test_verifiable_answers_are_right_and_splits_are_stable():
    records = verifiable_tasks(800, seed=3)
    assert len({r["prompt"] for r in records}) == 800
    for r in records:
        p, a = r["prompt"], r["completion"]
        if m := re.fullmatch(r"(\d+)([+-])(\d+)=", p):
            x, op, y = int(m[1]), m[2], int(m[3])
            assert int(a) == (x + y if op == "+" else x - y)
        elif p.startswith("sort "):
            assert ast.literal_eval(a) == sorted(ast.literal_eval(p[5:]))
        elif p.startswith("reverse ["):
            assert ast.literal_eval(a) == ast.literal_eval(p[8:])[::-1]
        elif p.startswith("max "):
            assert int(a) == max(ast.literal_eval(p[4:]))
        elif p.startswith("reverse '"):
            assert a == p[9:-1][::-1]
        elif p.startswith("upper '"):
            assert a == p[7:-1].upper()
        elif p.startswith("len '"):
            assert int(a) == len(p[5:-1])
        else:
            pytest.fail(f"unknown task {p!r}")
    assert verifiable_tasks(800, seed=3) == records
    splits = [split_of(r["prompt"]) for r in records]
    assert {"train", "val", "test"} == set(splits)
    assert 0.7 < splits.count("train") / len(splits) < 0.9


def test_python_set_is_a_few_hundred_records_that_all_parse():
    records = python_tasks()
    assert 200 <= len(records) <= 400
    assert all(is_code(r["code"]) for r in records)
    assert not is_code("def broken(:\n")


def test_the_code_check_wants_python_that_says_something_and_the_reference_text():
    assert not is_code("detetetete") and not is_code("") and not is_code("   \n")
    assert is_code("lst[::-1]") and is_code("x = 1")
    assert same_code("def f(a):\n    return a[::-1]", "def f(a):\n  return  a[::-1]\n")
    assert not same_code("detetetete", "detetetete")  # equal, but not code
    assert not same_code("a[::-1]", "lst[::-1]")


def test_a_short_or_looping_answer_falls_back_to_the_closest_training_prompts():
    assert degenerate("detetetete") and degenerate("") and degenerate(" x ")
    assert not degenerate("lst[::-1]") and not degenerate("print(sorted(words))")
    fallback = Fallback(["reverse a list", "sum a list of numbers", "sort words"],
                        ["lst[::-1]", "sum(nums)", "sorted(words)"])
    assert fallback.closest("reverse the list") == "lst[::-1]"
    assert fallback.closest("Sort the words") == "sorted(words)"
    assert fallback.answer("sort words", "detetetete") == ("sorted(words)", True)
    assert fallback.answer("sort words", "words.sort()") == ("words.sort()", False)


def test_a_saved_fallback_loads_with_the_same_examples(tmp_path):
    fallback = Fallback(["reverse a list", "Ünïcode"], ["lst[::-1]", "'é'"])
    fallback.save(tmp_path / "fallback.json")
    loaded = Fallback.load(tmp_path / "fallback.json")
    assert (loaded.prompts, loaded.answers) == (fallback.prompts, fallback.answers)
    with pytest.raises(ValueError, match="as many prompts as answers"):
        Fallback(["a", "b"], ["x"])


def test_scoring_generates_one_token_past_the_longest_answer():
    tokenizer = CharTokenizer.train("abcdef(): ")
    assert answer_budget(tokenizer, ["ab", "abc(d)", "é"]) == 7  # "é": 2 bytes, unknown
