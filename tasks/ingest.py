"""ingest: the configured source -> the raw folder, as records of the run's kind.

Text (data.kind text): a text file, a folder of them, or a JSONL file -> corpus.parquet, each
record (doc_id, text, source, n_bytes). A text file becomes one record per paragraph
(its text keeps the blank lines after it, so the records join back into the exact file); a
JSONL line becomes one record. A URL source is fetched once and checked against its sha256;
with no network the same file is read from the local mirror folder named by
$TINYGPT_DATA_MIRROR.

Prompt -> completion pairs (data.kind sft): the generated verifiable or Python set, or a JSONL
file of {"prompt", "completion"} records -> pairs.jsonl, copied as read: the validation suite
reports bad fields by line.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gpt.config import Params
from gpt.data import CorpusError
from gpt.files import atomic_file, sha256_file
from gpt.progress import Progress
from tasks.common import CORPUS_FILE, PAIRS_RAW
from tasks.kinds import kind_of

log = logging.getLogger("tinygpt.ingest")
BLOCK = 1 << 20  # bytes read at a time
MIRROR_ENV = "TINYGPT_DATA_MIRROR"
# Cut after a blank line (one or more) that is followed by more text.
_PARAGRAPH_END = re.compile(r"(?<=\n\n)(?=[^\n])")


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def fetch(url: str, sha256: str | None, downloads: Path, mirror_name: str | None = None) -> Path:
    """A local copy of url: from the mirror folder if it has one, else downloaded once."""
    name = mirror_name or url.rstrip("/").rsplit("/", 1)[-1]
    mirror = os.environ.get(MIRROR_ENV)
    candidates = [Path(mirror) / name] if mirror else []
    candidates.append(downloads / name)
    local = next((p for p in candidates if p.is_file()), None)
    if local is None:
        local = downloads / name
        downloads.mkdir(parents=True, exist_ok=True)
        partial = local.with_suffix(local.suffix + ".part")
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
                out.write(response.read())
        except OSError as err:
            raise CorpusError(f"cannot download {url} ({err}) and no mirror copy of {name} "
                              f"in ${MIRROR_ENV}") from None
        partial.replace(local)
    if sha256 and sha256_file(local) != sha256:
        raise CorpusError(f"{local}: sha256 {sha256_file(local)} does not match the expected "
                          f"{sha256}")
    return local


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs that concatenate back to text exactly."""
    return [p for p in _PARAGRAPH_END.split(text) if p]


def decoded_blocks(path: Path, name: str) -> Iterator[str]:
    """The file's text, BLOCK bytes at a time: a NUL byte (a binary file), invalid UTF-8 or a
    file of nothing but whitespace is refused with its byte offset, at the block it is in."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, seen_text = 0, False
    with open(path, "rb") as handle:
        while True:
            block = handle.read(BLOCK)
            if (nul := block.find(b"\x00")) >= 0:
                raise CorpusError(f"{name}: looks like a binary file (NUL byte at offset "
                                  f"{offset + nul}); expected UTF-8 text")
            pending = decoder.getstate()[0]
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                data = pending + block
                raise CorpusError(f"{name}: invalid UTF-8 at byte offset "
                                  f"{offset - len(pending) + err.start} "
                                  f"(byte 0x{data[err.start]:02x})") from None
            seen_text = seen_text or bool(text.strip())
            if text:
                yield text
            if not block:
                break
            offset += len(block)
    if not seen_text:
        raise CorpusError(f"{name}: file is empty")


def too_long(name: str, record: str, limit: int) -> CorpusError:
    return CorpusError(f"{name}: {record} is longer than {limit:,} bytes (data.chunk_mb): "
                       f"data is read a chunk at a time, and one record must fit in a chunk")


def text_records(path: Path, name: str, limit: int) -> Iterator[dict[str, Any]]:
    """One record per paragraph, read a block at a time: only the paragraph being read is
    held, and one longer than `limit` bytes is refused."""
    buffer, number = "", 0
    for block in decoded_blocks(path, name):
        buffer += block
        start = 0
        for cut in _PARAGRAPH_END.finditer(buffer):
            yield {"doc_id": f"{name}:{number}", "text": buffer[start:cut.start()],
                   "source": name}
            number, start = number + 1, cut.start()
        buffer = buffer[start:]
        if len(buffer) > limit:
            raise too_long(name, f"paragraph {number}", limit)
    if buffer:
        yield {"doc_id": f"{name}:{number}", "text": buffer, "source": name}


def json_lines(path: Path, limit: int | None = None) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, object, None) for each non-blank line that is a JSON object, (line
    number, None, problem) for each that is not; a line at a time, one longer than `limit`
    bytes refused."""
    offset, seen, number = 0, False, 0
    with open(path, "rb") as handle:
        while line := handle.readline(limit + 1 if limit else -1):
            number += 1
            if limit and len(line) > limit:
                raise too_long(str(path), f"line {number}", limit)
            if (nul := line.find(b"\x00")) >= 0:
                raise CorpusError(f"{path}: looks like a binary file (NUL byte at offset "
                                  f"{offset + nul}); expected UTF-8 text")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CorpusError(f"{path}: invalid UTF-8 at byte offset {offset + err.start} "
                                  f"(line {number}, byte 0x{line[err.start]:02x})") from None
            offset += len(line)
            if not text.strip():
                continue
            seen = True
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                yield number, None, f"line {number}: not valid JSON ({err.msg})"
                continue
            if isinstance(obj, dict):
                yield number, obj, None
            else:
                yield number, None, (f"line {number}: expected a JSON object, got "
                                     f"{type(obj).__name__}")
    if not seen:
        raise CorpusError(f"{path}: file is empty")


