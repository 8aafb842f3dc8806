"""`python -m tasks STEP [--kind KIND] [--params FILE] [--set key=value ...]`: one pipeline
step, no flow (what dvc.yaml's stages run)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from gpt.config import DATA_KINDS, load_params
from tasks.common import DVC_STEPS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks")
    parser.add_argument("step", choices=DVC_STEPS)
    parser.add_argument("--kind", choices=DATA_KINDS, help="data.kind for this step")
    parser.add_argument("--params")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    module = __import__(f"tasks.{args.step}", fromlist=[args.step])
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
