"""Temperature calibration: after training, divide the logits by the one temperature that
minimises the loss on held-out tokens (Guo et al., 2017, "On calibration of modern neural
networks").

A small corpus read many times over leaves the model overconfident on text it has not seen,
which softer logits score better. The temperature is fitted on tokens cut from the start of
the training split before training (`train.calibration_share`), never on the validation split
that scores the model.

It is folded into the final norm's gain (and bias, where it has one): that norm feeds the head
alone, so head(norm(x)) / t == head(norm(x) with its affine parameters / t), and the
calibrated model is an ordinary checkpoint that serving, export and int8 read as before.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from gpt.batches import Batch
from gpt.loss import head_cross_entropy
from gpt.model import GPT

# The temperatures searched (a golden-section search on log t, to a relative step of 1e-4).
LOWEST, HIGHEST, TOLERANCE = 0.05, 20.0, 1e-4


@dataclass(frozen=True)
class Calibration:
    temperature: float
    loss_before: float  # mean nats per calibration token at temperature 1
    loss_after: float
    tokens: int


@torch.no_grad()
def final_states(model: GPT, batches: Iterable[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """The final norm's outputs (tokens, n_embd) for batches, and their targets (tokens,)."""
    device = next(model.parameters()).device
    model.eval()
    states: list[torch.Tensor] = []
    hook = model.transformer.ln_f.register_forward_hook(
        lambda _module, _inputs, out: states.append(out.flatten(0, 1)))
    targets = []
    try:
        for x, y in batches:
            model(x.to(device), last_only=True)  # the hook keeps every position's state
            targets.append(y.reshape(-1).to(device))
    finally:
        hook.remove()
    return torch.cat(states), torch.cat(targets)


@torch.no_grad()
def fit_temperature(model: GPT, batches: Iterable[Batch]) -> Calibration:
    """The temperature in [LOWEST, HIGHEST] with the lowest mean loss on batches (in the
    precision of the caller's autocast, as training's evaluations run)."""
    states, targets = final_states(model, batches)

    def loss(log_t: float) -> float:
        return head_cross_entropy(model.lm_head, states / math.exp(log_t), targets).item()

    low, high = math.log(LOWEST), math.log(HIGHEST)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    while high - low > TOLERANCE:
        if loss_a < loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    best = (low + high) / 2
    return Calibration(temperature=math.exp(best), loss_before=loss(0.0),
                       loss_after=loss(best), tokens=targets.numel())


@torch.no_grad()
def fold_temperature(model: GPT, temperature: float) -> None:
    """Divide every logit of model by temperature, through the final norm's parameters."""
    norm = model.transformer.ln_f
    norm.weight.div_(temperature)
    if getattr(norm, "bias", None) is not None:
        norm.bias.div_(temperature)
