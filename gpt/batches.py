"""Batches of (input, target) windows cut from a token array (memory-mapped or not).

Windows are drawn with a seeded torch.Generator whose state is saved in checkpoints, so a
resumed run draws exactly the batches it would have drawn: random windows (nanoGPT's
sampling), or strided windows visited once per epoch (a sliding-window dataset). Evaluation
scores every token once through sequential windows. Input noise, a regulariser, wraps either
sampler.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), each (B, T)


class _Windows:
    """What both samplers share: the token array, the window shape, a seeded generator, and
    cutting (input, target) windows at given starts."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 device: str | torch.device = "cpu") -> None:
        if len(tokens) < block_size + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one window of block_size "
                             f"{block_size} (need at least {block_size + 1})")
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = np.arange(block_size + 1)

    def _cut(self, starts: np.ndarray) -> Batch:
        windows = torch.from_numpy(
            self.tokens[starts[:, None] + self._offsets].astype(np.int64))
        if self.device.type == "cuda":
            windows = windows.pin_memory().to(self.device, non_blocking=True)
        return windows[:, :-1], windows[:, 1:]


class RandomWindows(_Windows):
    """Batches of (input, target) windows at random offsets of a token array, seeded."""

    def next(self) -> Batch:
        high = len(self.tokens) - self.block_size
        return self._cut(torch.randint(high, (self.batch_size,),
                                       generator=self.generator).numpy())

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


class StridedWindows(_Windows):
    """Windows starting at 0, stride, 2*stride, ...: each visited once per epoch, in an order
    shuffled by a seeded generator; batches run on across epoch boundaries, so none is dropped.

    The 004 write-up's sliding-window dataset (max_length = block_size, stride, shuffle), with
    a state a checkpoint can hold: the generator as the epoch began, and the position in it.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 stride: int, device: str | torch.device = "cpu") -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        super().__init__(tokens, block_size, batch_size, seed, device)
        self.starts = np.arange(0, len(tokens) - block_size, stride)
        self.epoch = -1
        self._new_epoch()

    def _new_epoch(self) -> None:
        self._epoch_start = self.generator.get_state()
        self.order = torch.randperm(len(self.starts), generator=self.generator).numpy()
        self.position = 0
        self.epoch += 1

    def next(self) -> Batch:
        picked: list[np.ndarray] = []
        wanted = self.batch_size
        while wanted:
            if self.position == len(self.order):
                self._new_epoch()
            take = self.order[self.position:self.position + wanted]
            picked.append(take)
            self.position += len(take)
            wanted -= len(take)
        return self._cut(self.starts[np.concatenate(picked)])

    def get_state(self) -> torch.Tensor:
        """The generator's state as this epoch began, then (position, epoch) as 16 bytes."""
        where = torch.tensor([self.position, self.epoch], dtype=torch.int64).view(torch.uint8)
        return torch.cat([self._epoch_start, where])

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state[:-16].clone())
        position, epoch = state[-16:].clone().view(torch.int64).tolist()
        self.epoch = epoch - 1
        self._new_epoch()
        self.position = position


class InputNoise:
    """Unigram noising of a sampler's inputs (Xie et al., 2017, "Data noising as smoothing in
    neural network language models"): each input token is replaced, with probability p, by a
    token drawn at random from the training tokens; the targets stay as they are.

    The model cannot lean on any one token of its context, so it memorises a small corpus read
    many times more slowly. The noise has its own seeded generator, saved with the sampler's
    state, so a resumed run draws the same noise.
    """

    def __init__(self, windows: RandomWindows | StridedWindows, p: float, seed: int) -> None:
        if not 0 < p < 1:
            raise ValueError(f"input noise must be in (0, 1), got {p!r}")
        self.windows, self.p = windows, p
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> Batch:
        x, y = self.windows.next()
        hit = torch.rand(x.shape, generator=self.generator) < self.p
        picks = torch.randint(len(self.windows.tokens), (int(hit.sum()),),
                              generator=self.generator)
        noise = torch.from_numpy(self.windows.tokens[picks.numpy()].astype(np.int64))
        # Out of place: x and y are overlapping views of the same windows.
        return x.masked_scatter(hit.to(x.device), noise.to(x.device)), y

    def get_state(self) -> torch.Tensor:
        """The sampler's state, then the noise generator's."""
        return torch.cat([self.windows.get_state(), self.generator.get_state()])

    def set_state(self, state: torch.Tensor) -> None:
        split = len(state) - len(self.generator.get_state())
        self.windows.set_state(state[:split])
        self.generator.set_state(state[split:].clone())


def sequential_windows(tokens: np.ndarray, block_size: int, batch_size: int
                       ) -> Iterator[Batch]:
    """Every token of the array scored once: consecutive non-overlapping windows, batched,
    cut as they are needed (the array may be memory-mapped).

    A final partial window is kept (shorter), so no validation token is dropped.
    """
    n_targets = len(tokens) - 1
    if n_targets < 1:
        raise ValueError("need at least 2 tokens to evaluate")
    n_full = n_targets // block_size
    offsets = np.arange(block_size + 1)
    for first in range(0, n_full, batch_size):
        starts = np.arange(first, min(first + batch_size, n_full)) * block_size
        chunk = torch.from_numpy(np.asarray(tokens[starts[:, None] + offsets], dtype=np.int64))
        yield chunk[:, :-1], chunk[:, 1:]
    if n_full * block_size < n_targets:
        tail = torch.from_numpy(np.asarray(tokens[n_full * block_size:], dtype=np.int64))
        yield tail[None, :-1], tail[None, 1:]
