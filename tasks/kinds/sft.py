"""The sft kind: prompt -> completion pairs to answer (data.kind: sft, `tinygpt finetune`).

A generated set or JSONL records in; (inputs, labels) per split; a model, fresh or from a
registered base (sft.init), scored by its exact match on the held-out prompts."""

from __future__ import annotations

from typing import Any

from tasks.common import PAIRS_FILE
from tasks.kinds.base import TRAIN_CODE, Inputs, Kind, Steps, code

SFT_CODE = ("gpt/generate.py", "gpt/loss.py", "gpt/model.py", "gpt/sft.py",  # gpt.sft's
            "gpt/tokenizer")


def summary_lines(summary: dict[str, Any]) -> list[str]:
    metrics = summary["metrics"]
    lines = [f"base: {summary['base_version'] or 'none (from scratch)'}",
             f"{metrics['split']} exact match {metrics['exact_match']:.3f} on "
             f"{metrics['records']} records | completion loss {metrics['completion_loss']:.4f}"
             f" | {summary['steps']} steps in {summary['train_seconds']:.0f}s"]
    lines += [f"  {task_name:<16} {accuracy:.3f}"
              for task_name, accuracy in metrics["accuracy_by_task"].items()]
    if "code_valid" in metrics:
        lines.append(f"Python that parses and is not a bare name: {metrics['code_valid']:.3f}"
                     f" | the reference's code, whitespace aside: {metrics['code_match']:.3f}")
    if "fallback_share" in metrics:
        lines.append(f"answered by the closest training example: "
                     f"{metrics['fallback_share']:.3f}")
    return lines


KIND = Kind(
    name="sft",
    validated_file=PAIRS_FILE,
    text_columns=("prompt", "completion"),
    dvc_project="sft",
    stage_prefix="sft-",
    mode="completion",
    metric="exact_match",
    metric_label="exact match",
    higher_is_better=True,
    data_tag="test_digest",
    base_param="sft.init",
    samples=False,
    purpose="A small prompt-to-answer model for the narrow tasks of its training pairs: "
            "outside them its answers are guesses. Not for any decision about people.",
    steps=Steps(
        ingest="tasks.ingest:ingest_sft",
        validate="tasks.validate:check_sft",
        tokenize="tasks.tokenize:sft_tokenizer",
        encode="tasks.encode:encode_sft_splits",
        train="tasks.train:sft_trainer",
        evaluate="tasks.evaluate:evaluate_sft",
        rescore="tasks.promote:rescore_sft",
        tags="tasks.register:sft_tags",
        artifacts="tasks.register:sft_artifacts",
    ),
    inputs={
        "ingest": Inputs(code("gpt/sft_data.py", "tasks/ingest.py"),
                         ("sft.dataset", "sft.records", "sft.seed"), ()),
        "validate": Inputs(code(*SFT_CODE, "gpt/sft_data.py", "tasks/ingest.py",
                                "tasks/validate.py"),
                           ("sft.init", "sft.model.block_size", "sft.tokenizer"), ("raw",)),
        "tokenize": Inputs(code(*SFT_CODE, "tasks/tokenize.py"), ("sft.init", "sft.tokenizer"),
                           ("validated",)),
        "encode": Inputs(code(*SFT_CODE, "tasks/encode.py"), (), ("validated", "tokenizer")),
        "train": Inputs(code(*TRAIN_CODE, "gpt/sft.py"),
                        ("sft.init", "sft.model", "sft.train", "model", "train"),
                        ("tokens", "tokenizer")),
        "evaluate": Inputs(code(*TRAIN_CODE, *SFT_CODE, "tasks/evaluate.py"),
                           ("sft.max_new_tokens", "sft.fallback"),
                           ("model", "tokens", "validated")),
    },
    summary_lines=summary_lines,
)
