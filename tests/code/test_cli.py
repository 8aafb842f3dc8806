"""The quick path through the `tinygpt` command, end to end, and its error messages."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import build_parser, main
from tests.scratch import ROOT
from tests.serve.conftest import free_port

BIN = Path(sys.executable).parent
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


def test_export_hf_writes_the_defaults_as_a_qwen3_folder(trained_run, capsys):
    out = trained_run / "hf"
    assert main(["export-hf", "--checkpoint", str(trained_run / "run" / "best"),
                 "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3"
    assert capsys.readouterr().out.startswith("wrote a Hugging Face Qwen3ForCausalLM folder")
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


def wrong_invocations(tmp_path, busy_port: int) -> list[tuple[list[str], str]]:
    """Mistakes a newcomer makes, each with the one line that must answer it."""
    (tmp_path / "list-section.yaml").write_text("model: [1, 2]\n")
    (tmp_path / "broken.yaml").write_text("model:\n  n_layer: 2\n bad: : x\n")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "model.safetensors").write_bytes(b"not safetensors at all")
    (damaged / "config.json").write_text("{}")
    closed = f"http://127.0.0.1:{free_port()}"
    return [
        (["promote", "--version", "99"], "tinygpt has no version 99; it has no versions yet"),
        (["promote", "--version", "newest"], "tinygpt has no version or alias 'newest'"),
        (["reproduce", "--version", "7"], "tinygpt has no version 7"),
        (["generate", "hi", "--checkpoint", str(damaged)],
         f"{damaged}/model.safetensors is damaged"),
        (["retrain", "--params", str(tmp_path / "list-section.yaml")],
         "model: must be a section of key: value lines, got list [1, 2]"),
        (["retrain", "--params", str(tmp_path / "broken.yaml")],
         "broken.yaml: not valid YAML at line 3, column 2"),
        (["retrain", "--set", "data.val_fraction=abc"], "data.val_fraction must be float"),
        (["retrain", "--set", "train.max_step=3"], "did you mean train.max_steps?"),
        (["retrain", "--params", str(tmp_path / "nowhere.yaml")], "does not exist"),
        (["serve", "--port", str(busy_port)], f"port {busy_port} is taken on 127.0.0.1"),
        (["history", "--set", f"registry.tracking_uri={closed}"], f"{closed} does not answer"),
    ]


def test_wrong_invocations_are_answered_in_one_line_within_seconds(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        for argv, message in wrong_invocations(tmp_path, busy.getsockname()[1]):
            started = time.perf_counter()
            code = main(argv)
            seconds = time.perf_counter() - started
            err = capsys.readouterr().err.strip()
            assert code == 1, argv
            assert err.startswith("tinygpt: error: ") and "\n" not in err, (argv, err)
            assert message in err, (argv, err)
            assert seconds < 10, (argv, seconds)


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--debug", "retrain", "--set", "data.val_fraction=abc"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("tinygpt: error: data.val_fraction")


def test_a_wrong_set_is_refused_before_prefect_is_contacted(tmp_path):
    """With PREFECT_API_URL on a closed port, the mistake is still the answer, at once."""
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    started = time.perf_counter()
    done = subprocess.run([str(BIN / "tinygpt"), "retrain", "--set", "data.val_fraction=abc"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == ("tinygpt: error: data.val_fraction must be float, "
                                   "got 'abc'")
    assert time.perf_counter() - started < 10


def test_promote_checks_the_run_lock_before_its_imports(tmp_path):
    """A busy project is the answer at once, before MLflow, Prefect and pandas load (seconds,
    12 on a cold machine): Python's import log shows none of them loaded."""
    from tasks.lock import run_lock

    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    with run_lock(tmp_path / ".tinygpt" / "run.lock"):
        done = subprocess.run([str(BIN / "tinygpt"), "promote", "--version", "1"], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1
    assert lines[-1].startswith("tinygpt: error: another run holds this project"), lines[-1]
    imported = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    assert "cli" in imported or "tasks.lock" in imported, sorted(imported)[:20]
    assert not imported & {"mlflow", "prefect", "pandas", "torch"}


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
                ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """(path, parser, the help its parent lists) of every subcommand, nested ones too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*prefix, name), sub, listed.get(name)
                yield from subcommands(sub, (*prefix, name))


def test_every_subcommand_and_option_has_help_and_an_example():
    for path, sub, listed in subcommands(build_parser()):
        assert listed, f"tinygpt {' '.join(path)} has no help line"
        assert sub.epilog and sub.epilog.startswith("example: "), path
        assert "tinygpt" in sub.epilog, path
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                name = action.option_strings or action.dest
                assert action.help, f"tinygpt {' '.join(path)} {name} has no help"


def readme_commands() -> list[list[str]]:
    """The subcommand path of each `tinygpt ...` line in README's code blocks."""
    known = {path for path, _, _ in subcommands(build_parser())}
    found, in_code = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        words = line.strip().split()
        if not in_code or words[:1] != ["tinygpt"]:
            continue
        path = tuple(words[1:3]) if tuple(words[1:3]) in known else tuple(words[1:2])
        found.append(list(path))
    return found


def test_readme_names_every_subcommand_and_each_answers_help(capsys):
    paths = readme_commands()
    top = {path[0] for path, _, _ in subcommands(build_parser())}
    assert top <= {path[0] for path in paths}, top - {path[0] for path in paths}
    for path in paths:
        with pytest.raises(SystemExit) as done:
            main([*path, "--help"])
        assert done.value.code == 0, path
        assert "example: " in capsys.readouterr().out, path


def test_refusals_that_need_no_server_answer_within_two_seconds(tmp_path, monkeypatch):
    """As a newcomer meets them: a fresh process each (imports included), in a project
    whose local store holds versions, and in one with no store yet."""
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    stocked, empty = tmp_path / "stocked", tmp_path / "empty"
    (stocked / "mlflow").mkdir(parents=True)
    empty.mkdir()
    uri = f"sqlite:///{stocked / 'mlflow' / 'mlflow.db'}"
    store = MlflowClient(tracking_uri=uri, registry_uri=uri)
    store.create_registered_model("tinygpt")
    for _ in range(2):
        store.create_model_version("tinygpt", source=str(tmp_path))
    for cwd, missing in ((stocked, "its latest is version 2"),
                         (empty, "it has no versions yet")):
        for argv, message in [
                (["promote", "--version", "7"], f"tinygpt has no version 7; {missing}"),
                (["reproduce", "--version", "7"], f"tinygpt has no version 7; {missing}"),
                (["promote", "--version", "newest"], "has no version or alias 'newest'"),
                (["validate", "my-corpus.txt"], "my-corpus.txt: no such file or folder"),
                (["retrain", "--recipe", "nope"], "no recipe 'nope'"),
                (["retrain", "--set", "train.max_step=3"], "did you mean train.max_steps?")]:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *argv], cwd=cwd,
                                  capture_output=True, text=True, timeout=60)
            seconds = time.perf_counter() - started
            assert done.returncode == 1 and message in done.stderr, (argv, done.stderr)
            assert seconds < 2, (argv, f"{seconds:.1f} s")


