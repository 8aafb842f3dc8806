"""promote: move the serving alias only to a model that is better on the same data.

Alias `candidate` always points at the newest version. Alias `champion` moves to it when there
is no champion yet, or when its val bits per byte beat the champion's on the same validation
text (the champion is re-scored when the text differs), or when forced. The decision and the
previous champion are recorded as tags on the candidate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from prefect import task

from gpt.evaluate import evaluate_tokens
from tasks.common import documents, path_of, retry_transient, section, split_records
from tasks.encode import encode_documents
from tasks.ingest import CORPUS_FILE
from tasks.tracking import client, load_registered, registry_settings

log = logging.getLogger("tinygpt.tasks.promote")


def alias_version(mlflow_client, name: str, alias: str):
    """The version an alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def score_on_current_val(params: dict[str, Any], model_uri: str) -> float:
    """A registered model's val bits per byte on this run's validation text."""
    model, tokenizer, _ = load_registered(params, model_uri)
    frame = pd.read_parquet(path_of(params, "validated") / CORPUS_FILE)
    _, val = split_records(frame, float(section(params, "data").get("val_fraction", 0.1)))
    docs = documents(val)
    ids = encode_documents(tokenizer, docs)
    return evaluate_tokens(model, ids, sum(n for _, n in docs))["val_bits_per_byte"]


@dataclass
class Rule:
    """How a kind of model is compared: which tag, which way, on which data."""

    metric: str = "val_bits_per_byte"
    higher_is_better: bool = False
    data_tag: str = "val_text_digest"
    rescore: Callable[[dict[str, Any], str], float] | None = None

    def better(self, candidate: float, champion: float) -> bool:
        return candidate > champion if self.higher_is_better else candidate < champion


def score_sft_on_current_test(params: dict[str, Any], model_uri: str) -> float:
    """A registered fine-tuned model's exact match on this run's test records."""
    from gpt.sft import answer_all

    model, tokenizer, _ = load_registered(params, model_uri)
    frame = pd.read_parquet(path_of(params, "tokens") / "test.parquet")
    max_new = int(section(params, "sft").get("max_new_tokens", 64))
    _, hits = answer_all(model, tokenizer, frame["prompt"], frame["completion"], max_new)
    return sum(hits) / max(len(hits), 1)


RULES = {
    "pretrain": Rule(rescore=score_on_current_val),
    "sft": Rule(metric="exact_match", higher_is_better=True, data_tag="test_digest",
                rescore=score_sft_on_current_test),
}


def promote(params: dict[str, Any], version: str, force: bool = False,
            model_name: str | None = None) -> dict[str, Any]:
    """Promote by the rule of the candidate's kind (its `kind` tag)."""
    settings = registry_settings(params)
    name, champion_alias = model_name or settings["model_name"], settings["champion_alias"]
    mlflow_client = client(params)
    candidate = mlflow_client.get_model_version(name, version)
    rule = RULES[candidate.tags.get("kind", "pretrain")]
    candidate_score = float(candidate.tags[rule.metric])
    champion = alias_version(mlflow_client, name, champion_alias)

    champion_score = None
    if champion is None:
        promote_it, reason = True, "no champion yet"
    elif str(champion.version) == str(candidate.version):
        promote_it, reason = True, "already the champion"
    else:
        if champion.tags.get(rule.data_tag) == candidate.tags.get(rule.data_tag):
            champion_score = float(champion.tags[rule.metric])
        elif rule.rescore is not None:
            champion_score = rule.rescore(params, f"models:/{name}/{champion.version}")
        else:
            raise ValueError(f"champion v{champion.version} was scored on other data")
        promote_it = rule.better(candidate_score, champion_score)
        reason = (f"{rule.metric} {candidate_score:.4f} "
                  f"{'beats' if promote_it else 'does not beat'} champion v{champion.version}'s "
                  f"{champion_score:.4f}")
    if force and not promote_it:
        promote_it, reason = True, f"forced ({reason})"

    mlflow_client.set_registered_model_alias(name, settings["candidate_alias"], version)
    if promote_it:
        mlflow_client.set_registered_model_alias(name, champion_alias, version)
    decision = "promoted" if promote_it else "not promoted"
    tags = {"promotion_decision": f"{decision}: {reason}",
            "previous_champion": str(champion.version) if champion else "none"}
    if champion_score is not None:
        tags[f"champion_{rule.metric}"] = f"{champion_score:.6f}"
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, value)
    log.info("model %s v%s %s: %s", name, version, decision, reason)
    champion_now = version if promote_it else str(champion.version)
    return {"version": version, "promoted": promote_it, "reason": reason,
            "champion": champion_now, "previous_champion": tags["previous_champion"]}


promote_task = task(promote, name="promote", retries=2, retry_delay_seconds=5,
                    retry_condition_fn=retry_transient)
