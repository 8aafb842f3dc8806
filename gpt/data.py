"""Corpus text and token storage, without torch: data preparation's workers import this.

Tokens live in Parquet shards (one `token` column, uint16 when the vocabulary fits, zstd),
written as they fill, or a `.npy` file. Training and evaluation copy a split's shards into one
memory-mapped `.npy` (never a Python list, never the corpus in memory); gpt/batches.py cuts
batches from it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
