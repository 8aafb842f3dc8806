"""Export a checkpoint as a Hugging Face GPT-2 folder.

Our parameter names are GPT-2's; the one real difference is that GPT-2 stores its projections
as Conv1D, whose weight is the transpose of nn.Linear's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gpt.checkpoint import load_model, resolve_checkpoint, save_tensors
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import ENDOFTEXT, BPETokenizer, is_tokenizer_dir, load_tokenizer

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                   "mlp.c_proj.weight")


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under GPT2LMHeadModel's names and layouts (missing biases as zeros)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight; transformers re-ties it on load
        state[name] = tensor.t().contiguous() if name.endswith(CONV1D_SUFFIXES) else tensor
    if not model.config.bias:  # GPT-2 always has biases; zeros make them no-ops
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
        "initializer_range": 0.02, "tie_word_embeddings": True, "scale_attn_weights": True,
        "bos_token_id": eos_id, "eos_token_id": eos_id,
    }


def export_hf(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write config.json, model.safetensors and (for BPE) tokenizer files to out_dir."""
    source = resolve_checkpoint(checkpoint)
    model = load_model(source)
    tokenizer = load_tokenizer(source) if is_tokenizer_dir(source) else None
    eos_id = tokenizer.special_tokens.get(ENDOFTEXT) if tokenizer else None
    config = hf_config(model.config, eos_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_tensors(hf_state_dict(model), out / "model.safetensors", metadata={"format": "pt"})
    if isinstance(tokenizer, BPETokenizer):
        tokenizer.save(out)
        special = ({"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
                   if eos_id is not None else {})
        (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
        (out / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
             "model_max_length": config["n_positions"], **special}, indent=2))
    return out
