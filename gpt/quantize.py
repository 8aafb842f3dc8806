"""Weights for decoding in fewer bytes: bf16, or int8 weight-only with per-channel scales.

Decoding at batch 1 multiplies one vector by every weight matrix per token, so its speed is
bounded by how fast the weights can be read from memory: halve their bytes and the bound
doubles. `for_decoding` returns a copy of a trained model for inference only:

- fp32: the weights as trained.
- bf16: every parameter and activation in bfloat16; on a CPU the KV cache and attention
  stay fp32 (`GPT.new_cache`), where the fused attention kernel is the faster.
- int8: each Linear's weight rounded to int8 with one scale per output channel (the largest
  magnitude of the row maps to 127), multiplied by `torch._weight_int8pack_mm`, the CPU
  kernel that reads int8 weights; everything else as in bf16 (that kernel is several times
  faster with bf16 activations than with fp32 ones here). The tied output head gets its own
  int8 copy; the token embedding keeps its bf16 rows (a token reads one row).

With compile=True the decoder feeds each new token through a torch.compile graph of
`GPT.decode_step` instead of module by module: at batch 1 the step's 200-odd small ops and
their Python cost take longer than its matrix-vector products (`bench/generate.py` times those
alone). There is one graph per length of cache the step attends over (`attended_length`),
each compiled on first use (seconds; `gpt.generate.warm_up` compiles them all); where
compiling fails, decoding goes on uncompiled.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
import torch.nn as nn

from gpt.config import WEIGHT_FORMATS
from gpt.model import GPT, KVCache, Rotary

__all__ = ["WEIGHT_FORMATS", "CompiledStep", "Int8Linear", "attended_length", "for_decoding",
           "pick_weights", "weight_bytes_per_token"]

log = logging.getLogger("tinygpt.generate")


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored as int8 rows times per-row scales (in x's dtype)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight", torch.round(weight / scale[:, None])
                             .clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(dtype))
        bias = None if linear.bias is None else linear.bias.detach().to(dtype).clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))
        y = torch._weight_int8pack_mm(flat, self.weight, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], y.size(-1))


def _replace(module: nn.Module, kind: type[nn.Module],
             make: Callable[[nn.Module], nn.Module]) -> None:
    """Replace every submodule of `kind` with make(submodule), in place."""
    for name, child in module.named_children():
        if isinstance(child, kind):
            setattr(module, name, make(child))
        else:
            _replace(child, kind, make)


def pick_weights(weights: str, device: torch.device) -> str:
    """The format `auto` stands for on device: int8 on a CPU (its kernel is CPU-only), else
    fp32; any other name is itself."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}; got {weights!r}")
    if weights != "auto":
        return weights
    return "int8" if device.type == "cpu" else "fp32"


def attended_length(filled: int, block_size: int) -> int:
    """How many cache positions a compiled step attends over: the shortest of block_size/8,
    /4, /2 and block_size that holds the filled ones. One graph per length, not per position,
    and early tokens do not read the whole cache."""
    return next((n for n in (block_size // 8, block_size // 4, block_size // 2)
                 if n >= max(filled, 1)), block_size)


class CompiledStep:
    """A decoder's `decode_step` compiled: the next-token logits (B, vocab) of one new token
    per row after the cache (`GPT.new_cache`: in the weights' dtype), which it then extends.
    Shapes are static: each attended length (`attended_length`) and batch size compiles once;
    a new position does not compile."""

    # Dynamo keeps at most recompile_limit graphs per function (8 by default) and past it runs
    # eager without a word; every decoder's graphs are graphs of decode_step, so the service's
    # models, or the bench's three formats, would soon pass it.
    RECOMPILE_LIMIT = 64

    def __init__(self, decoder: GPT) -> None:
        import torch._dynamo.config as dynamo

        dynamo.recompile_limit = max(dynamo.recompile_limit, self.RECOMPILE_LIMIT)
        self.eager = decoder.decode_step
        # Inductor's Python wrapper checks the size and stride of every tensor the step reads
        # (each weight and cache of every layer) on each call: at batch 1, where the step's
        # kernels are small, a share of a token's time worth saving, and Dynamo's guards have
        # checked the same inputs before choosing the graph (the shapes are static).
        self.step = torch.compile(decoder.decode_step, dynamic=False,
                                  options={"size_asserts": False})
        self.compile_pending = True  # compiled on the first call (see _run)

    @property
    def compiled(self) -> bool:
        """Whether tokens go through the compiled graph (False once compiling failed)."""
        return self.step is not self.eager

    def __call__(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        pos = torch.tensor(cache.pos, device=token.device)
        length = attended_length(cache.pos, cache.keys.size(3))
        keys, values = (t.narrow(3, 0, length) for t in (cache.keys, cache.values))
        logits, keys, values = self._run(token, pos, keys, values)
        cache.append(keys, values)
        return logits

    def _run(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The step; the first call compiles it, and if that fails, decoding goes on eager
        (the step writes nothing, so nothing is half done)."""
        if not self.compile_pending:
            return self.step(*inputs)
        self.compile_pending = False
        try:
            return self.step(*inputs)
        except Exception as error:  # whatever the compiler raised
            log.warning("torch.compile failed (%s); decoding without it",
                        str(error).strip().splitlines()[0][:200] or type(error).__name__)
            self.step = self.eager
            return self.step(*inputs)


def for_decoding(model: GPT, weights: str, compile: bool = False) -> GPT:
    """An inference-only copy of model with its weights stored as `weights` (WEIGHT_FORMATS;
    see `pick_weights` for auto); with compile, one that decodes through a `CompiledStep`."""
    weights = pick_weights(weights, next(model.parameters()).device)
    decoder = copy.deepcopy(model).eval()
    _replace(decoder, nn.Dropout, lambda _: nn.Identity())  # a call per layer less, each token
    if weights == "int8":
        if next(decoder.parameters()).device.type != "cpu":
            raise ValueError("int8 weights run on a CPU kernel; load the model on the CPU")
        # Untie first: the head becomes int8, the embedding keeps its own rows.
        decoder.lm_head = nn.Linear(model.config.n_embd, model.config.vocab_size, bias=False)
        decoder.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
        _replace(decoder, nn.Linear, Int8Linear)  # from fp32 weights, before the rest is bf16
    if weights in ("bf16", "int8"):
        decoder = decoder.to(torch.bfloat16)
    for tensor in decoder.parameters():
        tensor.requires_grad_(False)
    if compile:
        decoder.compiled_step = CompiledStep(decoder)
    return decoder


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights one decoded token reads: every tensor except the embedding tables and
    the rotary angle tables, of which a token reads one row each (the tied head is counted as
    the head)."""
    counted, seen = 0, set()
    for module in model.modules():
        if isinstance(module, nn.Embedding | Rotary):
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                counted += tensor.numel() * tensor.element_size()
    return counted
