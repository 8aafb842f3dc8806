"""tokenize: the run's tokenizer, trained on the training split only.

Text: trained on the training documents, with <|endoftext|> between documents. Prompt ->
completion pairs: the base model's tokenizer plus the control tokens when fine-tuning a
registered model (`sft.init`), otherwise one trained on the training records.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task

import gpt.tokenizer
from gpt.config import Params
from gpt.files import atomic_directory, sha256_tree
from gpt.tokenizer import ENDOFTEXT, Tokenizer, train_tokenizer
from tasks.common import documents, split_records, step_cache_key, validated_path


def corpus_tokenizer(params: Params) -> Tokenizer:
    frame = pd.read_parquet(validated_path(params))
    train_frame, _ = split_records(frame, params.data.val_fraction)
    text = "\n\n".join(doc for doc, _ in documents(train_frame))
    return train_tokenizer(params.tokenizer.kind, text, params.tokenizer.vocab_size,
                           special_tokens=(ENDOFTEXT,),
                           min_frequency=params.tokenizer.min_frequency)


def pairs_tokenizer(params: Params) -> Tokenizer:
    from gpt.sft import CONTROL_TOKENS

    if params.sft.init:
        from registry import load_registered

        _, base, _ = load_registered(params, params.sft.init)
        return base.with_special_tokens(CONTROL_TOKENS)
    frame = pd.read_parquet(validated_path(params))
    train = frame[frame["split"] == "train"]
    text = "\n".join(train["prompt"]) + "\n" + "\n".join(train["completion"])
    return train_tokenizer(params.tokenizer.kind, text, params.tokenizer.vocab_size,
                           special_tokens=CONTROL_TOKENS,
                           min_frequency=params.tokenizer.min_frequency)


BUILDERS = {"text": corpus_tokenizer, "sft": pairs_tokenizer}


def tokenize(params: Params) -> dict[str, Any]:
    started = time.perf_counter()
    tokenizer = BUILDERS[params.kind](params)
    seconds = time.perf_counter() - started
    out = atomic_directory(params.path("tokenizer"), tokenizer.save)
    return {"path": str(out), "digest": sha256_tree(out), "vocab_size": tokenizer.vocab_size,
            "kind": params.tokenizer.kind, "seconds": seconds}


def base_version(params: Params) -> str | None:
    """The registered version `sft.init` names now (an alias may have moved), or None."""
    if params.kind != "sft" or not params.sft.init:
        return None
    from registry import resolve_version, use_store

    use_store(params)
    return "/".join(resolve_version(params.sft.init))


def cache_key(_context, arguments: dict[str, Any]) -> str:
    params = arguments["params"]
    settings = {"tokenizer": asdict(params.tokenizer), "val_fraction": params.data.val_fraction,
                "base": base_version(params)}
    return step_cache_key("tokenize", params, settings,
                          [validated_path(params), Path(__file__), *gpt.tokenizer.SOURCE_FILES])


# Cached on its inputs: a re-run with unchanged data and parameters skips it. Results are
# stored as JSON (never pickled).
tokenize_task = task(tokenize, name="tokenize", cache_key_fn=cache_key, persist_result=True,
                     result_serializer="json")
