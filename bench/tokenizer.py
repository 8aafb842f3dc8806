"""Our BPE against Hugging Face `tokenizers` on Tiny Shakespeare: training time at vocab 8192,
encode throughput with the same merges (tiktoken loaded with our merges as the ceiling), and
compression at equal vocabulary size.

    python bench/tokenizer.py [--vocab-size 8192] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import save, table
from gpt.tokenizer import GPT2_SPLIT_PATTERN, BPETokenizer
from tests.conftest import corpus_path


def best_of(rounds: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(rounds):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def hf_train(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text], trainer)
    return tok


def hf_from_ours(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def tiktoken_from_ours(ours: BPETokenizer):
    import tiktoken

    ranks = {ours.token_bytes(i): i for i in range(ours.vocab_size)
             if i not in ours.special_tokens.values()}
    return tiktoken.Encoding("tinygpt", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens=ours.special_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    text = corpus_path().read_text(encoding="utf-8")
    n_bytes = len(text.encode())
    lines = text.splitlines(keepends=True)
    threads = os.environ.get("RAYON_NUM_THREADS", str(os.cpu_count()))

    ours_train, ours = best_of(args.rounds, lambda: BPETokenizer.train(text, args.vocab_size))
    hf_train_s, hf_trained = best_of(args.rounds, lambda: hf_train(text, args.vocab_size))
    folder = Path(tempfile.mkdtemp())
    ours.save(folder)
    hf = hf_from_ours(folder)
    tk = tiktoken_from_ours(ours)

    ours_enc, ours_ids = float("inf"), None
    for _ in range(args.rounds):  # a freshly loaded tokenizer each round: a cold chunk cache
        fresh = BPETokenizer.load(folder)
        started = time.perf_counter()
        ours_ids = fresh.encode(text)
        ours_enc = min(ours_enc, time.perf_counter() - started)
    warm_enc, _ = best_of(args.rounds, lambda: fresh.encode(text))
    hf_whole, hf_ids = best_of(args.rounds, lambda: hf.encode(text).ids)
    hf_batch, _ = best_of(args.rounds, lambda: hf.encode_batch(lines))
    tk_enc, tk_ids = best_of(args.rounds, lambda: tk.encode_ordinary(text))
    assert hf_ids == ours_ids, "HF disagrees with our encoding"
    ours_bpt = n_bytes / len(ours_ids)
    hf_bpt = n_bytes / len(hf_trained.encode(text).ids)

    rows = [
        {"figure": f"BPE training, vocab {args.vocab_size}", "ours": f"{ours_train:.2f} s",
         "peer": f"{hf_train_s:.2f} s (HF, {threads} threads)",
         "ratio": f"{ours_train / hf_train_s:.2f}x HF time"},
        {"figure": "encode, whole corpus", "ours": f"{n_bytes / ours_enc / 1e6:.2f} MB/s",
         "peer": f"{n_bytes / hf_whole / 1e6:.2f} MB/s (HF whole), "
                 f"{n_bytes / hf_batch / 1e6:.2f} MB/s (HF batched by line)",
         "ratio": f"{hf_batch / ours_enc:.2f}x HF batched"},
        {"figure": "encode, warm chunk cache", "ours": f"{n_bytes / warm_enc / 1e6:.2f} MB/s",
         "peer": f"{n_bytes / hf_batch / 1e6:.2f} MB/s (HF batched by line)",
         "ratio": f"{hf_batch / warm_enc:.2f}x HF batched"},
        {"figure": "encode ceiling", "ours": f"{n_bytes / ours_enc / 1e6:.2f} MB/s",
         "peer": f"{n_bytes / tk_enc / 1e6:.2f} MB/s (tiktoken, our merges; "
                 f"same ids: {tk_ids == ours_ids})",
         "ratio": f"{tk_enc / ours_enc:.2f}x tiktoken"},
        {"figure": f"compression, vocab {args.vocab_size}", "ours": f"{ours_bpt:.3f} bytes/token",
         "peer": f"{hf_bpt:.3f} bytes/token (HF-trained)",
         "ratio": f"{100 * (ours_bpt / hf_bpt - 1):+.2f}%"},
    ]
    print(table(rows, ["figure", "ours", "peer", "ratio"]))
    print(f"results: {save('tokenizer', rows)}")


if __name__ == "__main__":
    main()
