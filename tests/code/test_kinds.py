"""Each kind of data is one module of tasks/kinds/ that fills every slot, and nothing outside
those modules branches on a kind's name."""

from __future__ import annotations

import ast
from dataclasses import fields, replace

import pytest

from gpt.config import load_params
from tasks.kinds import DVC_STEPS, KINDS, STEP_SLOTS, Kind, kind_of
from tests.code.test_stages import covered
from tests.scratch import CODE_FOLDERS, ROOT


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_kind_fills_every_slot_with_what_its_steps_run(name):
    kind = KINDS[name]
    assert kind.name == name
    for slot in fields(Kind):
        value = getattr(kind, slot.name)
        assert value is not None or slot.name == "base_param", slot.name
        assert value != "" or slot.name == "stage_prefix", slot.name
    for slot in STEP_SLOTS:
        function = kind.step(slot)
        assert callable(function), slot
        if slot in DVC_STEPS:  # a stage depends on the code its kind's function lives in
            assert covered(function.__module__, set(kind.inputs[slot].code)), (slot, function)
    params = load_params(ROOT / "params.yaml", [f"data.kind={name}"])
    assert kind_of(params) is kind
    assert kind.summary_lines.__module__ == f"tasks.kinds.{name}"


def test_a_kind_refuses_inputs_missing_a_step():
    text = KINDS["text"]
    with pytest.raises(ValueError, match=r"kind text: inputs for .*need \['ingest'"):
        replace(text, inputs={k: v for k, v in text.inputs.items() if k != "train"})


def kind_branches(path, root=ROOT) -> list[str]:
    """Comparisons of something called kind with a kind's name, and tables keyed by every
    kind name, in one source file."""
    names = set(KINDS)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            constants = {s.value for s in sides if isinstance(s, ast.Constant)}
            if constants & names and any(is_kind(s) for s in sides):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if keys >= names:
                found.append(f"{path.relative_to(root)}:{node.lineno} (a table by kind)")
    return found


def is_kind(node: ast.AST) -> bool:
    """params.kind, kind, kind.name, summary["kind"], tags.get("kind")."""
    if isinstance(node, ast.Attribute):
        return node.attr == "kind" or (node.attr == "name" and is_kind(node.value))
    if isinstance(node, ast.Name):
        return node.id == "kind"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "kind"
    if isinstance(node, ast.Call) and node.args:
        return isinstance(node.args[0], ast.Constant) and node.args[0].value == "kind"
    return False


def test_nothing_outside_the_kinds_branches_on_a_kind_name(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('if params.kind == "sft":\n    pass\nT = {"text": 1, "sft": 2}\n'
                     'ok = summary["kind"] != "text"\nfine = column == "text"\n')
    assert [line.split(":")[-1] for line in kind_branches(probe, tmp_path)] == [
        "1", "3 (a table by kind)", "4"]  # the checker finds them, and no column names
    sources = [path for folder in CODE_FOLDERS for path in (ROOT / folder).rglob("*.py")
               if "kinds" not in path.relative_to(ROOT).parts]
    sources += [ROOT / "cli.py"]
    found = [branch for path in sources for branch in kind_branches(path)]
    assert not found, f"branches on a kind's name outside tasks/kinds/: {found}"
