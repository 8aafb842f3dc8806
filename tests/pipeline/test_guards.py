"""What may never reach `champion`: half-made versions and models that do not load; and a
run whose target is full stops with the workspace as it was."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flows.retrain import retrain
from gpt.config import load_params
from gpt.files import sha256_file, sha256_tree
from registry import (
    ALIAS_MOVES_EXPERIMENT,
    alias_history,
    client,
    ensure_experiment,
    register_checkpoint,
)
from tasks.gc import gc
from tasks.promote import PromotionError, promote
from tests.pipeline.conftest import sh
from tests.scratch import ROOT


@pytest.fixture(scope="module")
def champion(project) -> dict:
    return retrain()


def champion_version() -> str:
    return str(client(load_params()).get_model_version_by_alias("tinygpt", "champion").version)


def test_a_version_without_lineage_tags_is_refused_even_forced_and_gc_removes_it(champion):
    params = load_params()
    mlflow_client = client(params)
    source = mlflow_client.get_model_version("tinygpt", champion["version"]).source
    half = mlflow_client.create_model_version("tinygpt", source, run_id=champion["run_id"])
    with pytest.raises(PromotionError, match=f"version {half.version} lacks its lineage tags"):
        promote(params, str(half.version), force=True)
    assert champion_version() == champion["version"]
    listed = gc(params)
    assert any(line.startswith(f"tinygpt version {half.version} lacks") for line in
               listed["versions"])
    assert str(half.version) in {str(v.version) for v in
                                 mlflow_client.search_model_versions("name='tinygpt'")}
    gc(params, apply=True)
    assert str(half.version) not in {str(v.version) for v in
                                     mlflow_client.search_model_versions("name='tinygpt'")}
    assert gc(params)["versions"] == []


def test_forcing_a_version_that_does_not_load_moves_nothing(champion, tmp_path):
    params = load_params()
    broken = tmp_path / "broken"
    shutil.copytree("data/model/best", broken)
    (broken / "model.safetensors").unlink()
    version = register_copy(champion, broken)
    with pytest.raises(PromotionError, match="does not load"):
        promote(params, version, force=True)
    assert champion_version() == champion["version"]
    aliases = client(params).get_model_version("tinygpt", version).aliases
    assert aliases == []


def register_copy(champion: dict, folder: Path) -> str:
    """Register a checkpoint folder as a new version with the champion's lineage tags."""
    params = load_params()
    tags = client(params).get_model_version("tinygpt", champion["version"]).tags
    lineage = {k: v for k, v in tags.items() if k not in ("git_commit", "run_id")}
    return register_checkpoint(params, champion["run_id"], folder, "tinygpt", lineage)["version"]


def test_forcing_a_version_whose_weights_are_nan_moves_nothing(champion, tmp_path):
    nan = tmp_path / "nan"
    shutil.copytree("data/model/best", nan)
    weights = load_file(nan / "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
               for k, v in weights.items()}, nan / "model.safetensors")
    version = register_copy(champion, nan)
    with pytest.raises(PromotionError, match="non-finite weights"):
        promote(load_params(), version, force=True)
    assert champion_version() == champion["version"]
    assert client(load_params()).get_model_version("tinygpt", version).aliases == []


def test_registering_leaves_the_run_running_until_the_run_ends(champion):
    params = load_params()
    mlflow_client = client(params)
    run = mlflow_client.create_run(mlflow_client.get_experiment_by_name("tinygpt").experiment_id)
    register_copy({**champion, "run_id": run.info.run_id}, Path("data/model/best"))
    assert mlflow_client.get_run(run.info.run_id).info.status == "RUNNING"  # gc can find it
    mlflow_client.set_terminated(run.info.run_id, "KILLED")


def test_an_alias_move_cut_short_is_in_the_history_exactly_when_it_happened(champion):
    params = load_params()
    mlflow_client = client(params)
    moves = ensure_experiment(params, ALIAS_MOVES_EXPERIMENT)
    before = alias_history(params, "tinygpt", "champion")

    def opened(to_version: str):  # what move_alias writes first
        return mlflow_client.create_run(moves, tags={"model": "tinygpt", "alias": "champion",
                                                     "to_version": to_version, "reason": "t"})

    never = opened("999")
    mlflow_client.set_registered_model_alias("tinygpt", "champion", champion["version"])
    assert alias_history(params, "tinygpt", "champion") == before  # killed before the move
    mlflow_client.delete_run(never.info.run_id)
    opened(champion["version"])  # killed after the move, before closing its record
    assert alias_history(params, "tinygpt", "champion")[-1]["to_version"] == champion["version"]
    assert len(alias_history(params, "tinygpt", "champion")) == len(before) + 1


@pytest.fixture
def full_folder(tmp_path) -> Iterator[Path]:
    """A 256 KiB tmpfs, too small for one checkpoint; where mounting is not allowed, a file
    standing where the folder must be created (so writing there fails too)."""
    target = tmp_path / "full"
    target.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(target)],
                             capture_output=True).returncode == 0
    if not mounted:
        target.rmdir()
        target.write_text("not a folder")
    try:
        yield target
    finally:
        if mounted:
            subprocess.run(["umount", str(target)], check=True)


