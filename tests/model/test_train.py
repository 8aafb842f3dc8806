"""The trainer: exact resume, learning, early stopping, schedules, checkpoints, callbacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gpt.checkpoint import atomic_directory, load_model
from gpt.model import GPT, GPTConfig
from gpt.muon import orthogonalize
from gpt.train import TrainConfig, Trainer, build_optimizer, lr_at, windows_trainer


def tokens(n: int, seed: int = 0) -> np.ndarray:
    """A learnable sequence: a repeating pattern with some noise."""
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(40, dtype=np.uint16), n // 40 + 1)[:n]
    noise = rng.random(n) < 0.05
    return np.where(noise, rng.integers(0, 64, n), base).astype(np.uint16)


def small_config(**overrides) -> TrainConfig:
    values = dict(max_steps=12, batch_size=4, learning_rate=3e-3, min_lr=3e-4, warmup_steps=3,
                  eval_interval=6, eval_iters=2, log_interval=3, device="cpu", dtype="float32")
    return TrainConfig(**{**values, **overrides})


def new_model(dropout: float = 0.1) -> GPT:
    torch.manual_seed(7)
    return GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32,
                         dropout=dropout))


# A GPU, where one is lent (CI has none), runs the resume tests on CUDA too.
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("stride", "optimizer", "noise"), [
    (None, "adamw", 0.0), (5, "adamw", 0.0), (None, "muon", 0.0), (5, "adamw", 0.3)],
                         ids=["random", "strided", "muon", "input-noise"])
def test_resume_is_exact(tmp_path, stride, optimizer, noise, device):
    """Bit for bit on the CPU. On CUDA the random streams (dropout's included) are restored
    too, and the runs differ only by what CUDA's unordered sums (atomic adds in the embedding's
    backward) leave in the last bits."""
    cfg = small_config(optimizer=optimizer, device=device)

    def trainer(out: str):
        return windows_trainer(new_model(), tokens(3000), tokens(500, 1), cfg, tmp_path / out,
                               stride=stride, input_noise=noise)

    straight, second = straight_and_resumed(trainer)
    a, b = straight.model.state_dict(), second.model.state_dict()
    if device == "cpu":
        assert all(torch.equal(a[k], b[k]) for k in a)
    else:
        worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        assert worst < 1e-4, worst
    assert second.step == straight.step == 12


def straight_and_resumed(trainer: Callable[[str], Trainer]) -> tuple[Trainer, Trainer]:
    """A run straight through, and the same run stopped at step 6 and resumed as a new process
    would resume it: new model, new optimizer, different RNG state."""
    straight = trainer("a")
    straight.fit()
    trainer("b").fit(stop_at=6)
    torch.manual_seed(999)
    second = trainer("b")
    second.resume()
    second.fit()
    return straight, second


def test_numbered_checkpoints_keep_the_newest_and_resume_exactly(tmp_path):
    cfg = small_config(checkpoint_interval=4, keep_checkpoints=2)
    straight = windows_trainer(new_model(), tokens(3000), tokens(500, 1), cfg, tmp_path / "a",
                               stride=16)
    straight.fit()
    assert [p.name for p in straight.numbered_checkpoints()] == ["step-000008", "step-000012"]
    torch.manual_seed(999)
    again = windows_trainer(new_model(), tokens(3000), tokens(500, 1), cfg, tmp_path / "b",
                            stride=16)
    again.resume(tmp_path / "a" / "step-000008")
    assert again.step == 8
    again.fit()
    a, b = straight.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compiled_training_resumes_exactly_and_stays_close_to_eager(tmp_path):
    cfg = small_config(compile=True, dtype="bfloat16")

    def trainer(out: str, config: TrainConfig = cfg):
        return windows_trainer(new_model(dropout=0.0), tokens(3000), tokens(500, 1), config,
                               tmp_path / out)

    straight, second = straight_and_resumed(trainer)
    assert straight.train_model is not straight.eager_model  # it did compile
    eager = trainer("c", small_config(dtype="bfloat16"))
    eager.fit()
    a, b, c = (t.model.state_dict() for t in (straight, second, eager))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert max((a[k] - c[k]).abs().max().item() for k in a) < 0.02  # bf16 rounding apart


def test_training_goes_on_uncompiled_when_compilation_fails(tmp_path, caplog):
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    compiled = windows_trainer(new_model(), tokens(3000), tokens(500, 1),
                               small_config(compile=True), tmp_path / "a")
    with inductor.patch({"fx_graph_cache": False,  # torch's own patch restores its config
                         "cpp.cxx": (None, str(tmp_path / "no-such-compiler"))}):
        compiled.fit()
    torch._dynamo.reset()
    eager = windows_trainer(new_model(), tokens(3000), tokens(500, 1), small_config(),
                            tmp_path / "b")
    eager.fit()
    assert compiled.train_model is compiled.eager_model
    assert "torch.compile failed" in caplog.text
    a, b = compiled.model.state_dict(), eager.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orthogonalize_pushes_every_singular_value_towards_one(dtype):
    torch.manual_seed(0)
    for shape in [(64, 32), (32, 64)]:  # tall and wide
        spread = torch.linalg.svd(torch.randn(*shape), full_matrices=False)
        matrix = spread.U @ torch.diag(torch.logspace(-1, 1, 32)) @ spread.Vh  # 100x apart
        result = orthogonalize(matrix, dtype=dtype)
        assert result.dtype == matrix.dtype
        singular = torch.linalg.svdvals(result)
        assert singular.min() > 0.6 and singular.max() < 1.2, singular  # now within 2x


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_both_optimizers_learn_a_toy_sequence(tmp_path, optimizer):
    cfg = small_config(max_steps=60, eval_interval=20, optimizer=optimizer)
    trainer = windows_trainer(new_model(0.0), tokens(5000), tokens(800, 1), cfg, tmp_path)
    muon_groups = [g for g in trainer.optimizer.param_groups if g.get("muon")]
    if optimizer == "muon":  # the blocks' matrices only: 4 per block, 2 blocks
        assert len(muon_groups[0]["params"]) == 8
        assert trainer.optimizer.ns_dtype == trainer.dtype  # Newton-Schulz in the run's dtype
    else:
        assert not muon_groups
    result = trainer.fit()
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"] - 0.5


def test_training_lowers_the_loss_and_keeps_best_and_latest(tmp_path):
    events = []
    cfg = small_config(max_steps=60, eval_interval=20)
    trainer = windows_trainer(new_model(0.0), tokens(5000), tokens(800, 1), cfg, tmp_path,
                      callback=events.append)
    result = trainer.fit()
    evals = [e for e in events if e["kind"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert {"step", "train_loss", "lr", "tokens_per_s"} <= set(
        next(e for e in events if e["kind"] == "train"))
    assert result.best_val_loss == min(e["val_loss"] for e in evals)
    for folder in ("best", "latest"):
        assert load_model(tmp_path / folder).config.n_layer == 2
    state = json.loads((tmp_path / "latest" / "trainer_state.json").read_text())
    assert state["step"] == 60
    assert "rng.torch" in load_file(str(tmp_path / "latest" / "optimizer.safetensors"))


def test_early_stopping_after_patience_evals_without_improvement(tmp_path):
    # A learning rate this small cannot move fp32 weights, so val loss never improves (AdamW:
    # Muon's rate is its own, train.muon_lr).
    cfg = small_config(max_steps=100, eval_interval=5, patience=2, learning_rate=1e-12,
                       min_lr=0.0, optimizer="adamw")
    result = windows_trainer(new_model(0.0), tokens(3000), tokens(500, 1), cfg, tmp_path).fit()
    assert result.stopped_early and result.steps == 15


def test_lr_warms_up_linearly_then_decays_to_min_lr():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, learning_rate=1.0, min_lr=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    budgeted = TrainConfig(max_steps=100, warmup_steps=10, learning_rate=1.0, min_lr=0.1,
                           max_seconds=60)
    assert lr_at(20, budgeted, elapsed=30) == pytest.approx(0.55)
    assert lr_at(20, budgeted, elapsed=60) == pytest.approx(0.1)


def test_weight_decay_applies_to_matrices_only():
    optimizer = build_optimizer(new_model(), TrainConfig(weight_decay=0.1, optimizer="adamw"))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    data = tokens(3000)
    big = windows_trainer(new_model(0.0), data, tokens(500, 1),
                          small_config(batch_size=8, max_steps=1), tmp_path / "a")
    small = windows_trainer(new_model(0.0), data, tokens(500, 1),
                            small_config(batch_size=4, grad_accum=2, max_steps=1), tmp_path / "b")
    # Same 8 windows either way: draw them once and feed them in one or two pieces.
    x, y = big.train_batches.next()
    windows = iter([(x, y), (x[:4], y[:4]), (x[4:], y[4:])])
    big.train_batches.next = small.train_batches.next = lambda: next(windows)
    assert big._train_step(1e-3)[1] == small._train_step(1e-3)[1] == 8 * 16
    for (name, a), b in zip(big.model.named_parameters(), small.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4, msg=name)


def test_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path):
    target = tmp_path / "latest"
    atomic_directory(target, lambda d: (d / "weights").write_text("good"))

    def crash(folder):
        (folder / "weights").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_directory(target, crash)
    assert (target / "weights").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


@pytest.mark.parametrize(("field", "value"), [
    ("learning_rate", -1.0), ("max_steps", 0), ("batch_size", -4), ("dtype", "float8"),
    ("beta1", 1.5), ("calibration_share", -0.1), ("calibration_share", 0.5),
])
def test_nonsense_training_parameters_are_refused(field, value):
    with pytest.raises(ValueError, match=f"train.{field}"):
        TrainConfig(**{field: value})


def test_validation_split_shorter_than_a_window_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot fill one window"):
        windows_trainer(new_model(), tokens(3000), tokens(10), small_config(), tmp_path)


def test_auto_trains_in_the_faster_dtype_for_the_cpus_bf16_hardware_and_says_so():
    from gpt.train import (
        AUTO_CPU_DTYPE,
        bf16_hardware_of,
        cpu_bf16_hardware,
        describe_precision,
        pick_dtype,
    )

    assert bf16_hardware_of({"avx512f", "amx_bf16", "amx_tile", "avx512_bf16"}) == "amx"
    assert bf16_hardware_of({"avx512f", "avx512_bf16"}) == "avx512_bf16"  # AMD Zen 4
    assert bf16_hardware_of({"avx2", "fma"}) == "none"
    assert AUTO_CPU_DTYPE["none"] == torch.float32  # emulated bf16 is the slower
    cpu = torch.device("cpu")
    chosen = pick_dtype("auto", cpu)
    assert chosen == AUTO_CPU_DTYPE[cpu_bf16_hardware()]
    label = {"amx": "AMX", "avx512_bf16": "AVX-512 BF16", "none": "no bf16 hardware"}
    assert describe_precision("auto", cpu, chosen).endswith(
        f"(auto: the faster on a CPU with {label[cpu_bf16_hardware()]})")
    assert describe_precision("float32", cpu, torch.float32) == "float32 (as set)"


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    from gpt.train import pick_device, pick_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("mps")
    assert pick_dtype("auto", torch.device("mps")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("auto") == torch.device("cuda:1")
    assert pick_device("cpu") == torch.device("cpu")  # named devices are taken as named
    assert pick_device("cuda:1") == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="but this host has no CUDA GPU"):
        pick_device("cuda")


def test_the_loss_curve_has_the_train_loss_at_every_log_interval(tmp_path):
    import csv

    from tasks.train import write_loss_curve

    result = windows_trainer(new_model(), tokens(3000), tokens(1000),
                             small_config(log_interval=2), tmp_path / "run").fit()
    write_loss_curve(result.history, result.losses, tmp_path / "loss.csv",
                     tmp_path / "loss.png")
    with open(tmp_path / "loss.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [2, 4, 6, 8, 10, 12]
    assert [row["val_loss_estimate"] != "" for row in rows] == [False, False, True] * 2
    assert all(float(row["train_loss"]) > 0 for row in rows)
    assert (tmp_path / "loss.png").stat().st_size > 1000


@pytest.mark.parametrize(("hardware", "device", "overrides", "compiled"), [
    ("amx", "cpu", {}, True),
    ("avx512_bf16", "cpu", {}, False),
    ("none", "cpu", {}, False),
    ("amx", "cuda", {}, False),
    ("amx", "cpu", {"max_steps": 100}, False),        # too short to repay ~25 s of compiling
    ("amx", "cpu", {"max_seconds": 120.0}, False),    # a time budget too short, likewise
    ("amx", "cpu", {"max_seconds": 600.0}, True),
    ("none", "cpu", {"compile": True}, True),         # as set, whatever the machine
    ("amx", "cpu", {"compile": False}, False),
])
def test_auto_compiles_long_runs_on_a_cpu_with_amx_and_says_so(monkeypatch, hardware, device,
                                                                overrides, compiled):
    import gpt.train
    from gpt.train import describe_compile, pick_compile

    monkeypatch.setattr(gpt.train, "cpu_bf16_hardware", lambda: hardware)
    cfg = TrainConfig(**{"max_steps": 1500, **overrides})
    assert pick_compile(cfg, torch.device(device)) is compiled
    line = describe_compile(cfg.compile, compiled)
    assert line.startswith("compiled" if compiled else "eager")
    assert line.endswith("(as set)" if "compile" in overrides else "for a long run)")


def test_nonsense_compile_settings_are_refused():
    with pytest.raises(ValueError, match="must be true, false or auto"):
        TrainConfig(compile="sometimes")


# In a fresh process (the allocator's settings are the process's): the page faults of five steps
# that each make and free 144 MB of activations, inside training's fit (from its callback), and
# the resident memory inside fit and after it. 144 MB is more than glibc's own rule ever lets
# the heap keep free (twice its largest mmap threshold, 32 MB), and one of the tensors, 64 MB as
# the bench's logits are, is past that threshold, where glibc maps each block on its own:
# without training's setting, each step faulted that one in again, and mostly all of them.
FAULTS_INSIDE_FIT = """
import os, resource, tempfile, torch
from tests.model.test_train import new_model, small_config, tokens
from gpt.train import windows_trainer

def faults_over_steps(steps=5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        activations = [torch.ones(10 * 262144) for _ in range(8)]  # 10 MB of fp32 each
        activations.append(torch.ones(16 * 2**20))  # 64 MB
        del activations
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

inside = []
def measure(event):
    if not inside:
        faults_over_steps(2)  # the heap settles its layout over the first steps
        inside.extend([faults_over_steps(), resident_mb()])
windows_trainer(new_model(), tokens(3000), tokens(400), small_config(), tempfile.mkdtemp(),
                callback=measure).fit()
print(*inside, resident_mb())
"""
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    result = subprocess.run([sys.executable, "-c", FAULTS_INSIDE_FIT], capture_output=True,
                            text=True, timeout=120, check=True)
    kept, held_mb, after_mb = map(float, result.stdout.split())
    assert kept < 720 * 2**20 / PAGE_SIZE / 20  # under 5% of the 720 MB made is faulted in
    assert after_mb < held_mb - 120  # the 144 MB freed last went back when training ended
