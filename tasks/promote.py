"""promote: move the serving alias only to a model that is better on the same data.

Alias `candidate` always points at the newest version. Alias `champion` moves to it when there
is no champion yet, or when it beats the champion by its kind's measure on the same data
(val bits per byte on the same validation text, exact match on the same test records; the
champion is re-scored when the data differ), or when forced. The decision and the previous
champion are recorded as tags on the candidate.

Promotions of a model are serialized by the promotion lease (tasks/lock.py), shared by every
host of the team stack: the comparison runs outside it (a re-score takes a while), and the
aliases move under it only if `champion` is still the version compared against; otherwise
the candidate is compared again with the new champion.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pandas as pd

from gpt.config import Params
from registry import (
    alias_history,
    alias_version,
    client,
    load_registered,
    missing_lineage,
    model_version,
    move_alias,
    smoke_test,
    tracking_uri,
)
from tasks.encode import scored_pairs
from tasks.evaluate import answer_pairs, evaluation_documents, score_text
from tasks.kinds import Kind, kind_tagged
from tasks.lock import promotion_lease

log = logging.getLogger("tinygpt.tasks.promote")


def rescore_text(params: Params, model_uri: str) -> float:
    """A registered model's val bits per byte on the text this run's candidate was scored
    on."""
    model, tokenizer, _ = load_registered(params, model_uri)
    return score_text(model, tokenizer, evaluation_documents(params))["val_bits_per_byte"]


def rescore_sft(params: Params, model_uri: str) -> float:
    """A registered fine-tuned model's exact match on the records this run's candidate was
    scored on."""
    model, tokenizer, _ = load_registered(params, model_uri)
    frame = pd.read_parquet(scored_pairs(params.path("tokens")))
    hits = answer_pairs(params, model, tokenizer, frame).hits
    return sum(hits) / max(len(hits), 1)


def champion_score(params: Params, kind: Kind, name: str, champion, candidate) -> float:
    """The champion's score on the candidate's data: its tag, or a re-score."""
    same_data = champion.tags.get(kind.data_tag) == candidate.tags.get(kind.data_tag)
    if same_data and kind.metric in champion.tags:
        return float(champion.tags[kind.metric])
    return kind.step("rescore")(params, f"models:/{name}/{champion.version}")


class PromotionError(ValueError):
    """The candidate cannot be promoted at all (half-made, or it does not load)."""


def promote(params: Params, version: str, force: bool = False,
            model_name: str | None = None, by: str | None = None) -> dict[str, Any]:
    """Promote by the rule of the candidate's kind (its `kind` tag); `version` may be an
    alias. Each alias move is recorded, `by` naming the run that asked (else: manual).

    Whatever the rule says, and even forced, a version without its lineage tags or one that
    does not load and generate is refused before any alias moves."""
    name, champion_alias = model_name or params.model_name, params.registry.champion_alias
    mlflow_client = client(params)
    candidate = model_version(mlflow_client, name, version)
    version = str(candidate.version)
    if missing := missing_lineage(candidate):
        raise PromotionError(f"{name} version {version} lacks its lineage tags "
                             f"({', '.join(missing)}): a half-made version; `tinygpt gc` "
                             f"lists and removes such versions")
    kind = kind_tagged(candidate.tags["kind"])
    if kind.metric not in candidate.tags:
        raise PromotionError(f"{name} version {version} has no {kind.metric} tag to compare")
    try:
        smoke_test(params, name, version)
    except ValueError as err:
        raise PromotionError(f"not promoted: {err}") from None
    champion = alias_version(mlflow_client, name, champion_alias)
    while True:
        promote_it, reason, score = compare(params, kind, name, candidate, champion)
        if force and not promote_it:
            promote_it, reason = True, f"forced ({reason})"
        with promotion_lease(name, shared=stack_shared(params)):
            now = alias_version(mlflow_client, name, champion_alias)
            if version_of(now) == version_of(champion):  # compare-and-set
                return record_decision(params, kind, candidate, champion, promote_it, reason,
                                       score, by)
        log.info("%s moved from v%s to v%s while this promote compared: comparing again",
                 champion_alias, version_of(champion), version_of(now))
        champion = now


def version_of(model_version) -> str | None:
    return str(model_version.version) if model_version is not None else None


def stack_shared(params: Params) -> bool:
    """Whether the registry is the team stack's, shared by several hosts (its env file sets
    PGHOST): promotions then take the stack's lease, not this project's lock file."""
    return tracking_uri(params).startswith("http") and bool(os.environ.get("PGHOST"))


def compare(params: Params, kind: Kind, name: str, candidate, champion
            ) -> tuple[bool, str, float | None]:
    """(whether the candidate should be champion, why, the champion's score when compared)."""
    if champion is None:
        return True, "no champion yet", None
    if str(champion.version) == str(candidate.version):
        return True, "already the champion", None
    candidate_score = float(candidate.tags[kind.metric])
    score = champion_score(params, kind, name, champion, candidate)
    better = kind.better(candidate_score, score)
    return better, (f"{kind.metric} {candidate_score:.4f} "
                    f"{'beats' if better else 'does not beat'} champion "
                    f"v{champion.version}'s {score:.4f}"), score


def record_decision(params: Params, kind: Kind, candidate, champion, promote_it: bool,
                    reason: str, score: float | None, by: str | None) -> dict[str, Any]:
    """Tag the candidate with the decision, then move the aliases it calls for."""
    name, version = candidate.name, str(candidate.version)
    mlflow_client = client(params)
    decision = "promoted" if promote_it else "not promoted"
    tags = {"promotion_decision": f"{decision}: {reason}", "promotion_reason": reason,
            "previous_champion": version_of(champion) or "none"}
    if score is not None:
        tags[f"champion_{kind.metric}"] = f"{score:.6f}"
    # The decision is on the version before any alias moves: a promote killed part-way
    # leaves it recorded, and `tinygpt promote --version N` finishes the moves.
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, value)
    if candidate.description and " promoted: " not in candidate.description:
        mlflow_client.update_model_version(
            name, version, f"{candidate.description}; {tags['promotion_decision']}")
    if promote_it:
        move_alias(params, name, params.registry.champion_alias, version,
                   f"{decision}: {reason}", by)
    move_alias(params, name, params.registry.candidate_alias, version,
               f"candidate, {decision}: {reason}", by)
    log.info("model %s v%s %s: %s", name, version, decision, reason)
    return {"version": version, "promoted": promote_it, "reason": reason,
            "champion": version if promote_it else version_of(champion),
            "previous_champion": tags["previous_champion"]}


