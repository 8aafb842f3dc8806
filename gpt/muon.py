"""Muon for the hidden weight matrices, AdamW for everything else, as one optimizer.

Muon (Keller Jordan, 2024; the optimizer of modded-nanogpt's speed records) keeps SGD momentum
per matrix and replaces each update by the nearest semi-orthogonal matrix, computed with five
Newton-Schulz iterations: every direction of the update moves by about the same amount, so
rare directions are not drowned by the dominant ones. It suits the 2-D weights inside the
blocks; embeddings, the output head and the gains and biases keep AdamW.

Each param group says which rule it follows (`muon: True/False`) and carries `lr_scale`, its
learning rate as a multiple of the schedule's (Muon's rate is its own, ~10x AdamW's).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# The quintic iteration's coefficients, tuned by Muon's author to converge in 5 steps.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(update: torch.Tensor, steps: int = 5,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately U V^T of update = U S V^T: every singular value pushed towards 1.

    The iteration runs in `dtype`. It only has to bring the singular values into a band around
    1, not to a point, so bfloat16 serves, as in Muon's reference; the trainer asks for bf16
    when it trains in bf16, where bf16 matmuls are the fast ones."""
    a, b, c = NS_COEFFS
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.mT
    x = x / (x.norm() + 1e-7)  # the spectral norm is at most the Frobenius norm: now <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(update.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon on groups with `muon=True`, AdamW on the others."""

    def __init__(self, groups: Iterable[dict[str, Any]], lr: float, betas: tuple[float, float],
                 momentum: float = 0.95, eps: float = 1e-8,
                 ns_dtype: torch.dtype = torch.float32) -> None:
        self.ns_dtype = ns_dtype  # what the Newton-Schulz iteration runs in (orthogonalize)
        defaults = {"lr": lr, "betas": betas, "momentum": momentum, "eps": eps,
                    "weight_decay": 0.0, "muon": False, "lr_scale": 1.0}
        super().__init__(list(groups), defaults)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["muon"]:
                self._muon(params, group)
            else:
                self._adamw(params, group)

    def _muon(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buffer = state["momentum_buffer"]
            buffer.lerp_(p.grad, 1 - momentum)
            update = orthogonalize(p.grad.lerp(buffer, momentum), dtype=self.ns_dtype)  # Nesterov
            # A semi-orthogonal matrix has RMS 1/sqrt(max side): rescale so that wide and tall
            # matrices move alike.
            scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
            p.mul_(1 - lr * decay).add_(update, alpha=-lr * scale)

    def _adamw(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        lr, (beta1, beta2), decay = group["lr"], group["betas"], group["weight_decay"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros(())
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            step = state["step"].item()
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
            p.mul_(1 - lr * decay).addcdiv_(state["exp_avg"], denom,
                                            value=-lr / (1 - beta1 ** step))
