"""Prompt-to-completion fine-tuning: control tokens, masked labels, bucketed batches.

A record becomes
    <|prompt|> prompt <|completion|> completion <|endoftext|>
and the loss counts only the completion and the closing <|endoftext|>: every target inside the
prompt, and every padding position, is -100, which cross-entropy ignores.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gpt.generate import SamplingParams, decode_stream, iter_tokens
from gpt.tokenizer import ENDOFTEXT, Tokenizer

PROMPT, COMPLETION, PAD = "<|prompt|>", "<|completion|>", "<|pad|>"
CONTROL_TOKENS = (PROMPT, COMPLETION, ENDOFTEXT, PAD)
IGNORE = -100


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
    labels = [IGNORE] * (len(head) - 1) + targets[len(head) - 1:]
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
    y = torch.full((len(examples), width), IGNORE, dtype=torch.long)
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


def answer_all(model, tokenizer: Tokenizer, prompts: Sequence[str], answers: Sequence[str],
               max_new_tokens: int) -> tuple[list[str], list[bool]]:
    """Greedy answers to prompts and whether each is exactly right. A prompt the tokenizer
    cannot encode gets an empty answer and counts as a miss."""
    predictions, hits = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        try:
            prediction = complete(model, tokenizer, prompt, max_new_tokens)
        except ValueError:
            predictions.append("")
            hits.append(False)
            continue
        predictions.append(prediction)
        hits.append(exact_match(prediction, answer))
    return predictions, hits


def parses_as_python(code: str) -> bool:
    """Whether code is syntactically valid Python (parsed, never executed)."""
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True
