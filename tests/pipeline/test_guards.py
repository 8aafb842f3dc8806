"""What may never reach `champion`: half-made versions and models that do not load; and a
run whose target is full stops with the workspace as it was."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.retrain import retrain
from gpt.config import load_params
from gpt.files import sha256_file, sha256_tree
from registry import client, register_checkpoint
from tasks.gc import gc
from tasks.promote import PromotionError, promote


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
    tags = client(params).get_model_version("tinygpt", champion["version"]).tags
    lineage = {k: v for k, v in tags.items() if k not in ("git_commit", "run_id")}
    registered = register_checkpoint(params, champion["run_id"], broken, "tinygpt", lineage)
    with pytest.raises(PromotionError, match="does not load and generate"):
        promote(params, registered["version"], force=True)
    assert champion_version() == champion["version"]
    aliases = client(params).get_model_version("tinygpt", registered["version"]).aliases
    assert aliases == []


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
