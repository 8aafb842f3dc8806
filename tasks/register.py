"""register: log the best checkpoint as an MLflow pyfunc and register it as a model version."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from prefect import task

from tasks.common import path_of, read_json, retry_transient, section
from tasks.encode import MANIFEST
from tasks.tracking import client, connect, registry_settings

PYFUNC_FILE = Path(__file__).resolve().parents[1] / "serve" / "pyfunc_model.py"


def git_commit() -> str:
    """HEAD's commit, with '-dirty' when tracked files have uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def signature():
    """A `prompt` string column in, a `completion` string column out, sampling params."""
    import pandas as pd
    from mlflow.models import infer_signature

    from serve.pyfunc_model import PARAM_DEFAULTS

    return infer_signature(pd.DataFrame({"prompt": ["ROMEO:"]}),
                           pd.DataFrame({"completion": ["..."]}), params=PARAM_DEFAULTS)


def register_checkpoint(params: dict[str, Any], run_id: str, checkpoint: Path,
                        model_name: str, tags: dict[str, str], example_prompt: str = "ROMEO:",
                        mode: str = "text") -> dict[str, Any]:
    """Log checkpoint as the pyfunc in run_id, register it, tag the version."""
    import mlflow
    import pandas as pd

    connect(params)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_FILE), artifacts={"checkpoint": str(checkpoint)},
            signature=signature(), input_example=pd.DataFrame({"prompt": [example_prompt]}),
            model_config={"mode": mode}, registered_model_name=model_name)
    version = str(info.registered_model_version)
    mlflow_client = client(params)
    for key, value in {"git_commit": git_commit(), "run_id": run_id, **tags}.items():
        mlflow_client.set_model_version_tag(model_name, version, key, value)
    return {"name": model_name, "version": version, "model_uri": info.model_uri, "tags": tags}


def register(params: dict[str, Any], run_id: str, metrics: dict[str, float]) -> dict[str, Any]:
    """Register the pretrained model with its data provenance and val bits per byte."""
    manifest = read_json(path_of(params, "tokens") / MANIFEST)
    tags = {
        "kind": "pretrain", "data_digest": manifest["data_digest"],
        "tokenizer_digest": manifest["tokenizer_digest"],
        "val_text_digest": manifest["val"]["text_digest"],
        "val_bits_per_byte": f"{metrics['val_bits_per_byte']:.6f}",
        "val_loss": f"{metrics['val_loss']:.6f}",
    }
    return register_checkpoint(params, run_id, path_of(params, "model") / "best",
                               registry_settings(params)["model_name"], tags)


def register_sft(params: dict[str, Any], run_id: str, metrics: dict[str, Any],
                 base_version: str | None) -> dict[str, Any]:
    """Register a fine-tuned model under its own name, its base version as a tag."""
    manifest = read_json(path_of(params, "tokens") / MANIFEST)
    tags = {"kind": "sft", "base_version": base_version or "none (from scratch)",
            "test_digest": manifest["test_digest"],
            "exact_match": f"{metrics['exact_match']:.6f}",
            "completion_loss": f"{metrics['completion_loss']:.6f}"}
    import pandas as pd

    name = section(params, "sft").get("model_name", "tinygpt-sft")
    prompts = pd.concat([pd.read_parquet(path_of(params, "tokens") / f"{split}.parquet")["prompt"]
                         for split in ("test", "val")])
    example = str(prompts.iloc[0])
    return register_checkpoint(params, run_id, path_of(params, "model") / "best", name, tags,
                               example_prompt=example, mode="completion")


register_task = task(register, name="register", retries=2, retry_delay_seconds=5,
                     retry_condition_fn=retry_transient)
register_sft_task = task(register_sft, name="register-sft", retries=2, retry_delay_seconds=5,
                         retry_condition_fn=retry_transient)
