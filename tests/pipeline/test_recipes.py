"""A recipe run end to end: `retrain(recipe=...)` lays recipes/NAME.yaml over params.yaml,
under the run's overrides, and registers under the recipe's own model name."""

from __future__ import annotations

import json

import pytest

import cli
from flows.retrain import retrain
from gpt.config import load_params, recipe_overrides
from gpt.tokenizer import UNKNOWN, CharTokenizer, RegexTokenizer, load_tokenizer
from registry import client, load_registered

# The recipe's 6x384 model at 3000 steps is hours on 2 cores: the same recipe, shrunk by --set.
SHRINK = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
          "train.max_steps=20", "train.batch_size=8", "train.eval_interval=10",
          "train.eval_iters=2", "train.dtype=float32"]


@pytest.fixture(scope="module")
def char_run(project) -> dict:
    return retrain(recipe="char-shakespeare", overrides=SHRINK)


def test_a_recipe_run_registers_under_its_own_name_with_its_settings(char_run):
    assert char_run["model"] == "char-shakespeare" and char_run["promoted"]
    mlflow_client = client(load_params())
    champion = mlflow_client.get_model_version_by_alias("char-shakespeare", "champion")
    assert str(champion.version) == char_run["version"]
    assert not mlflow_client.search_model_versions("name = 'tinygpt'")  # no shared champion
    recorded = json.loads(champion.tags["overrides"])
    assert recorded == [*recipe_overrides("char-shakespeare"), *SHRINK]  # --set on top
    assert 'train.learning_rate=0.0003' in recorded and "tokenizer.kind=\"char\"" in recorded
    assert isinstance(load_tokenizer(load_params().path("tokenizer")), CharTokenizer)
    run = mlflow_client.get_run(char_run["run_id"])
    assert run.data.params["train.learning_rate"] == "0.0003"
    assert run.data.params["model.n_layer"] == "1"  # the --set, not the recipe's 6


def test_the_regex_recipe_trains_on_strided_windows_and_serves_words(char_run, project):
    """004 end to end: regex tokens with <|unk|>, strided windows, numbered checkpoints."""
    shrink = [*SHRINK, "data.stride=16", "train.checkpoint_interval=10"]
    result = retrain(recipe="regex-gpt", overrides=shrink)
    assert result["model"] == "regex-gpt" and result["promoted"]
    params = load_params(overrides=[*recipe_overrides("regex-gpt"), *shrink])
    assert (params.data.windows, params.window_stride) == ("strided", 16)
    run = client(params).get_run(result["run_id"])
    assert run.data.params["data.windows"] == "strided"
    assert sorted(p.name for p in params.path("model").glob("step-*")) == [
        "step-000010", "step-000020"]
    model, tokenizer, _ = load_registered(params, "models:/regex-gpt@champion")
    assert isinstance(tokenizer, RegexTokenizer) and UNKNOWN in tokenizer.special_tokens
    assert tokenizer.drop_whitespace  # the book's decoder: no space before , . ? ! only
    assert tokenizer.decode(tokenizer.encode("First Citizen:  zyzzyva!")) == \
        f"First Citizen : {UNKNOWN}!"
    assert model.config.bias and not model.config.qkv_bias


def test_an_unknown_recipe_stops_the_command_in_one_line(project, capsys):
    assert cli.main(["retrain", "--recipe", "char-shakespear"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("tinygpt: error: no recipe 'char-shakespear'; did you mean "
                           "char-shakespeare?")
