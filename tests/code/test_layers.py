"""Imports point down the layers only, and no modules import each other in a circle.

    cli -> flows, serve -> tasks -> registry -> gpt     (stack: the team servers; cli only)

Every import counts, also those inside functions (they are how a layer would sneak upward).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.scratch import ROOT

# A package may import its own modules and those of the packages listed beside it.
ALLOWED = {
    "cli": {"flows", "serve", "stack", "tasks", "registry", "gpt"},
    "stack": {"gpt"},
    "flows": {"tasks", "registry", "gpt"},
    "serve": {"tasks", "registry", "gpt"},
    "tasks": {"registry", "gpt"},
    "registry": {"gpt"},
    "gpt": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    files = [ROOT / "cli.py"] + [p for package in ALLOWED if package != "cli"
                                 for p in (ROOT / package).rglob("*.py")]
    return {module_name(p): p for p in files}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports (the longest known prefix of each import)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                if ".".join(parts[:end]) in known:
                    found.add(".".join(parts[:end]))
                    break
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}


def test_every_import_points_down_a_layer():
    wrong = []
    for module, targets in import_graph().items():
        package = module.split(".")[0]
        for target in targets:
            top = target.split(".")[0]
            if top != package and top not in ALLOWED[package]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports pointing up a layer:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_form_a_cycle():
    graph = import_graph()
    # A package's __init__ importing its own modules is how it re-exports them, not a cycle.
    edges = {m: {t for t in targets if not m.startswith(f"{t}.")} for m, targets in graph.items()}
    state: dict[str, str] = {}
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk finds imports inside functions too, so a lazy upward import is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from serve.app import create_app\n    import tasks.train\n")
    assert imports_of(probe, {"serve.app", "tasks.train", "tasks"}) == {"serve.app",
                                                                       "tasks.train"}


def test_data_workers_import_a_step_without_torch_or_prefect():
    """A Dask worker imports the step module of the chunk function it runs: neither torch nor
    Prefect may come with it (each costs a second of every worker's start, and memory), nor
    pandas (0.4 s) where Great Expectations (validate) does not need it."""
    import subprocess
    import sys

    steps = ["tasks.validate", "tasks.tokenize", "tasks.encode", "tasks.drift", "gpt.data"]
    for module in steps:
        heavy = ("torch", "prefect") if module == "tasks.validate" else ("torch", "prefect",
                                                                           "pandas")
        check = (f"import sys; import {module}; "
                 f"print(sorted(m for m in {heavy} if m in sys.modules))")
        loaded = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        assert loaded == "[]", f"{module}: {loaded}"


def test_benchmarks_share_the_tests_helpers_but_not_their_session_setup():
    """bench/ may import tests/scratch.py (where the code and the corpus are); a conftest sets
    the test session's environment (a private PREFECT_HOME, the stack off), which must not
    leak into a benchmark."""
    test_modules = {module_name(p) for p in (ROOT / "tests").rglob("*.py")}
    wrong = {f"{path.name} imports {target}" for path in (ROOT / "bench").glob("*.py")
             for target in imports_of(path, test_modules) if target != "tests.scratch"}
    assert not wrong, sorted(wrong)


def test_the_serving_routes_only_format_the_one_generation_loop():
    """/generate, /generate/stream and /v1/*completions, whole and streamed, run
    serve.generation.streamed: no route takes a slot or steps a generation itself."""
    loops = {f"{path.name}: {needle}" for path in (ROOT / "serve" / "routes").glob("*.py")
             for needle in (".pieces()", ".slot()", "is_disconnected", "tokens.inc")
             if needle in path.read_text(encoding="utf-8")}
    assert not loops, sorted(loops)
