"""The GPT in both its forms (gpt2, modern): causality, attention paths, KV cache, weight
tying, and agreement with the transformers class each exports as (GPT-2, Llama, Qwen3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt.checkpoint import load_model, save_model
from gpt.config import GPT2_BLOCK
from gpt.export import export_hf
from gpt.generate import SamplingParams, generate_ids, iter_tokens
from gpt.model import GPT, GPTConfig

# Each form of the block: GPT-2's; Llama's (rotary, RMSNorm, SwiGLU); Qwen3's (QK-norm), untied.
ARCHS = {"gpt2": GPT2_BLOCK, "modern": {"qk_norm": False},
         "modern-qk-untied": {"arch": "modern", "qk_norm": True, "tie_embeddings": False}}


@pytest.fixture(params=sorted(ARCHS))
def any_arch(request) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32,
                         **ARCHS[request.param]))


def test_changing_a_future_token_never_changes_earlier_logits(any_arch):
    tiny_model = any_arch
    tiny_model.eval()
    idx = torch.randint(0, 97, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 5) % 97
    a, _ = tiny_model(idx)
    b, _ = tiny_model(changed)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_explicit_attention_equals_sdpa():
    torch.manual_seed(1)
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)
    sdpa = GPT(cfg).eval()
    explicit = GPT(GPTConfig(**{**cfg.to_dict(), "attn_impl": "explicit"})).eval()
    explicit.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 50, (3, 16))
    torch.testing.assert_close(explicit(idx)[0], sdpa(idx)[0], atol=1e-5, rtol=0)


def test_auto_attention_is_written_out_in_bf16_on_a_cpu_and_fused_otherwise():
    """Under bf16 autocast `auto` computes exactly what the written-out form does, in fp32
    exactly what the fused kernel does; past CPU_BF16_EXPLICIT_MAX_KEYS it is fused again."""
    from gpt.model import CPU_BF16_EXPLICIT_MAX_KEYS, attention_form

    torch.manual_seed(1)
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)
    models = {impl: GPT(GPTConfig(**{**cfg.to_dict(), "attn_impl": impl})).eval()
              for impl in ("auto", "sdpa", "explicit")}
    for model in models.values():
        model.load_state_dict(models["auto"].state_dict())
    idx = torch.randint(0, 50, (3, 16))
    with torch.no_grad():
        fp32 = {impl: model(idx)[0] for impl, model in models.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = {impl: model(idx)[0] for impl, model in models.items()}
    assert torch.equal(fp32["auto"], fp32["sdpa"])
    assert torch.equal(bf16["auto"], bf16["explicit"])
    assert not torch.equal(bf16["auto"], bf16["sdpa"])
    q = torch.zeros(1, 1, 1, 8, dtype=torch.bfloat16)
    assert attention_form("auto", q, CPU_BF16_EXPLICIT_MAX_KEYS) == "explicit"
    assert attention_form("auto", q, CPU_BF16_EXPLICIT_MAX_KEYS + 1) == "sdpa"
    assert attention_form("sdpa", q, 16) == "sdpa"


@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_attention_dropout_falls_on_the_weights_in_both_paths(impl):
    """With every value row equal to ones, dropping attention weights scales a whole output
    row at once (all of a head's dimensions alike); dropping the output would not."""
    from gpt.model import CausalSelfAttention

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.5,
                    attn_impl=impl)
    attention = CausalSelfAttention(cfg).train()
    q, k = torch.randn(4, 2, 16, 8), torch.randn(4, 2, 16, 8)
    y = attention._attend(q, k, torch.ones(4, 2, 16, 8))
    assert torch.allclose(y, y[..., :1].expand_as(y))  # each (batch, head, query) row uniform
    assert not torch.allclose(y, torch.ones_like(y))   # and dropout did act


