"""The Great Expectations gate and the ingest step on their own."""

from __future__ import annotations

import hashlib
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from gpt.config import Params, build_params
from tasks.ingest import MIRROR_ENV, fetch, ingest, read_records, split_paragraphs
from tasks.train import check_windows
from tasks.validate import DataValidationError, validate
from tests.scratch import ROOT


def params_for(tmp_path: Path, **validate_settings) -> Params:
    return build_params({
        "paths": {"raw": str(tmp_path / "raw"), "validated": str(tmp_path / "validated"),
                  "reports": str(tmp_path / "reports")},
        "validate": {"max_chars": 200, **validate_settings}})


def run(tmp_path: Path, records: list[dict], **settings) -> dict:
    for r in records:
        r.setdefault("source", "test")
        r["n_bytes"] = len(r["text"].encode())
    (tmp_path / "raw").mkdir(exist_ok=True)
    pd.DataFrame(records).to_parquet(tmp_path / "raw" / "corpus.parquet")
    return validate(params_for(tmp_path, **settings))


def test_good_records_pass_and_are_copied_with_a_report(tmp_path):
    result = run(tmp_path, [{"doc_id": "a", "text": "hello"}, {"doc_id": "b", "text": "world"}])
    assert (tmp_path / "validated" / "corpus.parquet").is_file()
    assert Path(result["report"]).is_file() and result["expectations"] >= 10


@pytest.mark.parametrize(("records", "expected"), [
    ([{"doc_id": "a", "text": "x"}, {"doc_id": "a", "text": "y"}],
     "expect_column_values_to_be_unique(doc_id): 2 row(s) fail"),
    ([{"doc_id": "a", "text": ""}, {"doc_id": "b", "text": "ok"}],
     "expect_column_value_lengths_to_be_between(text): 1 row(s) fail, e.g. a (0 chars"),
    ([{"doc_id": "a", "text": "y" * 201}], "expect_column_value_lengths_to_be_between(text)"),
    ([{"doc_id": "a", "text": "bell\x07\x07\x07 ring"}],
     "expect_column_values_to_be_between(control_share): 1 row(s) fail, e.g. a"),
])
def test_each_broken_rule_is_named_with_offending_rows(tmp_path, records, expected):
    with pytest.raises(DataValidationError) as err:
        run(tmp_path, records)
    assert expected in str(err.value)
    assert not (tmp_path / "validated").exists()
    assert (tmp_path / "reports" / "data_docs" / "index.html").is_file()


def test_every_failed_expectation_is_listed_at_once(tmp_path):
    with pytest.raises(DataValidationError) as err:
        run(tmp_path, [{"doc_id": "a", "text": ""}, {"doc_id": "a", "text": "\x01\x02"}])
    message = str(err.value)
    assert "unique(doc_id)" in message and "lengths_to_be_between(text)" in message
    assert "control_share" in message


def test_a_self_contained_report_lists_every_expectation_and_its_outcome(tmp_path):
    with pytest.raises(DataValidationError):
        run(tmp_path, [{"doc_id": "a", "text": "x"}, {"doc_id": "a", "text": "y"}])
    page = (tmp_path / "reports" / "validation.html").read_text()
    assert "<h1>Data validation failed</h1>" in page and "2 records" in page
    assert re.search(r"<td class=failed>failed</td><td>expect_column_values_to_be_unique</td>"
                     r"<td>column=doc_id", page)
    assert page.count("<td class=ok>ok</td>") >= 9
    assert "http" not in page  # nothing to fetch: it opens offline


