"""Data at any size: each pipeline step's seconds, MB/s and peak memory at several corpus sizes.

Corpora are made from the venv's own docs and sources (text files under site-packages), as one
file and as a folder of files. Each step runs as `python -m tasks STEP` (the DVC stages' code)
in a scratch project; the peak resident memory counts every process of the step (Dask workers
included), sampled every 50 ms. Training is capped by steps, so its figure is the cost of
reading the shards, not of learning.

    python bench/scale.py --sizes 10 100 1000            # MB; one file and a folder each
    python bench/scale.py --sizes 100 --encode-speedup [--repeats 5]  # a worker per core vs 1
    python bench/scale.py --bad-input                    # 1 GB of junk, a 200 MB line, ...
    python bench/scale.py --stops --sizes 100            # Ctrl-C inside each step of a run

Printed: a table per corpus, and the two ratios the issue asks for: peak memory at the largest
size against the smallest, and each step's seconds per MB at the largest size against the next.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("ingest", "validate", "tokenize", "encode", "train", "evaluate")
SUFFIXES = (".py", ".txt", ".rst", ".md", ".pyi")
# A small model and a few steps: the data's cost, not the learning's. Source files hold
# paragraphs (a data table, a long docstring) over the default 100,000-character limit, and a
# few with terminal colour codes over the default 1% of control characters.
SETTINGS = ["validate.max_chars=1000000", "validate.max_control_share=0.2",
            "train.max_steps=20", "train.eval_interval=20", "train.eval_iters=2",
            "train.batch_size=8", "model.n_layer=2", "model.n_embd=64", "model.n_head=2",
            "model.block_size=64", "tokenizer.vocab_size=1024"]


def source_files() -> list[Path]:
    """Text files of the venv's site-packages, in a fixed order."""
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = []
    for path in sorted((site / "site-packages").rglob("*")):
        if path.suffix in SUFFIXES and path.is_file() and 0 < path.stat().st_size < 1 << 20:
            found.append(path)
    return found


def make_corpus(out: Path, megabytes: float, as_folder: bool) -> Path:
    """About `megabytes` of UTF-8 text from the venv: one file, or a folder of files (the
    sources cycled when the size asks for more than they hold)."""
    if out.exists():  # made by an earlier run of the bench
        return out
    target, files = int(megabytes * 2**20), source_files()
    written, index = 0, 0
    (out if as_folder else out.parent).mkdir(parents=True, exist_ok=True)
    handle = None if as_folder else open(out, "wb")  # noqa: SIM115 - closed below
    try:
        while written < target:
            data = files[index % len(files)].read_bytes()
            index += 1
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if b"\x00" in data or not data.strip():
                continue
            data = data.replace(b"\r", b"")
            if as_folder:
                (out / f"{index:07d}{files[(index - 1) % len(files)].suffix}.txt"
                 ).write_bytes(data)
            else:
                handle.write(data + b"\n\n")
            written += len(data)
    finally:
        if handle is not None:
            handle.close()
    return out


