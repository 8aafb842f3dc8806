"""Prompt-to-completion fine-tuning: control tokens, masked labels, bucketed batches.

A record becomes
    <|prompt|> prompt <|completion|> completion <|endoftext|>
and the loss counts only the completion and the closing <|endoftext|>: every target inside the
prompt, and every padding position, is -100, which cross-entropy ignores.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpt.generate import SamplingParams, decode_stream, iter_tokens
from gpt.loss import IGNORE_INDEX
from gpt.tokenizer import ENDOFTEXT, UNKNOWN, Tokenizer

PROMPT, COMPLETION, PAD = "<|prompt|>", "<|completion|>", "<|pad|>"
CONTROL_TOKENS = (PROMPT, COMPLETION, ENDOFTEXT, PAD)
# The 002 write-up's ids for the same tokens: <PAD>=0, <UNK>=1, <PROMPT>=2, <CODE>=3, <EOS>=4.
WRITE_UP_ORDER = (PAD, UNKNOWN, PROMPT, COMPLETION, ENDOFTEXT)


def special_tokens(unknown: bool = False, write_up_order: bool = False) -> tuple[str, ...]:
    """A fine-tuning tokenizer's special tokens: the control tokens, <|unk|> with unknown,
    in the write-up's order with write_up_order."""
    tokens = (*CONTROL_TOKENS, UNKNOWN) if unknown else CONTROL_TOKENS
    return tuple(sorted(tokens, key=WRITE_UP_ORDER.index)) if write_up_order else tokens


def control_ids(tokenizer: Tokenizer) -> dict[str, int]:
    missing = [t for t in CONTROL_TOKENS if t not in tokenizer.special_tokens]
    if missing:
        raise ValueError(f"the tokenizer lacks control tokens {missing}")
    return {t: tokenizer.special_tokens[t] for t in CONTROL_TOKENS}


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """<|prompt|> prompt <|completion|>: what the model sees before it answers."""
    ids = control_ids(tokenizer)
    return [ids[PROMPT], *tokenizer.encode(prompt), ids[COMPLETION]]


def format_record(tokenizer: Tokenizer, prompt: str, completion: str
                  ) -> tuple[list[int], list[int]]:
    """(inputs, targets) of one record; targets are -100 wherever the loss must not look."""
    head = prompt_ids(tokenizer, prompt)
    tail = [*tokenizer.encode(completion), tokenizer.special_tokens[ENDOFTEXT]]
    ids = head + tail
    targets = ids[1:]
    # Target i is token i + 1: the first len(head) - 1 targets are prompt or <|completion|>.
    labels = [IGNORE_INDEX] * (len(head) - 1) + targets[len(head) - 1:]
    return ids[:-1], labels


def record_length(tokenizer: Tokenizer, prompt: str, completion: str) -> int:
    """Tokens a record occupies, control tokens included."""
    return len(tokenizer.encode(prompt)) + len(tokenizer.encode(completion)) + 3


@dataclass
class Example:
    inputs: np.ndarray
    labels: np.ndarray


def pad_batch(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example: inputs with <|pad|>, labels with -100."""
    width = max(len(e.inputs) for e in examples)
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        x[row, :len(e.inputs)] = torch.from_numpy(e.inputs.astype(np.int64))
        y[row, :len(e.labels)] = torch.from_numpy(e.labels.astype(np.int64))
    return x, y


class BucketedBatches:
    """Shuffled batches of similar-length examples, so short records do not pay for long ones.

    Each epoch: shuffle, cut into buckets of `bucket_batches` batches, sort each bucket by
    length, cut into batches, shuffle the batch order. Seeded and resumable (get/set_state).
    """

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, seed: int,
                 bucket_batches: int = 16, device: str | torch.device = "cpu") -> None:
        if not examples:
            raise ValueError("no examples to batch")
        self.examples = examples
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.bucket = batch_size * bucket_batches
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self._epoch_state = self.generator.get_state()
        self._plan: list[list[int]] = []
        self._position = 0

    def _new_epoch(self) -> None:
        self._epoch_state = self.generator.get_state()
        order = torch.randperm(len(self.examples), generator=self.generator).tolist()
        batches = []
        for start in range(0, len(order), self.bucket):
            bucket = sorted(order[start:start + self.bucket],
                            key=lambda i: len(self.examples[i].inputs))
            batches += [bucket[i:i + self.batch_size]
                        for i in range(0, len(bucket), self.batch_size)]
        shuffle = torch.randperm(len(batches), generator=self.generator).tolist()
        self._plan = [batches[i] for i in shuffle]
        self._position = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._position >= len(self._plan):
            self._new_epoch()
        batch = [self.examples[i] for i in self._plan[self._position]]
        self._position += 1
        x, y = pad_batch(batch, self.pad_id)
        return x.to(self.device), y.to(self.device)

    def get_state(self) -> torch.Tensor:
        """The generator state at this epoch's start, with the position appended."""
        position = torch.tensor([self._position], dtype=torch.int64).view(torch.uint8)
        return torch.cat([self._epoch_state, position])

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state[:-8].clone())
        self._new_epoch()
        self._position = int(state[-8:].clone().view(torch.int64).item())


