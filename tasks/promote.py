"""promote: move the serving alias only to a model that is better on the same data.

Alias `candidate` always points at the newest version. Alias `champion` moves to it when there
is no champion yet, or when its val bits per byte beat the champion's on the same validation
text (the champion is re-scored when the text differs), or when forced. The decision and the
previous champion are recorded as tags on the candidate.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from prefect import task

from gpt.data import token_dtype
from gpt.evaluate import evaluate_tokens
from tasks.common import documents, path_of, retry_transient, section, split_records
from tasks.encode import encode_documents
from tasks.ingest import CORPUS_FILE
from tasks.tracking import client, registry_settings

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
    import mlflow

    wrapper = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    frame = pd.read_parquet(path_of(params, "validated") / CORPUS_FILE)
    _, val = split_records(frame, float(section(params, "data").get("val_fraction", 0.1)))
    docs = documents(val)
    ids = encode_documents(wrapper.tokenizer, docs)
    ids = np.asarray(ids, dtype=token_dtype(wrapper.tokenizer.vocab_size))
    return evaluate_tokens(wrapper.model, ids, sum(n for _, n in docs))["val_bits_per_byte"]


def promote(params: dict[str, Any], version: str, force: bool = False) -> dict[str, Any]:
    settings = registry_settings(params)
    name, champion_alias = settings["model_name"], settings["champion_alias"]
    mlflow_client = client(params)
    candidate = mlflow_client.get_model_version(name, version)
    candidate_bpb = float(candidate.tags["val_bits_per_byte"])
    champion = alias_version(mlflow_client, name, champion_alias)

    champion_bpb = None
    if champion is None:
        promote_it, reason = True, "no champion yet"
    elif str(champion.version) == str(candidate.version):
        promote_it, reason = True, "already the champion"
    else:
        if champion.tags.get("val_text_digest") == candidate.tags.get("val_text_digest"):
            champion_bpb = float(champion.tags["val_bits_per_byte"])
        else:
            champion_bpb = score_on_current_val(params, f"models:/{name}/{champion.version}")
        promote_it = candidate_bpb < champion_bpb
        reason = (f"val bits/byte {candidate_bpb:.4f} "
                  f"{'<' if promote_it else '>='} champion v{champion.version}'s "
                  f"{champion_bpb:.4f}")
    if force and not promote_it:
        promote_it, reason = True, f"forced ({reason})"

    mlflow_client.set_registered_model_alias(name, settings["candidate_alias"], version)
    if promote_it:
        mlflow_client.set_registered_model_alias(name, champion_alias, version)
    decision = "promoted" if promote_it else "not promoted"
    tags = {"promotion_decision": f"{decision}: {reason}",
            "previous_champion": str(champion.version) if champion else "none"}
    if champion_bpb is not None:
        tags["champion_val_bits_per_byte"] = f"{champion_bpb:.6f}"
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, value)
    log.info("model %s v%s %s: %s", name, version, decision, reason)
    champion_now = version if promote_it else str(champion.version)
    return {"version": version, "promoted": promote_it, "reason": reason,
            "champion": champion_now, "previous_champion": tags["previous_champion"]}


promote_task = task(promote, name="promote", retries=2, retry_delay_seconds=5,
                    retry_condition_fn=retry_transient)
