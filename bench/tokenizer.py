"""Our BPE against Hugging Face `tokenizers` on Tiny Shakespeare: training time at vocab 8192,
encode throughput with the same merges (tiktoken loaded with our merges as the ceiling), and
compression at equal vocabulary size.

With --big-mb N: training on an N MB corpus made of the documentation and source files found
in the venv, at --big-vocab, ours and HF's each in a fresh process: time and peak memory, with
the peak of a process that only reads the corpus as the baseline.

    python bench/tokenizer.py [--vocab-size 8192] [--rounds 3] [--big-mb 100 --big-vocab 32768]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import save, table
from gpt.tokenizer import GPT2_SPLIT_PATTERN, BPETokenizer
from tests.scratch import corpus_path


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


# Run in a fresh process: trains one tokenizer on a file, prints seconds and peak memory.
CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from bench.tokenizer import hf_train
from gpt.tokenizer import BPETokenizer
text = open({path!r}, encoding="utf-8").read()
started = time.perf_counter()
if {who!r} == "ours":
    BPETokenizer.train(text, {vocab})
elif {who!r} == "hf":
    hf_train(text, {vocab})
print(json.dumps({{"seconds": time.perf_counter() - started,
                  "peak_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def venv_corpus(megabytes: int, out: Path) -> int:
    """Concatenate the venv's .py, .md, .rst and .txt files (UTF-8 ones) up to megabytes."""
    limit, size = megabytes * 2**20, 0
    site = Path(sys.prefix) / "lib"
    with out.open("w", encoding="utf-8") as corpus:
        for path in sorted(site.rglob("*")):
            if size >= limit:
                break
            if path.suffix not in (".py", ".md", ".rst", ".txt") or not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            corpus.write(text + "\n\n")
            size += len(text.encode()) + 2
    return size


def big_corpus(megabytes: int, vocab: int) -> list[dict]:
    folder = Path(tempfile.mkdtemp())
    path = folder / "corpus.txt"
    size = venv_corpus(megabytes, path)
    print(f"corpus: {size / 2**20:.0f} MB from the venv's docs and sources", flush=True)
    runs = {}
    for who in ("read only", "ours", "hf"):
        code = CHILD.format(root=str(Path(__file__).resolve().parents[1]), path=str(path),
                            who=who, vocab=vocab)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
        runs[who] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {who}: {runs[who]}", flush=True)
    base = runs["read only"]["peak_MB"]
    ours, hf = runs["ours"], runs["hf"]
    return [
        {"figure": f"BPE training, {size / 2**20:.0f} MB, vocab {vocab}",
         "ours": f"{ours['seconds']:.1f} s", "peer": f"{hf['seconds']:.1f} s (HF)",
         "ratio": f"{ours['seconds'] / hf['seconds']:.2f}x HF time"},
        {"figure": "  peak memory beyond the corpus read",
         "ours": f"{ours['peak_MB'] - base:.0f} MB", "peer": f"{hf['peak_MB'] - base:.0f} MB (HF)",
         "ratio": f"{(ours['peak_MB'] - base) / max(hf['peak_MB'] - base, 1):.2f}x HF"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big-mb", type=int, default=0,
                        help="also train on a corpus of this many MB from the venv")
    parser.add_argument("--big-vocab", type=int, default=32768)
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
    if args.big_mb:
        rows += big_corpus(args.big_mb, args.big_vocab)
    print(table(rows, ["figure", "ours", "peer", "ratio"]))
    print(f"results: {save('tokenizer', rows)}")


if __name__ == "__main__":
    main()