class Problems:
    """Bad JSONL lines of one file: the first few kept to show, all counted."""

    SHOWN = 5

    def __init__(self, path: Path) -> None:
        self.path, self.shown, self.count = path, [], 0

    def add(self, problem: str) -> None:
        self.count += 1
        if len(self.shown) < self.SHOWN:
            self.shown.append(problem)

    def refuse(self) -> None:
        if self.count:
            more = self.count - len(self.shown)
            raise CorpusError(f"{self.path}: {self.count} bad JSONL line(s): "
                              f"{'; '.join(self.shown)}"
                              + (f"; and {more} more" if more else ""))


def jsonl_records(path: Path, name: str, text_field: str, limit: int
                  ) -> Iterator[dict[str, Any]]:
    """One record per non-blank line, a line at a time; every malformed line is counted and
    the first few shown, with their numbers, once the file is read."""
    problems = Problems(path)
    for number, obj, problem in json_lines(path, limit):
        if problem is None and text_field not in obj:
            problem = f"line {number}: missing the {text_field!r} field"
        elif problem is None and not isinstance(obj[text_field], str):
            problem = (f"line {number}: {text_field!r} must be a string, got "
                       f"{type(obj[text_field]).__name__}")
        if problem is not None:
            problems.add(problem)
        elif not problems.count:
            doc_id = obj.get("id")
            yield {"doc_id": str(doc_id) if doc_id is not None else f"{name}:{number}",
                   "text": obj[text_field], "source": f"{name}:{number}"}
    problems.refuse()


def source_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise CorpusError(f"{source}: folder holds no files")
        return files
    raise CorpusError(f"{source}: no such file or folder")


def read_records(source: Path, text_field: str = "text", limit: int = 16 << 20,
                 progress: Progress | None = None) -> Iterator[dict[str, Any]]:
    """Every file's records in order, each with its size in UTF-8 bytes."""
    root = source if source.is_dir() else source.parent
    done = 0
    for path in source_files(source):
        name = str(path.relative_to(root))
        records = (jsonl_records(path, name, text_field, limit) if path.suffix == ".jsonl"
                   else text_records(path, name, limit))
        for record in records:
            record["n_bytes"] = len(record["text"].encode("utf-8"))
            yield record
        done += path.stat().st_size
        if progress is not None:
            progress.update(done)


SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string()), ("source", pa.string()),
                    ("n_bytes", pa.int64())])


