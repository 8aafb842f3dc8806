"""What each step reads is declared once, by its kind (tasks/kinds/): dvc.yaml's stages say
the same, every project module a step runs is named there, and an interrupted run resumes
only with the same settings."""

from __future__ import annotations

import pytest
import yaml

from gpt.config import load_params
from gpt.files import write_json
from tasks.common import MANIFEST
from tasks.kinds import DVC_STEPS, KINDS
from tasks.train import fingerprint
from tests.code.test_layers import import_graph
from tests.scratch import ROOT

# Modules whose changes cannot change a step's outputs: the settings' schema (their values
# are the stages' params), atomic writes, progress lines, stop requests, run logging, the
# registry's client (a base model is pinned by its version in the cache key), locks, reports;
# the kinds' declarations (what they name a step runs is checked in tests/code/test_kinds.py).
NO_EFFECT = {"gpt.config", "gpt.files", "gpt.progress", "tasks.common", "tasks.interrupt",
             "tasks.tracking", "tasks.lock", "tasks.stages", "tasks.web_assets", "registry",
             "tasks.kinds", *(f"tasks.kinds.{name}" for name in ("base", *KINDS))}


def declared_stage(kind: str, step: str) -> tuple[set[str], set[str]]:
    """(deps, params) of a kind's DVC stage, code named from the repository's root."""
    project = KINDS[kind].dvc_project
    stages = yaml.safe_load((ROOT / project / "dvc.yaml").read_text())["stages"]
    stage = stages[KINDS[kind].stage_prefix + step]
    deps = {d.removeprefix("../") for d in stage.get("deps", [])}
    params: set[str] = set()
    for item in stage.get("params", []):
        params |= {item} if isinstance(item, str) else {k for keys in item.values()
                                                        for k in keys}
    return deps, params


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("step", DVC_STEPS)
def test_each_dvc_stage_declares_what_tasks_stages_declares(kind, step, monkeypatch):
    monkeypatch.chdir(ROOT)
    params = load_params(ROOT / "params.yaml", [f"data.kind={kind}"])
    inputs = KINDS[kind].inputs[step]
    project = ROOT / KINDS[kind].dvc_project
    data = {str((ROOT / params.path(name)).relative_to(project)) for name in inputs.data}
    deps, stage_params = declared_stage(kind, step)
    assert deps == set(inputs.code) | data
    assert stage_params == set(inputs.params)


def module_path(module: str) -> str:
    path = module.replace(".", "/")
    return path if (ROOT / path).is_dir() else f"{path}.py"


def covered(module: str, code: set[str]) -> bool:
    path = module_path(module)
    return any(path == c or path.startswith(f"{c}/") for c in code)


@pytest.mark.parametrize("step", DVC_STEPS)
def test_every_module_a_step_runs_is_a_dependency_of_its_stage(step):
    """The step's module, what it imports, and what those import in turn: each is named by
    the step's stage (of some kind), or cannot change its outputs (NO_EFFECT)."""
    graph = import_graph()
    code = {c for kind in KINDS.values() for c in kind.inputs[step].code}
    missing, seen, todo = set(), set(), [f"tasks.{step}"]
    while todo:
        module = todo.pop()
        if module in seen or module.split(".")[0] in NO_EFFECT or module in NO_EFFECT:
            continue
        seen.add(module)
        if not covered(module, code):
            missing.add(module_path(module))
        todo.extend(graph.get(module, ()))
    assert not missing, f"{step}: its stages do not depend on {sorted(missing)}"


def test_a_run_interrupted_does_not_resume_with_other_windows_or_input_noise(tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_json(tmp_path / "data" / "tokens" / MANIFEST,
               {"data_digest": "d", "tokenizer_digest": "t"})
    random = fingerprint(load_params(ROOT / "params.yaml"))
    strided = fingerprint(load_params(ROOT / "params.yaml", ["data.windows=strided"]))
    wider = fingerprint(load_params(ROOT / "params.yaml",
                                    ["data.windows=strided", "data.stride=64"]))
    assert random != strided != wider
    assert random != fingerprint(load_params(ROOT / "params.yaml", ["data.input_noise=0.2"]))
    assert random == fingerprint(load_params(ROOT / "params.yaml"))
