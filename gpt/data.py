"""Token storage and batching.

Tokens live in Parquet shards (one `token` column, uint16 when the vocabulary fits, zstd),
written as they fill, or a `.npy` file. Training and evaluation copy a split's shards into one
memory-mapped `.npy` (never a Python list, never the corpus in memory), and batches are
windows cut from it with a seeded torch.Generator whose state is saved in
checkpoints, so a resumed run draws exactly the batches it would have drawn: random windows
(nanoGPT's sampling), or strided windows visited once per epoch (a sliding-window dataset).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
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


class ShardWriter:
    """Tokens appended in pieces, written as prefix-00000.parquet, prefix-00001.parquet, ...
    (zstd) as each fills: memory holds at most one shard. At least one shard is written."""

    def __init__(self, out_dir: str | Path, prefix: str, tokens_per_shard: int,
                 vocab_size: int) -> None:
        if tokens_per_shard <= 0:
            raise ValueError(f"tokens_per_shard must be positive, got {tokens_per_shard}")
        self.out, self.prefix, self.per_shard = Path(out_dir), prefix, tokens_per_shard
        self.out.mkdir(parents=True, exist_ok=True)
        self.dtype = token_dtype(vocab_size)
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.paths: list[Path] = []

    def add(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens).astype(self.dtype, copy=False)
        while len(tokens):
            take = min(len(tokens), self.per_shard - self.pending_tokens)
            self.pending.append(tokens[:take])
            self.pending_tokens += take
            tokens = tokens[take:]
            if self.pending_tokens == self.per_shard:
                self._write()

    def close(self) -> list[Path]:
        if self.pending_tokens or not self.paths:
            self._write()
        return self.paths

    def _write(self) -> None:
        path = self.out / f"{self.prefix}-{len(self.paths):05d}.parquet"
        tokens = (np.concatenate(self.pending) if self.pending
                  else np.zeros(0, dtype=self.dtype))
        pq.write_table(pa.table({TOKEN_COLUMN: tokens}), path, compression="zstd")
        self.paths.append(path)
        self.pending, self.pending_tokens = [], 0


def write_token_shards(tokens: np.ndarray, out_dir: str | Path, prefix: str,
                       tokens_per_shard: int, vocab_size: int) -> list[Path]:
    """Write tokens as prefix-00000.parquet, prefix-00001.parquet, ... (zstd)."""
    writer = ShardWriter(out_dir, prefix, tokens_per_shard, vocab_size)
    writer.add(tokens)
    return writer.close()


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


def mapped_tokens(shards_dir: str | Path, prefix: str, cache: str | Path) -> np.ndarray:
    """A split's tokens as one memory-mapped array: its shards are copied into the .npy file
    `cache` a shard at a time (once; an existing cache is reused), so the corpus is never held
    in memory, only the windows read from it."""
    cache = Path(cache)
    if not cache.is_file():
        paths = sorted(Path(shards_dir).glob(f"{prefix}-*.parquet"))
        if not paths:
            raise FileNotFoundError(f"no {prefix}-*.parquet token shards in {shards_dir}")
        files = [pq.ParquetFile(p) for p in paths]
        dtype = np.dtype(files[0].schema_arrow.field(TOKEN_COLUMN).type.to_pandas_dtype())
        total = sum(f.metadata.num_rows for f in files)
        partial = cache.with_name(f"{cache.name}.part-{os.getpid()}")  # ranks race to make it
        # Written with plain writes, not through a writable map: pages written through a map
        # would count in this process's resident memory, the whole corpus's worth.
        with open(partial, "wb") as out:
            np.lib.format.write_array_header_1_0(out, {
                "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                "shape": (total,)})
            for file in files:
                for batch in file.iter_batches(columns=[TOKEN_COLUMN]):
                    out.write(batch.column(0).to_numpy().astype(dtype, copy=False).tobytes())
        partial.replace(cache)
    return np.load(cache, mmap_mode="r", allow_pickle=False)


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
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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
