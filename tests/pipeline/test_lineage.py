"""Lineage: a run on a clean checkout tags the clean commit with its parameters, each version
has a description and a model card, `reproduce` takes aliases and checks every file's hash,
and `champion` can be rolled back, with every alias move on record (and the service follows).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

import cli
from flows.retrain import retrain
from gpt.config import load_params
from gpt.files import sha256_json, sha256_tree
from registry import client, tracking_uri
from tasks.promote import PromotionError, rollback
from tasks.reproduce import reproduce, retrain_and_compare
from tasks.version import VersioningError
from tests.pipeline.conftest import BIN, dvc

FEWER_STEPS = ["train.max_steps=2", "train.eval_interval=2"]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def runs(project) -> dict:
    """A first run (champion) and a worse one forced to champion."""
    return {"first": retrain(), "forced": retrain(overrides=FEWER_STEPS, force_promote=True)}


def version_tags(version: str) -> dict[str, str]:
    return client(load_params()).get_model_version("tinygpt", version).tags


def test_runs_leave_git_clean_and_tag_the_clean_commit_with_params_and_overrides(runs):
    changed = {line[3:] for line in git("status", "--porcelain").splitlines()}
    assert changed <= {"dvc.lock", "metrics/"} | {f"metrics/{n}" for n in
                                                  ("train.json", "eval.json", "loss.csv")}
    head = git("rev-parse", "HEAD").strip()
    first, forced = version_tags(runs["first"]["version"]), version_tags(runs["forced"]["version"])
    assert first["git_commit"] == forced["git_commit"] == head  # no "-dirty"
    assert json.loads(first["overrides"]) == []
    assert json.loads(forced["overrides"]) == FEWER_STEPS
    assert first["params_digest"] == sha256_json(load_params().to_dict())
    assert forced["params_digest"] == sha256_json(load_params(overrides=FEWER_STEPS).to_dict())


def test_dvc_lock_records_the_parameters_the_run_used(runs):
    """The workspace holds the forced run, trained with train.max_steps=2: dvc.lock says 2,
    so `dvc status` tells that params.yaml (30) would not produce this model."""
    lock = yaml.safe_load(Path("dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["max_steps"] == 2
    assert load_params().train.max_steps == 30
    status = dvc("status", "train", cwd=Path.cwd())
    assert "params.yaml" in status and "modified" in status, status
    assert "tokenize" not in status  # stages the overrides did not touch stay clean


def test_a_dvc_repro_with_a_foreign_python_fails_in_one_line_and_changes_nothing(runs,
                                                                                  tmp_path):
    """`dvc repro` where `python` is not the project's (no venv on PATH): the stage fails
    with one line, and no output is deleted (every out is persist: true)."""
    (tmp_path / "python").symlink_to("/usr/bin/python3")  # Debian's, without our packages
    before = {out: sha256_tree(out) for out in ("data/model", "data/tokens", "metrics")}
    result = subprocess.run([str(BIN / "dvc"), "repro", "--force", "train"],
                            env={**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"},
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "lacks the project's packages" in result.stdout + result.stderr
    assert {out: sha256_tree(out) for out in before} == before


def test_dvc_exp_run_is_refused_in_one_line_and_changes_no_output(runs):
    before = {out: sha256_tree(out) for out in ("data/model", "data/tokens", "metrics")}
    result = subprocess.run([str(BIN / "dvc"), "exp", "run", "-S", "train.max_steps=3",
                             "train"], env={**os.environ, "PATH": f"{BIN}:/usr/bin:/bin"},
                            capture_output=True, text=True)
    git("checkout", "params.yaml")  # what -S wrote
    assert result.returncode != 0
    assert "`dvc exp run` is not how tinygpt runs experiments" in result.stdout + result.stderr
    assert {out: sha256_tree(out) for out in before} == before


def test_each_version_has_a_description_and_a_model_card(runs):
    mlflow_client = client(load_params())
    first = mlflow_client.get_model_version("tinygpt", runs["first"]["version"])
    bits = runs["first"]["metrics"]["val_bits_per_byte"]
    assert first.description.startswith("text model, 1x32, data ")
    assert f"val bits per byte {bits:.4f}" in first.description
    assert first.description.endswith("promoted: no champion yet")
    card_path = mlflow_client.download_artifacts(runs["first"]["run_id"], "model_card.md")
    card = Path(card_path).read_text()
    for heading in ("## Data", "## Training", "## Evaluation", "## Sample",
                    "## Intended use and limits", "## Reproduce"):
        assert heading in card
    assert first.tags["data_digest"] in card and first.tags["git_commit"] in card
    assert f"tinygpt reproduce --version {first.version}" in card


def test_drift_from_the_champion_is_measured_and_gates_a_run(runs, project):
    """Same data: no drift, in MLflow and the summary. Python source instead of Shakespeare
    with data.max_drift set: the run stops before training, naming the figures."""
    mlflow_client = client(load_params())
    assert runs["first"]["drift"] == {}  # no champion to compare with
    figures = runs["forced"]["drift"]
    assert figures["drift_js_divergence"] == 0 and figures["drift_unseen_chars"] == 0
    assert figures["drift_tokens_per_byte_ratio"] == pytest.approx(1.0)
    logged = mlflow_client.get_run(runs["forced"]["run_id"]).data.metrics
    assert logged["drift_js_divergence"] == 0
    assert mlflow_client.download_artifacts(runs["first"]["run_id"], "data_profile.json")

    code = "\n\n".join(path.read_text() for path in sorted(Path("tasks").glob("*.py")))
    (project / "code.txt").write_text(code[:40_000])
    champion, versions = registry_state()
    with pytest.raises(Exception, match=r"moved too far from champion v2's: byte divergence"):
        retrain(overrides=["data.source=code.txt", "data.max_drift=0.05"])
    assert registry_state() == (champion, versions)


def registry_state() -> tuple[str, int]:
    mlflow_client = client(load_params())
    champion = mlflow_client.get_model_version_by_alias("tinygpt", "champion").version
    return str(champion), len(mlflow_client.search_model_versions("name = 'tinygpt'"))


def test_reproduce_by_alias_restores_and_checks_every_file(runs, capsys):
    """`--version champion` names the forced version; each model and tokenizer file is
    printed with its hash, equal to the registered one; a tampered registry is caught."""
    assert cli.main(["reproduce", "--version", "champion"]) == 0
    out = capsys.readouterr().out
    assert f"of version {runs['forced']['version']} " in out
    for name in ("model.safetensors", "config.json", "vocab.json", "merges.txt"):
        assert any(line.endswith(f"data/model/best/{name}") and len(line.split()[0]) == 64
                   for line in out.splitlines()), (name, out)

    params = load_params()
    stored = client(params).get_model_version_download_uri("tinygpt", runs["first"]["version"])
    config = next(Path(stored.removeprefix("file://")).rglob("best/config.json"))
    original = config.read_bytes()
    config.write_bytes(original.replace(b"}", b', "tampered": true}', 1))
    try:
        with pytest.raises(VersioningError, match=r"data/model/best/config.json does not match"):
            reproduce(params, runs["first"]["version"])
    finally:
        config.write_bytes(original)


def test_reproduce_retrain_gives_bit_identical_weights_on_the_same_cpu(runs, capsys):
    """The first version again, trained from its restored data with its recorded overrides
    (none) and params.yaml: the same weights, bit for bit, and the same val bits per byte."""
    assert cli.main(["reproduce", "--version", runs["first"]["version"], "--retrain"]) == 0
    out = capsys.readouterr().out
    print(out.splitlines()[-1])
    assert "retrained: bit-identical weights" in out, out
    bits = f"{runs['first']['metrics']['val_bits_per_byte']:.6f}"
    assert f"val_bits_per_byte {bits} registered, {bits} retrained" in out


def test_reproduce_retrain_refuses_other_parameters_than_the_version_had(runs, tmp_path):
    """params.yaml changed since the version trained: it says which commit to check out."""
    changed = tmp_path / "params.yaml"
    changed.write_text(Path("params.yaml").read_text().replace("max_steps: 30",
                                                               "max_steps: 31"))
    with pytest.raises(VersioningError, match=r"params_digest differs.*git checkout"):
        retrain_and_compare(load_params(), runs["first"]["version"], str(changed))


def test_rollback_moves_champion_back_the_service_follows_and_history_has_every_move(
        runs, project, capsys):
    from tests.serve.conftest import start_service, wait_for

    first, forced = runs["first"]["version"], runs["forced"]["version"]
    params = load_params()
    proc, url = start_service(tracking_uri(params), project)
    try:
        wait_for(f"{url}/health")
        assert httpx.get(f"{url}/health").json()["version"] == forced
        assert cli.main(["promote", "--rollback"]) == 0
        assert f"rolled back from version {forced} to version {first}" in capsys.readouterr().out
        champion = client(params).get_model_version_by_alias("tinygpt", "champion")
        assert str(champion.version) == first
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health").json()["version"] != first:
            assert time.monotonic() < deadline, "the service never followed the rollback"
            time.sleep(0.5)
    finally:
        proc.stop()

    assert cli.main(["history", "--alias", "champion"]) == 0
    table = capsys.readouterr().out.splitlines()
    print("\n".join(["", *table]))
    assert table[0].startswith("alias moves recorded in the embedded store sqlite:///")
    assert table[1].startswith("when (UTC)")
    rows = table[2:]
    moves = [line.split(maxsplit=8) for line in rows]
    assert [(m[4], m[6]) for m in moves] == [("-", first), (first, forced), (forced, first)]
    assert "promoted: no champion yet" in rows[0] and f"run {runs['first']['run_id']}" in rows[0]
    assert "forced (" in rows[1]
    assert f"rollback: v{forced} -> v{first}" in rows[2] and "manual (" in rows[2]

    with pytest.raises(PromotionError, match="nothing to roll back to"):
        rollback(params)  # rolled back to the first champion: nothing before it
