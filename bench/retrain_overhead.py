"""Pipeline overhead: the retraining flow twice on unchanged data, in a scratch copy of the
project (its own MLflow store, DVC cache and remote). Reports each run's wall time, its time
outside training, and which steps the re-run took from the cache.

    python bench/retrain_overhead.py [--set train.max_steps=300 ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, save, table
from tests.scratch import copy_code

BIN = Path(sys.executable).parent


def scratch_project() -> Path:
    root = Path(tempfile.mkdtemp(prefix="tinygpt-bench-")) / "project"
    root.mkdir()
    copy_code(root)
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, root / name)
    for args in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"],
                 [str(BIN / "dvc"), "remote", "add", "-d", "local", str(root.parent / "remote")]):
        subprocess.run(args, cwd=root, check=True)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tinygpt-bench-prefect-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    project = scratch_project()
    os.chdir(project)
    from flows.retrain import retrain

    rows = []
    for name in ("first run", "re-run, unchanged data"):
        started = time.perf_counter()
        summary = retrain(overrides=args.overrides)
        wall = time.perf_counter() - started
        outside = wall - summary["seconds"]["train"]
        rows.append({"run": name, "wall_s": wall, "train_s": summary["seconds"]["train"],
                     "outside_training_s": outside, "cached": ",".join(summary["cached"]) or "-",
                     "steps": summary["seconds"]})
    rows[1]["outside_vs_first_run_wall"] = rows[1]["outside_training_s"] / rows[0]["wall_s"]
    print(table(rows, ["run", "wall_s", "train_s", "outside_training_s", "cached"]))
    print(f"re-run time outside training = {100 * rows[1]['outside_vs_first_run_wall']:.1f}% "
          f"of the first run's wall time")
    print(f"results: {save('retrain_overhead', rows, overrides=args.overrides)}")


if __name__ == "__main__":
    main()
