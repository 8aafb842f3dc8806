"""Quality per second on Tiny Shakespeare: val bits per byte on the last 10% of the text.

The peer is nanoGPT's CPU recipe (char-level, 4 layers x 128, block 64, batch 12, 2000
iterations, evals every 250), run here with the nanoGPT-shaped model. Ours then trains with the
one-minute recipe (recipes/one-minute.yaml) for 60 s, with the defaults of params.yaml for the
peer's wall-clock time, and (unless --skip-long) for the defaults' whole run: params.yaml's
steps, as `make run` trains them (the goal: 2.05 bits per byte within 15 minutes). Each run's
curve follows the table: val bits per byte at each of its evals, against minutes.
Bits per byte does not depend on the tokenizer, so a char model and a BPE model compare.
`--ablation SECONDS` instead trains each form of our block (gpt2, modern, + QK-norm, + untied
head) and each optimizer (AdamW, Muon) for the same time.

    python bench/quality.py [--skip-long] [--also-seconds 197]
    python bench/quality.py --ablation 180
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.baselines import NanoGPT, nanogpt_lr
from bench.common import ROOT, save, table
from gpt.batches import sequential_windows
from gpt.config import GPT2_BLOCK, as_overrides, load_params, recipe_overrides
from gpt.quick import train_from_text
from tests.scratch import corpus_path


def nanogpt_recipe(text: str, iters: int = 2000) -> dict:
    """nanoGPT's shakespeare_char CPU run: wall seconds, val bits per byte, and the curve of
    its periodic estimates ([minutes, val bits per byte] every 250 iterations)."""
    started = time.perf_counter()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = np.array([stoi[c] for c in text], dtype=np.int64)
    cut = int(0.9 * len(data))
    train, val = torch.from_numpy(data[:cut]), torch.from_numpy(data[cut:])
    block, batch = 64, 12
    torch.manual_seed(1337)
    model = NanoGPT(len(chars), block, n_layer=4, n_head=4, n_embd=128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99),
                                  weight_decay=0.1)

    def get_batch(split: torch.Tensor):
        ix = torch.randint(len(split) - block, (batch,))
        x = torch.stack([split[i:i + block] for i in ix])
        y = torch.stack([split[i + 1:i + 1 + block] for i in ix])
        return x, y

    curve = []
    for it in range(iters + 1):
        if it % 250 == 0:  # the recipe's periodic estimate (20 batches per split)
            model.eval()
            with torch.no_grad():
                for _ in range(20):
                    model(*get_batch(train))
                val_losses = [model(*get_batch(val)).item() for _ in range(20)]
            curve.append([(time.perf_counter() - started) / 60,
                          float(np.mean(val_losses)) / math.log(2)])
            model.train()
        if it == iters:
            break
        for group in optimizer.param_groups:
            group["lr"] = nanogpt_lr(it, iters, 1e-3, 1e-4, 100)
        loss = model(*get_batch(train))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % 500 == 0:
            print(f"  nanoGPT recipe: iter {it}/{iters}, loss {loss.item():.3f}", flush=True)
    seconds = time.perf_counter() - started
    model.eval()
    nats, count = 0.0, 0
    with torch.no_grad():
        for x, y in sequential_windows(val.numpy(), block, 64):
            nats += model(x, y).item() * y.numel()
            count += y.numel()
    # The corpus is ASCII: one character is one byte.
    return {"seconds": seconds, "bits_per_byte": nats / count / math.log(2), "curve": curve}


# The block's forms, each measured at the same wall-clock (--ablation SECONDS), as overrides
# of the defaults (the modern block with QK-norm and attention biases, Muon).
GPT2 = as_overrides({"model": GPT2_BLOCK})
ADAMW = ["train.optimizer=adamw"]
ABLATION = {
    "gpt2 (the gpt2 recipe's block)": [*GPT2, *ADAMW],
    "modern: rotary, RMSNorm, SwiGLU": ["model.qk_norm=false", *ADAMW],
    "modern + QK-norm": ADAMW,
    "modern + QK-norm, untied head": ["model.tie_embeddings=false", *ADAMW],
    "gpt2, Muon": GPT2,
    "modern + QK-norm, Muon (the defaults)": [],
}


def ours(budget: float | None, out: Path, overrides: list[str] | None = None) -> dict:
    """Train for budget seconds (None: params.yaml's steps): wall seconds, steps, val bits per
    byte, and the curve of the evals ([minutes, val bits per byte], each eval's loss on its
    fixed batches in nats per token scaled by the whole val split's bits per byte over its
    loss)."""
    budgeted = [] if budget is None else [f"train.max_seconds={budget}", "train.max_steps=100000"]
    params = load_params(ROOT / "params.yaml", [*budgeted, "sample.max_new_tokens=1",
                                                *(overrides or [])])
    started, evals = time.perf_counter(), []

    def record(event: dict) -> None:
        if event["kind"] == "eval":
            evals.append(((time.perf_counter() - started) / 60, event["val_loss"]))

    metrics = train_from_text(corpus_path(), out, params, callback=record)
    per_nat = metrics["val_bits_per_byte"] / metrics["val_loss"]
    return {"seconds": metrics["wall_seconds"], "bits_per_byte": metrics["val_bits_per_byte"],
            "steps": metrics["steps"],
            "curve": [[minutes, loss * per_nat] for minutes, loss in evals]}


def print_curve(name: str, curve: list[list[float]]) -> None:
    print(f"{name}: " + ", ".join(f"{minutes:.1f} min {bpb:.3f}" for minutes, bpb in curve))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--also-seconds", type=float, action="append", default=[],
                        help="also train ours for this many seconds (e.g. 197, the issue's "
                             "nanoGPT time)")
    parser.add_argument("--ablation", type=float, metavar="SECONDS",
                        help="only compare the block's forms (model.arch, qk_norm, tying) "
                             "and optimizers, each trained for SECONDS")
    args = parser.parse_args()
    if args.ablation:
        ablation(args.ablation)
        return
    text = corpus_path().read_text(encoding="utf-8")
    print("nanoGPT CPU recipe (peer) ...", flush=True)
    peer = nanogpt_recipe(text)
    rows = [{"run": "nanoGPT CPU recipe (char, 4x128, 2000 iters)", **peer}]
    scratch = Path(tempfile.mkdtemp())
    minute = ours(60, scratch / "minute", recipe_overrides("one-minute", ROOT / "recipes"))
    rows.append({"run": "tinygpt one-minute recipe, 60 s", **minute})
    # Our budget covers everything (tokenizer training and encoding too): leave them ~5 s.
    same = ours(peer["seconds"] - 5, scratch / "same")
    rows.append({"run": "tinygpt defaults, same wall-clock", **same})
    for seconds in args.also_seconds:
        rows.append({"run": f"tinygpt defaults, {seconds:.0f} s",
                     **ours(seconds - 5, scratch / f"s{seconds:.0f}")})
    if not args.skip_long:
        whole = ours(None, scratch / "whole")
        rows.append({"run": f"tinygpt defaults, the whole run ({whole['steps']} steps)", **whole})
    for row in rows:
        row["vs_peer_bpb"] = row["bits_per_byte"] / peer["bits_per_byte"]
    print(table(rows, ["run", "seconds", "bits_per_byte", "vs_peer_bpb"]))
    print("\nval bits per byte against minutes (each run's own evals):")
    for row in rows:
        print_curve(row["run"], row["curve"])
    print(f"results: {save('quality', rows)}")


def ablation(seconds: float) -> None:
    scratch = Path(tempfile.mkdtemp())
    rows = []
    for k, (name, overrides) in enumerate(ABLATION.items()):
        print(f"{name} ...", flush=True)
        rows.append({"run": name, **ours(seconds, scratch / str(k), overrides)})
    for row in rows:
        row["vs_gpt2_bpb"] = row["bits_per_byte"] / rows[0]["bits_per_byte"]
    print(table(rows, ["run", "seconds", "steps", "bits_per_byte", "vs_gpt2_bpb"]))
    print(f"results: {save('quality-ablation', rows, seconds=seconds)}")


if __name__ == "__main__":
    main()
