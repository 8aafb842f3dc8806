"""Training throughput: ours (fp32, eager and compiled; bf16 autocast with the fused
attention, and with `model.attn_impl: auto`, eager and compiled) against transformers'
GPT2LMHeadModel and a nanoGPT-shaped model (eager, and compiled as nanoGPT trains by default),
same shape, same batches, same machine, interleaved rounds. The first two steps of each
contender are its warm-up, timed apart: a compiled contender compiles there. No contender
uses dropout (nanoGPT's default for pretraining; the peers here have none). On CUDA every model
and batch is on the GPU, and the clock is read after a synchronize.

Also model FLOP/s (6 x params + attention per token, nanoGPT's estimate) as a share of a large
matmul of the same dtype measured in the same run, and of the model's own GEMMs timed alone
(each linear layer's forward product and its two backward ones, at one step's tokens); then
where a step of ours spends its time, by kind of op (torch.profiler's self time). The whole run
allocates as training does (gpt.train.freed_memory_kept), every contender alike.

    python bench/train_speed.py [--steps 8] [--rounds 2] [--device cpu|cuda] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.baselines import NanoGPT
from bench.common import save, table
from gpt.config import GPT2_BLOCK
from gpt.model import GPT, GPTConfig
from gpt.train import (
    TrainConfig,
    autocast,
    build_optimizer,
    compile_for_training,
    deterministic_kernels,
    freed_memory_kept,
)

VOCAB, BLOCK, LAYERS, HEADS, EMBD = 8192, 256, 6, 6, 384
Step = Callable[[torch.Tensor, torch.Tensor], None]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels, so the clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def products_rate(products: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                  reps: int) -> float:
    """FLOP/s of the matrix products a @ b, each run reps times after one warm-up."""
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in products)
    for a, b in products:
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(reps):
        for a, b in products:
            a @ b
    synchronize(device)
    return flops * reps / (time.perf_counter() - started)


def matmul_flops(dtype: torch.dtype, device: torch.device, reps: int = 10) -> float:
    n = 8192 if device.type == "cuda" else 2048  # large enough to keep the device busy
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    return products_rate([(a, b)], device, reps)


def own_gemm_flops(dtype: torch.dtype, device: torch.device, batch: int,
                   reps: int = 3) -> float:
    """The matmul rate at the model's own shapes: for each linear layer (qkv, attention out,
    MLP in and out, the head) x @ w, and the backward's grad @ w.T and x.T @ grad."""
    tokens = batch * BLOCK
    shapes = [(EMBD, 3 * EMBD), (EMBD, EMBD), (EMBD, 4 * EMBD), (4 * EMBD, EMBD)] * LAYERS
    products = []
    for k, n in [*shapes, (EMBD, VOCAB)]:
        x, w, grad = (torch.randn(*shape, dtype=dtype, device=device)
                      for shape in ((tokens, k), (k, n), (tokens, n)))
        products += [(x, w), (grad, w.T), (x.T, grad)]
    return products_rate(products, device, reps)


# torch.profiler's op names, by kind (the first kind whose word is in the name; else "other").
OP_KINDS = {"loss": ("cross_entropy", "log_softmax", "nll_loss"),
            "matmul": ("mm", "matmul", "linear"),
            "attention": ("attention", "softmax"),
            "norms": ("layer_norm", "rms_norm"),
            "casts": ("aten::to", "_to_copy", "copy_"),
            "optimizer and clipping": ("adam", "foreach", "norm", "zero_", "clamp"),
            "activations": ("gelu", "silu")}


def op_profile(step: Step, batch: int, device: torch.device, steps: int = 2) -> dict[str, float]:
    """Share of a step's self time (CPU, or CUDA kernels on a GPU) by kind of op."""
    from torch.profiler import ProfilerActivity, profile

    batches = random_batches(steps + 1, batch, device, seed=1)
    step(batches[0][:, :-1], batches[0][:, 1:])  # warm-up
    activities = [ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU]
    with profile(activities=activities) as measured:
        for b in batches[1:]:
            step(b[:, :-1], b[:, 1:])
        synchronize(device)
    spent: dict[str, float] = {}
    for event in measured.key_averages():
        seconds = (event.self_device_time_total if device.type == "cuda"
                   else event.self_cpu_time_total)
        kind = next((k for k, words in OP_KINDS.items()
                     if any(word in event.key for word in words)), "other")
        spent[kind] = spent.get(kind, 0.0) + seconds
    total = sum(spent.values()) or 1.0
    return {kind: 100 * seconds / total
            for kind, seconds in sorted(spent.items(), key=lambda item: -item[1])}


def flops_per_token(params: int) -> float:
    return 6 * params + 12 * LAYERS * EMBD * BLOCK


def ours(device: torch.device, dtype: torch.dtype, compiled: bool = False,
         attention: str = "sdpa") -> tuple[Step, int]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=LAYERS, n_head=HEADS,
                          n_embd=EMBD, dropout=0.0, attn_impl=attention, **GPT2_BLOCK)).to(device)
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw"))  # the peers' block and rule
    forward = compile_for_training(model, device) if compiled else model

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with deterministic_kernels(compiled):  # the backward compiles on its first call
            with autocast(device, dtype):
                _, loss = forward(x, y)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, model.num_params()


def transformers_gpt2(device: torch.device) -> tuple[Step, int]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_embd=EMBD,
                                       n_layer=LAYERS, n_head=HEADS, resid_pdrop=0.0,
                                       embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
                                       eos_token_id=None)).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)

    def step(x: torch.Tensor, _y: torch.Tensor) -> None:
        loss = model(input_ids=x, labels=x).loss  # transformers shifts the labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters()) - BLOCK * EMBD


