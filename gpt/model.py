"""A decoder-only Transformer in the GPT-2 shape, or its modern form, in one file.

gpt2: token + position embeddings -> n_layer x [LayerNorm -> causal self-attention ->
residual, LayerNorm -> MLP -> residual] -> LayerNorm -> logits through the (tied) embedding.

modern (`arch: modern`), the changes that newer small-model records credit: no position table
but rotary embeddings on queries and keys, RMSNorm instead of LayerNorm, a SwiGLU MLP, and
optionally RMSNorm on each head's queries and keys (`qk_norm`). That is Llama's block (Qwen3's
with qk_norm), so it exports as one.

Parameter names follow GPT-2's (`transformer.h.0.attn.c_attn`, ...), so exporting to a
Hugging Face `GPT2LMHeadModel` is a renaming plus a transpose (see gpt/export.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt.config import GPTConfig
from gpt.loss import head_cross_entropy

RMS_EPS = 1e-6        # RMSNorm's epsilon, as Llama and Qwen3 use
ROPE_THETA = 10000.0  # rotary embeddings' base period
# On a CPU, torch's fused attention kernel runs bf16 no faster than fp32, while the written-out
# form's matmuls run bf16 several times faster: up to this many keys, `auto` attention trains a
# bf16 step faster written out (bench/train_speed.py); beyond it, the (T, T) scores cost more.
CPU_BF16_EXPLICIT_MAX_KEYS = 256
# Odd multipliers of the dropout hash (`hashed_keep`), under 2**31 so that a 32-bit value times
# one stays inside int64.
HASH_MULTIPLIERS = (0x7FEB352D, 0x2C1B3C6D, 0x297A2D39)
# GPT-2's GELU, x sigmoid(2u) with 2u = GELU_SCALE (x + GELU_CUBIC x^3).
GELU_SCALE, GELU_CUBIC = 2 * math.sqrt(2 / math.pi), 0.044715


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

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store one decode step's keys and values (n_layer, B, H, 1, D) and move on."""
        self.keys.narrow(3, self.pos, 1).copy_(keys)
        self.values.narrow(3, self.pos, 1).copy_(values)
        self.pos += 1


