"""Generation speed at batch 1 and what each weight format costs in quality.

Speed: a ~14M-parameter model (random weights), 16-token prompt, 256 new tokens, greedy. Ours
in fp32, bf16 and int8 weights (gpt/quantize.py), eager and with the compiled decode step
(its compile time printed apart), timed over the decode loop alone; against
transformers' `generate` with and without its KV cache (fp32, prefill included: its own
count). Each row's share of the memory-bandwidth limit is weights bytes x tokens/s / the read
rate measured in the same run, in every round beside the decoders (the best of each: a machine
whose speed moves during the run moves both alike). The int8 ceiling row times the int8
decoder's 25 matrix-vector products alone, back to back as one token runs them: what decoding
would reach if nothing else in a step took time.

Quality: a trained checkpoint (`--checkpoint`, else one trained here for `--train-seconds` on
Tiny Shakespeare with params.yaml's defaults) decoded in each format: val bits per byte and
greedy agreement with fp32 over fixed prompts.

    python bench/generate.py [--new-tokens 256] [--rounds 3] [--checkpoint data/model/best]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import read_bandwidth, save, table
from gpt.checkpoint import load_model, resolve_checkpoint
from gpt.config import GPT2_BLOCK, WEIGHT_FORMATS, load_params
from gpt.data import read_text, split_text
from gpt.evaluate import evaluate_tokens
from gpt.generate import DecodeClock, SamplingParams, feed, iter_tokens, warm_up
from gpt.model import GPT, GPTConfig
from gpt.quantize import Int8Linear, for_decoding, weight_bytes_per_token
from gpt.tokenizer import load_tokenizer
from tests.scratch import corpus_path

VOCAB, BLOCK, LAYERS, HEADS, EMBD, PROMPT = 8192, 512, 6, 6, 384, 16
FORMATS = tuple(w for w in WEIGHT_FORMATS if w != "auto")  # fp32 first: the reference
INT8_CEILING = "int8 matmuls alone (ceiling)"


@torch.no_grad()
def time_ours(model: GPT, prompt: torch.Tensor, new: int) -> float:
    clock = DecodeClock()
    out = list(iter_tokens(model, prompt, SamplingParams(max_new_tokens=new, temperature=0),
                           clock=clock))
    assert len(out) == new
    return clock.tokens_per_s


@torch.no_grad()
def time_int8_matmuls(decoder: GPT, tokens: int) -> float:
    """Tokens/s of the decoder's int8 matrix-vector products alone, one bf16 row each."""
    layers = [m for m in decoder.modules() if isinstance(m, Int8Linear)]
    rows = [torch.randn(1, m.weight.size(1), dtype=m.scale.dtype) for m in layers]
    started = time.perf_counter()
    for _ in range(tokens):
        for m, row in zip(layers, rows, strict=True):
            torch._weight_int8pack_mm(row, m.weight, m.scale)
    return tokens / (time.perf_counter() - started)


@torch.no_grad()
def time_hf(model, prompt: torch.Tensor, new: int, cache: bool) -> float:
    started = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         use_cache=cache, pad_token_id=0, eos_token_id=None)
    assert out.shape[1] == prompt.shape[1] + new
    return new / (time.perf_counter() - started)


