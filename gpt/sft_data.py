"""The two fine-tuning datasets tinygpt ships, written by the project itself.

- `verifiable_tasks`: arithmetic, list and string operations whose right answers are computed,
  so accuracy is measured, not eyeballed.
- `python_tasks`: a hand-written prompt-to-Python set (short functions), for demos; every
  completion parses as Python.

Both split deterministically into train/val/test by a hash of the prompt.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path

Record = dict[str, str]
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
WORDS = ("apple", "pear", "lemon", "river", "stone", "cloud", "tiger", "piano", "garden",
         "window", "orange", "silver", "forest", "candle", "rocket", "button", "yellow", "castle",
         "dragon", "planet", "marble", "summer", "winter", "butter", "ladder", "mirror", "basket",
         "violet", "anchor", "harbor", "cotton", "pepper", "kitten", "meadow", "puzzle", "ginger")


def split_of(prompt: str) -> str:
    """train / val / test by the prompt's hash: stable across runs and machines."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    cumulative = 0.0
    for name, share in SPLITS:
        cumulative += share
        if bucket <= cumulative:
            return name
    return SPLITS[-1][0]


def _numbers(rng: random.Random, k: int, high: int = 9) -> list[int]:
    return [rng.randint(0, high) for _ in range(k)]


TASKS: dict[str, Callable[[random.Random], Record]] = {
    "add": lambda r: (lambda a, b: {"prompt": f"{a}+{b}=", "completion": str(a + b)})(
        r.randint(0, 99), r.randint(0, 99)),
    "subtract": lambda r: (lambda a, b: {"prompt": f"{max(a, b)}-{min(a, b)}=",
                                         "completion": str(abs(a - b))})(
        r.randint(0, 99), r.randint(0, 99)),
    "reverse list": lambda r: (lambda xs: {"prompt": f"reverse {xs}",
                                           "completion": str(xs[::-1])})(
        _numbers(r, r.randint(2, 5))),
    "sort list": lambda r: (lambda xs: {"prompt": f"sort {xs}", "completion": str(sorted(xs))})(
        _numbers(r, r.randint(2, 5))),
    "max of list": lambda r: (lambda xs: {"prompt": f"max {xs}", "completion": str(max(xs))})(
        _numbers(r, r.randint(2, 6))),
    "reverse word": lambda r: (lambda w: {"prompt": f"reverse '{w}'", "completion": w[::-1]})(
        r.choice(WORDS)),
    "uppercase word": lambda r: (lambda w: {"prompt": f"upper '{w}'", "completion": w.upper()})(
        r.choice(WORDS)),
    "length of word": lambda r: (lambda w: {"prompt": f"len '{w}'", "completion": str(len(w))})(
        r.choice(WORDS)),
}


def verifiable_tasks(n: int = 6000, seed: int = 0) -> list[Record]:
    """n distinct records, cycling through the task kinds; each has a computed answer."""
    rng = random.Random(seed)
    kinds = list(TASKS)
    seen: set[str] = set()
    records: list[Record] = []
    attempts = 0
    while len(records) < n and attempts < n * 50:
        kind = kinds[attempts % len(kinds)]
        attempts += 1
        record = TASKS[kind](rng)
        if record["prompt"] not in seen:
            seen.add(record["prompt"])
            records.append({**record, "task": kind})
    return records