def test_a_full_target_stops_the_run_and_puts_everything_back(champion, full_folder):
    before = {"lock": sha256_file("dvc.lock"), "metrics": sha256_tree("metrics"),
              "model": sha256_tree("data/model")}
    versions = len(client(load_params()).search_model_versions("name='tinygpt'"))
    with pytest.raises(OSError):
        retrain(overrides=[f"paths.model={full_folder}/model", "train.max_steps=20"])
    assert {"lock": sha256_file("dvc.lock"), "metrics": sha256_tree("metrics"),
            "model": sha256_tree("data/model")} == before
    assert len(client(load_params()).search_model_versions("name='tinygpt'")) == versions
    assert champion_version() == champion["version"]


def test_gc_reclaims_the_artifacts_of_failed_runs_and_keeps_their_records(champion,
                                                                          full_folder):
    with pytest.raises(OSError):
        retrain(overrides=[f"paths.model={full_folder}/model", "train.max_steps=20"])
    params = load_params()
    failed = client(params).search_runs(
        [client(params).get_experiment_by_name("tinygpt").experiment_id],
        filter_string="attributes.status = 'FAILED'")[0]
    folder = Path(failed.info.artifact_uri.removeprefix("file://"))
    assert any(folder.rglob("*"))  # its Data Docs, at least
    listed = gc(params)["failed runs' artifacts"]
    assert any(failed.info.run_id in line for line in listed)
    gc(params, apply=True)
    assert not [p for p in folder.rglob("*") if p.is_file()]
    assert client(params).get_run(failed.info.run_id).info.status == "FAILED"
    assert gc(params)["failed runs' artifacts"] == []
    assert champion_version() == champion["version"]


def test_a_failed_run_in_a_fresh_clone_puts_back_what_was_there(champion, tmp_path,
                                                                monkeypatch):
    project = Path.cwd()
    sh("git", "add", "-A", cwd=project)  # dvc.lock as the team pushed it; no data, no cache
    sh("git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "v1",
       cwd=project)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(project), str(clone), cwd=tmp_path)
    monkeypatch.chdir(clone)
    (clone / "long.jsonl").write_text(json.dumps({"text": "x" * 6000}) + '\n{"text": "ok"}\n')
    lock = sha256_file("dvc.lock")
    with pytest.raises(ValueError, match="lengths_to_be_between"):
        retrain(source="long.jsonl")
    assert sha256_file("dvc.lock") == lock
    assert not [path for path in Path("data").rglob("*") if path.is_file()]  # as before


def test_promote_waits_for_the_lease_and_compares_again_when_the_champion_moved(champion,
                                                                               caplog):
    """Another promote holds the lease and moves `champion` to a better version meanwhile:
    this one waits, sees the champion it compared against is gone, compares again against
    the new one, and loses (compare-and-set, never a move based on a stale comparison)."""
    params, mlflow_client = load_params(), client(load_params())
    score = float(mlflow_client.get_model_version("tinygpt", champion["version"])
                  .tags["val_bits_per_byte"])
    better, best = (register_copy(champion, Path("data/model/best")) for _ in range(2))
    mlflow_client.set_model_version_tag("tinygpt", better, "val_bits_per_byte", str(score - 0.1))
    mlflow_client.set_model_version_tag("tinygpt", best, "val_bits_per_byte", str(score - 0.2))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from gpt.config import load_params\n"
         "from registry import move_alias\n"
         "from tasks.lock import promotion_lease\n"
         "with promotion_lease('tinygpt', shared=False):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(3)\n"
         f"    move_alias(load_params(), 'tinygpt', 'champion', '{best}', 'the other promote')\n"],
        cwd=Path.cwd(), env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="tinygpt"):
            decision = promote(params, better)
        waited = time.monotonic() - started
        assert holder.wait(30) == 0
        assert waited > 1.5, waited  # it waited for the holder
        assert "waiting for the promotion lease" in caplog.text
        assert f"champion moved from v{champion['version']} to v{best}" in caplog.text
        assert not decision["promoted"] and decision["champion"] == best, decision
        assert f"does not beat champion v{best}'s" in decision["reason"]
        assert champion_version() == best
    finally:
        holder.kill()
        mlflow_client.set_registered_model_alias("tinygpt", "champion", champion["version"])


def test_gc_removes_the_workspaces_of_dead_runs_and_keeps_a_live_ones(champion, tmp_path,
                                                                     monkeypatch):
    """A worker's workspaces (tasks/workspace.py): one whose run died, one whose run still
    holds its project's run lock (another process, as a run on this host would)."""
    root = tmp_path / "workspaces"
    monkeypatch.setenv("TINYGPT_WORKSPACES", str(root))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    dead, live = root / "run-dead", root / "run-live"
    for folder in (dead, live):
        (folder / "project" / ".tinygpt").mkdir(parents=True)
        (folder / "project" / ".tinygpt" / "run.lock").write_text("{}")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"handle = open({str(live / 'project' / '.tinygpt' / 'run.lock')!r}, 'a')\n"
        "fcntl.flock(handle, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        params = load_params()
        listed = gc(params)["workspaces"]
        assert len(listed) == 2 and all("state unknown" in line for line in listed)
        assert dead.exists() and live.exists()  # a dry run
        applied = gc(params, apply=True)["workspaces"]
        assert any(str(dead) in line and line.endswith("; removed") for line in applied)
        assert any(str(live) in line and "kept: its run is still going" in line
                   for line in applied)
        assert not dead.exists() and live.exists()
    finally:
        holder.kill()
        holder.wait()
