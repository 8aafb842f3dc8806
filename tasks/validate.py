"""validate: the Great Expectations gate between raw records and everything downstream.

Each kind has its suite, defined here in code: a text corpus's columns, lengths and control
characters; prompt -> completion records' fields, splits and lengths in tokens. A failure
raises DataValidationError naming every failed expectation with a few offending rows, and the
reports are written either way: Great Expectations' Data Docs (with their scripts and styles
copied inside, tasks/web_assets.py) and validation.html, one small self-contained page (the
MLflow run's copy). Great Expectations is imported inside the functions: it takes seconds to
import.
"""

from __future__ import annotations

import html
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task

from gpt.config import Params, ValidateConfig
from gpt.files import atomic_file
from tasks.common import CORPUS_FILE, PAIRS_RAW, validated_path
from tasks.web_assets import self_host

SUITE_NAME = "corpus"
# Control characters other than tab, newline and carriage return (C0, DEL and C1).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class DataValidationError(ValueError):
    """The data broke the suite; the message lists every failed expectation."""


def control_share(text: str) -> float:
    return len(_CONTROL.findall(text)) / len(text) if text else 0.0


def build_suite(settings: ValidateConfig):
    """The expectations a corpus must meet before any training."""
    import great_expectations as gx

    E = gx.expectations
    suite = gx.ExpectationSuite(name=SUITE_NAME)
    for column, type_name in (("doc_id", "str"), ("text", "str"), ("source", "str"),
                              ("n_bytes", "int64")):
        suite.add_expectation(E.ExpectColumnToExist(column=column))
        suite.add_expectation(E.ExpectColumnValuesToBeOfType(column=column, type_=type_name))
        suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column=column))
    suite.add_expectation(E.ExpectTableRowCountToBeBetween(min_value=settings.min_rows))
    suite.add_expectation(E.ExpectColumnValuesToBeUnique(column="doc_id"))
    suite.add_expectation(E.ExpectColumnValueLengthsToBeBetween(
        column="text", min_value=settings.min_chars, max_value=settings.max_chars))
    suite.add_expectation(E.ExpectColumnValuesToBeBetween(
        column="control_share", min_value=0.0, max_value=settings.max_control_share))
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
    self_host(docs_dir)
    return next(iter(result.run_results.values()))


STATIC_REPORT = "validation.html"
_STYLE = ("body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:"
          "collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
          ".ok{color:#176a2c}.failed{color:#b00020;font-weight:bold}")


def write_static_report(result, rows: int, path: Path) -> Path:
    """One HTML page with every expectation's outcome, no scripts, no outside styles."""
    lines = []
    for item in result.results:
        config, details = item.expectation_config, item.result or {}
        observed = details.get("observed_value", details.get("unexpected_count", ""))
        outcome = "ok" if item.success else "failed"
        arguments = ", ".join(f"{k}={v}" for k, v in config.kwargs.items() if k != "batch_id")
        lines.append(f"<tr><td class={outcome}>{outcome}</td><td>{html.escape(config.type)}"
                     f"</td><td>{html.escape(arguments)}</td><td>{html.escape(str(observed))}"
                     "</td></tr>")
    verdict = "passed" if result.success else "failed"
    path.write_text(
        f"<!doctype html><meta charset=utf-8><title>tinygpt data validation</title>"
        f"<style>{_STYLE}</style><h1>Data validation {verdict}</h1>"
        f"<p>{rows} records, {len(result.results)} expectations (Great Expectations).</p>"
        "<table><tr><th>outcome</th><th>expectation</th><th>arguments</th>"
        f"<th>observed</th></tr>{''.join(lines)}</table>", encoding="utf-8")
    return path


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


def check_corpus(params: Params) -> tuple[pd.DataFrame, Any, Callable[[Path], None]]:
    """(frame, suite factory, writer of the validated file) of a text corpus."""
    raw = params.path("raw") / CORPUS_FILE
    frame = pd.read_parquet(raw)
    if "text" in frame:
        frame["control_share"] = [control_share(t) if isinstance(t, str) else 0.0
                                  for t in frame["text"]]
    return frame, lambda: build_suite(params.validate), lambda tmp: shutil.copyfile(raw, tmp)


def build_sft_suite(block_size: int):
    """Both fields present, strings, not empty nor whitespace only; the formatted record fits
    the context."""
    import great_expectations as gx

    E = gx.expectations
    suite = gx.ExpectationSuite(name="pairs")
    for column in ("prompt", "completion"):
        suite.add_expectation(E.ExpectColumnToExist(column=column))
        suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column=column))
        suite.add_expectation(E.ExpectColumnValuesToBeOfType(column=column, type_="str"))
        suite.add_expectation(E.ExpectColumnValueLengthsToBeBetween(column=column, min_value=1))
        suite.add_expectation(E.ExpectColumnValuesToNotMatchRegex(column=column,
                                                                 regex=r"^\s+$"))
    suite.add_expectation(E.ExpectTableRowCountToBeBetween(min_value=2))
    suite.add_expectation(E.ExpectColumnValuesToBeBetween(
        column="n_tokens", min_value=0, max_value=block_size))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="split",
                                                        value_set=["train", "val", "test"]))
    return suite


def length_limits(params: Params) -> tuple[Callable[[str, str], int], int]:
    """(a record's length in tokens with control tokens, the context size), before any
    tokenizer is trained: exact with a base model's tokenizer or a char tokenizer, an upper
    bound (UTF-8 bytes) for a BPE still to be trained."""
    from gpt.sft import CONTROL_TOKENS, record_length

    if params.sft.init:
        from registry import load_registered

        model, tokenizer, _ = load_registered(params, params.sft.init)
        return (lambda p, c: record_length(tokenizer, p, c)), model.config.block_size
    block, controls = params.model.block_size, len(CONTROL_TOKENS) - 1
    if params.tokenizer.kind == "char":
        return (lambda p, c: len(p) + len(c) + controls), block
    return (lambda p, c: len(p.encode()) + len(c.encode()) + controls), block


def check_pairs(params: Params) -> tuple[pd.DataFrame, Any, Callable[[Path], None]]:
    """(frame, suite factory, writer of the validated file) of prompt -> completion records."""
    from tasks.ingest import read_pairs

    frame = read_pairs(params.path("raw") / PAIRS_RAW)
    count_tokens, block_size = length_limits(params)
    frame["n_tokens"] = [
        count_tokens(p, c) if isinstance(p, str) and isinstance(c, str) else 0
        for p, c in zip(frame["prompt"], frame["completion"], strict=True)]
    return (frame, lambda: build_sft_suite(block_size),
            lambda tmp: frame.astype({"prompt": str, "completion": str}).to_parquet(tmp))


CHECKS = {"text": check_corpus, "sft": check_pairs}


def validate(params: Params) -> dict[str, Any]:
    """Check the raw records against the kind's suite; write the validated file only when
    they pass. The Data Docs report is written either way."""
    frame, make_suite, write_validated = CHECKS[params.kind](params)
    docs_dir = params.path("reports") / "data_docs"
    result = run_suite(frame, make_suite, docs_dir)
    write_static_report(result, len(frame), params.path("reports") / STATIC_REPORT)
    report = docs_dir / "index.html"
    if not result.success:
        raise DataValidationError(
            f"data validation failed ({len(frame)} records); report: {report}\n"
            + describe_failure(result, frame))
    target = validated_path(params)
    with atomic_file(target) as tmp:
        write_validated(tmp)
    return {"path": str(target), "rows": len(frame), "report": str(report),
            "expectations": len(result.results)}


validate_task = task(validate, name="validate")
