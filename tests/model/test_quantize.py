"""Decoding with fewer weight bytes: bf16 and int8 weight-only stay close to fp32, leave the
trained model alone, and read the bytes they claim."""

from __future__ import annotations

import pytest
import torch

from gpt.config import GPT2_BLOCK
from gpt.generate import SamplingParams, feed, iter_tokens
from gpt.model import GPT, GPTConfig
from gpt.quantize import (
    Int8Linear,
    attended_length,
    for_decoding,
    pick_weights,
    weight_bytes_per_token,
)

CONFIG = GPTConfig(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_embd=64, dropout=0.0)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


@pytest.mark.parametrize(("weights", "tolerance"), [("fp32", 0.0), ("bf16", 0.05),
                                                    ("int8", 0.03)])
def test_reduced_weights_give_logits_close_to_fp32(model, weights, tolerance):
    idx = torch.randint(CONFIG.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference, _ = model(idx)
        logits, _ = for_decoding(model, weights)(idx)
    error = (logits.float() - reference).abs().max() / reference.abs().max()
    assert error <= tolerance, f"{weights}: relative error {error:.4f}"


def test_int8_rows_use_per_channel_scales_and_round_trip_within_half_a_step():
    torch.manual_seed(2)
    linear = torch.nn.Linear(32, 8)
    with torch.no_grad():
        linear.weight[3] *= 100  # one large row must not cost the others their precision
    quantized = Int8Linear(linear, torch.float32)  # fp32 scales: the bound below is exact
    assert quantized.weight.dtype == torch.int8 and quantized.scale.shape == (8,)
    restored = quantized.weight.float() * quantized.scale[:, None]
    assert torch.all((restored - linear.weight).abs() <= quantized.scale[:, None] / 2 + 1e-7)
    x = torch.randn(5, 32)
    # Each weight is off by at most half its row's step, so each output by at most that much
    # times the inputs' absolute sum.
    bound = x.abs().sum(dim=1, keepdim=True) * quantized.scale / 2 + 1e-4
    with torch.no_grad():
        assert torch.all((quantized(x) - linear(x)).abs() <= bound)


def test_the_trained_model_is_left_alone_and_the_cache_is_fp32_on_a_cpu(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bf16, int8 = for_decoding(model, "bf16"), for_decoding(model, "int8")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    # The CPU's fused attention is several times faster in fp32; the weights stay narrow.
    assert bf16.new_cache(1).keys.dtype == torch.float32
    assert int8.new_cache(1).keys.dtype == torch.float32
    assert bf16.transformer.wte.weight.dtype == torch.bfloat16
    with torch.inference_mode():  # bf16 activations around int8 and attention in fp32
        logits, _ = int8(torch.tensor([[1, 2, 3]]), cache=int8.new_cache(1))
    assert logits.dtype == torch.bfloat16
    assert isinstance(int8.lm_head, Int8Linear)


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_a_decoder_has_no_dropout_layers_and_the_trained_model_keeps_its_own(weights):
    trained = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16,
                            dropout=0.2))
    decoder = for_decoding(trained, weights)
    assert not any(isinstance(m, torch.nn.Dropout) for m in decoder.modules())
    assert sum(isinstance(m, torch.nn.Dropout) for m in trained.modules()) == 3


def test_weight_bytes_shrink_with_the_format(model):
    sizes = {w: weight_bytes_per_token(for_decoding(model, w)) for w in ("fp32", "bf16", "int8")}
    linear_params = sum(p.numel() for n, p in model.named_parameters()
                        if n != "transformer.wpe.weight")  # the tied head counted once
    assert sizes["fp32"] == 4 * linear_params
    assert sizes["bf16"] == 2 * linear_params
    assert sizes["int8"] < 0.3 * sizes["fp32"]


def test_greedy_decoding_with_int8_mostly_agrees_with_fp32(model):
    prompt = torch.randint(CONFIG.vocab_size, (1, 8), generator=torch.Generator().manual_seed(3))
    params = SamplingParams(max_new_tokens=30, temperature=0)
    ours = [t.item() for t in iter_tokens(model, prompt, params)]
    int8 = [t.item() for t in iter_tokens(for_decoding(model, "int8"), prompt, params)]
    assert sum(a == b for a, b in zip(ours, int8, strict=True)) >= 20


def test_an_unknown_format_is_refused(model):
    with pytest.raises(ValueError, match="weights must be one of auto, fp32, bf16, int8"):
        for_decoding(model, "int4")


