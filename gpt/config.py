"""params.yaml: the one place every hyperparameter and path is set.

Sections map onto the library's dataclasses (`model` -> GPTConfig, `train` -> TrainConfig,
`sample` -> SamplingParams); a missing file or key falls back to the dataclass default, and an
unknown key is an error rather than a silent no-op.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from gpt.generate import SamplingParams
from gpt.model import GPTConfig
from gpt.train import TrainConfig

PARAMS_FILE = "params.yaml"


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 3e-4 as a float (YAML 1.2), not the string YAML 1.1 makes it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$"
               r"|^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*$|^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def load_params(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read params.yaml (default: the one in the working directory) and apply overrides."""
    source = Path(path) if path is not None else Path(PARAMS_FILE)
    if path is not None and not source.is_file():
        raise FileNotFoundError(f"parameter file {source} does not exist")
    params = parse_yaml(source.read_text(encoding="utf-8")) if source.is_file() else {}
    if not isinstance(params, dict):
        raise ValueError(f"{source} must hold a mapping of sections")
    return apply_overrides(params or {}, overrides)


def apply_overrides(params: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply 'section.key=value' strings; values are parsed as YAML (200, 3e-4, true, ...)."""
    result = copy.deepcopy(params)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"override {item!r} must look like section.key=value")
        *sections, leaf = key.strip().split(".")
        node = result
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {section} is not a section")
        node[leaf] = parse_yaml(raw)
    return result


def _build(cls: type, section: str, values: dict[str, Any] | None, **fixed: Any) -> Any:
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    values.update(fixed)
    return cls(**values)


def model_config(params: dict[str, Any], vocab_size: int) -> GPTConfig:
    return _build(GPTConfig, "model", params.get("model"), vocab_size=vocab_size)


def train_config(params: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, "train", params.get("train"))


def sampling_params(params: dict[str, Any], **overrides: Any) -> SamplingParams:
    values = {k: v for k, v in (params.get("sample") or {}).items() if k != "prompt"}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _build(SamplingParams, "sample", values)


def tokenizer_params(params: dict[str, Any]) -> tuple[str, int]:
    """(kind, vocab_size) of the tokenizer section."""
    section = params.get("tokenizer") or {}
    unknown = sorted(set(section) - {"kind", "vocab_size"})
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join('tokenizer.' + k for k in unknown)}")
    return section.get("kind", "bpe"), int(section.get("vocab_size", 8192))