def speed(rounds: int, new_tokens: int, compile_seconds: dict[str, float]
          ) -> tuple[list[dict], float]:
    """The speed rows and the read rate; compile_seconds gets each format's compile time (its
    warm-up)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=LAYERS, n_head=HEADS,
                         n_embd=EMBD, **GPT2_BLOCK)).eval()  # GPT2LMHeadModel's
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_embd=EMBD,
                                    n_layer=LAYERS, n_head=HEADS, bos_token_id=None,
                                    eos_token_id=None)).eval()
    prompt = torch.randint(VOCAB, (1, PROMPT))
    decoders = {f"tinygpt {w}": for_decoding(ours, w) for w in FORMATS}
    for w in FORMATS:
        decoders[f"tinygpt {w}, compiled"] = compiled = for_decoding(ours, w, compile=True)
        started = time.perf_counter()
        warm_up(compiled)
        compile_seconds[w] = time.perf_counter() - started
    runs = {name: (lambda d=d: time_ours(d, prompt, new_tokens)) for name, d in decoders.items()}
    runs[INT8_CEILING] = lambda: time_int8_matmuls(decoders["tinygpt int8"], new_tokens)
    runs["transformers generate, cache"] = lambda: time_hf(hf, prompt, new_tokens, True)
    runs["transformers generate, no cache"] = lambda: time_hf(hf, prompt, new_tokens, False)
    sizes = {name: weight_bytes_per_token(d) for name, d in decoders.items()}
    sizes[INT8_CEILING] = sizes["tinygpt int8"]
    sizes["transformers generate, cache"] = weight_bytes_per_token(hf)
    best = {name: 0.0 for name in runs}
    bandwidth = 0.0
    for _ in range(rounds):  # interleaved, so the machine's load falls on all alike
        bandwidth = max(bandwidth, read_bandwidth())
        for name, run in runs.items():
            best[name] = max(best[name], run())
    reference = best["transformers generate, cache"]
    rows = []
    for name, value in best.items():
        row = {"generator": name, "tokens_per_s": value, "vs_transformers_cache": value / reference}
        if name in sizes:
            row["weights_MB"] = sizes[name] / 1e6
            row["bandwidth_share"] = sizes[name] * value / bandwidth
        rows.append(row)
    return rows, bandwidth


def trained_checkpoint(args: argparse.Namespace, scratch: str) -> Path:
    if args.checkpoint:
        return resolve_checkpoint(args.checkpoint)
    from gpt.quick import train_from_text

    params = load_params(overrides=[f"train.max_seconds={args.train_seconds}"])
    print(f"training a checkpoint for {args.train_seconds:.0f} s (params.yaml defaults)")
    train_from_text(corpus_path(), scratch, params)
    return Path(scratch) / "best"


@torch.inference_mode()
def stepped_bits_per_byte(decoder: GPT, tokenizer, windows: list[torch.Tensor]) -> float:
    """Bits per byte of each window's tokens after its first, fed one token a step through
    the KV cache as sampling feeds them (a compiled decoder's step included)."""
    nats, count = 0.0, 0
    for window in windows:
        cache = decoder.new_cache(1)
        logits = feed(decoder, window[:, :1], cache)
        for t in range(1, window.size(1)):
            target = int(window[0, t])
            nats -= logits.float().log_softmax(dim=-1)[0, target].item()
            count += len(tokenizer.token_bytes(target))
            logits = feed(decoder, window[:, t:t + 1], cache)
    return nats / count / math.log(2)


def quality(folder: Path, prompts: int = 8, new: int = 64) -> list[dict]:
    """Per weight format, eager and compiled: val bits per byte of the whole split (forward,
    the same for both), of a sample fed a token a step (what decoding computes), and greedy
    agreement with fp32."""
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    _, val_text = split_text(read_text(corpus_path()), load_params().data.val_fraction)
    val = np.array(tokenizer.encode(val_text), dtype=np.int64)
    block = model.config.block_size
    starts = np.linspace(0, len(val) - block - 1, prompts).astype(int)
    contexts = [torch.tensor(val[s:s + 32])[None] for s in starts]
    windows = [torch.tensor(val[s:s + block])[None] for s in starts]
    greedy = SamplingParams(max_new_tokens=new, temperature=0)
    reference = None
    rows = []
    for weights in FORMATS:
        for compile in (False, True):
            decoder = for_decoding(model, weights, compile=compile)
            if not compile:  # forward is the same compiled or not: score it once
                scored = evaluate_tokens(decoder, val, len(val_text.encode()), 16)
            outputs = [[t.item() for t in iter_tokens(decoder, c, greedy)] for c in contexts]
            reference = reference or outputs
            same = sum(a == b for out, ref in zip(outputs, reference, strict=True)
                       for a, b in zip(out, ref, strict=True))
            rows.append({"weights": f"{weights}, compiled" if compile else weights,
                         "val_bits_per_byte": scored["val_bits_per_byte"],
                         "stepped_bits_per_byte": stepped_bits_per_byte(decoder, tokenizer,
                                                                        windows),
                         "greedy_agreement": same / (prompts * new)})
    for row in rows:
        row["bits_per_byte_change"] = row["val_bits_per_byte"] - rows[0]["val_bits_per_byte"]
        row["stepped_change"] = (row["stepped_bits_per_byte"]
                                 - rows[0]["stepped_bits_per_byte"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint", help="a trained checkpoint for the quality rows")
    parser.add_argument("--train-seconds", type=float, default=120.0,
                        help="without --checkpoint: how long to train one")
    args = parser.parse_args()
    compile_seconds: dict[str, float] = {}
    rows, bandwidth = speed(args.rounds, args.new_tokens, compile_seconds)
    print(f"batch 1, {PROMPT}-token prompt, {args.new_tokens} new tokens, greedy; memory "
          f"read rate {bandwidth / 1e9:.1f} GB/s; compiling the decode step took "
          + ", ".join(f"{s:.1f} s ({w})" for w, s in compile_seconds.items()))
    print(table(rows, ["generator", "tokens_per_s", "vs_transformers_cache", "weights_MB",
                       "bandwidth_share"]))
    with tempfile.TemporaryDirectory() as scratch:
        scores = quality(trained_checkpoint(args, scratch))
    print(table(scores, ["weights", "val_bits_per_byte", "bits_per_byte_change",
                         "stepped_bits_per_byte", "stepped_change", "greedy_agreement"]))
    saved = save("generate", rows, quality=scores, read_bandwidth=bandwidth,
                 compile_seconds=compile_seconds)
    print(f"results: {saved}")


if __name__ == "__main__":
    main()