def write_records(records: Iterable[dict[str, Any]], out_dir: Path,
                  chunk_bytes: int = 16 << 20) -> tuple[Path, int, int]:
    """The records table, one row group per chunk_bytes of text, written as the records come
    (atomically: a failure leaves the previous table); (path, rows, bytes)."""
    rows = total = 0
    with (atomic_file(out_dir / CORPUS_FILE) as tmp,
          pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer):
        batch: list[dict[str, Any]] = []
        batch_bytes = 0
        for record in records:
            batch.append(record)
            batch_bytes += record["n_bytes"]
            if batch_bytes >= chunk_bytes:
                writer.write_table(pa.Table.from_pylist(batch, SCHEMA))
                rows, total = rows + len(batch), total + batch_bytes
                batch, batch_bytes = [], 0
        if batch or not rows:
            writer.write_table(pa.Table.from_pylist(batch, SCHEMA))
            rows, total = rows + len(batch), total + batch_bytes
    return out_dir / CORPUS_FILE, rows, total


def ingest_text(params: Params, source: str | None) -> dict[str, Any]:
    """Read the configured (or given) source a block at a time and write the records table
    as it goes: memory holds one chunk of records, whatever the corpus's size."""
    data = params.data
    source = source or data.source
    if not source:
        raise CorpusError("no data source: set data.source in params.yaml or pass one")
    raw_dir = params.path("raw")
    local = (fetch(source, data.sha256, raw_dir.parent / "downloads", data.mirror_name)
             if is_url(source) else Path(source))
    total = sum(p.stat().st_size for p in source_files(local))
    with Progress(log, "ingest", total, "bytes") as progress:
        path, rows, n_bytes = write_records(
            read_records(local, data.text_field, data.chunk_bytes, progress),
            raw_dir, data.chunk_bytes)
    return {"path": str(path), "rows": rows, "source": str(local), "bytes": n_bytes}


# -- prompt/completion records (fine-tuning) ----------------------------------------------------

ANSWER_FIELDS = ("completion", "code")


def read_pairs(path: str | Path):
    """JSONL prompt/completion records as a frame with the raw values and line numbers.

    Lines that are not JSON objects stop here; missing, empty or non-string fields are left
    for the validation suite, which reports them by line. A record without a `split` goes to
    train, val or test by its prompt's hash, as the built-in sets do.
    """
    import pandas as pd

    from gpt.sft_data import split_of

    source = Path(path)
    objects, problems = [], Problems(source)
    for number, obj, problem in json_lines(source):
        if problem is None:
            objects.append((number, obj))
        else:
            problems.add(problem)
    problems.refuse()
    rows = [{"doc_id": f"line {number}", "prompt": obj.get("prompt"),
             "completion": next((obj[f] for f in ANSWER_FIELDS if f in obj), None),
             "split": obj.get("split") or (split_of(obj["prompt"]) if isinstance(
                 obj.get("prompt"), str) else "train"),
             "task": obj.get("task", "")}
            for number, obj in objects]
    frame = pd.DataFrame(rows, columns=["doc_id", "prompt", "completion", "split", "task"])
    return frame.astype({"prompt": object, "completion": object})


def ingest_sft(params: Params, source: str | None) -> dict[str, Any]:
    """The configured (or given) fine-tuning set, generated or a JSONL file -> pairs.jsonl."""
    from gpt.sft_data import python_tasks, verifiable_tasks, write_jsonl

    sft = params.sft
    dataset = source or sft.dataset
    target = params.path("raw") / PAIRS_RAW
    with atomic_file(target) as tmp:
        if dataset == "verifiable":
            write_jsonl(verifiable_tasks(sft.records, sft.seed), tmp)
        elif dataset == "python":
            write_jsonl(python_tasks(), tmp)
        else:
            local = Path(dataset)
            if not local.is_file():
                raise CorpusError(f"{local}: no such file (sft.dataset is 'verifiable', "
                                  f"'python' or a JSONL path)")
            read_pairs(local)  # refuse broken JSONL before copying it
            tmp.write_bytes(local.read_bytes())
    frame = read_pairs(target)
    return {"path": str(target), "rows": len(frame), "source": dataset,
            "bytes": target.stat().st_size}


def ingest(params: Params, source: str | None = None) -> dict[str, Any]:
    """The run's source (data.source, sft.dataset, or the one given) -> the raw folder."""
    return kind_of(params).step("ingest")(params, source)
