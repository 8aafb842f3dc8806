"""A decoder-only Transformer in the GPT-2 shape, in one file.

token + position embeddings -> n_layer x [LayerNorm -> causal self-attention -> residual,
LayerNorm -> MLP -> residual] -> LayerNorm -> logits through the (tied) embedding matrix.

Parameter names follow GPT-2's (`transformer.h.0.attn.c_attn`, ...), so exporting to a
Hugging Face `GPT2LMHeadModel` is a renaming plus a transpose (see gpt/export.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt.config import GPTConfig


class KVCache:
    """Keys and values of every layer, preallocated for block_size positions.

    Generation then runs one token per forward: the new token's key and value are written at
    `pos`, and attention reads positions [0, pos]. Nothing is re-computed or re-allocated.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        shape = (config.n_layer, batch_size, config.n_head, config.block_size,
                 config.n_embd // config.n_head)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # how many positions are filled

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, D) at the current position; return all keys/values so far."""
        end = self.pos + k.size(2)
        keys, values = self.keys[layer], self.values[layer]
        keys.narrow(2, self.pos, k.size(2)).copy_(k)
        values.narrow(2, self.pos, v.size(2)).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mask: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v, written out. mask is True where attending is allowed;
    dropout falls on the attention weights, as in scaled_dot_product_attention."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores, dim=-1)
    if dropout > 0:
        weights = F.dropout(weights, dropout)
    return weights @ v


def causal_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Query i (the last q_len of k_len positions) may see keys 0 .. k_len - q_len + i."""
    offset = k_len - q_len
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=offset)


def dropout_layer(p: float) -> nn.Module:
    """Dropout, or nothing at all when p is 0 (saves a call per layer per token)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.impl = config.attn_impl
        self.dropout = config.dropout
        # One matmul makes queries, keys and values for every head at once.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = dropout_layer(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
                ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = self._attend(q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q_len, k_len = q.size(2), k.size(2)
        dropout = self.dropout if self.training else 0.0
        if self.impl == "explicit":
            return explicit_attention(q, k, v, causal_mask(q_len, k_len, q.device), dropout)
        if q_len == k_len:  # training, or the first forward of generation
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        if q_len == 1:      # one new token sees every cached position
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        mask = causal_mask(q_len, k_len, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = dropout_layer(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
                ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=dropout_layer(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output projection reuses the token embedding matrix, which saves
        # vocab_size * n_embd parameters and helps small models.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the init of each residual projection by 1/sqrt(2 * n_layer) so the
        # residual stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings are left out by default, as GPT-2 counts."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    @torch.no_grad()
    def resize_vocab(self, vocab_size: int) -> None:
        """Grow the (tied) embedding to vocab_size rows; new rows get GPT-2's init."""
        old = self.transformer.wte.weight
        if vocab_size < old.size(0):
            raise ValueError(f"cannot shrink the vocabulary from {old.size(0)} to {vocab_size}")
        new = nn.Embedding(vocab_size, old.size(1), device=old.device, dtype=old.dtype)
        nn.init.normal_(new.weight, mean=0.0, std=0.02)
        new.weight[:old.size(0)] = old
        self.transformer.wte = new
        self.lm_head = nn.Linear(old.size(1), vocab_size, bias=False, device=old.device,
                                 dtype=old.dtype)
        self.lm_head.weight = new.weight
        self.config.vocab_size = vocab_size

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, with targets, the mean cross-entropy loss.

        With a cache, idx holds only the new tokens, placed after the cached positions.
        last_only=True computes logits for the last position only (what sampling needs).
        """
        T = idx.size(1)
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size "
                             f"{self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)
        if last_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            # ignore_index=-100 lets callers mask positions (padding, prompts) out of the loss.
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                                   ignore_index=-100)
        return logits, loss

    def new_cache(self, batch_size: int) -> KVCache:
        weight = self.transformer.wte.weight
        return KVCache(self.config, batch_size, weight.device, weight.dtype)
