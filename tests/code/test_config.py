"""params.yaml loading, overrides and validation."""

from __future__ import annotations

import pytest

from cli import main
from gpt.config import apply_overrides, load_params, model_config, train_config
from tests.conftest import ROOT


def test_repository_params_build_valid_configs():
    params = load_params(ROOT / "params.yaml")
    assert model_config(params, vocab_size=300).n_layer == params["model"]["n_layer"]
    assert train_config(params).max_steps == params["train"]["max_steps"]


def test_overrides_parse_values_as_yaml():
    overrides = ["train.max_steps=200", "train.learning_rate=3e-4", "model.bias=false"]
    params = apply_overrides({"train": {"max_steps": 5}}, overrides)
    assert params["train"]["max_steps"] == 200
    assert params["train"]["learning_rate"] == pytest.approx(3e-4)
    assert params["model"]["bias"] is False


@pytest.mark.parametrize("override", ["max_steps=3", "train.max_steps"])
def test_malformed_overrides_are_refused(override):
    with pytest.raises(ValueError, match=r"section\.key=value"):
        apply_overrides({}, [override])


def test_unknown_keys_are_errors_not_silently_ignored():
    with pytest.raises(ValueError, match=r"unknown parameter.*train\.max_stpes"):
        train_config({"train": {"max_stpes": 10}})


def test_nonsense_parameters_fail_before_any_work(tmp_path, capsys, shakespeare_path):
    code = main(["train", "--input", str(shakespeare_path), "--out", str(tmp_path / "run"),
                 "--set", "model.n_embd=100", "--set", "model.n_head=3"])
    assert code == 1
    assert "divisible" in capsys.readouterr().err
    code = main(["train", "--input", str(shakespeare_path), "--out", str(tmp_path / "run"),
                 "--set", "train.learning_rate=-0.1"])
    assert code == 1 and "train.learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
