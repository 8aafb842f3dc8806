"""The output head and its cross-entropy, fused and run in chunks of rows.

Training needs the loss, not the (tokens, vocab) logits: at the training bench's 4,096 tokens a
step and vocab 8192 those are 134 MB in fp32, written by the head, cast, read by log-softmax,
written again by its backward and cast back. Tensors that size come fresh from the operating
system every step (above glibc's mmap threshold), so on a CPU each step also pays for faulting
their pages in. Here each chunk of rows makes its logits, its share of the loss and at once its
gradients (softmax minus the one-hot target), then drops the logits: no tensor grows with the
vocabulary times the tokens, and the backward only scales what the forward kept. The products
run in the autocast dtype, as the head's `nn.Linear` would.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets that the loss skips (padding, prompts), as in F.cross_entropy
# Rows of logits made at once: 256 x vocab 8192 in fp32 is 8 MB. Fewer rows make the head's
# products less efficient; more make each chunk's passes over its logits leave the caches.
CHUNK_ROWS = 256


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an `nn.Linear` would multiply x in: autocast's, where it is on."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def chunks(rows: int) -> list[slice]:
    """Slices of at most CHUNK_ROWS rows that cover rows rows."""
    return [slice(start, min(start + CHUNK_ROWS, rows)) for start in range(0, rows, CHUNK_ROWS)]


def classes_and_weights(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's class and its weight in the mean over the counted rows; an ignored row gets
    class 0 (any would do) and weight 0."""
    counted = targets != IGNORE_INDEX
    return targets.clamp(min=0), counted / counted.sum().clamp(min=1)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of x @ weight.T against targets; the gradients are made in forward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
                ) -> torch.Tensor:
        dtype = compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            x_, w = x.to(dtype), weight.to(dtype)
            classes, scale = classes_and_weights(targets)
            grad_x = torch.empty_like(x_)
            grad_w = torch.zeros_like(weight, dtype=torch.float32)
            loss = torch.zeros((), dtype=torch.float32, device=x.device)
            for rows in chunks(x.size(0)):
                target = classes[rows]
                logp = F.log_softmax((x_[rows] @ w.T).float(), dim=-1)
                loss -= (logp.gather(1, target[:, None]).squeeze(1) * scale[rows]).sum()
                probs = logp.exp_()
                probs[torch.arange(len(target), device=x.device), target] -= 1  # softmax - one-hot
                grad_logits = torch.empty(probs.shape, dtype=dtype, device=x.device)
                torch.mul(probs, scale[rows, None], out=grad_logits)  # in the products' dtype
                torch.mm(grad_logits, w, out=grad_x[rows])
                grad_w += grad_logits.T @ x_[rows]
        ctx.save_for_backward(grad_x, grad_w)
        ctx.dtypes = x.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, None]:
        grad_x, grad_w = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        return grad_x.to(x_dtype) * grad, (grad_w * grad).to(w_dtype), None


class _CrossEntropy(torch.autograd.Function):
    """F.cross_entropy(logits.float(), targets, ignore_index=-100), for the compiler: its
    backward writes softmax minus the one-hot target straight into the logits' dtype.
    Autograd's own backward of log-softmax sums the incoming gradient over the vocabulary,
    which the compiler, not knowing that is one number per row, computes in a pass over
    (tokens, vocab) of its own."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        target, scale = classes_and_weights(targets)
        log_total = torch.logsumexp(logits.float(), dim=-1)
        picked = logits.gather(1, target[:, None]).squeeze(1).float()
        ctx.save_for_backward(logits, log_total, target, scale)
        return ((log_total - picked) * scale).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, log_total, target, scale = ctx.saved_tensors
        weight = (scale * grad)[:, None]
        grad_logits = (torch.exp(logits.float() - log_total[:, None]) * weight).to(logits.dtype)
        rows = torch.arange(len(target), device=target.device)
        at_target = torch.exp(logits[rows, target].float() - log_total) - 1  # softmax - one-hot
        # index_put, not scatter: compiled training runs deterministic kernels (gpt.train), and
        # a deterministic scatter copies the whole tensor twice.
        return torch.index_put(grad_logits, (rows, target),
                               (at_target * weight[:, 0]).to(logits.dtype)), None


def head_cross_entropy(head: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(head(x).float(), targets, ignore_index=-100) for x (N, C) and targets
    (N,), without the (N, vocab) logits. With gradients, a bias-free `nn.Linear` head runs
    fused; inside torch.compile the head's logits go through `_CrossEntropy` (the compiler
    fuses the rest itself); for another head with gradients, the plain form runs."""
    fused = isinstance(head, nn.Linear) and head.bias is None
    if torch.compiler.is_compiling():
        return _CrossEntropy.apply(head(x), targets)
    if torch.is_grad_enabled() and not fused:
        return F.cross_entropy(head(x).float(), targets, ignore_index=IGNORE_INDEX)
    if torch.is_grad_enabled() and (x.requires_grad or head.weight.requires_grad):
        return _LinearCrossEntropy.apply(x, head.weight, targets)
    total = sum(F.cross_entropy(head(x[rows]).float(), targets[rows],
                                ignore_index=IGNORE_INDEX, reduction="sum")
                for rows in chunks(x.size(0)))
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)
