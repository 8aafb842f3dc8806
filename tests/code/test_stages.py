"""What a training run depends on is declared where DVC and the resume check look: dvc.yaml's
train stages name the code and settings that shape the weights, and an interrupted run resumes
only with the same ones."""

from __future__ import annotations

import ast

import pytest
import yaml

from gpt.config import load_params
from gpt.files import write_json
from tasks.common import MANIFEST
from tasks.train import fingerprint
from tests.conftest import ROOT

# gpt/train.py's imports that cannot change the weights: the settings' schema (their values
# are the stage's params), atomic file writes and progress lines.
NO_EFFECT = {"gpt/config.py", "gpt/files.py", "gpt/progress.py"}


def gpt_imports(path) -> set[str]:
    """The gpt modules a file imports, as paths."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpt."):
            found.add(node.module.replace(".", "/") + ".py")
    return found


@pytest.mark.parametrize(("project", "stage"), [(".", "train"), ("sft", "sft-train")])
def test_a_train_stage_depends_on_every_module_that_shapes_the_weights(project, stage):
    declared = yaml.safe_load((ROOT / project / "dvc.yaml").read_text())["stages"][stage]
    deps = {d.removeprefix("../") for d in declared["deps"]}  # sft/'s name the root's code
    missing = gpt_imports(ROOT / "gpt" / "train.py") - NO_EFFECT - deps
    if stage == "train":  # the text kind reads its windows from the token files
        missing |= {"gpt/data.py"} - deps
    assert not missing, f"{stage} does not depend on {sorted(missing)}"
    if stage == "train":
        assert {"data.windows", "data.stride"} <= set(declared["params"])


def test_a_run_interrupted_with_random_windows_does_not_resume_with_strided_ones(tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_json(tmp_path / "data" / "tokens" / MANIFEST,
               {"data_digest": "d", "tokenizer_digest": "t"})
    random = fingerprint(load_params(ROOT / "params.yaml"))
    strided = fingerprint(load_params(ROOT / "params.yaml", ["data.windows=strided"]))
    wider = fingerprint(load_params(ROOT / "params.yaml",
                                    ["data.windows=strided", "data.stride=64"]))
    assert random != strided != wider
    assert random == fingerprint(load_params(ROOT / "params.yaml"))
