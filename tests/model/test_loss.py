"""The fused head and cross-entropy (gpt/loss.py) against F.cross_entropy on the full logits;
compiled, the same function takes the compiler's path (`_CrossEntropy` over the logits)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt.loss import CHUNK_ROWS, IGNORE_INDEX, head_cross_entropy
from gpt.model import GPT, GPTConfig
from gpt.quantize import for_decoding

ROWS, WIDTH, VOCAB = 2 * CHUNK_ROWS + 37, 48, 300  # two whole chunks and a part


def inputs(seed: int = 0) -> tuple[torch.Tensor, nn.Linear, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(ROWS, WIDTH, requires_grad=True)
    head = nn.Linear(WIDTH, VOCAB, bias=False)
    targets = torch.randint(VOCAB, (ROWS,))
    targets[::7] = IGNORE_INDEX  # masked positions, in every chunk
    return x, head, targets


def loss_and_grads(loss_fn, dtype: torch.dtype = torch.float32):
    x, head, targets = inputs()
    with torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
        loss = loss_fn(head, x, targets)
    loss.backward()
    return loss.detach(), x.grad, head.weight.grad


def compiled(head: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.compile(head_cross_entropy)(head, x, targets)


EAGER_AND_COMPILED = pytest.mark.parametrize("ours", [head_cross_entropy, compiled],
                                             ids=["eager", "compiled"])


def plain(head: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(x).float(), targets, ignore_index=IGNORE_INDEX)


@EAGER_AND_COMPILED
def test_fused_loss_and_gradients_equal_the_full_logits_ones_in_fp32(ours):
    for mine, theirs in zip(loss_and_grads(ours), loss_and_grads(plain), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


@EAGER_AND_COMPILED
def test_fused_loss_under_bf16_autocast_is_within_bf16_rounding_of_the_full_logits_one(ours):
    got, theirs = loss_and_grads(ours, torch.bfloat16), loss_and_grads(plain, torch.bfloat16)
    torch.testing.assert_close(got[0], theirs[0], rtol=1e-5, atol=1e-5)
    for mine, reference in zip(got[1:], theirs[1:], strict=True):
        assert mine.dtype == torch.float32
        assert (mine - reference).abs().max() < 0.02 * reference.abs().max()


def test_without_gradients_the_loss_is_the_same_and_no_gradient_is_made():
    x, head, targets = inputs()
    with torch.no_grad():
        loss = head_cross_entropy(head, x, targets)
    torch.testing.assert_close(loss, plain(head, x, targets).detach())
    assert not loss.requires_grad


def test_no_tensor_as_large_as_the_logits_is_made():
    x, head, targets = inputs()
    with torch.profiler.profile(record_shapes=True) as profiled:
        head_cross_entropy(head, x, targets).backward()
    shapes = {tuple(shape) for event in profiled.events() for shape in event.input_shapes}
    assert (CHUNK_ROWS, VOCAB) in shapes  # the chunks' logits were seen...
    assert not any(len(s) == 2 and s[0] > CHUNK_ROWS and s[1] == VOCAB for s in shapes)


@EAGER_AND_COMPILED
def test_a_batch_with_every_target_ignored_has_zero_loss_and_zero_gradients(ours):
    x, head, targets = inputs()
    loss = ours(head, x, torch.full_like(targets, IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0
    assert not x.grad.any() and not head.weight.grad.any()


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_a_decoder_with_reduced_weights_scores_targets_like_fp32(weights):
    """Evaluation scores a quantized decoder through the same forward; its head is no
    nn.Linear (int8) or runs in bf16, so the loss comes from the head module chunk by chunk."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=2, n_embd=WIDTH,
                          dropout=0.0)).eval()
    idx, targets = torch.randint(VOCAB, (2, 2, 64)).unbind(0)
    with torch.no_grad():
        reference = model(idx, targets)[1]
        reduced = for_decoding(model, weights)(idx, targets)[1]
    assert abs(reduced.item() - reference.item()) < 0.01