def test_auto_is_int8_on_the_cpu(model):
    assert pick_weights("auto", torch.device("cpu")) == "int8"
    assert pick_weights("auto", torch.device("cuda")) == "fp32"
    assert pick_weights("bf16", torch.device("cpu")) == "bf16"
    assert isinstance(for_decoding(model, "auto").lm_head, Int8Linear)


def test_a_bf16_decoder_normalizes_queries_in_bf16(model):
    """QK-norm runs in its weights' dtype: with fp32 queries and bf16 weights, RMSNorm leaves
    its fused kernel for a slower path and warns on every generation."""
    decoder = for_decoding(model, "bf16")
    seen = []
    decoder.transformer.h[0].attn.q_norm.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].dtype))
    with torch.no_grad():
        decoder(torch.zeros(1, 4, dtype=torch.long))
    assert seen == [torch.bfloat16]


@pytest.mark.parametrize("block_size", [4, 16, 128])
def test_a_compiled_step_attends_over_one_of_four_lengths_that_holds_the_cache(block_size):
    lengths = {filled: attended_length(filled, block_size) for filled in range(block_size)}
    assert all(max(filled, 1) <= n <= block_size for filled, n in lengths.items())
    assert set(lengths.values()) == {block_size // d for d in (8, 4, 2, 1)} - {0}
    assert lengths[block_size // 8 + 1] == block_size // 4  # the shortest that holds them


def test_compiled_decoding_equals_eager_with_one_graph_per_length_not_per_position():
    from torch._dynamo.utils import counters

    torch.manual_seed(3)  # the defaults' block: rotary positions and QK-norm
    trained = GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32,
                            arch="modern", qk_norm=True)).eval()
    eager, compiled = for_decoding(trained, "fp32"), for_decoding(trained, "fp32", compile=True)
    prompt = torch.randint(97, (1, 5))
    greedy = SamplingParams(max_new_tokens=30, temperature=0)  # past block_size: a refill
    torch._dynamo.reset()
    counters.clear()
    tokens = [t.item() for t in iter_tokens(compiled, prompt, greedy)]
    assert compiled.compiled_step.compiled           # it compiled, and did not fall back
    # Positions 5 to 15 (then the window refills through forward): 11 positions, 2 lengths.
    assert counters["stats"]["unique_graphs"] == len({attended_length(p, 16) for p in
                                                      range(5, 16)}) == 2
    assert tokens == [t.item() for t in iter_tokens(eager, prompt, greedy)]


def test_a_compiled_int8_decoder_reads_a_bf16_cache_and_stays_close_to_eager_int8():
    torch.manual_seed(4)
    trained = GPT(GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32,
                            **GPT2_BLOCK)).eval()
    eager, compiled = for_decoding(trained, "int8"), for_decoding(trained, "int8", compile=True)
    assert compiled.new_cache(1).keys.dtype == torch.bfloat16  # its own attention's dtype
    idx = torch.randint(97, (1, 20))
    with torch.inference_mode():
        caches = eager.new_cache(1), compiled.new_cache(1)
        for t in range(idx.size(1)):  # fed one token a step, as sampling feeds them
            reference, logits = (feed(d, idx[:, t:t + 1], c)
                                 for d, c in zip((eager, compiled), caches, strict=True))
            error = (logits.float() - reference.float()).abs().max() / reference.abs().max()
            assert error <= 0.03, f"step {t}: relative error {error:.4f}"
    assert compiled.compiled_step.compiled


def test_decoding_goes_on_uncompiled_when_compilation_fails(tmp_path, caplog):
    import torch._inductor.config as inductor

    torch.manual_seed(5)
    trained = GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    compiled = for_decoding(trained, "fp32", compile=True)
    greedy = SamplingParams(max_new_tokens=10, temperature=0)
    prompt = torch.randint(97, (1, 3))
    torch._dynamo.reset()
    with inductor.patch({"fx_graph_cache": False,  # torch's own patch restores its config
                         "cpp.cxx": (None, str(tmp_path / "no-such-compiler"))}):
        tokens = [t.item() for t in iter_tokens(compiled, prompt, greedy)]
    torch._dynamo.reset()
    assert not compiled.compiled_step.compiled
    assert "torch.compile failed" in caplog.text
    assert tokens == [t.item() for t in iter_tokens(for_decoding(trained, "fp32"), prompt, greedy)]
