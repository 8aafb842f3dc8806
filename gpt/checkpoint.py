"""Checkpoint folders: safetensors weights + config.json, never a pickle.

A checkpoint folder holds
    model.safetensors    weights (a tied lm_head is not stored twice)
    config.json          GPTConfig, enough to rebuild the model
    optimizer.safetensors, trainer_state.json   (training checkpoints only: resume state)
    vocab.json, merges.txt, ... (the tokenizer, when the trainer was given one)

Folders are written under a temporary name and renamed into place, so a crash mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt.files import atomic_directory, write_json
from gpt.model import GPT, GPTConfig

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
OPTIMIZER_FILE, STATE_FILE = "optimizer.safetensors", "trainer_state.json"
TIED_KEY = "lm_head.weight"


class CheckpointError(ValueError):
    """A folder that should hold a checkpoint does not."""


def save_tensors(tensors: dict[str, torch.Tensor], path: Path,
                 metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, its I/O failures (full disk, ...) raised as OSError."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as err:
        raise OSError(f"cannot write {path}: {err}") from None


def model_state(model: GPT) -> dict[str, torch.Tensor]:
    """Weights to store: contiguous CPU tensors, without a tied duplicate."""
    tied = model.config.tie_embeddings
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
            if not (tied and k == TIED_KEY)}


def write_model_files(model: GPT, folder: Path, assets_dir: Path | None = None) -> None:
    """Write weights, config and (optionally) every file of assets_dir into folder."""
    save_tensors(model_state(model), folder / WEIGHTS_FILE, metadata={"format": "pt"})
    write_json(folder / CONFIG_FILE, model.config.to_dict())
    if assets_dir is not None:
        for file in Path(assets_dir).iterdir():
            if file.is_file():
                shutil.copy2(file, folder / file.name)


def save_model(model: GPT, directory: str | Path, assets_dir: Path | None = None) -> Path:
    """Save an inference checkpoint (weights, config, tokenizer assets) atomically."""
    return atomic_directory(directory, lambda tmp: write_model_files(model, tmp, assets_dir))


def is_checkpoint(directory: str | Path) -> bool:
    folder = Path(directory)
    return (folder / WEIGHTS_FILE).is_file() and (folder / CONFIG_FILE).is_file()


def resolve_checkpoint(directory: str | Path) -> Path:
    """A checkpoint folder itself, or a training run folder's best/ (then latest/)."""
    folder = Path(directory)
    for candidate in (folder, folder / "best", folder / "latest"):
        if is_checkpoint(candidate):
            return candidate
    raise CheckpointError(f"{folder} is not a checkpoint folder (no {WEIGHTS_FILE} and "
                          f"{CONFIG_FILE}, nor a best/ or latest/ holding them)")


def load_config(directory: str | Path) -> GPTConfig:
    folder = resolve_checkpoint(directory)
    try:
        return GPTConfig(**json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not a valid model config: "
                              f"{err}") from None


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> GPT:
    """Rebuild a GPT from config.json alone and load its safetensors weights."""
    folder = resolve_checkpoint(directory)
    model = GPT(load_config(folder))
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except SafetensorError as err:
        raise ValueError(f"{folder / WEIGHTS_FILE} is damaged ({err}); restore it: "
                         f"`tinygpt reproduce --version N` or `dvc pull`") from None
    if model.config.tie_embeddings:
        state[TIED_KEY] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=True)
    return model.to(device)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter state flattened to 'state.<param index>.<name>' tensors."""
    tensors = {}
    for index, entries in optimizer.state_dict()["state"].items():
        for name, value in entries.items():
            tensors[f"state.{index}.{name}"] = value.detach().to("cpu").contiguous()
    return tensors


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Load tensors written by optimizer_tensors back into a freshly built optimizer."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state,
                               "param_groups": optimizer.state_dict()["param_groups"]})


def load_training_state(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(optimizer and RNG tensors, trainer_state.json) of a training checkpoint."""
    folder = Path(directory)
    if not (folder / OPTIMIZER_FILE).is_file() or not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"{folder} has no resumable training state "
                              f"({OPTIMIZER_FILE}, {STATE_FILE})")
    tensors = load_file(str(folder / OPTIMIZER_FILE))
    return tensors, json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
