"""The quick path through the `tinygpt` command, end to end, and its error messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from cli import main
from tests.conftest import ROOT

TINY = ["--set", "tokenizer.vocab_size=300", "--set", "model.n_layer=1", "--set",
        "model.n_embd=32", "--set", "model.n_head=2", "--set", "model.block_size=32",
        "--set", "train.max_steps=6", "--set", "train.eval_interval=3", "--set",
        "train.batch_size=4", "--set", "train.log_interval=3", "--set", "sample.max_new_tokens=20"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shakespeare):
    folder = tmp_path_factory.mktemp("cli")
    corpus = folder / "corpus.txt"
    corpus.write_text(shakespeare[:60_000], encoding="utf-8")
    assert main(["train", "--input", str(corpus), "--out", str(folder / "run"), *TINY]) == 0
    return folder


def test_train_writes_checkpoints_tokenizer_and_metrics(trained_run):
    run = trained_run / "run"
    for name in ("model.safetensors", "config.json", "vocab.json", "merges.txt"):
        assert (run / "best" / name).is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6 and 0 < metrics["val_bits_per_byte"] < 10


def test_generate_streams_a_continuation(trained_run, capsys):
    code = main(["generate", "ROMEO:", "--checkpoint", str(trained_run / "run"),
                 "--max-new-tokens", "12", "--seed", "1", "--temperature", "0.9"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("ROMEO:") and len(out) > len("ROMEO:\n")


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_generate_reports_the_decode_rate_and_the_weights(trained_run, capsys, weights):
    code = main(["generate", "ROMEO:", "--checkpoint", str(trained_run / "run"),
                 "--max-new-tokens", "12", "--temperature", "0", "--weights", weights, "--stats"])
    last = capsys.readouterr().out.splitlines()[-1]
    assert code == 0
    assert re.fullmatch(rf"decode: \d+\.\d tok/s \(weights {weights}, \d+\.\d MB\)", last), last


def test_export_hf_writes_a_gpt2_folder(trained_run, capsys):
    out = trained_run / "hf"
    assert main(["export-hf", "--checkpoint", str(trained_run / "run" / "best"),
                 "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    assert (out / "vocab.json").is_file() and (out / "model.safetensors").is_file()


def test_tokenizer_train_command(tmp_path, shakespeare_path, capsys):
    assert main(["tokenizer", "train", "--input", str(shakespeare_path), "--vocab-size", "512",
                 "--out", str(tmp_path)]) == 0
    assert len((tmp_path / "merges.txt").read_text().splitlines()) == 1 + 512 - 256 - 1


@pytest.mark.parametrize("kind", ["word", "regex"])
def test_tokenizer_train_command_for_the_word_kinds(kind, tmp_path, shakespeare_path, capsys):
    assert main(["tokenizer", "train", "--kind", kind, "--input", str(shakespeare_path),
                 "--vocab-size", "3000", "--min-frequency", "2", "--out", str(tmp_path)]) == 0
    assert "vocab 3000" in capsys.readouterr().out
    from gpt.tokenizer import UNKNOWN, load_tokenizer

    tok = load_tokenizer(tmp_path)
    assert type(tok).__name__ == f"{kind.capitalize()}Tokenizer" and UNKNOWN in tok.special_tokens


def test_the_quick_path_trains_and_samples_with_a_regex_tokenizer(tmp_path, shakespeare):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare[:60_000], encoding="utf-8")
    assert main(["train", "--input", str(corpus), "--out", str(tmp_path / "run"), *TINY,
                 "--set", "tokenizer.kind=regex", "--set", "tokenizer.min_frequency=2"]) == 0
    assert (tmp_path / "run" / "best" / "regex_words.json").is_file()
    result = subprocess.run(
        [sys.executable, "-m", "cli", "generate", "To be", "--checkpoint",
         str(tmp_path / "run"), "--max-new-tokens", "8", "--seed", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("To be") and len(result.stdout) > len("To be\n")


def bad_input_cases(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    return [
        (["tokenizer", "train", "--input", str(tmp_path / "missing.txt"), "--vocab-size", "512",
          "--out", str(tmp_path / "t")], "no such file"),
        (["tokenizer", "train", "--input", str(empty), "--vocab-size", "512", "--out",
          str(tmp_path / "t")], "empty"),
        (["train", "--input", str(latin1), "--out", str(tmp_path / "r")],
         "invalid UTF-8 at byte offset 3"),
        (["tokenizer", "train", "--input", str(latin1.with_name("ok.txt")), "--vocab-size",
          "100", "--out", str(tmp_path / "t")], "vocab_size must be between"),
        (["generate", "hi", "--checkpoint", str(tmp_path)], "is not a checkpoint folder"),
    ]


def test_bad_input_exits_non_zero_with_one_clear_line(tmp_path):
    (tmp_path / "ok.txt").write_text("some fine text\n" * 10)
    for argv, message in bad_input_cases(tmp_path):
        result = subprocess.run([sys.executable, str(ROOT / "cli.py"), *argv],
                                capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 1, argv
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and message in errors[0], result.stderr
        assert "Traceback" not in result.stderr


def test_vocab_size_above_the_limit_is_refused(tmp_path, capsys):
    (tmp_path / "ok.txt").write_text("text " * 100)
    assert main(["tokenizer", "train", "--input", str(tmp_path / "ok.txt"), "--vocab-size",
                 "70000", "--out", str(tmp_path / "t")]) == 1
    assert "65535" in capsys.readouterr().err


def test_same_data_and_seed_train_the_same_model(trained_run, tmp_path):
    assert main(["train", "--input", str(trained_run / "corpus.txt"), "--out",
                 str(tmp_path / "again"), *TINY]) == 0
    first = json.loads((trained_run / "run" / "metrics.json").read_text())
    second = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert first["val_loss"] == second["val_loss"]
    a = (trained_run / "run" / "best" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "again" / "best" / "model.safetensors").read_bytes()
