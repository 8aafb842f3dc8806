"""The served model, resolved from the MLflow registry and followed as its alias moves.

Requests take a reference to the current `LoadedModel` and keep it for their whole life, so
swapping in a new version (loaded beside the old one first) never disturbs a request in flight.
A version is swapped in only once `check_model` passes on it as it will decode: one that fails
(NaN weights, say) is never served, and /health reports it until the alias moves on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from gpt.checkpoint import load_model, resolve_checkpoint
from gpt.config import SamplingParams
from gpt.generate import ModelCheckFailed, check_model, warm_up
from gpt.quantize import for_decoding, pick_weights
from gpt.sft import Fallback
from gpt.tokenizer import load_tokenizer
from registry import load_version, parse_model_uri, resolve_version

log = logging.getLogger("tinygpt.serve")
# What a model registered without its run's sampling choice (or a checkpoint folder) uses.
SAMPLING_DEFAULTS = SamplingParams().tunable()


@dataclass
class LoadedModel:
    name: str
    version: str
    alias: str | None
    model: Any
    tokenizer: Any
    parameters: int
    device: str
    weights: str
    # The tunable sampling settings of its run (a recipe's): what a request leaves out takes,
    # and what the page's sliders start from.
    sampling: dict[str, Any] = field(default_factory=lambda: dict(SAMPLING_DEFAULTS))
    # A fine-tuned model's training answers, for its degenerate answers (gpt.sft.Fallback).
    fallback: Fallback | None = None
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        step = self.model.compiled_step
        return {"model": self.name, "version": self.version, "alias": self.alias,
                "parameters": self.parameters, "device": self.device, "weights": self.weights,
                "compiled": step is not None and step.compiled,
                "block_size": self.model.config.block_size,
                "sampling": self.sampling, "fallback": self.fallback is not None}


LOCAL = "local"  # the version shown for a checkpoint folder, which no registry numbers


class ModelHolder:
    """Loads the model a registry URI names and, for an alias, follows it; or serves a
    checkpoint folder as it is (`tinygpt train`'s output, no registry needed)."""

    def __init__(self, model_uri: str, poll_seconds: float = 10.0, weights: str = "auto",
                 compile: bool = False) -> None:
        self.folder = None if model_uri.startswith("models:/") else resolve_checkpoint(model_uri)
        if self.folder is not None:
            self.name, self.alias, self.pinned_version = str(self.folder), None, LOCAL
        else:
            self.name, self.alias, self.pinned_version = parse_model_uri(model_uri)
        self.poll_seconds = poll_seconds
        self.weights = weights
        self.compile = compile
        self.current: LoadedModel | None = None
        self.error: str | None = None  # why the last refresh failed; None after a good one
        # Versions that failed check_model, with why: the check's verdict on a version does not
        # change, so the alias staying on one does not load it again at every poll.
        self.refused: dict[str, str] = {}
        self.loading = False
        self._task: asyncio.Task | None = None

    # -- registry look-ups (blocking; run in a thread) ------------------------------------

    def resolve_version(self) -> str:
        if self.pinned_version is not None:
            return self.pinned_version
        return resolve_version(f"models:/{self.name}@{self.alias}")[1]

    def load_version(self, version: str) -> LoadedModel:
        sampling, fallback = dict(SAMPLING_DEFAULTS), None
        if self.folder is not None:
            model, tokenizer = load_model(self.folder), load_tokenizer(self.folder)
        else:
            wrapper = load_version(self.name, version)
            model, tokenizer = wrapper.model, wrapper.tokenizer
            sampling.update(getattr(wrapper, "sampling", {}))
            fallback = getattr(wrapper, "fallback", None)
        device = next(model.parameters()).device
        weights = pick_weights(self.weights, device)
        decoder = for_decoding(model, weights, compile=self.compile)
        if self.compile:  # here, in the loading thread, not in the first request
            warm_up(decoder)
        return LoadedModel(self.name, version, self.alias, decoder, tokenizer,
                           model.num_params(), str(device), weights, sampling, fallback)

    def refresh(self) -> bool:
        """Load the version the URI resolves to, if it is not the one served, and swap it in if
        check_model passes on it. True if swapped; ModelCheckFailed if it was refused (now or
        before), the previous version still being served."""
        version = self.resolve_version()
        if self.current is not None and self.current.version == version:
            return False
        if version in self.refused:
            raise ModelCheckFailed(self.refused[version])
        loaded = self.load_version(version)
        self.check(loaded)
        previous = self.current.version if self.current else None
        self.current = loaded  # one reference assignment: in-flight requests keep the old one
        log.info("serving %s version %s (was %s)", self.name, version, previous)
        return True

    def check(self, loaded: LoadedModel) -> None:
        """check_model on the weights as they decode (int8 or bf16 included), once per version:
        /health reports its verdict without running it (a few forward passes) at every call."""
        try:
            check_model(loaded.model, loaded.tokenizer)
        except ModelCheckFailed as err:
            self.refused[loaded.version] = (f"version {loaded.version} of {self.name} is not "
                                            f"served: it fails the model check: {err}")
            raise ModelCheckFailed(self.refused[loaded.version]) from None

    # -- background life --------------------------------------------------------------------

    async def _refresh_safely(self) -> None:
        self.loading = self.current is None
        try:
            await asyncio.to_thread(self.refresh)
            self.error = None
        except Exception as err:  # the registry may be down; keep serving what we have
            error = f"{type(err).__name__}: {err}"
            if error != self.error:  # once, not at every poll while it lasts
                log.warning("model refresh failed: %s", error)
            self.error = error
        finally:
            self.loading = False

    async def _follow(self) -> None:
        while True:
            await self._refresh_safely()
            await asyncio.sleep(self.poll_seconds)

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
