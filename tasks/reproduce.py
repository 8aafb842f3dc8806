"""reproduce: bring back the exact data, tokenizer and weights of a registered version.

Each flow run stores its dvc.lock as an artifact of its MLflow run and tags the model version
with the lock's digest. Writing that lock back and running `dvc pull` restores every output;
each restored file of the model and tokenizer is then checked against the version's registered
artifacts, hash for hash.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from gpt.config import Params, load_params, with_paths
from gpt.files import atomic_file, sha256_file, sha256_json
from registry import client, download_checkpoint, model_version
from tasks.common import BEST
from tasks.kinds import kind_of
from tasks.version import LOCK_FILE, METRICS_ARTIFACT, VersioningError, dvc, locked_stages

WEIGHTS = "model.safetensors"


def check_restored(params: Params, checkpoint: Path) -> list[tuple[str, str]]:
    """(path, sha256) of each restored model and tokenizer file, each equal to its registered
    copy; VersioningError names the first that is not."""
    registered = sorted(checkpoint.iterdir())
    tokenizer = params.path("tokenizer")
    # Every file of the checkpoint in model/best, and those the tokenizer step also wrote.
    pairs = [(params.path("model") / BEST / source.name, source) for source in registered]
    pairs += [(tokenizer / source.name, source) for source in registered
              if (tokenizer / source.name).is_file()]
    restored = []
    for path, source in pairs:
        if not path.is_file():
            raise VersioningError(f"{path} was not restored")
        digest, expected = sha256_file(path), sha256_file(source)
        if digest != expected:
            raise VersioningError(f"{path} does not match the registered artifact "
                                  f"(sha256 {digest[:12]}, registered {expected[:12]})")
        restored.append((str(path), digest))
    return restored


def restore_metrics(params: Params, run_id: str, scratch: Path) -> None:
    """The metrics files the version's run recorded with its dvc.lock (they are in git, not
    in DVC's cache, so `dvc pull` cannot bring them back); a run older than that kept none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        kept = Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=METRICS_ARTIFACT, dst_path=str(scratch)))
    except (MlflowException, OSError):
        return
    for source in kept.iterdir():
        with atomic_file(params.path("metrics") / source.name) as tmp:
            shutil.copyfile(source, tmp)


def reproduce(params: Params, version: str) -> dict[str, Any]:
    """Restore the outputs of `version` (a number or an alias) and check them."""
    import mlflow

    name = params.model_name
    mlflow_client = client(params)
    found = model_version(mlflow_client, name, version)
    version = str(found.version)
    expected = found.tags.get("dvc_lock_digest")
    if not expected:
        raise VersioningError(f"{name} version {version} has no dvc_lock_digest tag")
    with tempfile.TemporaryDirectory() as scratch:
        lock = mlflow.artifacts.download_artifacts(
            run_id=found.run_id, artifact_path=LOCK_FILE, dst_path=scratch)
        if sha256_file(lock) != expected:
            raise VersioningError(f"the stored {LOCK_FILE} does not match the version's digest")
        kind = kind_of(params)
        shutil.copyfile(lock, kind.dvc_lock)
        dvc("pull", "--force", "--quiet", *locked_stages(kind), project=kind.dvc_project)
        restore_metrics(params, found.run_id, Path(scratch) / "metrics")
        files = check_restored(params, download_checkpoint(params, name, version,
                                                           Path(scratch) / "registered"))
    return {"version": version, "dvc_lock_digest": expected, "files": files,
            "git_commit": found.tags.get("git_commit", "unknown")}


def version_params(version, params_file: str | None = None) -> Params:
    """The parameters a version trained with: params.yaml plus its recorded overrides, refused
    unless their digest is the version's (another params.yaml: check out its commit)."""
    import json

    overrides = json.loads(version.tags.get("overrides", "[]"))
    params = load_params(params_file, overrides)
    if sha256_json(params.to_dict()) != version.tags.get("params_digest"):
        raise VersioningError(
            f"version {version.version} trained with other parameters than params.yaml "
            f"plus {overrides or 'no overrides'} gives (params_digest differs): `git checkout "
            f"{version.tags.get('git_commit', '?').removesuffix('-dirty')}` first")
    return params


def compare_weights(a: Path, b: Path) -> float:
    """The largest absolute difference between two safetensors files' tensors (0.0: equal)."""
    from safetensors.torch import load_file

    first, second = load_file(a), load_file(b)
    if first.keys() != second.keys():
        raise VersioningError(f"{a} and {b} hold different tensors")
    return max(float((first[k].float() - second[k].float()).abs().max()) for k in first)


def retrain_and_compare(params: Params, version: str,
                        params_file: str | None = None) -> dict[str, Any]:
    """Train again on the restored data with the version's parameters, in a scratch folder,
    and compare the weights and the scores with the restored (registered) ones."""
    import torch

    from tasks.train import fit, prepare_staging

    mlflow_client = client(params)
    registered = mlflow_client.get_model_version(params.model_name, version)
    run_params = version_params(registered, params_file)
    Path(".tinygpt").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=".tinygpt", prefix="retrain-") as scratch:
        again = with_paths(run_params, model=f"{scratch}/model")
        prepare_staging(again, again.path("model"), fresh=True)
        fit(again, again.path("model"), None, False)
        difference = compare_weights(params.path("model") / BEST / WEIGHTS,
                                     again.path("model") / BEST / WEIGHTS)
        score = kind_of(run_params).step("evaluate")
        scores = {"registered": score(run_params), "retrained": score(again)}
    metric = kind_of(run_params).metric
    return {"max_abs_difference": difference, "identical": difference == 0.0,
            "threads": torch.get_num_threads(), "metric": metric,
            **{f"{which}_{metric}": scores[which][metric] for which in scores}}
