"""encode: validated records -> token files for training, plus a manifest.

Text: Parquet shards `{train,val}-NNNNN.parquet` with one `token` column (uint16 when the
vocabulary fits, zstd), split by document; documents are separated by <|endoftext|>.
Prompt -> completion pairs: `{train,val,test}.parquet`, each record's (inputs, labels) with
labels -100 outside the answer. manifest.json records the digests and counts that training,
evaluation and the registry tags need.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task

import gpt.data
import gpt.sft
from gpt.config import Params
from gpt.data import CorpusError, token_dtype, write_token_shards
from gpt.files import atomic_directory, sha256_file, sha256_json, sha256_tree, write_json
from gpt.progress import Progress
from gpt.tokenizer import ENDOFTEXT, Tokenizer, load_tokenizer
from tasks.common import MANIFEST, documents, split_records, step_cache_key, validated_path

log = logging.getLogger("tinygpt.encode")

SFT_SPLITS = ("train", "val", "test")


def encode_documents(tokenizer: Tokenizer, docs: list[tuple[str, int]]) -> np.ndarray:
    """All documents' ids in one array, <|endoftext|> after each document but the last."""
    eot = tokenizer.special_tokens.get(ENDOFTEXT)
    ids: list[int] = []
    with Progress(log, "encoding", len(docs), "documents") as progress:
        for i, (text, _) in enumerate(docs):
            if i and eot is not None:
                ids.append(eot)
            ids.extend(tokenizer.encode(text))
            progress.update(i + 1)
    return np.asarray(ids, dtype=token_dtype(tokenizer.vocab_size))


def encode_corpus(params: Params, tokenizer: Tokenizer, out: Path) -> dict[str, Any]:
    """Token shards of the train and val documents; their counts for the manifest."""
    per_shard = params.data.tokens_per_shard
    manifest: dict[str, Any] = {"dtype": str(token_dtype(tokenizer.vocab_size)),
                                "tokens_per_shard": per_shard}
    frame = pd.read_parquet(validated_path(params))
    for split, part in zip(("train", "val"), split_records(frame, params.data.val_fraction),
                           strict=True):
        docs = documents(part)
        ids = encode_documents(tokenizer, docs)
        shards = write_token_shards(ids, out, split, per_shard, tokenizer.vocab_size)
        manifest[split] = {"tokens": len(ids), "bytes": sum(n for _, n in docs),
                           "text_digest": sha256_json([text for text, _ in docs]),
                           "documents": len(docs), "records": len(part),
                           "shards": [p.name for p in shards]}
    return manifest


def encode_pairs(params: Params, tokenizer: Tokenizer, out: Path) -> dict[str, Any]:
    """Each split's records as (inputs, labels) id lists; their counts for the manifest."""
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
    test = frame[frame["split"] == "test"][["prompt", "completion"]].values.tolist()
    return {"records": counts, "test_digest": sha256_json(test)}


ENCODERS = {"text": encode_corpus, "sft": encode_pairs}


def encode(params: Params) -> dict[str, Any]:
    """Encode the validated records with the run's tokenizer into the tokens folder."""
    validated, tokenizer_dir = validated_path(params), params.path("tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    manifest: dict[str, Any] = {"kind": params.kind, "data_digest": sha256_file(validated),
                                "tokenizer_digest": sha256_tree(tokenizer_dir),
                                "vocab_size": tokenizer.vocab_size}

    def fill(folder: Path) -> None:
        manifest.update(ENCODERS[params.kind](params, tokenizer, folder))
        write_json(folder / MANIFEST, manifest)

    out = atomic_directory(params.path("tokens"), fill)
    return {"path": str(out), "digest": sha256_tree(out), **manifest}


def cache_key(_context, arguments: dict[str, Any]) -> str:
    params = arguments["params"]
    settings = ({"val_fraction": params.data.val_fraction,
                 "tokens_per_shard": params.data.tokens_per_shard}
                if params.kind == "text" else {})
    code = gpt.data.__file__ if params.kind == "text" else gpt.sft.__file__
    return step_cache_key("encode", params, settings,
                          [validated_path(params), params.path("tokenizer"), Path(__file__),
                           Path(code)])


# Cached on its inputs, like tokenize; results are stored as JSON.
encode_task = task(encode, name="encode", cache_key_fn=cache_key, persist_result=True,
                   result_serializer="json")
