"""register: log the best checkpoint as the tinygpt pyfunc and register it as a model version,
tagged with where it came from and how it scored (the tags promotion compares)."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from gpt.config import Params
from gpt.files import read_json, sha256_json
from registry import FALLBACK_ARTIFACT, client, git_commit, register_checkpoint
from tasks.card import CARD_FILE, description, model_card
from tasks.common import BEST, MANIFEST
from tasks.kinds import kind_of
from tasks.version import RUN_OWNED

log = logging.getLogger("tinygpt.register")


def text_tags(params: Params, metrics: dict[str, Any], manifest: dict[str, Any],
                _base_version: str | None) -> tuple[dict[str, str], str]:
    """A pretrained model's provenance and val bits per byte; its example prompt."""
    tags = {"data_digest": manifest["data_digest"],
            "tokenizer_digest": manifest["tokenizer_digest"],
            "val_text_digest": metrics["val_text_digest"],
            "val_bits_per_byte": f"{metrics['val_bits_per_byte']:.6f}",
            "val_loss": f"{metrics['val_loss']:.6f}"}
    return tags, params.sample.prompt


def sft_tags(params: Params, metrics: dict[str, Any], manifest: dict[str, Any],
               base_version: str | None) -> tuple[dict[str, str], str]:
    """A fine-tuned model's base version, test set and exact match; a held-out prompt."""
    tags = {"data_digest": manifest["data_digest"],
            "tokenizer_digest": manifest["tokenizer_digest"],
            "base_version": base_version or "none (from scratch)",
            "test_digest": manifest["test_digest"],
            "exact_match": f"{metrics['exact_match']:.6f}",
            "completion_loss": f"{metrics['completion_loss']:.6f}"}
    tokens_dir = params.path("tokens")
    prompts = pd.concat([pd.read_parquet(tokens_dir / f"{split}.parquet")["prompt"]
                         for split in ("test", "val")])
    return tags, str(prompts.iloc[0])


def text_artifacts(_params: Params, _folder: Path) -> dict[str, Path]:
    """A text model carries its checkpoint alone."""
    return {}


def sft_artifacts(params: Params, folder: Path) -> dict[str, Path]:
    """With sft.fallback, the training split's prompts and answers: the registered model
    answers a degenerate generation with the closest of them, as its evaluation did."""
    from gpt.sft import Fallback

    if not params.sft.fallback:
        return {}
    train = pd.read_parquet(params.path("tokens") / "train.parquet",
                            columns=["prompt", "completion"])
    path = folder / "fallback.json"
    Fallback(train["prompt"].tolist(), train["completion"].tolist()).save(path)
    return {FALLBACK_ARTIFACT: path}


def register(params: Params, run_id: str, metrics: dict[str, Any], dvc_lock_digest: str,
             base_version: str | None = None, overrides: list[str] | None = None,
             sample: str = "") -> dict[str, Any]:
    """Register the best checkpoint under the kind's model name, with its tags (the DVC lock
    of its outputs included: `version` runs first, so the version is reproducible from its
    first instant), then give it a description and a model card."""
    kind = kind_of(params)
    manifest = read_json(params.path("tokens") / MANIFEST)
    tags, example = kind.step("tags")(params, metrics, manifest, base_version)
    provenance = {"git_commit": git_commit(RUN_OWNED),
                  "params_digest": sha256_json(params.to_dict()),
                  "overrides": json.dumps(overrides or [])}
    with tempfile.TemporaryDirectory() as folder:
        registered = register_checkpoint(
            params, run_id, params.path("model") / BEST, params.model_name,
            {"kind": kind.name, "dvc_lock_digest": dvc_lock_digest, **provenance, **tags},
            example_prompt=example, mode=kind.mode,
            artifacts=kind.step("artifacts")(params, Path(folder)))
    name, version, all_tags = registered["name"], registered["version"], registered["tags"]
    try:  # the version stands with its tags: a retry here would register a second one
        mlflow_client = client(params)
        card = f"get-artifact?path={CARD_FILE}&run_uuid={run_id}"  # relative to the UI's root
        mlflow_client.update_model_version(
            name, version, f"{description(params, all_tags, manifest)} ([model card]({card}))")
        mlflow_client.log_text(run_id, model_card(params, name, version, all_tags, manifest,
                                                  metrics, sample), CARD_FILE)
    except Exception as err:
        log.warning("%s version %s registered without its description or model card: %s",
                    name, version, err)
    return registered
