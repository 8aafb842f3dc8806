"""Load on the HTTP service: N clients on 127.0.0.1 for a fixed time, mixing /generate and
/generate/stream. Prints p50/p99 latency, time to first streamed piece, tokens/s, errors.

    python bench/serve_load.py                 # starts `tinygpt serve` on the project's champion
    python bench/serve_load.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import save, table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(concurrency: int, queue: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    tinygpt = Path(sys.executable).with_name("tinygpt")
    proc = subprocess.Popen([str(tinygpt), "serve", "--port", str(port), "--max-concurrency",
                             str(concurrency), "--max-queue", str(queue)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit("the service did not become healthy: run `make run` first")


def client(url: str, index: int, stop_at: float, new_tokens: int, out: list[dict]) -> None:
    body = {"prompt": "ROMEO:", "max_new_tokens": new_tokens, "temperature": 0.8, "top_k": 50}
    with httpx.Client(timeout=120) as http:
        n = 0
        while time.monotonic() < stop_at:
            stream = (index + n) % 2 == 1
            n += 1
            started = time.perf_counter()
            record = {"stream": stream, "ok": False, "first": None, "tokens": 0}
            try:
                if stream:
                    with http.stream("POST", f"{url}/generate/stream", json=body) as r:
                        record["status"] = r.status_code
                        for line in r.iter_lines():
                            if line.startswith("data: ") and record["first"] is None:
                                record["first"] = time.perf_counter() - started
                            if line.startswith("data: ") and '"completion_tokens"' in line:
                                record["tokens"] = json.loads(line[6:])["completion_tokens"]
                                record["ok"] = r.status_code == 200
                else:
                    r = http.post(f"{url}/generate", json=body)
                    record["status"] = r.status_code
                    record["ok"] = r.status_code == 200
                    record["tokens"] = r.json().get("completion_tokens", 0) if record["ok"] else 0
            except httpx.HTTPError as err:
                record["status"] = type(err).__name__
            record["latency"] = time.perf_counter() - started
            out.append(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=2, help="service slots (own service)")
    args = parser.parse_args()
    proc = None
    url = args.url
    if url is None:
        proc, url = start_service(args.concurrency, queue=args.clients)
    try:
        version = httpx.get(f"{url}/health").json().get("version")
        records: list[dict] = []
        stop_at = time.monotonic() + args.seconds
        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(url, i, stop_at, args.max_new_tokens,
                                                         records)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    ok = [r for r in records if r["ok"]]
    latency = np.array([r["latency"] for r in ok]) * 1000
    first = np.array([r["first"] for r in ok if r["stream"] and r["first"] is not None]) * 1000
    row = {
        "clients": args.clients, "seconds": round(wall, 1), "requests": len(records),
        "errors": len(records) - len(ok),
        "p50_ms": float(np.percentile(latency, 50)) if len(ok) else None,
        "p99_ms": float(np.percentile(latency, 99)) if len(ok) else None,
        "ttft_p50_ms": float(np.percentile(first, 50)) if len(first) else None,
        "ttft_p99_ms": float(np.percentile(first, 99)) if len(first) else None,
        "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "model_version": version,
    }
    columns = ["clients", "requests", "errors", "p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms",
               "tokens_per_s"]
    print(table([row], columns))
    statuses = sorted({str(r.get("status")) for r in records if not r["ok"]})
    if statuses:
        print(f"non-200 outcomes: {statuses}")
    print(f"results: {save('serve_load', [row], new_tokens=args.max_new_tokens)}")


if __name__ == "__main__":
    main()
