"""Generation speed, batch 1, 16-token prompt, 256 new tokens, greedy, ~14M parameters:
ours (preallocated KV cache) against transformers' generate with and without its cache.

    python bench/generate.py [--new-tokens 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import save, table
from gpt.generate import SamplingParams, iter_tokens
from gpt.model import GPT, GPTConfig

VOCAB, BLOCK, LAYERS, HEADS, EMBD, PROMPT = 8192, 512, 6, 6, 384, 16


@torch.no_grad()
def time_ours(model: GPT, prompt: torch.Tensor, new: int) -> float:
    started = time.perf_counter()
    out = list(iter_tokens(model, prompt, SamplingParams(max_new_tokens=new, temperature=0)))
    assert len(out) == new
    return new / (time.perf_counter() - started)


@torch.no_grad()
def time_hf(model, prompt: torch.Tensor, new: int, cache: bool) -> float:
    started = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         use_cache=cache, pad_token_id=0, eos_token_id=None)
    assert out.shape[1] == prompt.shape[1] + new
    return new / (time.perf_counter() - started)


def main() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=LAYERS, n_head=HEADS,
                         n_embd=EMBD)).eval()
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_embd=EMBD,
                                    n_layer=LAYERS, n_head=HEADS, bos_token_id=None,
                                    eos_token_id=None)).eval()
    prompt = torch.randint(VOCAB, (1, PROMPT))
    runs = {
        "tinygpt (KV cache)": lambda: time_ours(ours, prompt, args.new_tokens),
        "transformers generate, cache": lambda: time_hf(hf, prompt, args.new_tokens, True),
        "transformers generate, no cache": lambda: time_hf(hf, prompt, args.new_tokens, False),
    }
    best = {name: 0.0 for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            best[name] = max(best[name], run())
    reference = best["transformers generate, cache"]
    rows = [{"generator": name, "tokens_per_s": value, "vs_transformers_cache": value / reference}
            for name, value in best.items()]
    print(f"{ours.num_params(non_embedding=False) / 1e6:.1f}M parameters, batch 1, "
          f"{PROMPT}-token prompt, {args.new_tokens} new tokens, greedy")
    print(table(rows, ["generator", "tokens_per_s", "vs_transformers_cache"]))
    print(f"results: {save('generate', rows)}")


if __name__ == "__main__":
    main()
