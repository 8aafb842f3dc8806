"""The text kind: a corpus to continue (data.kind: text, the default).

Text files, folders of them or JSONL in; Parquet token shards split by document; a model
scored by its bits per byte on the held-out documents."""

from __future__ import annotations

from typing import Any

from tasks.common import CORPUS_FILE
from tasks.kinds.base import MODEL_CODE, TRAIN_CODE, Inputs, Kind, Steps, code


def summary_lines(summary: dict[str, Any]) -> list[str]:
    metrics = summary["metrics"]
    return [f"val loss {metrics['val_loss']:.4f} | perplexity {metrics['val_perplexity']:.2f}"
            f" | bits/byte {metrics['val_bits_per_byte']:.4f} | {summary['steps']} steps"]


KIND = Kind(
    name="text",
    validated_file=CORPUS_FILE,
    text_columns=("text",),
    dvc_project=".",
    stage_prefix="",
    mode="text",
    metric="val_bits_per_byte",
    metric_label="val bits per byte",
    higher_is_better=False,
    data_tag="val_text_digest",
    base_param=None,
    samples=True,
    purpose="A small character-of-Shakespeare style text model for study and demos: it "
            "continues text in the style of its corpus, knows no facts, and will produce "
            "fluent nonsense. Not for answering questions or any decision about people.",
    steps=Steps(
        ingest="tasks.ingest:ingest_text",
        validate="tasks.validate:check_text",
        tokenize="tasks.tokenize:text_tokenizer",
        encode="tasks.encode:encode_text_shards",
        train="tasks.train:text_trainer",
        evaluate="tasks.evaluate:evaluate_text",
        rescore="tasks.promote:rescore_text",
        tags="tasks.register:text_tags",
        artifacts="tasks.register:text_artifacts",
    ),
    inputs={
        "ingest": Inputs(code("gpt/data.py", "tasks/ingest.py"),
                         ("data.source", "data.sha256", "data.text_field", "data.chunk_mb"), ()),
        "validate": Inputs(code("gpt/data.py", "tasks/chunks.py", "tasks/ingest.py",
                                "tasks/validate.py"), ("validate",), ("raw",)),
        "tokenize": Inputs(code("gpt/tokenizer", "tasks/chunks.py", "tasks/tokenize.py"),
                           ("tokenizer", "data.val_fraction"), ("validated",)),
        "encode": Inputs(code("gpt/data.py", "gpt/tokenizer", "tasks/chunks.py",
                              "tasks/encode.py"),
                         ("data.val_fraction", "data.tokens_per_shard"),
                         ("validated", "tokenizer")),
        "train": Inputs(code(*TRAIN_CODE),
                        ("data.windows", "data.stride", "data.input_noise", "model", "train"),
                        ("tokens", "tokenizer")),
        "evaluate": Inputs(code(*MODEL_CODE, "gpt/batches.py", "gpt/evaluate.py",
                                "tasks/chunks.py", "tasks/encode.py", "tasks/evaluate.py"),
                           ("evaluate", "data.val_fraction"), ("model", "tokens", "validated")),
    },
    summary_lines=summary_lines,
    legacy_tags=("pretrain",),
)