class PeakMemory:
    """The largest summed resident memory of a process and its descendants, sampled."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                root = psutil.Process(self.pid)
                processes = [root, *root.children(recursive=True)]
                total = 0
                for process in processes:
                    with contextlib.suppress(psutil.Error):
                        total += process.memory_info().rss
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._done.wait(self.every)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def run_step(project: Path, step: str, overrides: list[str]) -> tuple[float, int]:
    """(seconds, peak resident bytes of every process) of one `python -m tasks STEP`."""
    command = [sys.executable, "-m", "tasks", step,
               *[arg for o in overrides for arg in ("--set", o)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    memory = PeakMemory(process.pid)
    output, _ = process.communicate()
    seconds = time.perf_counter() - started
    peak = memory.stop()
    if process.returncode != 0:
        raise RuntimeError(f"{step} failed ({process.returncode}):\n{output[-3000:]}",
                           seconds, peak)
    return seconds, peak


def measure(corpus: Path, project: Path, overrides: list[str] = (),
            steps: tuple[str, ...] = STEPS) -> dict[str, tuple[float, int]]:
    """Every step of a scratch project on this corpus: {step: (seconds, peak bytes)}."""
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    settings = [f"data.source={corpus.resolve()}", "data.sha256=null", *SETTINGS, *overrides]
    return {step: run_step(project, step, settings) for step in steps}


def table(name: str, megabytes: float, figures: dict[str, tuple[float, int]]) -> str:
    lines = [f"\n{name} ({megabytes:,.0f} MB)", "| step | seconds | MB/s | peak memory (MB) |",
             "|---|---|---|---|"]
    for step, (seconds, peak) in figures.items():
        lines.append(f"| {step} | {seconds:.1f} | {megabytes / seconds:.2f} | "
                     f"{peak / 2**20:,.0f} |")
    return "\n".join(lines)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def bad_inputs(work: Path) -> dict[str, Path]:
    """A 1 GB file of random bytes, a 200 MB single line, and 100,000 tiny files of which one
    is not UTF-8."""
    work.mkdir(parents=True, exist_ok=True)
    junk, line, folder = work / "junk.bin", work / "line.txt", work / "many"
    if not junk.exists():
        with open(junk, "wb") as out:
            for _ in range(1024):
                out.write(os.urandom(1 << 20))
    if not line.exists():
        line.write_bytes(b"word " * (40 << 20))
    if not folder.exists():
        folder.mkdir()
        for i in range(100_000):
            (folder / f"{i:06d}.txt").write_text(f"file {i}: a short paragraph.\n")
        (folder / "071717.txt").write_bytes(b"fine start \xc3\x28 then bad")
    return {"1 GB of random bytes": junk, "a 200 MB single line": line,
            "100,000 files, one not UTF-8": folder}


def refusals(work: Path) -> None:
    """Each bad input through `ingest`: seconds, peak memory and its one line."""
    for name, source in bad_inputs(work).items():
        project = work / "project"
        shutil.rmtree(project, ignore_errors=True)
        project.mkdir()
        shutil.copy(ROOT / "params.yaml", project / "params.yaml")
        try:
            run_step(project, "ingest", [f"data.source={source}", "data.sha256=null"])
            print(f"{name}: accepted?!")
        except RuntimeError as refused:
            seconds, peak = refused.args[1:]
            last = [x for x in refused.args[0].splitlines() if "error:" in x][-1]
            print(f"{name}: refused in {seconds:.1f}s, peak {peak / 2**20:,.0f} MB, "
                  f"raw/ left empty: {not any((project / 'data' / 'raw').glob('*'))}\n"
                  f"  {last.strip()}")


# (step, what shows the step is under way), for Ctrl-C 3 s later.
STOP_POINTS = [("ingest", "step ingest"), ("validate", "chunks on Dask"),
               ("tokenize", "chunks on Dask"), ("encode", "chunks on Dask"),
               ("evaluate", "step evaluate")]


def stop_times(work: Path, corpus: Path) -> None:
    """`tinygpt retrain` in a clone of this checkout, stopped as a terminal's Ctrl-C does
    (SIGINT to its process group) inside each step: seconds to its exit, and its last line."""
    project = work / "stops-project"
    shutil.rmtree(project, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
    for number, (step, marker) in enumerate(STOP_POINTS):
        log = project / f"{step}.log"
        command = [str(Path(sys.executable).with_name("tinygpt")), "retrain", "--source",
                   str(corpus), *[a for o in SETTINGS for a in ("--set", o)],
                   "--set", f"tokenizer.vocab_size={1024 + number}"]  # nothing from the cache
        with open(log, "w") as out:
            process = subprocess.Popen(command, cwd=project, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        while process.poll() is None:
            after = log.read_text().partition(f"step {step}")
            if after[1] and (marker == f"step {step}" or marker in after[2]):
                break
            time.sleep(0.1)
        time.sleep(3)
        signalled = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(120)
        last = [x for x in log.read_text().splitlines() if x.startswith("tinygpt: error")]
        print(f"Ctrl-C 3 s into {step}: exit {code} after {time.monotonic() - signalled:.1f}s: "
              f"{last[-1][:90] if last else '(no error line)'}", flush=True)


def encode_speedup(work: Path, megabytes: float, repeats: int = 3) -> None:
    """`encode` of the one-file corpus in this process (data.workers=1) and on a local cluster
    of one worker per core, alternated `repeats` times: the median seconds of each, and the
    CPU seconds of every process (what the workers' starts, their separate caches of encoded
    pretokens and the scheduler add)."""
    corpus, project = work / f"corpus-{megabytes:g}-file.txt", work / f"project-{megabytes:g}-file"
    settings = [f"data.source={corpus}", "data.sha256=null", *SETTINGS]
    times: dict[str, list[tuple[float, float]]] = {"1": [], "0": []}
    for _ in range(repeats):
        for workers, runs in times.items():
            cpu = children_cpu_seconds()
            seconds = run_step(project, "encode", [*settings, f"data.workers={workers}"])[0]
            runs.append((seconds, children_cpu_seconds() - cpu))
    (one, one_cpu), (many, many_cpu) = (sorted(times[w])[repeats // 2] for w in ("1", "0"))
    print(f"\nencoding {megabytes:g} MB (median of {repeats}): {one:.1f}s in one process, "
          f"{many:.1f}s on {os.cpu_count()} workers: {one / many:.2f}x\n"
          f"CPU seconds, every process: {one_cpu:.1f} in one process, {many_cpu:.1f} on "
          f"{os.cpu_count()} workers ({many_cpu / one_cpu:.2f}x the work; "
          f"{many_cpu / many:.2f} of {os.cpu_count()} cores busy)")


def children_cpu_seconds() -> float:
    """User + system seconds of every finished child process (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--layouts", nargs="+", default=["file", "folder"])
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS,
                        help="the first steps only (each needs those before it)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tinygpt-scale"))
    parser.add_argument("--encode-speedup", action="store_true",
                        help="also time encoding the largest corpus in one process")
    parser.add_argument("--repeats", type=int, default=3,
                        help="--encode-speedup: runs of each, alternated (the median counts)")
    parser.add_argument("--bad-input", action="store_true",
                        help="only ingest bad inputs at scale, each refused with one line")
    parser.add_argument("--stops", action="store_true",
                        help="only Ctrl-C inside each step of a retrain on the largest size")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores")
    if args.bad_input:
        refusals(args.work / "bad")
        return
    if args.stops:
        size = max(args.sizes)
        stop_times(args.work, make_corpus(args.work / f"corpus-{size:g}-file.txt", size, False))
        return
    for layout in args.layouts:
        results = {}
        for size in args.sizes:
            name = f"corpus-{size:g}-{layout}" + ("" if layout == "folder" else ".txt")
            corpus = make_corpus(args.work / name, size, layout == "folder")
            results[size] = measure(corpus, args.work / f"project-{size:g}-{layout}",
                                    steps=tuple(args.steps))
            print(table(f"one {layout}" if layout == "file" else "a folder of files", size,
                        results[size]), flush=True)
        small, big = min(results), max(results)
        peak_small = max(p for _, p in results[small].values())
        peak_big = max(p for _, p in results[big].values())
        bound = max(1.5 * peak_small, 1.5 * 2**30)  # the issue's: 1.5x, or 1.5 GB if larger
        print(f"\n{layout}: peak memory {peak_big / 2**20:,.0f} MB at {big:g} MB vs "
              f"{peak_small / 2**20:,.0f} MB at {small:g} MB: {peak_big / peak_small:.2f}x "
              f"(bound {bound / 2**20:,.0f} MB: {'within' if peak_big <= bound else 'OVER'})")
        if len(results) > 1:
            previous = sorted(results)[-2]
            for step in args.steps:
                ratio = ((results[big][step][0] / big)
                         / (results[previous][step][0] / previous))
                print(f"{layout}: {step} seconds per MB at {big:g} MB / at {previous:g} MB: "
                      f"{ratio:.2f}x")
    if args.encode_speedup:
        encode_speedup(args.work, max(args.sizes), args.repeats)

if __name__ == "__main__":
    main()
