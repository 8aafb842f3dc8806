"""The fine-tuning data suite: every broken record is reported by line number."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.scratch import ROOT


def tinygpt_validate(tmp_path, lines):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines)
                    + "\n")
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), "validate", str(path),
                           "--kind", "sft"], capture_output=True, text=True, cwd=tmp_path)


GOOD = [{"prompt": "2+2=", "completion": "4"}, {"prompt": "reverse 'ab'", "code": "ba"}]


def test_good_pairs_pass(tmp_path):
    result = tinygpt_validate(tmp_path, GOOD)
    assert result.returncode == 0, result.stderr
    assert "valid (2 records" in result.stdout


# Each way a record can break, and the expectation that must name its line (3, 4, ...).
BROKEN = [
    ({"prompt": "3+3="}, "expect_column_values_to_not_be_null(completion)"),
    ({"prompt": 5, "completion": "5"}, "expect_column_values_to_be_of_type(prompt)"),
    ({"prompt": "x", "completion": ""}, "expect_column_value_lengths_to_be_between(completion)"),
    ({"prompt": " \n\t", "completion": "4"}, "expect_column_values_to_not_match_regex(prompt)"),
    ({"prompt": "x" * 300, "completion": "y"}, "expect_column_values_to_be_between(n_tokens)"),
]


def test_each_broken_record_is_named_by_line(tmp_path):
    """One file, one run: every breakage is reported by its own expectation and line."""
    result = tinygpt_validate(tmp_path, [*GOOD, *(bad for bad, _ in BROKEN)])
    assert result.returncode == 1
    for line, (_, expectation) in enumerate(BROKEN, start=len(GOOD) + 1):
        assert f"- {expectation}: 1 row(s) fail, e.g. line {line} " in result.stderr, \
            result.stderr


def test_a_line_that_is_not_json_is_refused_with_its_number(tmp_path):
    result = tinygpt_validate(tmp_path, [*GOOD, "{oops"])
    assert result.returncode == 1 and "line 3: not valid JSON" in result.stderr


def test_prompt_code_pairs_without_a_split_are_split_by_prompt_hash_for_finetuning(tmp_path):
    """The 002 write-up's plain {"prompt", "code"} JSONL: what validate accepts, finetune can
    train on (train and val records, by the prompt's hash, as the built-in sets)."""
    from gpt.sft_data import split_of
    from tasks.ingest import read_pairs

    lines = [{"prompt": f"add {i} and {i + 1}", "code": f"print({i} + {i + 1})"}
             for i in range(60)]
    result = tinygpt_validate(tmp_path, lines)
    assert result.returncode == 0, result.stderr
    frame = read_pairs(tmp_path / "pairs.jsonl")
    assert list(frame["split"]) == [split_of(line["prompt"]) for line in lines]
    assert {"train", "val"} <= set(frame["split"])


def test_a_set_without_test_records_is_scored_and_tagged_on_val(tmp_path, monkeypatch):
    """Evaluation, the `test_digest` tag and promotion's re-score of the champion all read
    the same records: the test split, or val when a user's set has none (it used to tag the
    empty test split's digest, and re-score the champion on it as 0.0)."""
    import shutil

    import pandas as pd

    from gpt.config import load_params
    from gpt.files import read_json, sha256_json
    from tasks.encode import encode, scored_pairs
    from tasks.ingest import ingest
    from tasks.tokenize import tokenize
    from tasks.validate import validate

    records = [{"prompt": f"{a}+{a}=", "completion": str(2 * a),
                "split": "val" if a % 5 == 1 else "train"} for a in range(40)]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    params = load_params(None, ["data.kind=sft", f"sft.dataset={source}"])
    for step in (ingest, validate, tokenize, encode):
        step(params)
    tokens = params.path("tokens")
    val = [[r["prompt"], r["completion"]] for r in records if r["split"] == "val"]
    assert scored_pairs(tokens).name == "val.parquet"
    assert len(pd.read_parquet(scored_pairs(tokens))) == len(val) == 8
    assert read_json(tokens / "manifest.json")["test_digest"] == sha256_json(val)
