"""drift: how far the run's data moved from the data the champion learned from, before
anything trains on it.

Each run logs a profile of its validated data (`data_profile.json`: byte counts, the set of
characters, tokens per byte under its own tokenizer) to its MLflow run. The next run compares
its data with the champion's profile: the Jensen-Shannon divergence of the two byte
distributions (bits, 0 = same, 1 = disjoint), the share of its characters the champion never
saw, and how many more tokens per byte the champion's tokenizer needs for it. The figures go
to MLflow and the run's summary; `data.max_drift` stops a run past it.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from gpt.config import Params
from registry import alias_version, client, download_checkpoint
from tasks.kinds import kind_of, validated_path

PROFILE_FILE = "data_profile.json"
SAMPLE_BYTES = 1 << 20  # compression is measured on the first MiB


class DataDriftError(ValueError):
    """The run's data moved further from the champion's than data.max_drift allows."""


CODE_POINTS = 0x110000


def character_counts(params: Params) -> tuple[np.ndarray, str]:
    """How often each code point occurs in the validated data (prompt and completion, for
    pairs), read a row group at a time, and the data's first MiB (a record at a time)."""
    columns = list(kind_of(params).text_columns)
    table = pq.ParquetFile(validated_path(params))
    counts = np.zeros(CODE_POINTS, dtype=np.int64)
    sample: list[str] = []
    sampled = 0
    for group in range(table.num_row_groups):
        rows = table.read_row_group(group, columns=columns)
        for column in columns:
            texts = rows[column].to_pylist()
            codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
            counts += np.bincount(codes, minlength=CODE_POINTS)
            for text in texts:
                if sampled >= SAMPLE_BYTES:
                    break
                sample.append(text)
                sampled += len(text.encode("utf-8"))
    return counts, sample_of("\n".join(sample))


def profile(counts: np.ndarray) -> dict[str, Any]:
    """Byte counts and the set of characters, from the code points' counts."""
    byte_counts = [0] * 256
    characters = [chr(code) for code in np.flatnonzero(counts)]
    for ch in characters:
        for byte in ch.encode("utf-8"):
            byte_counts[byte] += int(counts[ord(ch)])
    return {"bytes": sum(byte_counts), "byte_counts": byte_counts,
            "characters": "".join(characters)}


def js_divergence(p_counts: list[int], q_counts: list[int]) -> float:
    """Jensen-Shannon divergence of two count vectors, in bits (0 to 1)."""
    p_total, q_total = sum(p_counts) or 1, sum(q_counts) or 1
    divergence = 0.0
    for p_count, q_count in zip(p_counts, q_counts, strict=True):
        p, q = p_count / p_total, q_count / q_total
        m = (p + q) / 2
        if p:
            divergence += p / 2 * math.log2(p / m)
        if q:
            divergence += q / 2 * math.log2(q / m)
    return max(0.0, min(1.0, divergence))


def sample_of(text: str) -> str:
    """The text's first MiB, where compression is measured."""
    return text.encode("utf-8")[:SAMPLE_BYTES].decode("utf-8", errors="ignore")


def tokens_per_byte(tokenizer_dir: Path, sample: str, known: set[str] | None = None
                    ) -> float | None:
    """Tokens per byte of the sample (only its `known` characters, when given: a char
    tokenizer cannot encode others); None if the tokenizer cannot encode it."""
    from gpt.tokenizer import load_tokenizer

    if known is not None:
        sample = "".join(ch for ch in sample if ch in known)
    try:
        tokens = load_tokenizer(tokenizer_dir).encode(sample)
    except ValueError:
        return None
    return len(tokens) / max(1, len(sample.encode()))


def compare(params: Params, counts: np.ndarray, sample: str, current: dict[str, Any]
            ) -> dict[str, float] | None:
    """The drift figures against the champion's profile; None without a champion that has
    one (a first run, or a champion older than profiles)."""
    import mlflow

    name = params.model_name
    champion = alias_version(client(params), name, params.registry.champion_alias)
    if champion is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=champion.run_id, artifact_path=PROFILE_FILE, dst_path=scratch)
        except Exception:  # an older champion without a profile: nothing to compare with
            return None
        before = json.loads(Path(path).read_text(encoding="utf-8"))
        seen = set(before["characters"])
        tokenizer = download_checkpoint(params, name, str(champion.version), Path(scratch))
        champion_rate = tokens_per_byte(tokenizer, sample, seen)
    known = np.zeros(CODE_POINTS, dtype=bool)
    known[[ord(ch) for ch in seen]] = True
    unseen = int(counts[~known].sum()) / max(1, int(counts.sum()))
    figures = {"drift_js_divergence": round(js_divergence(current["byte_counts"],
                                                          before["byte_counts"]), 6),
               "drift_unseen_chars": round(unseen, 6),
               "drift_champion_version": float(champion.version)}
    if champion_rate and before.get("tokens_per_byte"):
        figures["drift_tokens_per_byte_ratio"] = round(champion_rate / before["tokens_per_byte"],
                                                       6)
    return figures


def drift(params: Params, run_id: str | None = None) -> dict[str, Any]:
    """Profile the run's validated data, compare it with the champion's, log both; raise
    DataDriftError past data.max_drift."""
    counts, sample = character_counts(params)
    current = profile(counts)
    figures = compare(params, counts, sample, current)
    if run_id is not None:
        mlflow_client = client(params)
        for key, value in (figures or {}).items():
            mlflow_client.log_metric(run_id, key, value)
    limit = params.data.max_drift
    if figures and limit is not None and figures["drift_js_divergence"] > limit:
        raise DataDriftError(
            f"the {kind_of(params).name} data moved too far from champion "
            f"v{figures['drift_champion_version']:.0f}'s: byte divergence "
            f"{figures['drift_js_divergence']:.4f} bits > data.max_drift {limit} "
            f"({figures['drift_unseen_chars']:.2%} of characters never seen, "
            f"{figures.get('drift_tokens_per_byte_ratio', float('nan')):.2f}x the tokens per "
            f"byte); "
            f"raise data.max_drift or set it to null to train anyway")
    return {"profile": current, "figures": figures or {}, "sample": sample}


def record_profile(params: Params, run_id: str, drifted: dict[str, Any]) -> None:
    """The run's data profile (drift's result) with its tokenizer's tokens per byte on the
    same sample, for the runs after it."""
    rate = tokens_per_byte(params.path("tokenizer"), drifted["sample"])
    client(params).log_text(run_id, json.dumps({**drifted["profile"], "tokens_per_byte": rate}),
                            PROFILE_FILE)
