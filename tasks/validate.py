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

import copy
import gc
import html
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gpt.config import Params, ValidateConfig
from gpt.files import atomic_file
from tasks.chunks import Chunk, fan_out, plan
from tasks.common import CORPUS_FILE, PAIRS_RAW
from tasks.kinds import kind_of, validated_path
from tasks.web_assets import self_host

SUITE_NAME = "corpus"
# Control characters other than tab, newline and carriage return (C0, DEL and C1).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class DataValidationError(ValueError):
    """The data broke the suite; the message lists every failed expectation."""


@dataclass
class Checked:
    """A kind's records checked: the (combined) result, the rows checked, a few offending
    rows per failed expectation, the suite (for the Data Docs), and the validated file's
    writer."""

    result: Any
    rows: int
    examples: dict[int, list[str]]
    make_suite: Callable[[], Any]
    write_validated: Callable[[Path], None]


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


def _context(docs_dir: Path | None = None):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # Its INFO line for each context's temporary folder is not the step's news (the module
    # sets its own logger to INFO when imported, above).
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        context.add_data_docs_site("tinygpt", {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    return context


def suite_result(frame: pd.DataFrame, make_suite: Callable[[], Any]):
    """Validate frame with the suite make_suite builds (it needs a live context, so it is
    called here)."""
    import great_expectations as gx

    context = _context()
    suite = make_suite()
    batch = (context.data_sources.add_pandas(suite.name).add_dataframe_asset("records")
             .add_batch_definition_whole_dataframe("all"))
    definition = gx.ValidationDefinition(name=suite.name, data=batch,
                                         suite=context.suites.add(suite))
    return definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")


def collect_cycles() -> None:
    """Free what a validation left in reference cycles (Great Expectations' context, batch and
    result objects: 3-4 MB a chunk, which only a full collection frees, so a worker grew from
    400 to 700 MB over 1 GB). What is alive after the first chunk (modules, GE's own state) is
    frozen out of later collections, which keeps each one short."""
    gc.collect()
    _freeze_survivors()


@cache
def _freeze_survivors() -> None:
    gc.freeze()


def write_data_docs(result, make_suite: Callable[[], Any], docs_dir: Path) -> Path:
    """Great Expectations' Data Docs of one validation result (of one batch, or combined from
    many), with their scripts and styles copied inside; the index page back."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    shutil.rmtree(docs_dir, ignore_errors=True)
    context = _context(docs_dir)
    suite = context.suites.add(make_suite())
    key = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite.name),
        run_id=RunIdentifier(run_name="tinygpt"), batch_identifier="records")
    context.validation_results_store.set(key, result)
    context.build_data_docs(site_names=["tinygpt"])
    self_host(docs_dir)
    return docs_dir / "index.html"


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


def failing_examples(result, frame: pd.DataFrame) -> dict[int, list[str]]:
    """Up to three offending rows (doc_id, length, the start of the text) of each failed
    expectation, by its position in the suite."""
    examples: dict[int, list[str]] = {}
    column = "text" if "text" in frame else "prompt"
    for position, item in enumerate(result.results):
        indices = (item.result or {}).get("partial_unexpected_index_list") or []
        shown = []
        for index in indices[:3]:
            if isinstance(index, int) and "doc_id" in frame and index < len(frame):
                text = str(frame[column].iloc[index]) if column in frame else ""
                preview = (text[:40] + "…") if len(text) > 40 else text
                shown.append(f"{frame['doc_id'].iloc[index]} ({len(text)} chars: {preview!r})")
        if shown and not item.success:
            examples[position] = shown
    return examples


def describe_failure(result, examples: dict[int, list[str]]) -> str:
    """One line per failed expectation, with up to three offending rows."""
    lines = []
    for position, item in enumerate(result.results):
        if item.success:
            continue
        config = item.expectation_config
        column = config.kwargs.get("column")
        title = f"{config.type}({column})" if column else config.type
        details = item.result or {}
        if "unexpected_count" in details:
            shown = examples.get(position, [])
            lines.append(f"- {title}: {details['unexpected_count']} row(s) fail"
                         + (f", e.g. {'; '.join(shown)}" if shown else ""))
        else:
            lines.append(f"- {title}: observed {details.get('observed_value')!r}")
    return "\n".join(lines)


# -- a text corpus, a chunk at a time ------------------------------------------------------

def validate_chunk(chunk: Chunk, settings: ValidateConfig) -> dict[str, Any]:
    """The suite on one chunk of records: its result (plain JSON), the offending rows it
    shows, and a stable 64-bit hash of each doc_id (uniqueness is checked across chunks)."""
    frame = chunk.read(["doc_id", "text", "source", "n_bytes"]).to_pandas()
    frame["control_share"] = [control_share(t) if isinstance(t, str) else 0.0
                              for t in frame["text"]]
    result = suite_result(frame, lambda: build_suite(settings))
    part = {"result": result.to_json_dict(), "rows": len(frame),
            "examples": failing_examples(result, frame),
            "id_hashes": pd.util.hash_pandas_object(frame["doc_id"], index=False).to_numpy()}
    del result, frame
    collect_cycles()
    return part


def combine(parts: list[dict[str, Any]]) -> tuple[Any, int, dict[int, list[str]]]:
    """One validation result from the chunks' results: row counts add up, unexpected rows
    add up (their indices shifted to the whole table's), a value must be unique across
    chunks, and each verdict is taken again on the sums. (result, rows, examples) back."""
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResultSchema,
    )

    combined = copy.deepcopy(parts[0]["result"])
    offsets = np.cumsum([0] + [part["rows"] for part in parts])
    duplicated = repeated_rows(np.concatenate([part.pop("id_hashes") for part in parts]))
    examples: dict[int, list[str]] = {}
    for position, item in enumerate(combined["results"]):
        items = [part["result"]["results"][position] for part in parts]
        kwargs = item["expectation_config"]["kwargs"]
        details = item["result"]
        if item["expectation_config"]["type"] == "expect_table_row_count_to_be_between":
            details["observed_value"] = total = int(offsets[-1])
            item["success"] = (kwargs.get("min_value") is None or total >= kwargs["min_value"]
                               ) and (kwargs.get("max_value") is None
                                      or total <= kwargs["max_value"])
        elif "unexpected_count" in details:
            unique = item["expectation_config"]["type"] == "expect_column_values_to_be_unique"
            add_up(details, [i["result"] for i in items], offsets,
                   duplicated if unique else None)
            item["success"] = details["unexpected_count"] == 0
        else:
            item["success"] = all(i["success"] for i in items)
        shown = [e for part in parts for e in part["examples"].get(position, [])]
        if shown:
            examples[position] = shown[:3]
    failed = sum(not item["success"] for item in combined["results"])
    evaluated = len(combined["results"])
    combined["success"] = failed == 0
    combined["statistics"].update({
        "successful_expectations": evaluated - failed, "unsuccessful_expectations": failed,
        "success_percent": 100 * (evaluated - failed) / max(evaluated, 1)})
    return ExpectationSuiteValidationResultSchema().load(combined), int(offsets[-1]), examples


def repeated_rows(ids: np.ndarray) -> int:
    """How many rows share their value with another row (sorted in place: memory for the
    values and two flags per row, whatever the corpus's size)."""
    ids.sort()
    same = ids[1:] == ids[:-1]
    repeated = np.zeros(len(ids), dtype=bool)
    repeated[1:] |= same
    repeated[:-1] |= same
    return int(repeated.sum())


def add_up(details: dict[str, Any], parts: list[dict[str, Any]], offsets: np.ndarray,
           unexpected: int | None = None) -> None:
    """A column expectation's counts over every chunk, in place of the first chunk's;
    `unexpected`: the count taken over the whole table instead (uniqueness)."""
    for key in ("element_count", "unexpected_count", "missing_count"):
        if key in details:
            details[key] = sum(part.get(key) or 0 for part in parts)
    if unexpected is not None:
        details["unexpected_count"] = unexpected
    elements = details.get("element_count") or 0
    if "unexpected_percent" in details:
        details["unexpected_percent"] = 100 * details["unexpected_count"] / max(elements, 1)
    for key in ("unexpected_percent_total", "unexpected_percent_nonmissing"):
        details.pop(key, None)
    if "partial_unexpected_index_list" in details:
        details["partial_unexpected_index_list"] = [
            int(offset) + index for part, offset in zip(parts, offsets, strict=False)
            for index in part.get("partial_unexpected_index_list") or []][:20]
    if "partial_unexpected_list" in details:
        details["partial_unexpected_list"] = [
            value for part in parts for value in part.get("partial_unexpected_list") or []][:20]
    details.pop("partial_unexpected_counts", None)


def check_text(params: Params) -> Checked:
    """The corpus's suite, a chunk at a time (in parallel), combined into one verdict."""
    raw = params.path("raw") / CORPUS_FILE
    chunks = plan(raw, None)
    parts = list(fan_out(params, validate_chunk, chunks, "validating",
                         settings=params.validate))
    result, rows, examples = combine(parts)
    return Checked(result, rows, examples, lambda: build_suite(params.validate),
                   lambda tmp: shutil.copyfile(raw, tmp))


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


def check_sft(params: Params) -> Checked:
    """The suite on prompt -> completion records (a set small enough to check whole)."""
    from tasks.ingest import read_pairs

    frame = read_pairs(params.path("raw") / PAIRS_RAW)
    count_tokens, block_size = length_limits(params)
    frame["n_tokens"] = [
        count_tokens(p, c) if isinstance(p, str) and isinstance(c, str) else 0
        for p, c in zip(frame["prompt"], frame["completion"], strict=True)]

    def make_suite():
        return build_sft_suite(block_size)

    result = suite_result(frame, make_suite)
    return Checked(result, len(frame), failing_examples(result, frame), make_suite,
                   lambda tmp: frame.astype({"prompt": str, "completion": str}).to_parquet(tmp))


def validate(params: Params) -> dict[str, Any]:
    """Check the raw records against the kind's suite; write the validated file only when
    they pass. The Data Docs report is written either way."""
    checked = kind_of(params).step("validate")(params)
    report = write_data_docs(checked.result, checked.make_suite,
                             params.path("reports") / "data_docs")
    write_static_report(checked.result, checked.rows, params.path("reports") / STATIC_REPORT)
    if not checked.result.success:
        raise DataValidationError(
            f"data validation failed ({checked.rows} records); report: {report}\n"
            + describe_failure(checked.result, checked.examples))
    target = validated_path(params)
    with atomic_file(target) as tmp:
        checked.write_validated(tmp)
    return {"path": str(target), "rows": checked.rows, "report": str(report),
            "expectations": len(checked.result.results)}
