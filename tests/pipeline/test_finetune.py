"""The fine-tuning flow on real Prefect, MLflow and GE: from scratch, and from the registered
pretrained champion, with accuracy measured on held-out verifiable tasks."""

from __future__ import annotations

import json

import pytest

from flows.finetune import finetune
from flows.retrain import retrain
from gpt.config import load_params
from tasks.tracking import client

SMALL = ["sft.records=600", "sft.train.max_steps=40", "sft.train.eval_interval=20",
         "sft.train.batch_size=16", "sft.model.n_layer=1", "sft.model.n_embd=32",
         "sft.model.n_head=2", "sft.max_new_tokens=8"]


@pytest.fixture(scope="module")
def from_scratch(project):
    return finetune(overrides=SMALL)


def test_finetune_from_scratch_registers_under_its_own_name(from_scratch):
    mlflow_client = client(load_params())
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


def test_the_registered_fine_tuned_pyfunc_answers_in_completion_mode(from_scratch, project):
    import mlflow
    import pandas as pd

    from gpt.checkpoint import load_model
    from gpt.sft import complete
    from gpt.tokenizer import load_tokenizer

    prompt = pd.read_parquet(project / "data/sft/tokens/test.parquet")["prompt"].iloc[0]
    pyfunc = mlflow.pyfunc.load_model("models:/tinygpt-sft@champion")
    answer = pyfunc.predict(pd.DataFrame({"prompt": [prompt]}),
                            params={"max_new_tokens": 8, "temperature": 0.0})["completion"][0]
    best = project / "data/sft/model/best"
    assert answer == complete(load_model(best), load_tokenizer(best), prompt, 8)


def test_finetune_from_the_pretrained_champion_reuses_its_tokenizer(from_scratch, project):
    retrain(overrides=["model.block_size=256"])  # a base whose context fits the code records
    tuned = finetune(overrides=[*SMALL, "sft.init=models:/tinygpt@champion",
                                "sft.dataset=python"])
    mlflow_client = client(load_params())
    tags = mlflow_client.get_model_version("tinygpt-sft", tuned["version"]).tags
    assert tags["base_version"] == "1"
    assert "parses_as_python" in tuned["metrics"]
    vocab = json.loads((project / "data/sft/tokenizer/special_tokens.json").read_text())
    assert set(vocab) == {"<|endoftext|>", "<|prompt|>", "<|completion|>", "<|pad|>"}
    base_vocab = json.loads((project / "data/tokenizer/vocab.json").read_text())
    assert json.loads((project / "data/sft/tokenizer/vocab.json").read_text()).keys() >= \
        base_vocab.keys() - vocab.keys()