def test_kv_cache_gives_the_logits_of_a_full_forward(any_arch):
    tiny_model = any_arch.eval()
    idx = torch.randint(0, 97, (2, 24))
    full, _ = tiny_model(idx)
    cache = tiny_model.new_cache(2)
    prefill, _ = tiny_model(idx[:, :10], cache=cache)
    steps = [prefill] + [tiny_model(idx[:, t:t + 1], cache=cache)[0] for t in range(10, 24)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_decode_step_gives_the_logits_of_a_full_forward_and_writes_nothing(any_arch):
    tiny_model = any_arch.eval()
    idx = torch.randint(0, 97, (2, 28))
    full, _ = tiny_model(idx)
    cache = tiny_model.new_cache(2)
    tiny_model(idx[:, :10], cache=cache)
    for t in range(10, 24):
        keys_before, values_before = cache.keys.clone(), cache.values.clone()
        logits, keys, values = tiny_model.decode_step(idx[:, t:t + 1], torch.tensor(cache.pos),
                                                      cache.keys, cache.values)
        assert torch.equal(cache.keys, keys_before) and torch.equal(cache.values, values_before)
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)
        cache.append(keys, values)
    assert cache.pos == 24
    after, _ = tiny_model(idx[:, 24:], cache=cache)  # forward reads what append stored
    torch.testing.assert_close(after, full[:, 24:], atol=1e-5, rtol=0)


def test_kv_cache_greedy_decoding_matches_recomputing_everything(any_arch):
    tiny_model = any_arch.eval()
    prompt = torch.randint(0, 97, (1, 5))
    cached = torch.stack(list(iter_tokens(tiny_model, prompt, SamplingParams(
        max_new_tokens=20, temperature=0))), dim=1)
    idx = prompt
    with torch.no_grad():
        for _ in range(20):
            logits, _ = tiny_model(idx)
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, idx[:, 5:])


def test_generation_runs_past_block_size(any_arch):
    out = generate_ids(any_arch, torch.zeros(1, 3, dtype=torch.long), 80, temperature=1.0,
                       seed=0)
    assert out.shape == (1, 83)


def test_weights_are_tied_and_counted_once(tiny_model):
    assert tiny_model.lm_head.weight is tiny_model.transformer.wte.weight
    total = sum(p.numel() for p in tiny_model.parameters())
    assert tiny_model.num_params(non_embedding=False) == total


def test_residual_projections_get_scaled_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=8, n_head=4, n_embd=256))
    proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(fc - 0.02) < 0.002 and abs(proj - 0.02 / 4) < 0.001


def test_loss_ignores_masked_targets(tiny_model):
    idx = torch.randint(0, 97, (2, 10))
    targets = torch.randint(0, 97, (2, 10))
    masked = targets.clone()
    masked[:, :5] = -100
    tiny_model.eval()  # one dropout mask for both calls: with targets, no logits come back
    logits, loss = tiny_model(idx)[0], tiny_model(idx, masked)[1]
    expected = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 97),
                                                 targets[:, 5:].reshape(-1))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("n_head", 5, "divisible"), ("n_layer", 0, "positive"), ("dropout", 1.5, "dropout"),
    ("attn_impl", "flash", "attn_impl"), ("arch", "mamba", "arch"),
    ("arch", "gpt2", "qk_norm needs model.arch: modern"),  # qk_norm is on by default
])
def test_nonsense_configs_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{"vocab_size": 10, "n_embd": 32, "n_head": 4, field: value})


def test_sequence_longer_than_block_size_is_refused(tiny_model):
    with pytest.raises(ValueError, match="exceeds block_size"):
        tiny_model(torch.zeros(1, 33, dtype=torch.long))


def test_checkpoint_round_trip_rebuilds_from_config_alone(any_arch, tmp_path):
    tiny_model = any_arch
    save_model(tiny_model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "ckpt")
    idx = torch.randint(0, 97, (1, 16))
    assert torch.equal(loaded.eval()(idx)[0], tiny_model.eval()(idx)[0])
    tied = loaded.lm_head.weight is loaded.transformer.wte.weight
    assert tied == tiny_model.config.tie_embeddings


@pytest.mark.parametrize(("bias", "qkv_bias", "tie"),
                         [(True, True, True), (False, True, False), (True, False, True)],
                         ids=["bias-tied", "untied", "no-qkv-bias"])
def test_exported_hf_gpt2_gives_our_logits(bpe_1k, tmp_path, bias, qkv_bias, tie):
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=bpe_1k.vocab_size, block_size=64, n_layer=2, n_head=4,
                          n_embd=64, qkv_bias=qkv_bias, tie_embeddings=tie,
                          **{**GPT2_BLOCK, "bias": bias}))
    attention = model.transformer.h[0].attn
    assert (attention.c_attn.bias is not None) == (bias and qkv_bias)  # the 004 book's switch
    assert (attention.c_proj.bias is not None) == bias
    if bias:  # make biases non-zero so a mis-mapped bias would show
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.05)
    bpe_1k.save(tmp_path / "tok")
    save_model(model, tmp_path / "ckpt", assets_dir=tmp_path / "tok")
    export_hf(tmp_path / "ckpt", tmp_path / "hf")

    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, bpe_1k.vocab_size, (2, 64))
    with torch.no_grad():
        ours = model.eval()(idx)[0]
        theirs = hf(idx).logits
    assert (ours - theirs).abs().max().item() < 1e-4

    hf_tok = GPT2TokenizerFast.from_pretrained(tmp_path / "hf")
    text = "KING RICHARD III:\nNow is the winter of our discontent"
    assert hf_tok(text)["input_ids"] == bpe_1k.encode(text)


