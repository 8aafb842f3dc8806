"""The kinds of data a run trains on, one module each, named after the kind (text.py,
sft.py): every decision a kind makes is a slot of its `KIND` (the slots are in base.py), so
the steps ask `kind_of(params)` and never branch on a kind's name.

Adding a kind: a module here whose `KIND` fills every slot (tests/code/test_kinds.py checks
each), its name in gpt.config.DATA_KINDS (with a params section of the same name if it lays
its own tokenizer, model, train and paths over the shared ones), and its DVC stages in a
dvc.yaml of their own (tests/code/test_stages.py checks them against the kind's `inputs`).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from gpt.config import DATA_KINDS, DataConfig, Params
from tasks.kinds.base import DVC_STEPS, STEP_SLOTS, Inputs, Kind, Steps

__all__ = ["DEFAULT_KIND", "DVC_STEPS", "KINDS", "STEP_SLOTS", "Inputs", "Kind", "Steps",
           "kind_of", "kind_tagged", "validated_path"]

KINDS: dict[str, Kind] = {name: import_module(f"tasks.kinds.{name}").KIND
                          for name in DATA_KINDS}
DEFAULT_KIND = DataConfig.kind  # also a version's kind when it was registered without a tag


def kind_of(params: Params) -> Kind:
    return KINDS[params.kind]


def kind_tagged(tag: str) -> Kind:
    """The kind whose registered versions carry this `kind` tag (or carried it once)."""
    for kind in KINDS.values():
        if tag == kind.name or tag in kind.legacy_tags:
            return kind
    raise ValueError(f"unknown model kind tag {tag!r}; known: {', '.join(KINDS)}")


def validated_path(params: Params) -> Path:
    return params.path("validated") / kind_of(params).validated_file
