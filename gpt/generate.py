"""Sampling: temperature, top-k, top-p, repetition penalty, stop tokens and stop strings.

`iter_tokens` is the engine: a prefill forward over the prompt fills the KV cache, then each
step feeds one token. Everything above it (ids, text, streamed text pieces) is a thin wrapper.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from gpt.config import SamplingParams

if TYPE_CHECKING:
    from gpt.model import GPT, KVCache
    from gpt.tokenizer import Tokenizer


def apply_repetition_penalty(logits: torch.Tensor, context: torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """CTRL's penalty: shrink positive logits and grow negative ones of tokens in context."""
    if penalty == 1.0:
        return logits
    scores = logits.gather(1, context)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(1, context, scores)


# Temperatures below this sample as temperature 0 does, greedily (vLLM's threshold): dividing
# float32 logits by one gives inf, or NaN (1e-300 is 0 in float32), and the distribution it
# asks for is greedy already (a logit 1e-4 below the top one is e^-10 times as likely).
GREEDY_BELOW = 1e-5


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(logits, min(k, logits.size(-1))).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: drop tokens outside the smallest set with cumulative prob >= p.

    The most likely token always stays, whatever p: a p that rounds to 0 in float32 (1e-300)
    would otherwise drop every token, leaving nothing to sample (NaN probabilities)."""
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # A token is dropped when the tokens ranked above it already reach p.
    drop_sorted = probs.cumsum(dim=-1) - probs >= p
    drop_sorted[:, 0] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, params: SamplingParams,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token (B, 1) from last-position logits (B, vocab).

    Every temperature and top_p the parameters allow gives a token: a temperature of 0, or one
    below GREEDY_BELOW, picks the most likely token, and top_p always keeps it."""
    logits = logits.float()  # a bf16 decoder's logits: argmax is several times slower in bf16
    if params.temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / params.temperature
    if params.top_k is not None:
        logits = filter_top_k(logits, params.top_k)
    if params.top_p is not None and params.top_p < 1.0:
        logits = filter_top_p(logits, params.top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


def _generator(device: torch.device, seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class DecodeClock:
    """When each new token was decided. Its rate counts the steps after the first token, so
    the prompt's prefill is left out: what the weights' format changes."""

    times: list[float] = field(default_factory=list)

    def tick(self) -> None:
        self.times.append(time.perf_counter())

    @property
    def tokens_per_s(self) -> float:
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def feed(model: GPT, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """The next-token logits (B, vocab) once tokens (B, T) have entered the cache: a single
    token goes through a compiled decoder's step (gpt.quantize.CompiledStep), the rest through
    forward."""
    if tokens.size(1) == 1 and model.compiled_step is not None:
        return model.compiled_step(tokens, cache)
    return model(tokens, cache=cache, last_only=True)[0][:, -1, :]


@torch.inference_mode()
def iter_tokens(model: GPT, idx: torch.Tensor, params: SamplingParams,
                stop_ids: Sequence[int] = (), clock: DecodeClock | None = None
                ) -> Iterator[torch.Tensor]:
    """Yield each new token (B,) in turn; stops early when batch 1 samples a stop id.

    Every token is predicted from at most the last `params.context_tokens` tokens (the
    model's block size when None, or when that is smaller): a sliding window. Until the
    window is full each step feeds one token through the KV cache; once it is full the window
    moves one token a step, and the cache is refilled from it (the positions restart at 0,
    as in training)."""
    model.eval()
    window = min(params.context_tokens or model.config.block_size, model.config.block_size)
    generator = _generator(idx.device, params.seed)
    context = idx[:, -window:]
    cache = model.new_cache(idx.size(0))
    logits = feed(model, context, cache)
    for _ in range(params.max_new_tokens):
        scores = apply_repetition_penalty(logits, context, params.repetition_penalty)
        token = sample_next(scores, params, generator)
        context = torch.cat([context, token], dim=1)[:, -window:]
        if clock is not None:
            clock.tick()
        yield token[:, 0]
        if idx.size(0) == 1 and token.item() in stop_ids:
            return
        if cache.pos == window:
            cache = model.new_cache(idx.size(0))
            logits = feed(model, context, cache)
        else:
            logits = feed(model, token, cache)


def warm_up(model: GPT) -> None:
    """Decode a block of greedy tokens at batch 1 from a one-token prompt: a compiled decoder
    compiles its step now, for every length of cache it attends over."""
    device = next(model.parameters()).device
    idx = torch.zeros((1, 1), dtype=torch.long, device=device)
    greedy = SamplingParams(max_new_tokens=model.config.block_size, temperature=0)
    for _ in iter_tokens(model, idx, greedy):
        pass


class ModelCheckFailed(ValueError):
    """A model that must not serve: non-finite weights, or it does not generate."""


@torch.inference_mode()
def check_model(model: GPT, tokenizer: Tokenizer, tokens: int = 4) -> None:
    """Raise ModelCheckFailed unless every weight is finite and a few greedy tokens, and
    their logits, come out finite and decode: what promotion asks of a candidate and the
    service's /health of the model it serves (argmax over NaN logits still picks a token)."""
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise ModelCheckFailed(f"non-finite weights in {len(bad)} tensor(s), first "
                               f"{', '.join(bad[:3])}")
    device = next(model.parameters()).device
    idx = torch.zeros((1, 1), dtype=torch.long, device=device)
    for _ in range(tokens):
        logits, _ = model.eval()(idx[:, -model.config.block_size:], last_only=True)
        if not torch.isfinite(logits).all():
            raise ModelCheckFailed("its logits are not finite")
        idx = torch.cat([idx, logits[:, -1, :].argmax(dim=-1, keepdim=True)], dim=1)
    try:
        tokenizer.decode(idx[0, 1:].tolist())
    except Exception as err:  # any failure to decode its own ids means it cannot answer
        raise ModelCheckFailed(f"its tokens do not decode ({type(err).__name__}: {err})"
                               ) from None


def generate_ids(model: GPT, idx: torch.Tensor, max_new_tokens: int, **options) -> torch.Tensor:
    """idx (B, T) extended by up to max_new_tokens sampled ids (fewer if a stop id is hit)."""
    stop_ids = options.pop("stop_ids", ())
    params = SamplingParams(max_new_tokens=max_new_tokens, **options)
    new = list(iter_tokens(model, idx, params, stop_ids))
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx


def encode_prompt(tokenizer: Tokenizer, prompt: str, device: torch.device | str = "cpu"
                  ) -> torch.Tensor:
    """Prompt ids as a (1, T) tensor; an empty prompt starts from <|endoftext|>."""
    ids = tokenizer.encode(prompt)
    if not ids:
        eot = tokenizer.special_tokens.get("<|endoftext|>")
        if eot is None:
            raise ValueError("empty prompt, and the tokenizer has no <|endoftext|> to start from")
        ids = [eot]
    return torch.tensor([ids], dtype=torch.long, device=device)


class _StopStringFilter:
    """Holds back text that might be the start of a stop string, and finds stop strings."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = list(stop)
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text that is safe to emit now."""
        self.pending += text
        hits = [self.pending.find(s) for s in self.stop if s in self.pending]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[:min(hits)], ""
            return out
        keep = max((n for s in self.stop for n in range(1, len(s))
                    if self.pending.endswith(s[:n])), default=0)
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def decode_stream(token_ids: Iterable[int], tokenizer: Tokenizer,
                  stop: Sequence[str] = ()) -> Iterator[str]:
    """Turn a stream of token ids into text pieces, each complete characters only.

    Bytes go through an incremental UTF-8 decoder, so a character split across tokens is
    emitted whole once its last byte arrives; text is cut before the first stop string.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = _StopStringFilter(stop)
    for token_id in token_ids:
        piece = stops.feed(decoder.decode(tokenizer.token_bytes(token_id)))
        if piece:
            yield piece
        if stops.stopped:
            return
    tail = stops.feed(decoder.decode(b"", final=True))
    if not stops.stopped:
        tail += stops.flush()
    if tail:
        yield tail


def stream_text(model: GPT, tokenizer: Tokenizer, prompt: str,
                params: SamplingParams, clock: DecodeClock | None = None) -> Iterator[str]:
    """Yield the continuation of prompt in pieces, as soon as each piece is decided.

    Generation ends at <|endoftext|> (not shown), at a stop string (not included), or after
    max_new_tokens.
    """
    device = next(model.parameters()).device
    idx = encode_prompt(tokenizer, prompt, device)
    eot = tokenizer.special_tokens.get("<|endoftext|>")
    stop_ids = () if eot is None else (eot,)
    ids = (int(t.item()) for t in iter_tokens(model, idx, params, stop_ids, clock))
    yield from decode_stream((i for i in ids if i not in stop_ids), tokenizer, params.stop)


def generate_text(model: GPT, tokenizer: Tokenizer, prompt: str,
                  params: SamplingParams) -> str:
    """The whole continuation of prompt as one string."""
    return "".join(stream_text(model, tokenizer, prompt, params))