@pytest.mark.parametrize(("qk_norm", "bias", "mlp_bias", "tie"),
                         [(False, True, True, True), (False, True, False, True),
                          (True, False, True, False), (True, True, False, True)],
                         ids=["llama-bias", "llama-attention-bias", "qwen3-untied",
                              "qwen3-attention-bias"])
def test_exported_modern_model_gives_our_logits(bpe_1k, tmp_path, qk_norm, bias, mlp_bias, tie):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=bpe_1k.vocab_size, block_size=64, n_layer=2, n_head=4,
                          n_embd=64, bias=bias, mlp_bias=mlp_bias, arch="modern",
                          qk_norm=qk_norm, tie_embeddings=tie))
    assert (model.transformer.h[0].mlp.c_fc.bias is not None) == (bias and mlp_bias)
    with torch.no_grad():  # non-trivial norms and biases, so a mis-mapped one would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    save_model(model, tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "hf")

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if qk_norm else "LlamaForCausalLM")
    idx = torch.randint(0, bpe_1k.vocab_size, (2, 64))
    with torch.no_grad():
        ours = model.eval()(idx)[0]
        theirs = hf(idx).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_a_modern_model_with_qk_norm_and_mlp_biases_is_not_exported(tmp_path):
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16,
                          arch="modern", qk_norm=True, bias=True, mlp_bias=True))
    save_model(model, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="Qwen3 has QK-norm but no MLP biases"):
        export_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_hashed_dropout_masks_keep_the_right_share_independently_and_reproducibly():
    from gpt.model import hashed_keep

    shape, p = torch.Size([64, 128, 128]), 0.15
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    first, second = hashed_keep(shape, p, cpu), hashed_keep(shape, p, cpu)
    torch.manual_seed(0)
    assert torch.equal(hashed_keep(shape, p, cpu), first)  # seeded: resumable
    for mask in first, second:
        assert abs(mask.float().mean().item() - (1 - p)) < 0.002
    assert (first != second).float().mean().item() > 0.2  # each call draws its own seed
    flat = first.flatten().float()
    both = (flat[1:] * flat[:-1]).mean().item()  # neighbours kept together as often as chance
    assert abs(both - (1 - p) ** 2) < 0.003


def test_compiled_gelu_on_a_cpu_is_the_tanh_gelu_computed_through_exp():
    from torch._inductor.utils import run_and_get_code

    from gpt.model import gelu_tanh

    x = torch.linspace(-8, 8, 4099, requires_grad=True)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    expected = F.gelu(x, approximate="tanh")
    (expected_grad,) = torch.autograd.grad(expected, x, grad)

    def forward_and_backward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.compile(gelu_tanh)(x)
        return out, torch.autograd.grad(out, x, grad)[0]

    (out, out_grad), codes = run_and_get_code(forward_and_backward, x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out_grad, expected_grad)  # the derivative written out
    assert "exp()" in "".join(codes) and "tanh" not in "".join(codes)
    assert torch.equal(gelu_tanh(x), expected)  # eager: torch's own


def test_compiled_training_drops_by_the_hash_on_a_cpu():
    from gpt.model import Dropout, hashed_keep
    from gpt.train import compile_for_training

    layer, x = Dropout(0.25).train(), torch.ones(256, 1024)
    compiled = compile_for_training(layer, torch.device("cpu"))
    torch.manual_seed(3)
    out = compiled(x)
    torch.manual_seed(3)
    expected = torch.where(hashed_keep(x.shape, 0.25, x.device), x / 0.75, 0.0)
    assert torch.equal(out, expected)  # the seed drawn from torch's generator, as eager draws it
    assert abs((out == 0).float().mean().item() - 0.25) < 0.005
    assert not torch.equal(compiled(x), out)  # the next call, the next seed
    torch.manual_seed(3)
    assert not torch.equal(layer(x), out)  # eager dropout stays torch's own
    assert torch.equal(layer.eval()(x), x)
