"""tokenize: the run's tokenizer, trained on the training split only.

Text: trained on the training documents, with a blank line between documents. A BPE counts
its pretokens chunk by chunk, in parallel (tasks/chunks.py), and learns its merges from the
summed counts: memory holds the table of distinct pretokens, never the corpus. The word-level
kinds (the recipes' small corpora) read the training text whole. Prompt ->
completion pairs: the base model's tokenizer plus the control tokens when fine-tuning a
registered model (`sft.init`), otherwise one trained on the training records.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import tasks.stages
from gpt.config import Params
from gpt.files import atomic_directory, sha256_tree
from gpt.tokenizer import (
    ENDOFTEXT,
    UNKNOWN,
    BPETokenizer,
    Tokenizer,
    count_pretokens,
    train_tokenizer,
)
from tasks.chunks import Chunk, fan_out, plan
from tasks.kinds import kind_of, validated_path


def count_chunk(chunk: Chunk) -> Counter[str]:
    """How often each pretoken occurs in one chunk of the training text."""
    return count_pretokens(chunk.text())


def text_tokenizer(params: Params) -> Tokenizer:
    settings = params.tokenizer
    chunks = [c for c in plan(validated_path(params), params.data.val_fraction)
              if c.split == "train" or settings.fit_on == "all"]
    if settings.kind == "bpe":
        counts: Counter[str] = Counter()
        for part in fan_out(params, count_chunk, chunks, "counting pretokens"):
            counts.update(part)
        return BPETokenizer.from_counts(counts, settings.vocab_size, (ENDOFTEXT,))
    text = "".join(chunk.text() for chunk in chunks)
    specials = (ENDOFTEXT, UNKNOWN) if settings.unknown else (ENDOFTEXT,)
    return train_tokenizer(settings.kind, text, settings.vocab_size, special_tokens=specials,
                           min_frequency=settings.min_frequency,
                           drop_whitespace=settings.drop_whitespace,
                           seed_ascii=settings.seed_ascii,
                           specials_first=settings.specials_first)


def sft_tokenizer(params: Params) -> Tokenizer:
    from gpt.sft import CONTROL_TOKENS, special_tokens

    if params.sft.init:
        from registry import load_registered

        _, base, _ = load_registered(params, params.sft.init)
        return base.with_special_tokens(CONTROL_TOKENS)
    import pandas as pd  # here only: a data worker imports this module to count pretokens

    frame = pd.read_parquet(validated_path(params))
    train = frame if params.tokenizer.fit_on == "all" else frame[frame["split"] == "train"]
    text = "\n".join(train["prompt"]) + "\n" + "\n".join(train["completion"])
    settings = params.tokenizer
    return train_tokenizer(settings.kind, text, settings.vocab_size,
                           special_tokens=special_tokens(settings.unknown,
                                                         settings.specials_first),
                           min_frequency=settings.min_frequency,
                           seed_ascii=settings.seed_ascii,
                           specials_first=settings.specials_first)


def tokenize(params: Params) -> dict[str, Any]:
    started = time.perf_counter()
    tokenizer = kind_of(params).step("tokenize")(params)
    seconds = time.perf_counter() - started
    out = atomic_directory(params.path("tokenizer"), tokenizer.save)
    return {"path": str(out), "digest": sha256_tree(out), "vocab_size": tokenizer.vocab_size,
            "kind": params.tokenizer.kind, "seconds": seconds}


def base_version(params: Params) -> str | None:
    """The registered version the kind's base model parameter (sft.init) names now (an alias
    may have moved), or None."""
    key = kind_of(params).base_param
    reference = key and tasks.stages.param_value(params, key)
    if not reference:
        return None
    from registry import resolve_version, use_store

    use_store(params)
    return "/".join(resolve_version(reference))


def cache_key(_context, arguments: dict[str, Any]) -> str:
    params = arguments["params"]
    return tasks.stages.cache_key("tokenize", params, {"base": base_version(params)})
