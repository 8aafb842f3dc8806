"""Fine-tuning through the one retraining flow (`data.kind=sft`) on real Prefect, MLflow, DVC
and GE: from scratch and from the registered pretrained champion, with accuracy measured on
held-out verifiable tasks; like pretraining it runs DVC stages, hits the cache on an unchanged
re-run and puts its outputs back when a run fails."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from flows.retrain import retrain
from gpt.config import load_params
from gpt.files import sha256_tree
from gpt.sft_data import python_tasks
from gpt.tokenizer import load_tokenizer
from registry import client, load_version
from tasks.kinds import KINDS
from tasks.validate import DataValidationError
from tests.pipeline.conftest import dvc, dvc_changes

SMALL = ["data.kind=sft", "sft.records=600", "sft.train.max_steps=40",
         "sft.train.eval_interval=20", "sft.train.batch_size=16", "sft.model.n_layer=1",
         "sft.model.n_embd=32", "sft.model.n_head=2", "sft.max_new_tokens=8"]
STAGES = KINDS["sft"].stages
OUTPUTS = ("sft/data/raw", "sft/data/validated", "sft/data/tokenizer", "sft/data/tokens",
           "sft/data/model")


def registry():
    return client(load_params(overrides=["data.kind=sft"]))


def output_digests() -> dict[str, str]:
    return {folder: sha256_tree(folder) for folder in OUTPUTS}


@pytest.fixture(scope="module")
def from_scratch(project):
    return retrain(overrides=SMALL)


@pytest.fixture(scope="module")
def rerun(from_scratch):
    """The same data and parameters again."""
    return retrain(overrides=SMALL)


def test_finetune_from_scratch_registers_under_its_own_name(from_scratch):
    mlflow_client = registry()
    assert from_scratch["model"] == "tinygpt-sft" and from_scratch["promoted"]
    tags = mlflow_client.get_model_version("tinygpt-sft", from_scratch["version"]).tags
    assert tags["kind"] == "sft" and tags["base_version"].startswith("none")
    metrics = from_scratch["metrics"]
    assert metrics["split"] == "test" and metrics["records"] > 20
    assert 0.0 <= metrics["exact_match"] <= 1.0
    assert float(tags["exact_match"]) == pytest.approx(metrics["exact_match"], abs=1e-6)
    assert set(metrics["accuracy_by_task"]) >= {"add", "sort list", "reverse word"}
    run = mlflow_client.get_run(from_scratch["run_id"])
    assert "exact_match" in run.data.metrics and "completion_loss" in run.data.metrics
    assert run.data.params["train.max_steps"] == "40"


def test_the_registered_fine_tuned_pyfunc_answers_in_completion_mode(from_scratch, project):
    import mlflow
    import pandas as pd

    from gpt.checkpoint import load_model
    from gpt.sft import complete
    from gpt.tokenizer import load_tokenizer

    prompt = pd.read_parquet(project / "sft/data/tokens/test.parquet")["prompt"].iloc[0]
    pyfunc = mlflow.pyfunc.load_model("models:/tinygpt-sft@champion")
    answer = pyfunc.predict(pd.DataFrame({"prompt": [prompt]}),
                            params={"max_new_tokens": 8, "temperature": 0.0})["completion"][0]
    best = project / "sft/data/model/best"
    assert answer == complete(load_model(best), load_tokenizer(best), prompt, 8)


def test_finetune_outputs_are_versioned_by_its_dvc_stages(from_scratch, project):
    """In the fine-tuning DVC project, sft/; the pretraining one's status never shows them."""
    lock = (project / "sft" / "dvc.lock").read_text()
    for stage in STAGES:
        assert f"  {stage}:" in lock, stage
    # Outputs committed; the lock holds the values SMALL set, so those differ from params.yaml
    assert dvc_changes(*STAGES, cwd=project / "sft") == {
        "outs": set(), "deps": set(),
        "params": {"sft.records", "sft.train", "sft.model", "sft.max_new_tokens"}}
    assert "in sync" in dvc("status", "--cloud", *STAGES, cwd=project / "sft")
    assert not any(stage in dvc("status", cwd=project) for stage in STAGES)
    version = registry().get_model_version("tinygpt-sft", from_scratch["version"])
    assert version.tags["dvc_lock_digest"] == from_scratch["dvc_lock_digest"]


def test_an_unchanged_rerun_takes_tokenize_and_encode_from_the_cache(rerun):
    assert {"tokenize", "encode"} <= set(rerun["cached"])
    assert rerun["version"] == "2"


def test_a_failed_finetune_puts_its_outputs_back_and_registers_nothing(rerun, project,
                                                                      tmp_path):
    before = output_digests()
    versions = len(registry().search_model_versions("name='tinygpt-sft'"))
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"prompt": "2+2=", "completion": "4"}) + "\n"
                   + json.dumps({"prompt": "3+3="}) + "\n")
    with pytest.raises(DataValidationError, match=r"not_be_null\(completion\).*line 2"):
        retrain(overrides=[*SMALL, f"sft.dataset={bad}"])
    assert output_digests() == before
    assert len(registry().search_model_versions("name='tinygpt-sft'")) == versions
    assert dvc_changes(*STAGES, cwd=project / "sft")["outs"] == set()
    assert Path("sft/data/raw/pairs.jsonl").read_text() != bad.read_text()


def test_finetune_from_the_pretrained_champion_reuses_its_tokenizer(rerun, project):
    retrain(overrides=["model.block_size=256"])  # a base whose context fits the code records
    scored_to_the_end = [o for o in SMALL if not o.startswith("sft.max_new_tokens")]
    tuned = retrain(overrides=[*scored_to_the_end, "sft.init=models:/tinygpt@champion",
                               "sft.dataset=python", "sft.fallback=true"])
    tags = registry().get_model_version("tinygpt-sft", tuned["version"]).tags
    assert tags["base_version"] == "1"
    metrics = tuned["metrics"]
    assert {"code_valid", "code_match", "fallback_share"} <= set(metrics)
    served = load_version("tinygpt-sft", tuned["version"])  # carries the answers it falls to
    train = pd.read_parquet(project / "sft/data/tokens/train.parquet")
    assert served.fallback.answers == train["completion"].tolist()
    tokenizer = load_tokenizer(project / "sft/data/tokenizer")
    longest = max(len(tokenizer.encode(r["code"])) for r in python_tasks())
    assert metrics["max_new_tokens"] == longest + 1  # room for every answer and its end
    vocab = json.loads((project / "sft/data/tokenizer/special_tokens.json").read_text())
    assert set(vocab) == {"<|endoftext|>", "<|prompt|>", "<|completion|>", "<|pad|>"}
    base_vocab = json.loads((project / "data/tokenizer/vocab.json").read_text())
    assert json.loads((project / "sft/data/tokenizer/vocab.json").read_text()).keys() >= \
        base_vocab.keys() - vocab.keys()
