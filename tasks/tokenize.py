"""tokenize: train our tokenizer on the training split of the validated corpus."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task

import gpt.tokenizer
from gpt.config import tokenizer_params
from gpt.tokenizer import ENDOFTEXT, train_tokenizer
from tasks.common import (
    documents,
    path_of,
    section,
    sha256_tree,
    split_records,
    step_cache_key,
)
from tasks.ingest import CORPUS_FILE


def tokenize(params: dict[str, Any]) -> dict[str, Any]:
    kind, vocab_size = tokenizer_params(params)
    frame = pd.read_parquet(path_of(params, "validated") / CORPUS_FILE)
    train_frame, _ = split_records(frame, float(section(params, "data").get("val_fraction", 0.1)))
    text = "\n\n".join(doc for doc, _ in documents(train_frame))
    started = time.perf_counter()
    tokenizer = train_tokenizer(kind, text, vocab_size, special_tokens=(ENDOFTEXT,))
    seconds = time.perf_counter() - started
    out = path_of(params, "tokenizer")
    shutil.rmtree(out, ignore_errors=True)
    tokenizer.save(out)
    return {"path": str(out), "digest": sha256_tree(out), "vocab_size": tokenizer.vocab_size,
            "kind": kind, "seconds": seconds}


def cache_key(_context, arguments: dict[str, Any]) -> str:
    params = arguments["params"]
    return step_cache_key(
        "tokenize", params, ["tokenizer", "data.val_fraction", "paths"],
        [path_of(params, "validated") / CORPUS_FILE, Path(__file__), Path(gpt.tokenizer.__file__)])


# Cached on its inputs: a re-run with unchanged data and parameters skips it. Results are
# stored as JSON (never pickled).
tokenize_task = task(tokenize, name="tokenize", cache_key_fn=cache_key, persist_result=True,
                     result_serializer="json")


def tokenize_sft(params: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuning tokenizer: the base model's plus control tokens, or trained anew."""
    from gpt.sft import CONTROL_TOKENS
    from tasks.tracking import load_registered
    from tasks.validate import SFT_VALIDATED

    sft = section(params, "sft")
    out = path_of(params, "tokenizer")
    if sft.get("init"):
        _, base, _ = load_registered(params, sft["init"])
        tokenizer = base.with_special_tokens(CONTROL_TOKENS)
    else:
        kind, vocab_size = tokenizer_params(params)
        frame = pd.read_parquet(path_of(params, "validated") / SFT_VALIDATED)
        train = frame[frame["split"] == "train"]
        text = "\n".join(train["prompt"]) + "\n" + "\n".join(train["completion"])
        tokenizer = train_tokenizer(kind, text, vocab_size, special_tokens=CONTROL_TOKENS)
    shutil.rmtree(out, ignore_errors=True)
    tokenizer.save(out)
    return {"path": str(out), "digest": sha256_tree(out), "vocab_size": tokenizer.vocab_size}


tokenize_sft_task = task(tokenize_sft, name="tokenize-sft")