def nanogpt(device: torch.device, compiled: bool = False) -> tuple[Step, int]:
    torch.manual_seed(0)
    model = NanoGPT(VOCAB, BLOCK, LAYERS, HEADS, EMBD).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    forward = torch.compile(model) if compiled else model  # nanoGPT's compile=True

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters()) - BLOCK * EMBD


def random_batches(count: int, batch: int, device: torch.device, seed: int) -> list[torch.Tensor]:
    """Rows of BLOCK + 1 random token ids: inputs and, shifted by one, targets."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(VOCAB, (batch, BLOCK + 1), generator=gen).to(device)
            for _ in range(count)]


def tokens_per_s(step: Step, steps: int, batch: int, device: torch.device
                 ) -> tuple[float, float]:
    """(tokens/s after two warm-up steps, the warm-up's seconds: compilation included)."""
    batches = random_batches(steps + 2, batch, device, seed=0)
    started = time.perf_counter()
    for b in batches[:2]:
        step(b[:, :-1], b[:, 1:])
    synchronize(device)
    warmed = time.perf_counter()
    for b in batches[2:]:
        step(b[:, :-1], b[:, 1:])
    synchronize(device)
    return steps * batch * BLOCK / (time.perf_counter() - warmed), warmed - started


def gigas(rates: dict[str, float]) -> dict[str, float]:
    return {name: rate / 1e9 for name, rate in rates.items()}


@freed_memory_kept()  # the peers too: one allocator setting for every contender
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    peak = {name: matmul_flops(dtype, device) for name, dtype in dtypes.items()}
    own = {name: own_gemm_flops(dtype, device, args.batch) for name, dtype in dtypes.items()}
    contenders: dict[str, tuple[Callable[[], tuple[Step, int]], str]] = {
        "transformers GPT2LMHeadModel fp32": (lambda: transformers_gpt2(device), "float32"),
        "nanoGPT-shaped fp32": (lambda: nanogpt(device), "float32"),
        "nanoGPT-shaped fp32, compiled": (lambda: nanogpt(device, compiled=True), "float32"),
        "tinygpt fp32": (lambda: ours(device, torch.float32), "float32"),
        "tinygpt fp32, compiled": (lambda: ours(device, torch.float32, compiled=True),
                                   "float32"),
        "tinygpt bf16 autocast": (lambda: ours(device, torch.bfloat16), "bfloat16"),
        "tinygpt bf16 autocast, attn_impl auto": (
            lambda: ours(device, torch.bfloat16, attention="auto"), "bfloat16"),
        "tinygpt bf16 autocast, attn_impl auto, compiled": (
            lambda: ours(device, torch.bfloat16, compiled=True, attention="auto"), "bfloat16"),
    }
    best: dict[str, float] = {}
    warmup: dict[str, float] = {}  # the first round's: later rounds reuse compiled kernels
    params: dict[str, int] = {}
    for round_ in range(args.rounds):
        for name, (build, _) in contenders.items():
            step, params[name] = build()
            rate, seconds = tokens_per_s(step, args.steps, args.batch, device)
            best[name] = max(best.get(name, 0.0), rate)
            warmup.setdefault(name, seconds)
            print(f"round {round_ + 1}: {name}: {best[name]:,.0f} tok/s", flush=True)
    reference = best["transformers GPT2LMHeadModel fp32"]
    rows = []
    for name, (_, dtype) in contenders.items():
        achieved = flops_per_token(params[name]) * best[name]
        rows.append({"model": name, "tokens_per_s": best[name],
                     "vs_transformers_fp32": best[name] / reference,
                     "vs_nanogpt_fp32": best[name] / best["nanoGPT-shaped fp32"],
                     "model_gflops": achieved / 1e9,
                     "pct_of_matmul": 100 * achieved / peak[dtype],
                     "pct_of_own_gemms": 100 * achieved / own[dtype],
                     "warmup_s": warmup[name]})
    print(f"\n{LAYERS} layers x {EMBD}, block {BLOCK}, batch {args.batch}, vocab {VOCAB}, "
          f"{args.device}; matmul {peak['float32'] / 1e9:.0f} GFLOP/s fp32, "
          f"{peak['bfloat16'] / 1e9:.0f} bf16; the model's own GEMMs alone "
          f"{own['float32'] / 1e9:.0f} fp32, {own['bfloat16'] / 1e9:.0f} bf16")
    print(table(rows, ["model", "tokens_per_s", "vs_transformers_fp32", "vs_nanogpt_fp32",
                       "model_gflops", "pct_of_matmul", "pct_of_own_gemms", "warmup_s"]))
    profiles = {}
    for name, (dtype, attention) in {"float32": (torch.float32, "sdpa"),
                                     "bfloat16": (torch.bfloat16, "sdpa"),
                                     "bfloat16, attn_impl auto": (torch.bfloat16, "auto")
                                     }.items():
        profiles[name] = op_profile(ours(device, dtype, attention=attention)[0], args.batch,
                                    device)
        print(f"\nwhere a tinygpt {name} step's time goes: " + ", ".join(
            f"{kind} {share:.0f}%" for kind, share in profiles[name].items()))
    result = "_".join(["train_speed", *([device.type] if device.type != "cpu" else []),
                       *([f"b{args.batch}"] if args.batch != 16 else [])])
    path = save(result, rows, batch=args.batch, matmul_gflops=gigas(peak),
                own_gemm_gflops=gigas(own), op_profile_pct=profiles)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
