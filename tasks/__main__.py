"""`python -m tasks STEP [--params FILE] [--set key=value ...]`: one pipeline step, no flow."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from gpt.config import load_params

STEPS = ("ingest", "validate", "tokenize", "encode", "train", "evaluate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks")
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--params")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    module = __import__(f"tasks.{args.step}", fromlist=[args.step])
    try:
        result = getattr(module, args.step)(load_params(args.params, args.overrides))
    except (ValueError, OSError) as err:
        print(f"tasks {args.step}: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
