"""encode: the validated corpus -> Parquet token shards, split by document, plus a manifest.

data/tokens/{train,val}-NNNNN.parquet hold one `token` column (uint16 when the vocabulary
fits, zstd); documents are separated by <|endoftext|>. manifest.json records the tokenizer
and data digests and the token and byte counts that evaluation needs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task

import gpt.data
from gpt.data import CorpusError, token_dtype, write_token_shards
from gpt.tokenizer import ENDOFTEXT, load_tokenizer
from tasks.common import (
    documents,
    path_of,
    section,
    sha256_file,
    sha256_json,
    sha256_tree,
    split_records,
    step_cache_key,
    write_json,
)
from tasks.ingest import CORPUS_FILE

MANIFEST = "manifest.json"
DEFAULT_TOKENS_PER_SHARD = 1 << 20


def encode_documents(tokenizer, docs: list[tuple[str, int]]) -> np.ndarray:
    """All documents' ids in one array, <|endoftext|> after each document but the last."""
    eot = tokenizer.special_tokens.get(ENDOFTEXT)
    ids: list[int] = []
    for i, (text, _) in enumerate(docs):
        if i and eot is not None:
            ids.append(eot)
        ids.extend(tokenizer.encode(text))
    return np.asarray(ids, dtype=token_dtype(tokenizer.vocab_size))


def encode(params: dict[str, Any]) -> dict[str, Any]:
    data = section(params, "data")
    corpus = path_of(params, "validated") / CORPUS_FILE
    tokenizer_dir = path_of(params, "tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    per_shard = int(data.get("tokens_per_shard", DEFAULT_TOKENS_PER_SHARD))
    out = path_of(params, "tokens")
    shutil.rmtree(out, ignore_errors=True)
    manifest: dict[str, Any] = {
        "data_digest": sha256_file(corpus), "tokenizer_digest": sha256_tree(tokenizer_dir),
        "vocab_size": tokenizer.vocab_size, "dtype": str(token_dtype(tokenizer.vocab_size)),
        "tokens_per_shard": per_shard,
    }
    frame = pd.read_parquet(corpus)
    for split, part in zip(("train", "val"),
                           split_records(frame, float(data.get("val_fraction", 0.1))),
                           strict=True):
        docs = documents(part)
        ids = encode_documents(tokenizer, docs)
        shards = write_token_shards(ids, out, split, per_shard, tokenizer.vocab_size)
        manifest[split] = {"tokens": len(ids), "bytes": sum(n for _, n in docs),
                           "text_digest": sha256_json([text for text, _ in docs]),
                           "documents": len(docs), "records": len(part),
                           "shards": [p.name for p in shards]}
    write_json(out / MANIFEST, manifest)
    return {"path": str(out), "digest": sha256_tree(out), "data_digest": manifest["data_digest"],
            "tokenizer_digest": manifest["tokenizer_digest"],
            "train_tokens": manifest["train"]["tokens"], "val_tokens": manifest["val"]["tokens"]}


def cache_key(_context, arguments: dict[str, Any]) -> str:
    params = arguments["params"]
    return step_cache_key(
        "encode", params, ["data.val_fraction", "data.tokens_per_shard", "paths"],
        [path_of(params, "validated") / CORPUS_FILE, path_of(params, "tokenizer"),
         Path(__file__), Path(gpt.data.__file__)])


# Cached on its inputs, like tokenize; results are stored as JSON.
encode_task = task(encode, name="encode", cache_key_fn=cache_key, persist_result=True,
                   result_serializer="json")


def encode_sft(params: dict[str, Any]) -> dict[str, Any]:
    """Each split's records as (inputs, labels) id lists, labels -100 outside the answer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gpt.sft import format_record
    from tasks.validate import SFT_VALIDATED

    tokenizer = load_tokenizer(path_of(params, "tokenizer"))
    frame = pd.read_parquet(path_of(params, "validated") / SFT_VALIDATED)
    out = path_of(params, "tokens")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    counts = {}
    for split in ("train", "val", "test"):
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
    manifest = {"vocab_size": tokenizer.vocab_size, "records": counts,
                "test_digest": sha256_json(frame[frame["split"] == "test"][
                    ["prompt", "completion"]].values.tolist())}
    write_json(out / MANIFEST, manifest)
    return {"path": str(out), **manifest}


encode_sft_task = task(encode_sft, name="encode-sft")