def rollback(params: Params, model_name: str | None = None) -> dict[str, Any]:
    """Move `champion` back to the version it replaced, once that version still loads and
    generates. The recorded moves are a stack: promotions push, rollbacks pop, so rolling
    back twice goes two promotions back, never forth again."""
    name, champion_alias = model_name or params.model_name, params.registry.champion_alias
    current = alias_version(client(params), name, champion_alias)
    if current is None:
        raise PromotionError(f"{name} has no {champion_alias}: nothing to roll back")
    stack: list[str] = []
    for move in alias_history(params, name, champion_alias):
        if move["reason"].startswith("rollback"):
            stack = stack[:-1]
        elif not stack or stack[-1] != move["to_version"]:
            stack.append(move["to_version"])
    if stack and stack[-1] != str(current.version):
        raise PromotionError(f"{champion_alias} points at v{current.version}, but the recorded "
                             f"moves end at v{stack[-1]}: it was moved outside tinygpt; "
                             f"promote a version by number instead")
    if len(stack) < 2:
        raise PromotionError(f"{name} version {current.version} replaced no recorded "
                             f"{champion_alias}: nothing to roll back to")
    target = stack[-2]
    try:
        smoke_test(params, name, target)
    except ValueError as err:
        raise PromotionError(f"not rolled back: {err}") from None
    move_alias(params, name, champion_alias, target,
               f"rollback: v{current.version} -> v{target}")
    log.info("model %s %s rolled back from v%s to v%s", name, champion_alias, current.version,
             target)
    return {"champion": target, "previous_champion": str(current.version)}
