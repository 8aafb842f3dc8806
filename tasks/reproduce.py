"""reproduce: bring back the exact data, tokenizer and weights of a registered version.

Each flow run stores its dvc.lock as an artifact of its MLflow run and tags the model version
with the lock's digest. Writing that lock back and running `dvc pull` restores every output.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from gpt.config import Params
from gpt.files import sha256_file
from registry import client
from tasks.version import LOCK_FILE, VersioningError, dvc, locked_stages


def reproduce(params: Params, version: str) -> dict[str, Any]:
    import mlflow

    name = params.model_name
    model_version = client(params).get_model_version(name, version)
    expected = model_version.tags.get("dvc_lock_digest")
    if not expected:
        raise VersioningError(f"{name} version {version} has no dvc_lock_digest tag")
    with tempfile.TemporaryDirectory() as scratch:
        lock = mlflow.artifacts.download_artifacts(
            run_id=model_version.run_id, artifact_path=LOCK_FILE, dst_path=scratch)
        if sha256_file(lock) != expected:
            raise VersioningError(f"the stored {LOCK_FILE} does not match the version's digest")
        shutil.copyfile(lock, LOCK_FILE)
    dvc("pull", "--force", "--quiet", *locked_stages())
    return {"version": version, "dvc_lock_digest": expected,
            "git_commit": model_version.tags.get("git_commit", "unknown")}
