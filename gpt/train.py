"""The training loop: AdamW, warmup + cosine schedule, clipping, accumulation, eval, early
stopping, and exactly resumable checkpoints.

The trainer knows nothing of Prefect or MLflow. It reports through a callback that receives
plain dicts ({"kind": "train" | "eval", "step": ..., ...}); the caller decides where they go.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gpt.batches import Batch, InputNoise, RandomWindows, StridedWindows, sequential_windows
from gpt.calibrate import fit_temperature, fold_temperature
from gpt.checkpoint import (
    OPTIMIZER_FILE,
    STATE_FILE,
    load_model,
    load_training_state,
    optimizer_tensors,
    restore_optimizer,
    save_tensors,
    write_model_files,
)
from gpt.config import TrainConfig
from gpt.files import atomic_directory, write_json
from gpt.loss import IGNORE_INDEX
from gpt.model import GPT
from gpt.muon import MuonAdamW
from gpt.progress import Bar, duration

log = logging.getLogger("tinygpt.train")

Callback = Callable[[dict], None]


class BatchSource(Protocol):
    """Training batches, drawn in an order that a saved state reproduces exactly."""

    def next(self) -> Batch: ...
    def get_state(self) -> torch.Tensor: ...
    def set_state(self, state: torch.Tensor) -> None: ...
@dataclass
class TrainResult:
    steps: int
    best_val_loss: float
    last_val_loss: float
    stopped_early: bool
    seconds: float
    tokens_per_s: float
    best_dir: Path
    latest_dir: Path
    history: list[dict] = field(default_factory=list)   # the evals
    losses: list[dict] = field(default_factory=list)    # the train loss every log_interval
    temperature: float = 1.0  # what best/'s logits were divided by (train.calibration_share)


def pick_device(name: str) -> torch.device:
    """The device to train on: "auto" is CUDA, else Apple's MPS, else the CPU; under torchrun
    on GPUs, each rank its own (LOCAL_RANK)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name}, but this host has no CUDA GPU that torch "
                         f"{torch.__version__} can use (a gpu pool's run went to a CPU worker?)")
    return device


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless torch.distributed is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RankShare:
    """One rank's share of a batch source: of every `world` consecutive batches, the rank-th.

    Every rank draws the same seeded sequence and keeps its own batch, so N ranks see exactly
    the batches one process would see as N micro-batches (grad_accum = N), and the state (the
    shared source's) saves and resumes the same on every rank.
    """

    def __init__(self, source: BatchSource, rank: int, world_size: int) -> None:
        self.source, self.rank, self.world_size = source, rank, world_size

    def next(self) -> Batch:
        batches = [self.source.next() for _ in range(self.world_size)]
        return batches[self.rank]

    def get_state(self) -> torch.Tensor:
        return self.source.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.source.set_state(state)


def cpu_bf16_hardware() -> str:
    """The CPU's bf16 matmul hardware: "amx" (Intel's AMX tiles), "avx512_bf16" (AVX-512 BF16
    instructions, AMD Zen 4 and later Intel) or "none", from its flags in /proc/cpuinfo (where
    there is none, from whether oneDNN runs bf16 natively)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        native = (torch.backends.mkldnn.is_available()
                  and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return "avx512_bf16" if native else "none"
    return bf16_hardware_of(set(next((line.split(":", 1)[1].split()
                                      for line in info.splitlines()
                                      if line.startswith("flags")), [])))


def bf16_hardware_of(flags: set[str]) -> str:
    if {"amx_bf16", "amx_tile"} <= flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else "none"


# What `auto` trains in on a CPU, by its bf16 hardware: the faster of fp32 and bf16 autocast in
# bench/train_speed.py on each kind of machine (README, Training speed). Without bf16 hardware,
# bf16 is emulated and slower than fp32.
AUTO_CPU_DTYPE = {"amx": torch.bfloat16, "avx512_bf16": torch.bfloat16, "none": torch.float32}
CPU_BF16_LABELS = {"amx": "AMX", "avx512_bf16": "AVX-512 BF16", "none": "no bf16 hardware"}


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """Autocast dtype: on a CPU, AUTO_CPU_DTYPE's choice for its hardware; on CUDA, bf16 where
    it runs natively; fp32 elsewhere (MPS included)."""
    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
    if device.type == "cpu":
        return AUTO_CPU_DTYPE[cpu_bf16_hardware()]
    native = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float32


def describe_precision(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """How training computes, and why, for its first line: "bfloat16 autocast (auto: the faster
    on a CPU with AMX)"."""
    what = "float32" if dtype == torch.float32 else f"{str(dtype).split('.')[-1]} autocast"
    if name != "auto":
        return f"{what} (as set)"
    if device.type != "cpu":
        return f"{what} (auto on {device.type})"
    return f"{what} (auto: the faster on a CPU with {CPU_BF16_LABELS[cpu_bf16_hardware()]})"


