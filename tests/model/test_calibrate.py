"""Temperature calibration: the fold divides the logits, the fit finds the temperature the
data were drawn at, and training calibrates best/ on tokens it held out of training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt.calibrate import fit_temperature, fold_temperature
from gpt.checkpoint import load_model
from gpt.config import GPT2_BLOCK
from gpt.model import GPT, GPTConfig
from gpt.train import CALIBRATION_MAX_TOKENS, hold_out_calibration, windows_trainer
from tests.model.test_train import new_model, small_config, tokens


def tiny(**block) -> GPT:
    torch.manual_seed(3)
    return GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32,
                         dropout=0.0, **block)).eval()


@pytest.mark.parametrize("block", [{}, {**GPT2_BLOCK, "bias": True}], ids=["modern", "gpt2"])
def test_folding_a_temperature_divides_every_logit_by_it(block):
    model = tiny(**block)
    x = torch.randint(64, (4, 16))
    before, _ = model(x)
    fold_temperature(model, 1.7)
    after, _ = model(x)
    torch.testing.assert_close(after, before / 1.7, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("drawn_at", [0.6, 1.5])
def test_the_fit_finds_the_temperature_the_targets_were_drawn_at(drawn_at):
    """Targets sampled from softmax(logits / t): the log loss, a proper score, is lowest at t."""
    model = tiny()
    fold_temperature(model, 0.1)  # a peaked distribution, so the temperature matters
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(8):
        x = torch.randint(64, (32, 16), generator=gen)
        with torch.no_grad():
            probs = torch.softmax(model(x)[0] / drawn_at, dim=-1)
        y = torch.multinomial(probs.view(-1, 64), 1, generator=gen).view(32, 16)
        batches.append((x, y))
    fit = fit_temperature(model, batches)
    assert fit.temperature == pytest.approx(drawn_at, rel=0.05)
    assert fit.loss_after < fit.loss_before and fit.tokens == 8 * 32 * 16


def test_training_holds_out_the_calibration_tokens_and_calibrates_best(tmp_path):
    corpus = tokens(3000)
    trainer = windows_trainer(new_model(dropout=0.0), corpus, tokens(500, 1),
                              small_config(calibration_share=0.1), tmp_path)
    assert np.array_equal(trainer.train_batches.tokens, corpus[300:])  # never trained on
    targets = torch.cat([y.flatten() for _, y in trainer.calibration_batches()])
    assert torch.equal(targets, torch.from_numpy(corpus[1:300].astype(np.int64)))
    result = trainer.fit()
    assert result.temperature != 1.0
    calibrated = load_model(tmp_path / "best")
    again = fit_temperature(calibrated, trainer.calibration_batches())
    assert again.temperature == pytest.approx(1.0, abs=2e-3)  # best/ holds the fitted fold


def test_a_run_stopped_before_its_end_leaves_calibration_to_the_run_that_finishes(tmp_path):
    def trainer():
        return windows_trainer(new_model(dropout=0.0), tokens(3000), tokens(500, 1),
                               small_config(calibration_share=0.1), tmp_path)

    stopped = trainer()
    assert stopped.fit(stop_at=6).temperature == 1.0
    best = load_model(tmp_path / "best").state_dict()  # step 6's eval, the first, is the best
    assert all(torch.equal(best[k], v) for k, v in stopped.model.state_dict().items())
    resumed = trainer()
    resumed.resume()
    assert resumed.fit().temperature != 1.0


@pytest.mark.parametrize(("length", "share", "held"), [
    (3000, 0.1, 300), (3000, 0.001, 17), (4_000_000, 0.02, CALIBRATION_MAX_TOKENS), (3000, 0.0, 0)])
def test_the_held_out_share_is_at_least_a_window_and_at_most_the_cap(length, share, held):
    train, calibration = hold_out_calibration(np.arange(length, dtype=np.int32), share,
                                               block=16)
    assert len(calibration) == held and len(train) == length - held
    assert calibration.size == 0 or calibration[-1] + 1 == train[0]  # the split's start

