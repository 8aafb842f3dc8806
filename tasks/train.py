"""train: the gpt/ trainer on the encoded tokens, with every metric logged to MLflow.

Text trains on random windows of the token shards (copied, a shard at a time, into
memory-mapped arrays in a temporary folder: the corpus is never held in memory) from fresh
(seeded) weights. Prompt ->
completion pairs train on length-bucketed batches with the loss on answers only, from a
registered model (`sft.init`, its vocabulary grown by the control tokens) or from fresh.

Training writes into a staging folder that replaces the model folder only when it finishes,
so a failed run leaves the previous model untouched. A run that was stopped (Ctrl-C, kill -9)
leaves its staging folder: rerun with the same data and parameters and training resumes from
its latest/ checkpoint, ending with the weights an uninterrupted run would have; `fresh`
starts over. Also written: metrics/train.json,
metrics/loss.csv (for `dvc plots show`), reports/loss_curve.png and, for text,
reports/samples.txt.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt.checkpoint import OPTIMIZER_FILE, STATE_FILE, load_model
from gpt.config import Params, as_flat_dict
from gpt.data import CorpusError, mapped_tokens
from gpt.files import atomic_file, read_json, replace_directory, write_json
from gpt.generate import generate_text
from gpt.model import GPT
from gpt.tokenizer import Tokenizer, load_tokenizer
from gpt.train import Trainer, calibration_size, pick_device, windows_trainer
from tasks.common import BEST, LATEST, LOSS_CSV, MANIFEST, TRAIN_METRICS
from tasks.interrupt import check_stop, stop_requested
from tasks.kinds import kind_of
from tasks.stages import param_values
from tasks.tracking import log_params, metric_logger, run_artifacts

log = logging.getLogger("tinygpt.tasks.train")
SAMPLE_PROMPTS = ("", "ROMEO:", "The king")
Callback = Callable[[dict[str, Any]], None] | None


def check_windows(manifest: dict[str, Any], block_size: int, calibration_share: float) -> None:
    """Refuse, before training, a corpus too small to fill one window of either split (the
    training split's once calibration has held out its share)."""
    for split in ("train", "val"):
        tokens = manifest[split]["tokens"]
        held = calibration_size(tokens, calibration_share, block_size) if split == "train" else 0
        if tokens - held < block_size + 1:
            raise CorpusError(
                f"corpus too small: the {split} split has {tokens} tokens"
                + (f", {held} of them held out for calibration (train.calibration_share)"
                   if held else "")
                + f", fewer than one training window of model.block_size + 1 = {block_size + 1}")


def text_trainer(params: Params, tokenizer: Tokenizer, out: Path, callback: Callback,
                   scratch: Path) -> tuple[Trainer, str | None]:
    """Windows of the token shards (data.windows), fresh weights from the seed."""
    tokens_dir = params.path("tokens")
    model_cfg = params.model_config(tokenizer.vocab_size)
    check_windows(read_json(tokens_dir / MANIFEST), model_cfg.block_size,
                  params.train.calibration_share)
    torch.manual_seed(params.train.seed)  # the initial weights too come from the seed
    train, val = (mapped_tokens(tokens_dir, split, scratch / f"{split}.npy")
                  for split in ("train", "val"))
    trainer = windows_trainer(GPT(model_cfg), train, val, params.train, out,
                              stride=params.window_stride,
                              input_noise=params.data.input_noise, callback=callback,
                              assets_dir=params.path("tokenizer"))
    return trainer, None


def read_examples(path: Path) -> list:
    """(inputs, labels) examples of one split of encoded pairs."""
    import pyarrow.parquet as pq

    from gpt.sft import Example

    table = pq.read_table(path, columns=["inputs", "labels"])
    return [Example(np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64))
            for x, y in zip(table["inputs"].to_pylist(), table["labels"].to_pylist(),
                            strict=True)]


def sft_trainer(params: Params, tokenizer: Tokenizer, out: Path, callback: Callback,
                  _scratch: Path) -> tuple[Trainer, str | None]:
    """Length-bucketed batches of records, from a registered base model or fresh weights."""
    from gpt.sft import PAD, BucketedBatches, eval_batches

    cfg, tokens_dir = params.train, params.path("tokens")
    base_version = None
    if params.sft.init:
        from registry import load_registered

        model, _, base_version = load_registered(params, params.sft.init)
        model.resize_vocab(tokenizer.vocab_size)
    else:
        torch.manual_seed(cfg.seed)
        model = GPT(params.model_config(tokenizer.vocab_size))
    train_examples = read_examples(tokens_dir / "train.parquet")
    val_examples = read_examples(tokens_dir / "val.parquet")
    longest = max(len(e.inputs) for e in train_examples + val_examples)
    if longest > model.config.block_size:
        raise CorpusError(f"a record needs {longest} tokens; the model's context is "
                          f"{model.config.block_size}")
    pad = tokenizer.special_tokens[PAD]
    batches = BucketedBatches(train_examples, cfg.batch_size, pad, cfg.seed,
                              device=pick_device(cfg.device))
    val = eval_batches(val_examples, cfg.batch_size, pad)
    trainer = Trainer(model, batches, lambda: val, cfg, out, callback=callback,
                      assets_dir=params.path("tokenizer"))
    return trainer, base_version