# Where `train.compile: auto` compiles: on a CPU with AMX, where make run's training took 688 s
# compiled against 791 s eager, compiling included (README, Quality per minute); elsewhere it
# was not measured faster for the defaults. Compiling takes 20-30 s first, which short runs do
# not repay: only runs of AUTO_COMPILE_MIN_STEPS or more, with no time budget under
# AUTO_COMPILE_MIN_SECONDS.
AUTO_COMPILE_CPUS = {"amx"}
AUTO_COMPILE_MIN_STEPS = 500
AUTO_COMPILE_MIN_SECONDS = 300


def pick_compile(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether to compile the training step: train.compile, or for auto, where it pays."""
    if cfg.compile != "auto":
        return bool(cfg.compile)
    long_enough = (cfg.max_steps >= AUTO_COMPILE_MIN_STEPS
                   and not 0 < cfg.max_seconds < AUTO_COMPILE_MIN_SECONDS)
    return (device.type == "cpu" and cpu_bf16_hardware() in AUTO_COMPILE_CPUS
            and long_enough)


def describe_compile(setting: bool | str, compiled: bool) -> str:
    """The compile half of training's first line: "compiled (auto: ...)", or "eager"."""
    what = "compiled" if compiled else "eager"
    if setting != "auto":
        return f"{what} (as set)"
    why = ("on a CPU with AMX, for a long run" if compiled
           else "compiled only on a CPU with AMX, for a long run")
    return f"{what} (auto: {why})"


def compile_for_training(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """model under torch.compile, as `train.compile` runs it. On a CPU the random numbers left
    in the graph are the dropout hash's seeds (gpt.model.hashed_keep), one per call: with
    `fallback_random` each is one draw from torch's generator that the hash's kernel reads,
    where inductor would recompute its own per vector of the kernel's loop. A GPU keeps
    inductor's own random numbers, drawn in parallel there."""
    return torch.compile(model, options={"fallback_random": device.type == "cpu"})


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast with fp32 master weights, or nothing for fp32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextmanager
def deterministic_kernels(on: bool) -> Iterator[None]:
    """Compiled kernels that add in a fixed order, so a compiled run resumes bit-exactly:
    without this, inductor's CPU scatter-adds (the embedding's gradient) add from several
    threads in whatever order they arrive. The previous setting comes back afterwards."""
    if not on:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


# glibc's mallopt parameters (malloc.h), the largest mmap threshold it takes on 64 bits, and
# its default cap on blocks mapped on their own.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
DEFAULT_MMAP_MAX = 65536


@contextmanager
def freed_memory_kept() -> Iterator[None]:
    """Keep the memory a training step frees in the process, for the next step to reuse.

    glibc maps each large block on its own and unmaps it when freed, and hands the heap's free
    top back to the operating system past a trim threshold. A step frees and makes again the
    same activations (the MLP's hidden layer, attention scores, megabytes each; the head's
    logits, 67 MB in bf16 at the training bench's shape), so every step faulted their pages in
    afresh, zeroed by the kernel: about 200 MB a step at the defaults. Inside, every block
    comes from the heap (none is mapped on its own) and the heap's free memory stays;
    afterwards the free memory goes back, blocks past glibc's largest mmap threshold are mapped
    on their own again, and the heap trims past twice that threshold (glibc's own rule once its
    threshold has grown to the largest). Elsewhere than on glibc, nothing changes."""
    if platform.libc_ver()[0] != "glibc":
        yield
        return
    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.malloc_trim(0)


def lr_at(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr at max_steps.

    With a time budget (max_seconds), the decay follows whichever runs out first, steps or
    seconds, so a budgeted run still ends its schedule at min_lr.
    """
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.max_seconds > 0:
        progress = max(progress, elapsed / cfg.max_seconds)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr + cosine * (cfg.learning_rate - cfg.min_lr)


def build_optimizer(model: GPT, cfg: TrainConfig,
                    dtype: torch.dtype = torch.float32) -> torch.optim.Optimizer:
    """AdamW with weight decay on weight matrices and embeddings only; with `optimizer:
    muon`, the blocks' weight matrices move by Muon instead (gpt/muon.py), its iteration in
    the training's dtype."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "muon":
        hidden = {id(p) for block in model.transformer.h for p in block.parameters()
                  if p.dim() == 2}
        groups = [
            {"params": [p for p in params if id(p) in hidden], "muon": True,
             "lr_scale": cfg.muon_lr / cfg.learning_rate, "momentum": cfg.muon_momentum,
             "weight_decay": 0.0},
            {"params": [p for p in params if p.dim() >= 2 and id(p) not in hidden],
             "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return MuonAdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                         ns_dtype=dtype)
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel updates every parameter in one call; it exists on CPU and CUDA.
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                             fused=True)


@torch.no_grad()
def estimate_loss(model: GPT, batches: Iterable[Batch], device: torch.device,
                  dtype: torch.dtype) -> float:
    """Mean loss over batches, weighted by the targets each one scores."""
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        with autocast(device, dtype):
            _, loss = model(x.to(device), y.to(device))
        scored = int((y != IGNORE_INDEX).sum())
        total += loss.item() * scored
        count += scored
    model.train()
    return total / max(count, 1)


class TrainingInterrupted(Exception):
    """Training stopped on request; latest/ holds the step it reached, ready to resume."""

    def __init__(self, step: int, latest_dir: Path) -> None:
        super().__init__(f"training stopped at step {step}; {latest_dir} can resume it")
        self.step = step


class Trainer:
    """Trains a GPT on a batch source and writes best/ and latest/ checkpoints to out_dir.

    val_batches returns the same validation batches on every call, so evals compare.
    should_stop is asked after every step: when it says yes, latest/ is written and
    TrainingInterrupted raised, so a stopped run resumes exactly where it stopped.

    Under torch.distributed (torchrun), each rank trains on its share of every batch through
    DistributedDataParallel, which averages the gradients; every rank evaluates (the same
    batches, the same weights: the same answer, so all stop together), and only rank 0 logs,
    reports and writes checkpoints.
    """

    def __init__(self, model: GPT, train_batches: BatchSource,
                 val_batches: Callable[[], Iterable[Batch]], cfg: TrainConfig,
                 out_dir: str | Path, callback: Callback | None = None,
                 assets_dir: str | Path | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 calibration_batches: Callable[[], Iterable[Batch]] | None = None) -> None:
        self.cfg = cfg
        self.should_stop = should_stop or (lambda: False)
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        torch.manual_seed(cfg.seed)
        self.model = model.to(self.device)
        self.rank, self.world_size = world()
        self.lead = self.rank == 0
        self.train_model = self.model
        if self.world_size > 1:
            train_batches = RankShare(train_batches, self.rank, self.world_size)
            self.train_model = DistributedDataParallel(self.model)
        self.eager_model = self.train_model
        self.compiled = pick_compile(cfg, self.device)
        self.compile_pending = self.compiled  # compiled on the first step (see _forward)
        if self.compiled:
            self.train_model = compile_for_training(self.train_model, self.device)
        self.out_dir = Path(out_dir)
        self.callback = (callback if self.lead and callback else (lambda event: None))
        self.assets_dir = Path(assets_dir) if assets_dir is not None else None
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.calibration_batches = calibration_batches
        self.temperature = 1.0
        self.optimizer = build_optimizer(self.model, cfg, self.dtype)
        self.step = 0
        self.best_val_loss = math.inf
        self.last_val_loss = math.inf
        self.bad_evals = 0
        self.history: list[dict] = []  # one event per eval
        self.losses: list[dict] = []  # {step, train_loss} every log_interval, for the curve

    @property
    def best_dir(self) -> Path:
        return self.out_dir / "best"

    @property
    def latest_dir(self) -> Path:
        return self.out_dir / "latest"

    def numbered_checkpoints(self) -> list[Path]:
        """The step-NNNNNN/ folders (train.checkpoint_interval), oldest first."""
        return sorted(self.out_dir.glob("step-[0-9]*"))

    # -- checkpoints -------------------------------------------------------------------------

    def _write_latest(self, folder: Path) -> None:
        write_model_files(self.model, folder, self.assets_dir)
        tensors = optimizer_tensors(self.optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":  # dropout on the GPU draws from the GPU's generator
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        tensors["rng.batches"] = self.train_batches.get_state()
        save_tensors(tensors, folder / OPTIMIZER_FILE)
        write_json(folder / STATE_FILE, {
            "step": self.step, "best_val_loss": self.best_val_loss,
            "last_val_loss": self.last_val_loss, "bad_evals": self.bad_evals,
            "train_config": asdict(self.cfg), "history": self.history,
            "losses": self.losses,
        })

    def save(self, improved: bool) -> None:
        if not self.lead:
            return
        atomic_directory(self.latest_dir, self._write_latest)
        if improved:
            atomic_directory(self.best_dir,
                             lambda tmp: write_model_files(self.model, tmp, self.assets_dir))

    def save_numbered(self) -> None:
        """A resumable checkpoint named for its step; only the newest keep_checkpoints stay."""
        if not self.lead:
            return
        atomic_directory(self.out_dir / f"step-{self.step:06d}", self._write_latest)
        for old in self.numbered_checkpoints()[:-self.cfg.keep_checkpoints]:
            shutil.rmtree(old)

    def resume(self, folder: str | Path | None = None) -> None:
        """Continue from a training checkpoint (default: out_dir/latest)."""
        source = Path(folder) if folder is not None else self.latest_dir
        tensors, state = load_training_state(source)
        loaded = load_model(source)
        self.model.load_state_dict(loaded.state_dict())
        torch.set_rng_state(tensors.pop("rng.torch"))
        cuda_rng = tensors.pop("rng.cuda", None)
        if cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, self.device)
        self.train_batches.set_state(tensors.pop("rng.batches"))
        restore_optimizer(self.optimizer, tensors)
        self.step = state["step"]
        self.best_val_loss = state["best_val_loss"]
        self.last_val_loss = state["last_val_loss"]
        self.bad_evals = state["bad_evals"]
        self.history = state["history"]
        self.losses = state.get("losses", [])  # a state saved before they were kept
        log.info("resumed from %s at step %d", source, self.step)

    # -- the loop ----------------------------------------------------------------------------

    def _train_step(self, lr: float) -> tuple[float, int]:
        """One optimizer step; returns the mean loss and the number of tokens fed."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's groups run at their own rate
        total, tokens = 0.0, 0
        for micro in range(self.cfg.grad_accum):
            x, y = self.train_batches.next()
            last = micro == self.cfg.grad_accum - 1
            # DDP averages gradients across ranks once, on the last micro-batch's backward.
            sync = nullcontext() if last or self.world_size == 1 else self.train_model.no_sync()
            with sync:
                loss = self._forward(x, y)
                (loss / self.cfg.grad_accum).backward()
            total += loss.item()
            tokens += x.numel() * self.world_size  # every rank fed a batch this size
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / self.cfg.grad_accum, tokens

    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss. The first call of a compiled model compiles it; if that fails,
        training goes on with the eager model (nothing has run yet when compilation fails)."""
        with autocast(self.device, self.dtype):
            if not self.compile_pending:
                return self.train_model(x, y)[1]
            self.compile_pending = False
            try:
                return self.train_model(x, y)[1]
            except Exception as error:  # whatever the compiler raised
                log.warning("torch.compile failed (%s); training without it",
                            str(error).strip().splitlines()[0][:200])
                self.train_model = self.eager_model
                return self.train_model(x, y)[1]

    def _agree(self, flag: bool) -> bool:
        """Rank 0's answer on every rank (clocks differ; ranks must stop on the same step)."""
        if self.world_size == 1 or self.cfg.max_seconds <= 0:
            return flag
        tensor = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def _evaluate(self, train_loss: float) -> bool:
        """Estimate val loss on fixed batches, checkpoint, and say whether to stop early."""
        val_loss = estimate_loss(self.model, self.val_batches(), self.device, self.dtype)
        improved = val_loss < self.best_val_loss
        self.last_val_loss = val_loss
        if improved:
            self.best_val_loss, self.bad_evals = val_loss, 0
        else:
            self.bad_evals += 1
        event = {"kind": "eval", "step": self.step, "train_loss": train_loss,
                 "val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0)),
                 "best_val_loss": self.best_val_loss}
        self.history.append(event)
        self.callback(event)
        log.info("step %d | eval | train loss %.4f | val loss %.4f%s", self.step, train_loss,
                 val_loss, " (best)" if improved else "")
        self.save(improved)
        return 0 < self.cfg.patience <= self.bad_evals

    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train until max_steps (or stop_at, an earlier step, keeping the same schedule). A run
        that finishes (its steps done, stopped early or out of time) calibrates best/; one
        stopped at stop_at leaves that to the run that resumes it."""
        with deterministic_kernels(self.compiled), freed_memory_kept():
            return self._fit(stop_at)

    def _fit(self, stop_at: int | None) -> TrainResult:
        cfg = self.cfg
        last_step = min(cfg.max_steps, stop_at or cfg.max_steps)
        self.model.train()
        first_step = self.step
        started = window_start = time.perf_counter()
        window_tokens, total_tokens, loss = 0, 0, math.nan
        stopped_early = out_of_time = False
        log.info("training %.2fM parameters on %s in %s, %s, for %d steps",
                 self.model.num_params() / 1e6, self.device,
                 describe_precision(cfg.dtype, self.device, self.dtype),
                 describe_compile(cfg.compile, self.compiled), cfg.max_steps)
        with Bar(log, "training", last_step, "steps", start=first_step,
                 draw=self.lead) as bar:
            while self.step < last_step:
                lr = lr_at(self.step, cfg, time.perf_counter() - started)
                loss, tokens = self._train_step(lr)
                self.step += 1
                window_tokens += tokens
                total_tokens += tokens
                now = time.perf_counter()
                left = time_left(now - started, self.step - first_step, last_step - self.step,
                                 cfg.max_seconds)
                bar.show(self.step, f" | loss {loss:.4f}", left)
                if self.step % cfg.log_interval == 0:
                    tokens_per_s = window_tokens / (now - window_start)
                    window_start, window_tokens = now, 0
                    self.losses.append({"step": self.step, "train_loss": loss})
                    self.callback({"kind": "train", "step": self.step, "train_loss": loss,
                                   "lr": lr, "tokens_per_s": tokens_per_s})
                    log.info("step %d/%d | loss %.4f | lr %.2e | %.0f tok/s | %s left", self.step,
                             last_step, loss, lr, tokens_per_s, duration(left))
                out_of_time = self._agree(0 < cfg.max_seconds <= now - started)
                last = self.step == last_step or out_of_time
                if self.step % cfg.eval_interval == 0 or last:
                    stopped_early = self._evaluate(loss)
                    if stopped_early:
                        log.info("early stop: no val improvement in %d evals", cfg.patience)
                if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0:
                    self.save_numbered()
                if stopped_early or out_of_time:
                    break
                if self.should_stop():
                    self.save(improved=False)
                    raise TrainingInterrupted(self.step, self.latest_dir)
        seconds = time.perf_counter() - started
        finished = self.step >= cfg.max_steps or stopped_early or out_of_time
        if finished and self.calibration_batches is not None and self.lead:
            self._calibrate()
        return TrainResult(
            steps=self.step, best_val_loss=self.best_val_loss, last_val_loss=self.last_val_loss,
            stopped_early=stopped_early, seconds=seconds,
            tokens_per_s=total_tokens / max(seconds, 1e-9),
            best_dir=self.best_dir, latest_dir=self.latest_dir, history=self.history,
            losses=self.losses, temperature=self.temperature)

    def _calibrate(self) -> None:
        """Fold into best/ the temperature that fits the held-out calibration tokens."""
        model = load_model(self.best_dir, self.device)
        with autocast(self.device, self.dtype):
            fit = fit_temperature(model, self.calibration_batches())
        fold_temperature(model, fit.temperature)
        atomic_directory(self.best_dir,
                         lambda tmp: write_model_files(model, tmp, self.assets_dir))
        self.temperature = fit.temperature
        log.info("calibrated best/ on %d held-out training tokens: logits / %.3f, loss %.4f -> "
                 "%.4f", fit.tokens, fit.temperature, fit.loss_before, fit.loss_after)


def time_left(elapsed: float, steps_done: int, steps_left: int, max_seconds: float) -> float:
    """The loop's remaining seconds at its rate so far, capped by the time budget."""
    seconds = elapsed / max(steps_done, 1) * steps_left
    if max_seconds > 0:
        seconds = min(seconds, max_seconds - elapsed)
    return max(seconds, 0.0)


def windows_trainer(model: GPT, train_tokens: np.ndarray, val_tokens: np.ndarray,
                    cfg: TrainConfig, out_dir: str | Path, stride: int | None = None,
                    input_noise: float = 0.0, **options) -> Trainer:
    """A Trainer on windows of token arrays (pretraining): random ones, or with a stride
    every window at that stride once per epoch; with input_noise, that share of their input
    tokens replaced by random training tokens. With train.calibration_share, the training
    tokens' start is held out to calibrate best/ after training (gpt/calibrate.py)."""
    device = pick_device(cfg.device)
    block = model.config.block_size
    train_tokens, calibration = hold_out_calibration(train_tokens, cfg.calibration_share, block)
    windows = (RandomWindows(train_tokens, block, cfg.batch_size, cfg.seed, device)
               if stride is None else
               StridedWindows(train_tokens, block, cfg.batch_size, cfg.seed, stride, device))
    train: BatchSource = (InputNoise(windows, input_noise, cfg.seed + 1) if input_noise > 0
                          else windows)
    RandomWindows(val_tokens, block, cfg.batch_size, 0)  # fail now if val is too short

    def val_batches() -> Iterable[Batch]:
        windows = RandomWindows(val_tokens, block, cfg.batch_size, 0, device)
        return [windows.next() for _ in range(cfg.eval_iters)]

    def calibration_batches() -> Iterable[Batch]:
        return sequential_windows(calibration, block, cfg.batch_size)

    return Trainer(model, train, val_batches, cfg, out_dir, **options,
                   calibration_batches=calibration_batches if len(calibration) else None)


CALIBRATION_MAX_TOKENS = 65_536  # plenty to fit one number; a bigger corpus holds out no more


def calibration_size(tokens: int, share: float, block: int) -> int:
    """How many of a training split's tokens calibration holds out: share of them, at least
    one window's worth, at most CALIBRATION_MAX_TOKENS; none with share 0."""
    return 0 if share <= 0 else max(block + 1, min(round(share * tokens), CALIBRATION_MAX_TOKENS))


def hold_out_calibration(tokens: np.ndarray, share: float, block: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(the tokens to train on, the start held out for calibration). The start, not the end:
    the end runs on into the validation split (the same play, on Tiny Shakespeare): held out,
    it would take from training the text nearest to what the model is scored on."""
    cut = calibration_size(len(tokens), share, block)
    return tokens[cut:], tokens[:cut]