def test_text_files_become_paragraph_records_that_join_back_exactly(tmp_path):
    text = "First para\nline two\n\n\nSecond para\n\nThird\n"
    assert "".join(split_paragraphs(text)) == text
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(text)
    (tmp_path / "corpus" / "b.jsonl").write_text(
        json.dumps({"id": "x1", "text": "héllo"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    records = list(read_records(tmp_path / "corpus"))
    assert [r["doc_id"] for r in records] == ["a.txt:0", "a.txt:1", "a.txt:2", "x1",
                                              "b.jsonl:3"]
    assert records[3]["n_bytes"] == 6 and records[3]["source"] == "b.jsonl:1"


def test_url_sources_come_from_the_mirror_and_are_hash_checked(tmp_path, monkeypatch):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "corpus.txt").write_text("mirrored text\n")
    digest = hashlib.sha256(b"mirrored text\n").hexdigest()
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    url = "https://example.invalid/data/corpus.txt"
    assert fetch(url, digest, tmp_path / "dl").read_text() == "mirrored text\n"
    with pytest.raises(ValueError, match="does not match the expected"):
        fetch(url, "0" * 64, tmp_path / "dl")


def bad_sources(folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (file, expected message)."""
    cases = {
        "empty.txt": (b"", "empty"),
        "binary.txt": (bytes(range(256)) * 4, "binary"),
        "latin1.txt": ("naïve café\n".encode("latin-1"), "invalid UTF-8 at byte offset 2"),
        "not-json.jsonl": (b'{"text": "ok"}\n{not json}\n', "line 2: not valid JSON"),
        "no-text.jsonl": (b'{"text": "ok"}\n{"body": "x"}\n', "line 2: missing the 'text'"),
        "number.jsonl": (b'{"text": "ok"}\n{"text": 42}\n', "'text' must be a string"),
        "too-long.jsonl": (json.dumps({"text": "x" * 6000}).encode() + b'\n{"text": "ok"}\n',
                           "expect_column_value_lengths_to_be_between(text)"),
        "tiny.txt": (b"To be.\n\nOr not.\n", "corpus too small"),
    }
    out = {}
    for name, (content, message) in cases.items():
        (folder / name).write_bytes(content)
        out[name] = (str(folder / name), message)
    return out



INGEST_REFUSES = ["empty.txt", "binary.txt", "latin1.txt", "not-json.jsonl", "no-text.jsonl",
                  "number.jsonl"]


@pytest.mark.parametrize("name", INGEST_REFUSES)
def test_ingest_refuses_a_bad_source_in_one_line_and_writes_nothing(tmp_path, name):
    path, message = bad_sources(tmp_path)[name]
    with pytest.raises(ValueError, match=re.escape(message)):
        ingest(params_for(tmp_path), path)
    assert not [p for p in (tmp_path / "raw").rglob("*") if p.is_file()]  # nothing half-written


def test_ingest_writes_the_records_table(tmp_path):
    (tmp_path / "c.txt").write_text("one\n\ntwo\n")
    result = ingest(params_for(tmp_path), str(tmp_path / "c.txt"))
    frame = pd.read_parquet(result["path"])
    assert list(frame.columns) == ["doc_id", "text", "source", "n_bytes"]
    assert result["rows"] == 2 and frame["n_bytes"].sum() == 9


def test_validate_command_exit_codes(tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.jsonl"
    good.write_text("A fine paragraph.\n\nAnother one.\n")
    bad.write_text(json.dumps({"text": "x" * 200_000}) + "\n")

    def tinygpt(path):
        return subprocess.run([sys.executable, str(ROOT / "cli.py"), "validate", str(path)],
                              capture_output=True, text=True, cwd=tmp_path)

    ok = tinygpt(good)
    assert ok.returncode == 0 and "valid (2 records" in ok.stdout
    failed = tinygpt(bad)
    assert failed.returncode == 1
    assert "expect_column_value_lengths_to_be_between(text)" in failed.stderr
    assert not (tmp_path / "data").exists()  # the project's data is never touched


def test_chunks_add_up_to_one_verdict_and_one_report(tmp_path):
    """Validated a row group at a time (on Dask): a doc_id repeated in two chunks and bad
    rows in different chunks come out as one verdict naming each, as one whole table would."""
    from tasks.chunks import MIN_CHUNKS_PER_WORKER
    from tasks.ingest import write_records

    records = [{"doc_id": f"d{i}", "text": f"paragraph {i}", "source": "f"} for i in range(40)]
    records[3]["doc_id"] = records[37]["doc_id"] = "twice"
    records[5]["text"], records[33]["text"] = "x" * 201, "y" * 300
    for record in records:
        record["n_bytes"] = len(record["text"].encode())
    write_records(records, tmp_path / "raw", chunk_bytes=32)
    groups = pq.ParquetFile(tmp_path / "raw" / "corpus.parquet").num_row_groups
    assert groups >= 2 * MIN_CHUNKS_PER_WORKER  # on Dask with two workers
    with pytest.raises(DataValidationError) as err:
        validate(params_for(tmp_path))
    message = str(err.value)
    assert "data validation failed (40 records)" in message
    assert "expect_column_values_to_be_unique(doc_id): 2 row(s) fail" in message
    assert "expect_column_value_lengths_to_be_between(text): 2 row(s) fail, e.g. d5" in message
    assert "control_share" not in message
    page = (tmp_path / "reports" / "validation.html").read_text()
    assert "40 records" in page and page.count("<td class=failed>failed</td>") == 2
    pages = list((tmp_path / "reports" / "data_docs" / "validations").rglob("*.html"))
    assert len(pages) == 1  # one Data Docs page for the whole table
    shown = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", pages[0].read_text())))
    assert "values must be unique. 2 unexpected values found. 5% of 40 total rows" in shown


def test_a_training_split_that_fills_a_window_only_with_the_calibration_tokens_is_refused():
    manifest = {"train": {"tokens": 200}, "val": {"tokens": 200}}
    check_windows(manifest, block_size=128, calibration_share=0.0)
    with pytest.raises(ValueError, match=r"129 of them held out for calibration"):
        check_windows(manifest, block_size=128, calibration_share=0.02)
