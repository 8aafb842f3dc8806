"""Token storage and batching.

Tokens live in Parquet shards (one `token` column, uint16 when the vocabulary fits, zstd) or
a `.npy` file. Either way they are read into one contiguous NumPy array, never a Python list,
and batches are windows cut from it with a seeded torch.Generator whose state is saved in
checkpoints, so a resumed run draws exactly the batches it would have drawn: random windows
(nanoGPT's sampling), or strided windows visited once per epoch (a sliding-window dataset).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

TOKEN_COLUMN = "token"


class CorpusError(ValueError):
    """Input text that cannot be used: missing, empty, binary or not UTF-8."""


def decode_utf8(data: bytes, name: str) -> str:
    """Decode bytes as UTF-8, or raise CorpusError naming the source and the byte offset."""
    if b"\x00" in data:
        raise CorpusError(f"{name}: looks like a binary file (NUL byte at offset "
                          f"{data.index(0)}); expected UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"{name}: invalid UTF-8 at byte offset {err.start} "
                          f"(byte 0x{data[err.start]:02x})") from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's content; missing, empty, binary or non-UTF-8 files are refused."""
    source = Path(path)
    if not source.is_file():
        raise CorpusError(f"{source}: no such file")
    data = source.read_bytes()
    if not data.strip():
        raise CorpusError(f"{source}: file is empty")
    return decode_utf8(data, str(source))


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """(train, val): the last val_fraction of the text is held out, cut at a line break."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    cut = int(len(text) * (1 - val_fraction))
    newline = text.rfind("\n", 0, cut)
    cut = newline + 1 if newline > 0 else cut
    return text[:cut], text[cut:]


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_token_shards(tokens: np.ndarray, out_dir: str | Path, prefix: str,
                       tokens_per_shard: int, vocab_size: int) -> list[Path]:
    """Write tokens as prefix-00000.parquet, prefix-00001.parquet, ... (zstd)."""
    if tokens_per_shard <= 0:
        raise ValueError(f"tokens_per_shard must be positive, got {tokens_per_shard}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokens = np.asarray(tokens).astype(token_dtype(vocab_size), copy=False)
    paths = []
    for shard, start in enumerate(range(0, max(len(tokens), 1), tokens_per_shard)):
        path = out / f"{prefix}-{shard:05d}.parquet"
        table = pa.table({TOKEN_COLUMN: tokens[start:start + tokens_per_shard]})
        pq.write_table(table, path, compression="zstd")
        paths.append(path)
    return paths


def read_token_shards(paths: Sequence[str | Path]) -> np.ndarray:
    """Concatenate the token column of Parquet shards into one NumPy array."""
    if not paths:
        raise FileNotFoundError("no token shards given")
    arrays = [pq.read_table(p, columns=[TOKEN_COLUMN]).column(TOKEN_COLUMN).to_numpy()
              for p in paths]
    return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]


def load_tokens(path: str | Path, prefix: str | None = None) -> np.ndarray:
    """Tokens from a .npy file, a Parquet shard, or a folder of `<prefix>-*.parquet` shards."""
    source = Path(path)
    if source.is_dir():
        pattern = f"{prefix}-*.parquet" if prefix else "*.parquet"
        return read_token_shards(sorted(source.glob(pattern)))
    if source.suffix == ".npy":
        return np.load(source, mmap_mode="r", allow_pickle=False)
    if source.suffix == ".parquet":
        return read_token_shards([source])
    raise ValueError(f"{source}: expected a .npy file, a .parquet shard or a folder of shards")


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

    def _cut(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        windows = torch.from_numpy(
            self.tokens[starts[:, None] + self._offsets].astype(np.int64))
        if self.device.type == "cuda":
            windows = windows.pin_memory().to(self.device, non_blocking=True)
        return windows[:, :-1], windows[:, 1:]


class RandomWindows(_Windows):
    """Batches of (input, target) windows at random offsets of a token array, seeded."""

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
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

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
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


def sequential_windows(tokens: np.ndarray, block_size: int, batch_size: int
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every token of the array scored once: consecutive non-overlapping windows, batched.

    A final partial window is kept (shorter), so no validation token is dropped.
    """
    n_targets = len(tokens) - 1
    if n_targets < 1:
        raise ValueError("need at least 2 tokens to evaluate")
    starts = list(range(0, n_targets, block_size))
    data = torch.from_numpy(np.asarray(tokens).astype(np.int64))
    batches = []
    full = [s for s in starts if s + block_size <= n_targets]
    for i in range(0, len(full), batch_size):
        chunk = torch.stack([data[s:s + block_size + 1] for s in full[i:i + batch_size]])
        batches.append((chunk[:, :-1], chunk[:, 1:]))
    if starts and starts[-1] + block_size > n_targets:
        tail = data[starts[-1]:]
        batches.append((tail[None, :-1], tail[None, 1:]))
    return batches
