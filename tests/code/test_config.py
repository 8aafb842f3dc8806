"""params.yaml: typed sections, overrides, and keys refused with the nearest valid name."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields

import pytest

from cli import main
from gpt.config import (
    DERIVED,
    GPT2_BLOCK,
    SECTIONS,
    Params,
    apply_overrides,
    build_params,
    load_params,
    read_params_file,
    recipe_overrides,
)
from tests.scratch import ROOT


def test_repository_params_build_valid_configs():
    params = load_params(ROOT / "params.yaml")
    raw = read_params_file(ROOT / "params.yaml")
    assert params.model_config(vocab_size=300).n_layer == raw["model"]["n_layer"]
    assert params.train.max_steps == raw["train"]["max_steps"]
    assert params.kind == "text"


def test_params_yaml_sets_every_key_to_its_declared_default():
    """params.yaml shows every key, and the dataclasses' defaults are the same values: one
    source, so code and file cannot drift apart (max_new_tokens once said 64 and 32)."""
    raw = read_params_file(ROOT / "params.yaml")
    defaults = Params().to_dict()
    for section in SECTIONS:
        declared = {f.name for f in fields(SECTIONS[section])} - set(DERIVED.get(section, ()))
        assert set(raw[section]) == declared, section
        for key in declared:
            expected = defaults[section][key]
            assert raw[section][key] == (list(expected) if isinstance(expected, tuple)
                                         else expected), f"{section}.{key}"


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


# One misspelling per section of params.yaml, and in a kind's overlay sections.
MISSPELT = [
    ("data.sorce", "data.source"), ("validate.max_char", "validate.max_chars"),
    ("tokenizer.vocab_sizes", "tokenizer.vocab_size"), ("model.n_layers", "model.n_layer"),
    ("train.max_step", "train.max_steps"), ("sample.temprature", "sample.temperature"),
    ("paths.token", "paths.tokens"), ("registry.model", "registry.model_name"),
    ("sft.dataset_", "sft.dataset"), ("sft.train.max_step", "sft.train.max_steps"),
    ("sft.model.n_embed", "sft.model.n_embd"), ("sft.paths.raws", "sft.paths.raw"),
]


@pytest.mark.parametrize(("key", "nearest"), MISSPELT)
def test_a_misspelt_key_is_refused_with_the_nearest_valid_name(key, nearest):
    with pytest.raises(ValueError) as err:
        load_params(ROOT / "params.yaml", [f"{key}=1"])
    assert str(err.value) == f"{key}: unknown key; did you mean {nearest}?"


def test_a_misspelt_section_and_a_derived_key_are_refused():
    with pytest.raises(ValueError, match=r"^trian: unknown key; did you mean train\?$"):
        build_params({"trian": {"max_steps": 3}})
    with pytest.raises(ValueError, match=r"model\.vocab_size: unknown key"):
        build_params({"model": {"vocab_size": 3}})


@pytest.mark.parametrize(("override", "message"), [
    ("train.max_steps=abc", "train.max_steps must be int"),
    ("train.learning_rate=fast", "train.learning_rate must be float"),
    ("data.kind=images", "data.kind must be one of text, sft"),
    ("tokenizer.kind=wordpiece", "tokenizer.kind must be one of bpe, char, word, regex"),
    ("tokenizer.min_frequency=3", "tokenizer.min_frequency applies to the word and regex"),
    ("data.val_fraction=1.5", "data.val_fraction must be in"),
    ("data.windows=sliding", "data.windows must be one of random, strided"),
    ("data.stride=64", "data.stride applies to data.windows: strided"),
    ("data.input_noise=1", "data.input_noise must be in"),
    ("data.input_noise=-0.1", "data.input_noise must be in"),
    ("data.chunk_mb=0", "data.chunk_mb must be positive"),
    ("data.workers=-1", "data.workers must be >= 0"),
    ("data.dask_address=localhost", "data.dask_address must be a scheduler address"),
    ("evaluate.max_tokens=0", "evaluate.max_tokens must be a positive integer"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints must be a positive integer"),
    ("train.nnodes=2", "train.nnodes=2 needs train.rdzv_endpoint, node 0's HOST:PORT"),
    ("train.node_rank=1", "train.node_rank must be in"),
])
def test_wrong_types_and_values_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        load_params(ROOT / "params.yaml", [override])


def test_the_sft_kind_lays_its_sections_over_the_shared_ones():
    params = load_params(ROOT / "params.yaml", ["data.kind=sft", "sft.model.n_layer=2"])
    assert params.model.n_layer == 2 and params.model.n_embd == 128
    assert params.tokenizer.kind == "char" and params.train.max_steps == 3000
    assert params.paths.tokens == "sft/data/tokens" and params.model_name == "tinygpt-sft"
    text = load_params(ROOT / "params.yaml")
    assert text.model.n_layer == 4 and text.paths.tokens == "data/tokens"


def test_a_set_wins_over_a_recipes_sft_section_on_a_fine_tuning_run():
    recipe = recipe_overrides("prompt-to-code", ROOT / "recipes")
    as_written = load_params(ROOT / "params.yaml", recipe)  # params.yaml's and the recipe's sft
    assert (as_written.train.max_steps, as_written.model.dropout) == (3000, 0.1)
    params = load_params(ROOT / "params.yaml", [*recipe, "train.max_steps=30",
                                                 "model.dropout=0.2"])
    assert params.kind == "sft" and params.train.max_steps == 30
    assert params.model.dropout == 0.2 and params.model.n_embd == 128  # the rest: the recipe's
    text = load_params(ROOT / "params.yaml", ["train.max_steps=30"])
    assert text.train.max_steps == 30 and text.sft.train["max_steps"] == 3000


def test_the_config_module_imports_no_torch():
    code = "import sys, gpt.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "False"


def test_nonsense_parameters_fail_before_any_work(tmp_path, capsys, shakespeare_path):
    code = main(["train", "--input", str(shakespeare_path), "--out", str(tmp_path / "run"),
                 "--set", "model.n_embd=100", "--set", "model.n_head=3"])
    assert code == 1
    assert "divisible" in capsys.readouterr().err
    code = main(["train", "--input", str(shakespeare_path), "--out", str(tmp_path / "run"),
                 "--set", "train.learning_rate=-0.1"])
    assert code == 1 and "train.learning_rate" in capsys.readouterr().err
    code = main(["retrain", "--set", "train.max_step=5"])
    assert code == 1
    assert "train.max_step: unknown key; did you mean train.max_steps?" in \
        capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_dvc_stage_entry_point_names_the_same_steps_and_kinds():
    import tasks.__main__ as entry
    from gpt.config import DATA_KINDS
    from tasks.kinds import DVC_STEPS, KINDS

    assert (DVC_STEPS, tuple(DATA_KINDS)) == (entry.STEPS, entry.KINDS)
    assert tuple(KINDS) == tuple(DATA_KINDS)


# What each write-up states, which its recipe must say too (../shared/seeds/); and what makes
# each preset what it is. The write-ups' models are GPT-2's block trained by AdamW, which the
# defaults are not.
GPT2_ADAMW = {**{f"model.{key}": value for key, value in GPT2_BLOCK.items()},
              "train.optimizer": "adamw"}
WRITE_UPS = {
    "one-minute": {"train.max_seconds": 60, "model.arch": "modern", "train.optimizer": "muon",
                   "model.bias": True, "model.mlp_bias": True,
                   "model.n_embd": 128},
    "gpt2": {**GPT2_ADAMW, "model.dropout": 0.1, "train.max_steps": 1000},
    "bpe-mlops": {"tokenizer.kind": "bpe", "train.checkpoint_interval": 250, **GPT2_ADAMW},
    "char-shakespeare": {"tokenizer.kind": "char", "model.n_layer": 6, "model.n_head": 6,
                         "model.n_embd": 384, "model.block_size": 256, "train.batch_size": 64,
                         "train.learning_rate": 3e-4, "train.min_lr": 3e-4,
                         "train.max_steps": 3000, **GPT2_ADAMW},
    "prompt-to-code": {"data.kind": "sft", "tokenizer.kind": "char", "model.n_layer": 2,
                       "model.n_embd": 128, "tokenizer.unknown": True,
                       "tokenizer.seed_ascii": True, "tokenizer.specials_first": True,
                       "model.dropout": 0.1, "sft.fallback": True},
    "word-streaming": {"tokenizer.kind": "word", "tokenizer.fit_on": "all",
                       "tokenizer.min_frequency": 1, "model.n_layer": 4, "model.n_head": 4,
                       "model.n_embd": 128, "model.block_size": 128,
                       "train.checkpoint_interval": 100, "sample.repetition_penalty": 1.2,
                       "sample.top_p": 0.95, "sample.max_new_tokens": 20, **GPT2_ADAMW},
    "regex-gpt": {"tokenizer.kind": "regex", "tokenizer.drop_whitespace": True,
                  "tokenizer.min_frequency": 1, "data.windows": "strided", "data.stride": 128,
                  "model.block_size": 256, "model.qkv_bias": False, "model.bias": True,
                  "train.learning_rate": 4e-4, **GPT2_ADAMW},
}


def test_word_streaming_has_the_write_ups_4_6m_parameters_on_tiny_shakespeare(shakespeare):
    """The 003 write-up's model: its vocabulary (every word of the corpus, fit_on all) and its
    dimensions give 4.6M parameters, within 10%."""
    from gpt.model import GPT
    from gpt.tokenizer import ENDOFTEXT, train_tokenizer

    params = load_params(overrides=recipe_overrides("word-streaming", ROOT / "recipes"))
    settings = params.tokenizer
    tokenizer = train_tokenizer(settings.kind, shakespeare, settings.vocab_size,
                                special_tokens=(ENDOFTEXT,),
                                min_frequency=settings.min_frequency)
    parameters = GPT(params.model_config(tokenizer.vocab_size)).num_params(non_embedding=False)
    assert abs(parameters / 4.6e6 - 1) <= 0.10, parameters


def test_every_recipe_builds_states_its_write_up_and_registers_under_its_own_name():
    from gpt.config import as_flat_dict, list_recipes, recipe_overrides

    recipes = list_recipes(ROOT / "recipes")
    assert set(recipes) == set(WRITE_UPS)
    names = set()
    for name, summary in recipes.items():
        assert summary, f"{name} has no summary line"
        params = load_params(overrides=recipe_overrides(name, ROOT / "recipes"))
        flat = as_flat_dict(params)
        for key, value in WRITE_UPS[name].items():
            assert flat[key] == value, (name, key)
        assert params.model_name == name
        names.add(params.model_name)
    assert len(names) == len(recipes) and load_params().model_name not in names


def test_an_unknown_recipe_is_refused_naming_the_closest_one():
    from gpt.config import recipe_overrides

    with pytest.raises(ValueError, match=re.escape("no recipe 'char-shakespear'; did you mean "
                                                   "char-shakespeare?")):
        recipe_overrides("char-shakespear", ROOT / "recipes")
    with pytest.raises(ValueError, match="no recipe 'mamba'; recipes: bpe-mlops, "):
        recipe_overrides("mamba", ROOT / "recipes")


def test_every_sampler_starts_from_one_set_of_defaults():
    """params.yaml's sample section, the registered pyfunc's signature, /generate and the page
    (GET /health's "sampling" for a model whose run chose none) all take SamplingParams'
    defaults; they once disagreed."""
    from dataclasses import asdict

    from gpt.config import TUNABLE_SAMPLING, SamplingParams
    from registry import sampling_from
    from serve.generation import GenerateRequest

    declared = asdict(SamplingParams())
    request = GenerateRequest().model_dump()
    assert {k: request[k] for k in TUNABLE_SAMPLING} == SamplingParams().tunable()
    pyfunc = asdict(sampling_from(None))
    assert pyfunc == {**declared, "top_p": 1.0}  # the signature's "every token"
    yaml_sample = asdict(load_params(ROOT / "params.yaml").sample.sampling())
    assert yaml_sample == {**declared, "seed": yaml_sample["seed"]}
