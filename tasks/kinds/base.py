"""What a kind of data is made of: the slots every kind fills (tasks/kinds/text.py and
sft.py fill them), and the record of what one pipeline step reads."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DVC_STEPS = ("ingest", "validate", "tokenize", "encode", "train", "evaluate")


@dataclass(frozen=True)
class Inputs:
    code: tuple[str, ...]    # project files and folders, from the repository's root
    params: tuple[str, ...]  # params.yaml sections or keys (dotted)
    data: tuple[str, ...]    # `paths` entries: earlier steps' outputs


def code(*paths: str) -> tuple[str, ...]:
    return tuple(sorted(set(paths)))


# What the train step runs, and what scoring a model (evaluate) runs with it, for any kind.
TRAIN_CODE = ("gpt/batches.py", "gpt/calibrate.py", "gpt/checkpoint.py", "gpt/data.py",
              "gpt/generate.py", "gpt/loss.py", "gpt/model.py", "gpt/muon.py", "gpt/tokenizer",
              "gpt/train.py", "tasks/train.py")
MODEL_CODE = ("gpt/checkpoint.py", "gpt/data.py", "gpt/generate.py", "gpt/loss.py",
              "gpt/model.py", "gpt/tokenizer")


@dataclass(frozen=True)
class Steps:
    """The function each step runs for a kind, as "module:function".

    Named, not imported: a kind's functions live beside their step's machinery (or in the
    kind's own module), and a step imports only its own code, so each DVC stage depends on
    the code it runs and no more (tests/code/test_stages.py checks both).
    """

    ingest: str    # (params, source) -> summary: the source -> the raw folder
    validate: str  # (params) -> tasks.validate.Checked: the raw records against the suite
    tokenize: str  # (params) -> Tokenizer, trained on the training split
    encode: str    # (params, tokenizer, folder) -> the manifest's counts
    train: str     # (params, tokenizer, out, callback, scratch) -> (Trainer, base version)
    evaluate: str  # (params) -> metrics on the held-out split
    rescore: str   # (params, model_uri) -> a registered model's metric on this run's split
    tags: str      # (params, metrics, manifest, base version) -> (registry tags, example)
    artifacts: str  # (params, folder) -> {name: file written in folder} its model carries


@dataclass(frozen=True)
class Kind:
    """Everything one kind of data decides; the steps ask it and never branch on a name."""

    name: str                # data.kind, the `kind` tag, the stages' prefix
    validated_file: str      # its records in validated/
    text_columns: tuple[str, ...]  # the validated columns holding its text (drift profile)
    dvc_project: str         # the folder of the DVC project holding its stages
    stage_prefix: str        # DVC stage names: "" -> ingest, ...; "sft-" -> sft-ingest, ...
    mode: str                # how its registered model answers: "text" continues, "completion"
    metric: str              # the registry tag promotion compares
    metric_label: str        # how a report names it
    higher_is_better: bool
    data_tag: str            # the tag naming the data that metric was measured on
    base_param: str | None   # the parameter naming a registered model it starts from
    samples: bool            # whether training writes sample continuations
    purpose: str             # the model card's "not for" paragraph
    steps: Steps
    inputs: dict[str, Inputs]  # per DVC step: what it reads
    summary_lines: Callable[[dict[str, Any]], list[str]]  # `tinygpt retrain`'s score lines
    legacy_tags: tuple[str, ...] = ()  # `kind` tags older versions were registered with

    def __post_init__(self) -> None:
        if set(self.inputs) != set(DVC_STEPS):
            raise ValueError(f"kind {self.name}: inputs for {sorted(self.inputs)}, "
                             f"need {list(DVC_STEPS)}")

    @property
    def dvc_lock(self) -> Path:
        return Path(self.dvc_project) / "dvc.lock"

    @property
    def stages(self) -> list[str]:
        return [f"{self.stage_prefix}{step}" for step in DVC_STEPS]

    def better(self, candidate: float, champion: float) -> bool:
        return candidate > champion if self.higher_is_better else candidate < champion

    def step(self, slot: str) -> Callable[..., Any]:
        """The function this kind runs for a slot of Steps (imported on first use)."""
        module, _, name = getattr(self.steps, slot).partition(":")
        return getattr(importlib.import_module(module), name)


STEP_SLOTS = tuple(f.name for f in fields(Steps))