def write_loss_curve(history: list[dict[str, Any]], losses: list[dict[str, Any]],
                     csv_path: Path, png_path: Path) -> None:
    """loss.csv: a row per step with a train loss logged (every train.log_interval) or an
    eval, the val loss estimate on the eval steps only; the same curves as a PNG."""
    rows = {e["step"]: {"train": e["train_loss"], "val": ""} for e in losses}
    for event in history:
        rows[event["step"]] = {"train": event["train_loss"], "val": f"{event['val_loss']:.5f}"}
    with atomic_file(csv_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "train_loss", "val_loss_estimate"])
        for step in sorted(rows):
            writer.writerow([step, f"{rows[step]['train']:.5f}", rows[step]["val"]])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sorted(rows), [rows[s]["train"] for s in sorted(rows)], label="train")
    ax.plot([e["step"] for e in history], [e["val_loss"] for e in history], marker="o",
            label="val (estimate on train.eval_iters batches)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(png_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_samples(params: Params, checkpoint: Path, path: Path) -> str:
    """A few continuations of the best model; the one of `sample.prompt`'s kind comes back."""
    model, tokenizer = load_model(checkpoint), load_tokenizer(checkpoint)
    settings = params.sample.sampling()
    blocks = []
    for prompt in SAMPLE_PROMPTS:
        text = generate_text(model, tokenizer, prompt, settings)
        blocks.append(f"=== prompt: {prompt!r}\n{prompt}{text}\n")
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(blocks), encoding="utf-8")
    return blocks[1]


# In the staging folder: what the run is training (to resume it), and, under torchrun, the
# params the ranks read and the summary rank 0 writes back.
RUN_FILE, PARAMS_FILE, RESULT_FILE = "run.json", "params.json", "result.json"


def fingerprint(params: Params) -> dict[str, Any]:
    """What makes two runs train the same weights: the data and tokenizer, and every setting
    the train step reads (tasks/stages.py, which dvc.yaml's train stage agrees with)."""
    manifest = read_json(params.path("tokens") / MANIFEST)
    return {"kind": params.kind, "data": manifest["data_digest"],
            "tokenizer": manifest["tokenizer_digest"], "params": param_values(params, "train")}


def prepare_staging(params: Params, staging: Path, fresh: bool) -> bool:
    """Keep an interrupted run's staging folder when it can resume; True if it can."""
    wanted = fingerprint(params)
    latest = staging / LATEST
    resumable = ((latest / OPTIMIZER_FILE).is_file() and (latest / STATE_FILE).is_file()
                 and (staging / RUN_FILE).is_file() and read_json(staging / RUN_FILE) == wanted)
    if resumable and not fresh:
        return True
    if latest.exists():
        log.info("an interrupted run's checkpoint is in %s; starting over (%s)", staging,
                 "--fresh" if fresh else "its data or parameters differ")
    shutil.rmtree(staging, ignore_errors=True)
    write_json(staging / RUN_FILE, wanted)
    return False


def fit(params: Params, staging: Path, run_id: str | None, resume: bool) -> dict[str, Any]:
    """Build the kind's trainer here (this process, or one torchrun rank) and train it into
    staging; a plain summary back."""
    tokenizer = load_tokenizer(params.path("tokenizer"))
    with tempfile.TemporaryDirectory(prefix="tinygpt-tokens-") as scratch:
        trainer, base_version = kind_of(params).step("train")(params, tokenizer, staging,
                                                      metric_logger(params, run_id),
                                                      Path(scratch))
        trainer.should_stop = stop_requested
        resumed_from = None
        if resume:
            trainer.resume()
            resumed_from = trainer.step
            log.info("resuming an interrupted run from step %d (same data and parameters; "
                     "--fresh starts over)", resumed_from)
        result = trainer.fit()
    return {"steps": result.steps, "best_val_loss_estimate": result.best_val_loss,
            "train_seconds": round(result.seconds, 2),
            "tokens_per_s": round(result.tokens_per_s, 1),
            "stopped_early": result.stopped_early, "temperature": result.temperature,
            "parameters": trainer.model.num_params(),
            "base_version": base_version, "resumed_from_step": resumed_from,
            "nproc": trainer.world_size, "history": result.history, "losses": result.losses,
            "model": trainer.model.config.to_dict()}