def test_a_misspelt_command_gets_a_suggestion_and_help_shows_defaults_and_version(capsys):
    with pytest.raises(SystemExit):
        main(["retrian"])
    assert "invalid choice: 'retrian'; did you mean retrain?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tokenizer", "train", "--kind", "bpx"])
    assert "did you mean bpe?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--version"])
    assert re.fullmatch(r"tinygpt \d+\.\d+\.\d+\n", capsys.readouterr().out)
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "port to listen on (default: 8000)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "(default: params.yaml's sample.temperature, 0.8)" in shown
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.count("Train, evaluate, version, register and serve") == 1


def test_status_says_where_a_version_lives_when_the_other_store_holds_it(tmp_path,
                                                                         monkeypatch):
    """Reading a server, the embedded store (a real SQLite registry) that holds the
    workspace's dvc.lock is named; reading the embedded store beside a team stack's folder,
    the stack is."""
    from mlflow import MlflowClient

    import registry
    from gpt.config import load_params
    from gpt.files import sha256_file
    from tasks.status import elsewhere, registry_lines

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.lock").write_text("stages: {}\n")
    params = load_params()
    uri = registry.embedded_uri(params)
    store = MlflowClient(tracking_uri=uri, registry_uri=uri)
    store.create_registered_model("tinygpt")
    store.create_model_version("tinygpt", source=str(tmp_path),
                               tags={"dvc_lock_digest": sha256_file(tmp_path / "dvc.lock")})
    stack_dir = tmp_path / ".stack"
    monkeypatch.setattr(registry, "USER_TRACKING_URI", "http://127.0.0.1:5000")
    assert registry_lines(params, stack_dir)[0] == "reading the MLflow server http://127.0.0.1:5000"
    assert "also holds 1 version(s) of tinygpt (the latest 1)" in registry_lines(params,
                                                                                 stack_dir)[1]
    digest = sha256_file(tmp_path / "dvc.lock")
    assert elsewhere(params, digest, stack_dir) == "it is version 1 of the embedded store"
    monkeypatch.setattr(registry, "USER_TRACKING_URI", None)
    stack_dir.mkdir()
    assert registry_lines(params, stack_dir) == [
        f"reading the embedded store {uri}",
        "a team stack was used here (" + str(stack_dir) + "/) and is not read (it is down, or "
        "TINYGPT_STACK=off): `tinygpt stack up` reads its registry"]
    assert "team stack's registry" in elsewhere(params, "another digest", stack_dir)


def test_the_command_line_imports_the_registry_only_after_the_stacks_variables_are_set():
    """registry reads MLFLOW_TRACKING_URI when imported: imported with cli, it would miss the
    stack's, which main() sets from .stack/stack.env, and read the embedded store."""
    code = "import sys, cli; print('registry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "False"


def test_status_names_each_kinds_champion_by_its_own_metric():
    """An sft champion's exact match is not printed as "val bits/byte" (it once was)."""
    from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

    from gpt.config import load_params
    from tasks.status import champion_line

    def champion(kind: str, **scores: str) -> ModelVersion:
        tags = [ModelVersionTag(k, v) for k, v in {"kind": kind, "data_digest": "d" * 64,
                                                     **scores}.items()]
        return ModelVersion("m", "3", creation_timestamp=0, tags=tags)

    params = load_params(ROOT / "params.yaml")
    assert ": exact match 0.474000, registered" in champion_line(
        params, champion("sft", exact_match="0.474000", completion_loss="0.9"))
    for tag in ("text", "pretrain"):  # "pretrain": how text versions were tagged before
        assert ": val bits per byte 2.150000, registered" in champion_line(
            params, champion(tag, val_bits_per_byte="2.150000", val_loss="1.4"))


def test_serve_options_default_to_the_services_settings():
    """`tinygpt serve`'s defaults are serve.settings.Settings', not a second copy of them."""
    from serve.settings import Settings

    args = build_parser().parse_args(["serve"])
    declared = Settings()
    assert (args.weights, args.poll_seconds, args.max_concurrency, args.max_queue) == (
        declared.weights, declared.poll_seconds, declared.max_concurrency, declared.max_queue)
    assert args.upload_folder_mb * 2**20 == declared.max_upload_dir_bytes


def test_each_command_record_is_one_subcommand_that_runs_its_handler():
    """A command is one record (cli.COMMANDS): its help, arguments, example, handler and stack
    use; the parser is built from the records alone."""
    from cli import COMMANDS, GROUPS

    parsers = {" ".join(path): sub for path, sub, _ in subcommands(build_parser())}
    assert set(parsers) == {c.name for c in COMMANDS} | set(GROUPS)
    for command in COMMANDS:
        assert parsers[command.name].get_default("record") is command
        assert parsers[command.name].epilog == f"example: {command.example}"