def hashed_keep(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A dropout mask (True: kept, with probability 1 - p) from a counter-based hash: each
    element's index (its low 32 bits), multiplied into 32 bits, mixed with a seed drawn from
    torch's generator (so seeding and resuming reproduce it) and scrambled by
    xor-shift-multiply rounds."""
    bits = 0xFFFFFFFF
    first, *rest = HASH_MULTIPLIERS
    index = torch.arange(math.prod(shape), device=device, dtype=torch.int64).view(shape)
    h = ((index & bits) * first & bits) ^ torch.randint(0, 2**32, (), device=device)
    for multiplier in rest:
        h = (h ^ (h >> 15)) * multiplier & bits
    return (h ^ (h >> 16)) >= round(p * 2**32)


def compiling_for_cpu(x: torch.Tensor) -> bool:
    """Whether x is traced by torch.compile for a CPU, whose generated loops draw random
    numbers element by element and compute tanh far slower than exp: there dropout draws its
    mask from `hashed_keep` and GELU goes through sigmoid, forms the compiler fuses into their
    neighbours' loops and vectorizes well (README, Training speed)."""
    return torch.compiler.is_compiling() and x.device.type == "cpu"


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """F.dropout in training, with the hashed mask where `compiling_for_cpu`."""
    if not compiling_for_cpu(x):
        return F.dropout(x, p)
    return torch.where(hashed_keep(x.shape, p, x.device), x * (1 / (1 - p)), 0.0)


def gelu_gate(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(2u) = 0.5 (1 + tanh u): GPT-2's GELU is x times it."""
    return torch.sigmoid(GELU_SCALE * (x + GELU_CUBIC * x * x * x))


class _SigmoidGelu(torch.autograd.Function):
    """GPT-2's GELU as x sigmoid(2u), with its derivative written out: s + x s (1 - s) d(2u)/dx.
    Autograd's derivative of the forward's expression holds twice the products, and a compiled
    CPU step computes it element by element over the MLP's whole hidden layer."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * gelu_gate(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = gelu_gate(x)
        return grad * (s + x * s * (1 - s) * GELU_SCALE * (1 + 3 * GELU_CUBIC * x * x))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU, the tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715
    x^3). Where `compiling_for_cpu`, as x sigmoid(2u), the same function (`_SigmoidGelu`)."""
    if not compiling_for_cpu(x):
        return F.gelu(x, approximate="tanh")
    return _SigmoidGelu.apply(x)


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p) if self.training and self.p > 0 else x


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mask: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v, written out. mask is True where attending is allowed;
    dropout falls on the attention weights, as in scaled_dot_product_attention.

    The product adds the mask (0 or -inf) and scales as it writes the scores (`baddbmm`), so
    the softmax reads them as they are: a mask applied after the product indexes every
    (query, key) pair, which keeps a compiled CPU step from fusing the softmax's passes over
    each row (it wrote exp(scores - max) out in fp32 between them)."""
    (b, h, t, d), s = q.shape, k.size(2)
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, -math.inf)
    scores = torch.baddbmm(bias.expand(b * h, t, s), q.reshape(b * h, t, d),
                           k.reshape(b * h, s, d).transpose(1, 2), alpha=1 / math.sqrt(d))
    weights = F.softmax(scores.view(b, h, t, s), dim=-1)
    if dropout_p > 0:
        weights = dropout(weights, dropout_p)
    return weights @ v


def attention_form(impl: str, q: torch.Tensor, k_len: int) -> str:
    """What `impl` means for these queries over k_len keys: "auto" is the fused kernel
    ("sdpa"), except in bf16 on a CPU over at most CPU_BF16_EXPLICIT_MAX_KEYS keys."""
    if impl != "auto":
        return impl
    written_out_is_faster = (q.device.type == "cpu" and q.dtype == torch.bfloat16
                             and k_len <= CPU_BF16_EXPLICIT_MAX_KEYS)
    return "explicit" if written_out_is_faster else "sdpa"


def causal_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Query i (the last q_len of k_len positions) may see keys 0 .. k_len - q_len + i."""
    offset = k_len - q_len
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=offset)


def dropout_layer(p: float) -> nn.Module:
    """Dropout, or nothing at all when p is 0 (saves a call per layer per token)."""
    return Dropout(p) if p > 0 else nn.Identity()


def norm_layer(config: GPTConfig, width: int | None = None) -> nn.Module:
    """LayerNorm (gpt2) or RMSNorm (modern: no mean subtracted, no bias)."""
    width = width or config.n_embd
    if config.arch == "modern":
        return nn.RMSNorm(width, eps=RMS_EPS)
    return nn.LayerNorm(width, bias=config.bias)


