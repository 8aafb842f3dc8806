"""encode: validated records -> token files for training, plus a manifest.

Text: Parquet shards `{train,val}-NNNNN.parquet` with one `token` column (uint16 when the
vocabulary fits, zstd), split by document; documents are separated by <|endoftext|>. Chunks
of records are encoded in parallel (tasks/chunks.py) and the shards written as they fill, so
memory holds a chunk and a shard, never the corpus.
Prompt -> completion pairs: `{train,val,test}.parquet`, each record's (inputs, labels) with
labels -100 outside the answer. manifest.json records the digests and counts that training,
evaluation and the registry tags need.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

import tasks.stages
from gpt.config import Params
from gpt.data import CorpusError, ShardWriter, token_dtype
from gpt.files import (
    atomic_directory,
    read_json,
    sha256_file,
    sha256_json,
    sha256_tree,
    write_json,
)
from gpt.tokenizer import ENDOFTEXT, BPETokenizer, Tokenizer, load_tokenizer
from gpt.tokenizer.bpe import safe_slices
from tasks.chunks import Chunk, combined_digest, fan_out, plan, text_digest
from tasks.common import MANIFEST
from tasks.kinds import kind_of, validated_path

SFT_SPLITS = ("train", "val", "test")


def encode_text(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """One document part's ids; a BPE encodes it a slice at a time (the same ids as the
    whole), so memory holds one slice's lists."""
    dtype = token_dtype(tokenizer.vocab_size)
    pieces = safe_slices(text) if isinstance(tokenizer, BPETokenizer) else [text]
    arrays = [np.asarray(tokenizer.encode(piece), dtype=dtype) for piece in pieces]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)


def encode_documents(tokenizer: Tokenizer, documents: Iterable[tuple[str, int, bool]]
                     ) -> np.ndarray:
    """Document parts' ids in one array, <|endoftext|> before each part that starts a
    document after another."""
    eot = tokenizer.special_tokens.get(ENDOFTEXT)
    dtype = token_dtype(tokenizer.vocab_size)
    arrays = []
    for text, _, separated in documents:
        if separated and eot is not None:
            arrays.append(np.asarray([eot], dtype=dtype))
        arrays.append(encode_text(tokenizer, text))
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)


@lru_cache(maxsize=2)
def cached_tokenizer(directory: str, digest: str) -> Tokenizer:
    """The tokenizer a worker encodes with, loaded once per (folder, digest): its cache of
    encoded pretokens carries over from chunk to chunk."""
    return load_tokenizer(directory)


def encode_chunk(chunk: Chunk, tokenizer_dir: str, tokenizer_digest: str,
                 parts: str) -> dict[str, Any]:
    """One chunk's ids into parts/ (a .npy file); its counts and text digest."""
    tokenizer = cached_tokenizer(tokenizer_dir, tokenizer_digest)
    documents = list(chunk.documents())
    ids = encode_documents(tokenizer, documents)
    part = Path(parts) / f"{chunk.split}-{chunk.group:06d}-{chunk.start:09d}.npy"
    np.save(part, ids, allow_pickle=False)
    return {"part": str(part), "tokens": len(ids), "bytes": sum(n for _, n, _ in documents),
            "separators": sum(separated for _, _, separated in documents),
            "records": chunk.stop - chunk.start, "digest": text_digest(iter(documents))}


def encode_text_shards(params: Params, tokenizer: Tokenizer, out: Path) -> dict[str, Any]:
    """Token shards of the train and val documents, written as they fill from the chunks'
    parts (encoded in parallel); their counts for the manifest."""
    per_shard = params.data.tokens_per_shard
    manifest: dict[str, Any] = {"dtype": str(token_dtype(tokenizer.vocab_size)),
                                "tokens_per_shard": per_shard}
    tokenizer_dir = params.path("tokenizer").resolve()
    parts = out.resolve() / ".parts"
    parts.mkdir()
    chunks = plan(validated_path(params), params.data.val_fraction)
    writers = {split: ShardWriter(out, split, per_shard, tokenizer.vocab_size)
               for split in ("train", "val")}
    counts = {split: {"tokens": 0, "bytes": 0, "documents": 1, "records": 0}
              for split in writers}
    digests: dict[str, list[str]] = {split: [] for split in writers}
    results = fan_out(params, encode_chunk, chunks, "encoding",
                      tokenizer_dir=str(tokenizer_dir), tokenizer_digest=sha256_tree(
                          tokenizer_dir), parts=str(parts))
    for chunk, result in zip(chunks, results, strict=True):
        part = Path(result["part"])
        writers[chunk.split].add(np.load(part, allow_pickle=False))
        part.unlink()
        split = counts[chunk.split]
        for key in ("tokens", "bytes", "records"):
            split[key] += result[key]
        split["documents"] += result["separators"]
        digests[chunk.split].append(result["digest"])
    parts.rmdir()
    for split, writer in writers.items():
        manifest[split] = {**counts[split], "text_digest": combined_digest(digests[split]),
                           "shards": [p.name for p in writer.close()]}
    return manifest


def encode_sft_splits(params: Params, tokenizer: Tokenizer, out: Path) -> dict[str, Any]:
    """Each split's records as (inputs, labels) id lists; their counts for the manifest."""
    # pandas (0.4 s to import) only here: a data worker imports this module to encode text
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gpt.sft import format_record

    frame = pd.read_parquet(validated_path(params))
    counts = {}
    for split in SFT_SPLITS:
        part = frame[frame["split"] == split]
        pairs = [format_record(tokenizer, p, c)
                 for p, c in zip(part["prompt"], part["completion"], strict=True)]
        table = pa.table({
            "prompt": part["prompt"].tolist(), "completion": part["completion"].tolist(),
            "task": part["task"].tolist(),
            "inputs": pa.array([x for x, _ in pairs], pa.list_(pa.int32())),
            "labels": pa.array([y for _, y in pairs], pa.list_(pa.int32()))})
        pq.write_table(table, out / f"{split}.parquet", compression="zstd")
        counts[split] = len(part)
    if counts["train"] == 0 or counts["val"] == 0:
        raise CorpusError(f"fine-tuning needs train and val records, got {counts}")
    scored = "test" if counts["test"] else "val"
    records = frame[frame["split"] == scored][["prompt", "completion"]].values.tolist()
    return {"records": counts, "scored_split": scored, "test_digest": sha256_json(records)}


def scored_pairs(tokens_dir: Path) -> Path:
    """The split a fine-tuned model is scored on (evaluation, and promotion's re-score of the
    champion): test, or val for a set without test records. The `test_digest` tag is its
    records' digest."""
    return tokens_dir / f"{read_json(tokens_dir / MANIFEST)['scored_split']}.parquet"


def encode(params: Params) -> dict[str, Any]:
    """Encode the validated records with the run's tokenizer into the tokens folder."""
    validated, tokenizer_dir = validated_path(params), params.path("tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    manifest: dict[str, Any] = {"kind": params.kind, "data_digest": sha256_file(validated),
                                "tokenizer_digest": sha256_tree(tokenizer_dir),
                                "vocab_size": tokenizer.vocab_size}

    def fill(folder: Path) -> None:
        manifest.update(kind_of(params).step("encode")(params, tokenizer, folder))
        write_json(folder / MANIFEST, manifest)

    out = atomic_directory(params.path("tokens"), fill)
    return {"path": str(out), "digest": sha256_tree(out), **manifest}


def cache_key(_context, arguments: dict[str, Any]) -> str:
    return tasks.stages.cache_key("encode", arguments["params"])
