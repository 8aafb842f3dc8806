"""The Dockerfile, checked without a container engine (none runs on these machines): what it
copies exists and reaches the build, the make target it runs exists, its command parses as
`tinygpt serve`, and it exposes the port that command listens on."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from tests.scratch import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments and blank lines dropped, lines ending in
    `\\` joined with the next (Docker also drops comment lines inside a continuation)."""
    found, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a `\\` continuation"
    return found


def words(arguments: str) -> list[str]:
    """An instruction's arguments, JSON (exec) form or shell form, without leading --flags."""
    parts = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
    while parts and parts[0].startswith("--"):
        parts.pop(0)
    return parts


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


# -- .dockerignore: Docker's rules (the last pattern matching a path or a parent of it wins) ------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1:end].replace("!", "^", 1) + "]", end + 1
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, pattern) per line of .dockerignore; `!pattern` includes again."""
    path = ROOT / ".dockerignore"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    rules = []
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        excludes, pattern = not line.startswith("!"), line.removeprefix("!").strip()
        rules.append((excludes, _pattern_regex(pattern.strip("/"))))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relative.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for excludes, pattern in rules:
        if any(pattern.match(candidate) for candidate in candidates):
            excluded = excludes
    return excluded


def test_dockerignore_rules_match_as_docker_does():
    rules = [(True, _pattern_regex(p)) for p in ("data", "**/__pycache__", "*.egg-info")]
    rules.append((False, _pattern_regex("data/keep.txt")))
    assert ignored("data/raw/x.parquet", rules) and ignored("gpt/__pycache__/a.pyc", rules)
    assert ignored("tinygpt.egg-info/PKG-INFO", rules) and ignored("__pycache__", rules)
    assert not ignored("gpt/data.py", rules) and not ignored("serve/data", rules)
    assert not ignored("data/keep.txt", rules)


# -- (1) what COPY/ADD takes from the build context ----------------------------------------------


def test_every_copy_source_exists_and_is_not_dockerignored(dockerfile):
    rules = dockerignore_rules()
    sources = [source for keyword, arguments in dockerfile if keyword in ("COPY", "ADD")
               and "--from=" not in arguments for source in words(arguments)[:-1]
               if not re.match(r"^(https?|git)://|^git@", source)]
    assert sources, "the Dockerfile copies nothing from the repository"
    for source in sources:
        matches = sorted(ROOT.glob(source.strip("/"))) if source.strip("/") not in (
            "", ".") else [ROOT]
        assert matches, f"COPY {source}: no such path in the repository"
        for match in matches:
            relative = match.relative_to(ROOT).as_posix()
            if relative == ".":
                continue
            assert not ignored(relative, rules), f"COPY {source}: .dockerignore excludes it"
            if match.is_dir():  # every tracked file under it reaches the image
                tracked = subprocess.run(["git", "ls-files", "-z", "--", relative], cwd=ROOT,
                                         capture_output=True, text=True, check=True)
                files = [f for f in tracked.stdout.split("\0") if f]
                assert files, f"COPY {source}: git tracks no file under it"
                left_out = [f for f in files if ignored(f, rules)]
                assert not left_out, f"COPY {source}: .dockerignore excludes {left_out[:5]}"


# -- (2) the command is a real `tinygpt serve` --------------------------------------------------


def container_command(dockerfile: list[tuple[str, str]]) -> list[str]:
    """ENTRYPOINT + CMD of the last stage, both required in exec (JSON) form."""
    last_from = max(i for i, (keyword, _) in enumerate(dockerfile) if keyword == "FROM")
    command: dict[str, list[str]] = {}
    for keyword, arguments in dockerfile[last_from:]:
        if keyword in ("ENTRYPOINT", "CMD"):
            assert arguments.startswith("["), f"{keyword} must use the exec (JSON) form"
            command[keyword] = json.loads(arguments)
    return command.get("ENTRYPOINT", []) + command.get("CMD", [])


def parsed_command(dockerfile: list[tuple[str, str]]):
    command = container_command(dockerfile)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"]["scripts"]
    assert command and Path(command[0]).name in scripts, (
        f"the command {command} does not start with a console script of pyproject.toml")
    module_name, _, _function = scripts[Path(command[0]).name].partition(":")
    cli = importlib.import_module(module_name)
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            args = cli.build_parser().parse_args(command[1:])
        except SystemExit:
            pytest.fail(f"`{shlex.join(command)}` does not parse: {errors.getvalue().strip()}")
    return cli, args


def test_command_parses_as_tinygpt_serve_on_all_interfaces(dockerfile):
    cli, args = parsed_command(dockerfile)
    assert args.command == "serve"
    assert args.record.run is cli.cmd_serve
    assert args.host == "0.0.0.0", "a service bound to 127.0.0.1 is unreachable via docker -p"


# -- (3) the make targets it runs ----------------------------------------------------------------


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*?)\s*$", text, re.MULTILINE))

    def expand(value: str) -> str:
        for _ in range(5):
            value = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), ""), value)
        return value

    targets = set()
    for line in text.splitlines():
        rule = re.match(r"^([^\s#=:][^=:]*?)\s*:(?!=)", line)
        if rule:
            targets.update(expand(rule.group(1)).split())
    return targets


def make_targets_run(dockerfile: list[tuple[str, str]]) -> list[str]:
    """The targets of every `make` a RUN calls (bare `make`: the Makefile's first target)."""
    found = []
    for keyword, arguments in dockerfile:
        if keyword != "RUN":
            continue
        if arguments.startswith("["):  # exec form: one command, no shell
            commands = [json.loads(arguments)]
        else:  # shell form, after RUN's own --flags (--mount=...)
            shell = re.sub(r"^(?:--\S+\s+)*", "", arguments)
            commands = [shlex.split(piece) for piece in re.split(r"&&|\|\||;|\|", shell)]
        for command in commands:
            if not command or Path(command[0]).name != "make":
                continue
            targets = [w for w in command[1:] if not w.startswith("-") and "=" not in w]
            found += targets or ["<default>"]
    return found


def test_make_targets_the_dockerfile_runs_exist(dockerfile):
    run = make_targets_run(dockerfile)
    assert run, "the Dockerfile installs without the Makefile's target"
    known = makefile_targets() | {"<default>"}
    assert not set(run) - known, f"no such make target: {sorted(set(run) - known)}"


# -- (4) EXPOSE -----------------------------------------------------------------------------------


def test_exposed_port_is_the_port_the_command_listens_on(dockerfile):
    exposed = {int(port.split("/")[0]) for keyword, arguments in dockerfile
               if keyword == "EXPOSE" for port in arguments.split()}
    _cli, args = parsed_command(dockerfile)
    assert exposed == {args.port}, f"EXPOSE {sorted(exposed)} but it serves on {args.port}"


def test_base_image_fits_the_project_and_runs_as_non_root(dockerfile):
    images = [words(arguments)[0] for keyword, arguments in dockerfile if keyword == "FROM"]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"]["requires-python"]
    version = re.match(r"python:(\d+\.\d+)", images[-1])
    assert version and SpecifierSet(requires).contains(version.group(1)), (
        f"FROM {images[-1]}: not a Python that pyproject.toml's {requires} accepts")
    users = [arguments.split(":")[0] for keyword, arguments in dockerfile if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the service must not run as root"