def torchrun_command(params: Params, staging: Path, run_id: str | None,
                     resume: bool) -> list[str]:
    """torchrun for this node: standalone on one node; across nodes a static rendezvous at
    node 0's endpoint, so ranks follow node_rank and global rank 0 (which keeps the model
    and reports) is on node 0 (c10d would rank the nodes in the order it sorts them)."""
    settings = params.train
    where = ["--standalone"] if settings.nnodes == 1 else [
        f"--nnodes={settings.nnodes}", f"--node_rank={settings.node_rank}",
        "--rdzv_backend=static", f"--rdzv_endpoint={settings.rdzv_endpoint}"]
    return [str(Path(sys.executable).with_name("torchrun")), *where,
            f"--nproc_per_node={settings.nproc}", "-m", "tasks.distributed", str(staging),
            run_id or "", str(int(resume))]


def fit_distributed(params: Params, staging: Path, run_id: str | None,
                    resume: bool) -> dict[str, Any] | None:
    """`fit` in train.nproc processes of each of train.nnodes nodes under torchrun
    (tasks/distributed.py is one rank); node 0's summary back, None on the others."""
    values = params.to_dict()
    values["model"].pop("vocab_size")
    write_json(staging / PARAMS_FILE, values)
    command = torchrun_command(params, staging, run_id, resume)
    log.info("training in %d processes on node %d of %d: %s", params.train.nproc,
             params.train.node_rank, params.train.nnodes, " ".join(command))
    threads = max(1, (os.cpu_count() or 1) // params.train.nproc)  # each rank its share
    ranks = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    while (code := ranks.poll()) is None:
        if stop_requested():  # SIGTERM to this process only: pass it on, torchrun stops them
            ranks.send_signal(signal.SIGTERM)
            code = ranks.wait()
            break
        time.sleep(0.5)
    check_stop()  # a stopped run says so (resumable from the last eval's latest/)
    if code == 0 and params.train.node_rank > 0:
        return None
    if code != 0 or not (staging / RESULT_FILE).is_file():
        raise RuntimeError(f"distributed training failed (torchrun exit {code}); its ranks' "
                           f"errors are in the log above")
    return read_json(staging / RESULT_FILE)


def join_training(params: Params, model_dir: Path) -> dict[str, Any]:
    """This node's ranks of a training that node 0 keeps: nothing written here but a scratch
    folder, removed after (on a shared folder, node 0's staging is left alone)."""
    staging = model_dir.with_name(f".{model_dir.name}.node{params.train.node_rank}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        fit_distributed(params, staging, None, resume=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"node_rank": params.train.node_rank, "nnodes": params.train.nnodes,
            "nproc": params.train.nproc}


def train(params: Params, run_id: str | None = None, fresh: bool = False) -> dict[str, Any]:
    """Train the run's kind of model into the model folder; summary metrics back."""
    model_dir = params.path("model")
    if params.train.node_rank > 0:
        return join_training(params, model_dir)
    staging = model_dir.with_name(f".{model_dir.name}.staging")
    # Across nodes a run starts over: the other nodes' ranks hold no checkpoint to resume from.
    resume = prepare_staging(params, staging, fresh or params.train.nnodes > 1)
    distributed = params.train.nproc > 1 or params.train.nnodes > 1
    result = (fit_distributed if distributed else fit)(params, staging, run_id, resume)
    for scratch in (RUN_FILE, PARAMS_FILE, RESULT_FILE):
        (staging / scratch).unlink(missing_ok=True)
    replace_directory(staging, model_dir)

    metrics_dir, reports = params.path("metrics"), params.path("reports")
    summary = {k: v for k, v in result.items() if k not in ("history", "losses", "model")}
    write_json(metrics_dir / TRAIN_METRICS, summary)
    write_loss_curve(result["history"], result["losses"], metrics_dir / LOSS_CSV,
                     reports / "loss_curve.png")
    artifacts = [reports / "loss_curve.png"]
    sample = None
    if kind_of(params).samples:
        sample = write_samples(params, model_dir / BEST, reports / "samples.txt")
        artifacts.append(reports / "samples.txt")
    if run_id is not None:
        values = params.to_dict()
        flat = as_flat_dict({"model": result["model"], "train": values["train"],
                             "tokenizer": values["tokenizer"], "data": values["data"]})
        log_params(params, run_id, flat)
        run_artifacts(params, run_id, artifacts)
    return {**summary, "checkpoint": str(model_dir / BEST), "sample": sample}
