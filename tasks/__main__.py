"""`python -m tasks STEP [--kind KIND] [--params FILE] [--set key=value ...]`: one pipeline
step, no flow (what dvc.yaml's stages run)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

# Spelt out, not imported: under a `python` without the project's packages the imports are
# what fails, and that must end in one line (tests/code checks these equal DVC_STEPS and
# DATA_KINDS).
STEPS = ("ingest", "validate", "tokenize", "encode", "train", "evaluate")
KINDS = ("text", "sft")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks")
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--kind", choices=KINDS, help="data.kind for this step")
    parser.add_argument("--params")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if os.environ.get("DVC_EXP_BASELINE_REV"):  # set by `dvc exp run` for its stages
        print(f"tasks {args.step}: error: `dvc exp run` is not how tinygpt runs experiments "
              f"(its runs would reach no MLflow run and no registry); run `tinygpt retrain "
              f"--set KEY=VALUE` instead (undo -S edits with `git checkout params.yaml`). "
              f"Nothing was changed.", file=sys.stderr)
        return 1
    try:
        from gpt.config import load_params

        module = __import__(f"tasks.{args.step}", fromlist=[args.step])
    except ModuleNotFoundError as missing:  # `python` is not the project's interpreter
        print(f"tasks {args.step}: error: {missing}: this `python` ({sys.executable}) lacks "
              f"the project's packages; run `make setup` and put .venv/bin first on PATH. "
              f"Nothing was changed.", file=sys.stderr)
        return 1
    overrides = [*args.overrides, *([f"data.kind={args.kind}"] if args.kind else [])]
    try:
        result = getattr(module, args.step)(load_params(args.params, overrides))
    except (ValueError, OSError) as err:
        print(f"tasks {args.step}: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
