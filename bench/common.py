"""Shared by the benchmarks: machine description, result files, table printing."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def read_bandwidth(megabytes: int = 512, reps: int = 5) -> float:
    """The machine's memory read rate in bytes/s: the best of `reps` sums of a buffer far
    larger than the caches, on every thread torch uses (what a decode step reads with)."""
    buffer = torch.ones(megabytes * 2**20 // 4)
    buffer.sum()
    best = 0.0
    for _ in range(reps):
        started = time.perf_counter()
        buffer.sum()
        best = max(best, buffer.numel() * 4 / (time.perf_counter() - started))
    return best


def save(name: str, rows: list[dict[str, Any]], **extra: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                "machine": machine(), "rows": rows, **extra}, indent=2) + "\n")
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    body = "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True))
                     for r in cells)
    return f"{line}\n{'-' * len(line)}\n{body}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)
