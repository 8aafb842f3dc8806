"""Each recipe run by name, as a user runs it, with its write-up's figure beside ours.

For every recipe in recipes/, a fresh clone of this checkout (its committed HEAD) runs
`tinygpt retrain --recipe NAME` (`finetune` for the sft one) under a wall-clock budget
(`--set train.max_seconds=S`), with the embedded MLflow and Prefect that `make run` uses.
Printed per recipe: tokenizer, parameters, steps done of the recipe's steps, tokens/s, val loss
(nats per token), val bits per byte (comparable across tokenizers; exact match for the sft
one), and the hours the recipe's full step count would take on this machine.

    python bench/recipes.py [--seconds 120] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, save, table
from gpt.config import list_recipes, load_params, recipe_overrides
from tests.scratch import corpus_path

# What each write-up (../shared/seeds/) reports, to print beside our row.
WRITE_UPS = {
    "bpe-mlops": "000: loss and perplexity logged, no figure stated",
    "char-shakespeare": "001: cross-entropy 4.37 -> 1.22 nats/char in 3000 steps (GPU)",
    "prompt-to-code": "002: no figure stated",
    "word-streaming": "003: a 4.6M-parameter model; no loss stated",
    "regex-gpt": "004: stops before training; no figure stated",
    "one-minute": "issue 15's goal: <= 2.45 bits/byte after 60 s of training",
    "gpt2": "none: the GPT-2 block with AdamW, the defaults until issue 29",
}


def run_recipe(name: str, clone: Path, seconds: float) -> dict:
    """One recipe in the clone; its row of figures."""
    overrides = recipe_overrides(name, clone / "recipes")
    params = load_params(clone / "params.yaml", overrides)
    command = "finetune" if params.kind == "sft" else "retrain"
    env = {**os.environ, "PYTHONHASHSEED": "0", "PREFECT_HOME": str(clone / ".prefect"),
           "TINYGPT_DATA_MIRROR": str(corpus_path().parent),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false",
           "DVC_NO_ANALYTICS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cli", command, "--recipe", name,
         "--set", f"train.max_seconds={seconds}"], cwd=clone, env=env, capture_output=True,
        text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    metrics = params.path("metrics")
    trained = json.loads((clone / metrics / "train.json").read_text())
    evaluated = json.loads((clone / metrics / "eval.json").read_text())
    steps = trained["steps"]
    row = {"recipe": name, "tokenizer": params.tokenizer.kind,
           "params_M": trained["parameters"] / 1e6,
           "steps": f"{steps}/{params.train.max_steps}",
           "tokens_per_s": trained["tokens_per_s"], "train_s": trained["train_seconds"],
           "wall_s": wall, "val_loss": evaluated.get("val_loss", trained["best_val_loss_estimate"]),
           "full_run_h": trained["train_seconds"] * params.train.max_steps / steps / 3600,
           "write_up": WRITE_UPS.get(name, "")}
    if params.kind == "sft":
        row["exact_match"] = evaluated["exact_match"]
    else:
        row["val_bits_per_byte"] = evaluated["val_bits_per_byte"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="training budget per recipe (train.max_seconds)")
    parser.add_argument("--only", nargs="*", help="recipe names (default: all)")
    args = parser.parse_args()
    names = args.only or sorted(list_recipes(ROOT / "recipes"))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            clone = Path(scratch) / name
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {args.seconds:.0f} s of training",
                  flush=True)
            rows.append(run_recipe(name, clone, args.seconds))
            print(f"[{time.strftime('%H:%M:%S')}] {name}: done", flush=True)
    columns = ["recipe", "tokenizer", "params_M", "steps", "tokens_per_s", "val_loss",
               "val_bits_per_byte", "exact_match", "full_run_h", "write_up"]
    print(table(rows, columns))
    print(f"\nresults: {save('recipes', rows, seconds=args.seconds)}")


if __name__ == "__main__":
    main()
