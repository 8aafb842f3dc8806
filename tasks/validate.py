"""validate: the Great Expectations gate between raw records and everything downstream.

The suite is defined here in code. A failure raises DataValidationError naming every failed
expectation with a few offending rows, and the Data Docs HTML report is written either way.
Great Expectations is imported inside the functions: it takes seconds to import.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task

from tasks.common import path_of, section
from tasks.ingest import CORPUS_FILE

SUITE_NAME = "corpus"
# Control characters other than tab, newline and carriage return (C0, DEL and C1).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
DEFAULTS = {"min_chars": 1, "max_chars": 100_000, "max_control_share": 0.01, "min_rows": 1}


class DataValidationError(ValueError):
    """The data broke the suite; the message lists every failed expectation."""


def control_share(text: str) -> float:
    return len(_CONTROL.findall(text)) / len(text) if text else 0.0


def validation_settings(params: dict[str, Any]) -> dict[str, Any]:
    settings = {**DEFAULTS, **section(params, "validate")}
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join('validate.' + k for k in unknown)}")
    if not 0 <= settings["min_chars"] <= settings["max_chars"]:
        raise ValueError("validate.min_chars must be between 0 and validate.max_chars")
    return settings


def build_suite(settings: dict[str, Any]):
    """The expectations a corpus must meet before any training."""
    import great_expectations as gx

    E = gx.expectations
    suite = gx.ExpectationSuite(name=SUITE_NAME)
    for column, type_name in (("doc_id", "str"), ("text", "str"), ("source", "str"),
                              ("n_bytes", "int64")):
        suite.add_expectation(E.ExpectColumnToExist(column=column))
        suite.add_expectation(E.ExpectColumnValuesToBeOfType(column=column, type_=type_name))
        suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column=column))
    suite.add_expectation(E.ExpectTableRowCountToBeBetween(min_value=settings["min_rows"]))
    suite.add_expectation(E.ExpectColumnValuesToBeUnique(column="doc_id"))
    suite.add_expectation(E.ExpectColumnValueLengthsToBeBetween(
        column="text", min_value=settings["min_chars"], max_value=settings["max_chars"]))
    suite.add_expectation(E.ExpectColumnValuesToBeBetween(
        column="control_share", min_value=0.0, max_value=settings["max_control_share"]))
    return suite


def _context(docs_dir: Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site("tinygpt", {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                          "base_directory": str(docs_dir.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    return context


def run_suite(frame: pd.DataFrame, make_suite: Callable[[], Any], docs_dir: Path):
    """Validate frame with the suite make_suite builds (it needs a live context, so it is
    called here), through a Checkpoint that writes Data Docs to docs_dir."""
    import great_expectations as gx

    shutil.rmtree(docs_dir, ignore_errors=True)
    context = _context(docs_dir)
    suite = make_suite()
    batch = (context.data_sources.add_pandas(suite.name).add_dataframe_asset("records")
             .add_batch_definition_whole_dataframe("all"))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite.name, data=batch, suite=context.suites.add(suite)))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=suite.name, validation_definitions=[definition], result_format="SUMMARY",
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["tinygpt"])]))
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    return next(iter(result.run_results.values()))


def describe_failure(result, frame: pd.DataFrame) -> str:
    """One line per failed expectation, with up to three offending rows by doc_id."""
    lines = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        column = config.kwargs.get("column")
        title = f"{config.type}({column})" if column else config.type
        details = item.result or {}
        if "unexpected_count" in details:
            rows = details.get("partial_unexpected_index_list") or []
            shown = []
            for index in rows[:3]:
                if isinstance(index, int) and "doc_id" in frame and index < len(frame):
                    column = "text" if "text" in frame else "prompt"
                    text = str(frame[column].iloc[index]) if column in frame else ""
                    preview = (text[:40] + "…") if len(text) > 40 else text
                    shown.append(f"{frame['doc_id'].iloc[index]} ({len(text)} chars: {preview!r})")
            lines.append(f"- {title}: {details['unexpected_count']} row(s) fail"
                         + (f", e.g. {'; '.join(shown)}" if shown else ""))
        else:
            lines.append(f"- {title}: observed {details.get('observed_value')!r}")
    return "\n".join(lines)


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Check data/raw against the suite; copy it to data/validated only when it passes."""
    settings = validation_settings(params)
    frame = pd.read_parquet(path_of(params, "raw") / CORPUS_FILE)
    if "text" in frame:
        frame["control_share"] = [control_share(t) if isinstance(t, str) else 0.0
                                  for t in frame["text"]]
    docs_dir = path_of(params, "reports") / "data_docs"
    result = run_suite(frame, lambda: build_suite(settings), docs_dir)
    report = docs_dir / "index.html"
    if not result.success:
        raise DataValidationError(
            f"data validation failed ({len(frame)} rows); report: {report}\n"
            + describe_failure(result, frame))
    out_dir = path_of(params, "validated")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / CORPUS_FILE
    tmp = out_dir / f".{CORPUS_FILE}.tmp-{os.getpid()}"
    shutil.copyfile(path_of(params, "raw") / CORPUS_FILE, tmp)
    tmp.replace(target)
    return {"path": str(target), "rows": len(frame), "report": str(report),
            "expectations": len(result.results)}




# -- prompt/completion records (fine-tuning) ----------------------------------------------------

SFT_VALIDATED = "pairs.parquet"


def build_sft_suite(block_size: int):
    """Both fields present, strings, non-empty; the formatted record fits the context."""
    import great_expectations as gx

    E = gx.expectations
    suite = gx.ExpectationSuite(name="pairs")
    for column in ("prompt", "completion"):
        suite.add_expectation(E.ExpectColumnToExist(column=column))
        suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column=column))
        suite.add_expectation(E.ExpectColumnValuesToBeOfType(column=column, type_="str"))
        suite.add_expectation(E.ExpectColumnValueLengthsToBeBetween(column=column, min_value=1))
    suite.add_expectation(E.ExpectTableRowCountToBeBetween(min_value=2))
    suite.add_expectation(E.ExpectColumnValuesToBeBetween(
        column="n_tokens", min_value=0, max_value=block_size))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="split",
                                                        value_set=["train", "val", "test"]))
    return suite


def validate_sft(params: dict[str, Any], count_tokens, block_size: int) -> dict[str, Any]:
    """Check data/sft/raw/pairs.jsonl; write the validated pairs only when it passes.

    count_tokens(prompt, completion) gives a record's length with control tokens.
    """
    from tasks.ingest import SFT_FILE, read_pairs

    frame = read_pairs(path_of(params, "raw") / SFT_FILE)
    frame["n_tokens"] = [
        count_tokens(p, c) if isinstance(p, str) and isinstance(c, str) else 0
        for p, c in zip(frame["prompt"], frame["completion"], strict=True)]
    docs_dir = path_of(params, "reports") / "data_docs"
    result = run_suite(frame, lambda: build_sft_suite(block_size), docs_dir)
    if not result.success:
        raise DataValidationError(
            f"fine-tuning data failed validation ({len(frame)} records); report: "
            f"{docs_dir / 'index.html'}\n" + describe_failure(result, frame))
    out = path_of(params, "validated")
    out.mkdir(parents=True, exist_ok=True)
    frame.astype({"prompt": str, "completion": str}).to_parquet(out / SFT_VALIDATED)
    return {"path": str(out / SFT_VALIDATED), "rows": len(frame),
            "report": str(docs_dir / "index.html"), "expectations": len(result.results),
            "splits": frame["split"].value_counts().to_dict()}


validate_task = task(validate, name="validate")
validate_sft_task = task(validate_sft, name="validate-sft")