def eval_batches(examples: list[Example], batch_size: int, pad_id: int
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every example once, in length order (little padding)."""
    ordered = sorted(examples, key=lambda e: len(e.inputs))
    return [pad_batch(ordered[i:i + batch_size], pad_id)
            for i in range(0, len(ordered), batch_size)]


def complete(model, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 64,
             params: SamplingParams | None = None) -> str:
    """The answer to a prompt in completion mode, up to <|endoftext|> (greedy by default)."""
    device = next(model.parameters()).device
    idx = torch.tensor([prompt_ids(tokenizer, prompt)], device=device)
    eot = tokenizer.special_tokens[ENDOFTEXT]
    params = params or SamplingParams(max_new_tokens=max_new_tokens, temperature=0)
    ids = (int(t.item()) for t in iter_tokens(model, idx, params, (eot,)))
    return "".join(decode_stream((i for i in ids if i != eot), tokenizer))


def exact_match(prediction: str, answer: str) -> bool:
    return prediction.strip() == answer.strip()


def answer_budget(tokenizer: Tokenizer, answers: Iterable[str]) -> int:
    """Tokens to generate while scoring: one more than the longest answer (room for it and
    its <|endoftext|>). A character the tokenizer lacks counts as its UTF-8 bytes."""
    def length(answer: str) -> int:
        try:
            return len(tokenizer.encode(answer))
        except ValueError:
            return len(answer.encode("utf-8"))

    return 1 + max((length(a) for a in answers), default=0)


# The 002 write-up's fallback: an answer this short, or repeating itself this much, is replaced
# by the answer of the training prompt closest to the one asked.
MIN_ANSWER_CHARS = 2
MAX_REPEATED_SHARE = 0.5


def degenerate(answer: str) -> bool:
    """Too short, or mostly a loop: the share of its character trigrams that repeat an
    earlier one (`detetetete`: 5 of 8) above MAX_REPEATED_SHARE."""
    text = answer.strip()
    if len(text) < MIN_ANSWER_CHARS:
        return True
    trigrams = [text[i:i + 3] for i in range(len(text) - 2)]
    return len(trigrams) >= 6 and 1 - len(set(trigrams)) / len(trigrams) > MAX_REPEATED_SHARE


class Fallback:
    """The training answers by prompt, and the one whose prompt shares the most words with a
    new prompt (Jaccard similarity of their lower-cased words; the first on a tie). Saved as
    JSON beside a registered model, so its served answers fall back as its scored ones did."""

    def __init__(self, prompts: Sequence[str], answers: Sequence[str]) -> None:
        if not prompts or len(prompts) != len(answers):
            raise ValueError(f"a fallback needs training examples, as many prompts as answers "
                             f"(got {len(prompts)} and {len(answers)})")
        self.prompts, self.answers = list(prompts), list(answers)
        self.words = [_words(p) for p in self.prompts]

    def closest(self, prompt: str) -> str:
        asked = _words(prompt)
        scores = [len(asked & w) / max(len(asked | w), 1) for w in self.words]
        return self.answers[scores.index(max(scores))]

    def answer(self, prompt: str, generated: str) -> tuple[str, bool]:
        """The generated answer, or the closest training answer when it is degenerate; and
        whether it was replaced."""
        if degenerate(generated):
            return self.closest(prompt), True
        return generated, False

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"prompts": self.prompts, "answers": self.answers}),
                        encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Fallback:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(saved["prompts"], saved["answers"])


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


@dataclass
class Answers:
    max_new_tokens: int      # the most tokens each answer could have
    predictions: list[str]
    hits: list[bool]         # exactly right
    fell_back: list[bool]    # replaced by the closest training example's answer


def answer_all(model, tokenizer: Tokenizer, prompts: Sequence[str], answers: Sequence[str],
               max_new_tokens: int, fallback: Fallback | None = None) -> Answers:
    """Greedy answers to prompts, each replaced by the fallback's when it is degenerate (with
    a fallback), and whether each is exactly right. A prompt the tokenizer cannot encode gets
    an empty answer (or the fallback's)."""
    result = Answers(max_new_tokens, [], [], [])
    for prompt, answer in zip(prompts, answers, strict=True):
        try:
            prediction = complete(model, tokenizer, prompt, max_new_tokens)
        except ValueError:
            prediction = ""
        replaced = False
        if fallback is not None:
            prediction, replaced = fallback.answer(prompt, prediction)
        result.predictions.append(prediction)
        result.hits.append(exact_match(prediction, answer))
        result.fell_back.append(replaced)
    return result


def is_code(text: str) -> bool:
    """Python that parses (never executed) and says something: not empty, and not one bare
    name (`detetetete` parses, as a name)."""
    try:
        body = ast.parse(text).body
    except (SyntaxError, ValueError):
        return False
    bare_name = len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(
        body[0].value, ast.Name)
    return bool(body) and not bare_name


def same_code(prediction: str, answer: str) -> bool:
    """The stricter code check: is_code, and the reference's text once every run of
    whitespace is one space."""
    return is_code(prediction) and " ".join(prediction.split()) == " ".join(answer.split())