class Rotary(nn.Module):
    """Rotary position embeddings: each query and key is rotated by angles that grow with its
    position, so q.k depends on how far apart two tokens are. Llama's layout: dimension i pairs
    with i + head_dim/2. The angles are precomputed for block_size positions."""

    def __init__(self, head_dim: int, block_size: int, theta: float = ROPE_THETA) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(block_size).float(), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        # Not in the state dict: a function of the config, rebuilt on load.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """x (B, H, T, D) at positions start .. start + T - 1, rotated. A tensor start is one
        decode step's position (T = 1), read from the tables without leaving the graph."""
        if isinstance(start, torch.Tensor):
            rows = start.view(1)
            cos, sin = self.cos.index_select(0, rows), self.sin.index_select(0, rows)
        else:
            cos, sin = self.cos[start:start + x.size(-2)], self.sin[start:start + x.size(-2)]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        half = x.size(-1) // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.impl = config.attn_impl
        self.dropout = config.dropout
        # One matmul makes queries, keys and values for every head at once.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd,
                                bias=config.bias and config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = dropout_layer(config.dropout)
        head_dim = config.n_embd // config.n_head
        self.rotary = (Rotary(head_dim, config.block_size) if config.arch == "modern"
                       else None)
        self.q_norm = norm_layer(config, head_dim) if config.qk_norm else None
        self.k_norm = norm_layer(config, head_dim) if config.qk_norm else None

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
                ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self._project(x, cache.pos if cache is not None else 0)
        if cache is not None:  # on a CPU the cache is fp32 whatever the weights (new_cache)
            k, v = cache.update(layer, k, v)
        y = self._attend(q.to(k.dtype), k, v).to(q.dtype)  # no-ops without a cache
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def decode_step(self, x: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor,
                    values: torch.Tensor, cached: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One new token x (B, 1, C) at position pos attends to the layer's cached keys and
        values (B, H, S, D), where `cached` marks the filled positions, and to itself: the
        attention's output and the token's key and value, which the caller stores. Nothing is
        written and no shape depends on pos, so a compiled step is one graph for every
        position, with no copy of the cache."""
        B, _, C = x.shape
        q, k, v = (t.to(keys.dtype) for t in self._project(x, pos))
        scale = 1.0 / math.sqrt(q.size(-1))
        past = ((q @ keys.transpose(-2, -1)).float() * scale).masked_fill(~cached, float("-inf"))
        own = (q.float() * k.float()).sum(dim=-1, keepdim=True) * scale
        weights = torch.cat([past, own], dim=-1).softmax(dim=-1)  # fp32: one softmax for both
        y = (weights[..., :-1].to(values.dtype) @ values).float() + weights[..., -1:] * v.float()
        y = y.to(x.dtype).transpose(1, 2).reshape(B, 1, C)
        return self.c_proj(y), k, v

    def _project(self, x: torch.Tensor, start: int | torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values (B, n_head, T, head_dim) of x at positions from start."""
        B, T, C = x.shape
        # (B, T, 3C) -> three (B, n_head, T, head_dim) views, in one reshape
        q, k, v = (self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
                   .permute(2, 0, 3, 1, 4).unbind(0))
        if self.q_norm is not None:  # in the norms' dtype: fp32 under autocast (q and k arrive
            # in bf16), bf16 in a bf16 or int8 decoder (one dtype: the fused kernel)
            norm_dtype = self.q_norm.weight.dtype
            q = self.q_norm(q.to(norm_dtype)).type_as(q)
            k = self.k_norm(k.to(norm_dtype)).type_as(k)
        if self.rotary is not None:  # positions continue after the cached ones
            q, k = self.rotary(q, start), self.rotary(k, start)
        return q, k, v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q_len, k_len = q.size(2), k.size(2)
        dropout_p = self.dropout if self.training else 0.0
        if attention_form(self.impl, q, k_len) == "explicit":
            return explicit_attention(q, k, v, causal_mask(q_len, k_len, q.device), dropout_p)
        if dropout_p > 0 and compiling_for_cpu(q):
            # torch's attention with dropout runs written out here anyway, in fp32 (its
            # math form); written out by hand, its dropout is the hashed one
            mask = causal_mask(q_len, k_len, q.device)
            with torch.autocast(q.device.type, enabled=False):
                y = explicit_attention(q.float(), k.float(), v.float(), mask, dropout_p)
            return y.type_as(q)
        if q_len == k_len:  # training, or the first forward of generation
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        if q_len == 1:      # one new token sees every cached position
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        mask = causal_mask(q_len, k_len, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        bias = config.bias and config.mlp_bias
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=bias)
        self.dropout = dropout_layer(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(gelu_tanh(self.c_fc(x))))


def swiglu_hidden(n_embd: int) -> int:
    """SwiGLU's hidden width: 8/3 of n_embd (the parameters of a 4x GELU MLP), rounded up to
    a multiple of 64."""
    return -(-8 * n_embd // (3 * 64)) * 64


class SwiGLU(nn.Module):
    """Llama's gated MLP: down(silu(gate(x)) * up(x)); gate and up are one matmul."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = swiglu_hidden(config.n_embd)
        bias = config.bias and config.mlp_bias
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=bias)
        self.dropout = dropout_layer(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)
        return self.dropout(self.c_proj(F.silu(gate) * up))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = norm_layer(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm_layer(config)
        self.mlp = SwiGLU(config) if config.arch == "modern" else MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
                ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.arch == "gpt2":  # modern models place tokens by rotating queries and keys
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            **modules,
            drop=dropout_layer(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=norm_layer(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # How generation feeds one token: None is forward with the cache; a decoder made by
        # gpt.quantize.for_decoding(compile=True) holds its compiled decode_step here (a
        # gpt.quantize.CompiledStep: logits from a token and the cache, which it extends).
        self.compiled_step: Callable[[torch.Tensor, KVCache], torch.Tensor] | None = None
        if config.tie_embeddings:
            # The output projection reuses the token embedding matrix, which saves
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
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

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
        head = nn.Linear(old.size(1), vocab_size, bias=False, device=old.device,
                         dtype=old.dtype)
        if self.config.tie_embeddings:
            head.weight = new.weight
        else:
            nn.init.normal_(head.weight, mean=0.0, std=0.02)
            head.weight[:old.size(0)] = self.lm_head.weight
        self.lm_head = head
        self.config.vocab_size = vocab_size

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, vocab) and None; with targets, None and the mean cross-entropy loss
        (ignoring targets of -100: padding, prompts), computed without the logits (gpt/loss.py).

        With a cache, idx holds only the new tokens, placed after the cached positions.
        last_only=True computes logits for the last position only (what sampling needs).
        """
        T = idx.size(1)
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size "
                             f"{self.config.block_size}")
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)
        if targets is not None:  # the loss alone: the (B, T, vocab) logits are never made
            loss = head_cross_entropy(self.lm_head, x.reshape(-1, x.size(-1)),
                                      targets.reshape(-1))
            return None, loss
        if last_only:
            x = x[:, -1:, :]
        return self.lm_head(x), None

    def decode_step(self, idx: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor,
                    values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Generation's step as a pure function: the next-token logits (B, vocab) of one new
        token per row (idx (B, 1)) at position pos (a 0-d tensor) after a KV cache's first S
        positions (keys and values (n_layer, B, H, S, D), S at least pos), and the new token's
        keys and values (n_layer, B, H, 1, D) for `KVCache.append`. Equal to forward with the
        cache; written so that torch.compile makes it one graph for every position
        (gpt.quantize.for_decoding(compile=True))."""
        x = self.transformer.wte(idx)
        if self.config.arch == "gpt2":
            x = x + self.transformer.wpe(pos.view(1))
        cached = torch.arange(keys.size(3), device=idx.device) < pos
        new_keys, new_values = [], []
        for layer, block in enumerate(self.transformer.h):
            y, k, v = block.attn.decode_step(block.ln_1(x), pos, keys[layer], values[layer],
                                             cached)
            x = x + y
            x = x + block.mlp(block.ln_2(x))
            new_keys.append(k)
            new_values.append(v)
        logits = self.lm_head(self.transformer.ln_f(x))[:, -1, :]
        return logits, torch.stack(new_keys), torch.stack(new_values)

    def new_cache(self, batch_size: int) -> KVCache:
        """A KV cache in the weights' dtype. On a CPU it is fp32 for forward, where the fused
        attention kernel runs several times faster in fp32 than in bf16 (a bf16 or int8
        decoder's), unless a compiled step reads it (its own attention is fastest in the
        weights' dtype)."""
        weight = self.transformer.wte.weight
        fused_attention = weight.device.type == "cpu" and self.compiled_step is None
        dtype = torch.float32 if fused_attention else weight.dtype
        return KVCache(self.config, batch_size, weight.device, dtype)
