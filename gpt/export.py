"""Export a checkpoint as a Hugging Face folder: GPT-2 for `arch: gpt2`, Llama for `arch:
modern`, Qwen3 for modern with `qk_norm`.

Our parameter names are GPT-2's; the one real difference is that GPT-2 stores its projections
as Conv1D, whose weight is the transpose of nn.Linear's. For Llama and Qwen3 the fused
projections are split: c_attn into q, k, v; the SwiGLU c_fc into gate and up.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gpt.checkpoint import load_model, resolve_checkpoint, save_tensors
from gpt.model import GPT, RMS_EPS, ROPE_THETA, GPTConfig, swiglu_hidden
from gpt.tokenizer import ENDOFTEXT, BPETokenizer, is_tokenizer_dir, load_tokenizer

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                   "mlp.c_proj.weight")


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under GPT2LMHeadModel's names and layouts (missing biases as zeros)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue  # tied to transformer.wte.weight; transformers re-ties it on load
        state[name] = tensor.t().contiguous() if name.endswith(CONV1D_SUFFIXES) else tensor
    cfg = model.config
    if not (cfg.bias and cfg.qkv_bias and cfg.mlp_bias):  # GPT-2 always has biases: zeros
        # make the missing ones no-ops
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and name != "lm_head":
                width = module.weight.shape[0]
                state.setdefault(f"{name}.bias", torch.zeros(width))
    return {k: v.contiguous() for k, v in state.items()}


def hf_config(cfg: GPTConfig, eos_id: int | None) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02, "tie_word_embeddings": cfg.tie_embeddings,
        "scale_attn_weights": True,
        "bos_token_id": eos_id, "eos_token_id": eos_id,
    }


def modern_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """A modern model's weights under LlamaForCausalLM's (or Qwen3ForCausalLM's) names."""
    state = {"model.embed_tokens.weight": model.transformer.wte.weight,
             "model.norm.weight": model.transformer.ln_f.weight}
    if not model.config.tie_embeddings:
        state["lm_head.weight"] = model.lm_head.weight
    for i, block in enumerate(model.transformer.h):
        at = f"model.layers.{i}"
        attn, mlp = block.attn, block.mlp
        pieces = {"q_proj": 0, "k_proj": 1, "v_proj": 2}
        width = model.config.n_embd
        for name, k in pieces.items():
            state[f"{at}.self_attn.{name}.weight"] = attn.c_attn.weight[k * width:(k + 1) * width]
            if attn.c_attn.bias is not None:
                state[f"{at}.self_attn.{name}.bias"] = attn.c_attn.bias[k * width:(k + 1) * width]
        state[f"{at}.self_attn.o_proj.weight"] = attn.c_proj.weight
        if attn.q_norm is not None:
            state[f"{at}.self_attn.q_norm.weight"] = attn.q_norm.weight
            state[f"{at}.self_attn.k_norm.weight"] = attn.k_norm.weight
        gate, up = mlp.c_fc.weight.chunk(2, dim=0)
        state[f"{at}.mlp.gate_proj.weight"], state[f"{at}.mlp.up_proj.weight"] = gate, up
        state[f"{at}.mlp.down_proj.weight"] = mlp.c_proj.weight
        if attn.c_proj.bias is not None:
            state[f"{at}.self_attn.o_proj.bias"] = attn.c_proj.bias
        if mlp.c_fc.bias is not None:
            gate_b, up_b = mlp.c_fc.bias.chunk(2)
            state[f"{at}.mlp.gate_proj.bias"], state[f"{at}.mlp.up_proj.bias"] = gate_b, up_b
            state[f"{at}.mlp.down_proj.bias"] = mlp.c_proj.bias
        state[f"{at}.input_layernorm.weight"] = block.ln_1.weight
        state[f"{at}.post_attention_layernorm.weight"] = block.ln_2.weight
    return {k: v.detach().contiguous() for k, v in state.items()}


def modern_config(cfg: GPTConfig, eos_id: int | None) -> dict:
    """LlamaConfig's (or Qwen3Config's, with qk_norm) fields for a modern model."""
    qwen = cfg.qk_norm
    mlp_bias = cfg.bias and cfg.mlp_bias
    if qwen and mlp_bias:
        raise ValueError("a modern model with qk_norm and MLP biases has no transformers class: "
                         "Qwen3 has QK-norm but no MLP biases (Llama has biases, no QK-norm); "
                         "model.mlp_bias: false keeps the attention's")
    return {
        "architectures": ["Qwen3ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen3" if qwen else "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd,
        "intermediate_size": swiglu_hidden(cfg.n_embd), "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.n_embd // cfg.n_head, "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size, "rms_norm_eps": RMS_EPS,
        "rope_theta": ROPE_THETA, "attention_bias": cfg.bias, "mlp_bias": mlp_bias,
        "attention_dropout": cfg.dropout, "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": 0.02, "bos_token_id": eos_id, "eos_token_id": eos_id,
    }


def export_hf(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write config.json, model.safetensors and (for BPE) tokenizer files to out_dir."""
    source = resolve_checkpoint(checkpoint)
    model = load_model(source)
    tokenizer = load_tokenizer(source) if is_tokenizer_dir(source) else None
    eos_id = tokenizer.special_tokens.get(ENDOFTEXT) if tokenizer else None
    modern = model.config.arch == "modern"
    config = (modern_config if modern else hf_config)(model.config, eos_id)
    weights = (modern_state_dict if modern else hf_state_dict)(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_tensors(weights, out / "model.safetensors", metadata={"format": "pt"})
    if isinstance(tokenizer, BPETokenizer):
        tokenizer.save(out)
        special = ({"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
                   if eos_id is not None else {})
        (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
        (out / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
             "model_max_length": model.config.block_size, **special}, indent=2))
    return out