# (description, function name, arguments, body) -- each becomes several phrasings.
PYTHON_FUNCTIONS = [
    ("add two numbers", "add", "a, b", "return a + b"),
    ("subtract b from a", "subtract", "a, b", "return a - b"),
    ("multiply two numbers", "multiply", "a, b", "return a * b"),
    ("square a number", "square", "x", "return x * x"),
    ("cube a number", "cube", "x", "return x ** 3"),
    ("return the absolute value of x", "absolute", "x", "return x if x >= 0 else -x"),
    ("check whether a number is even", "is_even", "n", "return n % 2 == 0"),
    ("check whether a number is odd", "is_odd", "n", "return n % 2 == 1"),
    ("return the larger of two numbers", "larger", "a, b", "return a if a > b else b"),
    ("return the smaller of two numbers", "smaller", "a, b", "return a if a < b else b"),
    ("sum a list of numbers", "total", "items", "return sum(items)"),
    ("average a list of numbers", "average", "items", "return sum(items) / len(items)"),
    ("return the largest item of a list", "largest", "items", "return max(items)"),
    ("return the smallest item of a list", "smallest", "items", "return min(items)"),
    ("reverse a list", "reverse_list", "items", "return items[::-1]"),
    ("reverse a string", "reverse_string", "text", "return text[::-1]"),
    ("sort a list", "sort_list", "items", "return sorted(items)"),
    ("count the items of a list", "count", "items", "return len(items)"),
    ("return the first item of a list", "first", "items", "return items[0]"),
    ("return the last item of a list", "last", "items", "return items[-1]"),
    ("uppercase a string", "shout", "text", "return text.upper()"),
    ("lowercase a string", "whisper", "text", "return text.lower()"),
    ("count the words in a string", "word_count", "text", "return len(text.split())"),
    ("check whether a string is a palindrome", "is_palindrome", "text",
     "return text == text[::-1]"),
    ("double every number in a list", "double_all", "items", "return [x * 2 for x in items]"),
    ("keep the even numbers of a list", "evens", "items",
     "return [x for x in items if x % 2 == 0]"),
    ("keep the positive numbers of a list", "positives", "items",
     "return [x for x in items if x > 0]"),
    ("square every number in a list", "squares", "items", "return [x * x for x in items]"),
    ("join a list of words with spaces", "join_words", "words", "return ' '.join(words)"),
    ("split a string into words", "split_words", "text", "return text.split()"),
    ("remove duplicates from a list", "unique", "items", "return list(dict.fromkeys(items))"),
    ("count how often x appears in a list", "occurrences", "items, x", "return items.count(x)"),
    ("check whether a list is empty", "is_empty", "items", "return len(items) == 0"),
    ("return the length of a string", "length", "text", "return len(text)"),
    ("convert celsius to fahrenheit", "to_fahrenheit", "c", "return c * 9 / 5 + 32"),
    ("convert fahrenheit to celsius", "to_celsius", "f", "return (f - 32) * 5 / 9"),
    ("return the remainder of a divided by b", "remainder", "a, b", "return a % b"),
    ("compute the factorial of n", "factorial", "n",
     "result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result"),
    ("sum the numbers from 1 to n", "sum_to", "n", "return n * (n + 1) // 2"),
    ("return the nth fibonacci number", "fibonacci", "n",
     "a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"),
    ("count the vowels in a string", "vowels", "text",
     "return sum(1 for c in text.lower() if c in 'aeiou')"),
    ("capitalize the first letter of a string", "capitalize", "text",
     "return text[:1].upper() + text[1:]"),
    ("merge two lists", "merge", "a, b", "return a + b"),
    ("return the keys of a dictionary", "keys_of", "mapping", "return list(mapping)"),
    ("invert a dictionary", "invert", "mapping",
     "return {value: key for key, value in mapping.items()}"),
    ("check whether every item of a list is positive", "all_positive", "items",
     "return all(x > 0 for x in items)"),
    ("return the product of a list of numbers", "product", "items",
     "result = 1\n    for x in items:\n        result *= x\n    return result"),
]
PHRASINGS = ("Write a Python function to {d}.", "Python: {d}.", "Define a function that will {d}.",
             "How do I {d} in Python?", "Implement {n}({a}) to {d}.")


def python_tasks() -> list[Record]:
    """Hand-written prompt-to-Python records, several phrasings per function."""
    records = []
    for description, name, args, body in PYTHON_FUNCTIONS:
        code = f"def {name}({args}):\n    {body}\n"
        for phrasing in PHRASINGS:
            prompt = phrasing.format(d=description, n=name, a=args)
            records.append({"prompt": prompt, "code": code, "task": "python"})
    return records


def write_jsonl(records: Iterable[Record], path: str | Path) -> Path:
    """Write records with their split as JSONL."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps({**record, "split": split_of(record["prompt"])}) + "\n")
    return out
